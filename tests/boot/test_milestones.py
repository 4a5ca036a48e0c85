"""FirmwareBoot's milestones: reported through a callback, found in the guest's own output."""

from __future__ import annotations

from sevx86.asm import assemble
from sevx86.asm import fw_abi as abi
from sevx86.boot.firmware import flash_image
from sevx86.boot.firmware_run import FirmwareBoot
from sevx86.trace.events import NullTracer

# A payload of our firmware that prints OVMF's shell banner and powers off.
BANNER = """
%include "include/platform.inc"
start:
    lea rsi, [rel banner]
    call pl_puts
    xor edi, edi
    jmp pl_exit
banner: db "UEFI Interactive Shell v2.2", 10, 0
%include "payload.S"
"""

MEMORY = 32 << 20


def _image() -> bytes:
    payload = assemble(BANNER, base=abi.PAYLOAD_GPA).code
    return flash_image(payload, memory=MEMORY)


def test_milestones_reach_a_callback_as_they_happen_even_without_a_trace():
    reached: list[str] = []
    boot = FirmwareBoot(
        _image(),
        memory=MEMORY,
        tracer=NullTracer(),  # nobody records: the console events are never built
        until="shell",
        on_milestone=lambda m: reached.append(m.name),
    )
    result = boot.run(timeout=120)
    assert reached[0] == "cbit" and reached[-1] == "shell", reached
    assert result.milestone("shell").reached
    assert result.run.reason.value == "stopped"
