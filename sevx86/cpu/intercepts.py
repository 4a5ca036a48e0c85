"""One table: what the CPU does with each intercepted event.

AMD APM vol 2, 15.35.5 ("#VC Exception") and the seed talk divide SEV-ES
exits into three kinds:

* **NAE** (non-automatic exit): the event would need register state the host
  cannot see, so the CPU raises #VC in the guest, error code = exit code,
  saved RIP on the instruction. In modes ``none`` and ``sev`` the same event
  is an ordinary #VMEXIT to the host, which reads the registers itself.
* **AE** (automatic exit): a world switch to the host with the state saved in
  the VMSA: VMGEXIT, HLT, the CR/EFER write *traps* (after the write, new
  value in EXITINFO1), interrupts, shutdown.
* **in place**: the hardware virtualizes the access without any exit: the
  GHCB MSR and SEV_STATUS.

Unicorn reports some intercepts under the wrong code (docs/unicorn-notes.md):
RDTSCP arrives as RDTSC, INVD as WBINVD, and VMGEXIT (F3 0F 01 D9) as
VMMCALL; ``resolve`` tells them apart by the instruction bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sevx86.arch.exits import CR_WRITE_TRAPS, NAE_INSTRUCTION_EXITS, SvmExit, exit_name
from sevx86.arch.msr import Msr


class Handling(Enum):
    NAE = "nae"
    AE = "ae"
    IN_PLACE = "in-place"


@dataclass(frozen=True)
class Rule:
    code: int
    handling: Handling
    # AE instructions: under SEV-ES the CPU itself moves RIP past the
    # instruction, because the host cannot edit the encrypted RIP.
    advances_rip: bool = False

    @property
    def name(self) -> str:
        return exit_name(self.code)


# NPF is an NAE too (MMIO: #VC), but not an instruction intercept.
_NAE = (*NAE_INSTRUCTION_EXITS, SvmExit.NPF)

RULES: dict[int, Rule] = {code: Rule(code, Handling.NAE) for code in _NAE}
RULES.update(
    {
        SvmExit.VMGEXIT: Rule(SvmExit.VMGEXIT, Handling.AE, advances_rip=True),
        SvmExit.HLT: Rule(SvmExit.HLT, Handling.AE, advances_rip=True),
        SvmExit.EFER_WRITE_TRAP: Rule(SvmExit.EFER_WRITE_TRAP, Handling.AE),
        SvmExit.INTR: Rule(SvmExit.INTR, Handling.AE),
        SvmExit.NMI: Rule(SvmExit.NMI, Handling.AE),
        SvmExit.SHUTDOWN: Rule(SvmExit.SHUTDOWN, Handling.AE),
        **{code: Rule(code, Handling.AE) for code in CR_WRITE_TRAPS},
    }
)

# MSRs the hardware handles for an SEV-ES guest without any exit.
IN_PLACE_MSRS: dict[int, tuple[bool, bool]] = {
    # msr: (read in place, write in place)
    Msr.SEV_ES_GHCB: (True, True),
    Msr.SEV_STATUS: (True, False),
}


def rule_for(code: int) -> Rule | None:
    return RULES.get(code)


# -- Unicorn's intno -> the architectural exit code ------------------------------------
VMGEXIT_BYTES = b"\xf3\x0f\x01\xd9"
RDTSCP_BYTES = b"\x0f\x01\xf9"
INVD_BYTES = b"\x0f\x08"
WBINVD_BYTES = b"\x0f\x09"
UNICORN_INTERCEPT_BASE = 0x100  # intno = 0x100 + exit code


def _skip_prefixes(insn: bytes) -> bytes:
    i = 0
    while i < len(insn) and (
        insn[i] in (0x66, 0x67, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0xF0) or 0x40 <= insn[i] <= 0x4F
    ):
        i += 1
    return insn[i:]


def resolve(code: int, insn: bytes) -> int:
    """The exit code the instruction at RIP really produces."""
    if code == SvmExit.VMMCALL and insn.startswith(VMGEXIT_BYTES):
        return SvmExit.VMGEXIT
    body = _skip_prefixes(insn)
    if code == SvmExit.RDTSC and body.startswith(RDTSCP_BYTES):
        return SvmExit.RDTSCP
    if code == SvmExit.WBINVD and body.startswith(INVD_BYTES):
        return SvmExit.INVD
    return code
