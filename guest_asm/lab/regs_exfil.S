; regs_exfil: a secret kept in registers across exits (sevx86 lab regs-exfil).
;
; The program keeps SECRET (a 64-bit value the lab chooses from its seed) in
; R15 and R14 while it runs a CPUID and then writes its exit status to the
; debug-exit port: two instructions the hypervisor intercepts. Without
; SEV-ES each is a direct exit and the CPU hands the host the whole register
; file (APM vol 2, 15.5: the save area of the VMCB is host memory). Under
; SEV-ES each raises #VC; the handler copies into the GHCB only what the
; instruction needs (CPUID: RAX, RCX, XCR0; OUT: RAX) and the CPU writes
; every register, encrypted, into the VMSA (APM vol 2, 15.35.4).
;
; Built by sevx86.lab.guest on the harness: long mode, #VC at vc_handler,
; VC_GHCB_GPA and VC_CBIT_MASK defined by the lab.

%include "include/platform.inc"

start:
    mov r15, SECRET
    mov r14, r15
    xor eax, eax                    ; CPUID leaf 0: any intercepted instruction would do
    xor ecx, ecx
    cpuid
    mov dx, DEBUG_EXIT_PORT
    xor eax, eax                    ; exit status 0; the secret is still in R14/R15
    out dx, al
    hlt

%include "vc_handler64.S"
