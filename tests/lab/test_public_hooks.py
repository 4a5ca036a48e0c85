"""The lab's hostile hosts are examples of the public hooks: no private attribute anywhere.

Every attribute the lab's code reads or writes on another object must be a
public name (``hv.on_exit``, ``host.memory``, ``vcpu.vmsa_gpa``...). Reading
``x._something`` would mean the attack needs more than a real hypervisor has.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sevx86.lab

LAB = Path(sevx86.lab.__file__).parent


def private_accesses(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            if node.attr.startswith("__") and node.attr.endswith("__"):
                continue
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                continue  # the lab's own objects
            found.append(f"line {node.lineno}: .{node.attr}")
    return found


def test_no_lab_module_reads_a_private_attribute():
    offenders = {
        path.name: hits
        for path in sorted(LAB.glob("*.py"))
        if (hits := private_accesses(path.read_text()))
    }
    assert offenders == {}


def test_the_check_sees_a_private_attribute():
    assert private_accesses("hv.host._parallel()\nself._ok = 1\n") == ["line 1: ._parallel"]
