"""``sevx86 boot OVMF --gdb``: stopped at the reset vector, in real mode, through the debug door.

Independent expectations: the x86 reset state is CS=F000h, IP=FFF0h (AMD
APM vol 2, 14.1.3 "Processor Initialization State"); the bytes at the reset
vector are the last 16 bytes of the flash image (it is mapped to end at
4 GiB), read here through DBG_DECRYPT since the launch encrypted them.
"""

from __future__ import annotations

import re

import pytest

from tests.gdb.conftest import needs_gdb, run_under_gdb
from tests.ovmf import OVMF_CODE, needs_ovmf

pytestmark = [needs_gdb, needs_ovmf, pytest.mark.ovmf, pytest.mark.slow]


def test_boot_stops_at_the_reset_vector_in_real_mode(tmp_path):
    s = run_under_gdb(
        OVMF_CODE,
        [
            "info registers rip cs",
            "x/16bx 0xfffffff0",
            "stepi",
            'printf "after one step %#x\\n", $pc',
            "continue",
        ],
        "--until",
        "sec",
        "--policy",
        "0x4",
        "--quiet",
        tmp_path=tmp_path,
        subcommand="boot",
    )
    text = s.gdb.replace("\t", " ")
    assert re.search(r"rip\s+0xfff0\s", text) and re.search(r"cs\s+0xf000\s", text)
    rows = re.findall(r"0xffffff[f][08]:((?: 0x[0-9a-f]{2})+)", text)
    shown = bytes(int(b, 16) for row in rows for b in row.split())
    assert shown == OVMF_CODE.read_bytes()[-16:]
    # One real-mode instruction later: IP moved, still below 64 KiB.
    m = re.search(r"after one step (0x[0-9a-f]+)", text)
    assert m is not None and 0xFFF0 < int(m.group(1), 16) <= 0xFFFF
    assert "exited normally" in text
    assert s.returncode == 0, s.stderr
