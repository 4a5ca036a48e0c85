"""The assembly front end: NASM-flavoured source -> flat binary, via keystone.

``assemble(source, path=..., base=..., bits=...)`` returns a ``Program``
(bytes, base address, symbols, a source-line map). It adds what keystone
0.9.2 lacks or gets wrong for guest code: a preprocessor (``preprocess``),
``bits 16/32/64`` switches in one file, labels across them, ``org``/
``align``/``pad_to``, data directives (``parse``), encodings of the
instructions keystone mishandles (``quirks``), and checks of its output,
the RIP-relative trap first (``checks``). Every error is an ``AsmError``
whose ``str()`` is ``file:line: message`` in the user's own source.
"""

from sevx86.asm.assembler import assemble
from sevx86.asm.errors import AsmError, MacroCall, SourceLocation
from sevx86.asm.preprocess import guest_asm_dir, preprocess
from sevx86.asm.program import Chunk, LineMap, Program, UnknownSymbolError

__all__ = [
    "AsmError",
    "Chunk",
    "LineMap",
    "MacroCall",
    "Program",
    "SourceLocation",
    "UnknownSymbolError",
    "assemble",
    "guest_asm_dir",
    "preprocess",
]
