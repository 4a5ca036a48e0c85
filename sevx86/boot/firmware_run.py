"""Boot a firmware image as QEMU boots an SEV-ES guest, and watch it get somewhere.

``FirmwareBoot(firmware, varstore=...)`` does what ``qemu-system-x86_64
-machine pc,memory-encryption=sev0 -object sev-guest,policy=0x5,cbitpos=51,
reduced-phys-bits=1 -drive if=pflash,...`` does up to the first instruction:

1. the SEV-ES launch (``sevx86.boot.launch``): flash mapped to end at 4 GiB,
   the varstore right below it, LAUNCH_UPDATE_DATA over the code, the initial
   VMSAs from QEMU's reset state, LAUNCH_MEASURE, LAUNCH_FINISH;
2. the guest (``Machine``: memory, vCPUs, Secure Processor context) and the
   untrusted host (``Hypervisor`` with the devices of QEMU's ``pc`` machine,
   ``sevx86.hv.machines.QemuPc``);
3. ``run()``: the guest runs until it stops, a limit is hit, or the milestone
   named by ``until`` is reached.

Milestones are the path of an OVMF boot, each recorded once, as a trace
event of kind ``milestone``, with the trace time and sequence number:

============  ===============================================================
name          reached when
============  ===============================================================
cbit          the reset vector's #VC handler asked CPUID 0x8000_001F EBX
              through the GHCB MSR protocol: it learned the C-bit position
long-mode     EFER.LME was written and then CR0.PG set (the CR/EFER write
              traps tell the host): 64-bit code ahead
sec           the CPU reached the entry point of the SEC core (SECURITY_CORE)
ghcb          the first VMGEXIT through a GHCB page (the guest negotiated
              the protocol with SEV_INFO and put the page's GPA in the GHCB
              MSR); the C-bit facts of its page tables are recorded then
ghcb-io       first GHCB IOIO request to a port above 0xFF served: the
              guest's #VC handler decoded an ``in``/``out`` with DX
ghcb-mmio     first GHCB MMIO request served: the handler decoded the MOV
              that faulted on a page that is not RAM (the local APIC)
pei-core      the CPU reached the PEI core's entry point
platform-pei  the CPU reached PlatformPei's entry point
bds           a console line from the BDS phase ("BdsDxe")
shell         the UEFI shell's banner on the console
============  ===============================================================

The entry points come from the flash image itself (``sevx86.boot.fv``: the
firmware volumes, their FFS files, PE/TE headers, the LZMA-compressed PEI
volume and the address its images were rebased to). Reaching one is seen
from the trusted side, like a debugger's breakpoint: a Unicorn code hook on
that single address (no cost elsewhere). Every other milestone is what the
untrusted host can see through exits and the console.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from unicorn import UC_HOOK_CODE

from sevx86.arch.cpuid import Leaf, decode_8000001f
from sevx86.arch.cr import Cr0
from sevx86.arch.exits import SvmExit, SwExit
from sevx86.arch.ghcb import (
    CpuidReg,
    GhcbMsr,
    decode_cpuid_request,
    decode_cpuid_response,
    msr_info,
)
from sevx86.arch.msr import Efer
from sevx86.arch.paging import CR3_ADDR_MASK, Pte
from sevx86.arch.uefi_fv import FfsFileType
from sevx86.arch.vmcb import decode_ioio
from sevx86.boot.fv import EntryPoint, FlashLayout
from sevx86.boot.launch import DEFAULT_VCPU_TYPE, LaunchedGuest, adopt, launch_guest
from sevx86.boot.ovmf import OvmfImage
from sevx86.config import GuestConfig, GuestMode, MiB
from sevx86.hv.clock import VirtualClock
from sevx86.hv.hypervisor import ExitEvent, Hypervisor, Proceed
from sevx86.hv.machines import QemuPc
from sevx86.hv.msr_protocol import MsrProtocolRequest
from sevx86.hv.requests import GhcbRequest
from sevx86.hv.run import RunResult
from sevx86.memory.mmu import Access, Translation
from sevx86.sp.policy import GuestPolicy
from sevx86.sp.secure_processor import SecureProcessor
from sevx86.trace.events import TraceEvent, TraceKind, Tracer

DEFAULT_MEMORY = 512 * MiB
DX_PORT_MIN = 0x100  # a port above 0xFF can only be reached through DX

MILESTONES: dict[str, str] = {
    "cbit": "reset vector learned the C-bit through the GHCB MSR protocol",
    "long-mode": "EFER.LME and CR0.PG set: 64-bit mode",
    "sec": "SEC core entry point reached",
    "ghcb": "first VMGEXIT through the GHCB page",
    "ghcb-io": "GHCB IOIO with a DX port served",
    "ghcb-mmio": "GHCB MMIO request served",
    "pei-core": "PEI core entry point reached",
    "platform-pei": "PlatformPei entry point reached",
    "bds": "BDS phase on the console",
    "shell": "UEFI shell banner on the console",
}
CONSOLE_MILESTONES = {"bds": "BdsDxe", "shell": "UEFI Interactive Shell"}
# Entry points watched with a code hook: milestone -> (FFS file type, UI name or None).
ENTRY_MILESTONES: dict[str, tuple[int, str | None]] = {
    "sec": (FfsFileType.SECURITY_CORE, None),
    "pei-core": (FfsFileType.PEI_CORE, None),
    "platform-pei": (FfsFileType.PEIM, "PlatformPei"),
}


@dataclass
class Milestone:
    name: str
    description: str
    t: float | None = None  # trace time (seconds since the tracer started)
    seq: int | None = None  # trace sequence number of the milestone event
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def reached(self) -> bool:
        return self.t is not None


@dataclass
class BootResult:
    run: RunResult
    milestones: list[Milestone]
    counters: dict[str, int]
    first_vmrun_t: float | None

    def milestone(self, name: str) -> Milestone:
        for m in self.milestones:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def reached(self) -> list[str]:
        return [m.name for m in self.milestones if m.reached]

    @property
    def furthest(self) -> str | None:
        done = [m for m in self.milestones if m.reached]
        return max(done, key=lambda m: m.seq or 0).name if done else None

    def exit_kinds(self) -> dict[str, int]:
        """Hardware exits by code, VMGEXITs by request: the host's work, counted."""
        return dict(sorted(self.counters.items(), key=lambda kv: (-kv[1], kv[0])))

    def since_first_vmrun(self, name: str) -> float | None:
        """Wall-clock seconds from the first VMRUN to a milestone (trace timestamps)."""
        m = self.milestone(name)
        if m.t is None or self.first_vmrun_t is None:
            return None
        return m.t - self.first_vmrun_t

    def report(self) -> str:
        """Milestones (time since the first VMRUN, trace event number), then exits by kind."""
        lines = [f"{'milestone':<13} {'time':>9}  {'event':>8}  description"]
        for m in self.milestones:
            t = self.since_first_vmrun(m.name)
            when = f"{t:8.3f}s" if t is not None else "       --"
            seq = f"{m.seq:>8}" if m.seq is not None else "       -"
            lines.append(f"{m.name:<13} {when}  {seq}  {m.description}")
        lines.append("")
        why = self.run.detail.splitlines()[0] if self.run.detail else ""
        lines.append(f"run ended: {self.run.reason.value} {why}".rstrip())
        lines.append(f"exits: {self.run.exits} in {self.run.elapsed:.1f}s")
        for name, count in self.exit_kinds().items():
            lines.append(f"  {name:<32} {count:>8}")
        return "\n".join(lines)


