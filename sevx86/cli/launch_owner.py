"""``sevx86 run``'s guest-owner options: a launch session and a launch secret.

What QEMU's ``sev-guest`` object takes (``dh-cert-file``, ``session-file``)
and what ``sev-inject-launch-secret`` does, for a run: LAUNCH_START opens
the owner's session on the platform of ``--platform FILE``; after
LAUNCH_MEASURE the measurement (MEASURE || MNONCE, base64) goes to the
``--secret-command`` on its stdin (and in ``$SEVX86_MEASUREMENT``); the
command answers with the packet ``sevx86 owner wrap-secret --json`` prints,
and LAUNCH_SECRET injects it at ``FW_SECRET_GPA`` before LAUNCH_FINISH.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from sevx86.asm import fw_abi as abi
from sevx86.cli.main import UsageError
from sevx86.cli.platform import load_platform
from sevx86.sp.channel import Measurement, SecretPacket
from sevx86.sp.secure_processor import SecureProcessor


def add_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("guest owner (sevx86 owner --help has the whole flow)")
    g.add_argument(
        "--platform", metavar="FILE", help="the platform's PDH key (sevx86 platform pdh --key)"
    )
    g.add_argument("--dh-cert", metavar="FILE", help="the owner's godh.b64 (owner session)")
    g.add_argument("--session", metavar="FILE", help="the owner's session.b64 (owner session)")
    g.add_argument(
        "--secret-command",
        metavar="CMD",
        help="after LAUNCH_MEASURE run CMD (a shell command) with the measurement on "
        "stdin; its JSON packet is injected with LAUNCH_SECRET",
    )


def _b64_file(path: str, what: str) -> bytes:
    try:
        return base64.b64decode(Path(path).read_bytes().strip(), validate=True)
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror or exc}") from None
    except (ValueError, binascii.Error):
        raise UsageError(f"{what} {path}: not base64") from None


def owner_launch(args: argparse.Namespace) -> tuple[SecureProcessor | None, dict[str, Any]]:
    """The Secure Processor and ``launch_guest`` options the owner's files ask for."""
    if (args.dh_cert is None) != (args.session is None):
        raise UsageError("--dh-cert and --session go together (sevx86 owner session writes both)")
    if args.secret_command and args.dh_cert is None:
        raise UsageError("--secret-command needs the owner's session (--dh-cert, --session)")
    if args.dh_cert is not None and args.platform is None:
        raise UsageError("--dh-cert needs --platform FILE: the platform the session was made for")
    sp = load_platform(args.platform) if args.platform is not None else None
    options: dict[str, Any] = {}
    if args.dh_cert is not None:
        options["dh_cert"] = _b64_file(args.dh_cert, "--dh-cert")
        options["session"] = _b64_file(args.session, "--session")
    if args.secret_command:
        options["secret"] = lambda m: ask_owner(args.secret_command, m)
        options["secret_gpa"] = abi.SECRET_GPA
    return sp, options


def ask_owner(command: str, measurement: Measurement) -> SecretPacket:
    """Run the owner's command with the measurement; its stdout is the packet."""
    text = base64.b64encode(measurement.to_bytes()).decode()
    env = dict(os.environ, SEVX86_MEASUREMENT=text)
    done = subprocess.run(
        command, shell=True, input=text + "\n", capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise UsageError(f"--secret-command refused the launch: {why}")
    try:
        packet = json.loads(done.stdout)
        return SecretPacket(
            base64.b64decode(packet["packet-header"], validate=True),
            base64.b64decode(packet["secret"], validate=True),
        )
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise UsageError(
            "--secret-command printed no packet (expected the JSON of "
            "sevx86 owner wrap-secret --json)"
        ) from None
