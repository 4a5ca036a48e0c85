"""Issue 17: the README's examples are run, and their shown output compared."""

from __future__ import annotations

import pytest

from tests.readme_samples import DOCUMENTS, normalize, parse, run_commands

SESSIONS = [(doc, s) for doc in DOCUMENTS for s in parse(doc)[0]]
FILES = [f for doc in DOCUMENTS for f in parse(doc)[1]]  # lie.py ... for every session


@pytest.mark.slow  # each session is a few sevx86 processes
@pytest.mark.parametrize(
    ("doc", "session"),
    SESSIONS,
    ids=[f"{d.parent.name}/{d.name}:{s.commands[0]}" for d, s in SESSIONS],
)
def test_i17_readme_sessions_print_what_they_show(tmp_path, doc, session):
    got = run_commands(session.commands, FILES, tmp_path)
    for cmd, shown, out in zip(session.commands, session.outputs, got, strict=True):
        assert normalize(out) == normalize(shown), (
            f"{doc.name}: `$ {cmd}` printed something else; regenerate with "
            "python -m tests.readme_samples --update"
        )


@pytest.mark.slow
@pytest.mark.parametrize("sample", FILES, ids=[f.name for f in FILES])
def test_i17_readme_hypervisor_files_run_with_the_status_they_state(tmp_path, sample):
    got = run_commands([sample.command, "echo $?"], FILES, tmp_path)
    assert got[-1] == [str(sample.status)], got


def test_i17_the_readme_has_sessions_to_check():
    assert len(SESSIONS) >= 3 and FILES
