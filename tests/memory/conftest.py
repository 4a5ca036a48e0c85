"""A bare long-mode Unicorn with our DRAM and MMU, for memory-layer tests.

No SVM, no hypervisor: just enough CPU to run guest instructions through the
TLB-fill hook, so the memory tests do not depend on the CPU engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from keystone import KS_ARCH_X86, KS_MODE_64, Ks
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc, UcError
from unicorn.x86_const import (
    UC_X86_REG_CR0,
    UC_X86_REG_CR3,
    UC_X86_REG_CR4,
    UC_X86_REG_CS,
    UC_X86_REG_RIP,
)

from sevx86.arch.cr import Cr0, Cr4
from sevx86.arch.msr import Efer, Msr
from sevx86.config import GuestConfig, GuestMode
from sevx86.memory.cipher import MemoryCipher
from sevx86.memory.dram import PhysicalMemory
from sevx86.memory.mmu import MMU, FormChange, PagingState, TlbFiller
from sevx86.memory.pagetables import PageTableBuilder

CODE = 0x1000
TABLES = 0x100000


@dataclass
class LongModeMachine:
    uc: Uc
    memory: PhysicalMemory
    tables: PageTableBuilder
    filler: TlbFiller
    config: GuestConfig

    def state(self) -> PagingState:
        return PagingState(
            self.uc.reg_read(UC_X86_REG_CR0),
            self.uc.reg_read(UC_X86_REG_CR3),
            self.uc.reg_read(UC_X86_REG_CR4),
            self.uc.msr_read(Msr.EFER),
            self.uc.reg_read(UC_X86_REG_CS) & 3,
        )

    def run(self, source: str) -> None:
        """Assemble 64-bit code at CODE and run it to its end (raises on a fault).

        Like the CPU engine, it replays an access after a page changes form
        (sevx86.memory.dram: private <-> shared); any other refusal raises.
        """
        code, _ = Ks(KS_ARCH_X86, KS_MODE_64).asm(source)
        self.memory.write_private(CODE, bytes(code))
        end = CODE + len(code)
        rip = CODE
        while True:
            self.filler.pending = None
            try:
                self.uc.emu_start(rip, end)
                return
            except UcError:
                pending = self.filler.pending
                if not isinstance(pending, FormChange):
                    raise
                if pending.to_shared:
                    self.memory.make_shared(pending.gpa)
                else:
                    self.memory.make_private(pending.gpa)
                self.memory.flush_tlbs()
                rip = self.uc.reg_read(UC_X86_REG_RIP)

    def run_fault(self, source: str):
        with pytest.raises(UcError):
            self.run(source)
        return self.filler.pending, self.uc.reg_read(UC_X86_REG_RIP)


def make_machine(
    mode: GuestMode = GuestMode.SEV_ES, *, shadowing: bool = True, **cfg
) -> LongModeMachine:
    config = GuestConfig(mode=mode, memory=cfg.pop("memory", 16 << 20), **cfg)
    cipher = MemoryCipher(os.urandom(32)) if mode.encrypted else None
    memory = PhysicalMemory(config, cipher)
    memory.shadowing = shadowing and memory.shadowing
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    memory.attach(uc)
    tables = PageTableBuilder(memory, TABLES, 0x100000, config.c_bit)
    # Code and stack: the first 1 MiB, private, 4K pages (the pool sits above).
    tables.map(0, 0, TABLES)
    machine = LongModeMachine(uc, memory, tables, None, config)  # type: ignore[arg-type]
    machine.filler = TlbFiller(MMU(memory, config), machine.state)
    machine.filler.install(uc)
    uc.reg_write(UC_X86_REG_CR3, tables.cr3)
    uc.reg_write(UC_X86_REG_CR4, int(Cr4.PAE))
    uc.msr_write(Msr.EFER, int(Efer.LME | Efer.LMA | Efer.NXE))
    uc.reg_write(UC_X86_REG_CR0, int(Cr0.PE | Cr0.ET | Cr0.WP | Cr0.PG))
    return machine


@pytest.fixture(params=[True, False], ids=["shadow", "alias"])
def machine(request) -> LongModeMachine:
    """Both ways of serving C=0 accesses: a page in shared form, or callbacks."""
    return make_machine(shadowing=request.param)
