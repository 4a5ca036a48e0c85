"""A guest VM and the host's view of it: the trust boundary as types.

``Machine`` is the trusted side -- guest memory with its AES engine, the
vCPUs (Unicorn), the Secure Processor context. ``HostView`` is everything an
untrusted hypervisor may touch (docs/design.md, "Trust boundary"):

* DRAM as the host sees it (ciphertext for every private page),
* each vCPU's VMCB control area and permission maps,
* the right to ask for VMRUN,
* in modes ``none`` and ``sev`` only, the guest's registers at an exit.

It holds no Unicorn handle, no key, no Secure Processor object on any public
attribute; ``tests/cpu/test_boundary.py`` walks its object graph to prove it.

The launch is ``sevx86.sp.launch.GuestLaunch``'s: a machine adopts one (or
starts its own when created), and ``load``/``add_vcpu``/``finish`` are its
LAUNCH_UPDATE_DATA, LAUNCH_UPDATE_VMSA and LAUNCH_MEASURE + LAUNCH_FINISH.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sevx86.arch.vmsa import VMSA_SIZE
from sevx86.config import GuestConfig, GuestMode
from sevx86.cpu.vcpu import VCpu
from sevx86.cpu.vmcb import Vmcb
from sevx86.memory.dram import PhysicalMemory, RamRegion
from sevx86.sp.launch import GuestLaunch, LaunchError
from sevx86.sp.policy import GuestPolicy
from sevx86.sp.secure_processor import SecureProcessor
from sevx86.trace.events import NullTracer, Tracer
from sevx86.vmexit import VmExit

# The host-side objects below hold only a token; the trusted object behind it
# lives here. So no attribute of a boundary object -- private or not, nor a
# bound method's ``__self__`` -- leads to the memory, its key, a vCPU or the
# Machine (tests/cpu/test_boundary.py walks them all). This is not a wall
# inside one Python process: a hostile ``--hv`` file can import this module
# or walk ``gc`` (README, Limits); it keeps honest host code from stumbling
# onto trusted state, and makes every such reach an explicit import.
_TRUSTED: dict[int, object] = {}
_TOKENS = itertools.count(1)


def _memory(token: int) -> PhysicalMemory:
    return _TRUSTED[token]  # type: ignore[return-value]


def _vcpu(token: int) -> VCpu:
    return _TRUSTED[token]  # type: ignore[return-value]


def _machine(token: int) -> Machine:
    return _TRUSTED[token]  # type: ignore[return-value]


def _bind(owner: object, trusted: object) -> int:
    """A token for ``trusted``, released when ``owner`` goes away."""
    token = next(_TOKENS)
    _TRUSTED[token] = trusted
    weakref.finalize(owner, _TRUSTED.pop, token, None)
    return token



class Machine:
    """One guest: memory, vCPUs and (encrypted modes) its Secure Processor context."""

    def __init__(
        self,
        config: GuestConfig,
        *,
        sp: SecureProcessor | None = None,
        policy: GuestPolicy | int | None = None,
        tracer: Tracer | None = None,
        memory: PhysicalMemory | None = None,
        handle: int | None = None,
        launch: GuestLaunch | None = None,
    ):
        self.config = config
        self.mode = config.mode
        self.tracer: Tracer = tracer if tracer is not None else NullTracer()
        self.vcpus: list[VCpu] = []
        self.measurement = None
        self.world = None  # set by enable_parallel
        self._finished = False
        self._sp: SecureProcessor | None = None
        self._handle = 0
        self._launch: GuestLaunch | None = None
        if memory is not None:
            # Launched elsewhere (sevx86.boot.launch): adopt its memory and handle.
            if config.mode.encrypted and (sp is None or handle is None):
                raise LaunchError("an adopted encrypted guest needs its SP and handle")
            self._sp, self._handle, self.memory = sp, handle or 0, memory
            return
        # The launch (sevx86.sp.launch) issues every SP command; the machine adopts it.
        if launch is None:
            launch = GuestLaunch(config, sp=sp, policy=policy, tracer=self.tracer)
            launch.start()
        assert launch.memory is not None
        self._launch = launch
        self._sp, self._handle, self.memory = launch.sp, launch.handle, launch.memory
        self._finished = launch.finished

    # -- launch ----------------------------------------------------------------------
    def load(self, gpa: int, data: bytes, *, name: str | None = None) -> None:
        """Place an image in guest memory: the host writes it, the SP encrypts and measures it."""
        self._launching("images can no longer be loaded").update_data(gpa, data, name=name)

    def add_vcpu(self, initial_state: bytes) -> VCpu:
        """A vCPU starting from ``initial_state`` (a VMSA-layout page)."""
        launch = self._launching("vCPUs can no longer be added")
        spa = launch.update_vmsa(initial_state) if self.mode is GuestMode.SEV_ES else None
        vcpu = self._new_vcpu(len(self.vcpus), bytes(initial_state), spa)
        self.vcpus.append(vcpu)
        return vcpu

    def _launching(self, what: str) -> GuestLaunch:
        if self._finished or self._launch is None:
            raise LaunchError(f"the launch is finished; {what}")
        return self._launch

    def _new_vcpu(self, index: int, initial_state: bytes, vmsa_spa: int | None) -> VCpu:
        guard = None
        if vmsa_spa is not None:
            assert self._sp is not None
            guard = _SpVmsaGuard(self._sp, self._handle, self.memory, index, vmsa_spa)
        return VCpu(self.config, self.memory, self.tracer, index, initial_state, vmsa_spa, guard)

    def adopt_vcpus(self, vmsa_spas: tuple[int, ...] = (), *, states: Sequence[bytes] = ()) -> None:
        """vCPUs for a guest launched by sevx86.boot.

        SEV-ES: from their VMSAs, already measured. SEV: from initial states
        (VMSA layout) the host keeps in each VMCB's save area, as QEMU's reset
        state: SEV measures memory only, never registers.
        """
        if states and (vmsa_spas or self.mode is GuestMode.SEV_ES):
            raise LaunchError("an SEV-ES vCPU starts from its measured VMSA, not a host state")
        for index, spa in enumerate(vmsa_spas):
            self.vcpus.append(self._new_vcpu(index, self.memory.read_private(spa, VMSA_SIZE), spa))
        for index, state in enumerate(states, start=len(self.vcpus)):
            self.vcpus.append(self._new_vcpu(index, bytes(state), None))
        self._finished = True

    def finish(self) -> None:
        """LAUNCH_MEASURE + LAUNCH_FINISH (encrypted modes)."""
        if self._finished:
            return
        if self._launch is not None:
            self.measurement = self._launch.measure()
            self._launch.finish()
        self._finished = True

    @property
    def launch_digest(self) -> bytes | None:
        return self._sp.launch_digest(self._handle) if self._sp is not None else None

    # -- running vCPUs in parallel threads -----------------------------------------------
    def enable_parallel(self) -> None:
        """Let the vCPUs run in concurrent host threads (sevx86.cpu.parallel).

        Call while no vCPU runs. Turns memory shadowing off (one vCPU could
        not flush another's TLB at a page-form change), routes cross-vCPU
        invalidations through a stop-the-world, and hooks atomic
        instructions so each runs with the other vCPUs stopped.
        """
        if self.world is not None:
            return
        from sevx86.cpu.parallel import AtomicWatch, World

        world = World()
        self.world = world
        self.memory.shadowing = False
        self.memory.exclusive = world.exclusive
        for vcpu in self.vcpus:
            vcpu.world = world
            vcpu.atomics = AtomicWatch(vcpu.memory, vcpu.uc, world)
        # Translations made while shadowing was on may point at shadow pages,
        # and pages already scanned for atomics must be seen by the watch.
        self.memory.flush_tlbs()

    @property
    def policy(self) -> GuestPolicy | None:
        """The launch policy (GUEST_STATUS), None in mode none."""
        return self._sp.guest_status(self._handle).policy if self._sp is not None else None

    # -- a debugger's door (KVM_SEV_DBG_DECRYPT / KVM_SEV_DBG_ENCRYPT) -------------------
    def dbg_decrypt(self, spa: int, length: int) -> bytes:
        """Guest plaintext through the SP's DBG_DECRYPT (SevError under NODBG).

        16-byte aligned blocks only, as the command takes them; ``sevx86.gdb``
        rounds like KVM's ``sev_dbg_crypt``. Mode none: the bytes themselves.
        """
        if self._sp is None:
            return self.memory.read_private(spa, length)
        return self._sp.dbg_decrypt(self._handle, self.memory, spa, length)

    def dbg_encrypt(self, spa: int, data: bytes) -> None:
        """Write guest plaintext through the SP's DBG_ENCRYPT (SevError under NODBG)."""
        if self._sp is None:
            self.memory.write_private(spa, data)
            return
        self._sp.dbg_encrypt(self._handle, self.memory, spa, data)

    # -- the host's side ------------------------------------------------------------------
    def host_view(self) -> HostView:
        if not self._finished:
            self.finish()
        return HostView(self)


class _SpVmsaGuard:
    """The CPU's calls into the Secure Processor for one vCPU's VMSA (``VmsaGuard``)."""

    __slots__ = ("_sp", "_handle", "_memory", "_index", "_spa")

    def __init__(
        self, sp: SecureProcessor, handle: int, memory: PhysicalMemory, index: int, spa: int
    ):
        self._sp, self._handle, self._memory = sp, handle, memory
        self._index, self._spa = index, spa

    def seal(self, page: bytes) -> None:
        self._sp.vmsa_seal(self._handle, self._index, self._memory, self._spa, page=page)

    def check(self) -> bytes | None:
        return self._sp.vmsa_verified(self._handle, self._index, self._memory, self._spa)


@dataclass(frozen=True)
class RegionInfo:
    """A RAM region as the host knows it (it allocated it)."""

    name: str
    base: int
    size: int
    guest_visible: bool


class HostMemory:
    """Guest DRAM through the host's eyes: ciphertext for private pages."""

    __slots__ = ("_token", "__weakref__")

    def __init__(self, memory: PhysicalMemory):
        self._token = _bind(self, memory)

    def read(self, gpa: int, size: int) -> bytes:
        return _memory(self._token).read_dram(gpa, size)

    def write(self, gpa: int, data: bytes) -> None:
        _memory(self._token).write_dram(gpa, bytes(data))

    def regions(self) -> list[RegionInfo]:
        return [_info(r) for r in _memory(self._token).regions]

    def contains(self, gpa: int, size: int = 1) -> bool:
        """Is ``[gpa, gpa+size)`` guest RAM (a host must check before touching it)?"""
        return _memory(self._token).guest_ram_at(gpa, size) is not None

    def set_trapping(self, gpa: int, size: int, on: bool = True) -> bool:
        """Take whole pages of guest RAM back for emulation, or give them back.

        KVM's memory slots in one call: while a range traps, every guest
        access to it is a nested page fault (``#VC`` with error code NPF
        under SEV-ES, an NPF exit otherwise) that the host emulates, as for
        MMIO; its bytes stay in DRAM, where ``read``/``write`` still reach
        them. A flash device in command mode works this way (QEMU's ROMD
        regions). Returns whether anything changed.
        """
        return _memory(self._token).set_trapping(gpa, size, on)

    def set_readonly(self, gpa: int, size: int, on: bool = True) -> bool:
        """Map whole pages of guest RAM read-only for the guest (KVM_MEM_READONLY).

        Reads stay plain memory; a guest write is a nested page fault for the
        host. Without SEV-ES the host gets an NPF exit with the registers and
        can emulate the store (QEMU's ROM devices, a flash in read-array
        mode). Under SEV-ES it is not the reserved-bit NPF that becomes #VC:
        the host gets an automatic NPF exit it cannot emulate (the registers
        are encrypted), which is why OVMF writes its flash with explicit GHCB
        MMIO requests. Returns whether anything changed.
        """
        return _memory(self._token).set_readonly(gpa, size, on)

    def is_trapping(self, gpa: int) -> bool:
        return _memory(self._token).is_trapping(gpa)

    def is_readonly(self, gpa: int) -> bool:
        return _memory(self._token).is_readonly(gpa)

    def image(self) -> Iterator[tuple[RegionInfo, bytes]]:
        for region, data in _memory(self._token).dram_image():
            yield _info(region), data


def _info(r: RamRegion) -> RegionInfo:
    return RegionInfo(r.name, r.base, r.size, r.guest_visible)


class HostVcpu:
    """One vCPU as the host drives it: its VMCB, and VMRUN."""

    __slots__ = ("index", "vmcb", "_token", "__weakref__")

    def __init__(self, vcpu: VCpu):
        self.index = vcpu.index
        self.vmcb: Vmcb = vcpu.vmcb
        self._token = _bind(self, vcpu)

    def vmrun(self, *, timeout: float | None = None, max_instructions: int | None = None) -> VmExit:
        return _vcpu(self._token).vmrun(timeout=timeout, max_instructions=max_instructions)

    def kick(self) -> None:
        """Take the physical CPU back: a running VMRUN returns soon (INTR exit)."""
        _vcpu(self._token).kick()

    def load_state(self, page: bytes) -> None:
        """Write the state this vCPU first runs from (not under SEV-ES: ``VCpu.load_state``)."""
        _vcpu(self._token).load_state(page)

    @property
    def vmsa_gpa(self) -> int | None:
        """Where the VMSA is (the host allocated it; it sees only ciphertext there)."""
        return _vcpu(self._token).vmsa_spa

    @property
    def entered(self) -> bool:
        """Has this vCPU run yet (VMRUN entered it once)?"""
        return _vcpu(self._token).status.value != "new"

    @property
    def alive(self) -> bool:
        return _vcpu(self._token).status.value != "dead"


class HostView:
    """What the untrusted hypervisor gets. No keys, no Unicorn, no SP."""

    __slots__ = ("mode", "config", "memory", "vcpus", "_token", "__weakref__")

    def __init__(self, machine: Machine):
        self.mode: GuestMode = machine.mode
        self.config: GuestConfig = machine.config
        self.memory = HostMemory(machine.memory)
        self.vcpus: tuple[HostVcpu, ...] = tuple(HostVcpu(v) for v in machine.vcpus)
        self._token = _bind(self, machine)

    def enable_parallel(self) -> None:
        """Run the vCPUs on several host threads from now on (the host's choice)."""
        _machine(self._token).enable_parallel()

    @property
    def tracing(self) -> bool:
        """Is anyone recording? (Lets the host skip building messages.)"""
        return _machine(self._token).tracer.enabled

    def log(
        self,
        kind: str,
        summary: str,
        *,
        vcpu: int | None = None,
        target: str | None = None,
        **data: object,
    ) -> None:
        """Add a host event to the trace (write-only: the host cannot read the trace)."""
        _machine(self._token).tracer.emit("hv", kind, summary, vcpu=vcpu, target=target, **data)
