; fault: a #PF that the firmware reports before it ends the guest (status 120).
;
; The firmware's exception handler reports the fault on the serial port and
; ends the guest.
;
;   sevx86 run example:fault          (exit status 120: the guest terminated)
;   sevx86 trace example:fault --kinds exception,terminate,console
;
; Page 0 is not mapped (the firmware leaves it out to catch NULL pointers),
; so reading address 0 raises #PF with CR2 = 0. The firmware's #PF handler
; prints the vector, error code, RIP and CR2, then under SEV-ES asks the
; hypervisor to terminate the guest (GHCB MSR protocol 0x100, reason set 3,
; code 0x40 + vector = 0x4e); without SEV-ES it prints the same reason and
; halts.

%include "include/fw_abi.inc"
%include "include/platform.inc"

start:
    lea rsi, [rel msg]
    call pl_puts
    xor ebx, ebx
    mov rax, [rbx]                      ; #PF: nothing is mapped at 0
    xor edi, edi                        ; not reached
    jmp pl_exit

msg: db `fault: reading address 0 (page 0 is not mapped)\n`, 0

%include "payload.S"
