"""The README's shell sessions, run for real and compared with what they show.

A fenced block whose lines start with ``$ `` is a session: each ``$ CMD`` runs
(in a fresh folder, ``sevx86`` being this tree's CLI) and the lines under it
are its output, stdout and stderr together as a terminal shows them. Times
("0.015 s", "0.0073s") are compared as "<time>". A Python block that starts
with ``# NAME.py -- COMMAND  (status N...)`` is written to NAME.py first, and
COMMAND must exit with N.

``python -m tests.readme_samples --update`` rewrites every session's output
from a real run (after a change to the firmware, the examples or a message).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", ROOT / "firmware" / "README.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.DOTALL | re.MULTILINE)
FILE_HEADER = re.compile(r"^# (?P<name>[\w.-]+\.py) -- (?P<cmd>.+?)\s+\(status (?P<status>\d+)")
TIME = re.compile(r"\b\d+\.\d+ ?s\b")
MARK = "@@readme-sample@@"


@dataclass
class Session:
    doc: Path
    start: int  # offset of the block's body in the document
    end: int
    commands: list[str]
    outputs: list[list[str]]


@dataclass
class FileSample:
    name: str
    text: str
    command: str
    status: int


def parse(doc: Path) -> tuple[list[Session], list[FileSample]]:
    text = doc.read_text(encoding="utf-8")
    sessions, files = [], []
    for m in FENCE.finditer(text):
        lang, body = m.group(1), m.group(2)
        header = FILE_HEADER.match(body)
        if lang == "python" and header:
            files.append(FileSample(header["name"], body, header["cmd"], int(header["status"])))
            continue
        lines = body.splitlines()
        if not lines or not lines[0].startswith("$ "):
            continue
        commands: list[str] = []
        outputs: list[list[str]] = []
        for line in lines:
            if line.startswith("$ "):
                commands.append(line[2:])
                outputs.append([])
            else:
                outputs[-1].append(line)
        sessions.append(Session(doc, m.start(2), m.end(2), commands, outputs))
    return sessions, files


def _script(commands: list[str]) -> str:
    """bash: each command after a marker, with $? of the previous one kept."""
    out = [f'sevx86() {{ "{sys.executable}" -m sevx86.cli.main "$@"; }}', "__s=0"]
    for i, cmd in enumerate(commands):
        cmd = cmd.replace(".venv/bin/sevx86", "sevx86").replace("echo $?", "echo $__s")
        out += [f"echo '{MARK}{i}'", f"(exit $__s); {cmd} 2>&1; __s=$?"]
    return "\n".join(out) + "\n"


def run_commands(commands: list[str], files: list[FileSample], cwd: Path) -> list[list[str]]:
    for f in files:
        (cwd / f.name).write_text(f.text, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", COLUMNS="100")
    done = subprocess.run(
        ["bash", "-c", _script(commands)], cwd=cwd, env=env, capture_output=True, text=True
    )
    outputs: list[list[str]] = []
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            outputs.append([])
        elif outputs:
            outputs[-1].append(line)
    return outputs


def normalize(lines: list[str]) -> list[str]:
    return [TIME.sub("<time>", line.rstrip()) for line in lines]


def all_files() -> list[FileSample]:
    """The Python samples of every document (a session may use another's lie.py)."""
    return [f for doc in DOCUMENTS for f in parse(doc)[1]]


def update() -> None:
    files = all_files()
    for doc in DOCUMENTS:
        sessions, _ = parse(doc)
        text = doc.read_text(encoding="utf-8")
        for s in reversed(sessions):
            with tempfile.TemporaryDirectory() as tmp:
                outputs = run_commands(s.commands, files, Path(tmp))
            body = "".join(
                f"$ {cmd}\n" + "".join(line + "\n" for line in out)
                for cmd, out in zip(s.commands, outputs, strict=True)
            )
            text = text[: s.start] + body + text[s.end :]
        doc.write_text(text, encoding="utf-8")
        print(f"updated {doc.relative_to(ROOT)}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python -m tests.readme_samples --update")
    update()
