"""What sevx86's own firmware (firmware/) promises: its memory layout, the
payload header it reads, the boot-info structure it hands to the payload, and
its termination reasons.

Defined once, here. ``sevx86.asm.gen_includes`` renders every number below
into ``guest_asm/include/fw_abi.inc`` for the firmware and for payloads
(``%include "include/fw_abi.inc"``); the Python side (the image builder,
the CLI, tests) reads the same objects. firmware/README.md explains them.

Why these choices:

* The flash image is what the Secure Processor measures (QEMU's pflash0,
  LAUNCH_UPDATE_DATA). The payload and a one-page header describing it sit
  in the flash below the firmware proper, so the launch digest covers the
  payload and the RAM size too, and ``sev-snp-measure --ovmf`` computes the
  same digest for the whole image.
* The firmware's own code runs from the top 64 KiB of the flash (the reset
  vector must be there); its 64-bit part is copied to RAM because the #VC
  handler keeps state next to its code.
* Termination reasons: the GHCB specification (AMD 56421, "Termination
  Request") defines reason set 0; Linux and OVMF use set 1; the guest_asm
  #VC handlers use set 2 (``sevx86.asm.guest_abi``); the firmware uses set 3.
"""

from __future__ import annotations

from enum import IntEnum

from sevx86.arch.layout import Field, Layout
from sevx86.arch.vectors import vector_name
from sevx86.hv.devices import COM1, DEBUG_EXIT_PORT, DEBUGCON_PORT

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# -- guest-physical layout of RAM (identity-mapped: VA = GPA) ------------------------
NULL_GUARD = 0x0000_0000  # page 0 is left unmapped: a NULL dereference faults
BOOT_INFO_GPA = 0x0000_1000  # the boot-info structure (RDI at payload entry)
PAGE_TABLES_GPA = 0x0000_2000  # PML4, PDPT, PT of the first 2 MiB, PD of each GiB 0..3
PML4_GPA = PAGE_TABLES_GPA
PDPT_GPA = PAGE_TABLES_GPA + 0x1000
PT0_GPA = PAGE_TABLES_GPA + 0x2000  # 4 KiB pages of 0..2 MiB (page 0 absent, GHCB C=0)
PD_GPA = PAGE_TABLES_GPA + 0x3000  # four consecutive PDs: GiB 0, 1, 2 (RAM), 3 (devices)
PAGE_TABLES_SIZE = 0x7000
GHCB_GPA = 0x0000_9000  # the GHCB page: the only page mapped with C=0 in RAM
RUNTIME_GPA = 0x0001_0000  # the 64-bit part (code, GDT, TSS, IDT), copied from flash
RUNTIME_MAX = 0x0001_0000
IST_STACK_TOP = 0x0007_0000  # IST1 (#DF) stack, 0x60000..0x70000
STACK_TOP = 0x0008_0000  # the firmware's stack and the payload's, 0x70000..0x80000
FIRMWARE_RAM_END = 0x0008_0000  # RAM below this belongs to the firmware
# The C-bit check (firmware/README.md, "Verifying the C-bit"): its own page
# tables, the value it plants, and a page read and written shared. Used once,
# before long mode, and zeroed after: usable RAM for the payload.
CBIT_CHECK_GPA = FIRMWARE_RAM_END
CBIT_CHECK_PML4 = CBIT_CHECK_GPA  # then the PDPT and the PDs of GiB 0, 1 and 3
CBIT_CHECK_NONCE = CBIT_CHECK_GPA + 0x5000  # written private with paging off
CBIT_CHECK_SHARED = CBIT_CHECK_GPA + 0x6000  # GDT, IDT and stack, C=0 throughout
CBIT_CHECK_SIZE = 0x7000
CBIT_CHECK_VA = 1 * GiB  # GiB 1 of the check tables: RAM from GPA 0 with the C-bit
# Where `sevx86 run --secret-command` has the Secure Processor inject the guest
# owner's secret (LAUNCH_SECRET, encrypted with the guest's key): one page the
# payload reads; zero when no secret was injected.
SECRET_GPA = 0x0008_F000
SECRET_SIZE = 0x1000
PAYLOAD_GPA = 0x0010_0000  # the payload is copied here and entered here
PAYLOAD_MAX = 8 * MiB  # keeps the flash clear of the MMIO window below it
RAM_MIN = 2 * MiB
RAM_MAX = 3 * GiB  # GiB 3 is the device window (MMIO, flash)
DEVICE_WINDOW = 3 * GiB  # 3..4 GiB: mapped C=0 (shared: MMIO), flash C=1 read-only

