"""The `mcl` command line: finds the subcommands in `mcl.commands` and turns user errors into one line."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from mcl import __version__, commands
from mcl.errors import UserError


def _command_modules():
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"mcl.commands.{info.name}")
        if hasattr(module, "NAME"):
            yield module


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="mcl",
        description="MCL: multi-level contrastive pretraining for dense prediction, and transfer to detectors.",
    )
    parser.add_argument("--version", action="version", version=f"mcl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers = {}
    for module in _command_modules():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        handlers[module.NAME] = module
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    parser, handlers = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = handlers[args.command]
    if extra and not getattr(module, "ACCEPTS_OVERRIDES", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(module.run(args, extra) or 0)
    except UserError as exc:
        print(f"mcl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mcl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
