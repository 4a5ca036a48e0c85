"""The VMCB: control area, legacy save area, intercepts and exit information.

Follows AMD APM vol 2 (24593) appendix B "Layout of VMCB": table B-1
"VMCB Layout, Control Area" and table B-2 "VMCB Layout, State Save Area",
cross-checked field by field against Linux ``struct vmcb_control_area`` and
``struct vmcb_save_area`` in ``arch/x86/include/asm/svm.h``. Intercept bit
positions follow APM vol 2 section 15.9 and the intercept words of table B-1;
EVENTINJ follows section 15.20 "Event Injection"; the IOIO EXITINFO1 layout
follows section 15.10.2 "IN and OUT Behavior"; the MSR and I/O permission
maps follow sections 15.11 and 15.10.1.

Under SEV-ES the save area at VMCB offset 0x400 holds only host state; the
guest's registers live in the VMSA (``sevx86.arch.vmsa``). ``VMCB_SAVE`` is
what plain and SEV (non-ES) guests use, and what the host can read and
rewrite there.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag

from sevx86.arch.layout import Field, Layout, segment

VMCB_SIZE = 0x1000
VMCB_CONTROL_SIZE = 0x400
VMCB_SAVE_OFFSET = 0x400
VMCB_SAVE_SIZE = VMCB_SIZE - VMCB_SAVE_OFFSET


def _q(name: str, offset: int, doc: str = "") -> Field:
    return Field(name, offset, 8, doc)


def _d(name: str, offset: int, doc: str = "") -> Field:
    return Field(name, offset, 4, doc)


# --------------------------------------------------------------------------
# Control area (table B-1). Reserved ranges are simply not fields.
# --------------------------------------------------------------------------
VMCB_CONTROL = Layout(
    "VMCB control area",
    VMCB_CONTROL_SIZE,
    [
        # Intercept vector: six 32-bit words, see Intercept below.
        Field("intercept_cr_read", 0x000, 2, "bit n: intercept MOV from CRn"),
        Field("intercept_cr_write", 0x002, 2, "bit n: intercept MOV to CRn"),
        Field("intercept_dr_read", 0x004, 2, "bit n: intercept MOV from DRn"),
        Field("intercept_dr_write", 0x006, 2, "bit n: intercept MOV to DRn"),
        _d("intercept_exceptions", 0x008, "bit n: intercept exception vector n"),
        _d("intercept_misc1", 0x00C, "INTR .. SHUTDOWN"),
        _d("intercept_misc2", 0x010, "VMRUN .. CR15 write trap"),
        _d("intercept_misc3", 0x014, "INVLPGB .. IDLE_HLT"),
        Field("pause_filter_thresh", 0x03C, 2),
        Field("pause_filter_count", 0x03E, 2),
        _q("iopm_base_pa", 0x040, "physical address of the I/O permission map"),
        _q("msrpm_base_pa", 0x048, "physical address of the MSR permission map"),
        _q("tsc_offset", 0x050),
        _d("asid", 0x058),
        Field("tlb_ctl", 0x05C, 1, "TLB_CONTROL_* value"),
        _d("int_ctl", 0x060, "V_TPR, V_IRQ, V_INTR_PRIO, ... (IntCtl)"),
        _d("int_vector", 0x064, "V_INTR_VECTOR in bits 7:0"),
        _q("int_state", 0x068, "bit 0 interrupt shadow, bit 1 guest IF mask"),
        _q("exit_code", 0x070),
        _q("exit_info_1", 0x078),
        _q("exit_info_2", 0x080),
        _d("exit_int_info", 0x088, "EVENTINJ format, event being delivered at exit"),
        _d("exit_int_info_err", 0x08C),
        _q("nested_ctl", 0x090, "NP_ENABLE, SEV_ENABLE, SEV_ES_ENABLE, ..."),
        _q("avic_vapic_bar", 0x098),
        _q("ghcb_gpa", 0x0A0, "guest physical address of the GHCB (SEV-ES)"),
        _d("event_inj", 0x0A8, "event to inject at VMRUN (EVENTINJ format)"),
        _d("event_inj_err", 0x0AC),
        _q("nested_cr3", 0x0B0),
        _q("virt_ext", 0x0B8, "LBR virtualization, virtual VMLOAD/VMSAVE"),
        _d("clean", 0x0C0, "VMCB clean bits"),
        _q("next_rip", 0x0C8, "nRIP: address of the next instruction"),
        Field("insn_len", 0x0D0, 1, "number of guest instruction bytes fetched"),
        Field("insn_bytes", 0x0D1, 15, "guest instruction bytes (decode assist)"),
        _q("avic_backing_page", 0x0E0),
        _q("avic_logical_id", 0x0F0),
        _q("avic_physical_id", 0x0F8),
        _q("vmsa_pa", 0x108, "SEV-ES: physical address of the guest VMSA"),
        Field("bus_lock_counter", 0x120, 2),
        _q("allowed_sev_features", 0x138),
        _q("guest_sev_features", 0x140),
        # The last 32 bytes are reserved for the hypervisor's own use.
        Field("reserved_sw", 0x3E0, 32),
    ],
)


# --------------------------------------------------------------------------
# Legacy (non-ES) state save area (table B-2), offsets from VMCB + 0x400.
# --------------------------------------------------------------------------
# Segment registers in save-area order (VMCB save area and VMSA alike).
SEGMENT_NAMES: tuple[str, ...] = (
    "es",
    "cs",
    "ss",
    "ds",
    "fs",
    "gs",
    "gdtr",
    "ldtr",
    "idtr",
    "tr",
)

VMCB_SAVE = Layout(
    "VMCB state save area",
    VMCB_SAVE_SIZE,
    [
        *(segment(name, 0x10 * i) for i, name in enumerate(SEGMENT_NAMES)),
        Field("vmpl", 0x0CA, 1),
        Field("cpl", 0x0CB, 1),
        _q("efer", 0x0D0),
        _q("cr4", 0x148),
        _q("cr3", 0x150),
        _q("cr0", 0x158),
        _q("dr7", 0x160),
        _q("dr6", 0x168),
        _q("rflags", 0x170),
        _q("rip", 0x178),
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
        _q("spec_ctrl", 0x2E0),
    ],
)

# Only the first 0x2E8 bytes of the legacy save area are defined; the rest of
# the page up to 0xC00 is reserved.
VMCB_SAVE_DEFINED_SIZE = 0x2E8


class SegAttr(IntFlag):
    """Segment ``attrib`` bits in the VMCB/VMSA.

    The save area keeps descriptor bits 40-47 and 52-55 packed into 12 bits
    (APM vol 2, appendix B, segment attribute encoding).
    """

    TYPE_ACCESSED = 1 << 0
    TYPE_RW = 1 << 1  # readable code / writable data
    TYPE_CE = 1 << 2  # conforming code / expand-down data
    TYPE_CODE = 1 << 3
    S = 1 << 4  # code or data (not system)
    DPL = 3 << 5
    P = 1 << 7
    AVL = 1 << 8
    L = 1 << 9  # 64-bit code
    DB = 1 << 10
    G = 1 << 11


SEG_ATTR_TYPE_MASK = 0xF
SEG_ATTR_DPL_SHIFT = 5


# --------------------------------------------------------------------------
# Intercepts.
# --------------------------------------------------------------------------
# The intercept vector is six little-endian 32-bit words at offsets 0x00,
# 0x04, ..., 0x14. An Intercept value is the bit's index in that 192-bit
# vector (word = value // 32, bit = value % 32). By the APM's design this
# index equals the SVM exit code the intercept produces (CPUID: word 3 bit
# 18 = 114 = 0x72), which tests check.
INTERCEPT_VECTOR_OFFSET = 0x000
INTERCEPT_WORDS = 6


class Intercept(IntEnum):
    """Intercept bits by name; value = word * 32 + bit."""

    # Word 0 (0x000): CR reads 15:0, CR writes 31:16.
    CR0_READ = 0
    CR3_READ = 3
    CR4_READ = 4
    CR8_READ = 8
    CR0_WRITE = 16
    CR3_WRITE = 19
    CR4_WRITE = 20
    CR8_WRITE = 24
    # Word 1 (0x004): DR reads 15:0, DR writes 31:16.
    DR0_READ = 32
    DR1_READ = 33
    DR2_READ = 34
    DR3_READ = 35
    DR4_READ = 36
    DR5_READ = 37
    DR6_READ = 38
    DR7_READ = 39
    DR0_WRITE = 48
    DR1_WRITE = 49
    DR2_WRITE = 50
    DR3_WRITE = 51
    DR4_WRITE = 52
    DR5_WRITE = 53
    DR6_WRITE = 54
    DR7_WRITE = 55
    # Word 2 (0x008): one bit per exception vector.
    EXCEPTION_BASE = 64
    # Word 3 (0x00C).
    INTR = 96
    NMI = 97
    SMI = 98
    INIT = 99
    VINTR = 100
    CR0_SEL_WRITE = 101
    IDTR_READ = 102
    GDTR_READ = 103
    LDTR_READ = 104
    TR_READ = 105
    IDTR_WRITE = 106
    GDTR_WRITE = 107
    LDTR_WRITE = 108
    TR_WRITE = 109
    RDTSC = 110
    RDPMC = 111
    PUSHF = 112
    POPF = 113
    CPUID = 114
    RSM = 115
    IRET = 116
    SWINT = 117
    INVD = 118
    PAUSE = 119
    HLT = 120
    INVLPG = 121
    INVLPGA = 122
    IOIO_PROT = 123  # consult the IOPM
    MSR_PROT = 124  # consult the MSRPM
    TASK_SWITCH = 125
    FERR_FREEZE = 126
    SHUTDOWN = 127
    # Word 4 (0x010).
    VMRUN = 128  # must be set, or VMRUN fails with VMEXIT_INVALID
    VMMCALL = 129
    VMLOAD = 130
    VMSAVE = 131
    STGI = 132
    CLGI = 133
    SKINIT = 134
    RDTSCP = 135
    ICEBP = 136
    WBINVD = 137
    MONITOR = 138
    MWAIT = 139
    MWAIT_COND = 140
    XSETBV = 141
    RDPRU = 142
    EFER_WRITE_TRAP = 143
    CR0_WRITE_TRAP = 144  # bits 16-31 of word 4: CR0..CR15 write traps
    CR3_WRITE_TRAP = 147
    CR4_WRITE_TRAP = 148
    CR8_WRITE_TRAP = 152
    # Word 5 (0x014).
    INVLPGB = 160
    INVLPGB_ILLEGAL = 161
    INVPCID = 162
    MCOMMIT = 163
    TLBSYNC = 164
    BUSLOCK = 165
    IDLE_HLT = 166

    @property
    def word(self) -> int:
        """Index of the 32-bit intercept word holding this bit."""
        return self.value // 32

    @property
    def bit(self) -> int:
        """Bit number inside that word."""
        return self.value % 32

    @property
    def offset(self) -> int:
        """Byte offset of that word in the VMCB control area."""
        return INTERCEPT_VECTOR_OFFSET + 4 * self.word


def intercept_cr_read(n: int) -> int:
    """Intercept bit for MOV from CRn."""
    return _ranged(n, 16, 0)


def intercept_cr_write(n: int) -> int:
    """Intercept bit for MOV to CRn."""
    return _ranged(n, 16, 16)


def intercept_dr_read(n: int) -> int:
    """Intercept bit for MOV from DRn."""
    return _ranged(n, 16, 32)


def intercept_dr_write(n: int) -> int:
    """Intercept bit for MOV to DRn."""
    return _ranged(n, 16, 48)


def intercept_exception(vector: int) -> int:
    """Intercept bit for exception ``vector`` (0-31)."""
    return _ranged(vector, 32, Intercept.EXCEPTION_BASE)


def intercept_cr_write_trap(n: int) -> int:
    """Intercept bit for the SEV-ES CRn write trap."""
    return _ranged(n, 16, Intercept.CR0_WRITE_TRAP)


def _ranged(n: int, count: int, base: int) -> int:
    if not 0 <= n < count:
        raise ValueError(f"index {n} out of range 0..{count - 1}")
    return base + n


def set_intercepts(control: bytearray | memoryview, *bits: int) -> None:
    """Set the given intercept bits in a VMCB control-area buffer."""
    for b in bits:
        _check_intercept(b)
        off = INTERCEPT_VECTOR_OFFSET + 4 * (b // 32)
        word = int.from_bytes(control[off : off + 4], "little") | (1 << (b % 32))
        control[off : off + 4] = word.to_bytes(4, "little")


def clear_intercepts(control: bytearray | memoryview, *bits: int) -> None:
    """Clear the given intercept bits in a VMCB control-area buffer."""
    for b in bits:
        _check_intercept(b)
        off = INTERCEPT_VECTOR_OFFSET + 4 * (b // 32)
        word = int.from_bytes(control[off : off + 4], "little") & ~(1 << (b % 32))
        control[off : off + 4] = word.to_bytes(4, "little")


def is_intercepted(control: bytes | bytearray | memoryview, bit: int) -> bool:
    """True if intercept ``bit`` is set in a VMCB control-area buffer."""
    _check_intercept(bit)
    off = INTERCEPT_VECTOR_OFFSET + 4 * (bit // 32)
    return bool(int.from_bytes(control[off : off + 4], "little") >> (bit % 32) & 1)


def _check_intercept(bit: int) -> None:
    if not 0 <= bit < 32 * INTERCEPT_WORDS:
        raise ValueError(f"intercept bit {bit} outside the intercept vector")


# --------------------------------------------------------------------------
# Other control-area encodings.
# --------------------------------------------------------------------------
class NestedCtl(IntFlag):
    """Bits of ``nested_ctl`` (VMCB offset 0x090)."""

    NP_ENABLE = 1 << 0
    SEV_ENABLE = 1 << 1
    SEV_ES_ENABLE = 1 << 2


class TlbControl(IntEnum):
    """Values of ``tlb_ctl`` (VMCB offset 0x05C)."""

    DO_NOTHING = 0
    FLUSH_ALL = 1
    FLUSH_ASID = 3
    FLUSH_ASID_LOCAL = 7


class IntCtl(IntFlag):
    """Bits of ``int_ctl`` (VMCB offset 0x060)."""

    V_TPR = 0xF  # bits 3:0
    V_IRQ = 1 << 8
    V_GIF = 1 << 9
    V_INTR_PRIO = 0xF << 16
    V_IGN_TPR = 1 << 20
    V_INTR_MASKING = 1 << 24
    V_GIF_ENABLE = 1 << 25
    X2APIC_MODE = 1 << 30
    AVIC_ENABLE = 1 << 31


INT_STATE_SHADOW = 1 << 0  # guest is in an interrupt shadow (after STI/MOV SS)
INT_STATE_GUEST_IF = 1 << 1  # value of the guest's RFLAGS.IF (SEV-ES)


# --------------------------------------------------------------------------
# EVENTINJ / EXITINTINFO (APM vol 2, 15.20): also the format of the GHCB
# SW_EXITINFO2 when the hypervisor asks the guest to take an exception.
# --------------------------------------------------------------------------
class EventType(IntEnum):
    """EVENTINJ.TYPE (bits 10:8)."""

    INTR = 0  # external or virtual interrupt
    NMI = 2
    EXCEPTION = 3
    SOFT_INT = 4  # INTn


EVENTINJ_VECTOR_MASK = 0xFF
EVENTINJ_TYPE_SHIFT = 8
EVENTINJ_TYPE_MASK = 0x7 << EVENTINJ_TYPE_SHIFT
EVENTINJ_EV = 1 << 11  # an error code is pushed (bits 63:32)
EVENTINJ_V = 1 << 31  # the event is valid
EVENTINJ_ERRORCODE_SHIFT = 32


@dataclass(frozen=True)
class Event:
    """A decoded EVENTINJ/EXITINTINFO value."""

    vector: int
    event_type: int
    error_code: int | None
    valid: bool


def encode_event(
    vector: int, event_type: int, error_code: int | None = None, valid: bool = True
) -> int:
    """64-bit EVENTINJ value; ``error_code`` sets EV and fills bits 63:32."""
    if not 0 <= vector <= 0xFF:
        raise ValueError(f"vector {vector} out of range")
    if not 0 <= event_type <= 7:
        raise ValueError(f"event type {event_type} out of range")
    value = vector | (event_type << EVENTINJ_TYPE_SHIFT)
    if valid:
        value |= EVENTINJ_V
    if error_code is not None:
        if not 0 <= error_code <= 0xFFFF_FFFF:
            raise ValueError(f"error code {error_code:#x} does not fit in 32 bits")
        value |= EVENTINJ_EV | (error_code << EVENTINJ_ERRORCODE_SHIFT)
    return value


def decode_event(value: int) -> Event:
    """Split an EVENTINJ/EXITINTINFO value into its fields."""
    has_error = bool(value & EVENTINJ_EV)
    return Event(
        vector=value & EVENTINJ_VECTOR_MASK,
        event_type=(value & EVENTINJ_TYPE_MASK) >> EVENTINJ_TYPE_SHIFT,
        error_code=(value >> EVENTINJ_ERRORCODE_SHIFT) & 0xFFFF_FFFF if has_error else None,
        valid=bool(value & EVENTINJ_V),
    )


# --------------------------------------------------------------------------
# IOIO intercept EXITINFO1 (APM vol 2, 15.10.2). The #VC handler builds the
# same value for SW_EXITINFO1 of an IOIO VMGEXIT.
# --------------------------------------------------------------------------
class Ioio(IntFlag):
    """Single-bit fields of the IOIO EXITINFO1."""

    TYPE_IN = 1 << 0  # 1 = IN/INS, 0 = OUT/OUTS
    STR = 1 << 2  # string instruction (INS/OUTS)
    REP = 1 << 3  # REP prefix
    SZ8 = 1 << 4  # operand size, one-hot
    SZ16 = 1 << 5
    SZ32 = 1 << 6
    A16 = 1 << 7  # address size, one-hot
    A32 = 1 << 8
    A64 = 1 << 9


IOIO_SEG_SHIFT = 10  # bits 12:10, effective segment of a string instruction
IOIO_SEG_MASK = 0x7 << IOIO_SEG_SHIFT
IOIO_PORT_SHIFT = 16  # bits 31:16


class SegReg(IntEnum):
    """Segment register numbers used by IOIO SEG (ModRM sreg order)."""

    ES = 0
    CS = 1
    SS = 2
    DS = 3
    FS = 4
    GS = 5


_IOIO_SIZE = {1: Ioio.SZ8, 2: Ioio.SZ16, 4: Ioio.SZ32}
_IOIO_ADDR = {16: Ioio.A16, 32: Ioio.A32, 64: Ioio.A64}


@dataclass(frozen=True)
class IoioInfo:
    """A decoded IOIO EXITINFO1."""

    port: int
    size: int  # bytes: 1, 2 or 4
    is_in: bool
    string: bool
    rep: bool
    addr_size: int  # bits: 16, 32 or 64 (0 if none was set)
    seg: int


def encode_ioio(
    port: int,
    size: int,
    is_in: bool,
    *,
    string: bool = False,
    rep: bool = False,
    addr_size: int = 64,
    seg: int = SegReg.DS,
) -> int:
    """IOIO EXITINFO1 for an access of ``size`` bytes to ``port``."""
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port:#x} out of range")
    if size not in _IOIO_SIZE:
        raise ValueError(f"I/O size {size} is not 1, 2 or 4")
    if addr_size not in _IOIO_ADDR:
        raise ValueError(f"address size {addr_size} is not 16, 32 or 64")
    if not 0 <= seg <= 7:
        raise ValueError(f"segment {seg} out of range")
    value = int(_IOIO_SIZE[size] | _IOIO_ADDR[addr_size])
    if is_in:
        value |= Ioio.TYPE_IN
    if string:
        value |= Ioio.STR
    if rep:
        value |= Ioio.REP
    return value | (seg << IOIO_SEG_SHIFT) | (port << IOIO_PORT_SHIFT)


def decode_ioio(value: int) -> IoioInfo:
    """Split an IOIO EXITINFO1 into its fields; raises on a bad size."""
    sizes = [n for n, flag in _IOIO_SIZE.items() if value & flag]
    if len(sizes) != 1:
        raise ValueError(f"IOIO EXITINFO1 {value:#x}: operand size not one-hot")
    addrs = [n for n, flag in _IOIO_ADDR.items() if value & flag]
    return IoioInfo(
        port=(value >> IOIO_PORT_SHIFT) & 0xFFFF,
        size=sizes[0],
        is_in=bool(value & Ioio.TYPE_IN),
        string=bool(value & Ioio.STR),
        rep=bool(value & Ioio.REP),
        addr_size=addrs[0] if len(addrs) == 1 else 0,
        seg=(value & IOIO_SEG_MASK) >> IOIO_SEG_SHIFT,
    )


# --------------------------------------------------------------------------
# Permission maps (APM vol 2, 15.10.1 I/O and 15.11 MSR intercepts).
# --------------------------------------------------------------------------
# IOPM: one bit per port; 12 KiB so that a multi-byte access at port 0xFFFF
# still finds its upper bits (only the first 64 Ki bits name real ports).
IOPM_SIZE = 0x3000
# MSRPM: two bits per MSR (even bit = read, odd bit = write), 8 KiB, three
# 2 KiB vectors covering three MSR ranges; the last 2 KiB are reserved. An
# MSR outside the ranges is always intercepted when MSR_PROT is set.
MSRPM_SIZE = 0x2000
MSRPM_RANGE_MSRS = 0x2000  # MSRs per range
MSRPM_RANGES: tuple[tuple[int, int], ...] = (
    # (first MSR, byte offset of its vector)
    (0x0000_0000, 0x0000),
    (0xC000_0000, 0x0800),
    (0xC001_0000, 0x1000),
)


def msrpm_covers(msr: int) -> bool:
    """True if ``msr`` has bits in the MSRPM."""
    return any(base <= msr < base + MSRPM_RANGE_MSRS for base, _ in MSRPM_RANGES)


def msrpm_bit(msr: int, write: bool) -> tuple[int, int]:
    """(byte offset, bit) of the read or write intercept bit of ``msr``."""
    for base, vector in MSRPM_RANGES:
        if base <= msr < base + MSRPM_RANGE_MSRS:
            index = 2 * (msr - base) + (1 if write else 0)
            return vector + index // 8, index % 8
    raise ValueError(f"MSR {msr:#x} is not covered by the MSRPM (always intercepted)")


def iopm_bit(port: int) -> tuple[int, int]:
    """(byte offset, bit) of the intercept bit of I/O ``port``."""
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port:#x} out of range")
    return port // 8, port % 8


def iopm_intercepts(iopm: bytes | bytearray | memoryview, port: int, size: int) -> bool:
    """True if an access of ``size`` bytes at ``port`` is intercepted.

    The processor checks the bit of every byte the access touches, so a
    4-byte access at 0xFFFE looks at bits 0xFFFE..0x10001 (hence 12 KiB).
    """
    if size not in (1, 2, 4):
        raise ValueError(f"I/O size {size} is not 1, 2 or 4")
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port:#x} out of range")
    return any(iopm[p // 8] >> (p % 8) & 1 for p in range(port, port + size))
