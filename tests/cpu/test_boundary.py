"""The host boundary is a type: nothing reachable from HostView holds a key,
the Unicorn handle, the Secure Processor or the guest's plaintext memory."""

from __future__ import annotations

import functools
import types

import pytest
from unicorn import Uc

from sevx86.cpu.context import CpuContext
from sevx86.cpu.vcpu import VCpu
from sevx86.machine import Machine
from sevx86.memory.cipher import MemoryCipher
from sevx86.memory.dram import PhysicalMemory
from sevx86.sp.secure_processor import SecureProcessor
from sevx86.trace.events import Tracer

from .conftest import make_guest

FORBIDDEN = (
    Uc,
    MemoryCipher,
    SecureProcessor,
    PhysicalMemory,
    VCpu,
    Machine,
    CpuContext,
    Tracer,
)
_LEAVES = (int, str, bytes, bytearray, float, bool, type(None), type, types.ModuleType)


def _children(obj: object, path: str) -> list[tuple[object, str]]:
    """Everything an attribute chain can take from ``obj``: private names too.

    Instance attributes (``__dict__`` and every ``__slots__`` name, leading
    underscore or not), container items, a bound method's ``__self__``, a
    closure's cells and a ``functools.partial``'s function and arguments.
    Class attributes and module globals are not followed: reaching those
    takes an import, not an attribute of the object.
    """
    if isinstance(obj, dict):
        return [(v, f"{path}[{k!r}]") for k, v in obj.items()]
    if isinstance(obj, list | tuple | set | frozenset):
        return [(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, types.MethodType):
        return [(obj.__self__, f"{path}.__self__")]
    if isinstance(obj, types.FunctionType):
        cells = obj.__closure__ or ()
        return [(c.cell_contents, f"{path}.__closure__[{i}]") for i, c in enumerate(cells)]
    if isinstance(obj, functools.partial):
        return [(obj.func, f"{path}.func"), (obj.args, f"{path}.args")]
    names: set[str] = set(getattr(obj, "__dict__", {}))
    for klass in type(obj).__mro__:
        slots = getattr(klass, "__slots__", ())
        names |= {slots} if isinstance(slots, str) else set(slots)
    names.discard("__weakref__")
    out = []
    for name in names:
        try:
            out.append((object.__getattribute__(obj, name), f"{path}.{name}"))
        except AttributeError:
            continue
    return out


def _graph(root: object, limit: int = 20_000):
    """Objects reachable from ``root`` through any attribute chain (see _children)."""
    seen: set[int] = set()
    stack = [(root, "host")]
    while stack and len(seen) < limit:
        obj, path = stack.pop()
        if id(obj) in seen or isinstance(obj, _LEAVES):
            continue
        seen.add(id(obj))
        yield obj, path
        stack.extend(_children(obj, path))


@pytest.mark.parametrize("mode", ["sev-es", "sev", "none"])
def test_item9_nothing_trusted_is_reachable_from_the_host_view(mode):
    # Through private attributes and bound methods too (issue 15 item 9:
    # ``host.memory._memory.cipher._data_key.key`` and
    # ``host._parallel.__self__`` used to be the key and the Machine).
    guest = make_guest("start:\n    hlt\n", mode)
    guest.run()
    for obj, path in _graph(guest.host):
        assert not isinstance(obj, FORBIDDEN), f"{path} is a {type(obj).__name__}"


def test_host_view_has_no_attribute_escape_hatch():
    guest = make_guest("start:\n    hlt\n")
    with pytest.raises(AttributeError):
        guest.host.machine  # noqa: B018
    with pytest.raises(AttributeError):
        guest.host.memory.cipher  # noqa: B018
    with pytest.raises(AttributeError):
        guest.host.foo = 1  # __slots__: the view cannot be extended by accident


def test_item9_the_walk_finds_a_bound_method_and_a_private_attribute():
    # The walk itself must see what it is meant to forbid.
    class Leaky:
        __slots__ = ("_hidden", "hook")

    guest = make_guest("start:\n    hlt\n")
    leaky = Leaky()
    leaky._hidden = guest.machine.memory
    leaky.hook = guest.machine.enable_parallel
    found = {type(obj) for obj, _path in _graph(leaky)}
    assert PhysicalMemory in found and Machine in found
