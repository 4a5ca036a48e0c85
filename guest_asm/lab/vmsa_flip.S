; vmsa_flip: the smallest SEV-ES guest that exits again and again (sevx86 lab vmsa-tamper).
;
; A loop of GHCB MSR-protocol CPUID requests (GHCB spec 56421, "GHCB MSR
; Protocol": request 0x004, response 0x005): every VMGEXIT is an automatic
; exit, so the CPU writes the whole register state into the VMSA and the
; Secure Processor seals it (APM vol 2, 15.35.4). No GHCB page and no #VC
; handler are needed, so the lab can launch thousands of these quickly, one
; per tampered byte of the VMSA page.

%include "include/ghcb.inc"
%include "include/msr.inc"

start:
    xor r12d, r12d                  ; requests so far: the state changes each time
.again:
    mov ecx, MSR_GHCB
    mov eax, GHCB_MSR_CPUID_REQ     ; CPUID leaf 0, register EAX (function 0 in 63:32)
    xor edx, edx
    wrmsr
    vmgexit
    inc r12
    jmp .again
