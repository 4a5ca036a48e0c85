"""What the CPU needs of the Secure Processor at a world switch: seal and check.

Under SEV-ES the VMSA's integrity is the hardware's job (APM vol 2, 15.35.4;
sevx86 models it with a tag the SP keeps, docs/design.md "World switch").
The engine sees only this interface, bound to one vCPU's VMSA by the
machine, so ``sevx86.cpu`` needs neither the ``Machine`` nor the SP:

* ``seal(page)`` at every automatic exit, with the plaintext the CPU has
  just written -- the bytes written are the bytes sealed, nothing is read
  back;
* ``check()`` at every VMRUN: one read of the VMSA, verified, and returned;
  the engine loads exactly that page (None: VMRUN fails).
"""

from __future__ import annotations

from typing import Protocol


class VmsaGuard(Protocol):
    def seal(self, page: bytes) -> None: ...

    def check(self) -> bytes | None: ...
