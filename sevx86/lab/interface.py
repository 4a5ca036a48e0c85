"""Scenario 5, interface attacks (docs/lab/interface.md).

Radev and Morbitzer, "Exploiting Interfaces of Secure Encrypted Virtual
Machines", ROOTS 2020: the guest must learn about its own protection from
the host it does not trust -- CPUID, the GHCB MSR protocol, which pages
are memory and which are devices, what a device answers. Each lie here is
told through public hooks only (``hv.cpuid`` replaced by a lying table,
``on_msr_protocol``, ``on_request``, ``HostView.memory.set_trapping``):

* the C-bit position, inconsistently (CPUID 0x8000001F says one bit, the
  SEV information of the GHCB MSR protocol the true one) and consistently
  (both agree on a wrong bit), to sevx86's firmware during early boot;
* SEV or SEV-ES denied in CPUID after the guest has taken a #VC;
* a private page of the guest turned into "MMIO", so that a store to it
  would reach the host through the #VC handler;
* an MMIO read answered with a record count that overruns the guest's
  buffer, and with one that is merely false.

For each the report says whether the guest went on (the attack worked),
or how it stopped: a termination request with its reason set and code, a
triple fault, or the guest's own refusal.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sevx86.arch.cpuid import CBIT_POS_MASK, Leaf, MemEncryptEax
from sevx86.arch.exits import SwExit
from sevx86.arch.ghcb import GhcbMsr, decode_sev_info, msr_sev_info_response
from sevx86.asm import assemble
from sevx86.asm import fw_abi as abi
from sevx86.asm.guest_abi import GUEST_ASM_REASON_SET, VcReason
from sevx86.boot.firmware import boot_machine
from sevx86.config import GuestConfig, GuestMode, MiB
from sevx86.hv import Hypervisor, Request, RunReason, RunResult
from sevx86.hv.devices.mmio_test import MMIO_TEST_BASE, REG_SCRATCH
from sevx86.lab.guest import MODES, lab_source, launch
from sevx86.lab.report import ModeOutcome, Report
from sevx86.lab.scenario import Scenario

LEAF_EAX_SEV = int(MemEncryptEax.SEV)  # CPUID 0x8000001F EAX bits (AMD APM vol 3, E.4.17)
LEAF_EAX_SEV_ES = int(MemEncryptEax.SEV_ES)
PAYLOAD_MARK = "payload reached"  # what guest_asm/lab/iface_payload.S prints
FIRMWARE_MEMORY = 16 * MiB

SECRET = 0x5EC2_E7D0_0DF0_0D17  # private_mmio.S's value: fixed, the scenario has no choice to make
RECORDS = 4  # mmio_steer.S
BUFFER_ENTRIES = 8
STATUS_REFUSED = 0x33
CANARY = 0xC0FFEE0DDBA11
# The line firmware/ prints before it halts when it cannot terminate through the GHCB
# (firmware/README.md; sevx86.cli.common reads it the same way).
FIRMWARE_FATAL = re.compile(r"sevx86-fw: fatal: reason set 0x([0-9a-f]+) code 0x([0-9a-f]+)")


@dataclass(frozen=True)
class Verdict:
    """How one lie ended."""

    went_on: bool  # the guest carried on as if the lie were true
    how: str  # the ending in words, with the reason code where there is one
    reason_set: int | None = None
    reason_code: int | None = None

    def text(self) -> str:
        return ("not detected: " if self.went_on else "stopped: ") + self.how


def termination_text(reason_set: int | None, code: int | None) -> str:
    if reason_set == abi.FW_REASON_SET and code is not None:
        return f"set {reason_set} code {code:#x}, firmware: {abi.describe_reason(code)}"
    if reason_set == GUEST_ASM_REASON_SET and code is not None:
        try:
            name = VcReason(code).name
        except ValueError:
            name = "unknown"
        return f"set {reason_set} code {code:#x}, #VC handler: {name}"
    return f"set {reason_set} code {code}"


def verdict_of(result: RunResult, went_on: bool) -> Verdict:
    if went_on:
        return Verdict(True, f"guest ran on ({result.reason.value} {result.exit_status})")
    t = result.termination
    if result.reason is RunReason.TERMINATED and t is not None:
        how = f"terminated ({termination_text(t.reason_set, t.reason_code)})"
        return Verdict(False, how, t.reason_set, t.reason_code)
    if result.reason is RunReason.SHUTDOWN:
        return Verdict(False, "shutdown (triple fault)")
    fatal = FIRMWARE_FATAL.findall(result.console)
    if result.reason is RunReason.HALTED and fatal:
        # Without SEV-ES the firmware cannot ask to terminate: it reports and halts.
        reason_set, code = (int(x, 16) for x in fatal[-1])
        how = f"halted after the firmware's report ({termination_text(reason_set, code)})"
        return Verdict(False, how, reason_set, code)
    return Verdict(False, f"{result.reason.value}: {result.detail.splitlines()[0][:80]}")


# -- lies to the firmware during early boot -----------------------------------------------
def lying_cpuid(hv: Hypervisor, *, cbit: int | None = None, clear_eax: int = 0) -> None:
    """Replace ``hv.cpuid`` with a table whose 0x8000001F lies (every CPUID path reads it)."""
    eax, ebx, ecx, edx = hv.cpuid.raw(Leaf.MEM_ENCRYPT)
    if cbit is not None:
        ebx = (ebx & ~CBIT_POS_MASK) | cbit
    lie = (eax & ~clear_eax, ebx, ecx, edx)
    hv.cpuid = hv.cpuid.with_entries({(int(Leaf.MEM_ENCRYPT), None): lie})


def lying_sev_info(hv: Hypervisor, cbit: int) -> None:
    """Answer the GHCB MSR protocol's SEV information with another C-bit (GHCB spec 56421)."""

    def lie(req, proceed) -> None:
        proceed()
        if req.response is not None:
            info = decode_sev_info(req.response)
            req.response = msr_sev_info_response(info.max_version, info.min_version, cbit)

    hv.on_msr_protocol(GhcbMsr.SEV_INFO_REQ, lie)


