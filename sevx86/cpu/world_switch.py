"""The world switch: VMRUN into the guest and the automatic exit out of it.

Under SEV-ES (APM vol 2, 15.35.4) an automatic exit writes the whole vCPU
state into the encrypted VMSA and VMRUN loads it all back; the hardware
guarantees the host cannot change it in between (docs/design.md, "World
switch"; sevx86 models that guarantee with the SP's tag, behind the
``VmsaGuard`` interface). In modes none and sev the state goes to the host as
a plaintext ``RegisterFile`` and comes back from it.

The state moves only through ``sevx86.cpu.state.capture/apply`` (one field
map, the VMSA layout). Two rules keep the check honest:

* at VMRUN one read of the VMSA is verified and that same page is loaded;
* at an exit the captured page is written and exactly those bytes sealed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sevx86.arch.vmsa import VMSA_SIZE
from sevx86.config import GuestMode
from sevx86.cpu import state
from sevx86.cpu.svm import VMRUN_LOADED

if TYPE_CHECKING:
    from sevx86.cpu.vcpu import VCpu
    from sevx86.cpu.vmsa_guard import VmsaGuard
    from sevx86.vmexit import VmExit


class WorldSwitch:
    """VMRUN entry and the VMSA save, for one vCPU."""

    def __init__(self, vcpu: VCpu, initial_state: bytes, guard: VmsaGuard | None):
        self._vcpu = vcpu
        self._guard = guard
        self.initial_state = bytes(initial_state)
        # Fields the engine does not model (SEV_FEATURES, XCR0, ...) carry
        # over from the launch VMSA into every VMSA the CPU writes.
        self._page = bytearray(VMSA_SIZE)
        self._saved: bytes = b""  # the VMSA the CPU last wrote (skip a no-op load)
        self.pending_regs: state.RegisterFile | None = None  # none/sev: the host's copy

    # -- VMRUN ------------------------------------------------------------------------
    def first_entry(self) -> VmExit | None:
        """The first VMRUN: Unicorn's own, from the host stub, with the launch state."""
        v = self._vcpu
        initial = self.initial_state
        if v.mode is GuestMode.SEV_ES:
            checked = self._check()
            if checked is None:
                return v.vmrun_failed("the VMSA does not match its launch measurement")
            initial = checked
            # VMRUN loads the GHCB MSR from the VMCB on every entry, the first
            # too: KVM leaves the SEV information response there at reset.
            v.ghcb_msr = v.vmcb["ghcb_gpa"]
        v.svm.program(v.vmcb, v.mode)
        v.vmcb.intercept_words_changed()
        self._page[:] = initial
        # Unicorn's VMRUN loads what the VMCB save area holds (sevx86.cpu.svm);
        # the rest is applied in host mode first: the same capture/apply map.
        v.ctx.invalidate()
        state.apply(v.uc, v.ctx, initial, skip=VMRUN_LOADED)
        v.svm.prepare_entry(initial)
        v.ctx.invalidate()
        v.svm.inject_at_entry(v.vmcb["event_inj"], v.vmcb["event_inj_err"])
        v.vmcb["event_inj"] = 0
        return None

    def resume(self) -> VmExit | None:
        """VMRUN after an exit: SEV-ES checks the VMSA and loads the page it checked."""
        v = self._vcpu
        if v.vmcb.intercept_words_changed():
            v.svm.program(v.vmcb, v.mode)
        if v.mode is GuestMode.SEV_ES:
            page = self._check()
            if page is None:
                return v.vmrun_failed("VMSA integrity check failed (changed or rolled back)")
            # When the page is the one the CPU left at the exit, byte for
            # byte, the live state already is that state: the load is a no-op.
            if page != self._saved:
                state.apply(v.uc, v.ctx, page)
            v.ghcb_msr = v.vmcb["ghcb_gpa"]
            if v.tracer.enabled:
                v.trace("sp", "vmsa-check", "VMSA integrity verified", target="cpu")
        elif self.pending_regs is not None and self.pending_regs.dirty:
            state.apply(v.uc, v.ctx, self.pending_regs.raw())
        self.pending_regs = None
        return None

    def _check(self) -> bytes | None:
        assert self._guard is not None
        return self._guard.check()

    # -- exits ------------------------------------------------------------------------
    def save_vmsa(self) -> None:
        """AE: capture all state, write it into the encrypted VMSA, seal those bytes."""
        v = self._vcpu
        assert v.vmsa_spa is not None and self._guard is not None
        page = state.capture(v.uc, v.ctx, self._page)
        written = bytes(page)
        v.memory.write_private(v.vmsa_spa, written)
        self._guard.seal(written)
        self._saved = written
        if v.tracer.enabled:
            v.trace("cpu", "world-switch", "state saved to the VMSA and sealed", target="sp")

    def reload_vmsa(self) -> bool:
        """A debugger's stop ends, SEV-ES: load the VMSA if it was rewritten and resealed.

        The stop wrote and sealed the state (``save_vmsa``); an owner-allowed
        DBG_ENCRYPT may have changed it since (the SP reseals its own write, SEV
        API 55766 DBG_ENCRYPT). The page is checked and loaded as VMRUN does;
        False when the check fails (the next VMRUN then fails, as for any host write).
        """
        v = self._vcpu
        page = self._check()
        if page is None:
            return False
        if page != self._saved:
            state.apply(v.uc, v.ctx, page)
            self._saved = page
        return True

    def host_registers(self) -> state.RegisterFile:
        """A plain #VMEXIT (none/sev): the registers as the host's plaintext copy."""
        v = self._vcpu
        regs = state.RegisterFile(state.capture(v.uc, v.ctx, bytearray(self._page)))
        self.pending_regs = regs
        return regs


__all__ = ["WorldSwitch"]
