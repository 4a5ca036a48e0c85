"""The VMSA: the encrypted SEV-ES guest register save area.

Follows AMD APM vol 2 (24593) appendix B, table B-4 "VMSA Layout, State Save
Area for SEV-ES", checked offset by offset against Linux
``struct sev_es_save_area`` (``arch/x86/include/asm/svm.h``, whose build
asserts pin the reserved gaps at 0xC8, 0xCC, 0xD8, 0x1C0, 0x248, 0x298,
0x300, 0x320, 0x380, 0x3F0 and the defined size at 0x670) and against the
ctypes layout in the ``sev-snp-measure`` package (tests/arch).

The VMSA is one 4 KiB page. Its first 0x400 bytes share the offsets of the
legacy VMCB save area where both define a field; the GHCB reuses the same
offsets again for the registers a guest exposes (``sevx86.arch.ghcb``).
Unlike the legacy area, the VMSA holds every GPR (rcx..r15 from 0x308) and
the x87/SSE/AVX state from 0x400.
"""

from __future__ import annotations

from sevx86.arch.layout import Field, Layout, segment
from sevx86.arch.vmcb import SEGMENT_NAMES

VMSA_SIZE = 0x1000
# Bytes of the page the architecture defines; the rest is reserved.
VMSA_DEFINED_SIZE = 0x670


def _q(name: str, offset: int) -> Field:
    return Field(name, offset, 8)


# The 16 general-purpose registers in architectural (ModRM) order: the engine
# and tests iterate over this to move state between Unicorn and the VMSA.
VMSA_GPR_NAMES: tuple[str, ...] = (
    "rax",
    "rcx",
    "rdx",
    "rbx",
    "rsp",
    "rbp",
    "rsi",
    "rdi",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
)

FPREG_X87_OFFSET = 0x420  # eight 10-byte ST registers
FPREG_X87_SIZE = 80
FPREG_XMM_OFFSET = 0x470  # XMM0..XMM15, 16 bytes each
FPREG_YMM_OFFSET = 0x570  # upper 128 bits of YMM0..YMM15, 16 bytes each
NUM_XMM = 16

VMSA = Layout(
    "VMSA",
    VMSA_SIZE,
    [
        *(segment(name, 0x10 * i) for i, name in enumerate(SEGMENT_NAMES)),
        # Shadow-stack pointers for CPL 0-3 (CET); older Linux headers called
        # them vmpl0_ssp..vmpl3_ssp.
        _q("pl0_ssp", 0x0A0),
        _q("pl1_ssp", 0x0A8),
        _q("pl2_ssp", 0x0B0),
        _q("pl3_ssp", 0x0B8),
        _q("u_cet", 0x0C0),
        Field("vmpl", 0x0CA, 1),
        Field("cpl", 0x0CB, 1),
        _q("efer", 0x0D0),
        _q("xss", 0x140),
        _q("cr4", 0x148),
        _q("cr3", 0x150),
        _q("cr0", 0x158),
        _q("dr7", 0x160),
        _q("dr6", 0x168),
        _q("rflags", 0x170),
        _q("rip", 0x178),
        _q("dr0", 0x180),
        _q("dr1", 0x188),
        _q("dr2", 0x190),
        _q("dr3", 0x198),
        _q("dr0_addr_mask", 0x1A0),
        _q("dr1_addr_mask", 0x1A8),
        _q("dr2_addr_mask", 0x1B0),
        _q("dr3_addr_mask", 0x1B8),
        _q("rsp", 0x1D8),
        _q("s_cet", 0x1E0),
        _q("ssp", 0x1E8),
        _q("isst_addr", 0x1F0),
        _q("rax", 0x1F8),
        _q("star", 0x200),
        _q("lstar", 0x208),
        _q("cstar", 0x210),
        _q("sfmask", 0x218),
        _q("kernel_gs_base", 0x220),
        _q("sysenter_cs", 0x228),
        _q("sysenter_esp", 0x230),
        _q("sysenter_eip", 0x238),
        _q("cr2", 0x240),
        _q("g_pat", 0x268),
        _q("dbgctl", 0x270),
        _q("br_from", 0x278),
        _q("br_to", 0x280),
        _q("last_excp_from", 0x288),
        _q("last_excp_to", 0x290),
        Field("pkru", 0x2E8, 4),
        Field("tsc_aux", 0x2EC, 4),
        # SNP Secure TSC; reserved (zero) for a plain SEV-ES guest.
        _q("tsc_scale", 0x2F0),
        _q("tsc_offset", 0x2F8),
        _q("rcx", 0x308),
        _q("rdx", 0x310),
        _q("rbx", 0x318),
        # 0x320 is reserved: RSP lives at 0x1D8 only.
        _q("rbp", 0x328),
        _q("rsi", 0x330),
        _q("rdi", 0x338),
        _q("r8", 0x340),
        _q("r9", 0x348),
        _q("r10", 0x350),
        _q("r11", 0x358),
        _q("r12", 0x360),
        _q("r13", 0x368),
        _q("r14", 0x370),
        _q("r15", 0x378),
        # The exit information the guest sees about its own last #VMEXIT.
        _q("guest_exit_info_1", 0x390),
        _q("guest_exit_info_2", 0x398),
        _q("guest_exit_int_info", 0x3A0),
        _q("guest_nrip", 0x3A8),
        _q("sev_features", 0x3B0),
        _q("vintr_ctrl", 0x3B8),
        _q("guest_exit_code", 0x3C0),
        _q("virtual_tom", 0x3C8),
        _q("tlb_id", 0x3D0),
        _q("pcpu_id", 0x3D8),
        _q("event_inj", 0x3E0),
        _q("xcr0", 0x3E8),
        # x87 / SSE state.
        _q("x87_dp", 0x400),
        Field("mxcsr", 0x408, 4),
        Field("x87_ftw", 0x40C, 2),
        Field("x87_fsw", 0x40E, 2),
        Field("x87_fcw", 0x410, 2),
        Field("x87_fop", 0x412, 2),
        Field("x87_ds", 0x414, 2),
        Field("x87_cs", 0x416, 2),
        _q("x87_rip", 0x418),
        Field("fpreg_x87", FPREG_X87_OFFSET, FPREG_X87_SIZE),
        *(Field(f"xmm{i}", FPREG_XMM_OFFSET + 16 * i, 16) for i in range(NUM_XMM)),
        *(Field(f"ymm{i}_hi", FPREG_YMM_OFFSET + 16 * i, 16) for i in range(NUM_XMM)),
    ],
)

# SEV_FEATURES bits (VMSA 0x3B0), APM vol 2 appendix B, "SEV_FEATURES" (the
# same positions as Linux SVM_SEV_FEAT_*). Zero for a plain SEV-ES guest.
SEV_FEAT_SNP_ACTIVE = 1 << 0
SEV_FEAT_RESTRICTED_INJECTION = 1 << 3
SEV_FEAT_ALTERNATE_INJECTION = 1 << 4
SEV_FEAT_DEBUG_SWAP = 1 << 5
SEV_FEAT_SECURE_TSC = 1 << 9
