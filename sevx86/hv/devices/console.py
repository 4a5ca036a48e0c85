"""Where guest output goes: echoed to a stream, traced by line, and a bounded tail kept.

The serial port and the debug console write here. Every byte goes to the
device's stream (the terminal, a file) as it is written; the trace gets each
completed line as a host event so it lines up with the exits that produced
it. In memory only a tail is kept -- the last ``tail_limit`` bytes per device
and overall -- so a guest that prints without end costs bounded host memory
(issue 15, item 12). A line longer than ``MAX_LINE`` is traced in pieces of
that size, so no write has to rescan an ever-growing partial line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import IO

LogFn = Callable[..., None]
LineListener = Callable[[str, str], None]  # (device, the line without its newline)

DEFAULT_TAIL = 1 << 20  # bytes of output kept in memory, per device and overall
MAX_LINE = 4096  # a partial line longer than this is traced as a line


class _Tail:
    """The last ``limit`` bytes written, trimmed in amortized constant time."""

    def __init__(self, limit: int):
        self.limit = limit
        self.data = bytearray()

    def extend(self, data: bytes) -> None:
        if len(data) >= self.limit:
            self.data[:] = data[-self.limit :]
            return
        self.data.extend(data)
        if len(self.data) > 2 * self.limit:
            del self.data[: len(self.data) - self.limit]

    def value(self) -> bytes:
        return bytes(self.data[-self.limit :])


class Console:
    def __init__(
        self,
        stream: IO[bytes] | None = None,
        log: LogFn | None = None,
        *,
        tail_limit: int = DEFAULT_TAIL,
    ):
        self.stream = stream
        # Per device, another stream or None (kept and traced, not echoed):
        # e.g. the serial port to stdout and the firmware's debug console away.
        self.routes: dict[str, IO[bytes] | None] = {}
        self.log = log
        self.tail_limit = tail_limit
        self._tails: dict[str, _Tail] = {}
        self._all = _Tail(tail_limit)
        # Called with every completed line, e.g. a boot watching for a banner:
        # the guest's own text, whatever the trace's wording.
        self.listeners: list[LineListener] = []
        self._lines: dict[str, bytearray] = {}
        self.written: Counter[str] = Counter()  # bytes per device, including those let go

    @property
    def outputs(self) -> dict[str, bytes]:
        """The kept tail of each device's output."""
        return {source: tail.value() for source, tail in self._tails.items()}

    @property
    def all(self) -> bytes:
        """The kept tail of all output, in the order it was written."""
        return self._all.value()

    def truncated(self, source: str | None = None) -> bool:
        """Did output of ``source`` (or of all devices) outgrow the tail?"""
        total = self.written[source] if source is not None else sum(self.written.values())
        return total > self.tail_limit

    def partial_line(self, source: str) -> int:
        """Bytes of ``source``'s current line not yet traced (at most ``MAX_LINE``)."""
        return len(self._lines.get(source, b""))

    def write(self, source: str, data: bytes) -> None:
        if not data:
            return
        self.written[source] += len(data)
        self._tails.setdefault(source, _Tail(self.tail_limit)).extend(data)
        self._all.extend(data)
        stream = self.routes.get(source, self.stream)
        if stream is not None:
            stream.write(data)
            stream.flush()
        if self.log is not None or self.listeners:
            self._split_lines(source, data)

    def _split_lines(self, source: str, data: bytes) -> None:
        line = self._lines.setdefault(source, bytearray())
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            line.extend(data[start:end])
            self._emit(source, line, complete=True)
            start = end + 1
        line.extend(data[start:])
        while len(line) > MAX_LINE:
            piece = line[:MAX_LINE]
            del line[:MAX_LINE]
            self._emit(source, piece, complete=False)

    def _emit(self, source: str, line: bytearray, *, complete: bool) -> None:
        text = bytes(line).decode("utf-8", "replace")
        line.clear()
        if self.log is not None:
            self.log("console", f"{source}: {text}", device=source)
        if complete:  # a listener sees only whole lines, as the guest wrote them
            for listener in self.listeners:
                listener(source, text)

    def text(self, source: str | None = None) -> str:
        data = self.all if source is None else self.outputs.get(source, b"")
        return bytes(data).decode("utf-8", "replace")


__all__ = ["Console", "DEFAULT_TAIL", "LineListener", "MAX_LINE"]
