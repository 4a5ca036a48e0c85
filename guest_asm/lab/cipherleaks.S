; cipherleaks: a secret processed one bit at a time in a register, with
; progress reports in between (sevx86 lab cipherleaks; SEV-ES only).
;
; The shape of a constant-time loop (Li et al., "CipherLeaks", USENIX
; Security 2021): no secret-dependent branch or address, but a register --
; here R15 -- holds a secret-dependent value (bit i of SECRET) while the
; guest exits for something public (a progress report of i on port 0x81).
; Before that, a warm-up loop reports its counter k on port 0x80 while R15
; holds the same k: the host then knows the plaintext of R15 at those exits.
; At every VMGEXIT the CPU writes R15 into the VMSA, at the same address each
; time, so equal (R14, R15) pairs -- one 16-byte block of the VMSA -- give
; equal ciphertext (APM vol 2, 15.34.1: the tweak depends on the address
; only).
;
; With NO_REPEAT defined, R14 -- the other half of R15's block -- counts
; every exit, so no block of (R14, R15) ever repeats: the countermeasure.
;
; Reports go through the GHCB directly (ghcb.S), not through #VC, so the
; registers at each VMGEXIT are exactly this program's.

%include "include/platform.inc"
%include "ghcb.S"

%define WARMUP_PORT 0x80            ; the warm-up loop's counter (public)
%define WORK_PORT 0x81              ; the secret loop's bit index (public)

; OUT of R8's low byte to port %1 through the GHCB (an IOIO request).
%macro report 1
%ifdef NO_REPEAT
    inc r14
%endif
    mov rbx, [rel vc_ghcb_va]
    call ghcb_invalidate
    ghcb_set RAX, r8
    mov edi, SVM_EXIT_IOIO
    mov esi, (%1 << IOIO_PORT_SHIFT) | IOIO_SZ8
    xor edx, edx
    call ghcb_vmgexit
%endmacro

start:
    xor r14d, r14d
    xor r12d, r12d
.warmup:
    mov r15, r12                    ; the counter, in the register the secret will use
    mov r8, r12
    report WARMUP_PORT
    inc r12
    cmp r12, WARMUP_ROUNDS
    jb .warmup

    mov r13, [rel secret]
    xor r12d, r12d
.work:
    mov r15, r13
    mov ecx, r12d
    shr r15, cl
    and r15d, 1                     ; bit i of the secret: 0 or 1, never branched on
    mov r8, r12
    report WORK_PORT
    inc r12
    cmp r12, SECRET_BITS
    jb .work

    xor r15d, r15d
    xor r8d, r8d
    report DEBUG_EXIT_PORT          ; exit status 0
    hlt

align 8
secret: dq SECRET
