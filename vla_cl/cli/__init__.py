"""``vla-cl``: one command per verb, hydra overrides after the verb.

    vla-cl --help
    vla-cl <command> --help
    vla-cl <command> [key=value ...]

Exit status: 0 on success, 1 when the run itself fails, 2 for an unknown command, config key or value.
"""

from __future__ import annotations

import sys
from typing import Sequence

from vla_cl import __version__
from vla_cl.cli.registry import COMMANDS

USAGE_EXIT = 2


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"vla-cl {__version__}: fine-tune robot policies and measure forgetting (RL's Razor).",
        "",
        "usage: vla-cl <command> [key=value ...]",
        "       vla-cl <command> --help     list the command's config keys and defaults",
        "",
        "commands:",
        *(f"  {name.ljust(width)}  {cmd.help}" for name, cmd in COMMANDS.items()),
        "",
        "Every command accepts out_dir=PATH and seed=N and writes config.yaml, metrics.jsonl and",
        "artifacts/ into its run directory.",
    ]
    return "\n".join(lines)


def _command_help(name: str) -> str:
    from vla_cl.cli.compose import config_groups, describe

    cmd = COMMANDS[name]
    rows = describe(cmd.load_config_class())
    width = max(len(key) for key, _, _ in rows)
    lines = [f"usage: vla-cl {name} [key=value ...]", "", cmd.help, "", "config keys (default):"]
    lines += [f"  {key.ljust(width)}  {doc} (default: {default})" for key, default, doc in rows]
    for group, options in config_groups(name).items():
        lines += ["", f"presets: {group}=<{'|'.join(options)}>"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
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

    from vla_cl.cli.compose import ConfigError, compose
    from vla_cl.runs import RunDir, RunDirConflict

    cmd = COMMANDS[name]
    try:
        config = compose(name, cmd.load_config_class(), overrides)
        run_dir = RunDir.open(config.out_dir, name, config, argv=["vla-cl", *args])
    except (ConfigError, RunDirConflict, ValueError) as exc:
        print(f"vla-cl {name}: {exc}", file=sys.stderr)
        return USAGE_EXIT
    print(f"[vla-cl] {name}: run directory {run_dir.path}", flush=True)
    status = cmd.load_run()(config, run_dir)
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
