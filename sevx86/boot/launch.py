"""Launch firmware as QEMU launches an SEV(-ES) guest from pflash.

The order of SP commands is QEMU's (``target/i386/sev.c``) on top of KVM:

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
from sevx86.boot.reset import initial_vmsas
from sevx86.boot.vcpu_types import vcpu_signature as signature_of
from sevx86.config import PAGE_SIZE, GuestConfig, GuestMode
from sevx86.memory.dram import PhysicalMemory
from sevx86.sp.channel import Measurement, SecretPacket
from sevx86.sp.policy import GuestPolicy, PolicyFlag
from sevx86.sp.secure_processor import SecureProcessor

FLASH_TOP = 1 << 32  # the flash devices end at 4 GiB
# QEMU's usual SEV-ES policy: no debugging, SEV-ES.
DEFAULT_POLICY = GuestPolicy.make(PolicyFlag.NODBG | PolicyFlag.ES)
DEFAULT_VCPU_TYPE = "EPYC-v4"

SecretProvider = Callable[[Measurement], SecretPacket | None]


@dataclass
class LaunchedGuest:
    """What a launch leaves behind for the CPU engine and the guest owner."""

    handle: int
    memory: PhysicalMemory
    vmsa_spas: tuple[int, ...]  # one per vCPU, in vCPU order
    measurement: Measurement
    launch_digest: bytes
    firmware: OvmfImage
    flash_base: int
    varstore_base: int | None
    policy: GuestPolicy
    finished: bool


def launch_guest(
    sp: SecureProcessor,
    firmware: OvmfImage | bytes,
    *,
    vcpus: int | None = None,
    vcpu_type: str = DEFAULT_VCPU_TYPE,
    vcpu_signature: int | None = None,
    config: GuestConfig | None = None,
    policy: GuestPolicy | int = DEFAULT_POLICY,
    dh_cert: bytes | None = None,
    session: bytes | None = None,
    varstore: bytes | None = None,
    asid: int | None = None,
    sev_features: int = 0,
    secret: SecretProvider | None = None,
    secret_gpa: int | None = None,
    finish: bool = True,
) -> LaunchedGuest:
    """Run the launch; ``secret`` gets the measurement and may return a packet."""
    image = firmware if isinstance(firmware, OvmfImage) else OvmfImage.parse(firmware)
    policy = policy if isinstance(policy, GuestPolicy) else GuestPolicy(int(policy))
    mode = GuestMode.SEV_ES if policy.es else GuestMode.SEV
    if config is None:
        config = GuestConfig(mode=mode, vcpus=vcpus or 1)
    elif config.mode is not mode:
        raise ValueError(f"policy {policy} launches {mode.value}, config says {config.mode.value}")
    elif vcpus is not None and vcpus != config.vcpus:
        raise ValueError(f"vcpus {vcpus} disagrees with the config's {config.vcpus}")
    vcpus = vcpus or config.vcpus
    if vcpus < 1:
        raise ValueError(f"vcpus {vcpus} must be at least 1")
    signature = signature_of(vcpu_type) if vcpu_signature is None else vcpu_signature
    for name, blob in (("firmware", image.data), ("varstore", varstore or b"")):
        if len(blob) % PAGE_SIZE:
            raise OvmfError(f"{name} image size {len(blob):#x} is not a multiple of 4 KiB")
    if not image.data:
        raise OvmfError("firmware image is empty")
    # QEMU refuses an SEV-ES launch without the reset block even for one vCPU.
    vmsa_pages = (
        initial_vmsas(vcpus, image.sev_es_reset_addr(), signature, sev_features=sev_features)
        if policy.es
        else []
    )
    flash_base = FLASH_TOP - image.size
    varstore_base = flash_base - len(varstore) if varstore else None

    handle = sp.launch_start(policy, dh_cert=dh_cert, session=session)
    try:
        memory = PhysicalMemory(config, sp.memory_cipher(handle))
        # KVM hands out the lowest free ASID; handles are allocated the same way.
        sp.activate(handle, handle if asid is None else asid)
        memory.add_region("pflash0", flash_base, image.size)
        memory.write_dram(flash_base, image.data)
        if varstore_base is not None:
            assert varstore is not None
            memory.add_region("pflash1", varstore_base, len(varstore))
            memory.write_dram(varstore_base, varstore)
        sp.launch_update_data(handle, memory, flash_base, image.size)
        spas = []
        for vcpu_id, page in enumerate(vmsa_pages):
            region = memory.allocate_host_page(f"vmsa{vcpu_id}")
            memory.write_dram(region.base, page)
            sp.launch_update_vmsa(handle, memory, region.base, vcpu_id)
            spas.append(region.base)
        measurement = sp.launch_measure(handle)
        packet = secret(measurement) if secret is not None else None
        if packet is not None:
            gpa = secret_gpa if secret_gpa is not None else _secret_area_base(image)
            sp.launch_secret(handle, memory, packet.header, packet.data, gpa)
        if finish:
            sp.launch_finish(handle)
    except BaseException:
        sp.decommission(handle)
        raise
    return LaunchedGuest(
        handle=handle,
        memory=memory,
        vmsa_spas=tuple(spas),
        measurement=measurement,
        launch_digest=sp.launch_digest(handle),
        firmware=image,
        flash_base=flash_base,
        varstore_base=varstore_base,
        policy=policy,
        finished=finish,
    )


def _secret_area_base(image: OvmfImage) -> int:
    """Where QEMU injects a secret when no GPA is given: OVMF's SEV secret area."""
    area = image.sev_secret_area()
    if area is None or area[0] == 0 or area[1] == 0:
        raise OvmfError("the firmware declares no SEV secret area: give the secret's GPA")
    return area[0]
