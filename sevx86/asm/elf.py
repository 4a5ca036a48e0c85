"""A symbol file for gdb: the assembled programs and their labels as an ELF64 executable.

The layout is the System V ABI's (gABI "ELF Object Files": the ELF header,
program headers, sections, ``.symtab``/``.strtab``, section header string
table; x86-64 psABI for ``EM_X86_64``). Each program becomes one
allocated, executable section at its load address holding its bytes, and
each label a global ``STT_FUNC`` symbol in it, sized up to the next label,
so ``symbol-file``/``file`` then ``break vc_do_cpuid`` and ``bt`` work in gdb.
Only labels go in: ``equ`` constants are values, not places.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from sevx86.asm.program import Program

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ET_EXEC = 2
EM_X86_64 = 62
PT_LOAD = 1
PF_X, PF_R = 1, 4
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB = 1, 2, 3
SHF_ALLOC, SHF_EXECINSTR = 0x2, 0x4
STB_GLOBAL, STT_FUNC = 1, 2

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")


@dataclass(frozen=True)
class SymbolSection:
    """One program in the symbol file: a name for its section, its bytes, its labels."""

    name: str
    base: int
    code: bytes
    symbols: dict[str, int]

    @classmethod
    def of(cls, name: str, program: Program) -> SymbolSection:
        return cls(name, program.base, program.code, dict(program.symbols))


class _Strings:
    def __init__(self) -> None:
        self.data = bytearray(b"\0")
        self._seen: dict[str, int] = {}

    def add(self, text: str) -> int:
        if text not in self._seen:
            self._seen[text] = len(self.data)
            self.data += text.encode() + b"\0"
        return self._seen[text]


def symbol_elf(sections: Sequence[SymbolSection], *, entry: int = 0) -> bytes:
    """The ELF image (bytes) of ``sections``."""
    shstr, strtab = _Strings(), _Strings()
    phoff = _EHDR.size
    data_off = phoff + _PHDR.size * len(sections)
    body = bytearray()
    phdrs, shdrs = [], [_SHDR.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
    for s in sections:
        off = data_off + len(body)
        body += s.code
        phdrs.append(
            _PHDR.pack(PT_LOAD, PF_R | PF_X, off, s.base, s.base, len(s.code), len(s.code), 1)
        )
        shdrs.append(
            _SHDR.pack(
                shstr.add(f".text.{s.name}"),
                SHT_PROGBITS,
                SHF_ALLOC | SHF_EXECINSTR,
                s.base,
                off,
                len(s.code),
                0,
                0,
                1,
                0,
            )
        )
    symtab = bytearray(_SYM.pack(0, 0, 0, 0, 0, 0))
    for shndx, s in enumerate(sections, start=1):
        labels = sorted(
            (addr, name)
            for name, addr in s.symbols.items()
            if s.base <= addr <= s.base + len(s.code)
        )
        for i, (addr, name) in enumerate(labels):
            nxt = s.base + len(s.code)
            for later, _ in labels[i + 1 :]:
                if later > addr:
                    nxt = later
                    break
            info = (STB_GLOBAL << 4) | STT_FUNC
            symtab += _SYM.pack(strtab.add(name), info, 0, shndx, addr, nxt - addr)
    symtab_off = data_off + len(body)
    body += symtab
    strtab_off = data_off + len(body)
    body += strtab.data
    nsec = len(sections)
    shdrs.append(
        _SHDR.pack(
            shstr.add(".symtab"),
            SHT_SYMTAB,
            0,
            0,
            symtab_off,
            len(symtab),
            nsec + 2,
            1,
            8,
            _SYM.size,
        )
    )
    shdrs.append(
        _SHDR.pack(shstr.add(".strtab"), SHT_STRTAB, 0, 0, strtab_off, len(strtab.data), 0, 0, 1, 0)
    )
    shstrndx = len(shdrs)
    name = shstr.add(".shstrtab")
    shstr_off = data_off + len(body)
    body += shstr.data
    shdrs.append(_SHDR.pack(name, SHT_STRTAB, 0, 0, shstr_off, len(shstr.data), 0, 0, 1, 0))
    while (data_off + len(body)) % 8:
        body += b"\0"
    shoff = data_off + len(body)
    ident = ELF_MAGIC + bytes((ELFCLASS64, ELFDATA2LSB, EV_CURRENT)) + bytes(9)
    header = _EHDR.pack(
        ident,
        ET_EXEC,
        EM_X86_64,
        EV_CURRENT,
        entry,
        phoff,
        shoff,
        0,
        _EHDR.size,
        _PHDR.size,
        len(phdrs),
        _SHDR.size,
        len(shdrs),
        shstrndx,
    )
    return header + b"".join(phdrs) + bytes(body) + b"".join(shdrs)
