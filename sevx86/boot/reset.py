"""The initial VMSA of an SEV-ES vCPU, exactly as QEMU + KVM build it.

QEMU resets each vCPU (``x86_cpu_reset_hold``, ``target/i386/cpu.c``) to
real mode at F000:FFF0 with CS base FFFF0000, and for SEV-ES moves every AP
(``sev_es_set_reset_vector``, ``target/i386/sev.c``) to the AP reset address
found in OVMF's SEV-ES reset block: CS selector stays F000, CS base =
address & FFFF0000, IP = address & FFFF. KVM then writes the vCPU state into
the VMSA page (``sev_es_sync_vmsa``) before LAUNCH_UPDATE_VMSA measures it;
KVM's own SVM set-up contributes EFER.SVME, CR4.MCE and clears CR0.CD/NW.

The values below are that state, field by field; tests/boot compares whole
pages with sev-snp-measure's independent construction.
"""

from __future__ import annotations

from sevx86.arch.cr import Cr0, Cr4, Rflags
from sevx86.arch.msr import PAT_RESET, Efer
from sevx86.arch.vmcb import SegAttr
from sevx86.arch.vmsa import VMSA
from sevx86.boot.ovmf import OvmfError, OvmfImage

# BSP: CS base FFFF0000 + IP FFF0, the architectural reset vector.
BSP_RESET_ADDR = 0xFFFF_FFF0
RESET_CS_SELECTOR = 0xF000
REAL_MODE_LIMIT = 0xFFFF
SEGMENT_BASE_MASK = 0xFFFF_0000
SEGMENT_IP_MASK = 0x0000_FFFF

# System-segment types in the attrib TYPE field (APM vol 2, system descriptors).
SYSTEM_TYPE_LDT = 0x2
SYSTEM_TYPE_TSS_BUSY = 0xB

CS_ATTRIB = SegAttr.P | SegAttr.S | SegAttr.TYPE_CODE | SegAttr.TYPE_RW | SegAttr.TYPE_ACCESSED
DATA_ATTRIB = SegAttr.P | SegAttr.S | SegAttr.TYPE_RW | SegAttr.TYPE_ACCESSED
LDTR_ATTRIB = SegAttr.P | SYSTEM_TYPE_LDT
TR_ATTRIB = SegAttr.P | SYSTEM_TYPE_TSS_BUSY

DR6_RESET = 0xFFFF_0FF0  # DR6_FIXED_1
DR7_RESET = 0x0000_0400  # DR7_FIXED_1
XCR0_RESET = 0x1  # x87 state only (XSTATE_FP)
MXCSR_RESET = 0x1F80
FCW_RESET = 0x037F

# KVM's SVM guest control registers at reset: EFER.SVME must be set in any
# VMCB/VMSA, CR4.MCE is kept on, CR0 is QEMU's CD|NW|ET with CD/NW cleared
# (KVM_X86_QUIRK_CD_NW_CLEARED).
EFER_RESET = int(Efer.SVME)
CR4_RESET = int(Cr4.MCE)
CR0_RESET = int(Cr0.ET)


def reset_vmsa(reset_addr: int, vcpu_signature: int, *, sev_features: int = 0) -> bytearray:
    """A 4 KiB VMSA page for a vCPU starting in real mode at ``reset_addr``."""
    if not 0 <= reset_addr <= 0xFFFF_FFFF:
        raise ValueError(f"reset address {reset_addr:#x} is not a 32-bit address")
    page = VMSA.new()
    values = {
        "cs.selector": RESET_CS_SELECTOR,
        "cs.attrib": CS_ATTRIB,
        "cs.limit": REAL_MODE_LIMIT,
        "cs.base": reset_addr & SEGMENT_BASE_MASK,
        "rip": reset_addr & SEGMENT_IP_MASK,
        "gdtr.limit": REAL_MODE_LIMIT,
        "idtr.limit": REAL_MODE_LIMIT,
        "ldtr.attrib": LDTR_ATTRIB,
        "ldtr.limit": REAL_MODE_LIMIT,
        "tr.attrib": TR_ATTRIB,
        "tr.limit": REAL_MODE_LIMIT,
        "efer": EFER_RESET,
        "cr4": CR4_RESET,
        "cr0": CR0_RESET,
        "dr7": DR7_RESET,
        "dr6": DR6_RESET,
        "rflags": int(Rflags.FIXED1),
        "g_pat": PAT_RESET,
        "rdx": vcpu_signature,
        "sev_features": sev_features,
        "xcr0": XCR0_RESET,
        "mxcsr": MXCSR_RESET,
        "x87_fcw": FCW_RESET,
    }
    for seg in ("es", "ss", "ds", "fs", "gs"):
        values[f"{seg}.attrib"] = DATA_ATTRIB
        values[f"{seg}.limit"] = REAL_MODE_LIMIT
    for name, value in values.items():
        VMSA.write(page, name, int(value))
    return page


def initial_vmsas(
    vcpus: int, ap_reset_addr: int | None, vcpu_signature: int, *, sev_features: int = 0
) -> list[bytes]:
    """The VMSA pages of vCPUs 0..vcpus-1 in launch (and measurement) order."""
    if vcpus < 1:
        raise ValueError(f"vcpus {vcpus} must be at least 1")
    if vcpus > 1 and not ap_reset_addr:
        raise ValueError("APs need the AP reset address from the SEV-ES reset block")
    bsp = bytes(reset_vmsa(BSP_RESET_ADDR, vcpu_signature, sev_features=sev_features))
    pages = [bsp]
    if vcpus > 1:
        assert ap_reset_addr is not None
        ap = bytes(reset_vmsa(ap_reset_addr, vcpu_signature, sev_features=sev_features))
        pages.extend([ap] * (vcpus - 1))
    return pages


def reset_states(image: OvmfImage, vcpus: int, vcpu_signature: int) -> list[bytes]:
    """Every vCPU's reset state for a flash image, the same rule in every mode.

    vCPU 0 at the reset vector; the APs at the image's AP reset address
    (SEV-ES reset block) when it has one -- required under SEV-ES, where the
    host cannot set an AP's state later -- else at the reset vector too,
    where they wait for INIT-SIPI as on a real machine.
    """
    try:
        ap_reset: int | None = image.sev_es_reset_addr()
    except OvmfError:
        ap_reset = BSP_RESET_ADDR if vcpus > 1 else None
    return initial_vmsas(vcpus, ap_reset, vcpu_signature)
