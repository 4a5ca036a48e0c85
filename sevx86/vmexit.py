"""The contract at #VMEXIT between the trusted CPU and the untrusted host.

The CPU engine (``sevx86.cpu``) produces a ``VmExit`` at every exit the host
sees; the hypervisor (``sevx86.hv``) and the host view (``sevx86.machine``)
consume it. Neither side imports the other for it: this module is the
boundary, and it carries only what the host may learn (APM vol 2 15.35: under
SEV-ES the host gets the VMCB exit fields, never the guest's registers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from sevx86.arch.exits import exit_name

if TYPE_CHECKING:
    from sevx86.cpu.state import RegisterFile


class StopReason(Enum):
    """Why ``vmrun`` returned without an architectural exit."""

    TIMEOUT = "timeout"
    INSTRUCTION_LIMIT = "instruction-limit"
    EMULATION_ERROR = "emulation-error"
    KICKED = "kicked"  # the host asked for the CPU back (``VCpu.kick``)


@dataclass
class VmExit:
    """What the host learns at a #VMEXIT (a copy of the VMCB exit fields)."""

    vcpu: int
    code: int
    info1: int = 0
    info2: int = 0
    rip: int | None = None  # only where the host may know it (none/sev)
    regs: RegisterFile | None = None  # none/sev only: the guest's registers
    stop: StopReason | None = None  # the emulator stopped, not the guest
    detail: str = ""
    data: dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.stop is not None:
            return self.stop.value
        return exit_name(self.code)
