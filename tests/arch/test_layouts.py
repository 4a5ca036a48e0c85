"""Checks of the spec structures in sevx86.arch against independent sources.

Offsets that could silently be wrong are compared with an independent
implementation (sev-snp-measure's ctypes VMSA), with the numbers printed in
the GHCB specification, and with the APM's own regularities.
"""

from __future__ import annotations

import ctypes

import pytest

from sevx86.arch import exits, ghcb, vmcb
from sevx86.arch.cpuid import MemEncryptEax, decode_8000001f, encode_8000001f_ebx
from sevx86.arch.exits import SvmExit, SwExit, exit_name
from sevx86.arch.ghcb import GHCB, CpuidReg, GhcbMsr, valid_bit
from sevx86.arch.vectors import ERROR_CODE_VECTORS, Vector
from sevx86.arch.vmcb import VMCB_CONTROL, VMCB_SAVE, Intercept
from sevx86.arch.vmsa import VMSA, VMSA_GPR_NAMES
from tests.oracle import sev_snp_measure

# ---------------------------------------------------------------------------
# VMSA against sev-snp-measure
# ---------------------------------------------------------------------------
# Their names that differ from ours (they follow an older Linux header).
_THEIR_NAMES = {
    "vmpl0_ssp": "pl0_ssp",
    "vmpl1_ssp": "pl1_ssp",
    "vmpl2_ssp": "pl2_ssp",
    "vmpl3_ssp": "pl3_ssp",
    "dbgctrl": "dbgctl",
}
_SEGMENT_PARTS = ("selector", "attrib", "limit", "base")


def _their_fields():
    """(our name, offset, size) of every non-reserved field in their struct."""
    sevsnp_vmsa = sev_snp_measure("vmsa")
    area = sevsnp_vmsa.SevEsSaveArea
    seg = sevsnp_vmsa.VmcbSeg
    for name, ctype in area._fields_:
        if name.startswith("reserved") or name == "manual_padding":
            continue
        desc = getattr(area, name)
        if ctype is seg:
            for part in _SEGMENT_PARTS:
                sub = getattr(seg, part)
                yield f"{name}.{part}", desc.offset + sub.offset, sub.size
        elif name == "fpreg_xmm":
            for i in range(16):
                yield f"xmm{i}", desc.offset + 16 * i, 16
        elif name == "fpreg_ymm":
            for i in range(16):
                yield f"ymm{i}_hi", desc.offset + 16 * i, 16
        else:
            yield _THEIR_NAMES.get(name, name), desc.offset, desc.size


def test_vmsa_fields_match_sev_snp_measure_offsets():
    sevsnp_vmsa = sev_snp_measure("vmsa")
    theirs = list(_their_fields())
    assert len(theirs) > 100
    for name, offset, size in theirs:
        ours = VMSA[name]
        assert (ours.offset, ours.size) == (offset, size), name
    # Every field of ours is either in their struct or in a gap they reserve.
    their_names = {name for name, _, _ in theirs}
    extra = {f.name for f in VMSA} - their_names
    assert extra == {"tsc_scale", "tsc_offset"}  # SNP Secure TSC, newer than theirs
    assert VMSA.size == ctypes.sizeof(sevsnp_vmsa.SevEsSaveArea) == 4096


def _qemu_reset_values(eip: int, sev_features: int, vcpu_sig: int) -> dict[str, int]:
    """The values sev-snp-measure puts in a QEMU SEV-ES VMSA, by our names."""
    values = {
        "cs.selector": 0xF000,
        "cs.attrib": 0x9B,
        "cs.limit": 0xFFFF,
        "cs.base": eip & 0xFFFF0000,
        "ss.attrib": 0x93,
        "ss.limit": 0xFFFF,
        "gdtr.limit": 0xFFFF,
        "idtr.limit": 0xFFFF,
        "ldtr.attrib": 0x82,
        "ldtr.limit": 0xFFFF,
        "tr.attrib": 0x8B,
        "tr.limit": 0xFFFF,
        "efer": 0x1000,
        "cr4": 0x40,
        "cr0": 0x10,
        "dr7": 0x400,
        "dr6": 0xFFFF0FF0,
        "rflags": 0x2,
        "rip": eip & 0xFFFF,
        "g_pat": 0x7040600070406,
        "rdx": vcpu_sig,
        "sev_features": sev_features,
        "xcr0": 0x1,
        "mxcsr": 0x1F80,
        "x87_fcw": 0x37F,
    }
    for seg in ("es", "ds", "fs", "gs"):
        values[f"{seg}.attrib"] = 0x93
        values[f"{seg}.limit"] = 0xFFFF
    return values


