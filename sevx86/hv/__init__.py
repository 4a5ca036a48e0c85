"""The untrusted hypervisor: exit handling, the GHCB protocol, devices.

Typical use::

    from sevx86.harness import GuestSpec, build_machine
    from sevx86.hv import Hypervisor

    machine, _ = build_machine(GuestSpec(source, handlers={29: "vc_handler"}))
    result = Hypervisor(machine.host_view()).run(timeout=10)
    print(result.reason, result.exit_status, result.console)
"""

from sevx86.hv.cpuid import CpuidQuery, CpuidTable
from sevx86.hv.hypervisor import (
    EXIT_TABLE,
    ExitEvent,
    Hypervisor,
    RunReason,
    RunResult,
    Termination,
    VcpuHvState,
)
from sevx86.hv.msr_policy import MsrPolicy, MsrRule
from sevx86.hv.msr_protocol import MsrProtocolRequest
from sevx86.hv.requests import GhcbRequest, RegisterRequest, Request

__all__ = [
    "EXIT_TABLE",
    "CpuidQuery",
    "CpuidTable",
    "ExitEvent",
    "GhcbRequest",
    "Hypervisor",
    "MsrPolicy",
    "MsrProtocolRequest",
    "MsrRule",
    "RegisterRequest",
    "Request",
    "RunReason",
    "RunResult",
    "Termination",
    "VcpuHvState",
]
