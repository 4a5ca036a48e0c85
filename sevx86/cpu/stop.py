"""Why the run loop left ``emu_start``: one value, set by whoever stops Unicorn.

Every path out of guest code -- an exit the engine recorded, an intercepted
IN/OUT to roll back, the watchdog, the host's kick, another vCPU that needs
to be alone -- sets one ``StopRequest`` and calls ``emu_stop``. The run loop
(``sevx86.cpu.vcpu``) takes the value once per ``emu_start`` and acts on it;
nothing else decides why Unicorn stopped. When several arrive before the loop
looks, the strongest wins (an exit already recorded beats a kick: the host
gets control either way). A stop with no request is Unicorn's own instruction
count running out (docs/engine.md, "The run loop").
"""

from __future__ import annotations

import threading
from enum import IntEnum


class StopRequest(IntEnum):
    """Ordered by strength: a stronger request replaces a weaker one."""

    NONE = 0
    WORLD = 1  # another vCPU needs to be alone (sevx86.cpu.parallel): resume by itself
    KICK = 2  # the host takes the CPU back (any thread)
    TIMEOUT = 3  # the wall-clock watchdog fired (its thread)
    IO_ROLLBACK = 4  # an intercepted IN/OUT: restore the state before it
    EXIT = 5  # an exit for the host is recorded


class StopLatch:
    """The pending ``StopRequest``; other threads may set it at any time."""

    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = StopRequest.NONE

    def request(self, what: StopRequest) -> None:
        with self._lock:
            if what > self.value:
                self.value = what

    def discard(self, what: StopRequest) -> None:
        """Forget ``what`` if it is the pending request (a stale one)."""
        with self._lock:
            if self.value is what:
                self.value = StopRequest.NONE

    def take(self) -> StopRequest:
        """The pending request, cleared: read once per run-loop iteration."""
        with self._lock:
            what, self.value = self.value, StopRequest.NONE
        return what


class ExitRecorded(Exception):
    """Unwinds a handler once it recorded an exit (or a shutdown) for the host.

    The hook that called the handler catches it and stops Unicorn; the run
    loop then finds ``StopRequest.EXIT`` and returns the recorded exit.
    """
