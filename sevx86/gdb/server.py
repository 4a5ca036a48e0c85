"""The gdb stub: one connection, all-stop, one gdb thread per vCPU.

Packets are those of the GDB manual, appendix E ("Packets", "General Query
Packets", "Stop Reply Packets"): ``?``, ``g``/``G``/``p``/``P``,
``m``/``M``, ``Z0``-``Z4``/``z``, ``c``/``s``/``vCont``, ``H``, ``T``,
``qfThreadInfo``, ``qXfer:features:read`` (registers.target_xml),
``qRcmd`` (``monitor``), ``D``/``k``; Ctrl-C is the 0x03 byte.

Threading: a reader thread takes packets off the socket. While the guest
runs, only an interrupt is expected and it asks every vCPU to stop. When a
vCPU stops (``on_stop``, called by sevx86.cpu.debug in that vCPU's thread),
that thread serves packets until gdb resumes: the vCPU is between two
instructions and no other vCPU runs (``--scheduler deterministic`` runs one
vCPU at a time; the CLI refuses ``--gdb`` with the parallel scheduler).

Under the SEV debug policy (sevx86.gdb.memory): registers of an SEV-ES
vCPU come only from a DBG_DECRYPT of its VMSA, memory from DBG_DECRYPT; a
NODBG policy leaves ``<unavailable>`` registers and the host's ciphertext,
and the stub says why once (stderr and gdb's console).
"""

from __future__ import annotations

import queue
import socket
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

from sevx86.arch.vmsa import VMSA_SIZE
from sevx86.config import GuestMode
from sevx86.cpu.debug import DebugStop, StopKind, VcpuDebug, WatchKind
from sevx86.gdb import registers as R
from sevx86.gdb.memory import DebugMemory, Door, Unreadable
from sevx86.gdb.packets import PacketReader, escape_binary
from sevx86.sp.errors import SevApiStatus, SevError

if TYPE_CHECKING:
    from sevx86.machine import Machine

SIGTRAP = 5
SIGINT = 2
PACKET_SIZE = 0x4000
_WATCH_NAMES = {WatchKind.WRITE: "watch", WatchKind.READ: "rwatch", WatchKind.ACCESS: "awatch"}
_CLOSED = b""  # sentinel in the packet queue: gdb went away

MONITOR_HELP = """\
sevx86 monitor commands:
  monitor phys ADDR [LEN]   guest-physical bytes, private (through DBG_DECRYPT)
  monitor dram ADDR [LEN]   guest-physical bytes as the host's DRAM holds them
  monitor phys-write ADDR HEXBYTES
                            write guest-physical bytes, private (through DBG_ENCRYPT)
  monitor v2p ADDR          the guest-physical address and C-bit of a virtual one
  monitor sev               mode, policy and what the debugger can see
"""


