"""``sevx86 lab``: the published attacks on SEV and SEV-ES, run against our guest."""

from __future__ import annotations

import argparse
import json

from sevx86.cli.main import UsageError
from sevx86.lab import SCENARIOS
from sevx86.lab.guest import MODES

DESCRIPTION = """\
Play the malicious hypervisor against a real #VC handler: each scenario is a
guest program, a hostile hypervisor built only on the public hooks of
sevx86.hv (so its source is an example of them), and a report -- what the
host tried, what it learned or changed, whether the guest noticed, and the
figures. Where the answer differs by mode, the scenario runs in all the
modes it applies to and prints a table with one column per mode.

Each scenario has a page in docs/lab/ with the paper, the mechanism and the
real mitigation (SEV-ES, SEV-SNP, or guest software)."""

EPILOG = """\
examples:
  sevx86 lab --list                         the scenarios and their modes
  sevx86 lab regs-exfil                     none vs sev vs sev-es, as a table
  sevx86 lab cipherleaks --seed 7           another secret, the same attack
  sevx86 lab vmsa-tamper --mode sev-es --json
  sevx86 lab vmsa-tamper --mode sev-es --cases 4096   every byte of the VMSA page
  sevx86 lab host-fuzz --cases 10000 --seed 3         a longer campaign

exit status: 0 the scenario ran (whatever the host achieved: read the
figures); 2 an unknown scenario, a mode it does not apply to, or a bad
option; 1 a bug in sevx86."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lab",
        help="reproduce published attacks on SEV/SEV-ES with a hostile hypervisor",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="the scenario (see --list)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--mode",
        choices=MODES,
        help="run in this mode only (default: every mode the scenario applies to)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--seed",
        type=_seed,
        default=1,
        metavar="S",
        help="chooses the secrets and random choices (default 1): same seed, same figures",
    )
    parser.add_argument(
        "--cases",
        type=_cases,
        metavar="N",
        help="how many cases a sampling scenario runs (vmsa-tamper: byte flips, 4096 for "
        "the whole page; host-fuzz: lies; guest-fuzz: requests); default in --list",
    )
    parser.set_defaults(func=main)


def _seed(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed is >= 0, not {value}")
    return value


def _cases(text: str) -> int:
    value = _seed(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"at least 1 case, not {value}")
    return value


def main(args: argparse.Namespace) -> int:
    if args.list:
        return _list(args.json)
    if args.name is None:
        raise UsageError("name a scenario, or --list to see them")
    if args.name not in SCENARIOS:
        raise UsageError(f"no scenario '{args.name}' (known: {', '.join(SCENARIOS)})")
    scenario = SCENARIOS[args.name]
    modes = scenario.modes
    if args.mode is not None:
        if args.mode not in scenario.modes:
            raise UsageError(
                f"{scenario.name} applies to mode {', '.join(scenario.modes)} only, "
                f"not {args.mode} (docs: {scenario.doc})"
            )
        modes = (args.mode,)
    if args.cases is not None and scenario.cases is None:
        raise UsageError(f"{scenario.name} takes no --cases: it runs one attack per mode")
    report = scenario.report(modes, args.seed, args.cases)
    print(report.to_json() if args.json else report.render())
    return 0


def _list(as_json: bool) -> int:
    if as_json:
        rows = [
            {
                "name": s.name,
                "title": s.title,
                "modes": list(s.modes),
                "doc": s.doc,
                "cases": s.cases,
            }
            for s in SCENARIOS.values()
        ]
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(name) for name in SCENARIOS)
    for s in SCENARIOS.values():
        cases = "" if s.cases is None else f", {s.cases} cases"
        print(f"{s.name.ljust(width)}  {s.title} [{', '.join(s.modes)}{cases}]  {s.doc}")
    return 0