@pytest.mark.parametrize("eip", [0xFFFFFFF0, 0x0080_9000])
def test_vmsa_page_equals_sev_snp_measure_page(eip):
    sevsnp_vmsa = sev_snp_measure("vmsa")
    VMMType = sev_snp_measure("vmm_types").VMMType
    sig = 0x00830F10  # EPYC-Rome: family 23, model 49, stepping 0
    theirs = bytes(sevsnp_vmsa.VMSA.build_save_area(eip, 0, sig, vmm_type=VMMType.QEMU))
    page = VMSA.new()
    for name, value in _qemu_reset_values(eip, 0, sig).items():
        VMSA.write(page, name, value)
    assert bytes(page) == theirs


def test_vmsa_known_offsets():
    # Offsets the brief and the APM table name explicitly.
    expected = {
        "vmpl": 0xCA,
        "cpl": 0xCB,
        "efer": 0xD0,
        "xss": 0x140,
        "cr4": 0x148,
        "rflags": 0x170,
        "rip": 0x178,
        "rsp": 0x1D8,
        "rax": 0x1F8,
        "cr2": 0x240,
        "g_pat": 0x268,
        "rcx": 0x308,
        "sev_features": 0x3B0,
        "xcr0": 0x3E8,
        "mxcsr": 0x408,
        "xmm0": 0x470,
        "xmm15": 0x560,
        "ymm0_hi": 0x570,
    }
    for name, offset in expected.items():
        assert VMSA[name].offset == offset, name


def test_gpr_names_are_architectural_and_present():
    assert VMSA_GPR_NAMES[:8] == ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi")
    assert VMSA_GPR_NAMES[8:] == tuple(f"r{i}" for i in range(8, 16))
    for name in VMSA_GPR_NAMES:
        assert VMSA[name].size == 8
    # The reserved slot at 0x320 (where RSP "would" be) is not a field.
    assert VMSA.field_at(0x320) is None


def test_legacy_save_area_shares_vmsa_offsets():
    # APM: fields present in both save areas sit at the same offset.
    shared = [f for f in VMCB_SAVE if f.name in VMSA]
    assert len(shared) > 60
    for f in shared:
        assert (VMSA[f.name].offset, VMSA[f.name].size) == (f.offset, f.size), f.name
    assert VMCB_SAVE["spec_ctrl"].offset == 0x2E0
    assert vmcb.VMCB_SAVE_OFFSET == 0x400


def test_vmcb_control_offsets():
    expected = {
        "intercept_cr_write": 0x02,
        "intercept_exceptions": 0x08,
        "intercept_misc1": 0x0C,
        "intercept_misc2": 0x10,
        "intercept_misc3": 0x14,
        "iopm_base_pa": 0x40,
        "msrpm_base_pa": 0x48,
        "tsc_offset": 0x50,
        "asid": 0x58,
        "tlb_ctl": 0x5C,
        "int_ctl": 0x60,
        "int_state": 0x68,
        "exit_code": 0x70,
        "exit_info_1": 0x78,
        "exit_info_2": 0x80,
        "exit_int_info": 0x88,
        "nested_ctl": 0x90,
        "ghcb_gpa": 0xA0,
        "event_inj": 0xA8,
        "event_inj_err": 0xAC,
        "nested_cr3": 0xB0,
        "virt_ext": 0xB8,
        "clean": 0xC0,
        "next_rip": 0xC8,
        "insn_len": 0xD0,
        "insn_bytes": 0xD1,
        "avic_backing_page": 0xE0,
        "vmsa_pa": 0x108,
    }
    for name, offset in expected.items():
        assert VMCB_CONTROL[name].offset == offset, name
    assert VMCB_CONTROL["insn_bytes"].end == 0xE0


# ---------------------------------------------------------------------------
# Intercepts and exit codes
# ---------------------------------------------------------------------------
def test_intercept_bit_equals_exit_code():
    # The APM numbers intercept bits so that word * 32 + bit is the exit code.
    for member in Intercept:
        name = {"IOIO_PROT": "IOIO", "MSR_PROT": "MSR", "EXCEPTION_BASE": "EXCP_BASE"}.get(
            member.name, member.name
        )
        assert SvmExit[name] == member.value, member.name


