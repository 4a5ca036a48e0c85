; vmsa_tamper: a guest whose control flow and registers the host tries to
; change (sevx86 lab vmsa-tamper).
;
; ROUNDS CPUIDs in a loop (each an intercepted exit), then the exit status:
;   0x00  nothing changed;
;   0x11  R15, which the program zeroes and never writes again, is not zero:
;         the host changed a register;
;   0x22  the program reached `hijacked`, which nothing in it jumps to: the
;         host redirected RIP.
; Without SEV-ES the host owns the register file at every exit (the VMCB
; save area); under SEV-ES the registers live in the VMSA, encrypted and
; integrity-checked at VMRUN, so a change means the guest never runs again.

%include "include/platform.inc"

%define STATUS_UNCHANGED 0x00
%define STATUS_REGISTER_CHANGED 0x11
%define STATUS_HIJACKED 0x22

start:
    xor r15d, r15d                  ; the value the host wants to change
    xor r12d, r12d
.loop:
    xor eax, eax
    xor ecx, ecx
    cpuid                           ; an exit per round
    inc r12
    cmp r12, ROUNDS
    jb .loop
    mov eax, STATUS_UNCHANGED
    test r15, r15
    jz .report
    mov eax, STATUS_REGISTER_CHANGED
.report:
    mov dx, DEBUG_EXIT_PORT
    out dx, al
    hlt

hijacked:
    mov eax, STATUS_HIJACKED
    mov dx, DEBUG_EXIT_PORT
    out dx, al
    hlt

%include "vc_handler64.S"
