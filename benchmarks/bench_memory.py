"""Memory layer speed, as ratios measured in one run (issue: foundation).

1. Bulk encrypt+decrypt of a 4 MiB region through the memory layer (host view
   read = encrypt, host write = decrypt) vs raw ``cryptography`` AES-128 on the
   same bytes: ECB through the plain ``update()`` API (what "raw AES" costs a
   caller) and, stricter, XTS (OpenSSL's fastest tweakable AES mode here).
   Target: ratio >= 0.5.
2. A guest loop with the MMU hook installed (long-mode paging, our walker on
   every TLB miss) vs raw Unicorn on the same code. Target: ratio >= 0.9.

Run: python benchmarks/bench_memory.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from keystone import KS_ARCH_X86, KS_MODE_64, Ks  # noqa: E402
from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc  # noqa: E402

from benchmarks._common import best_of, report  # noqa: E402
from sevx86.config import GuestConfig  # noqa: E402
from sevx86.memory.cipher import MemoryCipher  # noqa: E402
from sevx86.memory.dram import PhysicalMemory  # noqa: E402
from tests.memory.conftest import CODE, make_machine  # noqa: E402

REGION = 4 << 20
# Register arithmetic plus loads and stores to a data page the MMU mapped.
LOOP = """
    mov rcx, {n}
    mov rdi, 0x80000
    xor rax, rax
top:
    add [rdi], rcx
    mov rax, [rdi + 8]
    xor rax, rcx
    mov [rdi + 8], rax
    dec rcx
    jnz top
"""


def bench_bulk() -> dict[str, object]:
    key = os.urandom(32)
    config = GuestConfig(memory=8 << 20)
    memory = PhysicalMemory(config, MemoryCipher(key))
    data = os.urandom(REGION)
    base = 0x100000

    def layer() -> None:
        memory.write_dram(base, data)  # decrypt into the private view
        memory.read_dram(base, REGION)  # encrypt back out

    def raw_ecb() -> None:
        aes = algorithms.AES(key[:16])
        Cipher(aes, modes.ECB()).decryptor().update(data)
        Cipher(aes, modes.ECB()).encryptor().update(data)

    def raw_xts() -> None:
        aes = algorithms.AES(key)
        Cipher(aes, modes.XTS(bytes(16))).decryptor().update(data)
        Cipher(aes, modes.XTS(bytes(16))).encryptor().update(data)

    t_layer, t_ecb, t_xts = best_of(layer), best_of(raw_ecb), best_of(raw_xts)
    return {
        "case": "4MiB encrypt+decrypt",
        "layer_ms": t_layer * 1e3,
        "raw_ecb_ms": t_ecb * 1e3,
        "raw_xts_ms": t_xts * 1e3,
        "ratio_vs_ecb": t_ecb / t_layer,
        "ratio_vs_xts": t_xts / t_layer,
    }


def bench_loop(iterations: int = 20_000_000) -> dict[str, object]:
    code, _ = Ks(KS_ARCH_X86, KS_MODE_64).asm(LOOP.format(n=iterations))
    code = bytes(code)

    raw = Uc(UC_ARCH_X86, UC_MODE_64)
    raw.mem_map(0, 0x200000, UC_PROT_ALL)
    raw.mem_write(CODE, code)

    machine = make_machine()
    machine.memory.write_private(CODE, code)

    def run_raw() -> None:
        raw.emu_start(CODE, CODE + len(code))

    def run_mmu() -> None:
        machine.uc.emu_start(CODE, CODE + len(code))

    # Interleaved, best of each: the speed of a tight JIT loop depends on
    # where its host code lands, which differs between Unicorn instances.
    t_raw = t_mmu = float("inf")
    for _ in range(3):
        t_raw = min(t_raw, best_of(run_raw, 1))
        t_mmu = min(t_mmu, best_of(run_mmu, 1))
    return {
        "case": f"guest loop {iterations} iterations",
        "raw_s": t_raw,
        "mmu_hook_s": t_mmu,
        "guest_Minsn_per_s": 6 * iterations / t_mmu / 1e6,
        "ratio": t_raw / t_mmu,
        "tlb_fills": machine.filler.fills,
    }


if __name__ == "__main__":
    report("memory layer", [bench_bulk(), bench_loop()])
