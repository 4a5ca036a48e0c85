"""Run ``sevx86 run --gdb 0`` in a subprocess and drive it with Debian's gdb in batch mode."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

GDB = shutil.which("gdb")
needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed (apt-get install gdb)")

# Generous: a 4x slower, busy machine must still pass.
START_TIMEOUT = 120.0
SESSION_TIMEOUT = 240.0

_WAITING = re.compile(r"waiting for gdb on ([0-9.]+):(\d+); gdb(?: -ex 'symbol-file ([^']+)')?")


@dataclass
class Session:
    gdb: str  # gdb's stdout + stderr
    stdout: str  # the guest's console
    stderr: str  # sevx86's messages
    returncode: int


def run_under_gdb(
    program: Path | str,
    gdb_commands: list[str],
    *options: str,
    tmp_path: Path,
    subcommand: str = "run",
) -> Session:
    """Start ``sevx86 run PROGRAM --gdb 0`` (or ``boot``), connect gdb, run the commands,
    wait for the end."""
    err_path = tmp_path / "sevx86.err"
    out_path = tmp_path / "sevx86.out"
    with open(err_path, "w") as err, open(out_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sevx86.cli.main", subcommand, str(program), "--gdb", "0",
             *options],
            stdout=out,
            stderr=err,
        )  # fmt: skip
        try:
            match = None
            deadline = time.monotonic() + START_TIMEOUT
            while match is None and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
                match = _WAITING.search(err_path.read_text())
            assert match is not None, f"sevx86 did not start its stub: {err_path.read_text()}"
            host, port, symbols = match.groups()
            args = [GDB, "-nx", "-batch", "-ex", "set confirm off"]
            if symbols:
                args += ["-ex", f"symbol-file {symbols}"]
            args += ["-ex", f"target remote {host}:{port}"]
            for command in gdb_commands:
                args += ["-ex", command]
            done = subprocess.run(args, capture_output=True, text=True, timeout=SESSION_TIMEOUT)
            rc = proc.wait(timeout=SESSION_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Session(done.stdout + done.stderr, out_path.read_text(), err_path.read_text(), rc)


@contextmanager
def started(program: Path, *options: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """``sevx86 run PROGRAM --gdb 0`` running, and the port its stub listens on."""
    err_path = tmp_path / "sevx86.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sevx86.cli.main", "run", str(program), "--gdb", "0",
             *options],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )  # fmt: skip
        try:
            match = None
            deadline = time.monotonic() + START_TIMEOUT
            while match is None and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
                match = _WAITING.search(err_path.read_text())
            assert match is not None, f"sevx86 did not start its stub: {err_path.read_text()}"
            yield proc, int(match.group(2))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class RawClient:
    """The client side of the remote protocol, written from the GDB manual (E.1)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(b"$%s#%02x" % (data, sum(data) & 0xFF))

    def receive(self) -> bytes:
        while True:
            start = self.buf.find(b"$")
            end = self.buf.find(b"#", start)
            if start >= 0 and end >= 0 and len(self.buf) >= end + 3:
                data = self.buf[start + 1 : end]
                self.buf = self.buf[end + 3 :]
                self.sock.sendall(b"+")
                if data.startswith(b"O") and data != b"OK":
                    continue  # console output
                return data
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("the stub closed the connection")
            self.buf += chunk

    def ask(self, data: bytes) -> bytes:
        self.send(data)
        return self.receive()
