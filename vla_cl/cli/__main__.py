"""``python -m vla_cl.cli`` is the same as ``vla-cl``."""

import sys

from vla_cl.cli import main

sys.exit(main())
