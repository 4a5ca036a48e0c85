"""One owner of a guest's launch: the SEV API launch sequence as a small state machine.

Modelled on QEMU's ``SevGuestState`` (``target/i386/sev.c``), which is the
only place QEMU issues launch commands and which tracks the guest through
``SEV_STATE_UNINIT -> LAUNCH_UPDATE -> LAUNCH_SECRET -> RUNNING``. Here
``GuestLaunch`` goes through ``LaunchStage`` the same way (SEV API spec
55766, chapter 6 "Guest launch"):

=========================  ==================================================
``start()``                LAUNCH_START with the policy (and the owner's DH
                           certificate and session), then ACTIVATE (KVM binds
                           the guest to an ASID); guest memory is created
                           under the guest's key
``update_data(gpa, data)`` the host writes an image; LAUNCH_UPDATE_DATA
                           encrypts it in place and measures it (or, with
                           ``measure=False``, it stays plaintext: a varstore)
``update_vmsa(page)``      SEV-ES: a vCPU's initial state as a VMSA page,
                           measured and encrypted (LAUNCH_UPDATE_VMSA)
``measure()``              LAUNCH_MEASURE: the measurement for the owner
``inject_secret(...)``     LAUNCH_SECRET: the owner's wrapped secret
``finish()``               LAUNCH_FINISH: the guest may run
=========================  ==================================================

Mode ``none`` goes through the same steps with no Secure Processor: images
are written in plaintext and nothing is measured. Each step emits its own
trace event (kind ``launch`` for an SP command, ``load`` for an image
written in plaintext), so every stack built on it -- the test harness, our
firmware's ``boot_machine``, ``FirmwareBoot`` for OVMF -- shows the same
launch in its trace.

``resolve_policy`` is the one place that computes the default policy and
checks a policy against the mode.
"""

from __future__ import annotations

from enum import StrEnum

from sevx86.config import PAGE_SIZE, GuestConfig, GuestMode
from sevx86.memory.dram import PhysicalMemory
from sevx86.sp.channel import Measurement
from sevx86.sp.policy import GuestPolicy, PolicyFlag
from sevx86.sp.secure_processor import SecureProcessor
from sevx86.trace.events import NullTracer, Tracer


class LaunchError(RuntimeError):
    """The guest cannot be launched as asked (a wrong step, policy or image)."""


class LaunchStage(StrEnum):
    """Where a launch is (QEMU ``SevState``)."""

    NEW = "new"  # nothing issued yet
    UPDATING = "updating"  # after LAUNCH_START: images and VMSAs go in
    MEASURED = "measured"  # after LAUNCH_MEASURE: a secret may be injected
    FINISHED = "finished"  # after LAUNCH_FINISH: the guest may run


def default_policy(mode: GuestMode) -> GuestPolicy | None:
    """QEMU's usual policy: no debugging, plus SEV-ES for an SEV-ES guest; None for mode none."""
    if not mode.encrypted:
        return None
    return GuestPolicy.make(PolicyFlag.NODBG | (PolicyFlag.ES if mode is GuestMode.SEV_ES else 0))


def resolve_policy(mode: GuestMode, policy: GuestPolicy | int | None) -> GuestPolicy | None:
    """The policy a launch in ``mode`` uses: the default, or ``policy`` checked against the mode."""
    if policy is None:
        return default_policy(mode)
    if not mode.encrypted:
        raise LaunchError("a policy needs an encrypted guest (mode sev or sev-es)")
    policy = policy if isinstance(policy, GuestPolicy) else GuestPolicy(int(policy))
    if policy.es != (mode is GuestMode.SEV_ES):
        has, launches = ("has", "sev-es") if policy.es else ("lacks", "sev")
        raise LaunchError(
            f"policy {policy.value:#x} {has} the SEV-ES bit (0x4): it launches {launches},"
            f" but the mode is {mode.value}"
        )
    return policy


