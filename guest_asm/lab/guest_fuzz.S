; guest_fuzz: a hostile guest -- raw GHCB and MSR-protocol requests made of
; random bits (sevx86 lab guest-fuzz; SEV-ES only).
;
; CASES requests from a xorshift64 generator seeded with SEED (Marsaglia,
; "Xorshift RNGs", 2003: x ^= x << 13, x ^= x >> 7, x ^= x << 17):
;   * 6 in 8 are GHCB requests: the save area and valid bitmap are random
;     qwords; SW_EXITCODE is a random 64-bit value one time in four, else
;     an entry of `exit_codes`; SW_SCRATCH points inside the shared buffer,
;     past it, beyond RAM or anywhere; the protocol version is 0..3, the
;     usage sometimes not 0; one time in sixteen the GHCB MSR points at a
;     private page, beyond RAM or at a random page instead of the GHCB;
;   * 2 in 8 are GHCB MSR-protocol requests: a random GHCBData with a
;     GHCBInfo from `msr_codes` or random 12 bits.
; Requests that end a run by design are steered away, so one run holds many
; cases: an OUT to the debug-exit port, HLT/MWAIT, AP reset hold, the
; termination requests, the unsupported-event report (SW_EXIT_UNSUPPORTED,
; after which the host stops the guest). The guest keeps a histogram of the answers
; (SW_EXITINFO1[31:0] 0/1/2/other; MSR protocol answered or left alone) and
; ends with a termination request of reason set 0xF code 0x42.
;
; Built by sevx86.lab.guest on the harness with the GHCB page at
; VC_GHCB_GPA, which it registers first; `canary_page` is a private page the
; lab checks afterwards: no request may make the host write it.

%include "include/ghcb.inc"
%include "include/svm.inc"
%include "include/msr.inc"
%include "include/platform.inc"

%define DONE_SET 0xF
%define DONE_CODE 0x42
%define BEYOND_RAM 0x0000_0100_0000_0000    ; 1 TiB, far past the guest's RAM
%define DEBUG_EXIT_PORT_MASK 0xFFFC         ; 0xF4..0xF7

bits 64

start:
    ; Register the GHCB first (GHCB spec 56421, "GHCB GPA Registration"): a
    ; VMGEXIT naming another page is then one the host must refuse, not answer
    ; in. Without a registration the guest's GHCB is wherever the MSR points,
    ; and a host answer written into a private page there is the guest's doing.
    mov rax, VC_GHCB_GPA | GHCB_MSR_REG_GPA_REQ
    call vmgexit_with
    mov r15, SEED
    or r15, 1                       ; xorshift needs a state other than 0
    xor r14d, r14d                  ; cases done
    mov r13, VC_GHCB_GPA
.case:
    mov [rel done_cases], r14
    cmp r14, CASES
    jae finish
    inc r14
    call rand
    and eax, 7
    cmp eax, 6
    jae msr_case

ghcb_case:
    ; Random save area and valid bitmap: qwords 0 .. 0x3F8.
    xor ecx, ecx
.fill:
    call rand
    mov [r13 + rcx * 8], rax
    inc ecx
    cmp ecx, 0x400 / 8
    jb .fill
    ; SW_EXITCODE
    call rand
    mov rbx, rax
    test al, 3
    jz .code_chosen
    shr rax, 8
    xor edx, edx
    mov ecx, EXIT_CODES_COUNT
    div rcx
    lea rax, [rel exit_codes]
    mov rbx, [rax + rdx * 8]
.code_chosen:
    call steer_exit_code
    mov [r13 + GHCB_SW_EXITCODE], rbx
    ; SW_SCRATCH
    call rand
    mov rbx, rax
    and eax, 3
    jz .scratch_inside
    cmp eax, 1
    je .scratch_past
    cmp eax, 2
    je .scratch_beyond
    jmp .scratch_set                ; anywhere
.scratch_inside:
    shr rbx, 8
    and ebx, 0x7FF
    lea rbx, [r13 + rbx + GHCB_SHARED_BUFFER]
    jmp .scratch_set
.scratch_past:
    shr rbx, 8
    and ebx, 0xFFF
    lea rbx, [r13 + rbx + GHCB_SHARED_BUFFER + GHCB_SHARED_BUFFER_SIZE]
    jmp .scratch_set
.scratch_beyond:
    shr rbx, 8
    and ebx, 0xFFFF
    mov rax, BEYOND_RAM
    add rbx, rax
.scratch_set:
    mov [r13 + GHCB_SW_SCRATCH], rbx
    ; Protocol version 0..3, usage mostly 0.
    call rand
    mov ebx, eax
    and ebx, 3
    mov word [r13 + GHCB_PROTOCOL_VERSION], bx
    xor ebx, ebx
    test eax, 0x70
    jnz .usage
    shr rax, 16
    mov ebx, eax
.usage:
    mov dword [r13 + GHCB_USAGE], ebx
    ; The GHCB MSR: the GHCB, or one time in sixteen somewhere else.
    call rand
    mov rbx, rax
    mov rax, r13
    test bl, 15
    jnz .msr_chosen
    shr rbx, 8
    mov edx, ebx
    and edx, 3
    lea rax, [rel canary_page]      ; private memory
    jz .msr_chosen
    mov rax, BEYOND_RAM
    cmp edx, 1
    je .msr_chosen
    mov rax, rbx
    shl rax, 12                     ; a random page number
.msr_chosen:
    and ax, 0xF000                  ; GHCBInfo 0: a GHCB page address
    call vmgexit_with
    ; The answer, as the guest reads it back from its GHCB.
    mov eax, [r13 + GHCB_SW_EXITINFO1]
    cmp eax, 3
    jb .counted
    mov eax, 3
