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
# Fn0000_0001 EBX[31:24]: the initial APIC ID of the vCPU that asks.
LEAF1_EBX_APIC_ID_SHIFT = 24
# Fn8000_0008 ECX[7:0] (NC): number of cores - 1 (APM vol 3, CPUID).
ADDR_SIZES_ECX_NC_MASK = 0xFF
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


# --------------------------------------------------------------------------
# Leaves whose output depends on ECX (the subleaf). For every other leaf the
# processor ignores ECX, so a CPUID table keys them by leaf alone. From AMD
# APM vol 3 appendix E and the Intel SDM vol 2A CPUID table (leaves AMD does
# not define are listed because guests probe them on any vendor).
# --------------------------------------------------------------------------
SUBLEAF_LEAVES: frozenset[int] = frozenset(
    {
        0x0000_0004,  # deterministic cache parameters (Intel)
        0x0000_0007,  # structured extended features
        0x0000_000B,  # extended topology
        0x0000_000D,  # XSAVE state components
        0x0000_000F,  # platform QoS monitoring
        0x0000_0010,  # platform QoS enforcement
        0x0000_0012,  # SGX (Intel)
        0x0000_0014,  # processor trace (Intel)
        0x0000_0017,  # SoC vendor attributes (Intel)
        0x0000_0018,  # deterministic address translation (Intel)
        0x0000_001D,  # tile information (Intel)
        0x0000_001F,  # V2 extended topology (Intel)
        0x8000_001D,  # cache topology
        0x8000_0020,  # platform QoS extended features
        0x8000_0026,  # extended CPU topology
    }
)


class Xfeature(IntEnum):
    """XSAVE state components: bit numbers in XCR0/XSS (APM vol 2, 11.5.2)."""

    X87 = 0
    SSE = 1
    AVX = 2  # YMM_Hi128
    BNDREGS = 3
    BNDCSR = 4
    OPMASK = 5
    ZMM_HI256 = 6
    HI16_ZMM = 7
    PKRU = 9
    CET_U = 11
    CET_S = 12


# The legacy FXSAVE region and the XSAVE header always come first.
XSAVE_LEGACY_SIZE = 512
XSAVE_HEADER_SIZE = 64
XSAVE_BASE_SIZE = XSAVE_LEGACY_SIZE + XSAVE_HEADER_SIZE

# (size, offset in the standard, non-compacted format) of the user state
# components; CPUID 0xD subleaf n reports them in EAX and EBX. Values of the
# AMD Zen family (and equal on Intel parts that have the component).
XSAVE_COMPONENTS: dict[int, tuple[int, int]] = {
    Xfeature.AVX: (256, 576),
    Xfeature.BNDREGS: (64, 960),
    Xfeature.BNDCSR: (64, 1024),
    Xfeature.OPMASK: (64, 1088),
    Xfeature.ZMM_HI256: (512, 1152),
    Xfeature.HI16_ZMM: (1024, 1664),
    Xfeature.PKRU: (8, 2688),
}
# Supervisor components live only in the compacted format (XSAVES): sizes only.
XSAVE_SUPERVISOR_SIZES: dict[int, int] = {Xfeature.CET_U: 16, Xfeature.CET_S: 24}


def xsave_size(xcr0: int) -> int:
    """Bytes XSAVE needs (standard format) for the components enabled in ``xcr0``.

    This is CPUID 0xD subleaf 0 EBX: the end of the highest enabled component.
    """
    end = XSAVE_BASE_SIZE
    for bit, (size, offset) in XSAVE_COMPONENTS.items():
        if xcr0 >> bit & 1:
            end = max(end, offset + size)
    return end


def xsaves_size(xfeatures: int) -> int:
    """Bytes XSAVES needs (compacted format) for ``XCR0 | IA32_XSS``.

    This is CPUID 0xD subleaf 1 EBX: the components packed in bit order.
    """
    total = XSAVE_BASE_SIZE
    for bit in range(2, 64):
        if not xfeatures >> bit & 1:
            continue
        if bit in XSAVE_COMPONENTS:
            total += XSAVE_COMPONENTS[bit][0]
        elif bit in XSAVE_SUPERVISOR_SIZES:
            total += XSAVE_SUPERVISOR_SIZES[bit]
    return total


# CPUID 0xD subleaf 1 EAX: which XSAVE instructions exist.
class XsaveFeatures(IntFlag):
    XSAVEOPT = 1 << 0
    XSAVEC = 1 << 1
    XGETBV_ECX1 = 1 << 2
    XSAVES = 1 << 3


