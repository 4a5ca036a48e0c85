"""One NAE request to emulate, whichever way it reached the hypervisor.

The same event (a CPUID, an OUT, an RDMSR, an MMIO read) reaches the host in
two ways:

* SEV-ES: the guest's #VC handler copies the inputs it chooses into the
  GHCB and issues VMGEXIT; the host answers in the GHCB (``GhcbRequest``).
* none / SEV: a plain #VMEXIT; the host reads and writes the guest's
  registers itself and moves RIP past the instruction (``RegisterRequest``).

Handlers (``sevx86.hv.handlers``) are written once against ``Request``: they
read inputs with ``reg``, produce outputs with ``set_reg``, move bulk data
through ``read_data``/``write_data`` (the scratch area, guest memory for
string I/O, or the MMIO value), and report failures with
``inject_exception`` (#GP for a refused MSR) or ``error`` (a GHCB v2 error
reason). Hooks receive the same object and may change the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sevx86.arch.bits import U32_MASK as _U32
from sevx86.arch.bits import U64_MASK as _U64
from sevx86.arch.exits import exit_name
from sevx86.arch.ghcb import ExitInfoResult, GhcbError
from sevx86.arch.vectors import Vector
from sevx86.arch.vmcb import EventType, encode_event
from sevx86.hv.ghcb import GhcbPage
from sevx86.hv.validate import Scratch, ValidRequest

if TYPE_CHECKING:
    from sevx86.cpu.state import RegisterFile
    from sevx86.machine import HostVcpu


class Request:
    """Base: what every handler may use."""

    via_ghcb = False

    def __init__(self, vcpu: HostVcpu, code: int, info1: int, info2: int):
        self.vcpu = vcpu
        self.code = code
        self.info1 = info1
        self.info2 = info2
        # Elements of a string I/O (the GHCB carries it in SW_EXITINFO2; the
        # direct path computes it from RCX).
        self.count = info2
        # (SW_EXITINFO1, SW_EXITINFO2) for the GHCB path; an exception or error
        # replaces the success answer.
        self.result = int(ExitInfoResult.OK)
        self.result_info2 = 0
        self.exception: tuple[int, int | None] | None = None
        self.error_reason: int | None = None
        self.detail = ""
        self.retry = False  # direct path: do not advance RIP (re-execute, e.g. long REP)
        # The answer as the handler left it (``Hypervisor.serve_request`` records it),
        # so the trace can tell an answer a hook changed; None: no handler ran.
        self.handled: tuple[object, ...] | None = None

    @property
    def name(self) -> str:
        return exit_name(self.code)

    # -- registers ---------------------------------------------------------------
    def reg(self, name: str) -> int:
        raise NotImplementedError

    def has_reg(self, name: str) -> bool:
        raise NotImplementedError

    def set_reg(self, name: str, value: int) -> None:
        raise NotImplementedError

    def set_reg_part(self, name: str, value: int, size: int) -> None:
        """A result of ``size`` bytes in a GPR (IN, MMIO read)."""
        raise NotImplementedError

    # -- bulk data ---------------------------------------------------------------
    def read_data(self, size: int) -> bytes | None:
        """The request's data buffer (OUTS source, MMIO write value); None if unreachable."""
        raise NotImplementedError

    def write_data(self, data: bytes) -> bool:
        """Fill the request's data buffer (INS destination, MMIO read value)."""
        raise NotImplementedError

    # -- answers -----------------------------------------------------------------
    def set_info2(self, value: int) -> None:
        """A success answer that carries a value in SW_EXITINFO2 (AP jump table, HV features)."""
        self.result_info2 = value & _U64

    def inject_exception(self, vector: int, error_code: int | None = None) -> None:
        """The instruction faults in the guest (e.g. #GP(0) for a refused MSR)."""
        self.exception = (vector, error_code)

    def error(self, reason: int, detail: str = "") -> None:
        """The request is malformed (GHCB v2 error; #GP(0) on the direct path)."""
        self.error_reason = reason
        self.detail = detail

    @property
    def failed(self) -> bool:
        return self.exception is not None or self.error_reason is not None

    def answer_state(self) -> tuple[object, ...]:
        """Everything the guest will receive, to compare before and after the hooks."""
        outputs = getattr(self, "outputs", {})
        return (
            self.result,
            self.result_info2,
            self.exception,
            self.error_reason,
            tuple(sorted(outputs.items())),
        )

    @property
    def hook_changed(self) -> str | None:
        """'answered by a hook' / 'changed by a hook', or None if the handler's answer stands."""
        if self.handled is None:
            return "answered by a hook"
        if self.handled != self.answer_state():
            return "changed by a hook"
        return None


class _SharedRegisters:
    """Registers as the guest shared them (``inputs``) and the answer (``outputs``).

    Under SEV-ES the host sees only what the guest put in the GHCB (or the one
    value of an MSR-protocol request) and writes back only what it answers;
    the guest's handler merges the answer into its registers itself.
    """

    inputs: dict[str, int]
    outputs: dict[str, int]

    def reg(self, name: str) -> int:
        if name in self.outputs:
            return self.outputs[name]
        return self.inputs.get(name, 0)

    def has_reg(self, name: str) -> bool:
        return name in self.outputs or name in self.inputs

    def set_reg(self, name: str, value: int) -> None:
        self.outputs[name] = value & _U64

    def set_reg_part(self, name: str, value: int, size: int) -> None:
        # The guest's handler merges the low bytes into its register itself.
        self.outputs[name] = value & ((1 << (8 * size)) - 1)