# -- several vCPUs (firmware/README.md, "APs") -------------------------------------------
# Each vCPU has a slot: the BSP 0, APs 1.. in the order they take one (LOCK XADD
# on SMP_NEXT_SLOT). A slot owns a TSS + #VC block, a stack and (SEV-ES) a GHCB.
MAX_VCPUS = 32
SMP_GPA = 0x0000_A000  # the SMP mailbox (SMP below): data only -- parallel mode wants
# LOCKed data off pages that hold code (sevx86/cpu/parallel.py)
AP_JUMP_TABLE_GPA = 0x0000_B000  # SEV-ES AP jump table page (GHCB spec 56421), for the payload
PERCPU_GPA = 0x0000_C000  # slot s: its 64-bit TSS, then its #VC block, at + s * PERCPU_STRIDE
PERCPU_STRIDE = 0x100
AP_GHCB_GPA = 0x0002_0000  # AP slot s's GHCB page at + (s - 1) * 4 KiB, mapped C=0 (SEV-ES)
AP_STACKS_GPA = 0x0004_0000  # AP slot s's stack: the 4 KiB below + s * AP_STACK_SIZE
AP_STACK_SIZE = 0x1000
AP_START_MAGIC = 0x5041_5853  # "SXAP": SMP ap_start_ip/cs are valid
# How long the BSP waits for the APs (firmware/README.md, "APs"): it polls the
# counter every AP_POLL_SPINS PAUSEs and reads the TSC (an exit: a host that
# runs one vCPU at a time runs the APs then) until AP_TIMEOUT_TSC cycles
# passed: about 30 ms at 2 GHz (UefiCpuPkg's default AP start-up timeout,
# PcdCpuApInitTimeOutInMicroSeconds, is 50 ms). The host decides time:
# sevx86's default virtual TSC advances 1000 cycles per read by any vCPU, so
# that is about 67000 reads; 32 vCPUs come up in a few thousand.
AP_POLL_SPINS = 256
AP_TIMEOUT_TSC = 1 << 26

# -- the flash image (top of 4 GiB, as QEMU maps pflash0) ----------------------------
FLASH_TOP = 1 << 32
FIRMWARE_SIZE = 64 * KiB  # reset.S, ending at 4 GiB
FIRMWARE_BASE = FLASH_TOP - FIRMWARE_SIZE
PAYLOAD_HEADER_GPA = FIRMWARE_BASE - 0x1000  # one page right below the firmware
# The payload bytes end at PAYLOAD_HEADER_GPA, starting on a page boundary.

# Selectors of the firmware's GDT (the payload runs with CODE64 / DATA).
SEL_CODE64 = 0x08
SEL_DATA = 0x10
SEL_CODE32 = 0x18
SEL_TSS = 0x20  # the BSP's TSS; slot s's at SEL_TSS + 16 * s (16-byte system descriptors)
SEL_CODE16 = SEL_TSS + 16 * MAX_VCPUS  # 16-bit code, base RUNTIME_GPA: leaving for real mode
SEL_DATA16 = SEL_CODE16 + 8  # 16-bit data, base 0, 64 KiB: real-mode-compatible limits
IST_DF = 1  # the IST slot of #DF (a broken stack must not become a triple fault)

