"""CPUID leaves and the feature bits sevx86 reads or reports.

Leaf 0x8000_001F ("Encrypted Memory Capabilities") follows AMD APM vol 3
(24594), appendix E ("Function 8000_001Fh"), and APM vol 2 section 15.34
(SEV, "Determining Support"): EAX feature bits, EBX C-bit position / physical address
reduction / number of VMPLs, ECX number of simultaneous encrypted guests,
EDX minimum SEV-only ASID. The bit names were cross-checked against Linux
``arch/x86/include/asm/cpufeatures.h`` (word 19). The other leaves follow
APM vol 3 appendix E.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag


class Leaf(IntEnum):
    """CPUID function numbers (EAX input) that sevx86 names."""

    VENDOR = 0x0000_0000  # max standard leaf + vendor string
    FEATURES = 0x0000_0001
    EXT_FEATURES = 0x0000_0007  # structured extended features (ECX=0)
    TOPOLOGY = 0x0000_000B  # extended topology (x2APIC ID)
    XSAVE = 0x0000_000D  # XSAVE state sizes (ECX = component)
    EXT_MAX = 0x8000_0000  # max extended leaf + vendor string
    EXT_FEATURES_1 = 0x8000_0001
    ADDR_SIZES = 0x8000_0008
    SVM = 0x8000_000A  # SVM revision and features
    MEM_ENCRYPT = 0x8000_001F


class Leaf1Ecx(IntFlag):
    """CPUID 0x1 ECX bits."""

    SSE3 = 1 << 0
    X2APIC = 1 << 21
    XSAVE = 1 << 26
    OSXSAVE = 1 << 27  # mirrors CR4.OSXSAVE
    HYPERVISOR = 1 << 31  # running under a hypervisor


class Leaf1Edx(IntFlag):
    """CPUID 0x1 EDX bits."""

    FPU = 1 << 0
    PSE = 1 << 3
    TSC = 1 << 4
    MSR = 1 << 5
    PAE = 1 << 6
    APIC = 1 << 9
    PGE = 1 << 13
    PAT = 1 << 16
    FXSR = 1 << 24
    SSE = 1 << 25
    SSE2 = 1 << 26


class Leaf7Ebx(IntFlag):
    """CPUID 0x7 (ECX=0) EBX bits."""

    FSGSBASE = 1 << 0
    SMEP = 1 << 7
    SMAP = 1 << 20


class Leaf7Ecx(IntFlag):
    """CPUID 0x7 (ECX=0) ECX bits."""

    UMIP = 1 << 2
    PKU = 1 << 3
    LA57 = 1 << 16


class Ext1Ecx(IntFlag):
    """CPUID 0x8000_0001 ECX bits."""

    LAHF_LM = 1 << 0
    SVM = 1 << 2


class Ext1Edx(IntFlag):
    """CPUID 0x8000_0001 EDX bits."""

    SYSCALL = 1 << 11
    NX = 1 << 20
    PAGE1GB = 1 << 26
    RDTSCP = 1 << 27
    LM = 1 << 29  # long mode


# CPUID 0x8000_0008 EAX: bits 7:0 physical address bits, 15:8 linear bits.
ADDR_SIZES_PHYS_MASK = 0xFF
ADDR_SIZES_LINEAR_SHIFT = 8
ADDR_SIZES_LINEAR_MASK = 0xFF


class MemEncryptEax(IntFlag):
    """CPUID 0x8000_001F EAX: which memory-encryption features exist."""

    SME = 1 << 0
    SEV = 1 << 1
    PAGE_FLUSH_MSR = 1 << 2
    SEV_ES = 1 << 3
    SEV_SNP = 1 << 4
    VMPL = 1 << 5
    SECURE_TSC = 1 << 8
    TSC_AUX_VIRT = 1 << 9
    HW_CACHE_COHERENCY = 1 << 10
    DEBUG_SWAP = 1 << 14


# EBX fields of leaf 0x8000_001F.
CBIT_POS_MASK = 0x3F  # bits 5:0
PHYS_REDUCTION_SHIFT = 6  # bits 11:6
PHYS_REDUCTION_MASK = 0x3F
NUM_VMPLS_SHIFT = 12  # bits 15:12
NUM_VMPLS_MASK = 0xF


def encode_8000001f_ebx(cbitpos: int, reduced_phys_bits: int, num_vmpls: int = 0) -> int:
    """EBX of leaf 0x8000_001F for a C-bit position and address reduction."""
    if not 0 <= cbitpos <= CBIT_POS_MASK:
        raise ValueError(f"C-bit position {cbitpos} does not fit in 6 bits")
    if not 0 <= reduced_phys_bits <= PHYS_REDUCTION_MASK:
        raise ValueError(f"physical address reduction {reduced_phys_bits} does not fit")
    if not 0 <= num_vmpls <= NUM_VMPLS_MASK:
        raise ValueError(f"number of VMPLs {num_vmpls} does not fit in 4 bits")
    return cbitpos | (reduced_phys_bits << PHYS_REDUCTION_SHIFT) | (num_vmpls << NUM_VMPLS_SHIFT)


@dataclass(frozen=True)
class MemEncryptInfo:
    """Decoded CPUID 0x8000_001F."""

    features: MemEncryptEax
    cbitpos: int
    reduced_phys_bits: int
    num_vmpls: int
    num_encrypted_guests: int
    min_sev_asid: int

    @property
    def sev(self) -> bool:
        return MemEncryptEax.SEV in self.features

    @property
    def sev_es(self) -> bool:
        return MemEncryptEax.SEV_ES in self.features

    @property
    def snp(self) -> bool:
        return MemEncryptEax.SEV_SNP in self.features


def decode_8000001f(eax: int, ebx: int, ecx: int = 0, edx: int = 0) -> MemEncryptInfo:
    """Split the four registers of leaf 0x8000_001F into named fields."""
    return MemEncryptInfo(
        features=MemEncryptEax(eax & 0xFFFF_FFFF),
        cbitpos=ebx & CBIT_POS_MASK,
        reduced_phys_bits=(ebx >> PHYS_REDUCTION_SHIFT) & PHYS_REDUCTION_MASK,
        num_vmpls=(ebx >> NUM_VMPLS_SHIFT) & NUM_VMPLS_MASK,
        num_encrypted_guests=ecx & 0xFFFF_FFFF,
        min_sev_asid=edx & 0xFFFF_FFFF,
    )
