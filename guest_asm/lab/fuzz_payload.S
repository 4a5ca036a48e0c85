; fuzz_payload: a payload of sevx86's firmware that checks its own state
; after every #VC (sevx86 lab host-fuzz).
;
; ROUNDS rounds of eight intercepted instructions -- CPUID, IN, OUT, RDMSR,
; RDTSC, REP OUTSB, REP INSB, an MMIO load -- each served by the firmware's
; #VC handler through the GHCB. Around each one the program checks what no
; answer of the host may change (guest_asm/README.md, "What it guarantees"):
;   * R8-R15 and RBP (canaries), RSP;
;   * the upper 56 bits of RAX across IN AL (an 8-bit result merges);
;   * RSI/RDI/RCX after the string instructions (advanced by exactly the
;     count, RCX zero), and the guard qwords on both sides of the 8-byte
;     REP INSB buffer.
; Any violation ends the run with STATUS_CORRUPTED; the whole program ends
; with status 0. A host answer the handler refuses ends it with the
; handler's termination request instead -- a clean stop, not corruption.

%include "include/fw_abi.inc"
%include "include/platform.inc"
%include "include/msr.inc"

%define STATUS_CORRUPTED 0x66
%define CANARY 0xC4A2_0000_0000_0000
%define RAX_HIGH 0x1122_3344_5566_7700
%define INS_COUNT 8
%define OUTS_COUNT 16
%define GUARD 0x6A4D_6A4D_6A4D_6A4D

%macro set_canaries 0
    mov r8, CANARY | 8
    mov r9, CANARY | 9
    mov r10, CANARY | 10
    mov r11, CANARY | 11
    mov r12, CANARY | 12
    mov r13, CANARY | 13
    mov r14, CANARY | 14
    mov r15, CANARY | 15
    mov rbp, CANARY | 5
    mov [rel saved_rsp], rsp
%endmacro

%macro expect 2                     ; register, value (via RBX, which no check needs)
    mov rbx, %2
    cmp %1, rbx
    jne corrupted
%endmacro

%macro check_canaries 0
    expect r8, CANARY | 8
    expect r9, CANARY | 9
    expect r10, CANARY | 10
    expect r11, CANARY | 11
    expect r12, CANARY | 12
    expect r13, CANARY | 13
    expect r14, CANARY | 14
    expect r15, CANARY | 15
    expect rbp, CANARY | 5
    cmp rsp, [rel saved_rsp]
    jne corrupted
    expect qword [rel ins_guard_low], GUARD
    expect qword [rel ins_guard_high], GUARD
%endmacro

start:
    xor eax, eax
    mov [rel round], rax
.round:
    set_canaries
    xor eax, eax
    xor ecx, ecx
    cpuid
    check_canaries

    mov rax, RAX_HIGH
    mov edx, DEBUGCON_PORT
    in al, dx                       ; AL only
    check_canaries
    shr rax, 8
    expect rax, RAX_HIGH >> 8

    mov al, '.'
    mov edx, DEBUGCON_PORT
    out dx, al
    check_canaries

    mov ecx, MSR_APIC_BASE
    rdmsr
    check_canaries

    rdtsc
    check_canaries

    lea rsi, [rel outs_data]
    mov ecx, OUTS_COUNT
    mov edx, DEBUGCON_PORT
    rep outsb
    check_canaries
    test rcx, rcx
    jnz corrupted
    lea rax, [rel outs_data + OUTS_COUNT]
    cmp rsi, rax
    jne corrupted

    lea rdi, [rel ins_buffer]
    mov ecx, INS_COUNT
    mov edx, DEBUGCON_PORT
    rep insb
    check_canaries
    test rcx, rcx
    jnz corrupted
    lea rax, [rel ins_buffer + INS_COUNT]
    cmp rdi, rax
    jne corrupted

    mov rdi, MMIO_TEST_BASE
    mov eax, [rdi + MMIO_TEST_REG_ID]
    check_canaries

    inc qword [rel round]
    cmp qword [rel round], ROUNDS
    jb .round
    xor edi, edi
    jmp pl_exit

corrupted:
    mov edi, STATUS_CORRUPTED
    jmp pl_exit

align 8
round: dq 0
saved_rsp: dq 0
outs_data: db "fuzz the host..."
ins_guard_low: dq GUARD
ins_buffer: dq 0
ins_guard_high: dq GUARD

%include "payload.S"
