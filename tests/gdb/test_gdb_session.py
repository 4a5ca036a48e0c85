"""gdb -batch against a running ``sevx86 run --gdb``: the #VC walk-through and the debug policy.

Expectations come from the specs, not from the stub: a CPUID's #VC error
code is its SVM exit code 0x72 and the frame's RIP is the CPUID itself (APM
vol 2, 15.35.5 "#VC Exception"; appendix C); RAX sits at offset 0x1F8 of
the GHCB (GHCB spec 56421, table 3); a NODBG guest cannot be read through
DBG_DECRYPT (SEV API 55766), so the host sees DRAM ciphertext.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from sevx86.asm import assemble
from tests.gdb.conftest import RawClient, needs_gdb, run_under_gdb, started

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


@pytest.mark.parametrize(
    ("options", "plaintext", "registers"),
    [
        (("--mode", "none"), True, True),  # no encryption: everything
        (("--mode", "sev", "--policy", "0x0"), True, True),  # debuggable SEV
        (("--mode", "sev"), False, True),  # NODBG: ciphertext; SEV leaves registers to the host
    ],
)
def test_what_each_mode_lets_the_host_see(tmp_path, options, plaintext, registers):
    s = run_under_gdb(
        SECRET_S,
        ["break start", "continue", "x/8bx &secret", "info registers rip", "continue"],
        *options,
        tmp_path=tmp_path,
    )
    text = s.gdb.replace("\t", " ")
    assert (bytes(_hex_after("<secret>:", text)) == PLAINTEXT) is plaintext
    assert bool(re.search(r"rip\s+0x100000\s+0x100000 <start>", text)) is registers
    assert s.returncode == 0, s.stderr


def test_a_register_set_in_gdb_is_what_the_guest_runs_with(tmp_path):
    # Under SEV-ES the write goes through DBG_ENCRYPT of the VMSA: the exit
    # status the guest then writes is gdb's value.
    s = run_under_gdb(
        SECRET_S,
        ["hbreak the_out", "continue", "set $rax = 7", "continue"],
        "--policy",
        "0x4",
        tmp_path=tmp_path,
    )
    assert "exited with code 07" in s.gdb
    assert s.returncode == 7


def test_monitor_phys_reads_and_writes_guest_physical_memory(tmp_path):
    s = run_under_gdb(
        SECRET_S,
        [
            "break start",
            "continue",
            "monitor phys 0x100000 0x40",
            "monitor sev",
            'printf "secret at %#lx\\n", &secret',
            'eval "monitor phys-write %#lx 544f50", &secret',
            "x/s &secret",
            "set var *(char *)((long)&secret + 3) = '!'",
            "x/s &secret",
            "continue",
        ],
        "--policy",
        "0x4",
        tmp_path=tmp_path,
    )
    assert "top secret 1234!" in s.gdb
    assert "debuggable" in s.gdb
    assert '<secret>:\t"TOP secret 1234!"' in s.gdb  # written by physical address (DBG_ENCRYPT)
    assert '<secret>:\t"TOP!secret 1234!"' in s.gdb  # and by virtual address (an M packet)


def test_the_32_bit_phase_of_the_firmware(tmp_path):
    # reset.S leaves real mode for 32-bit protected mode at start32 (CR0.PE, APM vol 2, 14.4).
    s = run_under_gdb(
        SECRET_S,
        [
            "break start32",
            "continue",
            'printf "pe %d pc-ok %d\\n", $cr0 & 1, $pc == start32',
            "set architecture i386",
            "x/i $pc",
            "set architecture i386:x86-64",
            "delete",
            "continue",
        ],
        "--policy",
        "0x4",
        tmp_path=tmp_path,
    )
    assert "in start32 ()" in s.gdb
    assert "pe 1 pc-ok 1" in s.gdb
    assert "<start32>:" in s.gdb
    assert s.returncode == 0


SPIN_S = """
start:
    pause
    jmp start
leave:
    mov edx, 0xF4
    mov eax, 3
    out dx, eax
    hlt
"""


def test_ctrl_c_stops_a_running_guest(tmp_path):
    # A raw remote-protocol client (GDB manual E.10 "Interrupts": a 0x03 byte;
    # the stop reply then carries a signal), since gdb -batch cannot interrupt.
    spin = tmp_path / "spin.S"
    spin.write_text(SPIN_S)
    leave = assemble(SPIN_S, base=0x100000, bits=64).symbols["leave"]
    with started(spin, "--policy", "0x4", "--timeout", "120", tmp_path=tmp_path) as (proc, port):
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            client = RawClient(sock)
            assert client.ask(b"?").startswith(b"T05")  # stopped before the first instruction
            client.send(b"c")
            time.sleep(1.0)
            sock.sendall(b"\x03")
            reply = client.receive()
            assert reply.startswith(b"T02thread:1;"), reply  # SIGINT, vCPU 0
            pc = int.from_bytes(bytes.fromhex(client.ask(b"p10").decode()), "little")
            assert 0x100000 <= pc < leave  # inside the spin loop
            assert client.ask(b"P10=" + leave.to_bytes(8, "little").hex().encode()) == b"OK"
            assert client.ask(b"c") == b"W03"  # the guest left the loop where gdb sent it
        assert proc.wait(timeout=120) == 3


def test_kill_ends_the_run_of_a_spinning_guest(tmp_path):
    spin = tmp_path / "spin.S"
    spin.write_text(SPIN_S)
    with started(spin, "--policy", "0x4", tmp_path=tmp_path) as (proc, port):
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            client = RawClient(sock)
            assert client.ask(b"?").startswith(b"T05")
            client.send(b"k")  # E.3: no reply is required
        # No --timeout (none with --gdb): only the kill can end this run.
        rc = proc.wait(timeout=120)
    assert rc == 137  # as a shell reports SIGKILL


def test_read_watchpoint_on_the_shared_ghcb(tmp_path):
    # After VMGEXIT the handler reads the hypervisor's RAX from the GHCB
    # (offset 0x1F8, a C=0 page): a read watchpoint there stops in vc_do_cpuid.
    s = run_under_gdb(
        SECRET_S,
        [
            "break the_cpuid",
            "continue",
            "break vc_hv_call",
            "continue",
            f'eval "rwatch *(unsigned int *)%#lx", $rbx + {GHCB_RAX:#x}',  # a fixed address
            "continue",
            "info symbol $pc",
            "delete",
            "continue",
        ],
        "--policy",
        "0x4",
        tmp_path=tmp_path,
    )
    assert "read watchpoint" in s.gdb.lower(), s.gdb
    assert re.search(r"vc_do_cpuid(\.\w+)? \+ \d+ in section", s.gdb), s.gdb
    assert s.returncode == 0
