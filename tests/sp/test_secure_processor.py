"""LAUNCH_* commands: encryption in place, the digest, state machine, policy."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest

import sevx86.sp.certs
import sevx86.sp.channel
import sevx86.sp.owner
import sevx86.sp.secure_processor
from sevx86.config import GuestMode
from sevx86.memory.cipher import MemoryCipher
from sevx86.sp.channel import TransportKeys, seal_secret
from sevx86.sp.errors import SevApiStatus, SevError
from sevx86.sp.guest import GuestState
from sevx86.sp.owner import GuestOwner
from sevx86.sp.policy import GuestPolicy, PolicyFlag
from sevx86.sp.secure_processor import SecureProcessor
from tests.sp.conftest import ES_POLICY, SEV_POLICY, guest_memory

S = SevApiStatus
DATA_GPA = 0x10000
VMSA_SPAS = (0x20000, 0x21000)


def _status(excinfo) -> SevApiStatus:
    return excinfo.value.status


def _load(memory, gpa: int, data: bytes) -> None:
    memory.write_dram(gpa, data)  # the host copies a plaintext image in


def _launched_es(sp, *, vcpus: int = 1, data: bytes | None = None):
    handle = sp.launch_start(ES_POLICY)
    memory = guest_memory(sp, handle)
    data = data if data is not None else os.urandom(0x2000)
    _load(memory, DATA_GPA, data)
    sp.launch_update_data(handle, memory, DATA_GPA, len(data))
    pages = []
    for vcpu in range(vcpus):
        page = os.urandom(0x1000)
        _load(memory, VMSA_SPAS[vcpu], page)
        sp.launch_update_vmsa(handle, memory, VMSA_SPAS[vcpu], vcpu)
        pages.append(page)
    return handle, memory, data, pages


def test_update_data_encrypts_in_place(sp):
    handle, memory, data, _ = _launched_es(sp)
    assert memory.read_private(DATA_GPA, len(data)) == data
    cipher = memory.read_dram(DATA_GPA, len(data))
    assert cipher != data
    # Not merely changed: nothing of the plaintext is left block by block.
    blocks = {data[i : i + 16] for i in range(0, len(data), 16)}
    assert not any(cipher[i : i + 16] in blocks for i in range(0, len(cipher), 16))


def test_digest_is_sha256_of_data_then_vmsas_in_order(sp):
    handle, memory, data, pages = _launched_es(sp, vcpus=2)
    sp.launch_measure(handle)
    assert sp.launch_digest(handle) == hashlib.sha256(data + pages[0] + pages[1]).digest()


def test_measure_is_hmac_with_tik_over_the_spec_fields():
    sp = SecureProcessor(api_major=1, api_minor=51, build=3)
    owner = GuestOwner(ES_POLICY)
    blob = owner.launch_blob(sp.pdh_cert_export())
    handle = sp.launch_start(ES_POLICY, dh_cert=blob.dh_cert, session=blob.session)
    memory = guest_memory(sp, handle)
    page = os.urandom(0x1000)
    _load(memory, VMSA_SPAS[0], page)
    sp.launch_update_vmsa(handle, memory, VMSA_SPAS[0], 0)
    m = sp.launch_measure(handle)
    message = (
        b"\x04\x01\x33\x03"
        + ES_POLICY.value.to_bytes(4, "little")
        + hashlib.sha256(page).digest()
        + m.mnonce
    )
    assert m.measure == hmac.new(owner.keys.tik, message, "sha256").digest()


def test_without_session_tik_is_zero(sp):
    handle, _, data, pages = _launched_es(sp)
    m = sp.launch_measure(handle)
    st = sp.status()
    message = (
        bytes([4, st.api_major, st.api_minor, st.build])
        + ES_POLICY.value.to_bytes(4, "little")
        + hashlib.sha256(data + pages[0]).digest()
        + m.mnonce
    )
    assert m.measure == hmac.new(bytes(16), message, "sha256").digest()


# -- the guest state machine -------------------------------------------------------
def test_state_walk(sp):
    handle, memory, _, _ = _launched_es(sp)
    assert sp.guest_status(handle).state is GuestState.LUPDATE
    sp.launch_measure(handle)
    assert sp.guest_status(handle).state is GuestState.LSECRET
    sp.launch_finish(handle)
    assert sp.guest_status(handle).state is GuestState.RUNNING


def test_update_data_after_measure_is_refused(sp):
    handle, memory, _, _ = _launched_es(sp)
    sp.launch_measure(handle)
    with pytest.raises(SevError) as e:
        sp.launch_update_data(handle, memory, DATA_GPA, 0x1000)
    assert _status(e) is S.INVALID_GUEST_STATE
    assert e.value.code == 0x02
    assert "INVALID_GUEST_STATE" in str(e.value) and "LSECRET" in str(e.value)


def test_update_vmsa_after_measure_is_refused(sp):
    handle, memory, _, _ = _launched_es(sp)
    sp.launch_measure(handle)
    with pytest.raises(SevError) as e:
        sp.launch_update_vmsa(handle, memory, VMSA_SPAS[1], 1)
    assert _status(e) is S.INVALID_GUEST_STATE


def test_secret_and_finish_before_measure_are_refused(sp):
    handle, memory, _, _ = _launched_es(sp)
    packet = seal_secret(TransportKeys.none(), bytes(32), bytes(16))
    with pytest.raises(SevError) as e:
        sp.launch_secret(handle, memory, packet.header, packet.data, 0x1000)
    assert _status(e) is S.INVALID_GUEST_STATE
    with pytest.raises(SevError) as e:
        sp.launch_finish(handle)
    assert _status(e) is S.INVALID_GUEST_STATE


def test_measure_twice_is_refused(sp):
    handle, _, _, _ = _launched_es(sp)
    sp.launch_measure(handle)
    with pytest.raises(SevError) as e:
        sp.launch_measure(handle)
    assert _status(e) is S.INVALID_GUEST_STATE


def test_every_launch_command_after_finish_is_refused(sp):
    handle, memory, _, _ = _launched_es(sp)
    m = sp.launch_measure(handle)
    sp.launch_finish(handle)
    packet = seal_secret(TransportKeys.none(), m.measure, bytes(16))
    attempts = {
        "LAUNCH_UPDATE_DATA": lambda: sp.launch_update_data(handle, memory, DATA_GPA, 16),
        "LAUNCH_UPDATE_VMSA": lambda: sp.launch_update_vmsa(handle, memory, VMSA_SPAS[1], 1),
        "LAUNCH_MEASURE": lambda: sp.launch_measure(handle),
        "LAUNCH_SECRET": lambda: sp.launch_secret(handle, memory, packet.header, packet.data, 0),
        "LAUNCH_FINISH": lambda: sp.launch_finish(handle),
    }
    for name, attempt in attempts.items():
        with pytest.raises(SevError) as e:
            attempt()
        assert _status(e) is S.INVALID_GUEST_STATE, name
        assert e.value.command == name
    # Runtime commands still work.
    assert sp.guest_status(handle).state is GuestState.RUNNING


def test_unknown_handle_is_invalid_guest(sp):
    with pytest.raises(SevError) as e:
        sp.launch_measure(42)
    assert _status(e) is S.INVALID_GUEST
    handle, _, _, _ = _launched_es(sp)
    sp.decommission(handle)
    with pytest.raises(SevError) as e:
        sp.guest_status(handle)
    assert _status(e) is S.INVALID_GUEST


# -- policy ---------------------------------------------------------------------------
def test_es_policy_without_vmsa_cannot_be_measured(sp):
    handle = sp.launch_start(ES_POLICY)
    memory = guest_memory(sp, handle)
    _load(memory, DATA_GPA, bytes(0x1000))
    sp.launch_update_data(handle, memory, DATA_GPA, 0x1000)
    with pytest.raises(SevError) as e:
        sp.launch_measure(handle)
    assert _status(e) is S.POLICY_FAILURE


def test_vmsa_for_a_plain_sev_guest_is_unsupported(sp):
    handle = sp.launch_start(SEV_POLICY)
    memory = guest_memory(sp, handle, GuestMode.SEV)
    with pytest.raises(SevError) as e:
        sp.launch_update_vmsa(handle, memory, VMSA_SPAS[0], 0)
    assert _status(e) is S.UNSUPPORTED
    # A plain SEV launch measures data only.
    _load(memory, DATA_GPA, b"x" * 0x1000)
    sp.launch_update_data(handle, memory, DATA_GPA, 0x1000)
    sp.launch_measure(handle)
    assert sp.launch_digest(handle) == hashlib.sha256(b"x" * 0x1000).digest()


def test_dbg_decrypt_under_nodbg_is_a_policy_failure(sp):
    handle, memory, data, _ = _launched_es(sp)
    with pytest.raises(SevError) as e:
        sp.dbg_decrypt(handle, memory, DATA_GPA, 0x100)
    assert _status(e) is S.POLICY_FAILURE
    with pytest.raises(SevError) as e:
        sp.dbg_encrypt(handle, memory, DATA_GPA, bytes(16))
    assert _status(e) is S.POLICY_FAILURE


def test_dbg_decrypt_without_nodbg_returns_plaintext(sp):
    handle = sp.launch_start(GuestPolicy.make(PolicyFlag.ES))
    memory = guest_memory(sp, handle)
    _load(memory, DATA_GPA, b"debuggable guest".ljust(0x100, b"."))
    sp.launch_update_data(handle, memory, DATA_GPA, 0x100)
    assert sp.dbg_decrypt(handle, memory, DATA_GPA, 0x20) == b"debuggable guest".ljust(0x20, b".")
    sp.dbg_encrypt(handle, memory, DATA_GPA, b"patched by a dbg")
    assert memory.read_private(DATA_GPA, 16) == b"patched by a dbg"
    with pytest.raises(SevError) as e:
        sp.dbg_decrypt(handle, memory, DATA_GPA + 1, 0x10)
    assert _status(e) is S.INVALID_ADDRESS
    with pytest.raises(SevError) as e:
        sp.dbg_decrypt(handle, memory, DATA_GPA, 0x11)
    assert _status(e) is S.INVALID_LENGTH


@pytest.mark.parametrize(
    "policy",
    [
        GuestPolicy(ES_POLICY.value | (1 << 6)),  # a reserved bit
        GuestPolicy.make(PolicyFlag.ES, api_major=1, api_minor=56),  # newer than the SP
        GuestPolicy.make(PolicyFlag.ES, api_major=2),
    ],
)
def test_policy_the_platform_cannot_honour_is_refused(sp, policy):
    with pytest.raises(SevError) as e:
        sp.launch_start(policy)
    assert _status(e) is S.POLICY_FAILURE
    assert sp.status().guest_count == 0


@pytest.mark.parametrize("older", [0, 1], ids=["same-version", "one-minor-older"])
def test_item14_policy_minimum_api_met_is_accepted(sp, older):
    """SEV API spec, "Guest Policy": API_MAJOR/API_MINOR are the oldest
    firmware the guest accepts; a platform at or above it starts the launch.
    The minimum is taken from the platform's own PLATFORM_STATUS."""
    platform = sp.status()
    policy = GuestPolicy.make(
        PolicyFlag.ES, api_major=platform.api_major, api_minor=platform.api_minor - older
    )
    handle = sp.launch_start(policy)
    guest = sp.guest_status(handle)
    assert (guest.state, guest.policy) == (GuestState.LUPDATE, policy)
    assert sp.status().guest_count == platform.guest_count + 1


