"""Launch firmware as QEMU launches an SEV(-ES) guest from pflash.

The SP commands are issued by ``sevx86.sp.launch.GuestLaunch``; this module
decides what goes in, in QEMU's order (``target/i386/sev.c``) on top of KVM:

1. LAUNCH_START (QEMU's ``sev_kvm_init``) with the owner's DH certificate and
   session if any, then ACTIVATE (KVM binds the new guest to an ASID);
2. the flash devices are mapped so that they end at 4 GiB, pflash0 (code) on
   top and pflash1 (varstore) right below it (``pc_system_flash_map``);
   pflash0 goes through LAUNCH_UPDATE_DATA, encrypted in place and measured;
   the varstore stays plaintext and unmeasured;
3. at machine-done, for SEV-ES, KVM writes every vCPU's reset state into its
   VMSA page and LAUNCH_UPDATE_VMSA measures and encrypts them in vCPU order;
4. LAUNCH_MEASURE; the guest owner may answer with LAUNCH_SECRET (QEMU's
   ``sev-inject-launch-secret``); LAUNCH_FINISH when the VM starts.

Guest RAM is a ``PhysicalMemory`` under the guest's own ``MemoryCipher``,
created right after LAUNCH_START; the host loads images with ``write_dram``
(plaintext in DRAM) and the SP encrypts them in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sevx86.boot.ovmf import OvmfError, OvmfImage
from sevx86.boot.reset import initial_vmsas, reset_states
from sevx86.boot.vcpu_types import vcpu_signature as signature_of
from sevx86.config import PAGE_SIZE, GuestConfig, GuestMode
from sevx86.machine import Machine
from sevx86.memory.dram import PhysicalMemory
from sevx86.sp.channel import Measurement, SecretPacket
from sevx86.sp.launch import GuestLaunch, LaunchError, default_policy, resolve_policy
from sevx86.sp.policy import GuestPolicy
from sevx86.sp.secure_processor import SecureProcessor
from sevx86.trace.events import Tracer

FLASH_TOP = 1 << 32  # the flash devices end at 4 GiB
# QEMU's usual SEV-ES policy: no debugging, SEV-ES (sevx86.sp.launch.default_policy).
DEFAULT_POLICY = default_policy(GuestMode.SEV_ES)
DEFAULT_VCPU_TYPE = "EPYC-v4"

SecretProvider = Callable[[Measurement], SecretPacket | None]


@dataclass
class LaunchedGuest:
    """What a launch leaves behind for the CPU engine and the guest owner."""

    handle: int  # 0 in mode none (no Secure Processor)
    memory: PhysicalMemory
    vmsa_spas: tuple[int, ...]  # one per vCPU, in vCPU order (SEV-ES)
    measurement: Measurement | None  # None in mode none
    launch_digest: bytes | None
    firmware: OvmfImage
    flash_base: int
    varstore_base: int | None
    policy: GuestPolicy | None
    finished: bool
    launch: GuestLaunch  # the state machine that ran it (a Machine adopts it)
    states: tuple[bytes, ...]  # every vCPU's reset state (VMSA layout), in vCPU order


def launch_guest(
    sp: SecureProcessor | None,
    firmware: OvmfImage | bytes,
    *,
    vcpus: int | None = None,
    vcpu_type: str = DEFAULT_VCPU_TYPE,
    vcpu_signature: int | None = None,
    config: GuestConfig | None = None,
    policy: GuestPolicy | int | None = DEFAULT_POLICY,
    dh_cert: bytes | None = None,
    session: bytes | None = None,
    varstore: bytes | None = None,
    asid: int | None = None,
    sev_features: int = 0,
    secret: SecretProvider | None = None,
    secret_gpa: int | None = None,
    finish: bool = True,
    tracer: Tracer | None = None,
) -> LaunchedGuest:
    """Run the launch (``GuestLaunch``); ``secret`` gets the measurement and may return a packet.

    The mode is the config's, else the policy's (SEV-ES by default), and the
    two must agree; ``policy=None`` is the mode's default policy. Mode none
    writes the flash in plaintext and measures nothing.
    """
    image = firmware if isinstance(firmware, OvmfImage) else OvmfImage.parse(firmware)
    if config is None:
        policy = DEFAULT_POLICY if policy is None else policy
        policy = policy if isinstance(policy, GuestPolicy) else GuestPolicy(int(policy))
        mode = GuestMode.SEV_ES if policy.es else GuestMode.SEV
        config = GuestConfig(mode=mode, vcpus=vcpus or 1)
    elif vcpus is not None and vcpus != config.vcpus:
        raise ValueError(f"vcpus {vcpus} disagrees with the config's {config.vcpus}")
    try:
        resolved = resolve_policy(config.mode, policy)
    except LaunchError as exc:
        raise ValueError(str(exc)) from None
    vcpus = vcpus or config.vcpus
    if vcpus < 1:
        raise ValueError(f"vcpus {vcpus} must be at least 1")
    signature = signature_of(vcpu_type) if vcpu_signature is None else vcpu_signature
    for name, blob in (("firmware", image.data), ("varstore", varstore or b"")):
        if len(blob) % PAGE_SIZE:
            raise OvmfError(f"{name} image size {len(blob):#x} is not a multiple of 4 KiB")
    if not image.data:
        raise OvmfError("firmware image is empty")
    es = config.mode is GuestMode.SEV_ES
    # QEMU refuses an SEV-ES launch without the reset block even for one vCPU.
    states = (
        initial_vmsas(vcpus, image.sev_es_reset_addr(), signature, sev_features=sev_features)
        if es
        else reset_states(image, vcpus, signature)
    )
    flash_base = FLASH_TOP - image.size
    varstore_base = flash_base - len(varstore) if varstore else None

    launch = GuestLaunch(config, sp=sp, policy=resolved, tracer=tracer)
    launch.start(dh_cert=dh_cert, session=session, asid=asid)
    try:
        memory = launch.memory
        assert memory is not None
        launch.update_data(flash_base, image.data, name="pflash0")
        if varstore_base is not None:  # plaintext and unmeasured, as QEMU's pflash1
            assert varstore is not None
            launch.update_data(varstore_base, varstore, name="pflash1", measure=False)
        if es:
            for page in states:
                launch.update_vmsa(page)
        measurement = launch.measure()
        packet = secret(measurement) if secret is not None and measurement else None
        if packet is not None:
            gpa = secret_gpa if secret_gpa is not None else _secret_area_base(image)
            launch.inject_secret(packet.header, packet.data, gpa)
        if finish:
            launch.finish()
    except BaseException:
        launch.abort()
        raise
    return LaunchedGuest(
        handle=launch.handle,
        memory=memory,
        vmsa_spas=tuple(launch.vmsa_spas),
        measurement=measurement,
        launch_digest=launch.launch_digest,
        firmware=image,
        flash_base=flash_base,
        varstore_base=varstore_base,
        policy=resolved,
        finished=finish,
        launch=launch,
        states=tuple(states),
    )


def adopt(launched: LaunchedGuest, *, tracer: Tracer | None = None) -> Machine:
    """The machine of a launched guest: its memory, SP context and vCPUs.

    SEV-ES vCPUs start from their measured VMSAs; without SEV-ES the host
    keeps each vCPU's reset state in its VMCB, as QEMU does (SEV measures
    memory only, never registers).
    """
    machine = Machine(launched.launch.config, launch=launched.launch, tracer=tracer)
    if launched.vmsa_spas:
        machine.adopt_vcpus(launched.vmsa_spas)
    else:
        machine.adopt_vcpus(states=launched.states)
    return machine


def _secret_area_base(image: OvmfImage) -> int:
    """Where QEMU injects a secret when no GPA is given: OVMF's SEV secret area."""
    area = image.sev_secret_area()
    if area is None or area[0] == 0 or area[1] == 0:
        raise OvmfError("the firmware declares no SEV secret area: give the secret's GPA")
    return area[0]
