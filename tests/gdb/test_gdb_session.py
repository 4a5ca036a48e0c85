"""gdb -batch against a running ``sevx86 run --gdb``: the #VC walk-through and the debug policy.

Expectations come from the specs, not from the stub: a CPUID's #VC error
code is its SVM exit code 0x72 and the frame's RIP is the CPUID itself (APM
vol 2, 15.35.5 "#VC Exception"; appendix C); RAX sits at offset 0x1F8 of
the GHCB (GHCB spec 56421, table 3); a NODBG guest cannot be read through
DBG_DECRYPT (SEV API 55766), so the host sees DRAM ciphertext.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.gdb.conftest import needs_gdb, run_under_gdb

pytestmark = [needs_gdb, pytest.mark.slow]

SECRET_S = Path(__file__).with_name("secret.S")
PLAINTEXT = b"top secr"
SVM_EXIT_CPUID = 0x72
GHCB_RAX = 0x1F8


def _hex_after(label: str, text: str) -> list[int]:
    m = re.search(re.escape(label) + r"((?: 0x[0-9a-f]+)+)", text)
    assert m is not None, f"{label!r} not in gdb's output:\n{text}"
    return [int(x, 16) for x in m.group(1).split()]


def test_vc_handler_step_by_step(tmp_path):
    s = run_under_gdb(
        SECRET_S,
        [
            "break the_cpuid",
            "continue",
            'printf "cpuid at %#lx\\n", $pc',
            "break vc_handler",
            "continue",
            'printf "frame %#lx %#lx\\n", *(long *)$rsp, *(long *)($rsp + 8)',
            "stepi",
            "info symbol $pc",
            "break vc_hv_call",
            "continue",
            f'printf "ghcb rax %#x\\n", *(unsigned int *)($rbx + {GHCB_RAX:#x})',
            "delete",
            "break after_cpuid",
            "continue",
            'printf "back at %#lx\\n", $pc',
            "watch *(long *)&scratch",
            "continue",
            'printf "watch pc %#lx\\n", $pc',
            "info symbol $pc",
            "delete",
            "continue",
        ],
        "--policy",
        "0x4",
        tmp_path=tmp_path,
    )
    out = s.gdb
    (cpuid_at,) = _hex_after("cpuid at", out)
    error_code, frame_rip = _hex_after("frame", out)
    assert error_code == SVM_EXIT_CPUID
    assert frame_rip == cpuid_at
    assert "vc_handler + " in out  # one instruction into the handler
    assert _hex_after("ghcb rax", out) == [0x8000001F]  # the payload's leaf, in the shared GHCB
    (back_at,) = _hex_after("back at", out)
    assert back_at == cpuid_at + 2  # CPUID is 0F A2; the handler advanced RIP past it
    assert "atchpoint" in out and "New value" in out
    assert "after_store in section" in out  # reported after the store, on the next instruction
    assert "exited normally" in out
    assert s.returncode == 0, s.stderr


def test_debuggable_policy_shows_the_plaintext(tmp_path):
    s = run_under_gdb(
        SECRET_S,
        ["break start", "continue", "x/8bx &secret", "info registers rip", "continue"],
        "--policy",
        "0x4",
        tmp_path=tmp_path,
    )
    shown = bytes(_hex_after("<secret>:", s.gdb.replace("\t", " ")))
    assert shown == PLAINTEXT
    assert re.search(r"rip\s+0x100000\s+0x100000 <start>", s.gdb)  # from a DBG_DECRYPT of the VMSA
    assert "NODBG" not in s.stderr
    assert s.returncode == 0


def test_nodbg_shows_ciphertext_and_refuses_registers(tmp_path):
    s = run_under_gdb(
        SECRET_S,
        ["break start", "continue", "x/8bx &secret", "info registers rax rsp cr3", "continue"],
        tmp_path=tmp_path,
    )  # fmt: skip
    text = s.gdb.replace("\t", " ")
    shown = bytes(_hex_after("<secret>:", text))
    assert shown != PLAINTEXT
    for reg in ("rax", "rsp", "cr3"):
        assert re.search(reg + r"\s+<unavailable>", text), text
    # Said once, with the SP's answer.
    assert s.stderr.count("POLICY_FAILURE") == 1 and "NODBG" in s.stderr
    assert s.returncode == 0


def test_nodbg_bytes_are_the_hosts_dram(tmp_path):
    s = run_under_gdb(
        SECRET_S,
        ["break start", "continue", "x/8bx &secret", "monitor dram 0x100000 0x40", "continue"],
        tmp_path=tmp_path,
    )
    text = s.gdb.replace("\t", " ")
    shown = _hex_after("<secret>:", text)
    # monitor dram prints hexdump rows; the secret is 16-byte aligned in the payload.
    rows = re.findall(r"0x0*(1000[0-9a-f]0)  ((?:[0-9a-f]{2} ?){16})", text)
    dram = {int(a, 16): bytes.fromhex(b.replace(" ", "")) for a, b in rows}
    assert any(row[:8] == bytes(shown) for row in dram.values()), text


def test_one_thread_per_vcpu_and_breakpoints_on_the_ap(tmp_path):
    s = run_under_gdb(
        SECRET_S,
        ["break ap_entry64", "continue", "info threads", 'printf "thread %d\\n", $_thread',
         "delete", "continue"],
        "--policy",
        "0x4",
        "--vcpus",
        "2",
        tmp_path=tmp_path,
    )  # fmt: skip
    out = s.gdb
    assert "vCPU 0 (BSP)" in out and "vCPU 1 (AP)" in out
    # Set before the AP existed, hit on the AP after INIT-SIPI-SIPI and its world switches.
    assert "Thread 2 hit Breakpoint 1, " in out and "in ap_entry64" in out
    assert "thread 2\n" in out
    assert s.returncode == 0, s.stderr
