"""Boot payloads under sevx86's firmware and look at what happened."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from sevx86.asm import assemble
from sevx86.asm import fw_abi as abi
from sevx86.boot.firmware import BootedGuest, boot_machine
from sevx86.config import GuestConfig, GuestMode
from sevx86.hv import Hypervisor, RunResult
from sevx86.trace.events import TraceEvent, Tracer

# The smallest payload: exit status 7 through the debug-exit port.
EXIT7 = """
%include "include/platform.inc"
start:
    mov edx, DEBUG_EXIT_PORT
    mov eax, 7
    out dx, eax
"""


@dataclass
class Boot:
    booted: BootedGuest
    hv: Hypervisor
    result: RunResult
    tracer: Tracer

    def events(self, *kinds: str) -> list[TraceEvent]:
        return self.tracer.of_kind(*kinds)

    def boot_info(self) -> dict[str, int]:
        raw = self.booted.machine.memory.read_private(abi.BOOT_INFO_GPA, abi.BOOT_INFO.size)
        return {f.name: f.read(raw) for f in abi.BOOT_INFO if f.name != "mmap"}

    def memory_map(self) -> list[tuple[int, int, int]]:
        raw = self.booted.machine.memory.read_private(abi.BOOT_INFO_GPA, abi.BOOT_INFO.size)
        count = abi.BOOT_INFO.read(raw, "mmap_count")
        out = []
        for i in range(count):
            entry = raw[abi.BOOT_INFO_MMAP + i * abi.MMAP_ENTRY.size :][: abi.MMAP_ENTRY.size]
            out.append(tuple(abi.MMAP_ENTRY.read(entry, n) for n in ("base", "size", "type")))
        return out


def boot(
    source: str = EXIT7,
    mode: str = "sev-es",
    *,
    hv_class: type[Hypervisor] = Hypervisor,
    setup: Callable[[Hypervisor], None] | None = None,
    timeout: float = 30,
    **config: object,
) -> Boot:
    payload = assemble(source, base=abi.PAYLOAD_GPA).code
    tracer = Tracer()
    cfg = GuestConfig(mode=GuestMode(mode), **config)  # type: ignore[arg-type]
    booted = boot_machine(payload, cfg, tracer=tracer)
    hv = hv_class(booted.machine.host_view())
    if setup is not None:
        setup(hv)
    return Boot(booted, hv, hv.run(timeout=timeout), tracer)


@pytest.fixture
def boot_payload():
    return boot
