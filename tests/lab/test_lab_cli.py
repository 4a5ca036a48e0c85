"""``sevx86 lab`` through ``sevx86.cli.main.main``: listing, JSON, one-line errors."""

from __future__ import annotations

import json

import pytest

from sevx86.cli.main import main
from sevx86.lab import SCENARIOS


def test_list_names_every_scenario(capsys):
    assert main(["lab", "--list"]) == 0
    out = capsys.readouterr().out
    for name in SCENARIOS:
        assert name in out
    assert main(["lab", "--list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(SCENARIOS)


def test_json_report_parses_and_carries_the_figures(capsys):
    assert main(["lab", "cipherleaks", "--json", "--seed", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scenario"] == "cipherleaks" and report["seed"] == 2
    assert report["modes"]["sev-es"]["figures"]["bits recovered"] == 32


def test_one_mode_gives_one_column(capsys):
    assert main(["lab", "relocation", "--mode", "sev", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["modes"]) == ["sev"]


def test_cases_sets_the_size_of_a_sampling_scenario(capsys):
    assert main(["lab", "vmsa-tamper", "--mode", "sev-es", "--cases", "4", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)["modes"]["sev-es"]["figures"]
    assert figures["VMSA byte flips tried"] == 4
    assert figures["VMSA byte flips refused"] == 4


def test_table_output_has_a_column_per_mode(capsys):
    assert main(["lab", "regs-exfil"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("figure"))
    assert header.split()[1:] == ["none", "sev", "sev-es"]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["lab", "bogus"], ["no scenario 'bogus'", "cipherleaks"]),
        (["lab"], ["--list"]),
        (["lab", "cipherleaks", "--mode", "none"], ["sev-es only", "not none"]),
        (["lab", "regs-exfil", "--cases", "3"], ["regs-exfil takes no --cases"]),
    ],
)
def test_bad_usage_is_one_line_and_status_2(capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("sevx86 lab: ")
    for word in words:
        assert word in err


@pytest.mark.parametrize("argv", [["--seed", "x"], ["--seed", "-1"], ["--cases", "0"]])
def test_bad_numbers_are_refused_by_argparse(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(["lab", "host-fuzz", *argv])
    assert exc.value.code == 2