.counted:
    lea rbx, [rel ghcb_answers]
    inc qword [rbx + rax * 8]
    jmp start.case

msr_case:
    call rand
    mov rbx, rax
    test al, 1
    jz .info_random
    shr rax, 8
    xor edx, edx
    mov ecx, MSR_CODES_COUNT
    div rcx
    lea rax, [rel msr_codes]
    mov rdx, [rax + rdx * 8]
    jmp .info_set
.info_random:
    mov rdx, rbx
    shr rdx, 40
.info_set:
    and edx, GHCB_MSR_INFO_MASK
    cmp edx, GHCB_MSR_TERM_REQ
    je .steer_info
    cmp edx, GHCB_MSR_AP_RESET_HOLD_REQ
    jne .info_ok
.steer_info:
    mov edx, GHCB_MSR_SEV_INFO_REQ
.info_ok:
    mov rbx, rdx
    call rand
    and ax, 0xF000                  ; keep GHCBData, replace GHCBInfo
    mov rdx, rbx
    or rax, rdx
    mov rbx, rax                    ; what the guest sent
    call vmgexit_with
    mov ecx, MSR_GHCB
    rdmsr
    shl rdx, 32
    or rax, rdx
    xor ecx, ecx
    cmp rax, rbx
    setne cl                        ; 1: the host answered, 0: left it alone
    lea rax, [rel msr_answers]
    inc qword [rax + rcx * 8]
    jmp start.case

finish:
    mov eax, GHCB_MSR_TERM_REQ | (DONE_SET << GHCB_MSR_TERM_SET_SHIFT) | (DONE_CODE << GHCB_MSR_TERM_CODE_SHIFT)
    xor edx, edx
    mov ecx, MSR_GHCB
    wrmsr
    vmgexit
    hlt
    jmp finish

; RAX = the next xorshift64 value (R15 is the state). Changes RDX.
rand:
    mov rax, r15
    mov rdx, rax
    shl rdx, 13
    xor rax, rdx
    mov rdx, rax
    shr rdx, 7
    xor rax, rdx
    mov rdx, rax
    shl rdx, 17
    xor rax, rdx
    mov r15, rax
    ret

; Write RAX to the GHCB MSR and VMGEXIT. Changes RCX, RDX.
vmgexit_with:
    mov rdx, rax
    shr rdx, 32
    mov ecx, MSR_GHCB
    wrmsr
    vmgexit
    ret

; RBX = an exit code, made not to end the run by design (see the header).
steer_exit_code:
    cmp rbx, SVM_EXIT_HLT
    je .to_cpuid
    cmp rbx, SVM_EXIT_MWAIT
    je .to_cpuid
    cmp rbx, SVM_EXIT_MWAIT_COND
    je .to_cpuid
    mov rax, SW_EXIT_AP_HLT_LOOP
    cmp rbx, rax
    je .to_cpuid
    mov rax, SW_EXIT_TERMINATE
    cmp rbx, rax
    je .to_cpuid
    mov rax, SW_EXIT_UNSUPPORTED    ; "the guest met an event it cannot handle": the end
    cmp rbx, rax
    je .to_cpuid
    cmp rbx, SVM_EXIT_IOIO
    jne .done
    mov rax, [r13 + GHCB_SW_EXITINFO1]
    shr rax, 16
    and eax, DEBUG_EXIT_PORT_MASK
    cmp eax, DEBUG_EXIT_PORT
    jne .done
    xor qword [r13 + GHCB_SW_EXITINFO1], 0x100 << 16   ; another port
.done:
    ret
.to_cpuid:
    mov ebx, SVM_EXIT_CPUID
    ret

align 8
exit_codes:
    dq SVM_EXIT_CPUID, SVM_EXIT_IOIO, SVM_EXIT_MSR, SVM_EXIT_RDTSC, SVM_EXIT_RDTSCP
    dq SVM_EXIT_RDPMC, SVM_EXIT_WBINVD, SVM_EXIT_INVD, SVM_EXIT_VMMCALL, SVM_EXIT_MONITOR
    dq SVM_EXIT_DR7_READ, SVM_EXIT_DR7_WRITE, SVM_EXIT_XSETBV, SVM_EXIT_NPF, SVM_EXIT_PAUSE
    dq SW_EXIT_MMIO_READ, SW_EXIT_MMIO_WRITE, SW_EXIT_NMI_COMPLETE, SW_EXIT_AP_JUMP_TABLE
    dq SW_EXIT_SNP_PAGE_STATE_CHANGE, SW_EXIT_GUEST_REQUEST, SW_EXIT_HV_FEATURES
    dq 0, 0x8000_00FF, 0x8000_FFFC, 0x403, 0xFFFF_FFFF_FFFF_FFFF
EXIT_CODES_COUNT equ ($ - exit_codes) / 8
msr_codes:
    dq GHCB_MSR_SEV_INFO_REQ, GHCB_MSR_CPUID_REQ, GHCB_MSR_PREF_GPA_REQ, GHCB_MSR_REG_GPA_REQ
    dq GHCB_MSR_PSC_REQ, GHCB_MSR_VMPL_REQ, GHCB_MSR_HV_FEATURES_REQ, GHCB_MSR_SEV_INFO_RESP
    dq GHCB_MSR_CPUID_RESP, 0, 0xFFF
MSR_CODES_COUNT equ ($ - msr_codes) / 8

done_cases: dq 0
ghcb_answers: dq 0, 0, 0, 0         ; SW_EXITINFO1[31:0] = 0, 1, 2, other
msr_answers: dq 0, 0                ; left alone, answered

align 4096
canary_page: times 4096 db 0xA5     ; private; no request may change it