@functools.lru_cache(maxsize=4)
def _layout(digest: bytes, data: bytes, flash_base: int) -> FlashLayout:
    del digest  # the cache key; the data itself is compared by identity too
    return FlashLayout.parse(data, flash_base=flash_base)


def flash_layout(image: OvmfImage, flash_base: int) -> FlashLayout:
    """The image's firmware volumes (parsing decompresses; cached per image)."""
    return _layout(hashlib.sha256(image.data).digest(), image.data, flash_base)


def _read(path_or_bytes: str | Path | bytes | None) -> bytes | None:
    if path_or_bytes is None or isinstance(path_or_bytes, bytes):
        return path_or_bytes
    return Path(path_or_bytes).read_bytes()


class FirmwareBoot:
    """One SEV-ES (or, with ``mode="sev"``, SEV) guest booting a flash image on a ``pc`` machine."""

    def __init__(
        self,
        firmware: str | Path | bytes | OvmfImage,
        *,
        varstore: str | Path | bytes | None = None,
        memory: int = DEFAULT_MEMORY,
        vcpus: int = 1,
        vcpu_type: str = DEFAULT_VCPU_TYPE,
        tracer: Tracer | None = None,
        console: IO[bytes] | None = None,
        clock: VirtualClock | None = None,
        until: str | None = None,
        watch_entries: bool = True,
        sp: SecureProcessor | None = None,
        mode: GuestMode | str = GuestMode.SEV_ES,
        on_milestone: Callable[[Milestone], None] | None = None,
        policy: GuestPolicy | int | None = None,
    ):
        if until is not None and until not in MILESTONES:
            raise ValueError(f"unknown milestone {until!r}; known: {', '.join(MILESTONES)}")
        mode = GuestMode(mode)
        if not mode.encrypted:
            raise ValueError("FirmwareBoot launches SEV or SEV-ES guests")
        image = firmware if isinstance(firmware, OvmfImage) else OvmfImage.parse(_read(firmware))  # type: ignore[arg-type]
        self.image = image
        self.until = until
        self.config = GuestConfig(mode=mode, memory=memory, vcpus=vcpus)
        self.sp = sp if sp is not None else SecureProcessor()
        self.milestones = {name: Milestone(name, text) for name, text in MILESTONES.items()}
        self.first_vmrun_t: float | None = None
        self.on_milestone = on_milestone  # called once per milestone, as it is reached
        self.tracer = tracer if tracer is not None else Tracer(keep=False)
        self.tracer.sinks.append(self._watch_trace)
        # The launch traces itself; SEV without ES (QEMU's policy 0x1) has no
        # VMSAs: the vCPUs start from their reset states in their VMCBs, and the
        # GHCB milestones never come.
        self.launched: LaunchedGuest = launch_guest(
            self.sp,
            image,
            config=self.config,
            # None: the mode's default (sevx86.sp.launch.default_policy); a
            # debugger needs the owner's debuggable policy (NODBG clear).
            policy=policy,
            varstore=_read(varstore),
            vcpu_type=vcpu_type,
            tracer=self.tracer,
        )
        self.machine = adopt(self.launched, tracer=self.tracer)
        self.hv = Hypervisor(self.machine.host_view(), console=console)
        self.pc = QemuPc(self.hv, clock=clock)
        self.hv.console.listeners.append(self._on_console_line)
        self.entries: dict[str, EntryPoint] = {}
        self._efer_lme = False
        self._sev_info_seen = False
        self._hook_host()
        if watch_entries:
            self._hook_entries()

    # -- running ------------------------------------------------------------------------
    def run(
        self, *, timeout: float | None = None, max_instructions: int | None = None
    ) -> BootResult:
        result = self.hv.run(timeout=timeout, max_instructions=max_instructions)
        return BootResult(
            result, list(self.milestones.values()), dict(result.counters), self.first_vmrun_t
        )

    def interrupt(self, detail: str = "interrupted") -> None:
        """End the run soon, from any thread or a signal handler (the user's Ctrl-C)."""
        self.hv.stop(detail)
        for vcpu in self.hv.vcpus:
            vcpu.kick()

    # -- milestones -----------------------------------------------------------------------
    def reach(self, name: str, actor: str = "hv", **detail: Any) -> None:
        """Record a milestone the first time it is reached (and stop there if asked)."""
        m = self.milestones[name]
        if m.reached:
            return
        m.detail = detail
        text = ", ".join(
            f"{k}={v:#x}" if isinstance(v, int) else f"{k}={v}" for k, v in detail.items()
        )
        event = self.tracer.emit(
            actor,
            "milestone",
            f"milestone {name}: {m.description}" + (f" ({text})" if text else ""),
            milestone=name,
            **detail,
        )
        m.t, m.seq = event.t, event.seq
        if self.on_milestone is not None:
            self.on_milestone(m)
        if name == self.until:
            self.hv.stop(f"milestone {name} reached")

    def _watch_trace(self, event: TraceEvent) -> None:
        if self.first_vmrun_t is None and event.kind == TraceKind.VMRUN:
            self.first_vmrun_t = event.t

    def _on_console_line(self, device: str, line: str) -> None:
        """The guest's own output (not the trace's wording) tells BDS and the shell apart."""
        for name, needle in CONSOLE_MILESTONES.items():
            if needle in line:
                self.reach(name, line=f"{device}: {line}")

    # -- what the host sees ----------------------------------------------------------------
    def _hook_host(self) -> None:
        hv = self.hv
        hv.on_msr_protocol(GhcbMsr.CPUID_REQ, self._on_cpuid_msr)
        hv.on_msr_protocol(GhcbMsr.SEV_INFO_REQ, self._on_sev_info)
        hv.on_exit(SvmExit.EFER_WRITE_TRAP, self._on_efer)
        hv.on_exit(SvmExit.CR0_WRITE_TRAP, self._on_cr0)
        hv.on_exit(SvmExit.VMGEXIT, self._on_vmgexit)
        hv.on_vmgexit(SvmExit.IOIO, self._on_ioio)
        hv.on_vmgexit(SwExit.MMIO_READ, self._on_mmio)
        hv.on_vmgexit(SwExit.MMIO_WRITE, self._on_mmio)

    def _on_cpuid_msr(self, req: MsrProtocolRequest, proceed: Proceed) -> None:
        proceed()
        leaf, reg = decode_cpuid_request(req.value)
        if leaf == Leaf.MEM_ENCRYPT and reg == CpuidReg.EBX and req.response is not None:
            ebx, _ = decode_cpuid_response(req.response)
            info = decode_8000001f(0, ebx)
            self.reach("cbit", cbitpos=info.cbitpos, reduced_phys_bits=info.reduced_phys_bits)

    def _on_sev_info(self, req: MsrProtocolRequest, proceed: Proceed) -> None:
        proceed()
        self._sev_info_seen = True

    def _on_efer(self, event: ExitEvent, proceed: Proceed) -> None:
        proceed()
        if event.exit.info1 & Efer.LME:
            self._efer_lme = True

    def _on_cr0(self, event: ExitEvent, proceed: Proceed) -> None:
        proceed()
        if self._efer_lme and event.exit.info1 & Cr0.PG:
            self.reach("long-mode", cr0=int(event.exit.info1))

    def _on_vmgexit(self, event: ExitEvent, proceed: Proceed) -> None:
        gpa = event.vcpu.vmcb["ghcb_gpa"]
        page_gpa = gpa and not msr_info(gpa)  # a GHCB GPA, not an MSR-protocol request
        if page_gpa and self._sev_info_seen and not self.milestones["ghcb"].reached:
            self.reach("ghcb", ghcb_gpa=gpa, **self._paging_facts(event.vcpu.index, gpa))
        proceed()

    def _on_ioio(self, req: GhcbRequest, proceed: Proceed) -> None:
        proceed()
        io = decode_ioio(req.info1)
        if io.port >= DX_PORT_MIN and not req.failed:
            kind = "in" if io.is_in else "out"
            self.reach("ghcb-io", port=io.port, size=io.size, direction=kind)

    def _on_mmio(self, req: GhcbRequest, proceed: Proceed) -> None:
        proceed()
        if not req.failed:
            self.reach("ghcb-mmio", gpa=req.info1, length=req.info2, request=req.name)

    def _paging_facts(self, index: int, ghcb_gpa: int) -> dict[str, Any]:
        """The trusted side's view of the guest's page tables when the GHCB is first used.

        The host cannot see any of this; the milestone records it for tests
        and reports: the top-level entry carries the C-bit, the GHCB page is
        mapped without it, ordinary RAM with it.
        """
        vcpu = self.machine.vcpus[index]
        state = vcpu.paging_state(cpl=0)
        c_bit = self.config.c_bit
        pml4_gpa = state.cr3 & CR3_ADDR_MASK
        pml4e = int.from_bytes(self.machine.memory.read_private(pml4_gpa, 8), "little")
        ghcb = vcpu.mmu.walk(ghcb_gpa, Access.WRITE, state)
        stack = vcpu.mmu.walk(vcpu.ctx.load().gpr(4), Access.WRITE, state)
        return {
            "cr3": state.cr3,
            "pml4e_c_bit": bool(pml4e & c_bit and pml4e & Pte.P),
            "ghcb_shared": isinstance(ghcb, Translation) and not ghcb.private,
            "stack_private": isinstance(stack, Translation) and stack.private,
        }

    # -- what the CPU reaches (trusted-side breakpoints) ------------------------------------
    def _hook_entries(self) -> None:
        layout = flash_layout(self.image, self.launched.flash_base)
        for name, (ftype, ui) in ENTRY_MILESTONES.items():
            found = [e for e in layout.entry_points(ftype) if ui is None or e.file.ui_name == ui]
            if not found:
                continue
            entry = found[0]
            self.entries[name] = entry
            for vcpu in self.machine.vcpus:
                vcpu.uc.hook_add(
                    UC_HOOK_CODE, self._entry_hook(name, entry), None, entry.address, entry.address
                )

    def _entry_hook(self, name: str, entry: EntryPoint) -> Callable[..., None]:
        def hit(_uc: Any, address: int, _size: int, _data: object) -> None:
            if address == entry.address:
                self.reach(name, actor="cpu", rip=address, image=entry.file.label)

        return hit


def boot_firmware(
    firmware: str | Path | bytes | OvmfImage,
    *,
    timeout: float | None = None,
    max_instructions: int | None = None,
    **kw: Any,
) -> tuple[FirmwareBoot, BootResult]:
    """Build and run in one call (see ``FirmwareBoot`` for the options)."""
    boot = FirmwareBoot(firmware, **kw)
    return boot, boot.run(timeout=timeout, max_instructions=max_instructions)


def milestone_names() -> Iterable[str]:
    return MILESTONES.keys()


__all__ = [
    "BootResult",
    "FirmwareBoot",
    "MILESTONES",
    "Milestone",
    "boot_firmware",
    "flash_layout",
    "milestone_names",
]
