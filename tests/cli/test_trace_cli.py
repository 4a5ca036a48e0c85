"""``sevx86 trace``: the early-boot timeline as a table, JSON Lines and Mermaid."""

from __future__ import annotations

import json

from .conftest import one_line_error


def test_table_shows_the_sev_es_early_boot(sevx86):
    done = sevx86("trace", "example:hello")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "CPUID 0x8000001f EBX -> 0x73 (cbitpos 51, reduced-phys-bits 1)" in out
    assert "paging on (long mode, 4-level, CR3 0x2000): C-bit 51" in out
    assert "GHCB registered at 0x9000" in out
    assert "VMGEXIT IOIO: OUTS port 0x3f8" in out
    assert "serial: Hello from an SEV-ES guest (C-bit 51)!" in out
    assert "world-switch" not in out  # only with --all
    order = [out.index(s) for s in ("#VC CPUID", "cbitpos 51", "paging on", "GHCB registered")]
    assert order == sorted(order)


def test_json_lines_filtered_by_kind_and_limited(sevx86):
    done = sevx86("trace", "example:hello", "--json", "--kinds", "vc,msr-protocol", "--limit", "5")
    assert done.returncode == 0
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(events) == 5
    assert {e["kind"] for e in events} == {"vc", "msr-protocol"}
    assert events[0]["kind"] == "vc" and events[0]["data"]["name"] == "CPUID"


def test_mermaid_sequence_diagram_of_guest_cpu_sp_hypervisor(sevx86, tmp_path):
    done = sevx86("trace", "example:cpuid", "--mermaid", "-o", "cpuid.mmd", "--limit", "60")
    assert (done.returncode, done.stdout) == (0, "")
    text = (tmp_path / "cpuid.mmd").read_text()
    assert text.startswith("sequenceDiagram\n")
    for participant in ("Guest", "CPU", "SP", "HV"):
        assert f"participant {participant} as" in text
    assert "CPU->>Guest: #35;VC CPUID" in text and "HV->>SP: LAUNCH_START" in text


def test_mode_none_has_no_sev_es_steps(sevx86):
    done = sevx86("trace", "example:hello", "--mode", "none", "--json")
    kinds = {json.loads(line)["kind"] for line in done.stdout.splitlines()}
    assert done.returncode == 0
    assert not kinds & {"vc", "msr-protocol", "ghcb-register", "vmgexit"}
    assert "paging" in kinds


def test_exit_status_and_errors_are_those_of_run(sevx86):
    done = sevx86("trace", "example:fault", "--kinds", "exception,terminate")
    assert done.returncode == 120
    assert "#PF" in done.stdout and "reason set 3 code 0x4e" in one_line_error(done, "trace")
    done = sevx86("trace", "missing.S")
    assert done.returncode == 2 and "no such file" in one_line_error(done, "trace")
    done = sevx86("trace", "example:hello", "--limit", "0")
    assert done.returncode == 2 and "--limit 0" in one_line_error(done, "trace")
    done = sevx86("trace", "example:hello", "--kinds", ",")
    assert done.returncode == 2 and "no event kinds" in one_line_error(done, "trace")


def test_help_lists_the_event_kinds(sevx86):
    done = sevx86("trace", "--help")
    assert done.returncode == 0
    for text in ("--mermaid", "msr-protocol", "ghcb-register", "paging", "exit status"):
        assert text in done.stdout


def test_help_lists_every_kind_the_code_emits(sevx86):
    from tests.trace.test_kinds import emitted_kinds

    done = sevx86("trace", "--help")
    for kind in emitted_kinds():
        assert f"\n  {kind} " in done.stdout, kind


def test_kinds_bogus_is_a_usage_error_naming_the_valid_kinds(sevx86):
    done = sevx86("trace", "example:hello", "--kinds", "vc,bogus")
    message = one_line_error(done, "trace")
    assert done.returncode == 2 and "unknown event kind bogus" in message
    assert "msr-protocol" in message and "ghcb-register" in message and done.stdout == ""
    done = sevx86("trace", "example:hello", "--exclude", "nonsense")
    assert done.returncode == 2 and "--exclude: unknown event kind nonsense" in done.stderr


def test_kinds_vc_exclude_vc_is_a_usage_error(sevx86):
    done = sevx86("trace", "example:hello", "--kinds", "vc", "--exclude", "vc")
    assert done.returncode == 2 and "leave no event kind" in one_line_error(done, "trace")
    assert done.stdout == ""


def test_the_launch_traces_itself_in_the_same_form_as_boot(sevx86):
    """run/trace (our firmware) and boot (OVMF) go through one launch: same LAUNCH_* events."""
    done = sevx86("trace", "example:hello", "--json", "--kinds", "launch")
    events = [json.loads(line) for line in done.stdout.splitlines()]
    steps = [e["summary"].split()[0] for e in events]
    assert steps == [
        "LAUNCH_START",
        "LAUNCH_UPDATE_DATA",
        "LAUNCH_UPDATE_VMSA",
        "LAUNCH_MEASURE:",
        "LAUNCH_FINISH",
    ]
    assert events[0]["actor"] == "hv" and events[0]["target"] == "sp"
    assert events[3]["actor"] == "sp" and len(events[3]["data"]["digest"]) == 64
