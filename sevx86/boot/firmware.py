"""sevx86's own firmware (firmware/): build it, wrap a payload into a flash image, boot it.

The firmware is real assembly (``firmware/reset.S`` for the top 64 KiB of
the flash, ``firmware/runtime.S`` for its 64-bit part) assembled by
``sevx86.asm``. Assembling takes about half a second (the #VC handler is
large), so the result is cached: once per process, and on disk under
``$SEVX86_CACHE_DIR`` (default ``~/.cache/sevx86``) keyed by a hash of every
source that goes into it and of the assembler itself.

A flash image is ``payload (page-aligned) | header page | firmware``, ending
at 4 GiB (``sevx86.asm.fw_abi`` has the layout). The whole image is
measured at launch, so for a given payload, RAM size and vCPU set-up the
launch digest equals ``sev-snp-measure --mode seves --ovmf IMAGE``.

``boot_machine`` launches the image as QEMU would (``sevx86.boot.launch``
for sev and sev-es, a plain load for mode none) and returns a ``Machine``
whose vCPUs start in the reset state; ``sevx86 run`` puts a
``sevx86.hv.Hypervisor`` on it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sevx86.asm as asm_package
from sevx86 import __version__
from sevx86.asm import Program, assemble
from sevx86.asm import fw_abi as abi
from sevx86.asm.preprocess import guest_asm_dir
from sevx86.boot.launch import DEFAULT_VCPU_TYPE, LaunchedGuest, adopt, launch_guest
from sevx86.config import PAGE_SIZE, GuestConfig
from sevx86.machine import Machine
from sevx86.sp.launch import LaunchError
from sevx86.sp.policy import GuestPolicy
from sevx86.sp.secure_processor import SecureProcessor
from sevx86.trace.events import Tracer

SOURCES = ("reset.S", "runtime.S")


class FirmwareError(ValueError):
    """A payload or machine the firmware cannot boot (message names the limit)."""


def firmware_dir() -> Path:
    """firmware/ of an installed package (sevx86/firmware) or of a source checkout."""
    package = Path(__file__).resolve().parents[1]
    for folder in (package / "firmware", package.parent / "firmware"):
        if (folder / SOURCES[0]).is_file():
            return folder
    raise FileNotFoundError("sevx86 firmware sources (firmware/reset.S) not found")


def _inputs() -> list[Path]:
    """Every file whose change can change the built firmware."""
    files = [firmware_dir() / name for name in SOURCES]
    asm_dir = guest_asm_dir()
    if asm_dir is not None:
        # The handlers and includes; examples/ is not part of the firmware.
        files += sorted(p for p in asm_dir.glob("*.S"))
        files += sorted(p for p in asm_dir.glob("include/*.inc"))
    files += sorted(Path(asm_package.__file__).parent.glob("*.py"))
    return files


def source_hash() -> str:
    digest = hashlib.sha256(__version__.encode())
    for path in _inputs():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where built firmware is kept between runs."""
    explicit = os.environ.get("SEVX86_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sevx86"


@dataclass(frozen=True)
class FirmwareBuild:
    """The assembled firmware and both programs (for their symbols)."""

    code: bytes  # the top FIRMWARE_SIZE bytes of the flash
    reset: Program
    runtime: Program


def assemble_firmware() -> FirmwareBuild:
    """Assemble runtime.S, then reset.S around it (no cache)."""
    folder = firmware_dir()
    runtime = assemble(path=folder / "runtime.S", bits=64)
    if runtime.base != abi.RUNTIME_GPA or len(runtime.code) > abi.RUNTIME_MAX:
        raise FirmwareError(
            f"runtime.S: {len(runtime.code):#x} bytes at {runtime.base:#x}; "
            f"must fit {abi.RUNTIME_MAX:#x} bytes at {abi.RUNTIME_GPA:#x}"
        )
    with tempfile.TemporaryDirectory(prefix="sevx86-fw-") as tmp:
        (Path(tmp) / "runtime.bin").write_bytes(runtime.code)
        reset = assemble(path=folder / "reset.S", bits=16, include_paths=[Path(tmp)])
    if reset.base != abi.FIRMWARE_BASE or len(reset.code) != abi.FIRMWARE_SIZE:
        raise FirmwareError(
            f"reset.S: {len(reset.code):#x} bytes at {reset.base:#x}; "
            f"must be {abi.FIRMWARE_SIZE:#x} bytes ending at 4 GiB"
        )
    return FirmwareBuild(reset.code, reset, runtime)


def firmware_cache_path() -> Path:
    """The cache file of the firmware as the current sources would build it."""
    return cache_dir() / f"firmware-{source_hash()[:20]}.bin"


@functools.cache
def firmware_code() -> bytes:
    """The firmware's flash bytes, from the cache when the sources did not change."""
    path = firmware_cache_path()
    try:
        code = path.read_bytes()
        if len(code) == abi.FIRMWARE_SIZE:
            return code
    except OSError:
        pass
    code = assemble_firmware().code
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".firmware-")
        with os.fdopen(fd, "wb") as f:
            f.write(code)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: build again next time
    return code


