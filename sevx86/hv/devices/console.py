"""Where guest output goes: kept for the run result, echoed to a stream, traced.

The serial port and the debug console write here. Output is kept per device
(bytes), optionally copied to a stream (the terminal), and every completed
line is added to the trace as a host event so it lines up with the exits
that produced it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO

LogFn = Callable[..., None]
LineListener = Callable[[str, str], None]  # (device, the line without its newline)


class Console:
    def __init__(self, stream: IO[bytes] | None = None, log: LogFn | None = None):
        self.stream = stream
        # Per device, another stream or None (kept and traced, not echoed):
        # e.g. the serial port to stdout and the firmware's debug console away.
        self.routes: dict[str, IO[bytes] | None] = {}
        self.log = log
        # Called with every completed line, e.g. a boot watching for a banner:
        # the guest's own text, whatever the trace's wording.
        self.listeners: list[LineListener] = []
        self.outputs: dict[str, bytearray] = {}
        self._lines: dict[str, bytearray] = {}
        self.all = bytearray()

    def write(self, source: str, data: bytes) -> None:
        if not data:
            return
        self.outputs.setdefault(source, bytearray()).extend(data)
        self.all.extend(data)
        stream = self.routes.get(source, self.stream)
        if stream is not None:
            stream.write(data)
            stream.flush()
        if self.log is None and not self.listeners:
            return
        line = self._lines.setdefault(source, bytearray())
        line.extend(data)
        while b"\n" in line:
            raw, _, rest = bytes(line).partition(b"\n")
            line[:] = rest
            text = raw.decode("utf-8", "replace")
            if self.log is not None:
                self.log("console", f"{source}: {text}", device=source)
            for listener in self.listeners:
                listener(source, text)

    def text(self, source: str | None = None) -> str:
        data = self.all if source is None else self.outputs.get(source, b"")
        return bytes(data).decode("utf-8", "replace")


__all__ = ["Console", "LineListener"]
