"""``vla-cl``: one command per verb, hydra overrides after the verb.

    vla-cl --help
    vla-cl <command> --help
    vla-cl <command> [key=value ...] [--debug]     (--debug: a traceback for user errors too)

``main`` is the one error boundary: it composes the command's config, opens its run directory and runs
it, and turns what goes wrong into an exit status.

Exit status:
  0    success
  1    the run failed: it crashed (a bug; the traceback is printed) or its own check failed (sim-check's
       blank frames, say)
  2    the input is the user's to fix (``vla_cl.errors.USER_ERRORS``: an unknown command or key, a bad
       value, a missing or corrupt file, a device this machine lacks, a busy run folder): one paragraph
       naming the problem and the fix, no traceback (``--debug`` adds it)
  130  interrupted (Ctrl-C): running the same command again with the same out_dir continues the run
"""

from __future__ import annotations

import sys
import traceback
import warnings
from collections.abc import Callable, Sequence

from vla_cl import __version__
from vla_cl.cli.registry import COMMANDS

CRASH_EXIT, USAGE_EXIT, INTERRUPTED_EXIT = 1, 2, 130


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"vla-cl {__version__}: fine-tune robot policies and measure forgetting (RL's Razor).",
        "",
        "usage: vla-cl <command> [key=value ...] [--debug]",
        "       vla-cl <command> --help     list the command's config keys and defaults",
        "",
        "commands:",
        *(f"  {name.ljust(width)}  {cmd.help}" for name, cmd in COMMANDS.items()),
        "",
        "Every command accepts out_dir=PATH and seed=N and writes config.yaml, metrics.jsonl and",
        "artifacts/ into its run directory; the same command with the same out_dir continues a stopped run.",
        "",
        "exit status: 0 success; 1 the run failed (a crash prints its traceback); 2 an input to fix",
        "(one message naming it and the fix; --debug adds the traceback); 130 interrupted (run the",
        "same command again to continue).",
    ]
    return "\n".join(lines)


def _command_help(name: str) -> str:
    from vla_cl.cli.compose import config_groups, describe

    cmd = COMMANDS[name]
    rows = describe(cmd.load_schema())
    width = max(len(key) for key, _, _ in rows)
    lines = [f"usage: vla-cl {name} [key=value ...]", "", cmd.help, "", "config keys (default):"]
    lines += [f"  {key.ljust(width)}  {doc} (default: {default})" for key, default, doc in rows]
    for group, options in config_groups(name).items():
        lines += ["", f"presets: {group}=<{'|'.join(options)}>"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0 if args else USAGE_EXIT
    if args[0] == "--version":
        print(__version__)
        return 0
    name, overrides = args[0], args[1:]
    if name not in COMMANDS:
        print(
            f"vla-cl: unknown command '{name}'. Valid commands: {', '.join(COMMANDS)}.\n"
            "Run `vla-cl --help` for what each does.",
            file=sys.stderr,
        )
        return USAGE_EXIT
    if any(a in {"-h", "--help"} for a in overrides):
        print(_command_help(name))
        return 0

    from vla_cl.errors import USER_ERRORS

    cmd = COMMANDS[name]
    run_dir = previous_workers = None
    restore_warnings = _show_each_warning_once()
    try:
        from vla_cl.cli.compose import compose
        from vla_cl.runs import RunDir

        config = compose(name, cmd.load_schema(), overrides)
        from vla_cl import workers

        previous_workers = workers.use(config.ray)  # where parallel jobs run; an unreachable Ray address stops here
        run_dir = RunDir.open(config.out_dir, name, config, argv=["vla-cl", *args])
        print(f"[vla-cl] {name}: run directory {run_dir.path}", flush=True)
        status = cmd.load_run()(config, run_dir)
    except USER_ERRORS as error:
        if debug:
            traceback.print_exc()
        print(f"vla-cl {name}: {_paragraph(error)}", file=sys.stderr)
        return USAGE_EXIT
    except KeyboardInterrupt:
        again = f" (same out_dir={run_dir.path})" if run_dir is not None else ""
        print(f"\nvla-cl {name}: interrupted; run the same command again{again} to continue where it stopped",
              file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as error:  # noqa: BLE001 (a crash: the traceback is what a bug report needs)
        traceback.print_exc()
        print(f"vla-cl {name}: crashed ({type(error).__name__}); the traceback above shows where",
              file=sys.stderr)
        return CRASH_EXIT
    finally:
        restore_warnings()
        if previous_workers is not None:
            workers.use(previous_workers)
        if run_dir is not None:
            run_dir.close()
    return int(status or 0)


def _show_each_warning_once() -> Callable[[], None]:
    """Show each distinct warning (category and text) once while a command runs; returns the undo.

    Python's own once-per-place memory is wiped whenever any library enters ``warnings.catch_warnings``
    (torch and transformers do, often), so a warning raised per scene built (a Bridge stand-in, say) would
    fill the log. Filters still decide what is shown at all: nothing is hidden the first time."""
    original = warnings.showwarning
    shown: set[tuple[type, str]] = set()

    def show_once(message, category, filename, lineno, file=None, line=None) -> None:
        key = (category, str(message))
        if key not in shown:
            shown.add(key)
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show_once

    def restore() -> None:
        if warnings.showwarning is show_once:
            warnings.showwarning = original

    return restore


def _paragraph(error: BaseException) -> str:
    """The whole message as one paragraph (blank lines dropped); the error's kind when it has no message."""
    lines = [line.rstrip() for line in str(error).strip().splitlines() if line.strip()]
    return "\n".join(lines) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
