"""Helpers for CPU-engine tests: build a guest, play a minimal host, read results."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from sevx86.config import GuestConfig, GuestMode
from sevx86.harness import GuestSpec, build_machine
from sevx86.machine import HostView, Machine
from sevx86.trace.events import Tracer
from sevx86.vmexit import VmExit

RESULTS = 0x70000  # where test guests store what they observed


@dataclass
class Guest:
    machine: Machine
    program: object
    host: HostView
    tracer: Tracer
    exits: list[VmExit] = field(default_factory=list)

    @property
    def vcpu(self):
        return self.host.vcpus[0]

    def symbol(self, name: str) -> int:
        return self.program.symbol(name)

    def run(self, timeout: float = 10.0) -> VmExit:
        exit = self.vcpu.vmrun(timeout=timeout)
        self.exits.append(exit)
        return exit

    def results(self, count: int) -> tuple[int, ...]:
        """``count`` qwords the guest stored at RESULTS (read as the test, not the host)."""
        return struct.unpack(f"<{count}Q", self.machine.memory.read_private(RESULTS, 8 * count))


def make_guest(
    source: str,
    mode: str | GuestMode = "sev-es",
    *,
    handlers=None,
    bits=64,
    memory: int = 8 << 20,
    **spec,
) -> Guest:
    tracer = Tracer()
    config = GuestConfig(mode=GuestMode(mode), memory=memory)
    machine, program = build_machine(
        GuestSpec(source, bits=bits, handlers=handlers or {}, **spec), config, tracer=tracer
    )
    return Guest(machine, program, machine.host_view(), tracer)


# A #VC (or any exception) handler that records its error code and the saved
# RIP, then halts: the HLT is an automatic exit the test sees.
RECORD_AND_HALT = f"""
record_handler:
    pop rax
    mov rdi, {RESULTS:#x}
    mov [rdi], rax
    mov rbx, [rsp]
    mov [rdi + 8], rbx
    hlt
"""
