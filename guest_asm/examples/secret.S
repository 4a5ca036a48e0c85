; secret: print the guest owner's launch secret, read from private memory.
;
;   sevx86 run example:secret                 (no secret: says so, status 1)
;   sevx86 owner --help                       the whole flow that injects one
;
; The guest owner wraps a secret for this very launch (its measurement) and
; the Secure Processor decrypts it into FW_SECRET_GPA with the guest's memory
; key (LAUNCH_SECRET, SEV API). The page is private: the hypervisor that
; carried the packet sees only ciphertext in DRAM. The secret is text, NUL
; terminated; an empty page means nothing was injected.

%include "include/fw_abi.inc"
%include "include/platform.inc"

start:
    mov rbx, FW_SECRET_GPA
    cmp byte [rbx], 0
    je .none
    lea rsi, [rel msg_secret]
    call pl_puts
    mov rsi, rbx
    mov byte [rbx + FW_SECRET_SIZE - 1], 0  ; never read past the page
    call pl_puts
    mov al, 10
    call pl_putc
    xor edi, edi
    call pl_exit
.none:
    lea rsi, [rel msg_none]
    call pl_puts
    mov edi, 1
    call pl_exit

msg_secret: db "the owner's secret: ", 0
msg_none:   db "no launch secret was injected", 10, 0

%include "payload.S"
