"""The "debug-exit" device at port 0xF4: how a guest ends a run with a status.

A write of N (any width) to port 0xF4 ends ``Hypervisor.run()`` with
``reason == "exit-status"`` and ``exit_status == N``; the ``sevx86`` CLI makes
N its own exit code. This is the documented exit path for test programs:

    mov dx, 0xF4
    mov al, 0          ; success
    out dx, al

Unlike QEMU's ``isa-debug-exit`` (which exits with ``(N << 1) | 1``), the
status is N itself. Reads return 0.
"""

from __future__ import annotations

from collections.abc import Callable

DEBUG_EXIT_PORT = 0xF4


class DebugExit:
    def __init__(self, on_exit: Callable[[int], None], port: int = DEBUG_EXIT_PORT):
        self.on_exit = on_exit
        self.port = port
        self.name = "debug-exit"

    def io_read(self, port: int, size: int) -> int:
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        self.on_exit(value)


__all__ = ["DebugExit", "DEBUG_EXIT_PORT"]
