"""Issue 17, "Traces": the Mermaid diagram parses and draws the seed talk's CPUID flow."""

from __future__ import annotations

import re

# What Mermaid 11's sequence-diagram grammar accepts in the lines we write: a
# '#' only as an entity code (#35;), no ';' (it ends a statement).
LINE = re.compile(
    r"^    (title .+|participant \w+ as [^;]+|\w+->>\w+: [^;]*|Note over \w+: [^;]*)$"
)
ENTITY = re.compile(r"#\w+;")


def _check(diagram: str) -> list[str]:
    lines = diagram.splitlines()
    assert lines[0] == "sequenceDiagram"
    for line in lines[1:]:
        bare = ENTITY.sub("", line)  # entity codes are how Mermaid spells '#', ';', '<' ...
        assert LINE.match(bare) and "#" not in bare, line
    return lines[1:]


def test_i17_the_guest_participant_label_survives_mermaid(sevx86):
    done = sevx86("trace", "example:cpuid", "--mermaid", "--limit", "20")
    assert done.returncode == 0, done.stderr
    lines = _check(done.stdout)
    assert "    participant Guest as Guest (code + #35;VC handler)" in lines


def test_i17_focus_draws_one_cpuid_round_trip_as_on_slide_11(sevx86):
    done = sevx86("trace", "example:cpuid", "--all", "--focus", "CPUID:9", "--mermaid")
    assert done.returncode == 0, done.stderr
    arrows = [line.split(":")[0].strip() for line in _check(done.stdout) if "->>" in line]
    # #VC to the guest ... guest -> GHCB -> VMGEXIT, the hypervisor reads the GHCB
    # and answers there, VMRUN, and the guest resumes.
    expected = [
        "CPU->>Guest",  # the #VC
        "Guest->>CPU",  # the handler points the GHCB MSR at its page
        "Guest->>GHCB",
        "Guest->>CPU",
        "CPU->>SP",
        "CPU->>HV",
        "GHCB->>HV",
        "HV->>GHCB",
        "HV->>CPU",
        "SP->>CPU",
        "CPU->>Guest",
    ]
    assert arrows == expected


def test_i17_focus_on_an_exit_that_never_happens_is_empty_not_everything(sevx86):
    done = sevx86("trace", "example:hello", "--focus", "MWAIT")
    assert done.returncode == 0
    assert len(done.stdout.splitlines()) == 2  # the table's header only
