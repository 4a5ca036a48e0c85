"""The host boundary is a type: nothing reachable from HostView holds a key,
the Unicorn handle, the Secure Processor or the guest's plaintext memory."""

from __future__ import annotations

import pytest
from unicorn import Uc

from sevx86.cpu.context import CpuContext
from sevx86.cpu.vcpu import VCpu
from sevx86.machine import Machine
from sevx86.memory.cipher import MemoryCipher
from sevx86.memory.dram import PhysicalMemory
from sevx86.sp.secure_processor import SecureProcessor

from .conftest import make_guest

FORBIDDEN = (Uc, MemoryCipher, SecureProcessor, PhysicalMemory, VCpu, Machine, CpuContext)


def _public_graph(root: object, limit: int = 10_000):
    """Objects reachable through public attributes (no leading underscore)."""
    seen: set[int] = set()
    stack = [(root, "host")]
    while stack and len(seen) < limit:
        obj, path = stack.pop()
        if id(obj) in seen or isinstance(obj, int | str | bytes | bytearray | float | bool):
            continue
        seen.add(id(obj))
        yield obj, path
        if isinstance(obj, dict):
            children = [(v, f"{path}[{k!r}]") for k, v in obj.items()]
        elif isinstance(obj, list | tuple | set | frozenset):
            children = [(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        else:
            names = set(getattr(type(obj), "__slots__", ())) | set(getattr(obj, "__dict__", {}))
            children = []
            for name in names:
                if name.startswith("_"):
                    continue
                try:
                    children.append((getattr(obj, name), f"{path}.{name}"))
                except AttributeError:
                    continue
        stack.extend(children)


@pytest.mark.parametrize("mode", ["sev-es", "sev", "none"])
def test_nothing_trusted_is_reachable_from_the_host_view(mode):
    guest = make_guest("start:\n    hlt\n", mode)
    guest.run()
    for obj, path in _public_graph(guest.host):
        assert not isinstance(obj, FORBIDDEN), f"{path} is a {type(obj).__name__}"


def test_host_view_has_no_attribute_escape_hatch():
    guest = make_guest("start:\n    hlt\n")
    with pytest.raises(AttributeError):
        guest.host.machine  # noqa: B018
    with pytest.raises(AttributeError):
        guest.host.memory.cipher  # noqa: B018
    with pytest.raises(AttributeError):
        guest.host.foo = 1  # __slots__: the view cannot be extended by accident