# The C-bit positions this firmware accepts: it keeps the C-bit in the high
# dword of a page-table entry (the architecture puts it in bits 63:32 anyway,
# CPUID 0x8000001F EBX[5:0]; QEMU's cbitpos accepts 32..63).
CBIT_POS_MIN = 32
CBIT_POS_MAX = 63

PAYLOAD_MAGIC = 0x4850_5853  # "SXPH"
PAYLOAD_HEADER_VERSION = 1
PAYLOAD_HEADER = Layout(
    "payload header",
    0x20,
    [
        Field("magic", 0x00, 4, '"SXPH"'),
        Field("version", 0x04, 4),
        Field("payload_size", 0x08, 8, "bytes at PAYLOAD_GPA; 0 = no payload"),
        Field("memory_size", 0x10, 8, "RAM bytes from GPA 0"),
        Field("reserved", 0x18, 8),
    ],
)


class MemType(IntEnum):
    """Types of the boot-info memory map (E820-like, but sevx86's own numbers)."""

    USABLE = 1  # free RAM (C-bit set in the page tables)
    FIRMWARE = 2  # the firmware's: boot info, IDT, GDT, page tables, GHCB, runtime, stacks
    PAYLOAD = 3  # the payload image as copied to PAYLOAD_GPA


BOOT_INFO_MAGIC = 0x4942_5853  # "SXBI"
BOOT_INFO_VERSION = 2  # 2: vcpu_count and ap_jump_table
MMAP_ENTRY = Layout(
    "memory map entry",
    0x18,
    [Field("base", 0x00, 8), Field("size", 0x08, 8), Field("type", 0x10, 4)],
)
MMAP_MAX = 8
BOOT_INFO_MMAP = 0x80
BOOT_INFO = Layout(
    "boot info",
    BOOT_INFO_MMAP + MMAP_MAX * MMAP_ENTRY.size,
    [
        Field("magic", 0x00, 4, '"SXBI", written last'),
        Field("version", 0x04, 4),
        Field("sev_status", 0x08, 8, "SEV_STATUS MSR as read (0 without SEV)"),
        Field("cbit_mask", 0x10, 8, "1 << C-bit position (0 without SEV)"),
        Field("cbit_pos", 0x18, 4, "0 without SEV"),
        Field("phys_bits", 0x1C, 4, "usable physical address bits"),
        Field("ghcb_gpa", 0x20, 8, "0 without SEV-ES"),
        Field("ghcb_va", 0x28, 8, "its VA, mapped C=0 (0 without SEV-ES)"),
        Field("ghcb_version", 0x30, 4, "negotiated GHCB protocol version"),
        Field("console_port", 0x34, 2, "16550 UART"),
        Field("debugcon_port", 0x36, 2, "debug console"),
        Field("exit_port", 0x38, 2, "debug-exit: a write of N ends the run with N"),
        Field("memory_size", 0x40, 8, "RAM bytes from GPA 0"),
        Field("payload_gpa", 0x48, 8),
        Field("payload_size", 0x50, 8),
        Field("stack_top", 0x58, 8),
        Field("vc_handler", 0x60, 8, "VA of the firmware's #VC handler (vector 29)"),
        Field("idt_base", 0x68, 8),
        Field("mmap_count", 0x70, 4),
        Field("mmap_entry_size", 0x74, 4),
        Field("vcpu_count", 0x78, 4, "vCPUs up: the BSP and every AP that reported in"),
        Field("ap_jump_table", 0x7C, 4, "GPA of the AP jump table page (0 without SEV-ES)"),
        Field("mmap", BOOT_INFO_MMAP, MMAP_MAX * MMAP_ENTRY.size, "MMAP_ENTRY x mmap_count"),
    ],
)

