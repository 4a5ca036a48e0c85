"""What a curious host keeps of each exit, built only on the public hooks.

``ExitRecorder(hv, codes)`` adds an ``on_exit`` hook per exit code; at every
such exit it records what the hypervisor is given there -- the register
file (modes none and sev hand it over with the exit), the GHCB page the GHCB
MSR points at, and the bytes of the VMSA page (SEV-ES: ciphertext, the host
allocated that page). It changes nothing. Scenarios search these records
afterwards; the host itself needs no oracle to collect them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sevx86.arch.ghcb import GHCB, GHCB_MSR_INFO_MASK, GHCB_REGISTER_NAMES, GHCB_SIZE, is_valid
from sevx86.arch.vmsa import VMSA_GPR_NAMES, VMSA_SIZE
from sevx86.hv import Hypervisor
from sevx86.hv.hypervisor import ExitEvent


@dataclass(frozen=True)
class Sighting:
    """One exit as the host saw it."""

    index: int
    exit: str
    registers: dict[str, int] | None  # None under SEV-ES: the exit carries none
    ghcb: bytes | None  # the registered GHCB page at a VMGEXIT
    vmsa: bytes | None  # the VMSA page as DRAM holds it (ciphertext)

    def ghcb_valid_fields(self) -> list[str]:
        """Register fields the guest marked valid in the GHCB (what it chose to share)."""
        if self.ghcb is None:
            return []
        bitmap = GHCB["valid_bitmap"].read(self.ghcb)
        return [name for name in GHCB_REGISTER_NAMES if is_valid(bitmap, name)]


class ExitRecorder:
    """Records every exit of the given kinds; ``sightings`` in order."""

    def __init__(self, hv: Hypervisor, codes: Iterable[int]):
        self.hv = hv
        self.sightings: list[Sighting] = []
        for code in codes:
            hv.on_exit(code, self._record)

    def _record(self, ctx: ExitEvent, proceed) -> None:
        self.sightings.append(self.capture(ctx))
        proceed()

    def capture(self, ctx: ExitEvent) -> Sighting:
        memory = self.hv.host.memory
        regs = ctx.exit.regs
        registers = None if regs is None else {name: regs[name] for name in VMSA_GPR_NAMES}
        ghcb = None
        msr = ctx.vmcb["ghcb_gpa"]
        # A GHCB page address has GHCBInfo 0; any other value is an MSR-protocol request.
        if msr and not msr & GHCB_MSR_INFO_MASK and memory.contains(msr, GHCB_SIZE):
            ghcb = memory.read(msr, GHCB_SIZE)
        gpa = ctx.vcpu.vmsa_gpa
        vmsa = None if gpa is None else memory.read(gpa, VMSA_SIZE)
        return Sighting(len(self.sightings), ctx.exit.name, registers, ghcb, vmsa)
