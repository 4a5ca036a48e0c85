"""What the engine can execute: each CPUID-advertised instruction tried once.

A hypervisor may only advertise what its CPU runs (KVM filters its CPUID
through ``KVM_GET_SUPPORTED_CPUID``). sevx86's CPU is Unicorn 2.1, i.e. QEMU
5's TCG, whose instruction set is smaller than the EPYC model it names
(docs/cpuid.md has the resulting list). So at start-up every feature whose
evidence is an instruction is *executed* in a scratch Unicorn handle with the
engine's CPU model; a feature whose instruction raises an exception, or
computes the wrong result, is not supported. The probe takes a few
milliseconds and runs once per process.

Features that are not instructions are classified by hand, each with the
module that provides it (``ENGINE_PROVIDED``), the reason it is absent
(``ENGINE_ABSENT``), or as a platform fact outside the engine (``PLATFORM``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc, UcError
from unicorn import x86_const as ux

from sevx86.arch.cpuid import FEATURES, Xfeature
from sevx86.arch.cr import Cr4
from sevx86.arch.msr import Msr

_CODE = 0x10000  # probe i at _CODE + i * 0x100
_DATA = 0x8000  # 64-byte aligned scratch operand, zeroed before each probe
_STACK = 0x7000
_XCR0_SSE = (1 << Xfeature.X87) | (1 << Xfeature.SSE)
_XCR0_AVX = _XCR0_SSE | (1 << Xfeature.AVX)
# Every probe runs with the OS-enable bits an OS sets before using the features.
_CR4 = Cr4.OSFXSR | Cr4.OSXMMEXCPT | Cr4.FSGSBASE | Cr4.OSXSAVE | Cr4.PKE
_XSETBV = bytes.fromhex("0f01d1")
_RAX, _RBX, _RCX, _RDX = ux.UC_X86_REG_RAX, ux.UC_X86_REG_RBX, ux.UC_X86_REG_RCX, ux.UC_X86_REG_RDX


@dataclass(frozen=True)
class Probe:
    """One instruction that proves a feature, with what it needs and should compute."""

    feature: str  # a name of sevx86.arch.cpuid.FEATURES
    code: str  # the instruction's bytes, hex
    mnemonic: str  # what the bytes are (the tests disassemble them to check)
    regs: Mapping[int, int] = field(default_factory=dict)  # Unicorn register -> value
    xcr0: int = _XCR0_SSE
    expect: tuple[int, int] | None = None  # (Unicorn register, value) afterwards


# rbx points at _DATA for memory operands; rcx = 0 unless set.
PROBES: tuple[Probe, ...] = (
    # Fn0000_0001 EDX
    Probe("fpu", "dbe3", "fninit"),
    Probe("tsc", "0f31", "rdtsc"),
    Probe("cx8", "0fc70b", "cmpxchg8b"),
    Probe("cmov", "0f44c3", "cmove", {_RBX: 7}, expect=(_RAX, 7)),
    Probe("clflush", "0fae3b", "clflush"),
    Probe("mmx", "0ffcc1", "paddb"),
    Probe("fxsr", "0fae03", "fxsave"),
    Probe("sse", "0f58c1", "addps"),
    Probe("sse2", "660f58c1", "addpd"),
    # Fn0000_0001 ECX
    Probe("pni", "f20f7cc1", "haddps"),
    Probe("pclmulqdq", "660f3a44c100", "pclmulqdq"),
    Probe("ssse3", "660f3800c1", "pshufb"),
    Probe("fma", "c4e27198c2", "vfmadd132ps", xcr0=_XCR0_AVX),
    Probe("cx16", "480fc70b", "cmpxchg16b"),
    Probe("sse4_1", "660f3840c1", "pmulld"),
    Probe("sse4_2", "f20f38f1c3", "crc32"),
    Probe("movbe", "0f38f003", "movbe"),
    Probe("popcnt", "f30fb8c3", "popcnt", {_RBX: 0xF0F0}, expect=(_RAX, 8)),
    Probe("aes", "660f38dcc1", "aesenc"),
    Probe("xsave", "0fae23", "xsave", {_RAX: _XCR0_SSE}),
    Probe("avx", "c5f458c2", "vaddps", xcr0=_XCR0_AVX),
    Probe("f16c", "c4e27913c1", "vcvtph2ps", xcr0=_XCR0_AVX),
    Probe("rdrand", "0fc7f0", "rdrand"),
    # Fn0000_0007_x0 EBX
    Probe(
        "fsgsbase", "f3480faec0", "rdfsbase", {ux.UC_X86_REG_FS_BASE: 0x5EC0}, expect=(_RAX, 0x5EC0)
    ),
    Probe("bmi1", "c4e260f2c1", "andn", {_RBX: 0b1010, _RCX: 0b1100}, expect=(_RAX, 0b0100)),
    Probe("avx2", "c5f5fec2", "vpaddd", xcr0=_XCR0_AVX),
    Probe("bmi2", "c4e263f5c1", "pdep", {_RBX: 0b11, _RCX: 0b1010}, expect=(_RAX, 0b1010)),
    Probe("erms", "f3a4", "rep movsb", {_RCX: 16}),
    Probe("invpcid", "660f388203", "invpcid", {_RAX: 2}),  # type 2: all contexts
    Probe("rdseed", "0fc7f8", "rdseed"),
    Probe("adx", "660f38f6c3", "adcx"),
    Probe("smap", "0f01cb", "stac"),
    Probe("clflushopt", "660fae3b", "clflushopt"),
    Probe("clwb", "660fae33", "clwb"),
    Probe("sha_ni", "0f38cbca", "sha256rnds2"),
    # Fn0000_0007_x0 ECX
    Probe("pku", "0f01ef", "wrpkru"),
    Probe("vaes", "c4e275dcc2", "vaesenc", xcr0=_XCR0_AVX),
    Probe("vpclmulqdq", "c4e37544c200", "vpclmulqdq", xcr0=_XCR0_AVX),
    Probe("rdpid", "f30fc7f8", "rdpid"),
    # Fn0000_000D_x1 EAX
    Probe("xsaveopt", "0fae33", "xsaveopt", {_RAX: _XCR0_SSE}),
    Probe("xsavec", "0fc723", "xsavec", {_RAX: _XCR0_SSE}),
    Probe("xgetbv1", "0f01d0", "xgetbv", {_RCX: 1}),
    Probe("xsaves", "0fc72b", "xsaves", {_RAX: _XCR0_SSE}),
    # Fn8000_0001 ECX
    Probe("lahf_lm", "9f", "lahf"),
    # LZCNT without ABM decodes as BSR: only the result tells them apart.
    Probe("abm", "f30fbdc3", "lzcnt", {_RBX: 1}, expect=(_RAX, 31)),
    Probe("sse4a", "660f79c1", "extrq"),
    Probe("misalignsse", "0f584301", "addps"),  # a 16-byte operand at _DATA + 1
    Probe("3dnowprefetch", "0f0d0b", "prefetchw"),
    # Fn8000_0001 EDX
    Probe("mmxext", "0fdac1", "pminub"),
    Probe("rdtscp", "0f01f9", "rdtscp"),
)

# Features the engine provides outside Unicorn's instruction set, by module.
ENGINE_PROVIDED: dict[str, str] = {
    "sep": "SYSENTER/SYSEXIT (sevx86.cpu.syscall; SYSEXIT is QEMU's)",
    "syscall": "SYSCALL/SYSRET (sevx86.cpu.syscall; SYSRET is QEMU's)",
    "pse": "4 MiB pages (sevx86.memory.mmu)",
    "pae": "PAE paging (sevx86.memory.mmu)",
    "pge": "global pages: the engine's TLB flushes on CR3/CR4 writes (sevx86.memory.mmu)",
    "pse36": "36-bit 4 MiB page frames (sevx86.memory.mmu)",
    "pat": "the PAT MSR (memory types are not modelled)",
    "nx": "no-execute pages (sevx86.memory.mmu)",
    "pdpe1gb": "1 GiB pages (sevx86.memory.mmu)",
    "smep": "supervisor-mode execution prevention (sevx86.memory.mmu)",
    "lm": "long mode",
    "fxsr_opt": "EFER.FFXSR: QEMU's FXSAVE/FXRSTOR honour it",
    "fsrm": "fast short REP MOVSB: a performance hint",
    "msr": "RDMSR/WRMSR (intercepted: sevx86.hv.msr_policy)",
    "vme": "virtual-8086 mode extensions (QEMU's TCG)",
    "de": "debugging extensions: CR4.DE (QEMU's TCG)",
}

# Features the engine does not provide although an instruction may run.
ENGINE_ABSENT: dict[str, str] = {
    "smap": "STAC/CLAC run, but the MMU (sevx86.memory.mmu) does not enforce SMAP",
    "umip": "QEMU 5's TCG does not enforce CR4.UMIP",
    "pku": "WRPKRU runs, but the MMU (sevx86.memory.mmu) does not enforce protection keys",
    "ospke": "no PKU",
    "la57": "5-level paging is not walked",
}

# Facts about the platform the hypervisor models, not about instructions.
PLATFORM: dict[str, str] = {
    "apic": "local APIC (sevx86.hv)",
    "x2apic": "x2APIC MSRs (sevx86.hv)",
    "mtrr": "MTRR MSRs (sevx86.hv.msr_policy)",
    "mce": "machine-check exception (never raised)",
    "mca": "machine-check architecture MSRs",
    "ht": "topology: the logical-processor count field",
    "hypervisor": "running under a hypervisor",
    "osxsave": "mirrors CR4.OSXSAVE (computed per query)",
    "svm": "nested SVM is not offered",
}


@dataclass(frozen=True)
class EngineSupport:
    """The probe's verdict: feature names that run, and why the others do not."""

    runs: frozenset[str]
    failures: Mapping[str, str]

    def supports(self, name: str) -> bool:
        """True if the engine provides ``name`` (probed, or provided by a module)."""
        if name in ENGINE_ABSENT:
            return False
        if name in self.failures:
            return False
        return name in self.runs or name in ENGINE_PROVIDED or name in PLATFORM