def test_es_on_a_platform_without_es_is_unsupported():
    sp = SecureProcessor(es_enabled=False)
    with pytest.raises(SevError) as e:
        sp.launch_start(ES_POLICY)
    assert _status(e) is S.UNSUPPORTED
    sp.launch_start(SEV_POLICY)


def test_key_sharing_follows_noks(sp):
    shareable = GuestPolicy.make(PolicyFlag.ES)
    first = sp.launch_start(shareable)
    second = sp.launch_start(shareable, handle=first)
    assert sp.memory_cipher(second) is sp.memory_cipher(first)
    assert sp.memory_cipher(sp.launch_start(shareable)) is not sp.memory_cipher(first)
    no_sharing = GuestPolicy.make(PolicyFlag.ES | PolicyFlag.NOKS)
    private = sp.launch_start(no_sharing)
    with pytest.raises(SevError) as e:
        sp.launch_start(no_sharing, handle=private)
    assert _status(e) is S.POLICY_FAILURE
    with pytest.raises(SevError) as e:  # a different policy cannot share either
        sp.launch_start(ES_POLICY, handle=first)
    assert _status(e) is S.POLICY_FAILURE


def test_update_needs_activate_and_the_guests_memory(sp):
    from sevx86.config import GuestConfig
    from sevx86.memory.dram import PhysicalMemory

    handle = sp.launch_start(ES_POLICY)
    memory = PhysicalMemory(GuestConfig(memory=0x40000), sp.memory_cipher(handle))
    with pytest.raises(SevError) as e:
        sp.launch_update_data(handle, memory, DATA_GPA, 16)
    assert _status(e) is S.INACTIVE
    sp.activate(handle, 1)
    other = PhysicalMemory(GuestConfig(memory=0x40000), MemoryCipher(os.urandom(32)))
    with pytest.raises(SevError) as e:
        sp.launch_update_data(handle, other, DATA_GPA, 16)
    assert _status(e) is S.INACTIVE
    with pytest.raises(SevError) as e:
        sp.launch_update_data(handle, memory, DATA_GPA + 8, 16)
    assert _status(e) is S.INVALID_ADDRESS
    with pytest.raises(SevError) as e:
        sp.launch_update_data(handle, memory, DATA_GPA, 0)
    assert _status(e) is S.INVALID_LENGTH
    with pytest.raises(SevError) as e:
        sp.launch_update_data(handle, memory, 0x1_0000_0000, 16)  # no RAM there
    assert _status(e) is S.INVALID_ADDRESS


