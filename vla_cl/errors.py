"""What the command line treats as the user's to fix rather than as a bug.

A ``UserError`` (or one of the built-in kinds listed in ``USER_ERRORS``: a bad value, a missing or
unreadable file, a folder in the way) is reported by ``vla-cl`` as one paragraph naming the problem and
the fix, with exit status 2; anything else is a crash, reported with its traceback and exit status 1
(``--debug`` shows the traceback for user errors too). Library code raises the specific error that fits,
with a message that says what is wrong and what to do.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in what the user asked for or provided (values, files, devices, assets)."""


class RunLocked(UserError):
    """Another live process is using the run folder."""


class TrainingDiverged(UserError):
    """A loss, gradient or weight became NaN or infinite; the run stopped before saving it."""


# Built-in exceptions that, raised while a command checks and loads its inputs, mean the input is wrong.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
    FileExistsError,
)
