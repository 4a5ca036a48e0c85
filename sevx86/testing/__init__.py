"""Test support for guest #VC handlers: run a program, play the host, inspect the result.

- ``run_guest(source, host=..., ...)`` -> ``GuestRun`` (``sevx86.testing.guest``)
- ``ScriptedHost`` with ``PortBus`` and ``MmioDevice``: a host answering from
  test-chosen values (``sevx86.testing.scripted_host``)
- ``HypervisorHost``: the real ``sevx86.hv.Hypervisor`` behind the same
  interface (``sevx86.testing.hv_host``)
- the pytest plugin ``sevx86.testing.plugin`` (registered through the
  ``pytest11`` entry point) provides the ``sev_guest`` fixture.

See guest_asm/README.md for an example.
"""

from sevx86.testing.guest import DEFAULT_GHCB_GPA, GuestHost, GuestRun, run_guest
from sevx86.testing.hv_host import HypervisorHost
from sevx86.testing.scripted_host import (
    GhcbExit,
    HostResult,
    MmioDevice,
    PortBus,
    ScriptedHost,
    Termination,
)

__all__ = [
    "DEFAULT_GHCB_GPA",
    "GhcbExit",
    "GuestHost",
    "GuestRun",
    "HostResult",
    "HypervisorHost",
    "MmioDevice",
    "PortBus",
    "ScriptedHost",
    "Termination",
    "run_guest",
]