def test_asid_of_another_key_is_owned(sp):
    a = sp.launch_start(ES_POLICY)
    b = sp.launch_start(ES_POLICY)
    sp.activate(a, 5)
    with pytest.raises(SevError) as e:
        sp.activate(b, 5)
    assert _status(e) is S.ASID_OWNED
    with pytest.raises(SevError) as e:
        sp.activate(b, 0)
    assert _status(e) is S.INVALID_ASID


# -- the owner's session -------------------------------------------------------------
def test_session_from_the_owner_opens_and_binds_the_policy(sp):
    owner = GuestOwner(ES_POLICY)
    blob = owner.launch_blob(sp.pdh_cert_export())
    sp.launch_start(ES_POLICY, dh_cert=blob.dh_cert, session=blob.session)
    with pytest.raises(SevError) as e:  # the host changes the policy: POLICY_MAC fails
        sp.launch_start(GuestPolicy.make(PolicyFlag.ES), dh_cert=blob.dh_cert, session=blob.session)
    assert _status(e) is S.BAD_MEASUREMENT


@pytest.mark.parametrize("offset", [0x00, 0x10, 0x40, 0x60])
def test_tampered_session_is_a_bad_measurement(sp, offset):
    blob = GuestOwner(ES_POLICY).launch_blob(sp.pdh_cert_export())
    session = bytearray(blob.session)
    session[offset] ^= 0x80
    with pytest.raises(SevError) as e:
        sp.launch_start(ES_POLICY, dh_cert=blob.dh_cert, session=bytes(session))
    assert _status(e) is S.BAD_MEASUREMENT


