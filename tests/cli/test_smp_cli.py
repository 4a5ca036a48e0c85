"""Several vCPUs from the command line: --vcpus, --scheduler, --seed, --quantum, --ap-start."""

from __future__ import annotations

from .conftest import json_lines

HELLO_4 = [
    "sevx86-fw: AP 1 up",
    "sevx86-fw: AP 2 up",
    "sevx86-fw: AP 3 up",
    "Hello from an SEV-ES guest (C-bit 51) with 4 vCPUs!",
]


def test_run_hello_on_four_vcpus(sevx86):
    done = sevx86("run", "example:hello", "--vcpus", "4")
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    lines = done.stdout.splitlines()
    assert sorted(line.partition(",")[0] for line in lines[:3]) == HELLO_4[:3]
    assert lines[3] == HELLO_4[3]
    parallel = sevx86("run", "example:hello", "--vcpus", "4", "--scheduler", "parallel")
    assert parallel.returncode == 0 and parallel.stdout.splitlines()[-1] == HELLO_4[3]


def test_trace_says_which_vcpu_did_what_and_a_seed_repeats_it(sevx86, tmp_path):
    args = ("example:hello", "--vcpus", "2", "--seed", "3", "--quantum", "5000", "--json")
    first = sevx86("trace", *args, "-o", "a.jsonl")
    second = sevx86("trace", *args, "-o", "b.jsonl")
    assert first.returncode == second.returncode == 0
    a, b = json_lines(tmp_path / "a.jsonl"), json_lines(tmp_path / "b.jsonl")
    strip = [[(e["vcpu"], e["kind"], e["summary"]) for e in t] for t in (a, b)]
    assert strip[0] == strip[1]
    ap = [e for e in a if e["vcpu"] == 1]
    assert any(e["kind"] == "ghcb-register" and "0x20000" in e["summary"] for e in ap)
    assert any(e["kind"] == "console" and "AP 1 up" in e["summary"] for e in ap)
    assert any(e["kind"] == "ap-reset-hold" for e in ap)
    mermaid = sevx86(
        "trace", "example:hello", "--vcpus", "2", "--kinds", "ghcb-register", "--mermaid"
    )
    assert "vCPU1: GHCB registered at 0x20000" in mermaid.stdout


def test_aps_started_at_once_and_without_sev_es(sevx86):
    done = sevx86("run", "example:smp", "--vcpus", "3", "--ap-start", "run", "--mode", "none")
    assert done.returncode == 0
    assert done.stdout.splitlines()[-2:] == [
        "3 vCPU(s) up",
        "no AP jump table (it exists under SEV-ES only)",
    ]