class GuestLaunch:
    """The launch of one guest (see the module docstring for the steps)."""

    def __init__(
        self,
        config: GuestConfig,
        *,
        sp: SecureProcessor | None = None,
        policy: GuestPolicy | int | None = None,
        tracer: Tracer | None = None,
    ):
        self.config = config
        self.mode = config.mode
        self.policy = resolve_policy(config.mode, policy)
        self.sp: SecureProcessor | None = None
        if config.mode.encrypted:
            self.sp = sp if sp is not None else SecureProcessor()
        self.tracer: Tracer = tracer if tracer is not None else NullTracer()
        self.stage = LaunchStage.NEW
        self.handle = 0
        self.memory: PhysicalMemory | None = None
        self.vmsa_spas: list[int] = []
        self.measurement: Measurement | None = None

    # -- the steps ----------------------------------------------------------------------
    def start(
        self,
        *,
        dh_cert: bytes | None = None,
        session: bytes | None = None,
        asid: int | None = None,
    ) -> PhysicalMemory:
        """LAUNCH_START + ACTIVATE; returns the guest memory the images go into."""
        self._expect(LaunchStage.NEW, "LAUNCH_START")
        if self.sp is None:
            self.memory = PhysicalMemory(self.config)
        else:
            assert self.policy is not None
            self.handle = self.sp.launch_start(self.policy, dh_cert=dh_cert, session=session)
            try:
                self.memory = PhysicalMemory(self.config, self.sp.memory_cipher(self.handle))
                # KVM hands out the lowest free ASID; handles are allocated the same way.
                self.sp.activate(self.handle, self.handle if asid is None else asid)
            except BaseException:
                self.abort()
                raise
            self._emit(
                "hv",
                "launch",
                f"LAUNCH_START policy {self.policy.value:#x}",
                target="sp",
                policy=self.policy.value,
            )
        self.stage = LaunchStage.UPDATING
        return self.memory

    def update_data(
        self, gpa: int, data: bytes, *, name: str | None = None, measure: bool = True
    ) -> None:
        """Place an image at ``gpa``: LAUNCH_UPDATE_DATA, or plaintext if not ``measure``."""
        self._expect(LaunchStage.UPDATING, "LAUNCH_UPDATE_DATA")
        memory = self._memory()
        data = bytes(data)
        start = gpa & ~(PAGE_SIZE - 1)
        end = (gpa + len(data) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        label = name or f"image@{start:#x}"
        if memory.guest_ram_at(start, end - start) is None:
            if any(start < r.end and r.base < end for r in memory.regions):
                raise LaunchError(f"image at {gpa:#x}+{len(data):#x} straddles a RAM region")
            memory.add_region(label, start, end - start)
        memory.write_dram(gpa, data)
        if self.sp is not None and measure:
            self.sp.launch_update_data(self.handle, memory, start, end - start)
            self._emit(
                "hv",
                "launch",
                f"LAUNCH_UPDATE_DATA {label} at {gpa:#x}, {len(data)} bytes:"
                " encrypted in place and measured",
                target="sp",
                gpa=gpa,
                size=len(data),
                name=label,
            )
        else:
            how = "plaintext" + (", not measured" if self.sp is not None else "")
            self._emit(
                "hv",
                "load",
                f"image {label} at {gpa:#x}, {len(data)} bytes ({how})",
                gpa=gpa,
                size=len(data),
                name=label,
            )

    def update_vmsa(self, page: bytes) -> int:
        """SEV-ES: the next vCPU's initial VMSA, measured and encrypted; returns its SPA."""
        self._expect(LaunchStage.UPDATING, "LAUNCH_UPDATE_VMSA")
        if self.mode is not GuestMode.SEV_ES:
            raise LaunchError(f"LAUNCH_UPDATE_VMSA needs an SEV-ES guest, not {self.mode.value}")
        assert self.sp is not None
        memory = self._memory()
        index = len(self.vmsa_spas)
        region = memory.allocate_host_page(f"vmsa{index}")
        memory.write_dram(region.base, bytes(page))
        self.sp.launch_update_vmsa(self.handle, memory, region.base, index)
        self.vmsa_spas.append(region.base)
        self._emit("hv", "launch", f"LAUNCH_UPDATE_VMSA vCPU {index}", target="sp", vcpu=index)
        return region.base

    def measure(self) -> Measurement | None:
        """LAUNCH_MEASURE (None in mode none, where nothing is measured)."""
        self._expect(LaunchStage.UPDATING, "LAUNCH_MEASURE")
        self.stage = LaunchStage.MEASURED
        if self.sp is None:
            return None
        self.measurement = self.sp.launch_measure(self.handle)
        digest = self.sp.launch_digest(self.handle).hex()
        self._emit("sp", "launch", f"LAUNCH_MEASURE: digest {digest}", target="hv", digest=digest)
        return self.measurement

    def inject_secret(self, header: bytes, data: bytes, gpa: int) -> None:
        """LAUNCH_SECRET: the owner's wrapped secret, decrypted by the SP into guest memory."""
        self._expect(LaunchStage.MEASURED, "LAUNCH_SECRET")
        if self.sp is None:
            raise LaunchError("LAUNCH_SECRET needs an encrypted guest")
        self.sp.launch_secret(self.handle, self._memory(), header, data, gpa)
        self._emit(
            "hv", "launch", f"LAUNCH_SECRET at {gpa:#x}", target="sp", gpa=gpa, size=len(data)
        )

    def finish(self) -> None:
        """LAUNCH_FINISH (measuring first if nobody did): from now on the guest may run."""
        if self.stage is LaunchStage.FINISHED:
            return
        if self.stage is LaunchStage.UPDATING:
            self.measure()
        self._expect(LaunchStage.MEASURED, "LAUNCH_FINISH")
        if self.sp is not None:
            self.sp.launch_finish(self.handle)
            self._emit("hv", "launch", "LAUNCH_FINISH", target="sp")
        self.stage = LaunchStage.FINISHED

    def abort(self) -> None:
        """Give the guest's SP context back after a failed launch (DECOMMISSION)."""
        if self.sp is not None and self.handle:
            self.sp.decommission(self.handle)

    # -- what the launch leaves -----------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.stage is LaunchStage.FINISHED

    @property
    def launch_digest(self) -> bytes | None:
        if self.sp is None or self.stage is LaunchStage.NEW:
            return None
        return self.sp.launch_digest(self.handle)

    def _memory(self) -> PhysicalMemory:
        assert self.memory is not None
        return self.memory

    def _expect(self, stage: LaunchStage, command: str) -> None:
        if self.stage is not stage:
            raise LaunchError(f"{command} in launch stage {self.stage.value} (needs {stage.value})")

    def _emit(self, actor: str, kind: str, summary: str, **data: object) -> None:
        self.tracer.emit(actor, kind, summary, **data)  # type: ignore[arg-type]


__all__ = [
    "GuestLaunch",
    "LaunchError",
    "LaunchStage",
    "default_policy",
    "resolve_policy",
]
