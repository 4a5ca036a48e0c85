"""OVMF from the reset vector to the UEFI shell banner: sevx86 (SEV-ES) vs QEMU TCG.

Both boot Debian's ``OVMF_CODE.fd`` with a fresh copy of ``OVMF_VARS.fd``,
back to back on the same machine:

* ``sevx86 boot OVMF_CODE.fd --varstore COPY --until shell --quiet --json``
  (an SEV-ES guest: encrypted memory and registers, every exit through the
  #VC handler, the GHCB and the Python hypervisor);
* ``qemu-system-x86_64 -accel tcg -machine pc -m 512M -nographic -nic none``
  with the same two flash drives, stopped when the banner appears on its
  serial console (plain TCG: no SEV, no encryption).

Prints both times, their ratio and sevx86's exits per second. Targets
(issue 11): ratio <= 2.0, >= 20,000 exits/s.

QEMU is a benchmark-only dependency: ``apt-get install qemu-system-x86``
(and ``ovmf`` for the firmware). Without either the script says so and exits.

Run: python benchmarks/bench_ovmf.py [--timeout S]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import report  # noqa: E402

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
BANNER = b"UEFI Interactive Shell"
QEMU = "qemu-system-x86_64"


def _fresh_vars(tmp: Path, name: str) -> Path:
    copy = tmp / name
    shutil.copyfile(OVMF_VARS, copy)
    return copy


def sevx86_boot(tmp: Path, timeout: float) -> tuple[float, dict]:
    """Wall seconds of ``sevx86 boot ... --until shell`` and its JSON summary."""
    cmd = [
        sys.executable,
        "-c",
        "import sys; from sevx86.cli.main import main; sys.exit(main(sys.argv[1:]))",
        "boot",
        str(OVMF_CODE),
        "--varstore",
        str(_fresh_vars(tmp, "sevx86_vars.fd")),
        "--until",
        "shell",
        "--quiet",
        "--json",
        "--timeout",
        str(timeout),
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, timeout=timeout + 60, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(
            f"sevx86 boot did not reach the shell (status {done.returncode}):\n"
            f"{done.stdout.decode(errors='replace')[-800:]}"
            f"{done.stderr.decode(errors='replace')[-800:]}"
        )
    return elapsed, json.loads(done.stdout)


def qemu_boot(tmp: Path, timeout: float) -> float:
    """Wall seconds from QEMU's start to the shell banner on its serial console."""
    cmd = [
        QEMU,
        "-accel",
        "tcg",
        "-machine",
        "pc",
        "-m",
        "512M",
        "-nographic",
        "-nic",
        "none",
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={_fresh_vars(tmp, 'qemu_vars.fd')}",
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    seen = b""
    try:
        assert proc.stdout is not None
        while BANNER not in seen:
            if time.perf_counter() - start > timeout:
                raise SystemExit(f"qemu: no shell banner within {timeout} s")
            chunk = proc.stdout.read1(4096)
            if not chunk:
                raise SystemExit(f"qemu exited (status {proc.wait()}) before the shell banner")
            seen = seen[-len(BANNER) :] + chunk
        return time.perf_counter() - start
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=900, help="per boot (default 900 s)")
    args = parser.parse_args()
    if shutil.which(QEMU) is None:
        raise SystemExit(f"{QEMU} not found: apt-get install qemu-system-x86 (benchmark only)")
    if not (OVMF_CODE.exists() and OVMF_VARS.exists()):
        raise SystemExit(f"{OVMF_CODE} / {OVMF_VARS} not found: apt-get install ovmf")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        qemu = qemu_boot(tmp, args.timeout)
        sev, summary = sevx86_boot(tmp, args.timeout)
    exits = int(summary.get("exits", 0))
    report(
        "OVMF reset -> UEFI shell banner: sevx86 boot (SEV-ES) vs qemu -accel tcg -machine pc",
        [
            {
                "sevx86_s": sev,
                "qemu_tcg_s": qemu,
                "ratio": sev / qemu,
                "sevx86_exits": exits,
                "sevx86_exits_per_s": exits / sev,
                "target_ratio": 2.0,
                "target_exits_per_s": 20_000,
            }
        ],
    )


if __name__ == "__main__":
    main()
