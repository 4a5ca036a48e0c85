"""A guest drives the CFI flash through the real hypervisor, as OVMF drives its varstore.

The flash is host-owned RAM at the top of the 32-bit space (where QEMU maps
pflash1 below the code), mapped C=0 by the guest. The same command sequence
runs twice:

* mode ``none``: plain stores and loads; in read-array mode a store hits a
  read-only page (an NPF exit the hypervisor decodes), in command mode every
  access traps;
* mode ``sev-es``: stores are explicit GHCB MMIO_WRITE requests, one byte
  each (OVMF's ``QemuFlashPtrWrite``), loads are plain; in command mode a
  load takes #VC (NPF) and the guest_asm handler turns it into MMIO_READ.

A plain store under SEV-ES cannot be emulated (the registers are
encrypted): the run ends instead of looping as KVM would.
"""

from __future__ import annotations

import struct

import pytest

from sevx86.arch.cfi import FlashCmd, FlashStatus
from sevx86.arch.exits import SvmExit
from sevx86.config import GuestConfig, GuestMode
from sevx86.harness import GuestSpec, build_machine
from sevx86.hv import Hypervisor, RunReason
from sevx86.hv.machines import QemuPc
from sevx86.testing.guest import DEFAULT_GHCB_GPA
from sevx86.trace.events import Tracer

