"""EVENTINJ must be honoured on every VMRUN, the first one included.

APM vol 2, 15.20 "Event Injection": VMRUN injects the event in EVENTINJ after
loading the guest state -- any VMRUN. The engine once injected only on
resumes and dropped the event on the first entry; this test keeps it honest
(the hypervisor's event path relies on it since its workaround went).
"""

from __future__ import annotations

from sevx86.arch.vectors import Vector
from sevx86.arch.vmcb import EventType, encode_event
from sevx86.config import GuestConfig
from sevx86.harness import GuestSpec, build_machine

SOURCE = """
start:
    mov eax, 1
    hlt
    hlt
ud_handler:
    mov rax, 0x5D
    hlt
"""


def test_event_injected_at_the_first_vmrun_is_delivered():
    machine, program = build_machine(
        GuestSpec(SOURCE, handlers={Vector.UD: "ud_handler"}), GuestConfig(mode="none")
    )
    vcpu = machine.host_view().vcpus[0]
    vcpu.vmcb["event_inj"] = encode_event(Vector.UD, EventType.EXCEPTION)
    exit_ = vcpu.vmrun(timeout=5)
    assert exit_.name == "HLT"
    assert exit_.regs is not None and exit_.regs.rax == 0x5D
