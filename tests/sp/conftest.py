from __future__ import annotations

import pytest

from sevx86.config import GuestConfig, GuestMode
from sevx86.memory.dram import PhysicalMemory
from sevx86.sp.policy import GuestPolicy, PolicyFlag
from sevx86.sp.secure_processor import SecureProcessor

ES_POLICY = GuestPolicy.make(PolicyFlag.NODBG | PolicyFlag.ES)
SEV_POLICY = GuestPolicy.make(PolicyFlag.NODBG)
SMALL_RAM = 0x40000  # 256 KiB is plenty for these tests


@pytest.fixture
def sp() -> SecureProcessor:
    return SecureProcessor()


def guest_memory(sp: SecureProcessor, handle: int, mode: GuestMode = GuestMode.SEV_ES):
    """Guest RAM under the guest's key, ACTIVATEd, as the launch code builds it."""
    memory = PhysicalMemory(GuestConfig(mode=mode, memory=SMALL_RAM), sp.memory_cipher(handle))
    sp.activate(handle, handle)  # one ASID per guest, like KVM's allocator
    return memory
