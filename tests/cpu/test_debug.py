"""The engine's debug hooks (sevx86.cpu.debug): breakpoints, step, watchpoints, stops.

Expectations are the program's own layout (labels the assembler placed) and
the architecture: a breakpoint stops before its instruction runs, a step
runs exactly one, a watchpoint reports after the access, on the next
instruction; under SEV-ES the state at a stop is in the VMSA and sealed, so
the next VMRUN's integrity check still passes.
"""

from __future__ import annotations

import threading
import time

import pytest

from sevx86.arch.vmcb import Intercept
from sevx86.arch.vmsa import VMSA, VMSA_SIZE
from sevx86.config import GuestConfig, GuestMode
from sevx86.cpu.debug import StopKind, VcpuDebug, WatchKind
from sevx86.harness import GuestSpec, build_machine
from sevx86.sp.policy import GuestPolicy, PolicyFlag
from sevx86.trace.events import Tracer
from tests.cpu.conftest import RECORD_AND_HALT, RESULTS, Guest, make_guest

PROGRAM = f"""
start:
    mov rax, 1
second:
    mov rbx, 2
third:
    mov rdi, {RESULTS:#x}
store:
    mov [rdi], rax
after_store:
    add rax, rbx
last:
    mov [rdi + 8], rax
    hlt
"""

SPIN = """
start:
    jmp start
out:
    mov rax, 0x5a
    hlt
"""


class Recorder:
    """A listener that records each stop and answers with ``act(debug, stop)``."""

    def __init__(self, act=None):
        self.stops = []
        self.act = act
        self.debug: VcpuDebug | None = None

    def on_stop(self, stop):
        self.stops.append(stop)
        if self.act is not None:
            self.act(self.debug, stop)


def _attach(guest, recorder, *, stop_at_start=False) -> VcpuDebug:
    vcpu = guest.machine.vcpus[0]
    debug = VcpuDebug(vcpu, recorder, stop_at_start=stop_at_start)
    vcpu.debug = debug
    recorder.debug = debug
    return debug


@pytest.mark.parametrize("mode", ["none", "sev-es"])
def test_breakpoint_stops_before_its_instruction_and_the_run_goes_on(mode):
    guest = make_guest(PROGRAM, mode)
    seen = []
    rec = Recorder(lambda d, s: seen.append(guest.machine.memory.read_private(RESULTS, 8)))
    debug = _attach(guest, rec)
    debug.add_breakpoint(guest.symbol("after_store"))
    exit = guest.run()
    assert exit.name == "HLT"
    assert [(s.kind, s.pc) for s in rec.stops] == [
        (StopKind.BREAKPOINT, guest.symbol("after_store"))
    ]
    assert seen == [(1).to_bytes(8, "little")]  # the store before it ran, the add not yet
    (event,) = guest.tracer.of_kind("debug-stop")
    assert event.data["pc"] == guest.symbol("after_store") and event.vcpu == 0
    assert guest.results(2) == (1, 3)


def test_stop_at_start_then_single_steps_one_instruction_each():
    guest = make_guest(PROGRAM, "none")
    steps = iter([True, True, False])
    rec = Recorder(lambda d, s: d.resume(step=next(steps)))
    _attach(guest, rec, stop_at_start=True)
    guest.run()
    kinds = [s.kind for s in rec.stops]
    pcs = [s.pc for s in rec.stops]
    assert kinds == [StopKind.START, StopKind.STEP, StopKind.STEP]
    assert pcs == [guest.symbol(n) for n in ("start", "second", "third")]
    assert guest.results(2) == (1, 3)


def test_write_watchpoint_reports_after_the_store_on_the_next_instruction():
    guest = make_guest(PROGRAM, "none")
    rec = Recorder()
    debug = _attach(guest, rec)
    debug.add_watchpoint(RESULTS, 8, WatchKind.WRITE)
    guest.run()
    first = rec.stops[0]
    assert first.kind is StopKind.WATCHPOINT
    assert first.pc == guest.symbol("after_store")
    assert first.watch == (WatchKind.WRITE, RESULTS)


def test_registers_written_at_a_stop_are_what_the_guest_continues_with():
    guest = make_guest(PROGRAM, "none")

    def set_rax(debug, stop):
        page = bytearray(debug.registers())
        assert VMSA.read(page, "rip") == stop.pc
        VMSA.write(page, "rax", 40)
        debug.write_registers(bytes(page))

    debug = _attach(guest, Recorder(set_rax))
    debug.add_breakpoint(guest.symbol("after_store"))
    guest.run()
    assert guest.results(2) == (1, 42)


def test_sev_es_stop_writes_the_state_into_the_vmsa_and_seals_it():
    guest = make_guest(PROGRAM, "sev-es")
    vcpu = guest.machine.vcpus[0]
    vmsa = []

    def read_vmsa(debug, stop):
        with pytest.raises(PermissionError):
            debug.registers()  # SEV-ES: only through the VMSA (DBG_DECRYPT)
        vmsa.append(guest.machine.memory.read_private(vcpu.vmsa_spa, VMSA_SIZE))

    debug = _attach(guest, Recorder(read_vmsa))
    debug.add_breakpoint(guest.symbol("after_store"))
    exit = guest.run()
    assert VMSA.read(vmsa[0], "rip") == guest.symbol("after_store")
    assert VMSA.read(vmsa[0], "rax") == 1 and VMSA.read(vmsa[0], "rbx") == 2
    assert exit.name == "HLT"
    # The HLT exit sealed a newer VMSA: it passes the check VMRUN makes.
    assert vcpu.switch.reload_vmsa()


