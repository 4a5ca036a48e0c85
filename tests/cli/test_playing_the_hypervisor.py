"""Issue 17, "Playing the hypervisor": --hv files behave as the docs say."""

from __future__ import annotations

from .conftest import one_line_error

# The sevx86.hv docstring's example: a subclass with its own name.
LYING_CBIT = """\
from sevx86.hv import Hypervisor


class LyingCbit(Hypervisor):
    def handle_cpuid(self, req):
        from sevx86.hv.handlers import cpuid

        leaf = req.reg("rax") & 0xFFFFFFFF
        cpuid(self, req)
        if leaf == 0x8000001F:
            req.set_reg("rbx", (req.reg("rbx") & ~0x3F) | 47)
"""

RAISING_HOOK = """\
from sevx86.arch.ghcb import GhcbMsr


def setup(hv):
    def hook(req, proceed):
        raise ValueError("oops in my hook")

    hv.on_msr_protocol(GhcbMsr.SEV_INFO_REQ, hook)
"""

SEV_ES_ONLY = """\
from sevx86.arch.exits import SwExit
from sevx86.arch.ghcb import GhcbMsr


def setup(hv):
    hv.on_msr_protocol(GhcbMsr.SEV_INFO_REQ, lambda req, proceed: proceed())
    hv.on_vmgexit(SwExit.MMIO_READ, lambda req, proceed: proceed())
"""


def test_i17_hv_loader_finds_a_hypervisor_subclass_of_any_name(sevx86, tmp_path):
    (tmp_path / "lying.py").write_text(LYING_CBIT)
    done = sevx86("run", "example:hello", "--mode", "sev", "--hv", "lying.py")
    # The subclass ran: CPUID said C-bit 47, and the firmware's check caught it.
    assert done.returncode == 120, done.stderr
    assert "code 0xc" in one_line_error(done, "run")


def test_i17_two_subclasses_ask_which_one(sevx86, tmp_path):
    two = LYING_CBIT + "\n\nclass Other(LyingCbit):\n    pass\n"
    (tmp_path / "two.py").write_text(two)
    done = sevx86("run", "example:hello", "--mode", "sev", "--hv", "two.py")
    assert done.returncode == 2
    line = one_line_error(done, "run")
    assert "LyingCbit, Other" in line and "Hypervisor = " in line


def test_i17_an_exception_in_a_hook_names_the_file_and_line(sevx86, tmp_path):
    (tmp_path / "hook.py").write_text(RAISING_HOOK)
    done = sevx86("run", "example:hello", "--hv", "hook.py")
    assert done.returncode == 118
    line = one_line_error(done, "run")
    assert "ValueError: oops in my hook" in line
    assert "(at hook.py:6 in hook)" in line


def test_i17_an_error_while_loading_the_file_names_the_line(sevx86, tmp_path):
    (tmp_path / "bad.py").write_text("x = 1\nundefined_name\n")
    done = sevx86("run", "example:hello", "--hv", "bad.py")
    assert done.returncode == 2
    assert "--hv bad.py:2: NameError" in one_line_error(done, "run")


def test_i17_sev_es_only_hooks_warn_in_mode_none(sevx86, tmp_path):
    (tmp_path / "es.py").write_text(SEV_ES_ONLY)
    done = sevx86("run", "example:hello", "--mode", "none", "--hv", "es.py")
    assert done.returncode == 0
    warnings = [w for w in done.stderr.splitlines() if w.startswith("sevx86: warning: ")]
    assert len(warnings) == 2, done.stderr
    assert "on_msr_protocol(SEV_INFO_REQ) never fires under --mode none" in warnings[0]
    assert "on_vmgexit(MMIO_READ) never fires" in warnings[1]
    quiet = sevx86("run", "example:hello", "--hv", "es.py")  # sev-es: they can fire
    assert (quiet.returncode, quiet.stderr) == (0, "")


def test_i17_hv_on_a_directory_says_it_is_a_directory(sevx86, tmp_path):
    (tmp_path / "hooks").mkdir()
    done = sevx86("run", "example:hello", "--hv", "hooks")
    assert done.returncode == 2
    assert "--hv hooks: is a directory" in one_line_error(done, "run")


REFUSE_CPUID = """\
from sevx86.arch.exits import SvmExit
from sevx86.arch.ghcb import GhcbError


def setup(hv):
    def refuse(req, proceed):
        req.error(GhcbError.INVALID_INPUT, "no CPUID today")

    hv.on_vmgexit(SvmExit.CPUID, refuse)
"""

# CPUID is the payload's first instruction: the firmware enters it at 0x100000.
CPUID_FIRST = "start:\n    cpuid\n    hlt\n"

FLIP_VMSA = """\
from sevx86.hv import EXIT_TABLE


def setup(hv):
    seen = [0]

    def count(ctx, proceed):
        seen[0] += 1
        if seen[0] == 10:  # after the tenth exit, change a byte of the VMSA
            gpa = ctx.vcpu.vmsa_gpa + 0x10
            byte = ctx.hv.host.memory.read(gpa, 1)[0]
            ctx.hv.host.memory.write(gpa, bytes([byte ^ 1]))
        proceed()

    for code in EXIT_TABLE:
        hv.on_exit(code, count)
"""


def test_i17_a_handler_refusal_is_explained_with_the_exit_and_rip(sevx86, tmp_path):
    (tmp_path / "refuse.py").write_text(REFUSE_CPUID)
    (tmp_path / "guest.S").write_text(CPUID_FIRST)
    done = sevx86("run", "guest.S", "--hv", "refuse.py")
    assert done.returncode == 120
    line = one_line_error(done, "run")
    assert "reason set 2 code 0x2 (#VC handler: HV_ERROR: the hypervisor answered" in line
    assert "(-v names the #VC)" in line
    verbose = sevx86("run", "guest.S", "--hv", "refuse.py", "-v")
    assert "while serving the CPUID #VC at RIP 0x100000" in verbose.stderr


def test_i17_a_vmsa_integrity_failure_names_the_vcpu_and_the_exit(sevx86, tmp_path):
    (tmp_path / "flip.py").write_text(FLIP_VMSA)
    done = sevx86("run", "example:hello", "--hv", "flip.py")
    assert done.returncode == 122
    line = one_line_error(done, "run")
    assert "VMRUN failed (vCPU 0, at its entry after exit 10 of the run)" in line
    assert "VMSA integrity" in line
