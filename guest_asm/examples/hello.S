; hello: a line on the serial console, then exit status 0.
;
;   sevx86 run example:hello
;   sevx86 run example:hello --mode none
;   sevx86 run example:hello --vcpus 4     (the firmware starts 3 APs first)
;
; A payload of sevx86's firmware starts here in 64-bit mode with RDI = the
; boot info (firmware/README.md, "Payload ABI"); it says which SEV mode the
; firmware found and where the C-bit is.

%include "include/fw_abi.inc"
%include "include/platform.inc"

%include "include/msr.inc"

start:
    mov rbx, rdi                        ; the boot info
    lea rsi, [rel msg_hello]
    call pl_puts
    mov rax, [rbx + BI_SEV_STATUS]
    lea rsi, [rel msg_plain]
    test eax, SEV_STATUS_SEV_ENABLED
    jz .mode
    lea rsi, [rel msg_sev]
    test eax, SEV_STATUS_SEV_ES_ENABLED
    jz .mode
    lea rsi, [rel msg_sev_es]
.mode:
    call pl_puts
    test dword [rbx + BI_SEV_STATUS], SEV_STATUS_SEV_ENABLED
    jz .end
    lea rsi, [rel msg_cbit]
    call pl_puts
    mov eax, [rbx + BI_CBIT_POS]
    call pl_dec
    mov al, ')'
    call pl_putc
.end:
    mov eax, [rbx + BI_VCPU_COUNT]      ; the BSP and every AP the firmware started
    cmp eax, 1
    jbe .bang
    lea rsi, [rel msg_with]
    call pl_puts
    mov eax, [rbx + BI_VCPU_COUNT]
    call pl_dec
    lea rsi, [rel msg_vcpus]
    call pl_puts
.bang:
    lea rsi, [rel msg_end]
    call pl_puts
    xor edi, edi                        ; status 0: success
    jmp pl_exit

msg_hello:  db "Hello from ", 0
msg_sev_es: db "an SEV-ES guest", 0
msg_sev:    db "an SEV guest", 0
msg_plain:  db "a guest without SEV", 0
msg_cbit:   db " (C-bit ", 0
msg_with:   db " with ", 0
msg_vcpus:  db " vCPUs", 0
msg_end:    db `!\n`, 0

%include "payload.S"
