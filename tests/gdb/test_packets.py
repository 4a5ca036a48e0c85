"""Remote-protocol framing against the GDB manual's definitions (appendix E.1)."""

from __future__ import annotations

import socket
import threading

from sevx86.gdb.packets import PacketReader, checksum, escape_binary, frame, unescape_binary


def test_frame_is_dollar_data_hash_and_the_modulo_256_sum():
    assert frame(b"OK") == b"$OK#9a"  # 'O' 0x4f + 'K' 0x4b = 0x9a
    assert frame(b"") == b"$#00"
    assert checksum(bytes([0xFF, 0x02])) == 0x01


def test_binary_escape_is_brace_then_byte_xor_0x20():
    assert escape_binary(b"a}#$*b") == b"a}]}\x03}\x04}\x0ab"
    assert unescape_binary(escape_binary(bytes(range(256)))) == bytes(range(256))


def test_reader_acks_good_packets_naks_bad_ones_and_sees_interrupts():
    ours, theirs = socket.socketpair()
    packets, interrupts, closed = [], [], threading.Event()
    reader = PacketReader(ours, packets.append, lambda: interrupts.append(1), closed.set)
    reader.start()
    theirs.sendall(b"+$g#67$m0,4#00\x03$qC#b4")  # the second checksum is wrong
    theirs.shutdown(socket.SHUT_WR)
    assert closed.wait(10)
    acks = theirs.recv(16)
    assert packets == [b"g", b"qC"]
    assert interrupts == [1]
    assert acks == b"+-+"
    ours.close()
    theirs.close()