def _scratch() -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_cpu_model(ux.UC_CPU_X86_EPYC_ROME)  # the model sevx86.cpu.vcpu uses
    end = _CODE + 0x100 * len(PROBES)
    uc.mem_map(0, (end + 0xFFF) & ~0xFFF)
    uc.reg_write(ux.UC_X86_REG_CR4, uc.reg_read(ux.UC_X86_REG_CR4) | int(_CR4))
    uc.msr_write(Msr.TSC_AUX, 1)
    return uc


def run_probe(probe: Probe) -> str | None:
    """Run one probe in a fresh scratch handle: None if it ran as it should."""
    return _run_one(_scratch(), 0, probe)


def _run_one(uc: Uc, index: int, probe: Probe) -> str | None:
    """None if ``probe`` ran and computed what it should; else what went wrong."""
    base = _CODE + 0x100 * index
    setbv = base + 0x80
    uc.mem_write(setbv, _XSETBV)
    uc.mem_write(base, bytes.fromhex(probe.code))
    uc.mem_write(_DATA, bytes(0x1000))
    try:
        # XCR0 first (XSETBV: ECX = 0, EDX:EAX = the value).
        for reg, value in ((_RAX, probe.xcr0), (_RCX, 0), (_RDX, 0)):
            uc.reg_write(reg, value)
        uc.emu_start(setbv, setbv + len(_XSETBV))
    except UcError as exc:
        return f"xsetbv {probe.xcr0:#x}: {exc}"
    try:
        for reg, value in ((_RAX, 0), (_RBX, _DATA), (_RCX, 0), (_RDX, 0)):
            uc.reg_write(reg, value)
        uc.reg_write(ux.UC_X86_REG_RSI, _DATA)
        uc.reg_write(ux.UC_X86_REG_RDI, _DATA + 0x100)
        uc.reg_write(ux.UC_X86_REG_RSP, _STACK)
        for reg, value in probe.regs.items():
            uc.reg_write(reg, value)
        uc.emu_start(base, base + len(probe.code) // 2)
    except UcError as exc:
        return f"{probe.mnemonic}: {exc}"
    if probe.expect is not None:
        reg, want = probe.expect
        got = uc.reg_read(reg)
        if got != want:
            return f"{probe.mnemonic}: computed {got:#x}, not {want:#x}"
    return None


@lru_cache(maxsize=1)
def engine_support() -> EngineSupport:
    """Run every probe once (cached for the process)."""
    uc = _scratch()
    runs: set[str] = set()
    failures: dict[str, str] = {}
    for index, probe in enumerate(PROBES):
        assert probe.feature in FEATURES, probe.feature
        error = _run_one(uc, index, probe)
        if error is None:
            runs.add(probe.feature)
        else:
            failures.setdefault(probe.feature, error)
    return EngineSupport(frozenset(runs - failures.keys()), failures)


__all__ = [
    "ENGINE_ABSENT",
    "ENGINE_PROVIDED",
    "PLATFORM",
    "PROBES",
    "EngineSupport",
    "Probe",
    "engine_support",
    "run_probe",
]
