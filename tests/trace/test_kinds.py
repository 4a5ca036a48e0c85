"""Every trace kind the code emits is a ``TraceKind``, and the CLI's list comes from the enum."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sevx86
from sevx86.trace.events import KIND_HELP, KIND_NAMES, TraceKind, parse_kinds

PACKAGE = Path(sevx86.__file__).parent

# The tracer's entry points and their wrappers, with the position of the kind argument:
# Tracer.emit(actor, kind, ...), VCpu.trace(actor, kind, ...), HostView.log(kind, ...),
# Hypervisor._log / _log_console(kind, ...), GuestLaunch._emit(actor, kind, ...) and the
# devices' log callbacks.
EMITTERS = {"emit": 1, "_emit": 1, "_trace": 1, "trace": 1, "log": 0, "_log": 0, "_log_console": 0}


def emitted_kinds() -> dict[str, list[str]]:
    """Kind literal -> the emit sites that pass it, from the source of every module."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            index = EMITTERS.get(name or "")
            if index is None or len(node.args) <= index:
                continue
            arg = node.args[index]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                found.setdefault(arg.value, []).append(where)
    return found


def test_every_emitted_kind_is_in_the_enum():
    found = emitted_kinds()
    # The collector must see the emit sites at all (the test fails if it goes blind).
    assert {"vc", "msr-protocol", "launch", "milestone", "fw-cfg", "console"} <= set(found)
    unknown = {k: v for k, v in found.items() if k not in KIND_NAMES}
    assert not unknown, f"kinds emitted but missing from TraceKind: {unknown}"


def test_every_kind_has_help():
    assert set(KIND_HELP) == set(TraceKind)


def test_parse_kinds_refuses_an_unknown_kind_and_names_the_valid_ones():
    assert parse_kinds("vc, msr-protocol") == {TraceKind.VC, TraceKind.MSR_PROTOCOL}
    with pytest.raises(ValueError, match="unknown event kind bogus; valid kinds: launch, "):
        parse_kinds("vc,bogus")
