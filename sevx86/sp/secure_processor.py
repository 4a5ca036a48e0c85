"""The AMD Secure Processor model: SEV launch commands and VMSA integrity.

Commands follow the SEV API (AMD pub 55766, chapter 6 "Guest Management")
and, where the spec leaves a choice open (which check comes first, which
status a failure returns), AMD's own SEV firmware (AMD-ASPFW ``sev_mcmd.c``).
A refused command raises ``SevError`` with the spec's status name.

The VEK never leaves this object: ``memory_cipher(handle)`` hands the memory
controller a ``MemoryCipher`` bound to it, never key bytes.

Guest memory in sevx86 is a ``PhysicalMemory`` whose ``cipher`` is the
guest's ``MemoryCipher`` (docs/design.md, "Memory model"): the host writes plaintext
images with ``write_dram`` (DRAM then holds the plaintext, as a host's C=0
writes leave it), LAUNCH_UPDATE_DATA reads those DRAM bytes, measures them
and writes them back through the private view, i.e. encrypted in place.

Runtime VMSA integrity (docs/design.md, "World switch"): the SP
keeps, per guest and vCPU, an HMAC-SHA-256 tag over the VMSA plaintext under
a per-guest key that never leaves the SP. ``vmsa_seal`` records it when the
CPU has written the VMSA at an automatic exit (and LAUNCH_UPDATE_VMSA seals
the initial one); ``vmsa_check`` recomputes it at VMRUN. Any changed byte,
or an older VMSA put back after a newer seal, fails the check. Real SEV-ES
parts keep this check inside the hardware; the tag is sevx86's stand-in.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from sevx86.arch.vmsa import VMSA_SIZE
from sevx86.memory.cipher import BLOCK, KEY_BYTES, MemoryCipher
from sevx86.memory.dram import UnmappedAddress
from sevx86.sp.certs import CertificateError, decode_ecdh_cert, encode_ecdh_cert
from sevx86.sp.channel import (
    ChannelError,
    Measurement,
    TransportKeys,
    check_policy_mac,
    ecdh_shared_secret,
    measure_mac,
    open_secret,
    open_session,
)
from sevx86.sp.errors import SevApiStatus, SevError
from sevx86.sp.formats import NONCE_SIZE, PACKET_FLAG_COMPRESSED, PACKET_HEADER, SESSION, SEV_CERT
from sevx86.sp.guest import GuestContext, GuestState, SealedVmsa
from sevx86.sp.policy import GuestPolicy

S = SevApiStatus

# A Milan-era SEV firmware version; it enters every measurement, so the guest
# owner must verify against what PLATFORM_STATUS reports (``status()``).
DEFAULT_API_MAJOR = 1
DEFAULT_API_MINOR = 55
DEFAULT_BUILD = 21

VMSA_KEY_BYTES = 32
# Domain separation for the VMSA tag: it can never equal any other MAC here.
_VMSA_TAG_LABEL = b"sevx86 VMSA integrity v1"


class Memory(Protocol):
    """What the SP needs of ``sevx86.memory.dram.PhysicalMemory``."""

    cipher: object

    def read_private(self, addr: int, size: int) -> bytes: ...
    def write_private(self, addr: int, data: bytes) -> None: ...
    def read_dram(self, addr: int, size: int) -> bytes: ...


class PlatformState(IntEnum):
    """Platform states, SEV API chapter 5.1.2."""

    UNINIT = 0
    INIT = 1
    WORKING = 2


@dataclass(frozen=True)
class PlatformStatus:
    """PLATFORM_STATUS: the firmware version a guest owner verifies against."""

    api_major: int
    api_minor: int
    build: int
    state: PlatformState
    es_initialized: bool
    guest_count: int


@dataclass(frozen=True)
class GuestStatus:
    """GUEST_STATUS."""

    handle: int
    policy: GuestPolicy
    asid: int
    state: GuestState


class SecureProcessor:
    """One platform's Secure Processor: PDH key, guests, their keys."""

    def __init__(
        self,
        *,
        api_major: int = DEFAULT_API_MAJOR,
        api_minor: int = DEFAULT_API_MINOR,
        build: int = DEFAULT_BUILD,
        es_enabled: bool = True,
        pdh: ec.EllipticCurvePrivateKey | None = None,
    ):
        """``pdh``: the platform's PDH key, for a platform that outlives one
        process (``sevx86 platform pdh``); a fresh one otherwise (PDH_GEN)."""
        self._api = (api_major, api_minor)
        self._build = build
        # INIT with the SEV-ES option: what the host kernel's driver does at boot.
        self._state = PlatformState.INIT
        self._es_enabled = es_enabled
        self._pdh = pdh if pdh is not None else ec.generate_private_key(ec.SECP384R1())
        self._guests: dict[int, GuestContext] = {}

    def __repr__(self) -> str:
        return f"<SecureProcessor API {self._api[0]}.{self._api[1]} build {self._build}>"

    # -- platform commands ------------------------------------------------------
    def status(self) -> PlatformStatus:
        """PLATFORM_STATUS."""
        return PlatformStatus(
            self._api[0],
            self._api[1],
            self._build,
            self._state,
            self._es_enabled,
            len(self._guests),
        )

    def pdh_cert_export(self) -> bytes:
        """PDH_CERT_EXPORT: the platform Diffie-Hellman key as a SEV certificate."""
        return encode_ecdh_cert(self._pdh.public_key(), api_major=0, api_minor=0)

    def pdh_gen(self) -> None:
        """PDH_GEN: a fresh PDH; sessions made for the old one stop opening."""
        self._pdh = ec.generate_private_key(ec.SECP384R1())

    # -- helpers ------------------------------------------------------------------
    def _guest(self, handle: int, command: str) -> GuestContext:
        guest = self._guests.get(handle)
        if guest is None:
            raise SevError(S.INVALID_GUEST, command, f"no guest with handle {handle}")
        return guest

    @staticmethod
    def _need_state(guest: GuestContext, command: str, *states: GuestState) -> None:
        if guest.state not in states:
            wanted = " or ".join(s.name for s in states)
            raise SevError(
                S.INVALID_GUEST_STATE,
                command,
                f"guest {guest.handle} is in {guest.state.name}, {command} needs {wanted}",
            )

    @staticmethod
    def _need_memory(guest: GuestContext, memory: Memory, command: str) -> None:
        """The guest's key must be installed (ACTIVATE) in this memory controller."""
        if not guest.asid:
            raise SevError(S.INACTIVE, command, f"guest {guest.handle} has no ASID (ACTIVATE)")
        if memory.cipher is not guest.cipher:
            raise SevError(
                S.INACTIVE,
                command,
                "this memory is not encrypted with the guest's key "
                "(build PhysicalMemory with sp.memory_cipher(handle))",
            )

    @staticmethod
    def _need_aligned(addr: int, length: int, command: str) -> None:
        if addr % BLOCK:
            raise SevError(S.INVALID_ADDRESS, command, f"{addr:#x} is not 16-byte aligned")
        if length <= 0 or length % BLOCK:
            raise SevError(S.INVALID_LENGTH, command, f"length {length:#x} is not 16-byte blocks")

    # -- launch ------------------------------------------------------------------
    def launch_start(
        self,
        policy: GuestPolicy | int,
        *,
        dh_cert: bytes | None = None,
        session: bytes | None = None,
        handle: int = 0,
    ) -> int:
        """LAUNCH_START: a new guest in LUPDATE; returns its handle.

        With the owner's ``dh_cert`` and ``session`` the SP derives the
        channel keys from ECDH with its PDH, checks WRAP_MAC and POLICY_MAC
        (BAD_MEASUREMENT) and unwraps TEK and TIK; without them TEK and TIK
        are zero, as the firmware leaves them. ``handle`` != 0 asks to share
        that guest's VEK (refused under NOKS or a different policy).
        """
        cmd = "LAUNCH_START"
        if self._state not in (PlatformState.INIT, PlatformState.WORKING):
            raise SevError(S.INVALID_PLATFORM_STATE, cmd, self._state.name)
        policy = policy if isinstance(policy, GuestPolicy) else GuestPolicy(int(policy))
        keys = TransportKeys.none()
        if dh_cert is not None:
            if session is None or len(session) != SESSION.size:
                got = "none" if session is None else f"{len(session):#x} bytes"
                raise SevError(
                    S.INVALID_LENGTH, cmd, f"session must be {SESSION.size:#x} bytes, got {got}"
                )
            if len(dh_cert) != SEV_CERT.size:
                raise SevError(
                    S.INVALID_LENGTH, cmd, f"DH certificate must be {SEV_CERT.size:#x} bytes"
                )
            try:
                owner_key = decode_ecdh_cert(dh_cert)
                shared = ecdh_shared_secret(self._pdh, owner_key)
                keys = open_session(session, shared)
            except CertificateError as exc:
                raise SevError(S.INVALID_CERTIFICATE, cmd, str(exc)) from None
            except ChannelError as exc:
                raise SevError(S.BAD_MEASUREMENT, cmd, str(exc)) from None
            if not check_policy_mac(session, keys.tik, policy.value):
                raise SevError(S.BAD_MEASUREMENT, cmd, "POLICY_MAC does not match the policy")
        elif session is not None:
            raise SevError(S.INVALID_PARAM, cmd, "a session needs the owner's DH certificate")
        # The firmware checks these with the policy MAC; sevx86 checks them
        # for every launch so a policy can never claim what the SP lacks.
        if (policy.api_major, policy.api_minor) > self._api:
            raise SevError(
                S.POLICY_FAILURE,
                cmd,
                f"policy needs API {policy.api_major}.{policy.api_minor}, "
                f"firmware is {self._api[0]}.{self._api[1]}",
            )
        if policy.reserved:
            raise SevError(S.POLICY_FAILURE, cmd, f"reserved policy bits {policy.reserved:#x} set")

        if handle == 0:
            cipher = MemoryCipher(os.urandom(KEY_BYTES))
        else:
            shared_guest = self._guest(handle, cmd)
            if shared_guest.policy != policy or shared_guest.policy.noks:
                raise SevError(S.POLICY_FAILURE, cmd, f"guest {handle} does not share its key")
            cipher = shared_guest.cipher
        if policy.es and not self._es_enabled:
            raise SevError(S.UNSUPPORTED, cmd, "the platform was initialized without SEV-ES")

        new_handle = next(h for h in range(1, len(self._guests) + 2) if h not in self._guests)
        self._guests[new_handle] = GuestContext(
            handle=new_handle,
            policy=policy,
            cipher=cipher,
            keys=keys,
            vmsa_key=os.urandom(VMSA_KEY_BYTES),
        )
        self._state = PlatformState.WORKING
        return new_handle

    def activate(self, handle: int, asid: int) -> None:
        """ACTIVATE: install the guest's key for ``asid`` in the memory controller."""
        cmd = "ACTIVATE"
        guest = self._guest(handle, cmd)
        if asid < 1:
            raise SevError(S.INVALID_ASID, cmd, f"ASID {asid} (ASIDs start at 1)")
        for other in self._guests.values():
            if other is not guest and other.asid == asid and other.cipher is not guest.cipher:
                raise SevError(S.ASID_OWNED, cmd, f"ASID {asid} holds guest {other.handle}'s key")
        guest.asid = asid

    def deactivate(self, handle: int) -> None:
        """DEACTIVATE."""
        self._guest(handle, "DEACTIVATE").asid = 0

    def memory_cipher(self, handle: int) -> MemoryCipher:
        """The memory controller's engine for this guest (the VEK stays inside it)."""
        return self._guest(handle, "memory_cipher").cipher

    def guest_status(self, handle: int) -> GuestStatus:
        """GUEST_STATUS."""
        guest = self._guest(handle, "GUEST_STATUS")
        return GuestStatus(guest.handle, guest.policy, guest.asid, guest.state)

    def launch_update_data(self, handle: int, memory: Memory, gpa: int, length: int) -> None:
        """LAUNCH_UPDATE_DATA: measure the DRAM bytes, then encrypt them in place."""
        cmd = "LAUNCH_UPDATE_DATA"
        guest = self._guest(handle, cmd)
        self._need_state(guest, cmd, GuestState.LUPDATE)
        self._need_memory(guest, memory, cmd)
        self._need_aligned(gpa, length, cmd)
        self._measure_and_encrypt(guest, memory, gpa, length, cmd)

    def _measure_and_encrypt(
        self, guest: GuestContext, memory: Memory, addr: int, length: int, cmd: str
    ) -> bytes:
        try:
            plain = memory.read_dram(addr, length)
        except UnmappedAddress as exc:
            raise SevError(S.INVALID_ADDRESS, cmd, str(exc)) from None
        assert guest.hasher is not None
        guest.hasher.update(plain)
        memory.write_private(addr, plain)
        return plain

    def launch_update_vmsa(self, handle: int, memory: Memory, vmsa_spa: int, vcpu_id: int) -> None:
        """LAUNCH_UPDATE_VMSA: measure, encrypt and seal vCPU ``vcpu_id``'s VMSA page."""
        cmd = "LAUNCH_UPDATE_VMSA"
        guest = self._guest(handle, cmd)
        self._need_state(guest, cmd, GuestState.LUPDATE)
        if not guest.policy.es:
            # The firmware's answer for a VMSA given to a guest without the ES policy.
            raise SevError(S.UNSUPPORTED, cmd, "the guest policy has no ES bit (plain SEV)")
        self._need_memory(guest, memory, cmd)
        self._need_aligned(vmsa_spa, VMSA_SIZE, cmd)
        if vcpu_id in guest.vmsas:
            raise SevError(S.INVALID_PARAM, cmd, f"vCPU {vcpu_id} already has a VMSA")
        if any(v.spa == vmsa_spa for v in guest.vmsas.values()):
            raise SevError(S.INVALID_ADDRESS, cmd, f"{vmsa_spa:#x} is already a VMSA")
        plain = self._measure_and_encrypt(guest, memory, vmsa_spa, VMSA_SIZE, cmd)
        guest.vmsas[vcpu_id] = SealedVmsa(vmsa_spa, self._vmsa_tag(guest, vcpu_id, vmsa_spa, plain))

    def launch_measure(self, handle: int) -> Measurement:
        """LAUNCH_MEASURE: finish the digest; MEASURE = HMAC(TIK, 0x04 || ...)."""
        cmd = "LAUNCH_MEASURE"
        guest = self._guest(handle, cmd)
        self._need_state(guest, cmd, GuestState.LUPDATE)
        if guest.policy.es and not guest.vmsas:
            # sevx86 is stricter than the firmware here: an ES guest without a
            # VMSA could never run, so it is not allowed to be measured.
            raise SevError(S.POLICY_FAILURE, cmd, "ES policy but no LAUNCH_UPDATE_VMSA was done")
        assert guest.hasher is not None and guest.keys is not None
        guest.launch_digest = guest.hasher.digest()
        guest.hasher = None
        mnonce = os.urandom(NONCE_SIZE)
        measure = measure_mac(
            guest.keys.tik,
            api_major=self._api[0],
            api_minor=self._api[1],
            build=self._build,
            policy=guest.policy.value,
            digest=guest.launch_digest,
            mnonce=mnonce,
        )
        guest.measure = measure
        guest.state = GuestState.LSECRET
        return Measurement(measure, mnonce)

    def launch_digest(self, handle: int) -> bytes:
        """The SHA-256 launch digest, once measured.

        What the ATTESTATION command (SEV API 0.23+) reports as LAUNCH_DIGEST;
        sevx86 returns it unsigned.
        """
        guest = self._guest(handle, "ATTESTATION")
        if guest.launch_digest is None:
            raise SevError(S.INVALID_GUEST_STATE, "ATTESTATION", "the guest is not measured yet")
        return guest.launch_digest

    def launch_secret(
        self, handle: int, memory: Memory, header: bytes, data: bytes, gpa: int
    ) -> None:
        """LAUNCH_SECRET: check the packet (TIK), decrypt it (TEK), store it encrypted at gpa."""
        cmd = "LAUNCH_SECRET"
        guest = self._guest(handle, cmd)
        if gpa % BLOCK:
            raise SevError(S.INVALID_ADDRESS, cmd, f"{gpa:#x} is not 16-byte aligned")
        if len(header) != PACKET_HEADER.size or not data or len(data) % BLOCK:
            raise SevError(
                S.INVALID_LENGTH,
                cmd,
                f"header must be {PACKET_HEADER.size:#x} bytes and data whole 16-byte blocks",
            )
        self._need_state(guest, cmd, GuestState.LSECRET)
        self._need_memory(guest, memory, cmd)
        assert guest.keys is not None and guest.measure is not None
        try:
            plain = open_secret(guest.keys, guest.measure, header, data)
        except ChannelError as exc:
            raise SevError(S.BAD_MEASUREMENT, cmd, str(exc)) from None
        if PACKET_HEADER.read(header, "flags") & PACKET_FLAG_COMPRESSED:
            raise SevError(S.UNSUPPORTED, cmd, "compressed packets")
        try:
            memory.write_private(gpa, plain)
        except UnmappedAddress as exc:
            raise SevError(S.INVALID_ADDRESS, cmd, str(exc)) from None

    def launch_finish(self, handle: int) -> None:
        """LAUNCH_FINISH: close the channel (TEK/TIK forgotten); the guest may run."""
        cmd = "LAUNCH_FINISH"
        guest = self._guest(handle, cmd)
        self._need_state(guest, cmd, GuestState.LSECRET)
        guest.keys = None
        guest.measure = None
        guest.state = GuestState.RUNNING

    def decommission(self, handle: int) -> None:
        """DECOMMISSION: forget the guest and all its keys."""
        del self._guests[self._guest(handle, "DECOMMISSION").handle]
        if not self._guests:
            self._state = PlatformState.INIT

    # -- debug ---------------------------------------------------------------------
    def dbg_decrypt(self, handle: int, memory: Memory, spa: int, length: int) -> bytes:
        """DBG_DECRYPT: guest plaintext for a debugger, refused under NODBG."""
        cmd = "DBG_DECRYPT"
        self._need_aligned(spa, length, cmd)
        guest = self._guest(handle, cmd)
        if guest.policy.nodbg:
            raise SevError(S.POLICY_FAILURE, cmd, "the guest policy sets NODBG")
        self._need_memory(guest, memory, cmd)
        try:
            return memory.read_private(spa, length)
        except UnmappedAddress as exc:
            raise SevError(S.INVALID_ADDRESS, cmd, str(exc)) from None

    def dbg_encrypt(self, handle: int, memory: Memory, spa: int, data: bytes) -> None:
        """DBG_ENCRYPT: write guest plaintext for a debugger, refused under NODBG."""
        cmd = "DBG_ENCRYPT"
        self._need_aligned(spa, len(data), cmd)
        guest = self._guest(handle, cmd)
        if guest.policy.nodbg:
            raise SevError(S.POLICY_FAILURE, cmd, "the guest policy sets NODBG")
        self._need_memory(guest, memory, cmd)
        try:
            memory.write_private(spa, data)
        except UnmappedAddress as exc:
            raise SevError(S.INVALID_ADDRESS, cmd, str(exc)) from None
        # A debugger the owner allowed may change registers in a VMSA (SEV-ES
        # keeps them only there, APM vol 2 15.35.1): the write is the SP's own,
        # so it seals the new page. Any other write still fails vmsa_check.
        for vcpu_id, sealed in guest.vmsas.items():
            if sealed.spa < spa + len(data) and spa < sealed.spa + VMSA_SIZE:
                page = memory.read_private(sealed.spa, VMSA_SIZE)
                tag = self._vmsa_tag(guest, vcpu_id, sealed.spa, page)
                guest.vmsas[vcpu_id] = SealedVmsa(sealed.spa, tag)

    # -- runtime VMSA integrity (the CPU engine's API) -----------------------------
    @staticmethod
    def _vmsa_tag(guest: GuestContext, vcpu_id: int, spa: int, page: bytes) -> bytes:
        # One-shot over the concatenation: the same tag as updating piece by
        # piece, but one C call instead of five (this runs twice per #VC).
        msg = b"".join(
            (
                _VMSA_TAG_LABEL,
                guest.handle.to_bytes(4, "little"),
                vcpu_id.to_bytes(4, "little"),
                spa.to_bytes(8, "little"),
                page,
            )
        )
        return hmac.digest(guest.vmsa_key, msg, "sha256")

    def vmsa_seal(
        self, handle: int, vcpu_id: int, memory: Memory, vmsa_spa: int, page: bytes | None = None
    ) -> None:
        """Record the tag of vCPU ``vcpu_id``'s VMSA as the CPU just wrote it (at an AE).

        ``page``: the plaintext the CPU wrote, sealed as is. Reading the page
        back instead would seal whatever a host thread wrote in between.
        """
        cmd = "VMSA_SEAL"
        guest = self._guest(handle, cmd)
        self._need_state(guest, cmd, GuestState.RUNNING)
        self._need_memory(guest, memory, cmd)
        sealed = guest.vmsas.get(vcpu_id)
        if sealed is None:
            raise SevError(S.INVALID_PARAM, cmd, f"vCPU {vcpu_id} was not launched with a VMSA")
        if sealed.spa != vmsa_spa:
            raise SevError(S.INVALID_ADDRESS, cmd, f"vCPU {vcpu_id}'s VMSA is at {sealed.spa:#x}")
        if page is None:
            page = memory.read_private(vmsa_spa, VMSA_SIZE)
        guest.vmsas[vcpu_id] = SealedVmsa(vmsa_spa, self._vmsa_tag(guest, vcpu_id, vmsa_spa, page))

    def vmsa_check(self, handle: int, vcpu_id: int, memory: Memory, vmsa_spa: int) -> bool:
        """At VMRUN: does the VMSA at ``vmsa_spa`` equal the last one sealed?

        False (VMRUN must fail with VMEXIT_INVALID) for any changed byte, an
        older VMSA put back, another address, a guest not yet RUNNING
        (LAUNCH_FINISH not done) or memory not under this guest's key.
        """
        return self.vmsa_verified(handle, vcpu_id, memory, vmsa_spa) is not None

    def vmsa_verified(
        self, handle: int, vcpu_id: int, memory: Memory, vmsa_spa: int
    ) -> bytes | None:
        """``vmsa_check`` that hands back the one plaintext read it verified.

        VMRUN loads exactly these bytes: a second read for the load would let
        a host thread swap the page between the check and the load.
        """
        guest = self._guest(handle, "VMSA_CHECK")
        sealed = guest.vmsas.get(vcpu_id)
        if (
            guest.state is not GuestState.RUNNING
            or not guest.asid
            or sealed is None
            or sealed.spa != vmsa_spa
            or memory.cipher is not guest.cipher
        ):
            return None
        try:
            page = memory.read_private(vmsa_spa, VMSA_SIZE)
        except UnmappedAddress:
            return None
        if not hmac.compare_digest(sealed.tag, self._vmsa_tag(guest, vcpu_id, vmsa_spa, page)):
            return None
        return page
