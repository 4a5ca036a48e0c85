"""Tiny guest programs that talk to the hypervisor directly (no #VC handler library).

The #VC handler library is written elsewhere; these tests build the GHCB
requests by hand in assembly, so each test states exactly what the guest
put in the GHCB and what came back.

Memory map used (the harness identity-maps RAM, first 2 MiB in 4 KiB pages):
control page 0x4000 and case page 0x6000 (shared, written by the host in
hypothesis tests), GHCB page 0x5000 (shared), snapshots of the GHCB after each call from 0x200000
(private: the test reads them with the god view ``read_private``).
"""

from __future__ import annotations

from sevx86.arch.ghcb import GHCB, set_valid
from sevx86.config import GuestConfig
from sevx86.harness import GuestSpec, build_machine
from sevx86.hv import Hypervisor
from sevx86.trace.events import Tracer

CONTROL_GPA = 0x4000
GHCB_GPA = 0x5000
CASE_GPA = 0x6000
SNAP_BASE = 0x200000
GHCB_MSR = 0xC001_0130
VC_VECTOR = 29

# A #VC must not happen in these direct tests; if one does, report its error
# code through an MSR-protocol termination (reason set 1, code = low byte).
VC_TRAP = """
vc_handler:
    mov rax, [rsp]
    and eax, 0xFF
    shl eax, 16
    or eax, 0x1100
    xor edx, edx
    mov ecx, 0xC0010130
    wrmsr
    vmgexit
    hlt
"""


def msr_protocol(value: int) -> str:
    """Write ``value`` to the GHCB MSR, VMGEXIT, read the response into RDX:RAX."""
    return f"""
    mov ecx, {GHCB_MSR:#x}
    mov rax, {value & 0xFFFF_FFFF:#x}
    mov rdx, {value >> 32:#x}
    wrmsr
    vmgexit
    mov ecx, {GHCB_MSR:#x}
    rdmsr
"""


def register_ghcb(gpa: int = GHCB_GPA) -> str:
    """Register the GHCB (MSR protocol 0x012), then point the GHCB MSR at it."""
    return (
        msr_protocol((gpa >> 12 << 12) | 0x012)
        + f"""
    mov ecx, {GHCB_MSR:#x}
    mov eax, {gpa:#x}
    xor edx, edx
    wrmsr
"""
    )


def ghcb_call(
    fields: dict[str, int],
    *,
    snapshot: int | None = None,
    version: int = 2,
    usage: int = 0,
    valid: int | None = None,
    gpa: int = GHCB_GPA,
    before_exit: str = "",
) -> str:
    """Clear the GHCB, store ``fields`` (valid bits set), VMGEXIT, snapshot the page."""
    lines = [
        f"mov rdi, {gpa:#x}",
        "xor eax, eax",
        "mov ecx, 512",
        "rep stosq",
        f"mov rdi, {gpa:#x}",
    ]
    for name, value in fields.items():
        f = GHCB[name]
        lines.append(f"mov rax, {value & ((1 << 64) - 1):#x}")
        reg = {1: "al", 2: "ax", 4: "eax", 8: "rax"}[f.size]
        lines.append(f"mov [rdi + {f.offset:#x}], {reg}")
    bitmap = set_valid(0, *fields) if valid is None else valid
    lines += [
        f"mov rax, {bitmap & ((1 << 64) - 1):#x}",
        f"mov [rdi + {0x3F0:#x}], rax",
        f"mov rax, {bitmap >> 64:#x}",
        f"mov [rdi + {0x3F8:#x}], rax",
        f"mov word ptr [rdi + 0xFFA], {version}",
        f"mov dword ptr [rdi + 0xFFC], {usage}",
        *before_exit.strip().splitlines(),
        "vmgexit",
    ]
    if snapshot is not None:
        lines += [
            f"mov rsi, {gpa:#x}",
            f"mov rdi, {SNAP_BASE + snapshot * 0x1000:#x}",
            "mov ecx, 512",
            "rep movsq",
        ]
    return "\n".join("    " + line.strip() for line in lines) + "\n"


def ghcb_out(port: int, value: int, size: int = 1, *, snapshot: int | None = None) -> str:
    """OUT through the GHCB (IOIO request)."""
    from sevx86.arch.vmcb import encode_ioio

    info1 = encode_ioio(port, size, False)
    return ghcb_call(
        {"sw_exit_code": 0x7B, "sw_exit_info_1": info1, "sw_exit_info_2": 0, "rax": value},
        snapshot=snapshot,
    )


def exit_sev_es(status: int) -> str:
    """End the run through the debug-exit port (a GHCB IOIO request)."""
    return ghcb_out(0xF4, status) + "    hlt\n"


def exit_direct(status: int) -> str:
    """End the run through the debug-exit port (modes none/sev: a plain OUT)."""
    return f"""
    mov dx, 0xF4
    mov al, {status}
    out dx, al
    hlt
"""


def build(
    body: str,
    mode: str = "sev-es",
    *,
    hv_kwargs: dict | None = None,
    data: str = "",
    handlers: dict[int, str] | None = None,
    tracer: Tracer | None = None,
    config: dict | None = None,
    hv_class: type[Hypervisor] = Hypervisor,
):
    """(machine, program, hypervisor) for a guest whose code is ``body``."""
    source = "start:\n" + body + "\n" + VC_TRAP + data
    spec = GuestSpec(
        source,
        handlers={VC_VECTOR: "vc_handler", **(handlers or {})},
        shared_pages=[CONTROL_GPA, GHCB_GPA, CASE_GPA],
    )
    machine, program = build_machine(spec, GuestConfig(mode=mode, **(config or {})), tracer=tracer)
    hv = hv_class(machine.host_view(), **(hv_kwargs or {}))
    return machine, program, hv


def snapshot(machine, n: int) -> bytes:
    """The GHCB page as the guest saw it after call number ``n`` (god view)."""
    return machine.memory.read_private(SNAP_BASE + n * 0x1000, 0x1000)


def field(page: bytes, name: str) -> int:
    return GHCB[name].read(page)


PD_SCRATCH = 0x7000


def map_mmio(c_bit: int = 0) -> str:
    """Map 0xFEA0_0000..0xFEBF_FFFF (the MMIO test device) shared, with a 2 MiB page.

    The harness maps only RAM, as firmware would; a guest maps its device
    windows itself. PML4[0] -> PDPT (harness); PDPT[3] -> a new PD at
    PD_SCRATCH; PD[0x1F5] -> 0xFEA00000 (P, RW, PS; C=0).
    """
    addr_mask = 0x000F_FFFF_FFFF_F000 & ~c_bit
    return f"""
    mov rdi, {PD_SCRATCH:#x}
    xor eax, eax
    mov ecx, 512
    rep stosq
    mov rax, cr3
    mov rbx, {addr_mask:#x}
    and rax, rbx
    mov rax, [rax]
    and rax, rbx
    mov rbx, {PD_SCRATCH | 0x3 | c_bit:#x}
    mov [rax + 3 * 8], rbx
    mov rdi, {PD_SCRATCH:#x}
    mov rbx, {0xFEA0_0000 | 0x83:#x}
    mov [rdi + 0x1F5 * 8], rbx
    mov rax, cr3
    mov cr3, rax
"""
