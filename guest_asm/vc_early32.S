; vc_early32.S -- the first #VC handler of an SEV-ES guest: 32-bit protected
; mode, no paging, no GHCB page.
;
; Why it exists: before long-mode paging no page can be mapped with C=0
; (AMD APM vol 2, 15.34.5: with paging off every access is private), so the
; GHCB page cannot be shared yet. Early firmware still needs CPUID -- above
; all leaf 0x8000001F for the C-bit position -- and under SEV-ES every CPUID
; raises #VC. The GHCB MSR protocol (GHCB spec 56421, "GHCB MSR Protocol")
; carries one CPUID register per VMGEXIT in the GHCB MSR itself. OVMF's reset
; vector (OvmfPkg/ResetVector/Ia32/AmdSev.asm) and Linux's do_vc_no_ghcb()
; serve CPUID this way; this handler does the same and nothing else.
;
; ABI
;   - Wire it to vector 29 (#VC) of a 32-bit IDT; label `vc_early32`.
;   - Flat code segment (base 0): the CPUID bytes are read at EIP.
;   - Serves only CPUID (error code 0x72). The MSR protocol cannot carry ECX,
;     so a sub-leaf is not passed on (as in OVMF's reset vector).
;   - Changes EAX, EBX, ECX, EDX as CPUID does; every other register, the
;     flags and the GHCB MSR value are preserved. Stack: 36 bytes + the frame.
;   - Anything else, a response with the wrong code or register echo, CPUID
;     answers that deny SEV (Linux's checks), or a #VC not raised by a CPUID
;     instruction: GHCB MSR protocol termination request (reason set
;     VC_REASON_SET, see include/vc_abi.inc), VMGEXIT, then HLT forever.

%include "include/ghcb.inc"
%include "include/svm.inc"
%include "include/msr.inc"
%include "include/cpuid.inc"
%include "include/vc_abi.inc"

%ifndef SEVX86_VC_EARLY32_S
%define SEVX86_VC_EARLY32_S

bits 32

; Local variables below the saved ESI/EDI/EBP.
%define E32_RESULT 0            ; EAX, EBX, ECX, EDX answers: 4 dwords
%define E32_SAVED_MSR 16        ; GHCB MSR value on entry: 2 dwords
%define E32_LOCALS 24
%define E32_FRAME (E32_LOCALS + 12)   ; offset of the CPU's #VC frame
%define CPUID_OPCODE 0xA20F     ; 0F A2, as a little-endian word
%define CPUID_LENGTH 2

vc_early32:
    ; #VC frame (APM vol 2, 8.8): [esp] error code = SVM exit code,
    ; [esp+4] EIP of the instruction, [esp+8] CS, [esp+12] EFLAGS.
    push ebp
    push esi
    push edi
    sub esp, E32_LOCALS

    mov ebx, VC_REASON_UNSUPPORTED_EXIT
    cmp dword [esp + E32_FRAME], SVM_EXIT_CPUID
    jne vc_early32_terminate
    ; A hypervisor can inject #VC with any error code (the "WeSee" attack):
    ; only act if a CPUID instruction really is at EIP.
    mov ebx, VC_REASON_DECODE
    mov ebp, [esp + E32_FRAME + 4]
    cmp word [ebp], CPUID_OPCODE
    jne vc_early32_terminate

    mov esi, eax                        ; the CPUID function
    mov ecx, MSR_GHCB                   ; keep the caller's GHCB MSR value
    rdmsr
    mov [esp + E32_SAVED_MSR], eax
    mov [esp + E32_SAVED_MSR + 4], edx

    xor edi, edi                        ; register select: 0 EAX .. 3 EDX
.next_register:
    ; Request: GHCBData = function (63:32) | register (31:30), GHCBInfo 0x004.
    mov eax, edi
    shl eax, GHCB_MSR_CPUID_REG_SHIFT
    or eax, GHCB_MSR_CPUID_REQ
    mov edx, esi
    mov ecx, MSR_GHCB
    wrmsr
    vmgexit
    mov ecx, MSR_GHCB
    rdmsr
    ; Response: GHCBInfo 0x005, the register select echoed in 31:30, the
    ; value in 63:32. Checking the echo catches a reply to another request.
    mov ebx, VC_REASON_MSR_PROTOCOL
    mov ecx, eax
    and ecx, GHCB_MSR_INFO_MASK
    cmp ecx, GHCB_MSR_CPUID_RESP
    jne vc_early32_terminate
    shr eax, GHCB_MSR_CPUID_REG_SHIFT
    cmp eax, edi
    jne vc_early32_terminate
    mov [esp + E32_RESULT + edi * 4], edx
    inc edi
    cmp edi, 4
    jb .next_register

    ; Linux's sanity checks (do_vc_no_ghcb): a #VC means SEV-ES is on, so
    ; a hypervisor denying the SEV leaf or the SEV bit is lying -- believing
    ; it could make the guest run unencrypted.
    mov ebx, VC_REASON_CPUID_SANITY
    cmp esi, CPUID_LEAF_EXT_MAX
    jne .check_mem_encrypt
    cmp dword [esp + E32_RESULT], CPUID_LEAF_MEM_ENCRYPT
    jb vc_early32_terminate
.check_mem_encrypt:
    cmp esi, CPUID_LEAF_MEM_ENCRYPT
    jne .answered
    test dword [esp + E32_RESULT], CPUID_8000001F_EAX_SEV
    jz vc_early32_terminate

.answered:
    mov eax, [esp + E32_SAVED_MSR]
    mov edx, [esp + E32_SAVED_MSR + 4]
    mov ecx, MSR_GHCB
    wrmsr
    mov eax, [esp + E32_RESULT]
    mov ebx, [esp + E32_RESULT + 4]
    mov ecx, [esp + E32_RESULT + 8]
    mov edx, [esp + E32_RESULT + 12]
    add esp, E32_LOCALS
    pop edi
    pop esi
    pop ebp
    add esp, 4                          ; the error code
    add dword [esp], CPUID_LENGTH       ; continue after the CPUID
    iret

; Ask the hypervisor to end the guest: GHCB MSR protocol termination request
; (GHCBInfo 0x100, reason set 15:12, reason code 23:16), then never return.
; In: EBX = reason code of set VC_REASON_SET.
vc_early32_terminate:
    mov eax, ebx
    and eax, 0xFF
    shl eax, GHCB_MSR_TERM_CODE_SHIFT
    or eax, (VC_REASON_SET << GHCB_MSR_TERM_SET_SHIFT) | GHCB_MSR_TERM_REQ
    xor edx, edx
    mov ecx, MSR_GHCB
    wrmsr
    vmgexit
.halt:
    cli
    hlt
    jmp .halt

%endif
