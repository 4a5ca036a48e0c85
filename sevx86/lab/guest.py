"""Build a lab guest: a program of guest_asm/lab on the harness, with a hypervisor.

Every lab guest is real assembly in ``guest_asm/lab/NAME.S``, run on the
host-built environment of ``sevx86.harness`` (long mode, page tables with
the C-bit, an IDT) with the full #VC handler (``vc_handler64.S``) wired to
vector 29 and a GHCB page shared at ``LAB_GHCB_GPA``. The same program runs
in all three modes: without SEV-ES no #VC is raised and the hypervisor
intercepts CPUID or IN/OUT directly.

``LabGuest`` keeps two views apart. ``hv`` is the hostile hypervisor: it
only ever holds the ``HostView``. ``machine`` is the experimenter's view
(the trusted side, plaintext through ``read_private``): scenarios use it to
score what the host achieved, never to help the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sevx86.arch.vectors import Vector
from sevx86.asm import Program
from sevx86.asm.preprocess import guest_asm_dir
from sevx86.config import GuestConfig, GuestMode, MiB
from sevx86.harness import GuestSpec, build_machine
from sevx86.hv import Hypervisor
from sevx86.machine import Machine

LAB_GHCB_GPA = 0xF000  # a 4 KiB page below the harness page tables, shared (C=0)
LAB_MEMORY = 8 * MiB
MODES: tuple[str, ...] = tuple(m.value for m in GuestMode)


class LabError(RuntimeError):
    """A lab guest could not be built (a packaging or assembly problem, not an attack)."""


def lab_source(name: str) -> str:
    """The text of ``guest_asm/lab/NAME.S``."""
    base = guest_asm_dir()
    path = None if base is None else base / "lab" / f"{name}.S"
    if path is None or not path.is_file():
        raise LabError(f"guest program lab/{name}.S not found")
    return path.read_text()


@dataclass
class LabGuest:
    """A launched lab guest: its hypervisor and the experimenter's view."""

    machine: Machine
    program: Program
    hv: Hypervisor

    def symbol(self, label: str) -> int:
        """GPA of a label (the harness maps RAM 1:1; the host loaded the image, so it knows)."""
        return self.program.symbol(label)

    def private_u64(self, label: str) -> int:
        """The guest's plaintext qword at ``label`` (experimenter's view only)."""
        data = self.machine.memory.read_private(self.symbol(label), 8)
        return int.from_bytes(data, "little")


def launch(
    name: str,
    mode: str,
    *,
    defines: Mapping[str, int | str] | None = None,
    hv_class: type[Hypervisor] = Hypervisor,
    vc_handler: bool = True,
    mmio: tuple[int, ...] = (),
) -> LabGuest:
    """Assemble ``lab/NAME.S``, launch it in ``mode``, attach a ``hv_class`` hypervisor.

    ``vc_handler=False`` for programs that include no #VC handler (they talk
    to the host only through the GHCB MSR protocol); ``mmio`` GPAs get a 2 MiB
    device window mapped with C=0 (the harness maps RAM only).
    """
    config = GuestConfig(mode=GuestMode(mode), memory=LAB_MEMORY)
    spec = GuestSpec(
        lab_source(name),
        handlers={int(Vector.VC): "vc_handler"} if vc_handler else {},
        shared_pages=[LAB_GHCB_GPA],
        mmio=mmio,
        name=f"lab/{name}.S",
        defines={"VC_GHCB_GPA": LAB_GHCB_GPA, "VC_CBIT_MASK": config.c_bit, **(defines or {})},
    )
    machine, program = build_machine(spec, config)
    return LabGuest(machine, program, hv_class(machine.host_view()))
