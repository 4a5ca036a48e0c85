"""QEMU vCPU models and the signature an SEV-ES vCPU starts with in RDX.

At reset x86 CPUs put the processor signature in EDX (QEMU
``x86_cpu_reset_hold``: ``env->regs[R_EDX] = env->cpuid_version``); for an
SEV-ES guest that value is in the measured VMSA, so the launch digest depends
on the vCPU model. The signature is CPUID Fn0000_0001_EAX (AMD CPUID
specification, pub 25481): stepping 3:0, base model 7:4, base family 11:8,
extended model 19:16, extended family 27:20, where a family above 0xF is
stored as base 0xF plus the extension.

Family, model and stepping per model name are QEMU's ``builtin_x86_defs``
(``target/i386/cpu.c``); a model's versions (EPYC-v1..v4 ...) keep their
base model's numbers. The names are the set sev-snp-measure 0.0.13 accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

BASE_FAMILY_MAX = 0xF


@dataclass(frozen=True)
class CpuModel:
    family: int
    model: int
    stepping: int

    @property
    def signature(self) -> int:
        return cpuid_signature(self.family, self.model, self.stepping)


def cpuid_signature(family: int, model: int, stepping: int) -> int:
    """CPUID Fn0000_0001_EAX for a family/model/stepping (AMD pub 25481)."""
    if not (0 <= family <= 0xFF + BASE_FAMILY_MAX and 0 <= model <= 0xFF and 0 <= stepping <= 0xF):
        raise ValueError(f"family {family} model {model} stepping {stepping} out of range")
    base_family = min(family, BASE_FAMILY_MAX)
    ext_family = family - BASE_FAMILY_MAX if family > BASE_FAMILY_MAX else 0
    return (
        (ext_family << 20)
        | ((model >> 4) << 16)
        | (base_family << 8)
        | ((model & 0xF) << 4)
        | stepping
    )


_EPYC = CpuModel(23, 1, 2)
_ROME = CpuModel(23, 49, 0)
_MILAN = CpuModel(25, 1, 1)
_GENOA = CpuModel(25, 17, 0)
_TURIN = CpuModel(26, 0, 0)

VCPU_TYPES: dict[str, CpuModel] = {
    "EPYC": _EPYC,
    "EPYC-v1": _EPYC,
    "EPYC-v2": _EPYC,
    "EPYC-IBPB": _EPYC,
    "EPYC-v3": _EPYC,
    "EPYC-v4": _EPYC,
    "EPYC-Rome": _ROME,
    "EPYC-Rome-v1": _ROME,
    "EPYC-Rome-v2": _ROME,
    "EPYC-Rome-v3": _ROME,
    "EPYC-Milan": _MILAN,
    "EPYC-Milan-v1": _MILAN,
    "EPYC-Milan-v2": _MILAN,
    "EPYC-Genoa": _GENOA,
    "EPYC-Genoa-v1": _GENOA,
    "EPYC-Turin": _TURIN,
}


class UnknownVcpuType(ValueError):
    def __init__(self, name: str):
        super().__init__(f"unknown vCPU type {name!r}; known: {', '.join(VCPU_TYPES)}")
        self.name = name


def vcpu_signature(vcpu_type: str) -> int:
    """RDX at reset for a QEMU vCPU model name."""
    try:
        return VCPU_TYPES[vcpu_type].signature
    except KeyError:
        raise UnknownVcpuType(vcpu_type) from None
