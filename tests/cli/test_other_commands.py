"""Issue 17, "The other commands": owner, platform, measure, the run's default limit."""

from __future__ import annotations

import shlex
import sys

from sevx86.cli import common
from sevx86.cli.main import build_parser

from .conftest import one_line_error


def _owner_flow(sevx86, tmp_path, vcpu_type: str):
    assert sevx86("platform", "pdh", "--key", "platform.pem").returncode == 0
    pdh = sevx86("platform", "pdh", "--key", "platform.pem")  # the same platform again
    (tmp_path / "pdh.b64").write_text(pdh.stdout)
    done = sevx86("owner", "session", "--pdh", "pdh.b64", "--out-dir", "owner")
    assert done.returncode == 0, done.stderr
    image = sevx86("run", "example:secret", "--save-image", "secret.fd")
    assert image.returncode == 1 and "no launch secret" in image.stdout
    (tmp_path / "secret.txt").write_text("open sesame")
    wrap = " ".join(
        shlex.quote(a)
        for a in [sys.executable, "-m", "sevx86.cli.main", "owner", "wrap-secret"]
        + ["--measurement", "-", "--tek-tik", "owner/tek_tik.bin", "--firmware", "secret.fd"]
        + ["--vcpu-type", vcpu_type, "--secret-file", "secret.txt", "--json"]
    )
    return sevx86(
        "run", "example:secret", "--platform", "platform.pem",
        "--dh-cert", "owner/godh.b64", "--session", "owner/session.b64",
        "--secret-command", wrap,
    )  # fmt: skip


def test_i17_the_owner_flow_runs_from_the_command_line(sevx86, tmp_path):
    """PDH export, session, launch with it, measurement to the owner, verify,
    wrap, LAUNCH_SECRET, and a guest program that reads the secret."""
    done = _owner_flow(sevx86, tmp_path, "EPYC-v4")
    assert (done.returncode, done.stdout) == (0, "the owner's secret: open sesame\n"), done.stderr


def test_i17_a_measurement_the_owner_does_not_expect_refuses_the_launch(sevx86, tmp_path):
    done = _owner_flow(sevx86, tmp_path, "EPYC-Milan")  # another vCPU model: another digest
    assert done.returncode == 2 and done.stdout == ""
    assert "--secret-command refused the launch" in one_line_error(done, "run")


def test_i17_owner_help_has_no_rst_and_an_example(sevx86):
    done = sevx86("owner", "--help")
    assert done.returncode == 0
    assert "``" not in done.stdout
    assert "sevx86 platform pdh --key" in done.stdout and "--secret-command" in done.stdout


def test_i17_measure_help_shows_firmware_as_required(sevx86):
    usage = sevx86("measure", "--help").stdout.splitlines()[0]
    assert "--firmware FILE" in usage and "[--firmware" not in usage


def test_i17_vcpu_type_with_vcpu_sig_is_refused(sevx86, tmp_path):
    from tests.boot import synthetic_firmware as fw

    (tmp_path / "fw.fd").write_bytes(fw.build())
    args = ["--firmware", "fw.fd", "--vcpu-type", "EPYC", "--vcpu-sig", "0x800f12"]
    done = sevx86("measure", *args)
    assert done.returncode == 2
    assert "not both" in one_line_error(done, "measure")


def test_i17_the_default_timeout_does_not_cut_off_ordinary_programs():
    """3,000 lines of serial output take about a minute under SEV-ES (~1.6 KB/s
    measured in issue 17): the default limit leaves ten times that."""
    for command in ("run", "trace"):
        args = build_parser().parse_args([command, "example:hello"])
        timeout, _ = common.run_limits(args)
        assert timeout is None or timeout >= 600
