"""The malicious-hypervisor lab: published attacks on SEV and SEV-ES, reproduced.

Each scenario is a guest program (``guest_asm/lab/*.S``), a hostile
hypervisor built only on the public hooks of ``sevx86.hv`` (``on_exit``,
``on_request``, ``on_vmgexit``, ``on_msr_protocol``, ``handle_<name>``
methods, the ``HostView``'s memory and VMCBs) -- so each doubles as an
example of them -- and a ``Report``: what the host tried, what it learned or
changed, whether the guest noticed, and the figures, per mode::

    from sevx86.lab import SCENARIOS
    report = SCENARIOS["cipherleaks"].run(("sev-es",), seed=1)
    print(report.render())          # or report.to_json()

``sevx86 lab --list`` lists them; docs/lab/ has a page per scenario with the
paper, the mechanism and the real mitigation.
"""

from sevx86.lab.registry import SCENARIOS, scenario
from sevx86.lab.report import ModeOutcome, Report
from sevx86.lab.scenario import Scenario

__all__ = ["SCENARIOS", "ModeOutcome", "Report", "Scenario", "scenario"]
