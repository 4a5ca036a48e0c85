"""The lab's scenarios by name, in the order of the issue that lists them."""

from __future__ import annotations

from sevx86.lab import (
    cipherleaks,
    guest_fuzz,
    host_fuzz,
    interface,
    regs_exfil,
    relocation,
    vmsa_tamper,
)
from sevx86.lab.scenario import Scenario

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        regs_exfil.SCENARIO,
        vmsa_tamper.SCENARIO,
        cipherleaks.SCENARIO,
        relocation.SCENARIO,
        interface.SCENARIO,
        host_fuzz.SCENARIO,
        guest_fuzz.SCENARIO,
    )
}


def scenario(name: str) -> Scenario:
    """The scenario called ``name``; ``KeyError`` names the known ones."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(f"no lab scenario {name!r} (known: {', '.join(SCENARIOS)})") from None
