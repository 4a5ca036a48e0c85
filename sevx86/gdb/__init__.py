"""A GDB remote-serial-protocol stub for sevx86 guests, under the SEV debug policy.

``sevx86 run PROGRAM --gdb PORT`` and ``sevx86 boot FIRMWARE --gdb PORT``
stop before the first guest instruction and wait for ``target remote``.
The stub is the host's debugger: it reads private guest memory and (SEV-ES)
the registers only through the Secure Processor's DBG_DECRYPT/DBG_ENCRYPT,
which the guest owner's policy (NODBG) may refuse. See docs/gdb.md.
"""

from sevx86.gdb.server import GdbServer

__all__ = ["GdbServer"]
