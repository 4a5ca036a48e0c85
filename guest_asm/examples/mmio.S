; mmio: reads and writes of the MMIO test device (#VC on NPF under SEV-ES).
;
; The device is at MMIO_TEST_BASE (include/platform.inc).
;
;   sevx86 run example:mmio
;   sevx86 trace example:mmio --kinds vc,vmgexit,ghcb-answer,mmio
;
; The firmware maps the device window (3..4 GiB) with the C-bit clear: the
; host emulates MMIO, so it must be able to read what the guest writes.
; Under SEV-ES an access outside RAM raises #VC(NPF); the firmware's #VC
; handler decodes the MOV at RIP and asks for MMIO_READ / MMIO_WRITE through
; the GHCB (it refuses MMIO through a C=1 mapping: that would leak private
; data). Without SEV-ES the host decodes the MOV after a nested page fault.
; Exit status: 0 if every register read back as expected, 1 otherwise.

%include "include/fw_abi.inc"
%include "include/platform.inc"

%define SCRATCH_VALUE 0x1122334455667788

start:
    xor r15d, r15d                      ; failures
    mov rbx, MMIO_TEST_BASE

    mov eax, [rbx + MMIO_TEST_REG_ID]   ; a 32-bit MMIO read
    mov r12d, eax
    lea rsi, [rel msg_id]
    call pl_puts
    mov eax, r12d
    call pl_hex32
    cmp r12d, MMIO_TEST_ID
    call ok_or_fail

    mov eax, [rbx + MMIO_TEST_REG_VERSION]
    lea rsi, [rel msg_version]
    call pl_puts
    call pl_dec
    mov al, `\n`
    call pl_putc

    mov rax, SCRATCH_VALUE
    mov [rbx + MMIO_TEST_REG_SCRATCH], rax    ; a 64-bit MMIO write
    mov r12, [rbx + MMIO_TEST_REG_SCRATCH]    ; and read
    lea rsi, [rel msg_scratch]
    call pl_puts
    mov rax, r12
    call pl_hex64
    mov rax, SCRATCH_VALUE
    cmp r12, rax
    call ok_or_fail

    movzx eax, byte [rbx + MMIO_TEST_REG_SCRATCH + 7]   ; MOVZX, one byte
    mov r12d, eax
    lea rsi, [rel msg_byte]
    call pl_puts
    mov eax, r12d
    call pl_hex32
    cmp r12d, SCRATCH_VALUE >> 56
    call ok_or_fail

    mov eax, [rbx + MMIO_TEST_REG_WRITES]
    mov r12d, eax
    lea rsi, [rel msg_writes]
    call pl_puts
    mov eax, r12d
    call pl_dec
    cmp r12d, 1
    call ok_or_fail

    mov edi, r15d
    jmp pl_exit

; ok_or_fail: " ok" if ZF is set, else " FAILED" and one more failure.
ok_or_fail:
    lea rsi, [rel msg_ok]
    je .say
    inc r15d
    lea rsi, [rel msg_failed]
.say:
    jmp pl_puts

msg_id:         db "MMIO test device ID: ", 0
msg_version:    db "version: ", 0
msg_scratch:    db "scratch register after writing 0x1122334455667788: ", 0
msg_byte:       db "its top byte (MOVZX): ", 0
msg_writes:     db "writes the device counted: ", 0
msg_ok:         db `  ok\n`, 0
msg_failed:     db `  FAILED\n`, 0

%include "payload.S"
