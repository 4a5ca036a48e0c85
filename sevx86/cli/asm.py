"""``sevx86 asm``: assemble guest code or firmware into a flat binary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sevx86.asm import AsmError, assemble
from sevx86.asm.elf import SymbolSection, symbol_elf

EXIT_BAD_INPUT = 2  # the CLI's convention for bad usage or unreadable input
EXIT_WRITE_FAILED = 1

DESCRIPTION = """\
Assemble NASM-flavoured Intel-syntax x86 (via keystone) into a flat binary.

One file may switch modes (bits 16 / bits 32 / bits 64); labels work across
the switches. Preprocessor: %include, %define, %macro ... %endmacro,
%ifdef/%ifndef/%else/%endif, %error. Directives: org, align N[, fill],
pad_to ADDR[, fill], db/dw/dd/dq, resb..resq, times, equ, incbin.
The packaged guest_asm/ folder is always on the include path.

The front end refuses what keystone would get silently wrong, e.g. a 64-bit
absolute operand it encodes RIP-relative; errors are printed as
file:line: message and exit with status 2."""

EPILOG = """\
example, a reset vector at the top of a flash image:

  ; reset.S
  bits 16
  org 0xFFFFF000
  start:  cli
          hlt
          pad_to 0xFFFFFFF0
  reset:  jmp start          ; the CPU starts here
          pad_to 0x100000000 ; the image ends at 4 GiB

  $ sevx86 asm reset.S -o reset.bin --listing
  $ sevx86 asm guest.S --base 0x100000 -o guest.bin && sevx86 run guest.bin
  $ sevx86 asm guest.S --base 0x100000 -D DEBUG=1 -I include/ --json
  $ sevx86 asm guest.S --base 0x100000 --symbols guest.elf   # gdb: symbol-file guest.elf"""


def _int(text: str) -> int:
    try:
        return int(text.replace("_", ""), 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: '{text}'") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "asm",
        help="assemble guest code into a flat binary",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", type=Path, help="assembly source")
    parser.add_argument(
        "-o", "--output", type=Path, help="flat binary to write (default: FILE with .bin)"
    )
    parser.add_argument(
        "--bits", type=int, choices=(16, 32, 64), default=64, help="mode at the top of FILE"
    )
    parser.add_argument(
        "--base",
        type=_int,
        default=0,
        metavar="ADDR",
        help="address of the first byte unless FILE starts with org (default 0)",
    )
    parser.add_argument(
        "-I",
        dest="include",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="add DIR to the %%include search path (repeatable)",
    )
    parser.add_argument(
        "-D",
        dest="defines",
        action="append",
        default=[],
        metavar="NAME[=VAL]",
        help="%%define NAME VAL before the first line (repeatable)",
    )
    parser.add_argument(
        "--listing",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write address, bytes and source line per statement (stdout without FILE)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write base, size and symbols as JSON (stdout without FILE)",
    )
    parser.add_argument(
        "--symbols",
        type=Path,
        metavar="FILE",
        help="write an ELF with the bytes at their address and every label as a symbol "
        "(gdb: symbol-file FILE, then break LABEL)",
    )
    parser.set_defaults(func=run)


def _defines(items: list[str]) -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    for item in items:
        name, _, value = item.partition("=")
        if not name.isidentifier():
            raise ValueError(f"-D {item}: expected NAME or NAME=VALUE")
        out[name] = value
    return out


def _write_text(target: str, text: str) -> None:
    if target == "-":
        sys.stdout.write(text)
    else:
        Path(target).write_text(text, encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    try:
        defines = _defines(args.defines)
    except ValueError as exc:
        print(f"sevx86 asm: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    path: Path = args.file
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"{path}: cannot read: {reason}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        program = assemble(
            source,
            path=path,
            base=args.base,
            bits=args.bits,
            include_paths=args.include,
            defines=defines,
        )
    except AsmError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    output: Path = args.output or path.with_suffix(".bin")
    try:
        output.write_bytes(program.code)
        if args.listing:
            _write_text(args.listing, program.listing())
        if args.symbols:
            name = path.stem.replace(".", "_") or "program"
            args.symbols.write_bytes(symbol_elf([SymbolSection.of(name, program)]))
        if args.json:
            report = {"output": str(output), **program.to_json()}
            _write_text(args.json, json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        print(f"sevx86 asm: cannot write: {exc}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    return 0