class GhcbRequest(_SharedRegisters, Request):
    """A request read from the GHCB page (SEV-ES)."""

    via_ghcb = True

    def __init__(
        self,
        vcpu: HostVcpu,
        page: GhcbPage,
        valid: ValidRequest,
        memory_read: Callable[[int, int], bytes],
        memory_write: Callable[[int, bytes], None],
    ):
        super().__init__(vcpu, valid.code, valid.info1, valid.info2)
        self.page = page
        self.valid = valid
        self.version = valid.version
        self.inputs = valid.registers
        self.outputs: dict[str, int] = {}
        self.scratch: Scratch | None = valid.scratch
        self._read = memory_read
        self._write = memory_write

    def read_data(self, size: int) -> bytes | None:
        s = self.scratch
        if s is None or size > s.length:
            return None
        if s.in_ghcb:
            return self.page.read_bytes(s.gpa - self.page.gpa, size)
        return self._read(s.gpa, size)

    def write_data(self, data: bytes) -> bool:
        s = self.scratch
        if s is None or len(data) > s.length:
            return False
        if s.in_ghcb:
            self.page.write_bytes(s.gpa - self.page.gpa, data)
        else:
            self._write(s.gpa, data)
        return True

    def finish(self) -> tuple[int, int]:
        """Write the answer into the page copy; returns (SW_EXITINFO1, SW_EXITINFO2)."""
        page = self.page
        page.clear_valid()
        if self.error_reason is not None:
            info = (int(ExitInfoResult.ERROR), self.error_reason)
        elif self.exception is not None:
            vector, code = self.exception
            event = encode_event(vector, EventType.EXCEPTION, error_code=code)
            info = (int(ExitInfoResult.EXCEPTION), event)
        else:
            for name, value in self.outputs.items():
                page.set(name, value)
            info = (self.result, self.result_info2)
        page.answer(*info)
        return info


class MsrCpuidRequest(_SharedRegisters, Request):
    """A CPUID asked through the GHCB MSR protocol: one leaf, sub-leaf 0, one register wanted.

    It is served like any CPUID request (the same handler table, hooks and
    ``handle_cpuid``), as KVM runs its ordinary CPUID exit handler for the MSR
    protocol's CPUID request (``sev_handle_vmgexit_msr_protocol``); only the
    register the guest asked for goes back (GHCB spec 56421, "CPUID
    Request"). The registers are the guest's inputs, not the host's, so it
    counts as a GHCB-side request (``via_ghcb``) without a page.
    """

    via_ghcb = True
    page = None

    def __init__(self, vcpu: HostVcpu, code: int, leaf: int, register: int):
        super().__init__(vcpu, code, 0, 0)
        self.register = register
        self.inputs: dict[str, int] = {"rax": leaf, "rcx": 0}
        self.outputs: dict[str, int] = {}

    def read_data(self, size: int) -> bytes | None:
        return None

    def write_data(self, data: bytes) -> bool:
        return False

    def answer(self) -> int | None:
        """The 32-bit value of the register asked for; None if the request failed."""
        if self.failed or self.result != ExitInfoResult.OK:
            return None
        return self.outputs.get(_CPUID_OUTPUTS[self.register], 0) & _U32


# CPUID request register index (GHCB MSR protocol bits 31:30) -> the register it names.
_CPUID_OUTPUTS = ("rax", "rbx", "rcx", "rdx")


class RegisterRequest(Request):
    """A request from a plain #VMEXIT (modes none and sev): the registers are the host's."""

    def __init__(
        self,
        vcpu: HostVcpu,
        code: int,
        info1: int,
        info2: int,
        regs: RegisterFile,
        *,
        data_read: Callable[[int], bytes | None] | None = None,
        data_write: Callable[[bytes], bool] | None = None,
    ):
        super().__init__(vcpu, code, info1, info2)
        self.regs = regs
        self._data_read = data_read
        self._data_write = data_write

    def reg(self, name: str) -> int:
        return self.regs[name]

    def has_reg(self, name: str) -> bool:
        return True

    def set_reg(self, name: str, value: int) -> None:
        self.regs[name] = value & _U64

    def set_reg_part(self, name: str, value: int, size: int) -> None:
        # x86: a 32-bit result zero-extends into the 64-bit register; 8- and
        # 16-bit results leave the upper bytes alone.
        value &= (1 << (8 * size)) - 1
        if size < 4:
            mask = (1 << (8 * size)) - 1
            value |= self.regs[name] & ~mask & _U64
        self.regs[name] = value

    def use_data(self, read: Callable[[int], bytes | None], write: Callable[[bytes], bool]) -> None:
        """Where the request's data buffer is (string I/O found it in guest memory)."""
        self._data_read, self._data_write = read, write

    def read_data(self, size: int) -> bytes | None:
        return self._data_read(size) if self._data_read is not None else None

    def write_data(self, data: bytes) -> bool:
        return self._data_write(data) if self._data_write is not None else False

    def finish(self, next_rip: int) -> tuple[int, int | None] | None:
        """Advance RIP on success; the event to inject on failure (vector, error code)."""
        if self.exception is not None:
            return self.exception
        if self.error_reason is not None:
            return (Vector.GP, 0)
        if not self.retry:
            self.regs["rip"] = next_rip
        return None


def error_name(reason: int) -> str:
    try:
        return GhcbError(reason).name
    except ValueError:
        return f"{reason:#x}"


__all__ = ["GhcbRequest", "MsrCpuidRequest", "RegisterRequest", "Request", "error_name"]
