"""A scripted host for testing guest #VC handlers: answers from test-chosen values.

This is not the hypervisor (``sevx86.hv``); it is the smallest host that
speaks the GHCB protocol (AMD 56421) correctly enough to test a guest's
handler against: it loops on VMRUN, answers GHCB MSR protocol requests (SEV
information, CPUID, termination) and GHCB exits (CPUID, IOIO incl. string
I/O through the shared buffer, MSR, RDTSC/RDTSCP, RDPMC, WBINVD, INVD,
VMMCALL, DR7 write, MONITOR, MWAIT, MMIO read/write, termination) from
tables and device objects the test supplies, and records what it saw.

Like KVM's ``sev_es_validate_vmgexit`` it refuses an exit whose required
inputs lack their valid bit, an unknown usage or a scratch area outside the
shared buffer, answering the GHCB v2 way (SW_EXITINFO1 = 2, reason in
SW_EXITINFO2) and noting the violation in ``errors``. Outputs are written
with their valid bits set and nothing else marked valid, so a handler that
trusts a register the host did not provide is caught.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sevx86.arch.exits import SvmExit, SwExit, exit_name
from sevx86.arch.ghcb import (
    GHCB,
    GHCB_PROTOCOL_MAX,
    GHCB_PROTOCOL_MIN,
    GHCB_SIZE,
    GHCB_USAGE_STANDARD,
    SHARED_BUFFER_OFFSET,
    SHARED_BUFFER_SIZE,
    ExitInfoResult,
    GhcbError,
    GhcbMsr,
    decode_cpuid_request,
    decode_msr,
    decode_terminate,
    error_answer,
    exception_answer,
    is_valid,
    msr_cpuid_response,
    msr_sev_info_response,
    set_valid,
)
from sevx86.arch.vectors import Vector
from sevx86.arch.vmcb import EventType, Intercept, decode_ioio, encode_event
from sevx86.machine import HostView
from sevx86.vmexit import VmExit

CpuidAnswer = tuple[int, int, int, int]
# leaf -> answer, (leaf, subleaf) -> answer, or a function of (leaf, subleaf, xcr0)
CpuidTable = Mapping[int | tuple[int, int], CpuidAnswer] | Callable[[int, int, int], CpuidAnswer]

_U32 = 0xFFFF_FFFF
_U64 = (1 << 64) - 1

# Inputs the host requires per exit (GHCB spec NAE table; KVM checks the same).
_REQUIRED: dict[int, tuple[str, ...]] = {
    SvmExit.CPUID: ("rax", "rcx"),
    SvmExit.MSR: ("rcx",),
    SvmExit.RDPMC: ("rcx",),
    SvmExit.VMMCALL: ("rax", "cpl"),
    SvmExit.DR7_WRITE: ("rax",),
    SvmExit.MONITOR: ("rax", "rcx", "rdx"),
    SvmExit.MWAIT: ("rax", "rcx"),
    SwExit.MMIO_READ: ("sw_scratch",),
    SwExit.MMIO_WRITE: ("sw_scratch",),
}
_ALWAYS = ("sw_exit_code", "sw_exit_info_1", "sw_exit_info_2")
_OUTPUTS: dict[int, tuple[str, ...]] = {
    SvmExit.CPUID: ("rax", "rbx", "rcx", "rdx"),
    SvmExit.RDTSC: ("rax", "rdx"),
    SvmExit.RDTSCP: ("rax", "rcx", "rdx"),
    SvmExit.RDPMC: ("rax", "rdx"),
    SvmExit.VMMCALL: ("rax",),
}


@dataclass(frozen=True)
class Termination:
    """A guest's request to end: reason set and code, and how it asked."""

    reason_set: int
    reason_code: int
    via: str  # "msr-protocol" or "ghcb"


