"""GDB remote serial protocol framing: ``$data#cc``, acks, escapes, hex.

GDB manual, appendix E "GDB Remote Serial Protocol", E.1 "Overview": a
packet is ``$`` data ``#`` and a two-digit hex checksum (the sum of the data
bytes modulo 256); the receiver answers ``+`` or ``-``; ``}`` escapes ``$``,
``#``, ``}`` and ``*`` as the byte XOR 0x20 (binary data); a lone 0x03 byte
is an interrupt request (E.10 "Interrupts").
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

INTERRUPT = 0x03
_ESCAPED = frozenset(b"$#}*")


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def frame(data: bytes) -> bytes:
    """One packet ready to send."""
    return b"$" + data + b"#" + b"%02x" % checksum(data)


def escape_binary(data: bytes) -> bytes:
    """Binary reply data (qXfer): the four special bytes as ``}`` + byte^0x20."""
    out = bytearray()
    for b in data:
        if b in _ESCAPED:
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape_binary(data: bytes) -> bytes:
    out = bytearray()
    it = iter(data)
    for b in it:
        out.append(next(it, 0) ^ 0x20 if b == 0x7D else b)
    return bytes(out)


class PacketReader:
    """Splits the byte stream from gdb into packets and interrupts; acks each packet.

    Runs in its own thread: ``on_packet`` gets each packet's data and
    ``on_interrupt`` each 0x03 byte outside a packet; ``on_close`` once at EOF.
    """

    def __init__(
        self,
        sock: socket.socket,
        on_packet: Callable[[bytes], None],
        on_interrupt: Callable[[], None],
        on_close: Callable[[], None],
    ):
        self._sock = sock
        self._on_packet = on_packet
        self._on_interrupt = on_interrupt
        self._on_close = on_close
        self.no_ack = False
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="gdb-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, data: bytes) -> None:
        """Send one packet (no retransmission: TCP is reliable, gdb acks anyway)."""
        with self._send_lock:
            try:
                self._sock.sendall(frame(data))
            except OSError:
                pass  # gdb went away; the reader sees EOF and detaches

    def _run(self) -> None:
        buf = bytearray()
        try:
            while True:
                try:
                    chunk = self._sock.recv(4096)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                self._drain(buf)
        finally:
            self._on_close()

    def _drain(self, buf: bytearray) -> None:
        while buf:
            first = buf[0]
            if first == INTERRUPT:
                del buf[0]
                self._on_interrupt()
            elif first == ord("$"):
                end = buf.find(b"#")
                if end < 0 or len(buf) < end + 3:
                    return  # wait for the rest
                data = bytes(buf[1:end])
                sent = bytes(buf[end + 1 : end + 3])
                del buf[: end + 3]
                ok = sent.lower() == b"%02x" % checksum(data)
                if not self.no_ack:
                    with self._send_lock:
                        try:
                            self._sock.sendall(b"+" if ok else b"-")
                        except OSError:
                            return
                if ok:
                    self._on_packet(data)
            else:
                del buf[0]  # '+', '-' and noise between packets
