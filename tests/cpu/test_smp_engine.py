"""Engine changes for several vCPUs: each small, each proved here.

* HLT ends an STI interrupt shadow, so ``sti; hlt`` reports IF=1 and no
  shadow in the VMCB interrupt state (the host may inject at once);
* a data access does not grant execute on a page: the first fetch fills the
  translation again, so the engine sees every page it runs code from;
* ``kick`` from another thread returns the vCPU to the host (INTR exit);
* with ``PhysicalMemory.exclusive`` set (parallel mode), writes that must
  reach every engine go through it.
"""

from __future__ import annotations

import threading
import time

from sevx86.arch.vmcb import INT_STATE_GUEST_IF, INT_STATE_SHADOW
from sevx86.vmexit import StopReason

from .conftest import make_guest


def test_sti_hlt_reports_if_set_and_no_shadow():
    guest = make_guest("start:\n    sti\n    hlt\n")
    exit_ = guest.run()
    assert exit_.name == "HLT"
    state = guest.vcpu.vmcb["int_state"]
    assert state & INT_STATE_GUEST_IF and not state & INT_STATE_SHADOW


def test_a_page_read_before_it_is_run_is_still_known_as_code():
    source = """
start:
    mov rdi, later
    mov rax, [rdi]      ; a data access fills the page's translation first
    jmp later
align 4096
later:
    hlt
"""
    guest = make_guest(source)
    assert guest.run().name == "HLT"
    page = guest.symbol("later") >> 12
    assert page in guest.machine.memory.code_pages


def test_kick_from_another_thread_stops_a_spinning_vcpu():
    guest = make_guest("start:\n    jmp start\n")
    threading.Timer(0.2, guest.vcpu.kick).start()
    t0 = time.perf_counter()
    exit_ = guest.run(timeout=20)
    assert exit_.stop is StopReason.KICKED and time.perf_counter() - t0 < 10
    # The vCPU carries on at the next VMRUN.
    threading.Timer(0.1, guest.vcpu.kick).start()
    assert guest.run(timeout=20).stop is StopReason.KICKED


def test_writes_to_every_engine_go_through_the_exclusive_hook():
    guest = make_guest("start:\n    hlt\n")
    guest.run()
    memory = guest.machine.memory
    calls: list[str] = []

    def exclusive(fn):
        calls.append("in")
        fn()

    memory.exclusive = exclusive
    code = guest.symbol("start")
    memory.write_private(code, b"\xf4")  # a code page: every engine drops its TBs
    memory.flush_tlbs()
    assert calls == ["in", "in"]


def test_a_kick_before_the_first_vmrun_leaves_the_vcpu_new():
    guest = make_guest("start:\n    mov rax, 5\n    hlt\n")
    guest.vcpu.kick()
    first = guest.run()
    assert first.stop is StopReason.KICKED and first.data.get("entered") is False
    # No host state was sealed as the guest's: the next VMRUN enters normally.
    assert guest.run().name == "HLT"
