"""``sevx86 platform``: the platform side of a guest owner's launch, kept in a file.

A real platform's Secure Processor keeps its PDH key across boots; the guest
owner fetches the PDH certificate once (``sev-tool --pdh_cert_export``,
QEMU's ``query-sev-capabilities``) and makes a session for it. sevx86's
Secure Processor lives for one process, so its PDH key is kept in a file
that ``sevx86 run --platform FILE`` loads again.
"""

from __future__ import annotations

import argparse
import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sevx86.cli.main import UsageError
from sevx86.sp.secure_processor import SecureProcessor

DESCRIPTION = """\
Export the PDH certificate of a platform whose Secure Processor keeps its
PDH key in FILE (created, mode 0600, if it does not exist yet). The
certificate (SEV API PDH_CERT_EXPORT) is printed in base64: what the guest
owner gives to "sevx86 owner session --pdh"."""

EPILOG = """\
example (the whole flow: sevx86 owner --help):
  sevx86 platform pdh --key platform.pem > pdh.b64
  sevx86 owner session --pdh pdh.b64 --out-dir owner
  sevx86 run example:secret --platform platform.pem --dh-cert owner/godh.b64 \\
      --session owner/session.b64 --secret-command 'sevx86 owner wrap-secret ...'"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "platform",
        help="the platform's PDH certificate, for the guest owner",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="platform_command", metavar="STEP")
    sub.required = True
    pdh = sub.add_parser(
        "pdh",
        help="print the PDH certificate (base64); the key file is created if missing",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pdh.add_argument("--key", metavar="FILE", required=True, help="the platform's PDH key (PEM)")
    pdh.set_defaults(func=run_pdh)


def load_platform(path: str) -> SecureProcessor:
    """The Secure Processor whose PDH key is in ``path`` (a usage error if unreadable)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"--platform {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError:
        raise UsageError(f"--platform {path}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp384r1":
        raise UsageError(f"--platform {path}: not a P-384 PDH key")
    return SecureProcessor(pdh=key)


def run_pdh(args: argparse.Namespace) -> int:
    path = Path(args.key)
    if path.is_dir():
        raise UsageError(f"--key {path}: is a directory")
    if not path.exists():
        key = ec.generate_private_key(ec.SECP384R1())  # PDH_GEN, once
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
        except OSError as exc:
            raise UsageError(f"--key {path}: {exc.strerror or exc}") from None
    sp = load_platform(str(path))
    print(base64.b64encode(sp.pdh_cert_export()).decode())
    return 0