def test_intercept_words_and_helpers():
    assert (Intercept.CPUID.offset, Intercept.CPUID.bit) == (0x0C, 18)
    assert (Intercept.VMRUN.offset, Intercept.VMRUN.bit) == (0x10, 0)
    assert (Intercept.VMMCALL.offset, Intercept.VMMCALL.bit) == (0x10, 1)
    assert vmcb.intercept_exception(Vector.GP) == exits.excp(Vector.GP) == 0x4D
    assert vmcb.intercept_cr_write_trap(4) == exits.cr_write_trap(4) == SvmExit.CR4_WRITE_TRAP
    control = VMCB_CONTROL.new()
    vmcb.set_intercepts(control, Intercept.CPUID, Intercept.VMRUN, vmcb.intercept_cr_write(4))
    assert VMCB_CONTROL.read(control, "intercept_misc1") == 1 << 18
    assert VMCB_CONTROL.read(control, "intercept_misc2") == 1
    assert VMCB_CONTROL.read(control, "intercept_cr_write") == 1 << 4
    assert vmcb.is_intercepted(control, Intercept.CPUID)
    vmcb.clear_intercepts(control, Intercept.CPUID)
    assert not vmcb.is_intercepted(control, Intercept.CPUID)


def test_every_exit_code_has_a_name():
    for code in list(SvmExit) + list(SwExit):
        name = exit_name(code)
        assert not name.startswith("0x"), code
    assert exit_name(0x72) == "CPUID"
    assert exit_name(0x94) == "CR4_WRITE_TRAP"
    assert exit_name(0x4D) == "EXCP_GP"
    assert exit_name(0x5D) == "EXCP_VC"
    assert exit_name(0x1F) == "CR15_WRITE"
    assert exit_name(0x80000001) == "MMIO_READ"
    assert exit_name(0x8000FFFE) == "TERMINATE"
    assert exit_name(-1) == "INVALID" == exit_name(SvmExit.INVALID)
    assert exit_name(0x12345) == "0x12345"
    # Every code from 0x00 to IDLE_HLT (0xA6) is defined by the APM.
    for code in range(0x00, 0xA7):
        assert not exit_name(code).startswith("0x"), hex(code)


def test_invalid_exit_code_round_trips_through_the_vmcb():
    control = VMCB_CONTROL.new()
    VMCB_CONTROL.write(control, "exit_code", -1)
    assert VMCB_CONTROL.read(control, "exit_code") == SvmExit.INVALID
    VMCB_CONTROL.write(control, "exit_code", -2)
    assert SvmExit(VMCB_CONTROL.read(control, "exit_code")) is SvmExit.BUSY


def test_error_code_vectors():
    assert Vector.VC in ERROR_CODE_VECTORS and Vector.PF in ERROR_CODE_VECTORS
    assert Vector.HV not in ERROR_CODE_VECTORS and Vector.UD not in ERROR_CODE_VECTORS


# ---------------------------------------------------------------------------
# EVENTINJ and IOIO
# ---------------------------------------------------------------------------
def test_eventinj_encoding():
    # #GP(0): vector 13, type 3, EV, V -> 0x80000B0D
    value = vmcb.encode_event(Vector.GP, vmcb.EventType.EXCEPTION, error_code=0)
    assert value == 0x8000_0B0D
    ev = vmcb.decode_event(value | (0x1234 << 32))
    assert (ev.vector, ev.event_type, ev.error_code, ev.valid) == (13, 3, 0x1234, True)
    assert vmcb.decode_event(vmcb.encode_event(Vector.UD, 3)).error_code is None


def test_ioio_encoding():
    # OUT DX, AL to 0x3F8: SZ8 | A64 | port << 16 (Linux/OVMF build the same)
    assert vmcb.encode_ioio(0x3F8, 1, False) == (0x3F8 << 16) | 0x10 | 0x200 | (3 << 10)
    rep_insb = vmcb.encode_ioio(
        0x60, 1, True, string=True, rep=True, addr_size=32, seg=vmcb.SegReg.ES
    )
    info = vmcb.decode_ioio(rep_insb)
    assert info == vmcb.IoioInfo(
        port=0x60, size=1, is_in=True, string=True, rep=True, addr_size=32, seg=0
    )
    with pytest.raises(ValueError):
        vmcb.decode_ioio(0x30)  # two sizes at once


