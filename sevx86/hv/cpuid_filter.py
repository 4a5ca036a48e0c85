"""The CPUID model restricted to what the engine runs, and the report of it.

KVM answers a guest's CPUID from the VMM's model filtered by what the host
supports (``KVM_GET_SUPPORTED_CPUID``); here the "host" is sevx86's engine,
whose support ``sevx86.cpu.probe.engine_support`` measures by execution.
``restrict`` clears every advertised feature the engine does not provide,
and every feature whose prerequisite went (AVX2 without AVX, ...), then keeps
the dependent leaves consistent: the Fn8000_0001 EDX copies of Fn0000_0001
EDX bits, and the XSAVE leaf 0xD (supported XCR0, its sizes, the AVX
component's subleaf).

``sevx86.hv.cpuid_report`` writes the result as docs/cpuid.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sevx86.arch.cpuid import (
    EXT1_EDX_MIRRORS_LEAF1,
    FEATURE_BITS,
    FEATURES,
    XSAVE_BASE_SIZE,
    FeatureBit,
    Leaf,
    Reg,
    Xfeature,
    xsave_size,
)

Regs = tuple[int, int, int, int]
Key = tuple[int, int | None]

# A feature is usable only with these (APM vol 3 / Intel SDM vol 1 14.3 and
# 14.5: software checks XSAVE/OSXSAVE and AVX before any VEX-encoded
# instruction; VAES and VPCLMULQDQ extend AES and PCLMULQDQ to VEX).
REQUIRES: dict[str, tuple[str, ...]] = {
    "avx": ("xsave",),
    "avx2": ("avx",),
    "fma": ("avx",),
    "f16c": ("avx",),
    "vaes": ("avx", "aes"),
    "vpclmulqdq": ("avx", "pclmulqdq"),
    "xsaveopt": ("xsave",),
    "xsavec": ("xsave",),
    "xsaves": ("xsave",),
    "xgetbv1": ("xsave",),
    "osxsave": ("xsave",),
    "ospke": ("pku",),
}


def _entry_key(entries: Mapping[Key, Regs], f: FeatureBit) -> Key | None:
    for key in ((f.leaf, f.subleaf), (f.leaf, None), (f.leaf, 0)):
        if key in entries:
            return key
    return None


def advertised(entries: Mapping[Key, Regs]) -> list[FeatureBit]:
    """The named features whose bit is set in ``entries``."""
    out = []
    for f in FEATURE_BITS:
        key = _entry_key(entries, f)
        if key is not None and entries[key][f.reg] & f.mask:
            out.append(f)
    return out


def unnamed_bits(entries: Mapping[Key, Regs]) -> list[tuple[int, int | None, Reg, int]]:
    """Set bits of the feature leaves that no ``FeatureBit`` names (a table error)."""
    named = {(f.leaf, f.reg, f.bit) for f in FEATURE_BITS}
    mirrored = {
        (Leaf.EXT_FEATURES_1, Reg.EDX, b) for b in range(32) if EXT1_EDX_MIRRORS_LEAF1 >> b & 1
    }
    words = {
        (Leaf.FEATURES, Reg.ECX), (Leaf.FEATURES, Reg.EDX), (Leaf.EXT_FEATURES, Reg.EBX),
        (Leaf.EXT_FEATURES, Reg.ECX), (Leaf.EXT_FEATURES, Reg.EDX), (Leaf.XSAVE, Reg.EAX),
        (Leaf.EXT_FEATURES_1, Reg.ECX), (Leaf.EXT_FEATURES_1, Reg.EDX),
    }  # fmt: skip
    out = []
    for (leaf, subleaf), regs in entries.items():
        if leaf == Leaf.XSAVE and subleaf != 1:
            continue  # subleaf 0 holds XCR0 masks and sizes, not features
        for reg in Reg:
            if (leaf, reg) not in words:
                continue
            for bit in range(32):
                if regs[reg] >> bit & 1 and (leaf, reg, bit) not in named | mirrored:
                    out.append((leaf, subleaf, reg, bit))
    return out


def dropped(entries: Mapping[Key, Regs], supports: Callable[[str], bool]) -> dict[str, str]:
    """Advertised features that must go, name -> why."""
    out: dict[str, str] = {}
    names = {f.name for f in advertised(entries)}
    for name in sorted(names):
        if not supports(name):
            out[name] = "the engine does not provide it"
    changed = True
    while changed:  # prerequisites, transitively
        changed = False
        for name in sorted(names - out.keys()):
            missing = [r for r in REQUIRES.get(name, ()) if r in out or not supports(r)]
            if missing:
                out[name] = f"needs {', '.join(missing)}"
                changed = True
    return out


def restrict(entries: Mapping[Key, Regs], supports: Callable[[str], bool]) -> dict[Key, Regs]:
    """``entries`` without the features ``supports`` refuses, consistently."""
    out: dict[Key, Regs] = dict(entries)
    gone = dropped(entries, supports)

    def clear(key: Key, reg: Reg, mask: int) -> None:
        regs = list(out[key])
        regs[reg] &= ~mask
        out[key] = tuple(regs)  # type: ignore[assignment]

    for name in gone:
        f = FEATURES[name]
        key = _entry_key(out, f)
        if key is None:
            continue
        clear(key, f.reg, f.mask)
        ext1: Key = (Leaf.EXT_FEATURES_1, None)
        if f.leaf == Leaf.FEATURES and f.reg == Reg.EDX and ext1 in out:
            clear(ext1, Reg.EDX, f.mask & EXT1_EDX_MIRRORS_LEAF1)
    _restrict_xsave(out, gone)
    return out


def _restrict_xsave(out: dict[Key, Regs], gone: Mapping[str, str]) -> None:
    """Leaf 0xD follows the XSAVE features left: XCR0 components and sizes."""
    if (Leaf.XSAVE, 0) not in out:
        return
    if "xsave" in gone:
        for key in [k for k in out if k[0] == Leaf.XSAVE]:
            del out[key]
        return
    xcr0, _ebx, _ecx, edx = out[(Leaf.XSAVE, 0)]
    if "avx" in gone:
        xcr0 &= ~(1 << Xfeature.AVX)
        out.pop((Leaf.XSAVE, Xfeature.AVX), None)
    # EAX/EDX: the XCR0 bits software may set; ECX: the XSAVE area for all of them.
    out[(Leaf.XSAVE, 0)] = (xcr0, XSAVE_BASE_SIZE, xsave_size(xcr0), edx)


__all__ = ["REQUIRES", "advertised", "dropped", "restrict", "unnamed_bits"]