def boot_with_lies(
    mode: str,
    *,
    cpuid_cbit: int | None = None,
    info_cbit: int | None = None,
    clear_eax: int = 0,
) -> Verdict:
    """sevx86's firmware with guest_asm/lab/iface_payload.S, told the given lies."""
    payload = assemble(
        lab_source("iface_payload"), base=abi.PAYLOAD_GPA, name="lab/iface_payload.S"
    )
    config = GuestConfig(mode=GuestMode(mode), memory=FIRMWARE_MEMORY)
    booted = boot_machine(payload.code, config)
    hv = Hypervisor(booted.machine.host_view())
    if cpuid_cbit is not None or clear_eax:
        lying_cpuid(hv, cbit=cpuid_cbit, clear_eax=clear_eax)
    if info_cbit is not None:
        lying_sev_info(hv, info_cbit)
    result = hv.run(timeout=60)
    return verdict_of(result, PAYLOAD_MARK in result.console)


# -- a private page as MMIO ------------------------------------------------------------------
def private_page_as_mmio(mode: str) -> tuple[Verdict, bool]:
    """(verdict, did the host read the secret) for a store to a page the host made trapping."""
    guest = launch("private_mmio", mode, defines={"SECRET": SECRET})
    learned: list[bytes] = []

    def emulate_store(req: Request, proceed) -> None:
        data = req.read_data(8)
        if data is not None:
            learned.append(data)  # and swallow it, as if a device had taken it

    guest.hv.on_request(SwExit.MMIO_WRITE, emulate_store)
    guest.hv.host.memory.set_trapping(guest.symbol("private_var"), 0x1000)
    result = guest.hv.run(timeout=60)
    read_secret = SECRET.to_bytes(8, "little") in learned
    return verdict_of(result, result.reason is RunReason.EXIT_STATUS), read_secret


