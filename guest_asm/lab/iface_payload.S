; iface_payload: the payload of sevx86's firmware in the interface attacks
; (sevx86 lab interface). Reaching it means the firmware accepted what the
; host told it during early boot; it says so and exits with status 0.

%include "include/fw_abi.inc"
%include "include/platform.inc"

start:
    lea rsi, [rel msg]
    call pl_puts
    xor edi, edi
    jmp pl_exit

msg: db `payload reached\n`, 0

%include "payload.S"
