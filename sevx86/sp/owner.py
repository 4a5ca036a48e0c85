"""The guest owner's side of an SEV launch: session, verification, secrets.

The guest owner never runs on the host. It:

1. takes the platform's PDH certificate, makes its own P-384 key pair and
   transport keys (TEK, TIK), and builds LAUNCH_START's DH certificate and
   session (SEV API 55766 chapter 6, "LAUNCH_START"; ``sevx86.sp.channel``);
2. checks LAUNCH_MEASURE's MEASURE against the digest it expects for the
   firmware and vCPUs it asked for, and the platform's API version and build,
   with its TIK: a measurement it cannot reproduce is refused;
3. only then wraps a secret for LAUNCH_SECRET, bound to that measurement.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from sevx86.sp.certs import decode_ecdh_cert, encode_ecdh_cert
from sevx86.sp.channel import (
    Measurement,
    SecretPacket,
    TransportKeys,
    build_session,
    ecdh_shared_secret,
    measure_mac,
    seal_secret,
)
from sevx86.sp.formats import CertUsage
from sevx86.sp.policy import GuestPolicy

SECRET_ALIGN = 16  # LAUNCH_SECRET moves whole 16-byte blocks


class MeasurementMismatch(Exception):
    """The launch measurement is not the one the owner expects: no secret."""


@dataclass(frozen=True)
class PlatformVersion:
    """API version and build of the SP firmware, from PLATFORM_STATUS."""

    api_major: int
    api_minor: int
    build: int


@dataclass(frozen=True)
class LaunchBlob:
    """What the owner sends the host for LAUNCH_START."""

    policy: GuestPolicy
    dh_cert: bytes
    session: bytes


class GuestOwner:
    """Holds the owner's transport keys; the host only ever sees them wrapped."""

    def __init__(self, policy: GuestPolicy | int, keys: TransportKeys | None = None):
        self.policy = policy if isinstance(policy, GuestPolicy) else GuestPolicy(int(policy))
        self.keys = keys if keys is not None else TransportKeys.generate()
        self._verified: Measurement | None = None

    def __repr__(self) -> str:
        return f"<GuestOwner policy={self.policy}>"

    def launch_blob(self, pdh_cert: bytes) -> LaunchBlob:
        """DH certificate and session for LAUNCH_START against this PDH."""
        pdh = decode_ecdh_cert(pdh_cert, CertUsage.PDH)
        private = ec.generate_private_key(ec.SECP384R1())
        shared = ecdh_shared_secret(private, pdh)
        session = build_session(self.keys, self.policy.value, shared)
        return LaunchBlob(self.policy, encode_ecdh_cert(private.public_key()), session)

    def expected_measure(
        self, measurement: Measurement, digest: bytes, platform: PlatformVersion
    ) -> bytes:
        return measure_mac(
            self.keys.tik,
            api_major=platform.api_major,
            api_minor=platform.api_minor,
            build=platform.build,
            policy=self.policy.value,
            digest=digest,
            mnonce=measurement.mnonce,
        )

    def verify(
        self,
        measurement: Measurement | bytes,
        expected_digest: bytes,
        platform: PlatformVersion,
    ) -> Measurement:
        """Accept the measurement or raise ``MeasurementMismatch``."""
        if not isinstance(measurement, Measurement):
            measurement = Measurement.from_bytes(measurement)
        expected = self.expected_measure(measurement, expected_digest, platform)
        if not hmac.compare_digest(expected, measurement.measure):
            raise MeasurementMismatch(
                "MEASURE does not match the expected launch digest, policy and "
                f"platform {platform.api_major}.{platform.api_minor} build {platform.build}"
            )
        self._verified = measurement
        return measurement

    def wrap_secret(self, secret: bytes, *, pad: bool = True) -> SecretPacket:
        """A LAUNCH_SECRET packet for the measurement last verified."""
        if self._verified is None:
            raise MeasurementMismatch("no verified measurement: verify the launch first")
        if len(secret) % SECRET_ALIGN:
            if not pad:
                raise ValueError(f"a secret is whole {SECRET_ALIGN}-byte blocks")
            secret = secret + bytes(-len(secret) % SECRET_ALIGN)
        if not secret:
            raise ValueError("empty secret")
        return seal_secret(self.keys, self._verified.measure, secret)
