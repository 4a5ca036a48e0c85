"""A guest VM and the host's view of it: the trust boundary as types.

``Machine`` is the trusted side -- guest memory with its AES engine, the
vCPUs (Unicorn), the Secure Processor context. ``HostView`` is everything an
untrusted hypervisor may touch (DESIGN.md, "Trust boundary"):

* DRAM as the host sees it (ciphertext for every private page),
* each vCPU's VMCB control area and permission maps,
* the right to ask for VMRUN,
* in modes ``none`` and ``sev`` only, the guest's registers at an exit.

It holds no Unicorn handle, no key, no Secure Processor object on any public
attribute; ``tests/cpu/test_boundary.py`` walks its object graph to prove it.

Launch follows the SEV API order (sevx86.sp): LAUNCH_START when the machine
is created, LAUNCH_UPDATE_DATA per loaded image, LAUNCH_UPDATE_VMSA per
SEV-ES vCPU, then LAUNCH_MEASURE and LAUNCH_FINISH in ``finish()``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sevx86.arch.vmsa import VMSA_SIZE
from sevx86.config import PAGE_SIZE, GuestConfig, GuestMode
from sevx86.cpu.vcpu import VCpu
from sevx86.cpu.vmcb import Vmcb
from sevx86.memory.dram import PhysicalMemory, RamRegion
from sevx86.sp.policy import GuestPolicy, PolicyFlag
from sevx86.sp.secure_processor import SecureProcessor
from sevx86.trace.events import NullTracer, Tracer
from sevx86.vmexit import VmExit

DEFAULT_ASID = 1


class LaunchError(RuntimeError):
    """The machine cannot be launched as asked."""


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
        if memory is not None:
            # Launched elsewhere (sevx86.boot.launch): adopt its memory and handle.
            if config.mode.encrypted and (sp is None or handle is None):
                raise LaunchError("an adopted encrypted guest needs its SP and handle")
            self._sp, self._handle, self.memory = sp, handle or 0, memory
            return
        if config.mode.encrypted:
            self._sp = sp if sp is not None else SecureProcessor()
            if policy is None:
                flags = PolicyFlag.NODBG | (PolicyFlag.ES if config.mode is GuestMode.SEV_ES else 0)
                policy = GuestPolicy.make(flags)
            policy = policy if isinstance(policy, GuestPolicy) else GuestPolicy(int(policy))
            if policy.es != (config.mode is GuestMode.SEV_ES):
                raise LaunchError(f"policy {policy} does not match mode {config.mode.value}")
            self._handle = self._sp.launch_start(policy)
            self._sp.activate(self._handle, DEFAULT_ASID)
            self.memory = PhysicalMemory(config, self._sp.memory_cipher(self._handle))
            self.tracer.emit(
                "sp",
                "launch",
                f"LAUNCH_START policy {policy.value:#x}",
                target="hv",
                policy=policy.value,
            )
        else:
            self.memory = PhysicalMemory(config)

    # -- launch ----------------------------------------------------------------------
    def load(self, gpa: int, data: bytes, *, name: str | None = None) -> None:
        """Place an image in guest memory: the host writes it, the SP encrypts and measures it."""
        if self._finished:
            raise LaunchError("the launch is finished; images can no longer be loaded")
        data = bytes(data)
        start = gpa & ~(PAGE_SIZE - 1)
        end = (gpa + len(data) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        if self.memory.guest_ram_at(start, end - start) is None:
            if any(start < r.end and r.base < end for r in self.memory.regions):
                raise LaunchError(f"image at {gpa:#x}+{len(data):#x} straddles a RAM region")
            self.memory.add_region(name or f"image@{start:#x}", start, end - start)
        self.memory.write_dram(gpa, data)
        if self._sp is not None:
            self._sp.launch_update_data(self._handle, self.memory, start, end - start)
        self.tracer.emit(
            "hv",
            "load",
            f"image {name or ''} at {gpa:#x}, {len(data)} bytes",
            target="sp" if self._sp else None,
            gpa=gpa,
            size=len(data),
        )

    def add_vcpu(self, initial_state: bytes) -> VCpu:
        """A vCPU starting from ``initial_state`` (a VMSA-layout page)."""
        if self._finished:
            raise LaunchError("the launch is finished; vCPUs can no longer be added")
        index = len(self.vcpus)
        spa = None
        if self.mode is GuestMode.SEV_ES:
            assert self._sp is not None
            page = self.memory.allocate_host_page(f"vmsa{index}")
            self.memory.write_dram(page.base, bytes(initial_state))
            self._sp.launch_update_vmsa(self._handle, self.memory, page.base, index)
            spa = page.base
            self.tracer.emit(
                "sp", "launch", f"LAUNCH_UPDATE_VMSA vCPU {index}", vcpu=index, target="hv"
            )
        vcpu = VCpu(self, index, initial_state, spa)
        self.vcpus.append(vcpu)
        return vcpu

    def adopt_vcpus(self, vmsa_spas: tuple[int, ...] = (), *, states: Sequence[bytes] = ()) -> None:
        """vCPUs for a guest launched by sevx86.boot.

        SEV-ES: from their VMSAs, already measured. SEV: from initial states
        (VMSA layout) the host keeps in each VMCB's save area, as QEMU's reset
        state: SEV measures memory only, never registers.
        """
        if states and (vmsa_spas or self.mode is GuestMode.SEV_ES):
            raise LaunchError("an SEV-ES vCPU starts from its measured VMSA, not a host state")
        for index, spa in enumerate(vmsa_spas):
            self.vcpus.append(VCpu(self, index, self.memory.read_private(spa, VMSA_SIZE), spa))
        for index, state in enumerate(states, start=len(self.vcpus)):
            self.vcpus.append(VCpu(self, index, bytes(state)))
        self._finished = True

    def finish(self) -> None:
        """LAUNCH_MEASURE + LAUNCH_FINISH (encrypted modes)."""
        if self._finished:
            return
        if self._sp is not None:
            self.measurement = self._sp.launch_measure(self._handle)
            self._sp.launch_finish(self._handle)
            self.tracer.emit(
                "sp",
                "launch",
                "LAUNCH_MEASURE + LAUNCH_FINISH",
                target="hv",
                digest=self._sp.launch_digest(self._handle).hex(),
            )
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
            vcpu.atomics = AtomicWatch(vcpu, world)
        # Translations made while shadowing was on may point at shadow pages,
        # and pages already scanned for atomics must be seen by the watch.
        self.memory.flush_tlbs()

    # -- the CPU's calls into the Secure Processor ---------------------------------------
    def vmsa_seal(self, vcpu: VCpu) -> None:
        assert self._sp is not None and vcpu.vmsa_spa is not None
        self._sp.vmsa_seal(self._handle, vcpu.index, self.memory, vcpu.vmsa_spa)

    def vmsa_check(self, vcpu: VCpu) -> bool:
        assert self._sp is not None and vcpu.vmsa_spa is not None
        return self._sp.vmsa_check(self._handle, vcpu.index, self.memory, vcpu.vmsa_spa)

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


@dataclass(frozen=True)
class RegionInfo:
    """A RAM region as the host knows it (it allocated it)."""

    name: str
    base: int
    size: int
    guest_visible: bool


class HostMemory:
    """Guest DRAM through the host's eyes: ciphertext for private pages."""

    __slots__ = ("_memory",)

    def __init__(self, memory: PhysicalMemory):
        self._memory = memory

    def read(self, gpa: int, size: int) -> bytes:
        return self._memory.read_dram(gpa, size)

    def write(self, gpa: int, data: bytes) -> None:
        self._memory.write_dram(gpa, bytes(data))

    def regions(self) -> list[RegionInfo]:
        return [_info(r) for r in self._memory.regions]

    def contains(self, gpa: int, size: int = 1) -> bool:
        """Is ``[gpa, gpa+size)`` guest RAM (a host must check before touching it)?"""
        return self._memory.guest_ram_at(gpa, size) is not None

    def set_trapping(self, gpa: int, size: int, on: bool = True) -> bool:
        """Take whole pages of guest RAM back for emulation, or give them back.

        KVM's memory slots in one call: while a range traps, every guest
        access to it is a nested page fault (``#VC`` with error code NPF
        under SEV-ES, an NPF exit otherwise) that the host emulates, as for
        MMIO; its bytes stay in DRAM, where ``read``/``write`` still reach
        them. A flash device in command mode works this way (QEMU's ROMD
        regions). Returns whether anything changed.
        """
        return self._memory.set_trapping(gpa, size, on)

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
        return self._memory.set_readonly(gpa, size, on)

    def is_trapping(self, gpa: int) -> bool:
        return self._memory.is_trapping(gpa)

    def is_readonly(self, gpa: int) -> bool:
        return self._memory.is_readonly(gpa)

    def image(self) -> Iterator[tuple[RegionInfo, bytes]]:
        for region, data in self._memory.dram_image():
            yield _info(region), data