FLASH = 0xFFE0_0000
FLASH_SIZE = 0x20000
RESULTS = 0x70000
IMAGE = bytes(range(256)) * (FLASH_SIZE // 256)

# RSI = GPA, AL = the byte: one GHCB MMIO_WRITE of one byte, as OVMF's
# QemuFlashPtrWrite (OvmfPkg/QemuFlashFvbServicesRuntimeDxe/QemuFlashDxe.c).
FLASH_WRITE_SEV_ES = """
flash_write:
    push rbx
    push rcx
    push rdx
    push rdi
    mov rbx, [rel vc_ghcb_va]
    call ghcb_invalidate
    mov byte [rbx + GHCB_SHARED_BUFFER], al
    mov rdx, [rel vc_ghcb_pa]
    add rdx, GHCB_SHARED_BUFFER
    ghcb_set SW_SCRATCH, rdx
    mov edi, SW_EXIT_MMIO_WRITE
    mov edx, 1
    call ghcb_vmgexit
    test eax, eax
    jz .done
    ud2
.done:
    pop rdi
    pop rdx
    pop rcx
    pop rbx
    ret
"""


def _write(mode: str, offset: int, value: int) -> str:
    if mode == "sev-es":
        return f"    mov rsi, {FLASH + offset:#x}\n    mov al, {value:#x}\n    call flash_write\n"
    return f"    mov byte [rdi + {offset:#x}], {value:#x}\n"


def _program(mode: str) -> str:
    w = _write
    steps = [
        "    movzx eax, byte [rdi + 3]",  # read array: memory
        "    mov [r15], rax",
        w(mode, 0x10, FlashCmd.PROGRAM_ALT),
        w(mode, 0x10, 0xA5),
        "    movzx eax, byte [rdi + 0x10]",  # command mode: the status register
        "    mov [r15 + 8], rax",
        w(mode, 0x10, FlashCmd.READ_ARRAY),
        "    movzx eax, byte [rdi + 0x10]",  # memory again: the programmed byte
        "    mov [r15 + 16], rax",
        w(mode, 0x1000, FlashCmd.BLOCK_ERASE),
        w(mode, 0x1000, FlashCmd.CONFIRM),
        "    mov eax, [rdi + 0x1000]",  # status, repeated in bits 23:16
        "    mov [r15 + 24], rax",
        w(mode, 0, FlashCmd.CFI_QUERY),
        "    movzx eax, byte [rdi + 0x10]",
        "    movzx ebx, byte [rdi + 0x11]",
        "    movzx ecx, byte [rdi + 0x12]",
        "    shl ebx, 8",
        "    shl ecx, 16",
        "    or eax, ebx",
        "    or eax, ecx",
        "    mov [r15 + 32], rax",  # "QRY"
        w(mode, 0, FlashCmd.READ_ARRAY),
        "    mov rax, [rdi + 0x1008]",  # the erased sector, as memory
        "    mov [r15 + 40], rax",
    ]
    body = "\n".join(s.rstrip("\n") for s in steps)
    tail = FLASH_WRITE_SEV_ES if mode == "sev-es" else ""
    return f"""
start:
    mov rdi, {FLASH:#x}
    mov r15, {RESULTS:#x}
{body}
    hlt
%include "vc_handler64.S"
{tail}
"""


def _boot(source: str, mode: str):
    config = GuestConfig(mode=GuestMode(mode), memory=8 << 20)
    spec = GuestSpec(
        source,
        handlers={29: "vc_handler"},
        shared_pages=[DEFAULT_GHCB_GPA],
        mmio=[FLASH],
        defines={"VC_GHCB_GPA": DEFAULT_GHCB_GPA, "VC_CBIT_MASK": config.c_bit},
    )
    tracer = Tracer()
    machine, _program = build_machine(spec, config, tracer=tracer, finish=False)
    # What the launch does for a varstore (sevx86.boot.launch): host-owned
    # RAM with the image written unencrypted, not measured.
    machine.memory.add_region("pflash1", FLASH, FLASH_SIZE)
    machine.memory.write_dram(FLASH, IMAGE)
    host = machine.host_view()
    hv = Hypervisor(host)
    pc = QemuPc(hv)
    assert pc.pflash1 is not None and pc.pflash1.base == FLASH
    return machine, hv, pc.pflash1, tracer


def _results(machine, n: int) -> tuple[int, ...]:
    return struct.unpack(f"<{n}Q", machine.memory.read_private(RESULTS, 8 * n))


@pytest.mark.parametrize("mode", ["none", "sev-es"])
def test_a_guest_programs_erases_and_queries_the_flash(mode):
    machine, hv, flash, tracer = _boot(_program(mode), mode)
    result = hv.run(timeout=30)
    assert result.reason is RunReason.HALTED, result.detail
    ready = int(FlashStatus.READY)
    first, status, programmed, erase_status, qry, erased = _results(machine, 6)
    assert first == 3 and status == ready and programmed == 0xA5
    assert erase_status == ready | ready << 16
    assert qry == int.from_bytes(b"QRY", "little")
    assert erased == (1 << 64) - 1
    # The bytes landed in the host's view of the flash, unencrypted.
    data = hv.host.memory.read(FLASH, FLASH_SIZE)
    assert data[0x10] == 0xA5 and data[0x1000:0x2000] == b"\xff" * 0x1000
    assert data[0x2000:] == IMAGE[0x2000:] and data[:0x10] == IMAGE[:0x10]
    assert flash.romd and flash.programmed == 1 and flash.erased == 1
    assert not hv.host.memory.is_trapping(FLASH)
    # Loads trapped exactly while the device was in command mode: the status
    # after the program, the erase status and three query bytes.
    if mode == "sev-es":
        npf = [e for e in tracer.of_kind("vc") if e.data["code"] == SvmExit.NPF]
        assert len(npf) == 5
        assert result.counters["vmgexit:MMIO_READ"] == 5
        assert result.counters["vmgexit:MMIO_WRITE"] == 7
        assert "NPF" not in result.counters  # no exit the host could not emulate
    else:
        assert result.counters["NPF"] == 5 + 7  # the loads, and every store


def test_under_sev_es_a_plain_store_to_the_flash_cannot_be_emulated():
    source = f"""
start:
    mov rdi, {FLASH:#x}
    mov byte [rdi], {FlashCmd.READ_STATUS:#x}
    hlt
%include "vc_handler64.S"
"""
    _machine, hv, flash, tracer = _boot(source, "sev-es")
    result = hv.run(timeout=30)
    assert result.reason is RunReason.EMULATION_ERROR
    assert f"GPA {FLASH:#x}" in result.detail
    assert tracer.of_kind("vc") == [] and flash.commands == {}