# ---------------------------------------------------------------------------
# Permission maps
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("msr", "write", "expected"),
    [
        (0x0000_0000, False, (0x000, 0)),
        (0x0000_0000, True, (0x000, 1)),
        (0x0000_001B, False, (0x006, 6)),  # APIC_BASE: bit 54 of vector 0
        (0x0000_1FFF, True, (0x7FF, 7)),
        (0xC000_0080, False, (0x800 + 0x20, 0)),  # EFER
        (0xC000_0080, True, (0x800 + 0x20, 1)),
        (0xC000_0103, True, (0x800 + 0x40, 7)),  # TSC_AUX
        (0xC001_0117, False, (0x1000 + 0x45, 6)),  # VM_HSAVE_PA
        (0xC001_0131, False, (0x1000 + 0x4C, 2)),  # SEV_STATUS
    ],
)
def test_msrpm_bit(msr, write, expected):
    assert vmcb.msrpm_bit(msr, write) == expected


def test_msrpm_ranges():
    assert vmcb.MSRPM_SIZE == 8192 and vmcb.IOPM_SIZE == 12288
    for msr in (0x2000, 0xBFFF_FFFF, 0xC000_2000, 0xC001_2000, 0x4B56_4D00):
        assert not vmcb.msrpm_covers(msr)
        with pytest.raises(ValueError):
            vmcb.msrpm_bit(msr, False)
    # Every covered bit lands in the first 6 KiB.
    assert vmcb.msrpm_bit(0xC001_1FFF, True) == (0x17FF, 7)


def test_iopm():
    assert vmcb.iopm_bit(0x3F8) == (0x7F, 0)
    assert vmcb.iopm_bit(0xFFFF) == (0x1FFF, 7)
    iopm = bytearray(vmcb.IOPM_SIZE)
    byte, bit = vmcb.iopm_bit(0x71)
    iopm[byte] |= 1 << bit
    assert vmcb.iopm_intercepts(iopm, 0x70, 2)
    assert not vmcb.iopm_intercepts(iopm, 0x70, 1)
    # A dword at 0xFFFE spills into the third page's first bits.
    iopm[0x2000] |= 1
    assert vmcb.iopm_intercepts(iopm, 0xFFFE, 4)


# ---------------------------------------------------------------------------
# GHCB
# ---------------------------------------------------------------------------
def test_ghcb_valid_bits_match_spec_numbers():
    # Quadword indexes as printed in the GHCB spec's field table.
    expected = {
        "cpl": 0x19,
        "xss": 0x28,
        "dr7": 0x2C,
        "rax": 0x3F,
        "rcx": 0x61,
        "rdx": 0x62,
        "rbx": 0x63,
        "sw_exit_code": 0x72,
        "sw_exit_info_1": 0x73,
        "sw_exit_info_2": 0x74,
        "sw_scratch": 0x75,
        "xcr0": 0x7D,
    }
    for name, bit in expected.items():
        assert valid_bit(name) == bit == GHCB[name].offset // 8, name
    with pytest.raises(ValueError):
        valid_bit("shared_buffer")
    bitmap = ghcb.set_valid(0, "rax", "sw_exit_code")
    assert bitmap == (1 << 0x3F) | (1 << 0x72)
    assert ghcb.is_valid(bitmap, "rax") and not ghcb.is_valid(bitmap, "rcx")
    assert ghcb.clear_valid(bitmap, "rax") == 1 << 0x72
    # Stored little-endian, bit n of the 128-bit field is byte n//8, bit n%8.
    page = GHCB.new()
    GHCB.write(page, "valid_bitmap", bitmap)
    assert page[0x3F0 + 0x3F // 8] == 1 << (0x3F % 8)


def test_ghcb_layout_offsets():
    assert GHCB["sw_exit_code"].offset == 0x390
    assert GHCB["sw_scratch"].offset == 0x3A8
    assert GHCB["valid_bitmap"].offset == 0x3F0
    assert GHCB["shared_buffer"].offset == 0x800 and GHCB["shared_buffer"].size == 0x7F0
    assert GHCB["protocol_version"].offset == 0xFFA
    assert GHCB["ghcb_usage"].offset == 0xFFC and GHCB["ghcb_usage"].end == 0x1000
    for f in GHCB:
        if f.name in VMSA:
            assert VMSA[f.name].offset == f.offset, f.name


def test_msr_protocol_values():
    # Hand-computed from the spec's bit layouts.
    assert ghcb.msr_sev_info_response(2, 1, 51) == 0x0002_0001_3300_0001
    assert ghcb.msr_cpuid_request(0x8000_001F, CpuidReg.EBX) == 0x8000_001F_4000_0004
    assert ghcb.msr_terminate(0, 1) == 0x0001_0100
    assert ghcb.msr_register_gpa_request(0x1234) == 0x123_4012
    assert ghcb.sw_terminate_info1(1, 3) == 0x31


def test_msr_protocol_round_trips():
    info = ghcb.decode_sev_info(ghcb.msr_sev_info_response(2, 1, 47))
    assert (info.max_version, info.min_version, info.cbitpos) == (2, 1, 47)
    for reg in CpuidReg:
        fn = 0x8000_0000 | reg
        assert ghcb.decode_cpuid_request(ghcb.msr_cpuid_request(fn, reg)) == (fn, reg)
        assert ghcb.decode_cpuid_response(ghcb.msr_cpuid_response(0xDEADBEEF, reg)) == (
            0xDEADBEEF,
            reg,
        )
    assert ghcb.decode_terminate(ghcb.msr_terminate(1, 0xAB)) == (1, 0xAB)
    assert ghcb.decode_psc_request(ghcb.msr_psc_request(0xF_FFFF_FFFF, ghcb.PscOp.SHARED)) == (
        0xF_FFFF_FFFF,
        ghcb.PscOp.SHARED,
    )
    gfn = 0x000F_FFFF_FFFF_FFFF
    assert ghcb.decode_gfn(ghcb.msr_register_gpa_request(gfn), GhcbMsr.REG_GPA_REQ) == gfn
    assert ghcb.decode_gfn(ghcb.msr_pref_gpa_response(), GhcbMsr.PREF_GPA_RESP) == (
        ghcb.PREF_GPA_NONE
    )
    feats = ghcb.HvFeature.SNP | ghcb.HvFeature.SNP_AP_CREATION
    assert ghcb.decode_hv_features(ghcb.msr_hv_features_response(feats)) == feats
    for value in (
        ghcb.msr_sev_info_request(),
        ghcb.msr_ap_reset_hold_request(),
        ghcb.msr_ap_reset_hold_response(),
        ghcb.msr_vmpl_request(1),
        ghcb.msr_vmpl_response(),
        ghcb.msr_psc_response(),
        ghcb.msr_hv_features_request(),
    ):
        code, data = ghcb.decode_msr(value)
        assert isinstance(code, GhcbMsr)
        assert ghcb.msr_encode(code, data) == value
    assert ghcb.decode_msr(0xFFF) == (0xFFF, 0)
    with pytest.raises(ValueError):
        ghcb.decode_cpuid_request(ghcb.msr_terminate(0, 0))
    with pytest.raises(ValueError):
        ghcb.msr_cpuid_request(1 << 32, 0)


def test_ghcb_v2_answers():
    assert ghcb.error_answer(ghcb.GhcbError.INVALID_EVENT) == (2, 6)
    ev = vmcb.encode_event(Vector.GP, vmcb.EventType.EXCEPTION, error_code=0)
    info1, info2 = ghcb.exception_answer(ev)
    answer = ghcb.decode_answer(info1 | (0xFFFF << 32), info2)
    assert answer.result == ghcb.ExitInfoResult.EXCEPTION and answer.info2 == ev
    assert ghcb.decode_answer(0, 0).ok


# ---------------------------------------------------------------------------
# CPUID 0x8000_001F
# ---------------------------------------------------------------------------
def test_cpuid_8000001f():
    ebx = encode_8000001f_ebx(51, 1)
    assert ebx == 0x73  # what QEMU reports for cbitpos=51, reduced-phys-bits=1
    eax = MemEncryptEax.SEV | MemEncryptEax.SEV_ES
    info = decode_8000001f(eax, ebx | (4 << 12), 509, 1)
    assert (info.cbitpos, info.reduced_phys_bits, info.num_vmpls) == (51, 1, 4)
    assert info.sev and info.sev_es and not info.snp
    assert (info.num_encrypted_guests, info.min_sev_asid) == (509, 1)
    with pytest.raises(ValueError):
        encode_8000001f_ebx(64, 1)


def test_big_endian_fields_for_the_device_structures_that_use_them():
    from sevx86.arch.fw_cfg import FW_CFG_DMA_ACCESS
    from sevx86.arch.layout import Field

    buf = FW_CFG_DMA_ACCESS.new()
    FW_CFG_DMA_ACCESS.write(buf, "control", 0x0019_000A)
    FW_CFG_DMA_ACCESS.write(buf, "address", 0x1122_3344_5566_7788)
    assert bytes(buf[:4]) == b"\x00\x19\x00\x0a"
    assert bytes(buf[8:]) == bytes.fromhex("1122334455667788")
    assert FW_CFG_DMA_ACCESS.read(buf, "control") == 0x0019_000A
    # Little-endian stays the default.
    assert Field("x", 0, 2).byteorder == "little"