@dataclass
class GhcbExit:
    """One VMGEXIT as the host saw it."""

    protocol: str  # "msr" (GHCB MSR protocol) or "ghcb"
    code: int  # GHCBInfo, or SW_EXITCODE
    info1: int = 0
    info2: int = 0
    inputs: dict[str, int] = field(default_factory=dict)  # valid save-area fields
    scratch: bytes = b""  # shared-buffer bytes a string OUT / MMIO write carried
    answer: tuple[int, int] = (0, 0)  # SW_EXITINFO1/2 (or the MSR response, answer[0])
    version: int = 0
    usage: int = 0

    @property
    def name(self) -> str:
        if self.protocol == "msr":
            try:
                return f"MSR:{GhcbMsr(self.code).name}"
            except ValueError:
                return f"MSR:{self.code:#x}"
        return exit_name(self.code)


@dataclass
class HostResult:
    """How a run ended and what the host saw on the way."""

    halted: bool = False
    terminated: Termination | None = None
    last_exit: VmExit | None = None
    exits: list[GhcbExit] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # protocol violations by the guest

    @property
    def stopped(self) -> str:
        if self.halted:
            return "hlt"
        if self.terminated is not None:
            return "terminated"
        return self.last_exit.name if self.last_exit is not None else "not run"


class PortBus:
    """I/O ports: IN answers from ``values`` (a dict or a function), OUT is logged."""

    def __init__(self, values: Mapping[int, int] | Callable[[int, int], int] | None = None):
        self.values = values if values is not None else {}
        self.log: list[tuple[str, int, int, int]] = []  # (in/out, port, size, value)

    def read(self, port: int, size: int) -> int:
        v = self.values(port, size) if callable(self.values) else self.values.get(port, _U64)
        v &= (1 << (8 * size)) - 1
        self.log.append(("in", port, size, v))
        return v

    def write(self, port: int, size: int, value: int) -> None:
        self.log.append(("out", port, size, value & ((1 << (8 * size)) - 1)))

    def out_bytes(self, port: int) -> bytes:
        """Everything written to ``port``, as little-endian bytes."""
        return b"".join(
            v.to_bytes(s, "little") for d, p, s, v in self.log if d == "out" and p == port
        )


class MmioDevice:
    """Byte-addressed device registers at guest-physical addresses; accesses logged."""

    def __init__(self, base: int, size: int, initial: bytes = b""):
        self.base = base
        self.data = bytearray(size)
        self.data[: len(initial)] = initial
        self.log: list[tuple[str, int, bytes]] = []  # (read/write, gpa, bytes)

    def covers(self, gpa: int, size: int) -> bool:
        return self.base <= gpa and gpa + size <= self.base + len(self.data)

    def read(self, gpa: int, size: int) -> bytes:
        off = gpa - self.base
        data = bytes(self.data[off : off + size])
        self.log.append(("read", gpa, data))
        return data

    def write(self, gpa: int, data: bytes) -> None:
        off = gpa - self.base
        self.data[off : off + len(data)] = data
        self.log.append(("write", gpa, bytes(data)))