def _info(r: RamRegion) -> RegionInfo:
    return RegionInfo(r.name, r.base, r.size, r.guest_visible)


class HostVcpu:
    """One vCPU as the host drives it: its VMCB, and VMRUN."""

    __slots__ = ("index", "vmcb", "_vcpu")

    def __init__(self, vcpu: VCpu):
        self.index = vcpu.index
        self.vmcb: Vmcb = vcpu.vmcb
        self._vcpu = vcpu

    def vmrun(self, *, timeout: float | None = None, max_instructions: int | None = None) -> VmExit:
        return self._vcpu.vmrun(timeout=timeout, max_instructions=max_instructions)

    def kick(self) -> None:
        """Take the physical CPU back: a running VMRUN returns soon (INTR exit)."""
        self._vcpu.kick()

    def load_state(self, page: bytes) -> None:
        """Write the state this vCPU first runs from (not under SEV-ES: ``VCpu.load_state``)."""
        self._vcpu.load_state(page)

    @property
    def vmsa_gpa(self) -> int | None:
        """Where the VMSA is (the host allocated it; it sees only ciphertext there)."""
        return self._vcpu.vmsa_spa

    @property
    def entered(self) -> bool:
        """Has this vCPU run yet (VMRUN entered it once)?"""
        return self._vcpu.status.value != "new"

    @property
    def alive(self) -> bool:
        return self._vcpu.status.value != "dead"


class HostView:
    """What the untrusted hypervisor gets. No keys, no Unicorn, no SP."""

    __slots__ = ("mode", "config", "memory", "vcpus", "_tracer", "_parallel")

    def __init__(self, machine: Machine):
        self.mode: GuestMode = machine.mode
        self.config: GuestConfig = machine.config
        self.memory = HostMemory(machine.memory)
        self.vcpus: tuple[HostVcpu, ...] = tuple(HostVcpu(v) for v in machine.vcpus)
        self._tracer = machine.tracer
        self._parallel = machine.enable_parallel

    def enable_parallel(self) -> None:
        """Run the vCPUs on several host threads from now on (the host's choice)."""
        self._parallel()

    @property
    def tracing(self) -> bool:
        """Is anyone recording? (Lets the host skip building messages.)"""
        return self._tracer.enabled

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
        self._tracer.emit("hv", kind, summary, vcpu=vcpu, target=target, **data)
