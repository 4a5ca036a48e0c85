"""The wall-clock limit of a VMRUN: one sleeping thread per vCPU, reused.

A ``threading.Timer`` per VMRUN cost about 0.3 ms (a thread start and a
join), more than a whole SEV-ES #VC round trip's worth of guest work. Here
one daemon thread sleeps until the armed deadline; arming again with the
same or a later deadline (the hypervisor's run loop passes what is left of
one fixed deadline) wakes nobody. The thread holds only a weak reference to
what it stops and ends with it.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Protocol


class Stoppable(Protocol):
    def timeout_fired(self) -> None: ...


class Watchdog:
    def __init__(self, target: Stoppable):
        self._target = weakref.ref(target)
        self._cond = threading.Condition()
        self._deadline = 0.0
        self._active = False
        self._sleeping_until: float | None = None  # None: waiting to be armed
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="vcpu-watchdog", daemon=True)
        self._thread.start()
        weakref.finalize(target, self.close)

    def arm(self, seconds: float) -> None:
        with self._cond:
            self._deadline = time.monotonic() + seconds
            self._active = True
            if self._sleeping_until is None or self._deadline < self._sleeping_until:
                self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._active = False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._active:
                    self._sleeping_until = None
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._sleeping_until = self._deadline
                    self._cond.wait(remaining)
                    continue
                self._active = False
                target = self._target()
                if target is None:
                    return
                target.timeout_fired()
                del target
