"""%include, %define, %macro, %ifdef, %error: behaviour and error locations."""

from __future__ import annotations

from pathlib import Path

import pytest

from sevx86.asm import AsmError, assemble, guest_asm_dir
from sevx86.asm.preprocess import Preprocessor


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_include_next_to_the_including_file_then_include_paths(tmp_path):
    write(tmp_path, "lib/inner.inc", "inner: db 2\n")
    write(tmp_path, "lib/outer.inc", '%include "inner.inc"\nouter: db 1\n')
    write(tmp_path, "other/extra.inc", "extra: db 3\n")
    main = write(tmp_path, "main.S", '%include "lib/outer.inc"\n%include "extra.inc"\n')
    program = assemble(path=main, include_paths=[tmp_path / "other"])
    assert program.code == b"\x02\x01\x03"
    assert program.symbols == {"inner": 0, "outer": 1, "extra": 2}
    assert program.lines.at(0).file == str(tmp_path / "lib" / "inner.inc")


def test_packaged_guest_asm_folder_is_always_searched():
    folder = guest_asm_dir()
    assert folder is not None and (folder / "README.md").is_file()
    assert folder.name == "guest_asm" or folder.parts[-2:] == ("sevx86", "guest_asm")
    assert Preprocessor([Path("/x")]).include_paths == [Path("/x"), folder]


def test_missing_include_is_an_error_at_the_include_line(tmp_path):
    main = write(tmp_path, "main.S", 'nop\n%include "nope.inc"\n')
    with pytest.raises(AsmError, match="'nope.inc' not found") as info:
        assemble(path=main)
    assert (info.value.file, info.value.line) == (str(main), 2)


def test_include_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.inc", '%include "b.inc"\n')
    write(tmp_path, "b.inc", 'nop\n%include "a.inc"\n')
    main = write(tmp_path, "main.S", '%include "a.inc"\n')
    with pytest.raises(AsmError, match="cycle: a.inc -> b.inc -> a.inc") as info:
        assemble(path=main)
    assert info.value.file.endswith("b.inc") and info.value.line == 2


def test_keystone_error_points_into_the_included_file(tmp_path):
    write(tmp_path, "bad.inc", "nop\nnop\nmov eax, notaregister bogus\n")
    main = write(tmp_path, "main.S", 'nop\n%include "bad.inc"\nnop\n')
    with pytest.raises(AsmError) as info:
        assemble(path=main)
    assert info.value.file == str(tmp_path / "bad.inc")
    assert info.value.line == 3
    assert str(info.value).startswith(f"{tmp_path / 'bad.inc'}:3: ")


def test_define_and_caller_defines():
    program = assemble(
        "%define PORT 0x3f8\nmov dx, PORT\nmov eax, LIMIT\n",
        defines={"LIMIT": 42},
    )
    assert program.code == bytes.fromhex("66baf803b82a000000")
    with pytest.raises(AsmError, match="expected '%define NAME value'"):
        assemble("%define TWICE(x) x\n")  # function-like defines are not supported


def test_ifdef_else_endif_and_undef():
    source = """
%ifdef DEBUG
    db 1
%elifdef TRACE
    db 2
%else
    db 3
%endif
%define X
%undef X
%ifndef X
    db 4
%endif
"""
    assert assemble(source).code == b"\x03\x04"
    assert assemble(source, defines={"DEBUG": ""}).code == b"\x01\x04"
    assert assemble(source, defines={"TRACE": 1}).code == b"\x02\x04"


def test_macro_parameters_count_and_local_labels():
    program = assemble(
        """
%macro SPIN 2
    mov ecx, %1
%%again:
    add eax, %2
    dec ecx
    jnz %%again
    db %0
%endmacro
    SPIN 3, 5
    SPIN {1 + 1}, 7
"""
    )
    locals_ = [name for name in program.symbols if name.startswith("..@")]
    assert len(locals_) == 2 and len(set(program.symbols.values())) == 2
    first = program.code[: len(program.code) // 2]
    assert first == bytes.fromhex("b90300000083c005ffc975f902")


def test_macro_calling_a_macro_and_label_before_a_call():
    program = assemble(
        "%macro ONE 1\n db %1\n%endmacro\n%macro TWO 2\n ONE %1\n ONE %2\n%endmacro\n"
        "here: TWO 8, 9\n"
    )
    assert program.code == b"\x08\x09"
    assert program.symbols == {"here": 0}


def test_error_inside_macro_expansion_names_body_line_and_call_site():
    source = (
        "%macro LOAD 1\n    nop\n    mov eax, %1\n%endmacro\n\n    LOAD ebx\n    LOAD bogus_reg\n"
    )
    with pytest.raises(AsmError) as info:
        assemble(source, name="m.S")
    err = info.value
    assert (err.file, err.line) == ("m.S", 3)  # the body line with the bad text
    assert err.expansion[-1].site.line == 7  # the call that made it
    assert "in macro 'LOAD' called at m.S:7" in str(err)


def test_macro_argument_count_mismatch_is_an_error_at_the_call():
    with pytest.raises(AsmError, match="takes 2 argument") as info:
        assemble("%macro M 2\n nop\n%endmacro\n M 1\n")
    assert info.value.line == 4


def test_error_directive():
    with pytest.raises(AsmError) as info:
        assemble('nop\n%ifndef BOARD\n%error "BOARD must be defined"\n%endif\n', name="f.S")
    assert str(info.value) == "f.S:3: BOARD must be defined"
    assert assemble('%ifndef BOARD\n%error "x"\n%endif\n', defines={"BOARD": 1}).code == b""


@pytest.mark.parametrize(
    "source, message, line",
    [
        ("%endif\n", "without %ifdef", 1),
        ("%ifdef X\nnop\n", "without %endif", 1),
        ("%macro M 1\nnop\n", "no %endmacro", 1),
        ("%if 1\n%endif\n", "not supported", 1),
        ("%bogus\n", "unknown preprocessor directive", 1),
        ("%define A B\n%define B A\nmov eax, A\n", "expands forever", 3),
    ],
)
def test_preprocessor_errors(source, message, line):
    with pytest.raises(AsmError, match=message) as info:
        assemble(source)
    assert info.value.line == line
