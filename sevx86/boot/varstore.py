"""Read the UEFI variables out of a varstore image (OVMF_VARS.fd, or pflash1 after a boot).

``parse_varstore(data)`` walks the variable store of the FV at the start of
``data`` (layouts in ``sevx86.arch.uefi_var``) and returns every variable
header it finds, deleted ones included: the flash keeps them until the
variable driver reclaims the space. ``live_variables`` keeps the ones a
GetVariable() would return. Useful to see what a guest stored::

    flash = boot.pc.pflash1
    store = parse_varstore(boot.hv.host.memory.read(flash.base, flash.size))
    {v.name: v.data for v in live_variables(store)}
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sevx86.arch import uefi_fv as fv
from sevx86.arch.uefi_var import (
    AUTHENTICATED_VARIABLE_GUID,
    AUTHENTICATED_VARIABLE_HEADER,
    HEADER_ALIGNMENT,
    VARIABLE_DATA,
    VARIABLE_GUID,
    VARIABLE_HEADER,
    VARIABLE_STORE_HEADER,
    VarState,
)


class VarstoreError(ValueError):
    """The bytes are not a variable store this parser knows."""


@dataclass(frozen=True)
class Variable:
    name: str
    vendor: uuid.UUID
    attributes: int
    state: int
    data: bytes
    offset: int  # of the header, from the start of the image

    @property
    def live(self) -> bool:
        """Added and not deleted (a variable in deleted transition still counts)."""
        return self.state in (VarState.ADDED, VarState.ADDED & VarState.IN_DELETED_TRANSITION)


@dataclass(frozen=True)
class Varstore:
    authenticated: bool
    size: int  # of the variable store, its header included
    variables: tuple[Variable, ...]
    end: int  # offset of the first free byte after the last header


def parse_varstore(data: bytes) -> Varstore:
    head = data[: fv.FV_HEADER.size]
    if len(head) < fv.FV_HEADER.size or fv.FV_HEADER["signature"].read_bytes(head) != (
        fv.FV_SIGNATURE
    ):
        raise VarstoreError("no firmware volume header at offset 0")
    start = fv.FV_HEADER["header_length"].read(head)
    store = data[start : start + VARIABLE_STORE_HEADER.size]
    if len(store) < VARIABLE_STORE_HEADER.size:
        raise VarstoreError("truncated variable store header")
    signature = uuid.UUID(bytes_le=VARIABLE_STORE_HEADER["signature"].read_bytes(store))
    if signature not in (VARIABLE_GUID, AUTHENTICATED_VARIABLE_GUID):
        raise VarstoreError(f"unknown variable store signature {signature}")
    authenticated = signature == AUTHENTICATED_VARIABLE_GUID
    layout = AUTHENTICATED_VARIABLE_HEADER if authenticated else VARIABLE_HEADER
    size = VARIABLE_STORE_HEADER["size"].read(store)
    limit = min(len(data), start + size)
    variables = []
    offset = _align(start + VARIABLE_STORE_HEADER.size)
    while offset + layout.size <= limit:
        header = data[offset : offset + layout.size]
        if layout["start_id"].read(header) != VARIABLE_DATA:
            break
        name_size = layout["name_size"].read(header)
        data_size = layout["data_size"].read(header)
        name_at = offset + layout.size
        data_at = name_at + name_size
        if data_at + data_size > limit:
            raise VarstoreError(f"variable at {offset:#x} runs past the store")
        variables.append(
            Variable(
                name=data[name_at:data_at].decode("utf-16-le", "replace").rstrip("\0"),
                vendor=uuid.UUID(bytes_le=layout["vendor_guid"].read_bytes(header)),
                attributes=layout["attributes"].read(header),
                state=layout["state"].read(header),
                data=bytes(data[data_at : data_at + data_size]),
                offset=offset,
            )
        )
        offset = _align(data_at + data_size)
    return Varstore(authenticated, size, tuple(variables), offset)


def live_variables(store: Varstore) -> list[Variable]:
    return [v for v in store.variables if v.live]


def _align(offset: int) -> int:
    return (offset + HEADER_ALIGNMENT - 1) & ~(HEADER_ALIGNMENT - 1)


__all__ = ["Variable", "Varstore", "VarstoreError", "live_variables", "parse_varstore"]
