"""The default CPUID table offers only what the engine runs, with dependent leaves consistent."""

from __future__ import annotations

from pathlib import Path

from sevx86.arch.cpuid import FEATURES, Xfeature
from sevx86.config import GuestConfig
from sevx86.cpu.probe import ENGINE_ABSENT, ENGINE_PROVIDED, PLATFORM, PROBES, engine_support
from sevx86.hv.cpuid import CpuidTable
from sevx86.hv.cpuid_filter import advertised, restrict, unnamed_bits
from sevx86.hv.cpuid_report import report

DOC = Path(__file__).resolve().parents[2] / "docs" / "cpuid.md"


def _model():
    return CpuidTable.default(GuestConfig(), honest=False).entries


def _has(entries, name: str) -> bool:
    return name in {f.name for f in advertised(entries)}


def test_every_bit_of_the_model_is_named_and_classified():
    model = _model()
    assert unnamed_bits(model) == []
    classified = {p.feature for p in PROBES} | set(ENGINE_PROVIDED) | set(ENGINE_ABSENT)
    classified |= set(PLATFORM)
    missing = [f.name for f in advertised(model) if f.name not in classified]
    assert missing == []


def test_default_table_has_none_of_the_features_the_engine_cannot_run():
    table = CpuidTable.default(GuestConfig()).entries
    support = engine_support()
    for f in advertised(table):
        assert support.supports(f.name), f.name
    for name in ("invpcid", "xsaves", "xsavec", "rdpid", "avx", "avx2", "sha_ni", "pku", "smap"):
        assert not _has(table, name), name
    # And what it kept still includes what OVMF and Linux need from the model.
    for name in ("sse2", "fxsr", "xsave", "syscall", "nx", "lm", "pdpe1gb", "rdtscp"):
        assert _has(table, name), name


def test_dropping_avx_drops_what_needs_it_and_the_avx_xsave_component():
    model = _model()
    assert _has(model, "avx2") and _has(model, "fma")
    table = restrict(model, lambda name: name != "avx")
    for name in ("avx", "avx2", "fma", "f16c", "vaes", "vpclmulqdq"):
        assert not _has(table, name), name
    assert _has(table, "aes") and _has(table, "xsave")
    xcr0, ebx, ecx, _edx = table[(0xD, 0)]
    assert xcr0 == 0b11  # x87 | SSE
    assert (ebx, ecx) == (576, 576)  # legacy area 512 + header 64 (APM vol 2, 11.5.2)
    assert (0xD, Xfeature.AVX) not in table


def test_dropping_xsave_removes_leaf_0xd_and_the_xsave_instructions():
    table = restrict(_model(), lambda name: name != "xsave")
    assert not any(key[0] == 0xD for key in table)
    for name in ("xsave", "xsaveopt", "xgetbv1", "avx"):
        assert not _has(table, name), name


def test_a_leaf1_edx_bit_goes_from_its_fn80000001_copy_too():
    model = _model()
    pse = FEATURES["pse"].mask
    assert model[(0x8000_0001, None)][3] & pse  # AMD repeats PSE there
    table = restrict(model, lambda name: name != "pse")
    assert not table[(1, None)][3] & pse
    assert not table[(0x8000_0001, None)][3] & pse
    # Fn8000_0001 EDX's own bits (SYSCALL at 11, which in leaf 1 is SEP) stay.
    assert table[(0x8000_0001, None)][3] & (1 << 11)


def test_docs_cpuid_md_is_the_current_report():
    support = engine_support()
    reasons = {**PLATFORM, **ENGINE_PROVIDED, **ENGINE_ABSENT}
    expected = report(_model(), support.supports, support.failures, reasons)
    assert DOC.read_text() == expected, "regenerate: python -m sevx86.hv.cpuid_report"
