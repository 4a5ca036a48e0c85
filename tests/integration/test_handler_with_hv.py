"""The guest_asm #VC handler against the real hypervisor, end to end under SEV-ES.

The handler unit tests (tests/guest_asm) answer from a scripted host; the
hypervisor tests (tests/hv) use hand-built GHCB requests. These prove the two
agree on the protocol: guest-visible results equal what the host chose.
"""

from __future__ import annotations

import pytest

from sevx86.hv.devices.mmio_test import MMIO_TEST_BASE, MMIO_TEST_ID
from sevx86.testing import run_guest
from sevx86.testing.hv_host import HypervisorHost

HANDLER = '%include "vc_handler64.S"\n'


class Port:
    """An I/O device with a fixed read value that records what it is sent."""

    def __init__(self, value: int):
        self.value = value
        self.received = bytearray()

    def io_read(self, port: int, size: int) -> int:
        return self.value & ((1 << (8 * size)) - 1)

    def io_write(self, port: int, size: int, value: int) -> None:
        self.received += value.to_bytes(size, "little")


def _with_device(port: int, length: int, device: Port) -> HypervisorHost:
    """A hypervisor with ``device`` on its I/O bus at ``port``."""
    host = HypervisorHost()
    attach = host.attach

    def attach_and_register(view):
        attach(view)
        host.hv.io_bus.register(port, length, device)

    host.attach = attach_and_register  # type: ignore[method-assign]
    return host


def _run(body: str, host: HypervisorHost, data: str = "", **kw):
    source = f"start:\n{body}\n    hlt\n{data}\n{HANDLER}"
    run = run_guest(source, host=host, timeout=20, **kw)
    assert run.halted and run.errors == [], (run.result, host.run_result)
    return run


def test_cpuid_answers_come_from_the_hypervisors_table():
    host = HypervisorHost(cpuid={(0x4000_0000, 0): (0x4000_0001, 0x5345_5658, 0x3638_5856, 0)})
    run = _run("    mov eax, 0x40000000\n    xor ecx, ecx\n    cpuid", host)
    assert (run.reg("rax"), run.reg("rbx"), run.reg("rcx"), run.reg("rdx")) == (
        0x4000_0001,
        0x5345_5658,
        0x3638_5856,
        0,
    )
    assert [e.name for e in run.exits] == ["CPUID"]


@pytest.mark.parametrize(
    "width,insn,reg", [(1, "in al, dx", "rax"), (2, "in ax, dx", "rax"), (4, "in eax, dx", "rax")]
)
def test_in_values_come_from_a_device(width, insn, reg):
    device = Port(0x1234_5678)
    host = _with_device(0x510, 4, device)
    run = _run(f"    mov dx, 0x510\n    mov rax, -1\n    {insn}", host)
    keep = (1 << 64) - (1 << (8 * width))
    assert run.reg(reg) == (0xFFFF_FFFF_FFFF_FFFF & keep if width < 4 else 0) | (
        0x1234_5678 & ((1 << (8 * width)) - 1)
    )


def test_rep_outsb_of_5000_bytes_arrives_byte_exact():
    device = Port(0)
    host = _with_device(0x2F8, 1, device)
    body = "    mov rsi, payload\n    mov ecx, 5000\n    mov dx, 0x2F8\n    rep outsb"
    data = "payload:\n" + "\n".join(
        f"    db {', '.join(str((i * 7 + j) & 0xFF) for j in range(50))}" for i in range(100)
    )
    run = _run(body, host, data)
    expected = bytes(((i * 7 + j) & 0xFF) for i in range(100) for j in range(50))
    assert bytes(device.received) == expected
    assert run.reg("rcx") == 0


@pytest.mark.parametrize(
    "store,load,width",
    [
        ("mov byte [rdi + 8], 0x5a", "movzx eax, byte [rdi + 8]", 1),
        ("mov word [rdi + 8], 0x5a5b", "movzx eax, word [rdi + 8]", 2),
        ("mov dword [rdi + 8], 0x5a5b5c5d", "mov eax, [rdi + 8]", 4),
        ("mov rax, 0x1122334455667788\n    mov [rdi + 8], rax", "mov rax, [rdi + 8]", 8),
    ],
)
def test_mmio_scratch_register_of_every_width(store, load, width):
    host = HypervisorHost()
    body = f"    mov rdi, {MMIO_TEST_BASE:#x}\n    {store}\n    xor eax, eax\n    {load}\n"
    body += "    mov ebx, [rdi]"
    run = _run(body, host, mmio=[MMIO_TEST_BASE])
    expected = {1: 0x5A, 2: 0x5A5B, 4: 0x5A5B5C5D, 8: 0x1122334455667788}[width]
    assert run.reg("rax") == expected
    assert run.reg("rbx") & 0xFFFF_FFFF == MMIO_TEST_ID
    assert host.hv.mmio_bus.device("mmio-test").scratch & ((1 << (8 * width)) - 1) == expected


def test_refused_rdmsr_raises_gp_in_the_guest():
    host = HypervisorHost()
    body = "    mov ecx, 0x12345678\n    rdmsr\n    mov r12, 1"
    data = """
gp_handler:
    mov r13, [rsp]          ; the error code
    mov r12, 0x6b
    hlt
"""
    run = run_guest(
        f"start:\n{body}\n    hlt\n{data}\n{HANDLER}",
        host=host,
        timeout=20,
        handlers={29: "vc_handler", 13: "gp_handler"},
    )
    assert run.reg("r12") == 0x6B and run.reg("r13") == 0


def test_a_termination_request_ends_the_run_with_its_reason():
    host = HypervisorHost()
    body = "    mov edi, (1 << 8) | 0x42    ; reason set 1, code 0x42\n    jmp vc_terminate_with"
    run = run_guest(f"start:\n{body}\n    hlt\n{HANDLER}", host=host, timeout=20)
    assert run.terminated is not None
    assert (run.terminated.reason_set, run.terminated.reason_code) == (1, 0x42)
