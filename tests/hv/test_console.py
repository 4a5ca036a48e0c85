"""Guest output kept in memory is a bounded tail; the rest is streamed (issue 15, item 12)."""

from __future__ import annotations

import io

from sevx86.hv.devices.console import MAX_LINE, Console


class CountingStream(io.RawIOBase):
    """A stream that only counts: it keeps nothing, so the test measures the console alone."""

    def __init__(self) -> None:
        self.count = 0
        self.last = b""

    def write(self, data) -> int:  # type: ignore[override]
        self.count += len(data)
        self.last = bytes(data[-16:])
        return len(data)


def test_issue15_item12_guest_output_is_bounded_and_streamed():
    stream = CountingStream()
    lines: list[str] = []
    console = Console(stream, log=lambda kind, summary, **_: lines.append(summary), tail_limit=4096)
    chunk = bytes(range(32, 127)) * 11  # 1045 bytes, no newline
    total = 0
    for _ in range(16_000):  # ~16 MB in one line without a newline
        console.write("serial", chunk)
        total += len(chunk)
        assert console.partial_line("serial") <= MAX_LINE  # the partial line stays small
    assert stream.count == total  # everything reached the stream ...
    assert len(console.all) == 4096 and len(console.outputs["serial"]) == 4096  # ... a tail stayed
    assert console.all == (chunk * 8)[-4096:]
    assert console.truncated("serial") and console.written["serial"] == total
    # The trace got the long line in MAX_LINE pieces, not one line rebuilt per write.
    assert len(lines) == total // MAX_LINE
    assert all(len(line) == len("serial: ") + MAX_LINE for line in lines)


def test_short_output_is_kept_whole_and_lines_are_traced():
    lines: list[str] = []
    console = Console(log=lambda kind, summary, **_: lines.append(summary))
    console.write("serial", b"one\ntw")
    console.write("serial", b"o\nthree")
    assert console.text() == "one\ntwo\nthree" and not console.truncated()
    assert lines == ["serial: one", "serial: two"]
