"""Entry point of `cidev`: one subcommand per module in `COMMANDS`.

A command module exposes `register(subparsers)`, which adds its parser and sets `handler`
to a function taking the parsed arguments and returning the exit status. Errors a user can act
on are `SolsticeError`s, caught here and printed with their hint, never as a traceback.
"""
from __future__ import annotations

import argparse
import sys

from cidev import inspect, run, validate
from cidev.workflow_file import UsageError
from common.cli import quiet_on_closed_stdout
from common.errors import SolsticeError
from common.observability import setup_observability

COMMANDS = (validate, inspect, run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cidev", description="Validate, inspect and run Solstice"
                                     " CI workflows (.solstice/workflow.kdl) on your machine.")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    return quiet_on_closed_stdout(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return 2
    setup_observability("cidev", level="warning", console_spans=False)
    try:
        return args.handler(args)
    except UsageError as exc:
        print(f"cidev: error: {exc}", file=sys.stderr)
        return 2
    except SolsticeError as exc:
        print(f"cidev: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
