"""``sevx86 measure``: the launch digest of an SEV-ES guest booting a firmware image.

Runs the launch through the Secure Processor model exactly as QEMU would
drive it (``sevx86.boot.launch``) and prints the digest LAUNCH_MEASURE
covered; for the same image and vCPU set-up it equals
``sev-snp-measure --mode seves``.
"""

from __future__ import annotations

import argparse
import json
import textwrap

from sevx86.boot.launch import launch_guest
from sevx86.boot.ovmf import OvmfError, OvmfImage
from sevx86.boot.vcpu_types import VCPU_TYPES, vcpu_signature
from sevx86.cli.common import parse_number
from sevx86.cli.main import UsageError
from sevx86.sp.secure_processor import SecureProcessor

DESCRIPTION = """\
Print the SEV-ES launch digest (SHA-256, hex) of a guest booting FILE.

The digest is what the Secure Processor hashes during the launch: the whole
firmware image (QEMU's pflash0, e.g. OVMF_CODE.fd; the varstore is not
measured), then the initial VMSA of every vCPU. The VMSAs depend on the vCPU
count, on the vCPU model (its CPUID signature starts in RDX) and on the AP
reset address the firmware declares in its SEV-ES reset block, so all three
must match what the guest owner expects. A guest owner compares this value,
through LAUNCH_MEASURE's HMAC, with what the platform reports.
"""

EPILOG = """\
examples:
  sevx86 measure --firmware /usr/share/OVMF/OVMF_CODE.fd --vcpus 2 --vcpu-type EPYC-v4
  sevx86 measure --firmware OVMF.fd --vcpus 4 --vcpu-sig 0xa00f11 --json

same value as: sev-snp-measure --mode seves --ovmf FILE --vcpus N --vcpu-type TYPE
""" + textwrap.fill(
    "vCPU types: " + ", ".join(VCPU_TYPES), width=78, subsequent_indent="  ", break_on_hyphens=False
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "measure",
        help="print the SEV-ES launch digest of a firmware image",
        usage="sevx86 measure --firmware FILE [--vcpus N] (--vcpu-type TYPE | --vcpu-sig VALUE)"
        "\n                      [--sev-features VALUE] [--json]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Checked in run() (a one-line error, not argparse's usage dump); the
    # usage line and this group show it as required.
    need = p.add_argument_group("required")
    need.add_argument("--firmware", metavar="FILE", help="flash image with an OVMF footer table")
    p.add_argument("--vcpus", metavar="N", default="1", help="number of vCPUs (default 1)")
    p.add_argument("--vcpu-type", metavar="TYPE", help="QEMU vCPU model, e.g. EPYC-v4, EPYC-Milan")
    p.add_argument(
        "--vcpu-sig",
        metavar="VALUE",
        help="CPUID 1 EAX signature instead of a vCPU type (e.g. 0x800f12)",
    )
    p.add_argument(
        "--sev-features",
        metavar="VALUE",
        default="0",
        help="SEV_FEATURES in the VMSAs (default 0, what QEMU sets for SEV-ES)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object with the inputs too")
    p.set_defaults(func=run)


def read_firmware(path: str | None) -> OvmfImage:
    if not path:
        raise UsageError("--firmware FILE is required")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read firmware {path}: {exc.strerror or exc}") from None
    try:
        return OvmfImage.parse(data)
    except OvmfError as exc:
        raise UsageError(f"{path}: {exc}") from None


def resolve_signature(vcpu_type: str | None, vcpu_sig: str | None) -> int:
    if vcpu_type is not None and vcpu_sig is not None:
        # Both name the CPUID signature in RDX of every VMSA: one must be chosen.
        raise UsageError("give --vcpu-type TYPE or --vcpu-sig VALUE, not both")
    if vcpu_sig is not None:
        sig = parse_number(vcpu_sig, "--vcpu-sig")
        if not 0 <= sig <= 0xFFFF_FFFF:
            raise UsageError(f"--vcpu-sig {vcpu_sig} is not a 32-bit value")
        return sig
    if vcpu_type is None:
        raise UsageError("give --vcpu-type TYPE or --vcpu-sig VALUE (the digest depends on it)")
    try:
        return vcpu_signature(vcpu_type)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def resolve_vcpus(text: str) -> int:
    vcpus = parse_number(text, "--vcpus")
    if vcpus < 1:
        raise UsageError(f"--vcpus {vcpus} must be at least 1")
    return vcpus


def run(args: argparse.Namespace) -> int:
    image = read_firmware(args.firmware)
    vcpus = resolve_vcpus(args.vcpus)
    signature = resolve_signature(args.vcpu_type, args.vcpu_sig)
    sev_features = parse_number(args.sev_features, "--sev-features")
    try:
        ap_reset = image.sev_es_reset_addr()
        guest = launch_guest(
            SecureProcessor(),
            image,
            vcpus=vcpus,
            vcpu_signature=signature,
            sev_features=sev_features,
        )
    except (OvmfError, ValueError) as exc:
        raise UsageError(f"{args.firmware}: {exc}") from None
    digest = guest.launch_digest.hex()
    if args.json:
        print(
            json.dumps(
                {
                    "launch_digest": digest,
                    "firmware": args.firmware,
                    "firmware_size": image.size,
                    "vcpus": vcpus,
                    "vcpu_type": args.vcpu_type if args.vcpu_sig is None else None,
                    "vcpu_signature": f"{signature:#x}",
                    "ap_reset_addr": f"{ap_reset:#x}",
                    "sev_features": f"{sev_features:#x}",
                },
                indent=2,
            )
        )
    else:
        print(digest)
    return 0
