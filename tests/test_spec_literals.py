"""Spec numbers live in ``sevx86/arch/``: a guard against copies creeping back elsewhere.

Issue 12 found spec data written again outside ``arch/``: 64- and 32-bit
masks defined per module (once meaning ``1 << 64``), the page size in three
places, TSS field offsets sliced by hand in the harness, the GHCB valid bit
computed inline, CR exit arithmetic beside ``arch.exits``, the MSR
protocol's CPUID answer decoded by hand. Each rule below finds one of those
shapes in the AST of ``cpu/``, ``hv/``, ``boot/`` and ``harness.py``.
``KNOWN_PENDING`` lists what is still there in ``cpu/`` while the CPU engine
is reworked elsewhere; an entry that no longer matches fails the test too,
so the list only shrinks.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import sevx86

PACKAGE = Path(sevx86.__file__).parent
GUARDED = ("cpu", "hv", "boot", "harness.py")

MASKS = {(1 << 64) - 1, 1 << 64, 0xFFFF_FFFF}
PAGE_SIZE = 0x1000
CR_EXIT_BASES = {0x00, 0x10, 0x90}  # CR read, CR write, CR write trap (APM vol 2, appendix C)


def _const(node: ast.AST) -> int | None:
    """The integer a node spells, folding ``(1 << 64) - 1``-style constant expressions."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp):
        left, right = _const(node.left), _const(node.right)
        if left is None or right is None:
            return None
        ops: dict[type, Callable[[int, int], int]] = {
            ast.LShift: lambda a, b: a << b,
            ast.Sub: lambda a, b: a - b,
            ast.Add: lambda a, b: a + b,
            ast.Mult: lambda a, b: a * b,
        }
        op = ops.get(type(node.op))
        return op(left, right) if op else None
    return None


def _assigned(node: ast.AST) -> tuple[list[str], ast.AST] | None:
    if isinstance(node, ast.Assign):
        names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        return names, node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
        return [node.target.id], node.value
    return None


def mask_copy(node: ast.AST) -> bool:
    """``_U64 = (1 << 64) - 1`` and friends: a named copy of a register-width mask."""
    found = _assigned(node)
    return found is not None and bool(found[0]) and _const(found[1]) in MASKS


def page_size_copy(node: ast.AST) -> bool:
    """``PAGE = 0x1000``: a copy of the page size (``arch.paging.PAGE_SIZE``)."""
    found = _assigned(node)
    return (
        found is not None
        and any("PAGE" in name.upper() for name in found[0])
        and _const(found[1]) == PAGE_SIZE
    )


def sliced_struct_field(node: ast.AST) -> bool:
    """``tss[4:12] = ...``: a structure field addressed by a hand-written offset."""
    if not isinstance(node, ast.Subscript) or not isinstance(node.slice, ast.Slice):
        return False
    lower = _const(node.slice.lower) if node.slice.lower is not None else 0
    upper = _const(node.slice.upper) if node.slice.upper is not None else None
    return isinstance(node.ctx, ast.Store) and bool(lower) and upper is not None


def inline_valid_bit(node: ast.AST) -> bool:
    """``offset // 8`` then ``1 << (bit % 8)``: the GHCB valid bit (``arch.ghcb.valid_bit``)."""
    return (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.FloorDiv)
        and isinstance(node.left, ast.Attribute)
        and node.left.attr == "offset"
        and _const(node.right) == 8
    )


def cr_exit_arithmetic(node: ast.AST) -> bool:
    """``code - 0x90`` / ``0x10 + cr``: CR exit codes (``arch.exits.cr_write`` and friends)."""
    if not isinstance(node, ast.BinOp) or not isinstance(node.op, ast.Add | ast.Sub):
        return False
    values = [_const(node.left), _const(node.right)]
    names = [
        n.id if isinstance(n, ast.Name) else n.attr
        for n in (node.left, node.right)
        if isinstance(n, ast.Name | ast.Attribute)
    ]
    return any(v in CR_EXIT_BASES - {0} for v in values if v is not None) and any(
        name == "cr" or name.startswith("cr_") or name in ("code", "exit_code") for name in names
    )


def msr_cpuid_decode(node: ast.AST) -> bool:
    """``(value >> 30) & 3``: the MSR protocol's CPUID register field (``arch.ghcb``)."""
    return (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.BitAnd)
        and isinstance(node.left, ast.BinOp)
        and isinstance(node.left.op, ast.RShift)
        and _const(node.left.right) == 30
        and _const(node.right) == 3
    )


RULES: dict[str, Callable[[ast.AST], bool]] = {
    "mask copy": mask_copy,
    "page size copy": page_size_copy,
    "struct field by offset": sliced_struct_field,
    "inline GHCB valid bit": inline_valid_bit,
    "CR exit arithmetic": cr_exit_arithmetic,
    "MSR-protocol CPUID decoded by hand": msr_cpuid_decode,
}

# cpu/ is being reworked by the CPU-engine change (issue 12's CPU-side points):
# (file, rule) -> how many findings are still there on this branch.
KNOWN_PENDING: dict[tuple[str, str], int] = {
}


def _files() -> Iterator[Path]:
    for name in GUARDED:
        path = PACKAGE / name
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def findings(source: str, filename: str = "<source>") -> list[tuple[str, int]]:
    """(rule, line) of every spec-literal shape in ``source``."""
    tree = ast.parse(source, filename)
    return [
        (rule, node.lineno)
        for node in ast.walk(tree)
        for rule, match in RULES.items()
        if match(node)
    ]


def test_no_spec_literal_outside_arch():
    counts: dict[tuple[str, str], list[int]] = {}
    for path in _files():
        rel = str(path.relative_to(PACKAGE.parent))
        for rule, line in findings(path.read_text(), rel):
            counts.setdefault((rel, rule), []).append(line)
    new = {k: v for k, v in counts.items() if len(v) > KNOWN_PENDING.get(k, 0)}
    assert not new, f"spec numbers outside sevx86/arch/ (name them there): {new}"
    stale = {k: n for k, n in KNOWN_PENDING.items() if len(counts.get(k, [])) < n}
    assert not stale, f"KNOWN_PENDING entries that are fixed now (remove them): {stale}"


def test_each_rule_fails_when_its_literal_is_put_back():
    """The guard is not blind: each shape the issue found is caught again."""
    examples = {
        "mask copy": "_U64 = (1 << 64) - 1\n",
        "page size copy": "PAGE = 0x1000\n",
        "struct field by offset": "tss[0x24:0x2C] = top.to_bytes(8, 'little')\n",
        "inline GHCB valid bit": "bit = f.offset // 8\n",
        "CR exit arithmetic": "n = exit.code - 0x90\n",
        "MSR-protocol CPUID decoded by hand": "reg = (req.value >> 30) & 3\n",
    }
    assert set(examples) == set(RULES)
    for rule, source in examples.items():
        assert rule in {r for r, _ in findings(source)}, rule