class GdbServer:
    """A gdb remote stub over one ``Machine``."""

    def __init__(
        self,
        machine: Machine,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log: IO[str] | None = None,
    ):
        self._machine = machine
        self._address = (host, port)
        self._log = log if log is not None else sys.stderr
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._reader: PacketReader | None = None
        self._packets: queue.Queue[bytes] = queue.Queue()
        self._debugs: list[VcpuDebug] = []
        self._mode = machine.mode
        host_memory = machine.host_view().memory
        door = Door(
            machine.dbg_decrypt,
            machine.dbg_encrypt,
            host_memory.read,
            host_memory.write,
            host_memory.contains,
        )
        self._door = door
        self._memory = DebugMemory(door, machine.config, self._refused)
        self._stop: DebugStop | None = None
        self._awaiting = False  # gdb waits for a stop reply
        self._detached = False
        self._g_thread = 0  # vCPU index of Hg
        self._c_thread = -1  # vCPU index of Hc (-1: any)
        self._notices: list[str] = []
        self._watches: dict[tuple[WatchKind, int, int], list[tuple[int, int, int]]] = {}
        self._said_refusal = False
        self.on_kill: Callable[[], None] | None = None  # ends the run (set by the CLI)
        self.killed = False

    # -- setup ---------------------------------------------------------------------------
    def listen(self) -> tuple[str, int]:
        """Bind and listen; returns the address (port 0 picks a free port)."""
        family = socket.AF_INET6 if ":" in self._address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(self._address)
        sock.listen(1)
        self._listener = sock
        host, port = sock.getsockname()[:2]
        return host, port

    def attach(self) -> None:
        """Give every vCPU its debug hooks; vCPU 0 stops before its first instruction."""
        for vcpu in self._machine.vcpus:
            debug = VcpuDebug(vcpu, self, stop_at_start=vcpu.index == 0)
            vcpu.debug = debug
            self._debugs.append(debug)

    def wait_for_gdb(self, timeout: float | None = None) -> None:
        """Block until gdb connects (``target remote``)."""
        assert self._listener is not None, "listen() first"
        self._listener.settimeout(timeout)
        conn, _ = self._listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn = conn
        self._reader = PacketReader(conn, self._packets.put, self._interrupt, self._closed)
        self._reader.start()

    def finish(self, status: int) -> None:
        """The run is over: tell gdb the inferior exited, and close."""
        if self._reader is not None and not self._detached:
            self._flush_notices()
            self._reader.send(b"W%02x" % (status & 0xFF))
        self.close()

    def close(self) -> None:
        for sock in (self._conn, self._listener):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
        self._conn = self._listener = None

    # -- events from the reader thread -----------------------------------------------------
    def _interrupt(self) -> None:
        if self._awaiting:
            for debug in self._debugs:
                debug.request_stop()

    def _closed(self) -> None:
        self._packets.put(_CLOSED)
        # A running guest must not wait for a debugger that left.
        self._detach()

    def _detach(self) -> None:
        self._detached = True
        self._watches.clear()
        for debug in self._debugs:
            debug.clear()

    # -- the DebugListener ---------------------------------------------------------------
    def on_stop(self, stop: DebugStop) -> None:
        if self._detached:
            return
        self._stop = stop
        self._g_thread = stop.vcpu
        for debug in self._debugs:
            debug.cancel_stop()
        if self._awaiting:
            self._send_stop_reply()
        while True:
            data = self._packets.get()
            if data == _CLOSED:
                self._resume_all(step_thread=None)
                return
            reply = self._handle(data)
            if reply is None:  # resumed
                self._awaiting = True
                return
            self._send(reply)

    # -- packets -------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        assert self._reader is not None
        self._reader.send(data)

    def _stop_reply(self) -> bytes:
        stop = self._stop
        if stop is None:
            return b"S%02x" % SIGTRAP
        signal = SIGINT if stop.kind is StopKind.INTERRUPT else SIGTRAP
        reply = b"T%02xthread:%x;" % (signal, stop.vcpu + 1)
        if stop.watch is not None:
            kind, addr = stop.watch
            reply += b"%s:%x;" % (_WATCH_NAMES[kind].encode(), addr)
        return reply

    def _send_stop_reply(self) -> None:
        self._flush_notices()
        self._send(self._stop_reply())

    def _flush_notices(self) -> None:
        while self._notices:
            text = self._notices.pop(0)
            self._send(b"O" + text.encode().hex().encode())

    def _handle(self, data: bytes) -> bytes | None:
        """One packet's reply, or None when it resumes the guest."""
        head = data[:1]
        try:
            if head == b"?":
                return self._stop_reply()
            if head == b"g":
                return R.encode(self._registers(self._g_thread))
            if head == b"G":
                return self._write_registers(self._g_thread, data[1:], None)
            if head == b"p":
                num = int(data[1:], 16)
                if num >= len(R.REGISTERS):
                    return b"E00"
                return R.encode_one(self._registers(self._g_thread), R.REGISTERS[num])
            if head == b"P":
                num_text, _, value = data[1:].partition(b"=")
                num = int(num_text, 16)
                if num >= len(R.REGISTERS):
                    return b"E00"
                return self._write_registers(self._g_thread, value, R.REGISTERS[num])
            if head == b"m":
                addr, size = (int(x, 16) for x in data[1:].split(b","))
                regs = self._registers(self._g_thread)
                return self._memory.read_virtual(addr, size, regs).hex().encode()
            if head == b"M":
                where, _, hexdata = data[1:].partition(b":")
                addr, _size = (int(x, 16) for x in where.split(b","))
                regs = self._registers(self._g_thread)
                self._memory.write_virtual(addr, bytes.fromhex(hexdata.decode()), regs)
                return b"OK"
            if head in (b"Z", b"z"):
                return self._breakpoint(head == b"Z", data[1:])
            if head == b"H":
                return self._set_thread(data[1:2], data[2:])
            if head == b"T":
                return b"OK" if self._thread_index(data[1:]) is not None else b"E01"
            if head in (b"c", b"C"):
                self._resume_all(step_thread=None)
                return None
            if head in (b"s", b"S"):
                thread = self._c_thread if self._c_thread >= 0 else self._stop_vcpu()
                self._resume_all(step_thread=thread)
                return None
            if data.startswith(b"vCont"):
                return self._vcont(data)
            if head == b"q" or head == b"Q":
                return self._query(data)
            if head == b"D":
                self._detach()
                self._send(b"OK")
                self._resume_all(step_thread=None)
                return None
            if head == b"k":
                self._kill()
                return None
        except Unreadable:
            return b"E01"
        except (ValueError, IndexError):
            return b"E00"
        except Exception as exc:  # a stub bug must not take the vCPU down with it
            print(f"sevx86 gdb: {data[:40]!r}: {type(exc).__name__}: {exc}", file=self._log)
            return b"E03"
        return b""  # unsupported: the empty reply (E.1)

    def _kill(self) -> None:
        """gdb's kill: end the run (the CLI's hypervisor stops at the next exit)."""
        self._detach()
        self.killed = True
        if self.on_kill is not None:
            self.on_kill()
        for vcpu in self._machine.vcpus:
            vcpu.kick()  # an exit now, so the hypervisor sees the end at once
        self._resume_all(step_thread=None)

    def _stop_vcpu(self) -> int:
        return self._stop.vcpu if self._stop is not None else 0

    def _thread_index(self, text: bytes) -> int | None:
        tid = int(text, 16) if text not in (b"", b"-1") else 0
        if tid <= 0:
            return self._stop_vcpu()
        index = tid - 1
        return index if index < len(self._debugs) else None

    def _set_thread(self, which: bytes, text: bytes) -> bytes:
        if text == b"-1":
            if which == b"c":
                self._c_thread = -1
            return b"OK"
        index = self._thread_index(text)
        if index is None:
            return b"E01"
        if which == b"g":
            self._g_thread = index
        else:
            self._c_thread = index if text not in (b"0",) else -1
        return b"OK"

    def _vcont(self, data: bytes) -> bytes | None:
        if data == b"vCont?":
            return b"vCont;c;C;s;S"
        step_thread = None
        for action in data[len(b"vCont;") :].split(b";"):
            verb, _, tid = action.partition(b":")
            if verb[:1] in (b"s", b"S") and step_thread is None:
                step_thread = self._thread_index(tid) if tid else self._stop_vcpu()
        self._resume_all(step_thread=step_thread)
        return None

    def _resume_all(self, *, step_thread: int | None) -> None:
        for debug in self._debugs:
            debug.resume(step=debug.index == step_thread)

    def _breakpoint(self, insert: bool, args: bytes) -> bytes:
        kind_text, addr_text, length_text = args.split(b",")[:3]
        kind, addr, length = int(kind_text), int(addr_text, 16), int(length_text.split(b";")[0], 16)
        if kind in (0, 1):  # software and hardware: both a code hook, no guest byte changed
            for debug in self._debugs:
                if insert:
                    debug.add_breakpoint(addr)
                else:
                    debug.remove_breakpoint(addr)
            return b"OK"
        if kind in (2, 3, 4):
            return self._watchpoint(insert, WatchKind(kind), addr, length)
        return b""

    def _watchpoint(self, insert: bool, kind: WatchKind, addr: int, length: int) -> bytes:
        """Z2-Z4: the engine watches guest-physical bytes, so translate each page now
        (with the stopped vCPU's page tables, as gdb sets them while stopped)."""
        key = (kind, addr, length)
        if not insert:
            for piece_addr, piece_len, _ in self._watches.pop(key, ()):
                for debug in self._debugs:
                    debug.remove_watchpoint(piece_addr, piece_len, kind)
            return b"OK"
        regs = self._registers(self._g_thread)
        pieces = []
        for piece_addr, piece_len in _page_pieces(addr, max(length, 1)):
            gpa = self._memory.translate(piece_addr, regs).gpa  # Unreadable: E01
            pieces.append((piece_addr, piece_len, gpa))
        for piece_addr, piece_len, gpa in pieces:
            for debug in self._debugs:
                debug.add_watchpoint(piece_addr, piece_len, kind, gpa=gpa)
        self._watches[key] = pieces
        return b"OK"

    def _query(self, data: bytes) -> bytes:
        if data.startswith(b"qSupported"):
            return b"PacketSize=%x;qXfer:features:read+;vContSupported+" % PACKET_SIZE
        if data.startswith(b"qXfer:features:read:"):
            annex, _, span = data[len(b"qXfer:features:read:") :].partition(b":")
            if annex != b"target.xml":
                return b"E00"
            offset, length = (int(x, 16) for x in span.split(b","))
            xml = R.target_xml()
            part = xml[offset : offset + length]
            return (b"l" if offset + length >= len(xml) else b"m") + escape_binary(part)
        if data == b"qAttached":
            return b"1"
        if data == b"qC":
            return b"QC%x" % (self._stop_vcpu() + 1)
        if data == b"qfThreadInfo":
            return b"m" + b",".join(b"%x" % (d.index + 1) for d in self._debugs)
        if data == b"qsThreadInfo":
            return b"l"
        if data.startswith(b"qThreadExtraInfo,"):
            index = self._thread_index(data.split(b",")[1])
            if index is None:
                return b"E01"
            role = "BSP" if index == 0 else "AP"
            return f"vCPU {index} ({role})".encode().hex().encode()
        if data == b"qSymbol::":
            return b"OK"
        if data.startswith(b"qRcmd,"):
            return self._monitor(bytes.fromhex(data[6:].decode()).decode(errors="replace"))
        return b""

    # -- registers -----------------------------------------------------------------------
    def _registers(self, index: int) -> bytes | None:
        """The vCPU's registers as a VMSA page, or None when the policy refuses them."""
        vcpu = self._machine.vcpus[index]
        if self._mode is GuestMode.SEV_ES:
            assert vcpu.vmsa_spa is not None
            try:
                return self._door.decrypt(vcpu.vmsa_spa, VMSA_SIZE)
            except SevError as exc:
                if exc.status is not SevApiStatus.POLICY_FAILURE:
                    raise Unreadable(str(exc)) from None
                self._refused(exc)
                return None
        return self._debugs[index].registers()

    def _write_registers(self, index: int, value: bytes, reg: R.Register | None) -> bytes:
        current = self._registers(index)
        if current is None:
            return b"E01"
        page = bytearray(current)
        if reg is None:
            R.decode_all(page, value)
        else:
            R.patch(page, reg, bytes.fromhex(value.decode()))
        if self._mode is GuestMode.SEV_ES:
            vcpu = self._machine.vcpus[index]
            assert vcpu.vmsa_spa is not None
            try:
                self._door.encrypt(vcpu.vmsa_spa, bytes(page))  # the SP reseals the VMSA
            except SevError as exc:
                self._refused(exc)
                return b"E01"
            return b"OK"
        try:
            self._debugs[index].write_registers(bytes(page))
        except PermissionError:
            return b"E01"  # a vCPU that has not run yet has no registers to change
        return b"OK"

    # -- the policy's voice --------------------------------------------------------------
    def _refused(self, exc: SevError) -> None:
        if self._said_refusal:
            return
        self._said_refusal = True
        text = (
            f"sevx86 gdb: {exc}. The guest owner did not allow debugging: memory shows "
            "the host's ciphertext"
            + (
                ", registers are unavailable (they are in the encrypted VMSA)"
                if self._mode is GuestMode.SEV_ES
                else ""
            )
            + ". Launch with a policy without NODBG (e.g. --policy 0x4) to debug.\n"
        )
        print(text, end="", file=self._log, flush=True)
        self._notices.append(text)

    # -- monitor -------------------------------------------------------------------------
    def _monitor(self, command: str) -> bytes:
        words = command.split()
        try:
            if not words or words[0] == "help":
                out = MONITOR_HELP
            elif words[0] in ("phys", "dram") and len(words) in (2, 3):
                addr = int(words[1], 0)
                size = int(words[2], 0) if len(words) == 3 else 16
                data = self._memory.read_physical(addr, size, private=words[0] == "phys")
                out = _hexdump(addr, data)
            elif words[0] == "phys-write" and len(words) == 3:
                addr, data = int(words[1], 0), bytes.fromhex(words[2])
                self._memory.write_physical(addr, data)
                out = f"{len(data)} bytes written at {addr:#x}\n"
            elif words[0] == "v2p" and len(words) == 2:
                t = self._memory.translate(int(words[1], 0), self._registers(self._g_thread))
                out = f"{int(words[1], 0):#x} -> gpa {t.gpa:#x} ({'C=1, private' if t.private else 'C=0, shared'})\n"  # noqa: E501
            elif words[0] == "sev":
                out = self._sev_status()
            else:
                out = f"unknown monitor command {command!r}\n" + MONITOR_HELP
        except Unreadable as exc:
            out = f"{exc}\n"
        except ValueError:
            out = f"bad number in {command!r}\n"
        self._send(b"O" + out.encode().hex().encode())
        return b"OK"

    def _sev_status(self) -> str:
        mode = self._mode.value
        if self._mode is GuestMode.NONE:
            return "mode none: no encryption, the debugger sees everything\n"
        policy = self._machine.policy
        lines = [f"mode {mode}, policy {policy}"]
        if policy is not None and policy.nodbg:
            lines.append("NODBG: DBG_DECRYPT/DBG_ENCRYPT refused; memory is the host's ciphertext")
            if self._mode is GuestMode.SEV_ES:
                lines.append("registers: unavailable (encrypted VMSA)")
        else:
            lines.append("debuggable: private memory and the VMSA through DBG_DECRYPT")
        return "\n".join(lines) + "\n"


def _page_pieces(addr: int, size: int) -> list[tuple[int, int]]:
    out = []
    end = addr + size
    while addr < end:
        n = min(end, (addr | 0xFFF) + 1) - addr
        out.append((addr, n))
        addr += n
    return out


def _hexdump(addr: int, data: bytes) -> str:
    rows = []
    for off in range(0, len(data), 16):
        chunk = data[off : off + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        rows.append(f"{addr + off:#014x}  {chunk.hex(' '):<47}  {text}")
    return "\n".join(rows) + "\n"
