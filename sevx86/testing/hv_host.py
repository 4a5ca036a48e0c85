"""The real hypervisor as a ``run_guest`` host.

``ScriptedHost`` is a small, obviously correct responder for handler unit
tests; ``HypervisorHost`` puts ``sevx86.hv.Hypervisor`` behind the same
interface, so the same guest programs also run against the hypervisor users
get (KVM-like intercepts, validation, devices), e.g.::

    run = sev_guest(source, host=HypervisorHost())
    assert run.halted and run.host.hv.outputs ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sevx86.hv import Hypervisor, RunReason
from sevx86.hv.handlers import HANDLERS
from sevx86.machine import HostView
from sevx86.testing.scripted_host import GhcbExit, HostResult, Termination


class HypervisorHost:
    """Adapter: ``attach`` builds the hypervisor, ``run`` maps its result."""

    def __init__(self, factory: Callable[..., Hypervisor] = Hypervisor, **options: Any):
        self.factory = factory
        self.options = options
        self.hv: Hypervisor | None = None
        self.run_result = None
        self._exits: list[GhcbExit] = []

    def attach(self, host: HostView) -> None:
        self.hv = self.factory(host, **self.options)
        for code in HANDLERS:
            self.hv.on_request(code, self._record)

    def _record(self, req: Any, proceed: Callable[[], None]) -> None:
        proceed()
        protocol = "ghcb" if req.via_ghcb else "direct"
        answer = (req.result, req.result_info2)
        self._exits.append(GhcbExit(protocol, req.code, req.info1, req.info2, answer=answer))

    def run(self, host: HostView, *, timeout: float = 20.0) -> HostResult:
        assert self.hv is not None, "attach() first"
        result = self.hv.run(timeout=timeout)
        self.run_result = result
        out = HostResult(exits=list(self._exits))
        out.halted = result.reason is RunReason.HALTED
        term = result.termination
        if result.reason is RunReason.TERMINATED and term is not None and term.by == "guest":
            out.terminated = Termination(term.reason_set or 0, term.reason_code or 0, "hv")
        elif result.reason not in (RunReason.HALTED, RunReason.EXIT_STATUS):
            out.errors.append(f"{result.reason.value}: {result.detail}")
        return out
