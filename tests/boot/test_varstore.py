"""Reading UEFI variables out of a varstore image (edk2's VariableFormat.h)."""

from __future__ import annotations

import uuid

import pytest

from sevx86.arch import uefi_fv as fv
from sevx86.arch.uefi_var import (
    AUTHENTICATED_VARIABLE_GUID,
    AUTHENTICATED_VARIABLE_HEADER,
    SYSTEM_NV_DATA_FV_GUID,
    VARIABLE_DATA,
    VARIABLE_GUID,
    VARIABLE_HEADER,
    VARIABLE_STORE_FORMATTED,
    VARIABLE_STORE_HEADER,
    VARIABLE_STORE_HEALTHY,
    VarState,
)
from sevx86.boot.varstore import VarstoreError, live_variables, parse_varstore
from tests.ovmf import OVMF_VARS, needs_ovmf_vars

GLOBAL = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")  # EFI_GLOBAL_VARIABLE


def _store(variables: list[tuple[str, int, bytes]], *, authenticated: bool) -> bytes:
    image = bytearray(b"\xff" * 0x4000)
    head = fv.FV_HEADER.new()
    fv.FV_HEADER["file_system_guid"].write_bytes(head, SYSTEM_NV_DATA_FV_GUID.bytes_le)
    fv.FV_HEADER["fv_length"].write(head, len(image))
    fv.FV_HEADER["signature"].write_bytes(head, fv.FV_SIGNATURE)
    fv.FV_HEADER["header_length"].write(head, 0x48)
    image[: fv.FV_HEADER.size] = head
    store = VARIABLE_STORE_HEADER.new()
    signature = AUTHENTICATED_VARIABLE_GUID if authenticated else VARIABLE_GUID
    VARIABLE_STORE_HEADER["signature"].write_bytes(store, signature.bytes_le)
    VARIABLE_STORE_HEADER["size"].write(store, len(image) - 0x48)
    VARIABLE_STORE_HEADER["format"].write(store, VARIABLE_STORE_FORMATTED)
    VARIABLE_STORE_HEADER["state"].write(store, VARIABLE_STORE_HEALTHY)
    image[0x48 : 0x48 + len(store)] = store
    layout = AUTHENTICATED_VARIABLE_HEADER if authenticated else VARIABLE_HEADER
    offset = 0x64
    for name, state, data in variables:
        header = layout.new()
        encoded = (name + "\0").encode("utf-16-le")
        layout["start_id"].write(header, VARIABLE_DATA)
        layout["state"].write(header, state)
        layout["attributes"].write(header, 7)
        layout["name_size"].write(header, len(encoded))
        layout["data_size"].write(header, len(data))
        layout["vendor_guid"].write_bytes(header, GLOBAL.bytes_le)
        blob = bytes(header) + encoded + data
        image[offset : offset + len(blob)] = blob
        offset = (offset + len(blob) + 3) & ~3
    return bytes(image)


@pytest.mark.parametrize("authenticated", [False, True])
def test_variables_and_their_states(authenticated):
    deleted = VarState.ADDED & VarState.IN_DELETED_TRANSITION & VarState.DELETED
    image = _store(
        [
            ("Lang", deleted, b"fra\0"),
            ("Lang", VarState.ADDED, b"eng\0"),
            ("Timeout", VarState.ADDED & VarState.IN_DELETED_TRANSITION, b"\x05\x00"),
            ("Half", VarState.HEADER_VALID_ONLY, b"x"),
        ],
        authenticated=authenticated,
    )
    store = parse_varstore(image)
    assert store.authenticated is authenticated
    assert [v.name for v in store.variables] == ["Lang", "Lang", "Timeout", "Half"]
    live = {v.name: v.data for v in live_variables(store)}
    assert live == {"Lang": b"eng\0", "Timeout": b"\x05\x00"}
    assert store.variables[1].vendor == GLOBAL and store.variables[1].attributes == 7
    assert store.end % 4 == 0 and image[store.end : store.end + 2] == b"\xff\xff"


def test_not_a_varstore():
    with pytest.raises(VarstoreError):
        parse_varstore(b"\0" * 0x1000)
    image = bytearray(_store([], authenticated=False))
    image[0x48:0x58] = uuid.uuid4().bytes_le
    with pytest.raises(VarstoreError):
        parse_varstore(bytes(image))


@needs_ovmf_vars
def test_debians_ovmf_vars_is_an_empty_authenticated_store():
    store = parse_varstore(OVMF_VARS.read_bytes())
    assert store.authenticated and store.variables == ()
    assert store.size + 0x48 <= OVMF_VARS.stat().st_size
