; payload.S -- small helpers for payloads of sevx86's firmware: serial
; output and the run's exit status. Include it at the end of a payload.
;
; The firmware enters a payload in 64-bit mode at FW_PAYLOAD_GPA with RDI =
; the boot info (include/fw_abi.inc, firmware/README.md "Payload ABI"); the
; helpers below read the boot info at its fixed address FW_BOOT_INFO_GPA.
;
; Port I/O works in every mode: directly without SEV-ES, through #VC, the
; firmware's #VC handler and the GHCB under SEV-ES. Under plain SEV (memory
; encrypted, no GHCB) string I/O would hand the host ciphertext, so these
; helpers only use single IN/OUT.
;
;   pl_putc   AL                 one byte to the serial port (COM1)
;   pl_puts   RSI                a NUL-terminated string
;   pl_hex32  EAX                "0x" and 8 hex digits
;   pl_hex64  RAX                "0x" and 16 hex digits
;   pl_dec    RAX                unsigned decimal
;   pl_exit   EDI                end the run with status EDI (debug-exit port)
; All preserve every register but the flags.

%include "include/fw_abi.inc"
%include "include/platform.inc"
%include "include/msr.inc"

%ifndef SEVX86_PAYLOAD_S
%define SEVX86_PAYLOAD_S

bits 64

; The classic polled UART loop (PC16550D): wait for LSR.THRE, write THR.
pl_putc:
    push rax
    push rdx
    push rcx
    mov cl, al
    mov edx, UART_COM1 + UART_LSR
.wait:
    in al, dx
    test al, UART_LSR_THRE
    jz .wait
    mov al, cl
    mov edx, UART_COM1 + UART_THR
    out dx, al
    pop rcx
    pop rdx
    pop rax
    ret

; The firmware enabled the UART's FIFOs: after LSR.THRE the transmit FIFO is
; empty and takes UART_TX_FIFO_SIZE bytes, so a string goes out in chunks,
; each one REP OUTSB (one VMGEXIT under SEV-ES) -- or single OUTs under
; plain SEV, where the host would read a string OUT's bytes as ciphertext.
pl_puts:
    push rax
    push rcx
    push rdx
    push rsi
    push r8
    push r9
    mov r8, rsi                         ; R8 = length of the string
.length:
    cmp byte [r8], 0
    je .counted
    inc r8
    jmp .length
.counted:
    sub r8, rsi
    mov r9, FW_BOOT_INFO_GPA
    mov r9d, [r9 + BI_SEV_STATUS]
    and r9d, SEV_STATUS_SEV_ENABLED | SEV_STATUS_SEV_ES_ENABLED
    cmp r9d, SEV_STATUS_SEV_ENABLED     ; R9 = 0: plain SEV, unroll
    mov r9d, 0
    je .chunk
    inc r9d
.chunk:
    test r8, r8
    jz .done
    mov edx, UART_COM1 + UART_LSR
.wait:
    in al, dx
    test al, UART_LSR_THRE
    jz .wait
    mov ecx, UART_TX_FIFO_SIZE
    cmp r8, rcx
    cmovb rcx, r8
    sub r8, rcx
    mov edx, UART_COM1 + UART_THR
    test r9d, r9d
    jz .unrolled
    rep outsb
    jmp .chunk
.unrolled:
    lodsb
    out dx, al
    loop .unrolled
    jmp .chunk
.done:
    pop r9
    pop r8
    pop rsi
    pop rdx
    pop rcx
    pop rax
    ret

pl_hex32:
    push rcx
    mov ecx, 28                         ; shift of the top nibble
    jmp pl_hex_digits

pl_hex64:
    push rcx
    mov ecx, 60
    ; fall through
pl_hex_digits:                          ; RCX pushed by the caller above
    push rax
    push rdx
    push rsi
    sub rsp, 24                         ; "0x", 16 digits, NUL
    mov rsi, rsp
    mov word [rsi], '0' | ('x' << 8)
    add rsi, 2
    mov rdx, rax
.digit:
    mov rax, rdx
    shr rax, cl
    and eax, 0xF
    add al, '0'
    cmp al, '9'
    jbe .put
    add al, 'a' - '9' - 1
.put:
    mov [rsi], al
    inc rsi
    sub ecx, 4
    jns .digit
    mov byte [rsi], 0
    mov rsi, rsp
    call pl_puts
    add rsp, 24
    pop rsi
    pop rdx
    pop rax
    pop rcx
    ret

pl_dec:
    push rax
    push rcx
    push rdx
    push rsi
    sub rsp, 24
    lea rsi, [rsp + 23]
    mov byte [rsi], 0
    mov ecx, 10
.divide:
    xor edx, edx
    div rcx
    add dl, '0'
    dec rsi
    mov [rsi], dl
    test rax, rax
    jnz .divide
    call pl_puts
    add rsp, 24
    pop rsi
    pop rdx
    pop rcx
    pop rax
    ret

; The debug-exit device: a write of N ends the run with status N.
pl_exit:
    mov eax, edi
    mov edx, DEBUG_EXIT_PORT
    out dx, eax
.hang:                                  ; not reached
    cli
    hlt
    jmp .hang

%endif