# --------------------------------------------------------------------------
# Named feature bits, by the flag name Linux prints in /proc/cpuinfo
# (``arch/x86/include/asm/cpufeatures.h``), with their position in AMD APM
# vol 3 appendix E (Fn0000_0001, Fn0000_0007_x0, Fn0000_000D_x1,
# Fn8000_0001). sevx86's CPUID table and its engine probe name bits this way.
# --------------------------------------------------------------------------
class Reg(IntEnum):
    """The output register of a CPUID leaf."""

    EAX = 0
    EBX = 1
    ECX = 2
    EDX = 3


@dataclass(frozen=True)
class FeatureBit:
    """One feature flag: where CPUID reports it."""

    name: str
    leaf: int
    subleaf: int | None  # None: the leaf ignores ECX
    reg: Reg
    bit: int

    @property
    def mask(self) -> int:
        return 1 << self.bit


def _bits(leaf: int, subleaf: int | None, reg: Reg, names: dict[int, str]) -> list[FeatureBit]:
    return [FeatureBit(name, leaf, subleaf, reg, bit) for bit, name in names.items()]


FEATURE_BITS: tuple[FeatureBit, ...] = tuple(
    _bits(
        Leaf.FEATURES,
        None,
        Reg.EDX,
        {
            0: "fpu",
            1: "vme",
            2: "de",
            3: "pse",
            4: "tsc",
            5: "msr",
            6: "pae",
            7: "mce",
            8: "cx8",
            9: "apic",
            11: "sep",
            12: "mtrr",
            13: "pge",
            14: "mca",
            15: "cmov",
            16: "pat",
            17: "pse36",
            19: "clflush",
            23: "mmx",
            24: "fxsr",
            25: "sse",
            26: "sse2",
            28: "ht",
        },
    )  # fmt: skip
    + _bits(
        Leaf.FEATURES,
        None,
        Reg.ECX,
        {
            0: "pni",
            1: "pclmulqdq",
            9: "ssse3",
            12: "fma",
            13: "cx16",
            19: "sse4_1",
            20: "sse4_2",
            21: "x2apic",
            22: "movbe",
            23: "popcnt",
            25: "aes",
            26: "xsave",
            27: "osxsave",
            28: "avx",
            29: "f16c",
            30: "rdrand",
            31: "hypervisor",
        },
    )  # fmt: skip
    + _bits(
        Leaf.EXT_FEATURES,
        0,
        Reg.EBX,
        {
            0: "fsgsbase",
            3: "bmi1",
            5: "avx2",
            7: "smep",
            8: "bmi2",
            9: "erms",
            10: "invpcid",
            18: "rdseed",
            19: "adx",
            20: "smap",
            23: "clflushopt",
            24: "clwb",
            29: "sha_ni",
        },
    )  # fmt: skip
    + _bits(
        Leaf.EXT_FEATURES,
        0,
        Reg.ECX,
        {2: "umip", 3: "pku", 4: "ospke", 9: "vaes", 10: "vpclmulqdq", 16: "la57", 22: "rdpid"},
    )
    + _bits(Leaf.EXT_FEATURES, 0, Reg.EDX, {4: "fsrm"})
    + _bits(Leaf.XSAVE, 1, Reg.EAX, {0: "xsaveopt", 1: "xsavec", 2: "xgetbv1", 3: "xsaves"})
    + _bits(
        Leaf.EXT_FEATURES_1,
        None,
        Reg.ECX,
        {0: "lahf_lm", 2: "svm", 5: "abm", 6: "sse4a", 7: "misalignsse", 8: "3dnowprefetch"},
    )
    + _bits(
        Leaf.EXT_FEATURES_1,
        None,
        Reg.EDX,
        {
            11: "syscall",
            20: "nx",
            22: "mmxext",
            25: "fxsr_opt",
            26: "pdpe1gb",
            27: "rdtscp",
            29: "lm",
        },
    )  # fmt: skip
)
FEATURES: dict[str, FeatureBit] = {f.name: f for f in FEATURE_BITS}

# Fn8000_0001 EDX repeats these Fn0000_0001 EDX bits on AMD (APM vol 3,
# appendix E: "same as CPUID Fn0000_0001_EDX"); the names above are the leaf-1 ones.
EXT1_EDX_MIRRORS_LEAF1 = 0x0183_F3FF
