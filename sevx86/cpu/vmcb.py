"""The VMCB as the host owns it: the control area and the permission maps.

In hardware the VMCB lives in host memory; the hypervisor writes the
intercept vectors, the I/O and MSR permission maps, EVENTINJ and (SEV-ES) the
GHCB GPA, and reads EXITCODE/EXITINFO1/EXITINFO2 after each #VMEXIT (AMD APM
vol 2, appendix B, table B-1). sevx86 keeps exactly that here, as bytes laid
out by ``sevx86.arch.vmcb.VMCB_CONTROL``; the CPU engine reads the host's
choices from it at VMRUN and writes the exit information into it.
"""

from __future__ import annotations

from sevx86.arch.vmcb import (
    IOPM_SIZE,
    MSRPM_SIZE,
    VMCB_CONTROL,
    Intercept,
    clear_intercepts,
    iopm_intercepts,
    is_intercepted,
    msrpm_bit,
    msrpm_covers,
    set_intercepts,
)

_INTERCEPT_BYTES = slice(0x000, 0x018)


class Vmcb:
    """Control area + IOPM + MSRPM of one vCPU, as host memory."""

    def __init__(self) -> None:
        self.control = VMCB_CONTROL.new()
        self.iopm = bytearray(IOPM_SIZE)
        self.msrpm = bytearray(MSRPM_SIZE)
        self._synced: bytes | None = None

    # -- fields ------------------------------------------------------------------
    def __getitem__(self, name: str) -> int:
        return VMCB_CONTROL[name].read(self.control)

    def __setitem__(self, name: str, value: int) -> None:
        VMCB_CONTROL[name].write(self.control, value)

    # -- intercepts ----------------------------------------------------------------
    def intercept(self, *bits: Intercept | int) -> None:
        set_intercepts(self.control, *bits)

    def allow(self, *bits: Intercept | int) -> None:
        clear_intercepts(self.control, *bits)

    def intercepts(self, bit: Intercept | int) -> bool:
        return is_intercepted(self.control, bit)

    def intercept_all_io(self) -> None:
        self.intercept(Intercept.IOIO_PROT)
        self.iopm[:] = b"\xff" * len(self.iopm)

    def intercept_all_msrs(self) -> None:
        self.intercept(Intercept.MSR_PROT)
        self.msrpm[:] = b"\xff" * len(self.msrpm)

    def set_msr_intercept(self, msr: int, *, read: bool, write: bool) -> None:
        for is_write, on in ((False, read), (True, write)):
            byte, bit = msrpm_bit(msr, is_write)
            if on:
                self.msrpm[byte] |= 1 << bit
            else:
                self.msrpm[byte] &= ~(1 << bit)

    def msr_intercepted(self, msr: int, write: bool) -> bool:
        """APM vol 2, 15.11: MSRs outside the three ranges always exit."""
        if not self.intercepts(Intercept.MSR_PROT):
            return False
        if not msrpm_covers(msr):
            return True
        byte, bit = msrpm_bit(msr, write)
        return bool(self.msrpm[byte] >> bit & 1)

    def io_intercepted(self, port: int, size: int) -> bool:
        return self.intercepts(Intercept.IOIO_PROT) and iopm_intercepts(self.iopm, port, size)

    @property
    def insn_bytes(self) -> bytes:
        """The decode-assist instruction bytes (``insn_len`` of them)."""
        f = VMCB_CONTROL["insn_bytes"]
        return bytes(self.control[f.offset : f.offset + self["insn_len"]])

    def set_insn_bytes(self, insn: bytes) -> None:
        f = VMCB_CONTROL["insn_bytes"]
        insn = insn[: f.size]
        self["insn_len"] = len(insn)
        f.write_bytes(self.control, insn.ljust(f.size, b"\0"))

    def intercept_words_changed(self) -> bool:
        """True once after the host changed any intercept word."""
        now = bytes(self.control[_INTERCEPT_BYTES])
        if now != self._synced:
            self._synced = now
            return True
        return False
