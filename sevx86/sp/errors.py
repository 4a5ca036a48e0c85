"""SEV API status codes and the exception every refused command raises.

The codes are those of the SEV API specification (AMD pub 55766, chapter 4,
"Status Codes"), checked against AMD's own SEV firmware (AMD-ASPFW,
``sev_errors.h``) and the ``sevapi.h`` header of AMD's sev-tool. A command
the Secure Processor refuses raises :class:`SevError` carrying the code, so
callers can branch on ``err.status`` and people read the spec's name.
"""

from __future__ import annotations

from enum import IntEnum


class SevApiStatus(IntEnum):
    """Firmware status codes, SEV API (55766) chapter 4."""

    SUCCESS = 0x00
    INVALID_PLATFORM_STATE = 0x01
    INVALID_GUEST_STATE = 0x02
    INVALID_CONFIG = 0x03
    INVALID_LENGTH = 0x04
    ALREADY_OWNED = 0x05
    INVALID_CERTIFICATE = 0x06
    POLICY_FAILURE = 0x07
    INACTIVE = 0x08
    INVALID_ADDRESS = 0x09
    BAD_SIGNATURE = 0x0A
    BAD_MEASUREMENT = 0x0B
    ASID_OWNED = 0x0C
    INVALID_ASID = 0x0D
    WBINVD_REQUIRED = 0x0E
    DFFLUSH_REQUIRED = 0x0F
    INVALID_GUEST = 0x10
    INVALID_COMMAND = 0x11
    ACTIVE = 0x12
    HWERROR_PLATFORM = 0x13
    HWERROR_UNSAFE = 0x14
    UNSUPPORTED = 0x15
    INVALID_PARAM = 0x16
    RESOURCE_LIMIT = 0x17


class SevError(Exception):
    """A command refused by the Secure Processor, with its SEV API status."""

    def __init__(self, status: SevApiStatus, command: str, detail: str = ""):
        self.status = SevApiStatus(status)
        self.command = command
        self.detail = detail
        text = f"{command}: {self.status.name} ({int(self.status):#04x})"
        super().__init__(f"{text}: {detail}" if detail else text)

    @property
    def code(self) -> int:
        """The numeric status, as the firmware returns it."""
        return int(self.status)
