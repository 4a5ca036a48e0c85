"""The design the code cites is in the repository, with the sections it cites."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
SECTIONS = ("Trust boundary", "Memory model", "World switch", "Exit path", "Host-side layers")


def test_docs_design_has_the_sections_the_code_cites():
    headings = re.findall(r"^## (.+)$", DESIGN.read_text(), flags=re.M)
    assert set(SECTIONS) <= set(headings)
    cited: set[str] = set()
    for path in [*ROOT.glob("sevx86/**/*.py"), *ROOT.glob("tests/**/*.py")]:
        text = path.read_text()
        # A citation may wrap inside a comment: compare its words, not its line breaks.
        found = re.findall(r'docs/design\.md, "([^"]+)"', text)
        cited.update(" ".join(c.replace("#", " ").split()) for c in found)
    assert cited and cited <= set(headings), cited - set(headings)


def test_no_comment_outside_the_cpu_engine_cites_a_design_file_that_is_not_here():
    allowed = ("sevx86/cpu/", "sevx86/memory/", "sevx86/machine.py")  # the engine rework's
    stale = [
        str(p.relative_to(ROOT))
        for p in [*ROOT.glob("sevx86/**/*.py"), *ROOT.glob("tests/**/*.py")]
        if "DESIGN.md" in p.read_text()
        and not str(p.relative_to(ROOT)).startswith(allowed)
        and p.name != "test_design_doc.py"
    ]
    assert not stale, stale