# The SMP mailbox page at SMP_GPA (private; the BSP fills it before INIT-SIPI).
SMP = Layout(
    "SMP mailbox",
    0x20,
    [
        Field("ap_start_ip", 0x00, 2, "where ap_reset far-jumps (OVMF: SEV_ES_AP_JMP_FAR)"),
        Field("ap_start_cs", 0x02, 2, "real-mode CS of the AP trampoline"),
        Field("ap_start_magic", 0x04, 4, "AP_START_MAGIC once the pointer is valid"),
        Field("next_slot", 0x08, 4, "LOCK XADD: the next free AP slot (from 1)"),
        Field("reported", 0x0C, 4, "LOCK XADD: APs that reported in"),
        Field("print_lock", 0x10, 4, "XCHG spinlock around the shared line buffer"),
        Field("expected", 0x14, 4, "vCPUs the BSP waits for (CPUID 0x80000008 ECX[7:0] + 1)"),
    ],
)

CONSOLE_PORT = COM1
DEBUGCON = DEBUGCON_PORT
EXIT_PORT = DEBUG_EXIT_PORT

FW_REASON_SET = 3


class FwReason(IntEnum):
    """Reason codes of set ``FW_REASON_SET`` (GHCB MSR protocol termination, 0x100)."""

    CPUID_DENIES_SEV = 1  # SEV_STATUS says SEV; CPUID 0x80000000/0x8000001F deny it
    CPUID_DENIES_SEV_ES = 2  # SEV_STATUS says SEV-ES; CPUID 0x8000001F EAX lacks it
    CBIT_RANGE = 3  # C-bit position outside CBIT_POS_MIN..CBIT_POS_MAX
    CBIT_ADDRESS_BIT = 4  # C-bit inside the usable physical address width
    CBIT_MISMATCH = 5  # SEV-information C-bit != CPUID 0x8000001F EBX[5:0]
    SEV_INFO = 6  # SEV-information request answered with another code
    GHCB_REGISTER = 7  # GHCB GPA registration refused or answered wrongly
    PAYLOAD = 8  # payload header damaged, or the payload or RAM size out of range
    SEV_STATUS = 9  # SEV_STATUS inconsistent (SEV-ES without SEV)
    AP_TIMEOUT = 0x0A  # not every AP reported in within AP_TIMEOUT_TSC
    VCPU_COUNT = 0x0B  # CPUID reports more vCPUs than MAX_VCPUS
    CBIT_VERIFY = 0x0C  # a value written private did not read back through the C-bit mapping
    EARLY_EXCEPTION = 0x20  # an exception before long mode
    EXCEPTION = 0x40  # + vector: an exception nobody handles, in 64-bit mode


FW_REASON_TEXT: dict[int, str] = {
    FwReason.CPUID_DENIES_SEV: "SEV_STATUS reports SEV but CPUID 0x8000001F denies it",
    FwReason.CPUID_DENIES_SEV_ES: "SEV_STATUS reports SEV-ES but CPUID 0x8000001F denies it",
    FwReason.CBIT_RANGE: f"C-bit position outside {CBIT_POS_MIN}..{CBIT_POS_MAX}",
    FwReason.CBIT_ADDRESS_BIT: "C-bit position inside the physical address width",
    FwReason.CBIT_MISMATCH: "SEV information C-bit differs from CPUID 0x8000001F EBX",
    FwReason.SEV_INFO: "bad answer to the SEV information request",
    FwReason.GHCB_REGISTER: "GHCB registration refused",
    FwReason.PAYLOAD: "payload header damaged or payload/RAM size out of range",
    FwReason.SEV_STATUS: "SEV_STATUS inconsistent",
    FwReason.AP_TIMEOUT: "not every AP reported in before the timeout",
    FwReason.VCPU_COUNT: f"more than {MAX_VCPUS} vCPUs",
    FwReason.CBIT_VERIFY: (
        "the C-bit position failed the paging check: the hypervisor lied about it"
    ),
    FwReason.EARLY_EXCEPTION: "exception before long mode",
}


def describe_reason(code: int) -> str:
    """A firmware reason code in words."""
    if FwReason.EXCEPTION <= code < FwReason.EXCEPTION + 32:
        return f"unhandled exception #{vector_name(code - FwReason.EXCEPTION)}"
    text = FW_REASON_TEXT.get(code)
    return text if text is not None else f"unknown firmware reason {code:#x}"
