"""The hypervisor's CPUID table: what the guest is told about "its" processor.

A real hypervisor answers CPUID from a table it chose (QEMU's ``-cpu`` model
filtered by KVM), plus a few dynamic bits it computes per vCPU: the APIC ID,
OSXSAVE mirroring CR4, and the XSAVE area sizes for the guest's XCR0/XSS. Under
SEV-ES the answer reaches the guest through the GHCB (or the GHCB MSR
protocol during early boot), so the guest cannot tell a truthful table from a
lying one -- which is why SEV-SNP later added the CPUID page.

``CpuidTable.default(config)`` is an AMD EPYC-Milan-like model (family 19h)
whose leaf 0x8000_001F reports SEV and SEV-ES with the configured C-bit
position and physical-address reduction (APM vol 3 appendix E, APM vol 2
15.34.1) and whose leaf 0x8000_0008 reports ``config.phys_bits``. Users can
give their own table as ``{(leaf, subleaf): (eax, ebx, ecx, edx)}``; it is
then answered verbatim (no dynamic bits), so a test sees exactly what it
installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sevx86.arch.bits import U32_MASK as _U32
from sevx86.arch.cpuid import (
    ADDR_SIZES_ECX_NC_MASK,
    LEAF1_EBX_APIC_ID_SHIFT,
    SUBLEAF_LEAVES,
    XSAVE_BASE_SIZE,
    XSAVE_COMPONENTS,
    Ext1Ecx,
    Ext1Edx,
    Leaf,
    Leaf1Ecx,
    Leaf1Edx,
    Leaf7Ebx,
    Leaf7Ecx,
    MemEncryptEax,
    Xfeature,
    XsaveFeatures,
    encode_8000001f_ebx,
    xsave_size,
    xsaves_size,
)
from sevx86.arch.cr import Cr4
from sevx86.config import GuestConfig, GuestMode

Regs = tuple[int, int, int, int]
Key = tuple[int, int | None]
_ZERO: Regs = (0, 0, 0, 0)

# Hypervisor leaves (0x4000_0000): a vendor signature so guests can tell
# which hypervisor they run on, as KVM ("KVMKVMKVM") and Hyper-V do.
HV_LEAF_BASE = 0x4000_0000
HV_SIGNATURE = b"sevx86sevx86"

# Family 19h model 01h stepping 1: EPYC 7003 "Milan".
MILAN_SIGNATURE = 0x00A0_0F11
MILAN_BRAND = "AMD EPYC-Milan Processor"
# Supported XCR0 components: x87, SSE, AVX (what QEMU's EPYC-Milan model exposes
# besides PKRU, which sevx86 leaves out).
SUPPORTED_XCR0 = (1 << Xfeature.X87) | (1 << Xfeature.SSE) | (1 << Xfeature.AVX)
# Number of encrypted guests / minimum SEV-only ASID reported in 0x8000_001F ECX/EDX
# (values of a Milan part as KVM passes them through).
SEV_NUM_GUESTS = 509
SEV_MIN_ASID = 1


def _str_regs(text: bytes) -> tuple[int, ...]:
    return tuple(int.from_bytes(text[i : i + 4], "little") for i in range(0, len(text), 4))


def _brand_leaves(brand: str) -> dict[Key, Regs]:
    raw = brand.encode().ljust(48, b"\0")[:48]
    words = _str_regs(raw)
    return {
        (0x8000_0002 + i, None): (
            words[4 * i],
            words[4 * i + 1],
            words[4 * i + 2],
            words[4 * i + 3],
        )
        for i in range(3)
    }


@dataclass(frozen=True)
class CpuidQuery:
    """One CPUID question with the per-vCPU context the answer may depend on."""

    leaf: int
    subleaf: int = 0
    vcpu: int = 0
    xcr0: int = 1
    xss: int = 0
    cr4: int = 0


class CpuidTable:
    """Answers CPUID from ``{(leaf, subleaf): (eax, ebx, ecx, edx)}``.

    ``subleaf`` may be ``None`` for leaves that ignore ECX; a lookup of such
    a leaf matches whatever ECX the guest passed. Leaves that are absent
    answer all zeros (AMD's behaviour for unsupported functions).
    """

    def __init__(self, entries: Mapping[tuple[int, int | None], Regs], *, dynamic: bool = False):
        self.entries: dict[Key, Regs] = {}
        for (leaf, subleaf), regs in entries.items():
            if len(regs) != 4:
                raise ValueError(f"CPUID {leaf:#x}: need four registers, got {len(regs)}")
            self.entries[(leaf & _U32, None if subleaf is None else subleaf & _U32)] = tuple(
                r & _U32 for r in regs
            )  # type: ignore[assignment]
        self.dynamic = dynamic

    @classmethod
    def coerce(cls, value: CpuidTable | Mapping[tuple[int, int | None], Regs]) -> CpuidTable:
        """A table from a ``CpuidTable`` or a plain mapping (answered verbatim)."""
        return value if isinstance(value, CpuidTable) else cls(value, dynamic=False)

    def raw(self, leaf: int, subleaf: int = 0) -> Regs:
        """The stored entry, without dynamic bits."""
        leaf &= _U32
        found = self.entries.get((leaf, subleaf & _U32))
        if found is None:
            found = self.entries.get((leaf, None))
        if found is None and leaf not in SUBLEAF_LEAVES:
            # A user table may key a plain leaf as (leaf, 0): ECX is ignored there.
            found = self.entries.get((leaf, 0))
        return found if found is not None else _ZERO

    def lookup(self, q: CpuidQuery) -> Regs:
        """EAX..EDX for a guest's CPUID."""
        eax, ebx, ecx, edx = self.raw(q.leaf, q.subleaf)
        if not self.dynamic:
            return eax, ebx, ecx, edx
        if q.leaf == Leaf.FEATURES:
            # EBX[31:24] initial APIC ID; ECX.OSXSAVE mirrors CR4.OSXSAVE.
            ebx = (ebx & 0x00FF_FFFF) | ((q.vcpu & 0xFF) << LEAF1_EBX_APIC_ID_SHIFT)
            ecx &= ~Leaf1Ecx.OSXSAVE
            if q.cr4 & Cr4.OSXSAVE:
                ecx |= Leaf1Ecx.OSXSAVE
        elif q.leaf == Leaf.TOPOLOGY:
            edx = q.vcpu
        elif q.leaf == Leaf.XSAVE and q.subleaf == 0:
            ebx = xsave_size(q.xcr0 & eax)
        elif q.leaf == Leaf.XSAVE and q.subleaf == 1:
            ebx = xsaves_size((q.xcr0 | q.xss) & SUPPORTED_XCR0)
        elif q.leaf == 0x8000_001E:
            eax = q.vcpu
        return eax & _U32, ebx & _U32, ecx & _U32, edx & _U32

    def with_entries(self, entries: Mapping[tuple[int, int | None], Regs]) -> CpuidTable:
        """A copy with some entries replaced (e.g. a malicious 0x8000_001F)."""
        table = CpuidTable(self.entries, dynamic=self.dynamic)
        table.entries.update(CpuidTable(entries).entries)
        return table

    # ------------------------------------------------------------------ the default
    @classmethod
    def default(cls, config: GuestConfig) -> CpuidTable:
        """An EPYC-Milan-like processor for a guest of ``config``."""
        e: dict[Key, Regs] = {}
        vendor = _str_regs(b"AuthenticAMD")  # EBX, EDX, ECX order: "Auth" "enti" "cAMD"
        e[(Leaf.VENDOR, None)] = (0x10, vendor[0], vendor[2], vendor[1])
        leaf1_ecx = (
            Leaf1Ecx.SSE3
            | (1 << 1)  # PCLMULQDQ
            | (1 << 9)  # SSSE3
            | (1 << 12)  # FMA
            | (1 << 13)  # CMPXCHG16B
            | (1 << 19)  # SSE4.1
            | (1 << 20)  # SSE4.2
            | (1 << 22)  # MOVBE
            | (1 << 23)  # POPCNT
            | (1 << 25)  # AES
            | Leaf1Ecx.XSAVE
            | (1 << 28)  # AVX
            | (1 << 29)  # F16C
            | (1 << 30)  # RDRAND
            | Leaf1Ecx.HYPERVISOR
        )
        leaf1_edx = 0x178B_FBFF | Leaf1Edx.SSE2  # the usual AMD set: FPU .. SSE2, HTT off
        # EBX: CLFLUSH line size 8 qwords (bits 15:8), 1 logical processor (23:16).
        e[(Leaf.FEATURES, None)] = (MILAN_SIGNATURE, 0x0001_0800, int(leaf1_ecx), int(leaf1_edx))
        leaf7_ebx = (
            Leaf7Ebx.FSGSBASE
            | (1 << 3)  # BMI1
            | (1 << 5)  # AVX2
            | Leaf7Ebx.SMEP
            | (1 << 8)  # BMI2
            | (1 << 9)  # ERMS
            | (1 << 10)  # INVPCID
            | (1 << 18)  # RDSEED
            | (1 << 19)  # ADX
            | Leaf7Ebx.SMAP
            | (1 << 23)  # CLFLUSHOPT
            | (1 << 24)  # CLWB
            | (1 << 29)  # SHA
        )
        leaf7_ecx = Leaf7Ecx.UMIP | (1 << 9) | (1 << 10) | (1 << 22)  # VAES, VPCLMULQDQ, RDPID
        e[(Leaf.EXT_FEATURES, 0)] = (0, int(leaf7_ebx), int(leaf7_ecx), 1 << 4)  # EDX: FSRM
        e[(Leaf.TOPOLOGY, 0)] = (0, 1, 0x100, 0)  # SMT level: 1 thread
        e[(Leaf.TOPOLOGY, 1)] = (0, config.vcpus, 0x201, 0)  # core level
        # XSAVE: subleaf 0 EAX/EDX supported XCR0, ECX the size for all of them;
        # EBX (current size) is computed per query from the guest's XCR0.
        e[(Leaf.XSAVE, 0)] = (SUPPORTED_XCR0, XSAVE_BASE_SIZE, xsave_size(SUPPORTED_XCR0), 0)
        xsave_insns = XsaveFeatures.XSAVEOPT | XsaveFeatures.XSAVEC | XsaveFeatures.XGETBV_ECX1
        e[(Leaf.XSAVE, 1)] = (int(xsave_insns | XsaveFeatures.XSAVES), XSAVE_BASE_SIZE, 0, 0)
        size, offset = XSAVE_COMPONENTS[Xfeature.AVX]
        e[(Leaf.XSAVE, Xfeature.AVX)] = (size, offset, 0, 0)
        sig = _str_regs(HV_SIGNATURE)
        e[(HV_LEAF_BASE, None)] = (HV_LEAF_BASE, sig[0], sig[1], sig[2])
        e[(Leaf.EXT_MAX, None)] = (0x8000_001F, vendor[0], vendor[2], vendor[1])
        ext1_ecx = (
            Ext1Ecx.LAHF_LM
            | (1 << 5)  # ABM (LZCNT)
            | (1 << 6)  # SSE4A
            | (1 << 7)  # misaligned SSE
            | (1 << 8)  # 3DNowPrefetch
        )
        ext1_edx = (
            (leaf1_edx & 0x0183_F3FF)  # the leaf-1 bits AMD mirrors here
            | Ext1Edx.SYSCALL
            | Ext1Edx.NX
            | (1 << 22)  # MMXEXT
            | (1 << 25)  # FFXSR
            | Ext1Edx.PAGE1GB
            | Ext1Edx.RDTSCP
            | Ext1Edx.LM
        )
        e[(Leaf.EXT_FEATURES_1, None)] = (MILAN_SIGNATURE, 0, int(ext1_ecx), int(ext1_edx))
        e.update(_brand_leaves(MILAN_BRAND))
        # 0x8000_0008 EAX: physical address bits 7:0 (the platform's, before the
        # SEV reduction, as on hardware), linear address bits 15:8.
        assert config.phys_bits is not None
        ecx = (config.vcpus - 1) & ADDR_SIZES_ECX_NC_MASK  # NC: number of cores - 1
        e[(Leaf.ADDR_SIZES, None)] = (config.phys_bits | (48 << 8), 0, ecx, 0)
        # 0x8000_001E: EAX extended APIC ID (per vCPU), EBX one thread per core.
        e[(0x8000_001E, None)] = (0, 0, 0, 0)
        features = 0
        if config.mode.encrypted:
            features |= MemEncryptEax.SEV
        if config.mode is GuestMode.SEV_ES:
            features |= MemEncryptEax.SEV_ES
        if features:
            ebx = encode_8000001f_ebx(config.cbitpos, config.reduced_phys_bits)
            e[(Leaf.MEM_ENCRYPT, None)] = (int(features), ebx, SEV_NUM_GUESTS, SEV_MIN_ASID)
        return cls(e, dynamic=True)


def describe(leaf: int, reg: int, value: int) -> str:
    """A few words on what a CPUID register value means (for the trace)."""
    name = "EAX EBX ECX EDX".split()[reg & 3]
    words = f"CPUID {leaf:#x} {name} -> {value:#x}"
    if leaf == Leaf.MEM_ENCRYPT and reg == 0:
        flags = [m.name for m in MemEncryptEax if value & m and m.name]
        return f"{words} ({' '.join(flags) or 'no memory encryption'})"
    if leaf == Leaf.MEM_ENCRYPT and reg == 1:
        return f"{words} (cbitpos {value & 0x3F}, reduced-phys-bits {(value >> 6) & 0x3F})"
    if leaf == Leaf.ADDR_SIZES and reg == 0:
        return f"{words} (phys-bits {value & 0xFF}, linear-bits {(value >> 8) & 0xFF})"
    if leaf == Leaf.EXT_MAX and reg == 0:
        return f"{words} (max extended leaf)"
    if leaf == Leaf.VENDOR and reg == 0:
        return f"{words} (max standard leaf)"
    return words


__all__ = ["CpuidQuery", "CpuidTable", "describe", "HV_LEAF_BASE", "SUPPORTED_XCR0"]
