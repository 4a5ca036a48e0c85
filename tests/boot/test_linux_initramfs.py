"""The test initramfs (cpio newc, tests/linux.py) as Debian's cpio and the kernel read it."""

from __future__ import annotations

import shutil
import stat
import subprocess

import pytest

from tests.linux import SHELL_MARKER, build_initramfs, cpio_newc, default_init

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="Debian's cpio is absent")


def test_newc_header_fields_are_the_documented_ascii_hex():
    """buffer-format.rst: "070701", 13 eight-digit hex fields, name, 4-byte padding."""
    archive = cpio_newc([("init", stat.S_IFREG | 0o755, b"#!/bin/sh\n")])
    assert archive[:6] == b"070701"
    fields = [int(archive[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
    ino, mode, _uid, _gid, nlink, mtime, size, *_devs, namesize, check = fields
    assert (ino, mode, nlink, mtime, size, namesize, check) == (1, 0o100755, 1, 0, 10, 5, 0)
    # Header (110 bytes) + name "init\0" = 115, padded to 116; then the data.
    assert archive[110:116] == b"init\0\0"
    assert archive[116:126] == b"#!/bin/sh\n"
    assert b"TRAILER!!!\0" in archive[-128:] and len(archive) % 4 == 0


@needs_cpio
def test_debian_cpio_lists_and_extracts_the_initramfs(tmp_path):
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF pretend busybox")
    image = build_initramfs(default_init("uname -a"), busybox)
    assert image == build_initramfs(default_init("uname -a"), busybox)  # reproducible
    listing = subprocess.run(
        ["cpio", "-t", "--quiet"], input=image, capture_output=True, check=True
    ).stdout.decode()
    assert set(listing.split()) >= {"bin/busybox", "bin/sh", "dev/console", "init", "proc"}
    out = tmp_path / "root"
    out.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames"],
        input=image,
        cwd=out,
        check=True,
        capture_output=True,
    )
    init = out / "init"
    assert init.stat().st_mode & 0o777 == 0o755
    assert SHELL_MARKER in init.read_text() and "uname -a" in init.read_text()
    assert (out / "bin" / "sh").is_symlink() and (out / "bin" / "sh").readlink().name == "busybox"
    assert (out / "bin" / "busybox").read_bytes() == busybox.read_bytes()
