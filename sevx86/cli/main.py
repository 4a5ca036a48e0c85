"""``sevx86``: the command-line entry point.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a
function taking the parsed arguments and returning the exit status.

Exit statuses: 0 success; 1 a bug in sevx86 (one line, never a traceback,
whatever the subcommand); 2 bad usage or unreadable input (argparse's
convention); other values are documented by each subcommand (the guest's own
status for ``run``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from sevx86 import __version__

SUBCOMMANDS: tuple[str, ...] = (
    "run", "trace", "boot", "asm", "measure", "owner", "platform", "lab",
)

EXIT_INTERNAL = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A bad argument or input file: one line on stderr, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sevx86",
        description=(
            "Run x86 guest code as an AMD SEV-ES guest: encrypted memory, #VC, the GHCB, "
            "VMGEXIT, a Secure Processor and an untrusted hypervisor you can replace."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sevx86 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"sevx86.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports every subcommand (Unicorn, ...): seconds
    except KeyboardInterrupt:
        print("sevx86: interrupted", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"sevx86 {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"sevx86 {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback for the user
        return internal_error(args.command, exc)


def internal_error(command: str, exc: BaseException) -> int:
    """A bug: one line, unless SEVX86_DEBUG asks for the traceback."""
    if os.environ.get("SEVX86_DEBUG"):
        raise exc
    print(
        f"sevx86 {command}: internal error: {type(exc).__name__}: {exc} "
        "(SEVX86_DEBUG=1 shows the traceback)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


if __name__ == "__main__":
    # Under ``python -m sevx86.cli.main`` this file runs as ``__main__``, a
    # second copy of the module: subcommands raise ``sevx86.cli.main.UsageError``,
    # which this copy's ``except UsageError`` would not catch. Dispatch through
    # the imported module so there is one UsageError class.
    from sevx86.cli import main as _cli

    sys.exit(_cli.main())
