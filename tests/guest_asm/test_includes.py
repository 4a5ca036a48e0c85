"""guest_asm/include/*.inc are generated from sevx86.arch and must stay in step."""

from __future__ import annotations

import re

from sevx86.arch.exits import SvmExit, SwExit
from sevx86.arch.ghcb import GHCB, GhcbMsr, valid_bit
from sevx86.arch.msr import Msr
from sevx86.asm import assemble
from sevx86.asm.gen_includes import include_dir, main, render_includes, stale_files

_DEFINE = re.compile(r"^%define (\w+) (\S+)", re.M)


def _defines() -> dict[str, int]:
    out: dict[str, int] = {}
    for text in render_includes().values():
        for name, value in _DEFINE.findall(text):
            out[name] = int(value, 0)
    return out


def test_checked_in_includes_equal_a_fresh_render():
    folder = include_dir()
    for name, text in render_includes().items():
        assert (folder / name).read_text(encoding="utf-8") == text, (
            f"guest_asm/include/{name} is stale: run python -m sevx86.asm.gen_includes"
        )
    assert stale_files() == []


def test_no_hand_written_file_in_the_generated_folder():
    assert sorted(p.name for p in include_dir().glob("*.inc")) == sorted(render_includes())


def test_values_come_from_the_arch_definitions():
    d = _defines()
    assert d["GHCB_SW_EXITCODE"] == GHCB["sw_exit_code"].offset == 0x390
    assert d["GHCB_SW_SCRATCH"] == 0x3A8
    assert d["GHCB_VALID_RAX"] == valid_bit("rax") == 0x1F8 // 8
    assert d["GHCB_VALID_XCR0"] == valid_bit("xcr0")
    assert d["GHCB_VALID_BITMAP"] == 0x3F0
    assert d["GHCB_SHARED_BUFFER"] == 0x800 and d["GHCB_SHARED_BUFFER_SIZE"] == 0x7F0
    assert d["GHCB_PROTOCOL_VERSION"] == 0xFFA and d["GHCB_USAGE"] == 0xFFC
    assert d["SVM_EXIT_CPUID"] == SvmExit.CPUID == 0x72
    assert d["SVM_EXIT_NPF"] == 0x400
    assert d["SW_EXIT_MMIO_WRITE"] == SwExit.MMIO_WRITE
    assert d["MSR_GHCB"] == Msr.SEV_ES_GHCB == 0xC0010130
    assert d["GHCB_MSR_CPUID_REQ"] == GhcbMsr.CPUID_REQ == 0x004
    assert d["GHCB_MSR_TERM_REQ"] == 0x100


def test_every_include_assembles_twice_in_one_program():
    source = "".join(f'%include "include/{name}"\n' for name in render_includes()) * 2
    source += "start:\n mov rax, GHCB_SW_EXITINFO2\n mov ecx, MSR_GHCB\n"
    program = assemble(source, base=0x1000)
    assert program.symbol("start") == 0x1000


def test_check_mode_reports_a_stale_copy(tmp_path, capsys):
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "ghcb.inc").write_text("; edited by hand\n")
    assert main(["--out", str(tmp_path), "--check"]) == 1
    assert "ghcb.inc" in capsys.readouterr().err
