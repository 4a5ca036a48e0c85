"""Intercept code -> handler: what the CPU does with each intercept Unicorn raises.

KVM's ``svm_exit_handlers`` shape: one table, one function per exit code,
and a default that applies the SEV-ES classification of
``sevx86.cpu.intercepts.RULES`` (NAE -> #VC or a plain exit, AE -> world
switch). The entries here are the intercepts the engine answers itself, or
must first tell apart because Unicorn reports them under another code.

A handler returns when the guest simply goes on; it raises
``ExitRecorded`` (through ``VCpu.record_exit``/``shutdown``) when the host
gets control.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sevx86.arch.exits import NUM_CONTROL_REGISTERS, SvmExit, cr_write, exit_name
from sevx86.arch.vectors import Vector
from sevx86.arch.vmcb import Intercept
from sevx86.config import GuestMode
from sevx86.cpu import decode, emulate
from sevx86.cpu.exceptions import Event, EventKind
from sevx86.cpu.intercepts import Handling, resolve, rule_for

if TYPE_CHECKING:
    from sevx86.cpu.vcpu import VCpu

ExitHandler = Callable[["VCpu", int], None]

# The sixteen MOV-to-CRn intercepts (0x10-0x1F).
_CR_WRITES = tuple(cr_write(n) for n in range(NUM_CONTROL_REGISTERS))


def by_rule(vcpu: VCpu, code: int, insn: bytes | None = None) -> None:
    """The architectural default: AE or NAE, per ``intercepts.RULES``."""
    rule = rule_for(code)
    if rule is None:
        raise RuntimeError(f"unexpected intercept {exit_name(code)}")
    if rule.handling is Handling.AE:
        # The bytes fetched to resolve the code are the ones the length
        # needs (RIP has not moved): do not fetch them twice per VMGEXIT.
        vcpu.automatic_exit(code, advance=rule.advances_rip, insn=insn or None)
    else:
        vcpu.non_automatic(code)


def _software_interrupt(vcpu: VCpu, code: int) -> None:
    vector, length = decode.software_interrupt(vcpu.fetch_insn(), vcpu.code_bits())
    rip = vcpu.rip()
    vcpu.deliver(Event(vector, EventKind.SOFTWARE), rip + length, fault_rip=rip)


def _undefined(vcpu: VCpu, code: int) -> None:
    # sevx86 guests cannot nest SVM: the instruction is undefined to them.
    vcpu.deliver(Event(Vector.UD), vcpu.rip())


def _shutdown(vcpu: VCpu, code: int) -> None:
    vcpu.shutdown("the CPU reported a triple fault")


def _invlpg(vcpu: VCpu, code: int) -> None:
    if vcpu.vmcb.intercepts(Intercept.INVLPG):
        by_rule(vcpu, code)
    else:  # intercepted by the engine only, to keep its own TLB honest
        emulate.invlpg(vcpu)


def _cr_write(vcpu: VCpu, code: int) -> None:
    emulate.write_cr(vcpu, code - SvmExit.CR0_WRITE)


def _msr(vcpu: VCpu, code: int) -> None:
    emulate.rdmsr_wrmsr(vcpu)


def _vmmcall(vcpu: VCpu, code: int) -> None:
    insn = vcpu.fetch_insn()
    code = resolve(code, insn)
    if code == SvmExit.VMGEXIT and vcpu.mode is not GuestMode.SEV_ES:
        code = SvmExit.VMMCALL  # REP VMMCALL is plain VMMCALL outside SEV-ES
    if code == SvmExit.VMMCALL and not vcpu.vmcb.intercepts(Intercept.VMMCALL):
        vcpu.deliver(Event(Vector.UD), vcpu.rip())  # VMMCALL without intercept: #UD
        return
    by_rule(vcpu, code, insn)


def _resolved(vcpu: VCpu, code: int) -> None:
    """RDTSC and WBINVD also stand for RDTSCP and INVD (intercepts.resolve)."""
    insn = vcpu.fetch_insn()
    by_rule(vcpu, resolve(code, insn), insn)


EXIT_HANDLERS: dict[int, ExitHandler] = {
    SvmExit.SWINT: _software_interrupt,
    **dict.fromkeys(
        (
            SvmExit.VMRUN,
            SvmExit.VMLOAD,
            SvmExit.VMSAVE,
            SvmExit.STGI,
            SvmExit.CLGI,
            SvmExit.SKINIT,
            SvmExit.INVLPGA,
        ),
        _undefined,
    ),
    SvmExit.SHUTDOWN: _shutdown,
    SvmExit.INVLPG: _invlpg,
    **dict.fromkeys(_CR_WRITES, _cr_write),
    SvmExit.MSR: _msr,
    SvmExit.VMMCALL: _vmmcall,
    SvmExit.RDTSC: _resolved,
    SvmExit.WBINVD: _resolved,
}


def handle_intercept(vcpu: VCpu, code: int) -> None:
    EXIT_HANDLERS.get(code, by_rule)(vcpu, code)