def test_session_for_another_platform_or_pdh_is_refused(sp):
    blob = GuestOwner(ES_POLICY).launch_blob(SecureProcessor().pdh_cert_export())
    with pytest.raises(SevError) as e:
        sp.launch_start(ES_POLICY, dh_cert=blob.dh_cert, session=blob.session)
    assert _status(e) is S.BAD_MEASUREMENT
    blob = GuestOwner(ES_POLICY).launch_blob(sp.pdh_cert_export())
    sp.pdh_gen()
    with pytest.raises(SevError) as e:
        sp.launch_start(ES_POLICY, dh_cert=blob.dh_cert, session=blob.session)
    assert _status(e) is S.BAD_MEASUREMENT


def test_malformed_session_inputs(sp):
    blob = GuestOwner(ES_POLICY).launch_blob(sp.pdh_cert_export())
    with pytest.raises(SevError) as e:
        sp.launch_start(ES_POLICY, dh_cert=blob.dh_cert, session=blob.session[:-1])
    assert _status(e) is S.INVALID_LENGTH
    with pytest.raises(SevError) as e:
        sp.launch_start(ES_POLICY, dh_cert=blob.dh_cert[:-4], session=blob.session)
    assert _status(e) is S.INVALID_LENGTH
    wrong_usage = bytearray(blob.dh_cert)
    wrong_usage[0x08] = 0x02  # usage PEK, not PDH
    with pytest.raises(SevError) as e:
        sp.launch_start(ES_POLICY, dh_cert=bytes(wrong_usage), session=blob.session)
    assert _status(e) is S.INVALID_CERTIFICATE
    with pytest.raises(SevError) as e:
        sp.launch_start(ES_POLICY, session=blob.session)
    assert _status(e) is S.INVALID_PARAM


