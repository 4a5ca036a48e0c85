; portio: IN/OUT with the UART scratch register, the debug console, REP OUTSB.
;
; The 16550 UART's scratch register, the debug console's readback value,
; and a string OUT (REP OUTSB) to the debug console.
;
;   sevx86 run example:portio
;   sevx86 trace example:portio --kinds vc,vmgexit,ghcb-answer
;
; Under SEV-ES each IN/OUT raises #VC(IOIO); the firmware's #VC handler
; sends the port, size and value through the GHCB (a REP OUTSB goes in one
; VMGEXIT with the bytes in the GHCB's shared buffer). Under plain SEV the
; host reads a string OUT's bytes from guest memory, which is private: it
; would get ciphertext, so the example skips it there (Linux unrolls string
; I/O for SEV guests for the same reason). Exit status: 0 if every value
; read back as expected, 1 otherwise.

%include "include/fw_abi.inc"
%include "include/platform.inc"

%include "include/msr.inc"

%define SCRATCH_VALUE 0x5A

start:
    xor r15d, r15d                      ; failures
    ; 1. Write the UART scratch register, read it back (8-bit OUT and IN).
    mov edx, UART_COM1 + UART_SCR
    mov al, SCRATCH_VALUE
    out dx, al
    xor eax, eax
    in al, dx
    mov r12d, eax
    lea rsi, [rel msg_scratch]
    call pl_puts
    mov eax, r12d
    call pl_hex32
    cmp r12d, SCRATCH_VALUE
    call ok_or_fail

    ; 2. The debug console answers a read with its readback value.
    mov edx, DEBUGCON_PORT
    xor eax, eax
    in al, dx
    mov r12d, eax
    lea rsi, [rel msg_readback]
    call pl_puts
    mov eax, r12d
    call pl_hex32
    cmp r12d, DEBUGCON_READBACK
    call ok_or_fail

    ; 3. A string OUT to the debug console (shown with sevx86 run -v).
    lea rsi, [rel msg_string]
    call pl_puts
    mov eax, [rdi + BI_SEV_STATUS]
    and eax, SEV_STATUS_SEV_ENABLED | SEV_STATUS_SEV_ES_ENABLED
    cmp eax, SEV_STATUS_SEV_ENABLED
    je .skip_string
    lea rsi, [rel debug_line]
    mov ecx, debug_line_end - debug_line
    mov edx, DEBUGCON_PORT
    rep outsb
    lea rsi, [rel msg_sent]
    call pl_puts
    jmp .done
.skip_string:
    lea rsi, [rel msg_skipped]
    call pl_puts
.done:
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

msg_scratch:    db "UART scratch register: wrote 0x5a, read ", 0
msg_readback:   db "debug console readback: ", 0
msg_string:     db "string OUT (REP OUTSB) to the debug console: ", 0
msg_sent:       db `sent\n`, 0
msg_skipped:    db `skipped under plain SEV (the host would read ciphertext)\n`, 0
msg_ok:         db `  ok\n`, 0
msg_failed:     db `  FAILED\n`, 0
debug_line:     db `portio: hello through REP OUTSB\n`
debug_line_end:

%include "payload.S"
