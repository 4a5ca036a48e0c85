"""What ``--gdb`` does around a run: parse the address, write symbols, wait for gdb."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO

from sevx86.asm.elf import SymbolSection, symbol_elf
from sevx86.asm.program import Program
from sevx86.boot.firmware import assemble_firmware
from sevx86.gdb.server import GdbServer
from sevx86.machine import Machine

LOOPBACK = "127.0.0.1"
RESET_VECTOR = 0xFFFF_FFF0


def parse_address(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6HOST]:PORT``; loopback unless a host is given.

    Raises ValueError with a message fit for a one-line usage error.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = LOOPBACK
    host = host.strip("[]") or LOOPBACK
    try:
        port = int(port_text, 10)
    except ValueError:
        raise ValueError(f"--gdb {text!r}: the port must be a number ([HOST:]PORT)") from None
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"--gdb {text!r}: port {port} is not 0..65535 (0: any free port)")
    return host, port


def symbol_file(payload: Program | None) -> bytes:
    """An ELF with the labels of our firmware (reset.S, runtime.S and the #VC handlers
    it includes) and of the payload, each at its run-time address."""
    firmware = assemble_firmware()
    sections = [
        SymbolSection.of("reset", firmware.reset),
        SymbolSection.of("runtime", firmware.runtime),
    ]
    if payload is not None:
        sections.append(SymbolSection.of("payload", payload))
    return symbol_elf(sections, entry=RESET_VECTOR)


def write_symbols(data: bytes, path: str | None) -> str:
    """Write the symbol file to ``path``, or to a new temporary file; returns where."""
    if path is None:
        fd, path = tempfile.mkstemp(prefix="sevx86-symbols-", suffix=".elf")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path
    Path(path).write_bytes(data)
    return path


def remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def start(
    machine: Machine,
    address: tuple[str, int],
    log: IO[str],
    *,
    command: str,
    symbols: str | None = None,
) -> GdbServer:
    """Listen, hook every vCPU, tell the user how to connect, and wait for gdb."""
    server = GdbServer(machine, *address, log=log)
    host, port = server.listen()
    server.attach()
    hint = f"; gdb -ex 'symbol-file {symbols}'" if symbols else "; gdb"
    print(
        f"sevx86 {command}: waiting for gdb on {host}:{port}{hint} -ex 'target remote "
        f"{host}:{port}'",
        file=log,
        flush=True,
    )
    server.wait_for_gdb()
    return server
