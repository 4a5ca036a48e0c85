"""One guest as the Secure Processor tracks it: state machine and secrets.

Guest states are the SEV API's GSTATE machine (55766 chapter 6.1; the same
numbering in AMD's firmware ``sev_guest.h``):

    UNINIT --LAUNCH_START--> LUPDATE --LAUNCH_MEASURE--> LSECRET
    LSECRET --LAUNCH_FINISH--> RUNNING

Allowed launch commands per state: LUPDATE: LAUNCH_UPDATE_DATA,
LAUNCH_UPDATE_VMSA, LAUNCH_MEASURE; LSECRET: LAUNCH_SECRET, LAUNCH_FINISH;
ACTIVATE, DEACTIVATE, DECOMMISSION, GUEST_STATUS in every state. Anything
else is INVALID_GUEST_STATE.

A ``GuestContext`` never leaves ``SecureProcessor``: it holds the memory
cipher (which holds the VEK), the transport keys and the VMSA integrity key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from sevx86.memory.cipher import MemoryCipher
from sevx86.sp.channel import TransportKeys
from sevx86.sp.policy import GuestPolicy


class GuestState(IntEnum):
    """GSTATE values, SEV API chapter 6.1."""

    UNINIT = 0
    LUPDATE = 1
    LSECRET = 2
    RUNNING = 3
    SUPDATE = 4
    RUPDATE = 5
    SENT = 6


@dataclass(frozen=True)
class SealedVmsa:
    """Where a vCPU's VMSA lives and the SP's tag over its latest contents."""

    spa: int
    tag: bytes


@dataclass(eq=False, repr=False)
class GuestContext:
    handle: int
    policy: GuestPolicy
    cipher: MemoryCipher
    keys: TransportKeys | None
    vmsa_key: bytes
    state: GuestState = GuestState.LUPDATE
    asid: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)  # SHA-256 of the launch, None once measured
    launch_digest: bytes | None = None
    measure: bytes | None = None
    vmsas: dict[int, SealedVmsa] = field(default_factory=dict)

    def __repr__(self) -> str:  # never show key material
        return f"<GuestContext handle={self.handle} {self.state.name} policy={self.policy}>"