class ScriptedHost:
    """Plays the host for one vCPU with test-chosen answers (see module docs).

    ``tamper(record, page)`` lets a test play a misbehaving host: it runs
    after each answer is made. For a GHCB exit ``page`` is the GHCB about to
    be written back (edit it in place); for an MSR-protocol request it is
    None and a returned int replaces the response.
    """

    def __init__(
        self,
        *,
        cpuid: CpuidTable | None = None,
        ports: PortBus | None = None,
        msrs: Mapping[int, int] | None = None,
        writable_msrs: set[int] | None = None,
        mmio: list[MmioDevice] | None = None,
        tsc: int = 0x1234_5678_9ABC,
        tsc_aux: int = 0,
        pmc: Mapping[int, int] | None = None,
        vmmcall: Callable[[dict[str, int]], int] | None = None,
        cbitpos: int | None = None,
        protocol: tuple[int, int] = (GHCB_PROTOCOL_MIN, GHCB_PROTOCOL_MAX),
        tamper: Callable[[GhcbExit, bytearray | None], int | None] | None = None,
    ):
        self.cpuid = cpuid if cpuid is not None else {}
        self.ports = ports or PortBus()
        self.msrs: dict[int, int] = dict(msrs or {})
        self.writable_msrs = set(writable_msrs if writable_msrs is not None else self.msrs)
        self.mmio = list(mmio or [])
        self.tsc = tsc
        self.tsc_aux = tsc_aux
        self.pmc = dict(pmc or {})
        self.vmmcall = vmmcall
        self.cbitpos = cbitpos
        self.protocol = protocol
        self.tamper = tamper
        self.dr7: int | None = None  # the guest's last DR7 write
        self.events: list[tuple[str, dict[str, int]]] = []  # WBINVD, INVD, MONITOR, MWAIT

    # -- set-up ---------------------------------------------------------------------
    def attach(self, host: HostView) -> None:
        """Intercept what an SEV-ES hypervisor intercepts, before the first VMRUN."""
        vmcb = host.vcpus[0].vmcb
        vmcb.intercept(
            Intercept.CPUID,
            Intercept.RDTSC,
            Intercept.RDTSCP,
            Intercept.RDPMC,
            Intercept.WBINVD,
            Intercept.INVD,
            Intercept.VMMCALL,
            Intercept.MONITOR,
            Intercept.MWAIT,
            Intercept.DR7_READ,
            Intercept.DR7_WRITE,
        )
        vmcb.intercept_all_io()
        vmcb.intercept_all_msrs()
        if self.cbitpos is None:
            self.cbitpos = host.config.cbitpos

    # -- the loop -------------------------------------------------------------------
    def run(self, host: HostView, *, timeout: float = 20.0, max_exits: int = 100_000) -> HostResult:
        """VMRUN until HLT, a termination request, or an exit this host does not handle."""
        result = HostResult()
        vcpu = host.vcpus[0]
        for _ in range(max_exits):
            e = vcpu.vmrun(timeout=timeout)
            result.last_exit = e
            if e.stop is not None or e.code != SvmExit.VMGEXIT:
                result.halted = e.stop is None and e.code == SvmExit.HLT
                return result
            value = vcpu.vmcb["ghcb_gpa"]
            if value & 0xFFF:
                response = self._msr_protocol(value, result)
                if result.terminated is not None or response is None:
                    return result
                vcpu.vmcb["ghcb_gpa"] = response
            elif not self._ghcb_exit(host, value, result) or result.terminated is not None:
                return result
        result.errors.append(f"more than {max_exits} exits")
        return result

    # -- GHCB MSR protocol ----------------------------------------------------------------
    def _msr_protocol(self, value: int, result: HostResult) -> int | None:
        code, _data = decode_msr(value)
        record = GhcbExit("msr", int(code), info1=value)
        result.exits.append(record)
        response: int | None = None
        if code == GhcbMsr.SEV_INFO_REQ:
            low, high = self.protocol
            response = msr_sev_info_response(high, low, self.cbitpos or 51)
        elif code == GhcbMsr.CPUID_REQ:
            fn, reg = decode_cpuid_request(value)
            answer = self._cpuid(fn, 0, 1)
            response = msr_cpuid_response(answer[reg] & _U32, reg)
        elif code == GhcbMsr.TERM_REQ:
            reason_set, reason_code = decode_terminate(value)
            result.terminated = Termination(reason_set, reason_code, "msr-protocol")
        else:
            result.errors.append(f"GHCB MSR protocol request {value:#x} not served")
        if self.tamper is not None and response is not None:
            changed = self.tamper(record, None)
            response = response if changed is None else changed
        record.answer = (response or 0, 0)
        return response

    # -- GHCB page ----------------------------------------------------------------------
    def _ghcb_exit(self, host: HostView, gpa: int, result: HostResult) -> bool:
        """Serve one GHCB exit; False if the host cannot go on."""
        if not host.memory.contains(gpa, GHCB_SIZE):
            result.errors.append(f"GHCB GPA {gpa:#x} is not guest RAM")
            return False
        page = bytearray(host.memory.read(gpa, GHCB_SIZE))
        bitmap = GHCB["valid_bitmap"].read(page)
        code = GHCB["sw_exit_code"].read(page)
        record = GhcbExit(
            "ghcb",
            code,
            info1=GHCB["sw_exit_info_1"].read(page),
            info2=GHCB["sw_exit_info_2"].read(page),
            inputs={
                f.name: f.read(page) for f in GHCB if f.offset < 0x3F0 and is_valid(bitmap, f.name)
            },
            version=GHCB["protocol_version"].read(page),
            usage=GHCB["ghcb_usage"].read(page),
        )
        result.exits.append(record)
        answer, outputs = self._check(record, gpa, result)
        if answer is None:
            try:
                answer, outputs = self._serve(record, page, gpa, result)
            except _Refuse as refusal:
                answer, outputs = refusal.answer, {}
        if result.terminated is not None:
            return True
        # Write back: the outputs, their valid bits, SW_EXITINFO1/2; nothing else valid.
        bitmap = 0
        for name, value in outputs.items():
            GHCB[name].write(page, value & _U64)
            bitmap = set_valid(bitmap, name)
        GHCB["sw_exit_info_1"].write(page, answer[0])
        GHCB["sw_exit_info_2"].write(page, answer[1])
        bitmap = set_valid(bitmap, "sw_exit_info_1", "sw_exit_info_2")
        GHCB["valid_bitmap"].write(page, bitmap)
        record.answer = answer
        if self.tamper is not None:
            self.tamper(record, page)
        host.memory.write(gpa, bytes(page))
        return True

    def _check(
        self, r: GhcbExit, gpa: int, result: HostResult
    ) -> tuple[tuple[int, int] | None, dict[str, int]]:
        def refuse(reason: GhcbError, why: str) -> tuple[tuple[int, int], dict[str, int]]:
            result.errors.append(f"{r.name}: {why}")
            return error_answer(reason), {}

        low, high = self.protocol
        if not low <= r.version <= high:
            return refuse(GhcbError.INVALID_INPUT, f"protocol version {r.version}")
        if r.usage != GHCB_USAGE_STANDARD:
            return refuse(GhcbError.INVALID_USAGE, f"usage {r.usage}")
        missing = [n for n in (*_ALWAYS, *_REQUIRED.get(r.code, ())) if n not in r.inputs]
        if r.code == SvmExit.CPUID and r.inputs.get("rax", 0) & _U32 == 0xD:
            missing += [] if "xcr0" in r.inputs else ["xcr0"]
        if r.code == SvmExit.MSR and r.info1 == 1:
            missing += [n for n in ("rax", "rdx") if n not in r.inputs]
        if r.code == SvmExit.IOIO:
            io = decode_ioio(r.info1)
            need = ("sw_scratch",) if io.string else (() if io.is_in else ("rax",))
            missing += [n for n in need if n not in r.inputs]
        if missing:
            return refuse(GhcbError.MISSING_INPUT, f"valid bit clear for {', '.join(missing)}")
        scratch = r.inputs.get("sw_scratch")
        if scratch is not None and r.code in (SvmExit.IOIO, SwExit.MMIO_READ, SwExit.MMIO_WRITE):
            size = self._scratch_size(r)
            buf = gpa + SHARED_BUFFER_OFFSET
            if not (buf <= scratch and scratch + size <= buf + SHARED_BUFFER_SIZE):
                return refuse(
                    GhcbError.INVALID_SCRATCH_AREA, f"scratch {scratch:#x}+{size} outside"
                )
        return None, {}

    @staticmethod
    def _scratch_size(r: GhcbExit) -> int:
        if r.code == SvmExit.IOIO:
            io = decode_ioio(r.info1)
            return io.size * r.info2 if io.string else 0
        return r.info2

    def _serve(
        self, r: GhcbExit, page: bytearray, gpa: int, result: HostResult
    ) -> tuple[tuple[int, int], dict[str, int]]:
        ok = (int(ExitInfoResult.OK), 0)
        regs = r.inputs
        code = r.code
        if code == SvmExit.CPUID:
            answer = self._cpuid(regs["rax"] & _U32, regs["rcx"] & _U32, regs.get("xcr0", 1))
            return ok, dict(zip(_OUTPUTS[code], (v & _U32 for v in answer), strict=True))
        if code == SvmExit.IOIO:
            return ok, self._ioio(r, page, gpa)
        if code == SvmExit.MSR:
            msr = regs["rcx"] & _U32
            if r.info1 == 1:
                if msr not in self.writable_msrs:
                    raise _Refuse(exception_answer(encode_event(Vector.GP, EventType.EXCEPTION)))
                self.msrs[msr] = (regs["rax"] & _U32) | ((regs["rdx"] & _U32) << 32)
                return ok, {}
            if msr not in self.msrs:
                raise _Refuse(exception_answer(encode_event(Vector.GP, EventType.EXCEPTION)))
            value = self.msrs[msr]
            return ok, {"rax": value & _U32, "rdx": value >> 32}
        if code in (SvmExit.RDTSC, SvmExit.RDTSCP):
            out = {"rax": self.tsc & _U32, "rdx": (self.tsc >> 32) & _U32}
            if code == SvmExit.RDTSCP:
                out["rcx"] = self.tsc_aux & _U32
            return ok, out
        if code == SvmExit.RDPMC:
            value = self.pmc.get(regs["rcx"] & _U32, 0)
            return ok, {"rax": value & _U32, "rdx": (value >> 32) & _U32}
        if code == SvmExit.VMMCALL:
            rax = self.vmmcall(dict(regs)) if self.vmmcall is not None else 0
            return ok, {"rax": rax}
        if code == SvmExit.DR7_WRITE:
            self.dr7 = regs["rax"]
            return ok, {}
        if code in (SvmExit.WBINVD, SvmExit.INVD, SvmExit.MONITOR, SvmExit.MWAIT):
            self.events.append((exit_name(code), dict(regs)))
            return ok, {}
        if code in (SwExit.MMIO_READ, SwExit.MMIO_WRITE):
            return self._mmio(r, page, gpa)
        if code == SwExit.TERMINATE:
            result.terminated = Termination(r.info1 & 0xF, (r.info1 >> 4) & 0xFF, "ghcb")
            return ok, {}
        result.errors.append(f"exit {r.name} not served")
        return error_answer(GhcbError.INVALID_EVENT), {}

    def _cpuid(self, leaf: int, subleaf: int, xcr0: int) -> CpuidAnswer:
        if callable(self.cpuid):
            return self.cpuid(leaf, subleaf, xcr0)
        table = self.cpuid
        found = table.get((leaf, subleaf), table.get(leaf))
        return found if found is not None else (0, 0, 0, 0)

    def _ioio(self, r: GhcbExit, page: bytearray, gpa: int) -> dict[str, int]:
        io = decode_ioio(r.info1)
        if not io.string:
            if io.is_in:
                return {"rax": self.ports.read(io.port, io.size)}
            self.ports.write(io.port, io.size, r.inputs["rax"])
            return {}
        off = r.inputs["sw_scratch"] - gpa
        count = r.info2
        if io.is_in:
            data = b"".join(
                self.ports.read(io.port, io.size).to_bytes(io.size, "little") for _ in range(count)
            )
            page[off : off + len(data)] = data
        else:
            data = bytes(page[off : off + io.size * count])
            r.scratch = data
            for i in range(count):
                value = int.from_bytes(data[i * io.size : (i + 1) * io.size], "little")
                self.ports.write(io.port, io.size, value)
        return {}

    def _mmio(
        self, r: GhcbExit, page: bytearray, gpa: int
    ) -> tuple[tuple[int, int], dict[str, int]]:
        target, size = r.info1, r.info2
        off = r.inputs["sw_scratch"] - gpa
        device = next((d for d in self.mmio if d.covers(target, size)), None)
        if device is None or size not in (1, 2, 4, 8):
            return error_answer(GhcbError.INVALID_INPUT), {}
        if r.code == SwExit.MMIO_READ:
            page[off : off + size] = device.read(target, size)
        else:
            r.scratch = bytes(page[off : off + size])
            device.write(target, r.scratch)
        return (int(ExitInfoResult.OK), 0), {}


class _Refuse(Exception):
    def __init__(self, answer: tuple[int, int]):
        super().__init__(answer)
        self.answer = answer


__all__ = [
    "GhcbExit",
    "HostResult",
    "MmioDevice",
    "PortBus",
    "ScriptedHost",
    "Termination",
]