def test_sev_es_vmsa_written_through_dbg_encrypt_is_loaded():
    machine, program = build_machine(
        GuestSpec(PROGRAM),
        GuestConfig(mode=GuestMode.SEV_ES, memory=8 << 20),
        policy=GuestPolicy.make(PolicyFlag.ES),  # debuggable: no NODBG
    )
    guest = Guest(machine, program, machine.host_view(), Tracer())
    vcpu = guest.machine.vcpus[0]

    def set_rax(debug, stop):
        page = bytearray(guest.machine.dbg_decrypt(vcpu.vmsa_spa, VMSA_SIZE))
        VMSA.write(page, "rax", 40)
        guest.machine.dbg_encrypt(vcpu.vmsa_spa, bytes(page))

    debug = _attach(guest, Recorder(set_rax))
    debug.add_breakpoint(guest.symbol("after_store"))
    guest.run()
    assert guest.results(2) == (1, 42)


def test_request_stop_interrupts_a_spinning_guest():
    guest = make_guest(SPIN, "none")

    def leave(debug, stop):
        page = bytearray(debug.registers())
        VMSA.write(page, "rip", guest.symbol("out"))
        debug.write_registers(bytes(page))

    debug = _attach(guest, rec := Recorder(leave))
    timer = threading.Thread(target=lambda: (time.sleep(0.2), debug.request_stop()))
    timer.start()
    exit = guest.run(timeout=60)
    timer.join()
    assert [s.kind for s in rec.stops] == [StopKind.INTERRUPT]
    assert rec.stops[0].pc == guest.symbol("start")
    assert exit.name == "HLT"


def test_a_step_into_a_vc_stops_on_the_handlers_first_instruction():
    # CPUID under SEV-ES is a #VC fault: the instruction does not complete and
    # the next instruction to run is the handler's first (as QEMU's gdbstub
    # steps into an exception handler).
    source = "start:\n    cpuid\n    hlt\n" + RECORD_AND_HALT
    guest = make_guest(source, "sev-es", handlers={29: "record_handler"})
    guest.vcpu.vmcb.intercept(Intercept.CPUID)
    rec = Recorder(lambda d, s: d.resume(step=s.kind is StopKind.BREAKPOINT))
    debug = _attach(guest, rec)
    debug.add_breakpoint(guest.symbol("start"))
    guest.run()
    assert [(s.kind, s.pc) for s in rec.stops] == [
        (StopKind.BREAKPOINT, guest.symbol("start")),
        (StopKind.STEP, guest.symbol("record_handler")),
    ]
    assert guest.results(2) == (0x72, guest.symbol("start"))  # SVM_EXIT_CPUID, the CPUID's RIP


SHARED_PAGE = 0x60000

SHARED_STORE = f"""
start:
    mov rdi, {SHARED_PAGE:#x}
    mov rax, 0x1234
    mov [rdi + 8], rax
after_shared_store:
    hlt
"""


def test_a_watchpoint_on_a_shared_page_sees_the_c0_access():
    # A C=0 store reaches DRAM through the shared alias, not the private view
    # (APM vol 2, 15.34.5); the watch is on the guest-physical bytes either way.
    guest = make_guest(SHARED_STORE, "sev-es", shared_pages=[SHARED_PAGE])
    rec = Recorder()
    debug = _attach(guest, rec)
    debug.add_watchpoint(SHARED_PAGE + 8, 8, WatchKind.WRITE)
    guest.run()
    assert [(s.kind, s.pc, s.watch) for s in rec.stops] == [
        (
            StopKind.WATCHPOINT,
            guest.symbol("after_shared_store"),
            (WatchKind.WRITE, SHARED_PAGE + 8),
        )
    ]


def test_a_watchpoint_reports_the_debuggers_address_for_the_gpa_it_watches():
    guest = make_guest(PROGRAM, "none")
    rec = Recorder()
    debug = _attach(guest, rec)
    linear = 0xFFFF_8000_0007_0000  # a name the debugger used for the page at RESULTS
    debug.add_watchpoint(linear, 8, WatchKind.WRITE, gpa=RESULTS)
    guest.run()
    assert rec.stops[0].watch == (WatchKind.WRITE, linear)
    assert rec.stops[0].pc == guest.symbol("after_store")


SMP_STORE = f"""
start:
    mov rdi, {RESULTS:#x}
    mov [rdi + 8], rax          ; what the vCPU has in RAX when it gets here
    hlt
"""


def test_registers_of_a_parked_vcpu_are_loaded_at_once():
    # vCPU 1 parked at an exit (as while vCPU 0 holds the debugger) takes new
    # registers at once; one never entered has none to change yet.
    machine, program = build_machine(
        GuestSpec(SMP_STORE), GuestConfig(mode=GuestMode.NONE, memory=8 << 20, vcpus=2)
    )
    other = machine.vcpus[1]
    debug1 = VcpuDebug(other, Recorder(), stop_at_start=False)
    other.debug = debug1
    with pytest.raises(PermissionError):
        debug1.write_registers(bytes(VMSA_SIZE))
    host = machine.host_view()
    assert host.vcpus[1].vmrun(timeout=10).name == "HLT"  # entered once, parked at its HLT
    page = bytearray(debug1.registers())
    VMSA.write(page, "rax", 0x77)
    VMSA.write(page, "rip", program.symbol("start"))
    debug1.write_registers(bytes(page))
    assert host.vcpus[1].vmrun(timeout=10).name == "HLT"
    assert int.from_bytes(machine.memory.read_private(RESULTS + 8, 8), "little") == 0x77