# -- LAUNCH_SECRET ---------------------------------------------------------------------
def _measured_with_owner(sp):
    owner = GuestOwner(ES_POLICY)
    blob = owner.launch_blob(sp.pdh_cert_export())
    handle = sp.launch_start(ES_POLICY, dh_cert=blob.dh_cert, session=blob.session)
    memory = guest_memory(sp, handle)
    page = os.urandom(0x1000)
    _load(memory, VMSA_SPAS[0], page)
    sp.launch_update_vmsa(handle, memory, VMSA_SPAS[0], 0)
    return owner, handle, memory, sp.launch_measure(handle)


def test_injected_secret_is_private_and_absent_from_dram(sp):
    owner, handle, memory, m = _measured_with_owner(sp)
    secret = b"the disk key: 0123456789abcdef!!" * 2
    packet = seal_secret(owner.keys, m.measure, secret)
    assert secret not in packet.data
    sp.launch_secret(handle, memory, packet.header, packet.data, 0x3000)
    sp.launch_finish(handle)
    assert memory.read_private(0x3000, len(secret)) == secret
    for region, dram in memory.dram_image():
        assert secret[:16] not in dram, region.name
        assert secret[16:32] not in dram, region.name


@pytest.mark.parametrize("tamper", ["data", "header", "other launch"])
def test_tampered_secret_is_a_bad_measurement(sp, tamper):
    owner, handle, memory, m = _measured_with_owner(sp)
    measure = m.measure if tamper != "other launch" else os.urandom(32)
    packet = seal_secret(owner.keys, measure, bytes(32))
    header, data = bytearray(packet.header), bytearray(packet.data)
    if tamper == "data":
        data[5] ^= 1
    elif tamper == "header":
        header[10] ^= 1
    with pytest.raises(SevError) as e:
        sp.launch_secret(handle, memory, bytes(header), bytes(data), 0x3000)
    assert _status(e) is S.BAD_MEASUREMENT
    assert memory.read_private(0x3000, 32) == bytes(32)  # nothing was written


def test_secret_length_address_and_flags(sp):
    owner, handle, memory, m = _measured_with_owner(sp)
    good = seal_secret(owner.keys, m.measure, bytes(32))
    with pytest.raises(SevError) as e:
        sp.launch_secret(handle, memory, good.header, good.data, 0x3008)
    assert _status(e) is S.INVALID_ADDRESS
    odd = seal_secret(owner.keys, m.measure, bytes(20))
    with pytest.raises(SevError) as e:
        sp.launch_secret(handle, memory, odd.header, odd.data, 0x3000)
    assert _status(e) is S.INVALID_LENGTH
    compressed = seal_secret(owner.keys, m.measure, bytes(32), flags=1)
    with pytest.raises(SevError) as e:
        sp.launch_secret(handle, memory, compressed.header, compressed.data, 0x3000)
    assert _status(e) is S.UNSUPPORTED


# -- keys stay inside -------------------------------------------------------------------
def test_no_key_material_is_a_module_global(sp):
    _launched_es(sp)
    modules = [sevx86.sp.secure_processor, sevx86.sp.channel, sevx86.sp.owner, sevx86.sp.certs]
    for module in modules:
        for name, value in vars(module).items():
            assert not isinstance(value, MemoryCipher | TransportKeys), (module, name)
            if isinstance(value, bytes):
                assert len(value) not in (16, 32), (module, name)
    assert "key" not in repr(sp).lower()
    handle = sp.launch_start(ES_POLICY)
    assert isinstance(sp.memory_cipher(handle), MemoryCipher)