def _page_align(size: int) -> int:
    return (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def check_machine(payload_size: int, memory: int, vcpus: int = 1) -> None:
    """Refuse what the firmware would refuse, with a message a user can act on."""
    if vcpus < 1:
        raise FirmwareError(f"{vcpus} vCPUs: a guest needs at least one")
    if vcpus > abi.MAX_VCPUS:
        raise FirmwareError(f"{vcpus} vCPUs: the firmware brings up at most {abi.MAX_VCPUS}")
    if payload_size > abi.PAYLOAD_MAX:
        raise FirmwareError(
            f"payload of {payload_size} bytes is larger than {abi.PAYLOAD_MAX >> 20} MiB"
        )
    if not abi.RAM_MIN <= memory <= abi.RAM_MAX:
        raise FirmwareError(
            f"memory {memory >> 20} MiB is outside {abi.RAM_MIN >> 20} MiB.."
            f"{abi.RAM_MAX >> 30} GiB (the firmware maps RAM below 3 GiB)"
        )
    if abi.PAYLOAD_GPA + payload_size > memory:
        room = memory - abi.PAYLOAD_GPA
        raise FirmwareError(
            f"payload of {payload_size} bytes does not fit in guest memory: "
            f"{room} bytes from {abi.PAYLOAD_GPA:#x} to the end of {memory >> 20} MiB "
            "(give more --memory)"
        )


def payload_header(payload_size: int, memory: int) -> bytes:
    header = abi.PAYLOAD_HEADER.new()
    abi.PAYLOAD_HEADER.write(header, "magic", abi.PAYLOAD_MAGIC)
    abi.PAYLOAD_HEADER.write(header, "version", abi.PAYLOAD_HEADER_VERSION)
    abi.PAYLOAD_HEADER.write(header, "payload_size", payload_size)
    abi.PAYLOAD_HEADER.write(header, "memory_size", memory)
    return bytes(header).ljust(PAGE_SIZE, b"\0")


def flash_image(payload: bytes = b"", *, memory: int = 64 << 20) -> bytes:
    """The flash image: payload, header page, firmware; it ends at 4 GiB."""
    check_machine(len(payload), memory)
    padded = bytes(payload).ljust(_page_align(len(payload)), b"\0")
    return padded + payload_header(len(payload), memory) + firmware_code()


@dataclass
class BootedGuest:
    """A machine ready to run the firmware, and how it was launched."""

    machine: Machine
    image: bytes
    launch: LaunchedGuest  # in mode none too (nothing measured: no digest)

    @property
    def launch_digest(self) -> bytes | None:
        return self.launch.launch_digest


def boot_machine(
    payload: bytes,
    config: GuestConfig,
    *,
    policy: GuestPolicy | int | None = None,
    tracer: Tracer | None = None,
    sp: SecureProcessor | None = None,
    vcpu_type: str = DEFAULT_VCPU_TYPE,
    launch_options: Mapping[str, Any] | None = None,
) -> BootedGuest:
    """Launch the firmware with ``payload`` as QEMU launches a guest from pflash.

    Every vCPU starts in the reset state (``sevx86.boot.reset``): vCPU 0 at
    the reset vector, the others at the AP reset address of the image's
    SEV-ES reset block, where they wait for the firmware's INIT-SIPI
    (firmware/README.md, "APs"). Raises ``FirmwareError`` for what cannot
    boot (including more than ``fw_abi.MAX_VCPUS`` vCPUs).
    """
    check_machine(len(payload), config.memory, config.vcpus)
    image = flash_image(payload, memory=config.memory)
    try:
        launched = launch_guest(
            sp,
            image,
            config=config,
            policy=policy,
            vcpu_type=vcpu_type,
            tracer=tracer,
            # the guest owner's dh_cert/session and a secret provider, as QEMU's
            # sev-guest object takes them
            **(launch_options or {}),
        )
    except (LaunchError, ValueError) as exc:
        raise FirmwareError(str(exc)) from None
    return BootedGuest(adopt(launched, tracer=tracer), image, launched)


__all__ = [
    "BootedGuest",
    "FirmwareBuild",
    "FirmwareError",
    "assemble_firmware",
    "boot_machine",
    "cache_dir",
    "check_machine",
    "firmware_cache_path",
    "firmware_code",
    "firmware_dir",
    "flash_image",
]
