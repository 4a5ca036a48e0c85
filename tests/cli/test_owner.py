"""``sevx86 owner``: the whole owner <-> platform flow through the CLI."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

from sevx86.boot.launch import launch_guest
from sevx86.sp.channel import Measurement
from sevx86.sp.secure_processor import SecureProcessor
from tests.boot import synthetic_firmware as fw


def sevx86(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sevx86.cli.main", *args], capture_output=True, text=True
    )


def _session(tmp_path, sp):
    (tmp_path / "pdh.cert").write_bytes(sp.pdh_cert_export())
    done = sevx86(
        "owner", "session", "--pdh", str(tmp_path / "pdh.cert"), "--out-dir", str(tmp_path / "o")
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / "o"
    assert (out / "tek_tik.bin").stat().st_mode & 0o077 == 0  # private to the owner
    return (
        base64.b64decode((out / "godh.b64").read_text()),
        base64.b64decode((out / "session.b64").read_text()),
        out / "tek_tik.bin",
    )


def _verify_args(measurement: Measurement, tek_tik, firmware, sp) -> list[str]:
    st = sp.status()
    return [
        "--measurement",
        base64.b64encode(measurement.to_bytes()).decode(),
        "--tek-tik",
        str(tek_tik),
        "--firmware",
        str(firmware),
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Rome",
        "--api-major",
        str(st.api_major),
        "--api-minor",
        str(st.api_minor),
        "--build",
        str(st.build),
    ]


def test_session_verify_and_secret(tmp_path):
    sp = SecureProcessor(api_major=1, api_minor=52, build=4)
    firmware = tmp_path / "fw.fd"
    firmware.write_bytes(fw.build())
    dh_cert, session, tek_tik = _session(tmp_path, sp)
    guest = launch_guest(
        sp,
        firmware.read_bytes(),
        vcpus=2,
        vcpu_type="EPYC-Rome",
        dh_cert=dh_cert,
        session=session,
        finish=False,
    )
    args = _verify_args(guest.measurement, tek_tik, firmware, sp)
    done = sevx86("owner", "verify", *args)
    assert done.returncode == 0, done.stderr
    assert guest.launch_digest.hex() in done.stdout

    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"passphrase for the root disk")
    done = sevx86("owner", "wrap-secret", *args, "--secret-file", str(secret_file), "--json")
    assert done.returncode == 0, done.stderr
    packet = json.loads(done.stdout)
    header = base64.b64decode(packet["packet-header"])
    data = base64.b64decode(packet["secret"])
    sp.launch_secret(guest.handle, guest.memory, header, data, 0x2000)
    sp.launch_finish(guest.handle)
    assert guest.memory.read_private(0x2000, 32) == b"passphrase for the root disk".ljust(32, b"\0")
    for _region, dram in guest.memory.dram_image():
        assert b"passphrase" not in dram


def test_tampered_measurement_is_refused(tmp_path):
    sp = SecureProcessor()
    firmware = tmp_path / "fw.fd"
    firmware.write_bytes(fw.build())
    dh_cert, session, tek_tik = _session(tmp_path, sp)
    guest = launch_guest(
        sp, firmware.read_bytes(), vcpus=2, vcpu_type="EPYC-Rome", dh_cert=dh_cert, session=session
    )
    raw = bytearray(guest.measurement.to_bytes())
    raw[3] ^= 0x10
    tampered = Measurement.from_bytes(bytes(raw))
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"x" * 16)
    for step in (["verify"], ["wrap-secret", "--secret-file", str(secret_file)]):
        done = sevx86("owner", *step, *_verify_args(tampered, tek_tik, firmware, sp))
        assert done.returncode == 1
        assert done.stdout == ""
        assert "REFUSED" in done.stderr
    # A different platform version is refused too.
    args = _verify_args(guest.measurement, tek_tik, firmware, sp)
    args[args.index("--build") + 1] = "99"
    assert sevx86("owner", "verify", *args).returncode == 1


def test_owner_usage_errors(tmp_path):
    (tmp_path / "junk").write_bytes(b"not a certificate")
    done = sevx86("owner", "session", "--pdh", str(tmp_path / "junk"), "--out-dir", str(tmp_path))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    done = sevx86("owner", "verify", "--measurement", "zz", "--tek-tik", "/nope", "--digest", "00")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr
