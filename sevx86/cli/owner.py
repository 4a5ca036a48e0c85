"""``sevx86 owner``: the guest owner's side of an SEV(-ES) launch, offline.

The steps and a complete example are the subcommand's ``--help``
(``DESCRIPTION`` and ``EPILOG`` below); ``sevx86 platform`` and
``sevx86 run --secret-command`` are the platform's side of the same flow.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
from pathlib import Path

from sevx86.boot.digest import expected_launch_digest
from sevx86.boot.ovmf import OvmfError
from sevx86.cli.common import parse_number
from sevx86.cli.main import UsageError
from sevx86.cli.measure import read_firmware, resolve_signature, resolve_vcpus
from sevx86.sp.certs import CertificateError
from sevx86.sp.channel import Measurement, TransportKeys
from sevx86.sp.formats import DIGEST_SIZE, MEASUREMENT, SEV_CERT
from sevx86.sp.owner import GuestOwner, MeasurementMismatch, PlatformVersion
from sevx86.sp.policy import GuestPolicy
from sevx86.sp.secure_processor import DEFAULT_API_MAJOR, DEFAULT_API_MINOR, DEFAULT_BUILD

EXIT_MISMATCH = 1
DEFAULT_POLICY = "0x5"  # NODBG | ES
TEK_TIK_FILE = "tek_tik.bin"
DH_CERT_FILE = "godh.b64"
SESSION_FILE = "session.b64"


DESCRIPTION = """\
The guest owner's side of an SEV(-ES) launch, offline: none of the steps
needs the host to be trusted.

  session      PDH certificate -> LAUNCH_START's DH certificate and session
               (base64, QEMU's sev-guest dh-cert-file / session-file) and the
               owner's transport keys (keep tek_tik.bin private)
  verify       check a LAUNCH_MEASURE result against the digest expected for
               the firmware and vCPUs, the policy and the platform version
  wrap-secret  verify, then wrap a secret for LAUNCH_SECRET (QEMU's
               sev-inject-launch-secret packet-header and secret, base64)

Exit status: 0 success, 1 the measurement does not match (nothing wrapped),
2 bad usage or unreadable input."""

EPILOG = """\
the whole flow, from the platform's PDH to a guest that prints the secret:
  sevx86 platform pdh --key platform.pem > pdh.b64     # the platform's PDH
  sevx86 owner session --pdh pdh.b64 --out-dir owner   # the owner's session
  sevx86 run example:secret --save-image secret.fd     # the image to expect
  printf 'open sesame' > secret.txt
  sevx86 run example:secret --platform platform.pem \\
      --dh-cert owner/godh.b64 --session owner/session.b64 \\
      --secret-command 'sevx86 owner wrap-secret --measurement - \\
          --tek-tik owner/tek_tik.bin --firmware secret.fd --vcpu-type EPYC-v4 \\
          --secret-file secret.txt --json'
  the owner's secret: open sesame

run hands LAUNCH_MEASURE's result to the command (stdin); wrap-secret
verifies it against the image and vCPU model and answers with the packet,
which LAUNCH_SECRET decrypts into the guest's private memory. A measurement
that does not match refuses the launch (run exits 2, nothing is injected)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "owner",
        help="guest owner: launch session, measurement check, secret wrapping",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="owner_command", metavar="STEP")
    sub.required = True

    s = sub.add_parser(
        "session",
        help="make LAUNCH_START's DH certificate and session for a platform's PDH",
        description="Generate the owner's P-384 key and transport keys (TEK, TIK) and wrap "
        "them for the platform whose PDH certificate is given (SEV API LAUNCH_START).",
    )
    s.add_argument("--pdh", metavar="FILE", required=True, help="PDH certificate (raw or base64)")
    _policy_arg(s)
    s.add_argument("--out-dir", metavar="DIR", required=True, help="where to write the files")
    s.set_defaults(func=run_session)

    v = sub.add_parser(
        "verify",
        help="check a launch measurement",
        description="Recompute MEASURE = HMAC(TIK, 0x04 || API || BUILD || POLICY || DIGEST "
        "|| MNONCE) and compare it with the platform's.",
    )
    _verify_args(v)
    v.set_defaults(func=run_verify)

    w = sub.add_parser(
        "wrap-secret",
        help="verify the measurement, then wrap a secret for LAUNCH_SECRET",
        description="Encrypt the secret with TEK (AES-128-CTR) and bind it to the verified "
        "measurement with TIK; zero-padded to 16-byte blocks.",
    )
    _verify_args(w)
    w.add_argument("--secret-file", metavar="FILE", required=True, help="the secret bytes")
    w.add_argument("--json", action="store_true", help="print a JSON object")
    w.set_defaults(func=run_wrap_secret)


def _policy_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policy",
        metavar="VALUE",
        default=DEFAULT_POLICY,
        help=f"guest policy word (default {DEFAULT_POLICY}: NODBG|ES)",
    )


def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--measurement",
        metavar="TEXT",
        required=True,
        help="LAUNCH_MEASURE output, MEASURE||MNONCE (48 bytes) in base64 or hex; "
        "- reads it from stdin",
    )
    p.add_argument(
        "--tek-tik", metavar="FILE", required=True, help=f"the {TEK_TIK_FILE} of session"
    )
    _policy_arg(p)
    p.add_argument("--firmware", metavar="FILE", help="firmware image the guest should boot")
    p.add_argument("--vcpus", metavar="N", default="1", help="vCPU count (default 1)")
    p.add_argument("--vcpu-type", metavar="TYPE", help="QEMU vCPU model")
    p.add_argument("--vcpu-sig", metavar="VALUE", help="CPUID signature instead of a type")
    p.add_argument("--digest", metavar="HEX", help="expected launch digest instead of --firmware")
    p.add_argument("--api-major", metavar="N", default=str(DEFAULT_API_MAJOR))
    p.add_argument("--api-minor", metavar="N", default=str(DEFAULT_API_MINOR))
    p.add_argument(
        "--build",
        metavar="N",
        default=str(DEFAULT_BUILD),
        help="platform firmware version as PLATFORM_STATUS (QEMU query-sev) reports it",
    )


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _decode_blob(raw: bytes, size: int, what: str) -> bytes:
    """Raw bytes of ``size``, or the same in base64 or hex text."""
    if len(raw) == size:
        return raw
    stripped = raw.strip()
    try:
        if len(stripped) == 2 * size:
            return bytes.fromhex(stripped.decode())
        decoded = base64.b64decode(stripped, validate=True)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise UsageError(f"{what} is neither {size} raw bytes, hex nor base64") from None
    if len(decoded) != size:
        raise UsageError(f"{what} decodes to {len(decoded)} bytes, expected {size}")
    return decoded


def _policy(text: str) -> GuestPolicy:
    value = parse_number(text, "--policy")
    try:
        return GuestPolicy(value)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run_session(args: argparse.Namespace) -> int:
    pdh = _read(args.pdh, "PDH certificate")
    try:
        pdh = _decode_blob(
            pdh.decode("latin-1") if len(pdh) != SEV_CERT.size else pdh, SEV_CERT.size, "--pdh"
        )  # type: ignore[arg-type]
    except UnicodeDecodeError:
        raise UsageError("--pdh is not a SEV certificate") from None
    owner = GuestOwner(_policy(args.policy))
    try:
        blob = owner.launch_blob(pdh)
    except CertificateError as exc:
        raise UsageError(f"--pdh: {exc}") from None
    out = Path(args.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / DH_CERT_FILE).write_text(base64.b64encode(blob.dh_cert).decode() + "\n")
        (out / SESSION_FILE).write_text(base64.b64encode(blob.session).decode() + "\n")
        fd = os.open(out / TEK_TIK_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(owner.keys.to_bytes())
    except OSError as exc:
        raise UsageError(f"cannot write to {out}: {exc.strerror or exc}") from None
    print(f"policy {blob.policy}")
    for name in (DH_CERT_FILE, SESSION_FILE, TEK_TIK_FILE):
        print(out / name)
    return 0


def _verified_owner(args: argparse.Namespace) -> tuple[GuestOwner, bytes] | None:
    # "-": the measurement on stdin, as sevx86 run --secret-command passes it.
    text = sys.stdin.read() if args.measurement == "-" else args.measurement
    measurement = Measurement.from_bytes(
        _decode_blob(text.encode(), MEASUREMENT.size, "--measurement")
    )
    try:
        keys = TransportKeys.from_bytes(_read(args.tek_tik, "TEK/TIK file"))
    except ValueError as exc:
        raise UsageError(f"--tek-tik: {exc}") from None
    if args.digest is not None:
        if args.firmware is not None:
            raise UsageError("give --firmware or --digest, not both")
        digest = _decode_blob(args.digest.encode(), DIGEST_SIZE, "--digest")
    else:
        image = read_firmware(args.firmware)
        vcpus = resolve_vcpus(args.vcpus)
        signature = resolve_signature(args.vcpu_type, args.vcpu_sig)
        try:
            digest = expected_launch_digest(image, vcpus, signature)
        except OvmfError as exc:
            raise UsageError(f"{args.firmware}: {exc}") from None
    platform = PlatformVersion(
        parse_number(args.api_major, "--api-major"),
        parse_number(args.api_minor, "--api-minor"),
        parse_number(args.build, "--build"),
    )
    owner = GuestOwner(_policy(args.policy), keys)
    try:
        owner.verify(measurement, digest, platform)
    except MeasurementMismatch as exc:
        print(f"sevx86 owner {args.owner_command}: measurement REFUSED: {exc}", file=sys.stderr)
        return None
    return owner, digest


def run_verify(args: argparse.Namespace) -> int:
    verified = _verified_owner(args)
    if verified is None:
        return EXIT_MISMATCH
    print(f"measurement verified: launch digest {verified[1].hex()}")
    return 0


def run_wrap_secret(args: argparse.Namespace) -> int:
    secret = _read(args.secret_file, "secret")
    if not secret:
        raise UsageError(f"secret file {args.secret_file} is empty")
    verified = _verified_owner(args)
    if verified is None:
        return EXIT_MISMATCH
    packet = verified[0].wrap_secret(secret)
    header = base64.b64encode(packet.header).decode()
    data = base64.b64encode(packet.data).decode()
    if args.json:
        print(json.dumps({"packet-header": header, "secret": data}))
    else:
        print(f"packet-header: {header}")
        print(f"secret: {data}")
    return 0
