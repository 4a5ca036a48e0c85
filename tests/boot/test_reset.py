"""Initial VMSAs and vCPU signatures against sev-snp-measure and the CPUID spec."""

from __future__ import annotations

import pytest

from sevx86.arch.vmsa import VMSA
from sevx86.boot.reset import BSP_RESET_ADDR, initial_vmsas, reset_vmsa
from sevx86.boot.vcpu_types import VCPU_TYPES, UnknownVcpuType, cpuid_signature, vcpu_signature
from tests.oracle import sev_snp_measure


@pytest.mark.parametrize("addr", [BSP_RESET_ADDR, 0x0080_B004, 0x0080_8004, 0xFFFF_E004])
@pytest.mark.parametrize("vcpu_type", ["EPYC", "EPYC-Rome", "EPYC-Milan", "EPYC-Genoa"])
def test_vmsa_page_equals_sev_snp_measure(addr, vcpu_type):
    sevsnp_vmsa = sev_snp_measure("vmsa")
    VMMType = sev_snp_measure("vmm_types").VMMType
    sig = vcpu_signature(vcpu_type)
    theirs = bytes(sevsnp_vmsa.VMSA.build_save_area(addr, 0, sig, vmm_type=VMMType.QEMU))
    assert bytes(reset_vmsa(addr, sig)) == theirs


def test_ap_segment_and_ip_come_from_the_reset_address():
    page = reset_vmsa(0x0080_B004, 0x800F12)
    assert VMSA.read(page, "cs.selector") == 0xF000
    assert VMSA.read(page, "cs.base") == 0x0080_0000
    assert VMSA.read(page, "rip") == 0xB004
    assert VMSA.read(page, "rdx") == 0x800F12
    bsp = reset_vmsa(BSP_RESET_ADDR, 0x800F12)
    assert (VMSA.read(bsp, "cs.base"), VMSA.read(bsp, "rip")) == (0xFFFF_0000, 0xFFF0)


def test_initial_vmsas_bsp_first_then_aps():
    pages = initial_vmsas(3, 0x0080_B004, 0x800F12)
    assert len(pages) == 3
    assert VMSA.read(pages[0], "rip") == 0xFFF0
    assert pages[1] == pages[2] and VMSA.read(pages[1], "rip") == 0xB004
    with pytest.raises(ValueError):
        initial_vmsas(0, 0x0080_B004, 0x800F12)
    with pytest.raises(ValueError):
        initial_vmsas(2, None, 0x800F12)


def test_sev_features_land_in_the_vmsa():
    sevsnp_vmsa = sev_snp_measure("vmsa")
    VMMType = sev_snp_measure("vmm_types").VMMType
    page = reset_vmsa(BSP_RESET_ADDR, 0, sev_features=0x20)
    theirs = bytes(sevsnp_vmsa.VMSA.build_save_area(BSP_RESET_ADDR, 0x20, 0, VMMType.QEMU))
    assert bytes(page) == theirs


def test_vcpu_types_are_sev_snp_measures_with_the_same_signatures():
    sevsnp_types = sev_snp_measure("vcpu_types")
    assert set(VCPU_TYPES) == set(sevsnp_types.CPU_SIGS)
    for name, sig in sevsnp_types.CPU_SIGS.items():
        assert vcpu_signature(name) == sig, name


def test_signature_encoding_by_hand():
    # CPUID Fn0000_0001_EAX: family 0x17 = 0xF + ext 0x8; model 0x31 = ext 3, base 1.
    assert cpuid_signature(23, 1, 2) == 0x0080_0F12
    assert cpuid_signature(23, 49, 0) == 0x0083_0F10
    assert cpuid_signature(25, 1, 1) == 0x00A0_0F11
    assert cpuid_signature(25, 17, 0) == 0x00A1_0F10
    assert cpuid_signature(6, 0x3A, 9) == 0x0003_06A9  # no extended family below 0xF


def test_unknown_vcpu_type():
    with pytest.raises(UnknownVcpuType, match="EPYC-Rome"):
        vcpu_signature("Opteron_G9")
