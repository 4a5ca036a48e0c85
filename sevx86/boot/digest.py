"""The launch digest an SEV-ES launch of a firmware image must produce.

What QEMU feeds the Secure Processor for an SEV-ES guest booted from flash
without ``-kernel`` (``target/i386/sev.c``, ``hw/i386/pc_sysfw.c``): one
LAUNCH_UPDATE_DATA over the whole pflash0 image (OVMF_CODE; the varstore on
pflash1 is neither encrypted nor measured), no kernel-hashes table (QEMU adds
it only with ``kernel-hashes=on`` and a kernel), then one
LAUNCH_UPDATE_VMSA per vCPU in index order. The SEV API's digest is SHA-256
over all of that data in command order.

The guest owner uses this to know what to expect; the SP computes the same
value from what it actually saw (``SecureProcessor.launch_digest``).
"""

from __future__ import annotations

import hashlib

from sevx86.boot.ovmf import OvmfImage
from sevx86.boot.reset import initial_vmsas


def expected_launch_digest(
    firmware: OvmfImage | bytes,
    vcpus: int,
    vcpu_signature: int,
    *,
    sev_features: int = 0,
) -> bytes:
    image = firmware if isinstance(firmware, OvmfImage) else OvmfImage.parse(firmware)
    ap_reset = image.sev_es_reset_addr()
    digest = hashlib.sha256(image.data)
    for page in initial_vmsas(vcpus, ap_reset, vcpu_signature, sev_features=sev_features):
        digest.update(page)
    return digest.digest()
