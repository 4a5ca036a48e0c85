"""Debian's cloud kernel and a busybox initramfs, for the Linux tests.

``.ci/run`` downloads ``linux-image-6.1.0-*-cloud-amd64`` (what the
``linux-image-cloud-amd64`` metapackage depends on) and ``busybox-static``
with ``apt-get download`` and unpacks them with ``dpkg-deb -x`` into a cache
outside the repository (``LINUX_CACHE``); nothing is installed on the host.
Tests that need them skip with the reason and the commands (``FETCH``).

The initramfs is written here in the cpio "newc" format (Linux
``Documentation/driver-api/early-userspace/buffer-format.rst``), not with
Debian's ``cpio``: a few lines give an archive that is the same bytes on every
machine (fixed inode numbers, owners and mtimes), which a launch digest over
the initrd needs, and no host tool is required. The tests check the archive
with Debian's ``cpio`` where it is installed.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

LINUX_CACHE = Path(
    os.environ.get("SEVX86_LINUX_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sevx86" / "linux"
)
ROOT = LINUX_CACHE / "root"  # where dpkg-deb -x unpacked the packages
FETCH = (
    f"mkdir -p {LINUX_CACHE} && cd {LINUX_CACHE} && "
    "apt-get download $(apt-cache depends linux-image-cloud-amd64 "
    "| awk '/Depends: linux-image-[0-9]/ && !n {print $2; n = 1}') busybox-static && "
    "for d in *.deb; do dpkg-deb -x $d root; done"
)
SHELL_MARKER = "SEVX86-INIT-SHELL"


def find_vmlinuz() -> Path | None:
    """The newest unpacked Debian cloud kernel (by ABI number: -57 after -9), if any."""

    def version(path: Path) -> list[int | str]:
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]

    found = sorted((ROOT / "boot").glob("vmlinuz-*-cloud-amd64"), key=version)
    return found[-1] if found else None


def find_busybox() -> Path | None:
    path = ROOT / "bin" / "busybox"
    return path if path.exists() else None


_ABSENT = f"Debian's cloud kernel and busybox-static are not in {LINUX_CACHE} (get them: {FETCH})"
needs_linux = pytest.mark.skipif(find_vmlinuz() is None or find_busybox() is None, reason=_ABSENT)


# -- cpio newc ------------------------------------------------------------------------------
_NEWC_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _newc_entry(
    ino: int, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
) -> bytes:
    raw_name = name.encode() + b"\0"
    fields = (
        ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw_name), 0,
    )  # fmt: skip
    # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    header = _NEWC_MAGIC + b"".join(b"%08X" % value for value in fields)
    return _pad4(header + raw_name) + _pad4(data)


def cpio_newc(
    entries: list[tuple[str, int, bytes]], devices: dict[str, tuple[int, int]] | None = None
) -> bytes:
    """An archive of ``(path, st_mode, data)`` (a symlink's data is its target)."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate(entries, start=1):
        rdev = (devices or {}).get(name, (0, 0))
        out += _newc_entry(ino, name, mode, data, rdev)
    out += _newc_entry(0, _TRAILER, 0)
    return bytes(out)


def default_init(commands: str = "") -> str:
    """An /init that mounts the pseudo file systems, runs ``commands``, prints the
    marker and powers off."""
    return f"""#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
{commands}
echo {SHELL_MARKER}
poweroff -f
"""


def build_initramfs(init: str, busybox: Path) -> bytes:
    """An initramfs: busybox as /bin/sh, the given /init, /dev/console for the first output."""
    directories = ["bin", "dev", "proc", "sys", "tmp"]
    entries: list[tuple[str, int, bytes]] = [(d, stat.S_IFDIR | 0o755, b"") for d in directories]
    entries += [
        ("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()),
        ("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        ("dev/console", stat.S_IFCHR | 0o600, b""),
        ("init", stat.S_IFREG | 0o755, init.encode()),
    ]
    return cpio_newc(entries, devices={"dev/console": (5, 1)})
