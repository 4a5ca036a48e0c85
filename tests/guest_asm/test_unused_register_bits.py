"""Issue 15 item 7: the handler sends only the register bits an instruction reads.

CPUID reads EAX and ECX; RDMSR ECX; WRMSR ECX and EDX:EAX; RDPMC ECX;
MONITOR RAX (the address), ECX and EDX; MWAIT EAX and ECX (AMD APM vol 3,
the instruction pages). A secret planted in bits 63:32 of those registers
must reach neither the GHCB fields the host reads nor any byte of the shared
page.
"""

from __future__ import annotations

import pytest

from sevx86.arch.msr import Msr
from sevx86.testing import ScriptedHost

from .conftest import assert_halted, nae_program

SECRET = 0x5EC2_E75A
SECRET_BYTES = SECRET.to_bytes(4, "little")


def planted(low: int) -> int:
    return (SECRET << 32) | low


CASES = {
    "cpuid": ({"rax": planted(0), "rcx": planted(0)}, ("rax", "rcx")),
    "rdmsr": ({"rcx": planted(Msr.TSC_AUX)}, ("rcx",)),
    "wrmsr": (
        {"rcx": planted(Msr.TSC_AUX), "rax": planted(5), "rdx": planted(0)},
        ("rcx", "rax", "rdx"),
    ),
    "rdpmc": ({"rcx": planted(1)}, ("rcx",)),
    "mwait": ({"rax": planted(0x20), "rcx": planted(0)}, ("rax", "rcx")),
    "monitor": ({"rcx": planted(0), "rdx": planted(0)}, ("rcx", "rdx")),
}


@pytest.mark.parametrize("insn", list(CASES))
def test_item7_upper_halves_the_instruction_ignores_never_reach_the_ghcb(sev_guest, insn):
    regs, sent = CASES[insn]
    pages: list[bytes] = []

    def keep_page(record, page):
        if page is not None:
            pages.append(bytes(page))

    host = ScriptedHost(
        cpuid={0: (1, 2, 3, 4)}, msrs={Msr.TSC_AUX: 0}, pmc={1: 7}, tamper=keep_page
    )
    # MONITOR's RAX is a 64-bit address, used whole: point it at real data.
    body = f"    {insn}"
    if insn == "monitor":
        body = "    mov rax, monitored\n    monitor"
    run = sev_guest(nae_program(body, regs, data="monitored: dq 0"), host=host)
    assert_halted(run)
    (exit_,) = run.exits
    for name in sent:
        assert exit_.inputs[name] == regs[name] & 0xFFFF_FFFF, name
    assert pages and all(SECRET_BYTES not in page for page in pages)