# -- steering MMIO answers ------------------------------------------------------------------
def steered_count(mode: str, answer: int, *, bounds_check: bool) -> tuple[Verdict, bool]:
    """(verdict, canary intact) when the device's echo of the record count is ``answer``."""
    defines = {"BOUNDS_CHECK": 1} if bounds_check else {}
    guest = launch("mmio_steer", mode, defines=defines, mmio=(MMIO_TEST_BASE,))

    def steer(req: Request, proceed) -> None:
        if req.info1 == MMIO_TEST_BASE + REG_SCRATCH:  # GPA in EXITINFO1, size in EXITINFO2
            req.write_data(answer.to_bytes(8, "little")[: req.info2])
        else:
            proceed()

    guest.hv.on_request(SwExit.MMIO_READ, steer)
    result = guest.hv.run(timeout=60)
    intact = guest.private_u64("canary") == CANARY
    if result.reason is RunReason.EXIT_STATUS and result.exit_status == STATUS_REFUSED:
        return Verdict(
            False, f"refused by the guest's own check (status {STATUS_REFUSED:#x})"
        ), intact
    went_on = result.reason is RunReason.EXIT_STATUS
    how = f"guest used count {result.exit_status}" + ("" if intact else ", canary overwritten")
    return (Verdict(True, how) if went_on else verdict_of(result, False)), intact


def run_mode(mode: str) -> ModeOutcome:
    figures: dict = {}
    if mode == "none":
        figures["true C-bit"] = "none (no encryption)"
        for row in BOOT_LIES:
            figures[row] = "n/a: no encryption, no C-bit"
    else:
        figures["true C-bit"] = GuestConfig(mode=GuestMode(mode)).cbitpos
        figures.update(
            {
                row: boot_with_lies(mode, **lies).text()
                if mode == "sev-es" or "clear_eax" not in lies
                else "n/a: no #VC without SEV-ES"
                for row, lies in BOOT_LIES.items()
            }
        )
    verdict, read_secret = private_page_as_mmio(mode)
    figures["private page mapped as MMIO"] = verdict.text()
    figures["host read the stored secret"] = read_secret
    for row, (answer, check) in STEERING.items():
        figures[row] = steered_count(mode, answer, bounds_check=check)[0].text()
    verdicts = {
        "none": "the host is the guest's only source of truth about its platform",
        "sev": "the host sees every store it emulates; a C-bit lie ends the boot, detected or not",
        "sev-es": "inconsistent or impossible answers are refused with a reason code, a private "
        "page is never sent as MMIO; plausible device answers pass",
    }
    return ModeOutcome(mode, figures, verdicts[mode])


# The lies told to the firmware, by row: keyword arguments of boot_with_lies.
BOOT_LIES: dict[str, dict[str, int]] = {
    "C-bit lie, inconsistent (CPUID 47)": {"cpuid_cbit": 47},
    "C-bit lie, consistent (47)": {"cpuid_cbit": 47, "info_cbit": 47},
    "C-bit lie, consistent (40, inside the address width)": {"cpuid_cbit": 40, "info_cbit": 40},
    "SEV-ES denied after a #VC": {"clear_eax": LEAF_EAX_SEV_ES},
    "SEV denied after a #VC": {"clear_eax": LEAF_EAX_SEV},
}
# The device answers, by row: (record count answered, guest checks it).
STEERING: dict[str, tuple[int, bool]] = {
    "MMIO count 64, no guest check": (64, False),
    "MMIO count 64, guest bounds check": (64, True),
    "MMIO count 7 (plausible), guest bounds check": (7, True),
}


def run(modes: Sequence[str], seed: int) -> Report:
    report = Report(
        "interface",
        "interface attacks: C-bit lies, SEV-ES denied, private MMIO, steered MMIO",
        "The host lies to sevx86's firmware about the C-bit (inconsistently: CPUID 47, SEV "
        "information true; consistently: both 47, or both 40) and denies SEV-ES or SEV in CPUID "
        "after the guest took a #VC; it turns a private page of the guest into MMIO; it answers "
        "a device read with a record count that overruns the guest's 8-entry buffer (64) or is "
        "only false (7).",
        seed,
    )
    report.outcomes = [run_mode(mode) for mode in modes]
    report.notes.append(
        "The seed plays no part. What Linux and OVMF do for each: docs/lab/interface.md."
    )
    return report


SCENARIO = Scenario(
    "interface",
    "interface attacks: C-bit lies, SEV-ES denied, private MMIO, steered MMIO",
    MODES,
    run,
    "docs/lab/interface.md",
)
