; ghcb.S -- 64-bit GHCB helpers: the data block, GHCB field macros, one
; VMGEXIT through the GHCB page, GHCB MSR protocol calls, protocol
; negotiation and termination.
;
; Spec: AMD "SEV-ES Guest-Hypervisor Communication Block Standardization"
; (56421). Every offset, bit and code comes from include/*.inc, generated
; from sevx86.arch (python -m sevx86.asm.gen_includes).
;
; Included by vc_handler64.S; a program can include it alone to talk to the
; hypervisor itself (ghcb_vmgexit, ghcb_msr_call, vc_setup, vc_terminate).

%include "include/ghcb.inc"
%include "include/svm.inc"
%include "include/msr.inc"
%include "include/x86.inc"
%include "include/vc_abi.inc"

%ifndef SEVX86_GHCB_S
%define SEVX86_GHCB_S

bits 64

; -- GHCB field macros (RBX = the GHCB's virtual address) ---------------------
; Valid bitmap (spec: "GHCB Save Area Valid Bitmap"): bit n covers save-area
; quadword n, i.e. the field at offset 8 * n. The bitmap is 16 bytes at
; GHCB_VALID_BITMAP, so bit n lives in quadword n >> 6, bit n & 63.

; Store a 64-bit register in GHCB field %1 (RAX, RCX, XCR0, SW_SCRATCH, ...)
; and mark it valid.
%macro ghcb_set 2
    mov qword [rbx + GHCB_%1], %2
    bts qword [rbx + GHCB_VALID_BITMAP + (GHCB_VALID_%1 >> 6) * 8], GHCB_VALID_%1 & 63
%endmacro

; Jump to %2 if the hypervisor did not mark field %1 valid (its answer is
; missing: never use a stale value left in the shared page).
%macro ghcb_require 2
    bt qword [rbx + GHCB_VALID_BITMAP + (GHCB_VALID_%1 >> 6) * 8], GHCB_VALID_%1 & 63
    jnc %2
%endmacro

; -- ghcb_invalidate ------------------------------------------------------------
; Start a new request: clear SW_EXITCODE and the whole valid bitmap, so no
; field of an earlier exit counts as input (Linux vc_ghcb_invalidate()).
; In: RBX = GHCB VA. Changes nothing else.
ghcb_invalidate:
    mov qword [rbx + GHCB_SW_EXITCODE], 0
    mov qword [rbx + GHCB_VALID_BITMAP], 0
    mov qword [rbx + GHCB_VALID_BITMAP + 8], 0
    ret

; -- ghcb_vmgexit ---------------------------------------------------------------
; One NAE request through the GHCB page (spec: "Invoking VMGEXIT"): protocol
; version and usage, SW_EXITCODE / SW_EXITINFO1 / SW_EXITINFO2 (valid bits
; set: KVM refuses an exit without them), the GHCB MSR pointed at the page
; (the hypervisor finds the GHCB through it), VMGEXIT.
; In:  RBX = GHCB VA, RDI = exit code, RSI = SW_EXITINFO1, RDX = SW_EXITINFO2;
;      the request's input fields already set with ghcb_set.
; Out: RAX = SW_EXITINFO1[31:0], the hypervisor's verdict (GHCB_RESULT_OK,
;      _EXCEPTION with the event in SW_EXITINFO2, _ERROR).
; Changes RAX, RCX, RDX.
ghcb_vmgexit:
    ghcb_set SW_EXITCODE, rdi
    ghcb_set SW_EXITINFO1, rsi
    ghcb_set SW_EXITINFO2, rdx
    mov ax, [rel vc_ghcb_version]
    mov word [rbx + GHCB_PROTOCOL_VERSION], ax
    mov dword [rbx + GHCB_USAGE], GHCB_USAGE_STANDARD
    call vc_this_cpu
    mov rax, [rax + VC_PERCPU_GHCB_PA]
    mov rdx, rax
    shr rdx, 32
    mov ecx, MSR_GHCB
    wrmsr
    vmgexit
    ; Only bits 31:0 carry the result (spec, "SW_EXITINFO1 return values").
    mov eax, dword [rbx + GHCB_SW_EXITINFO1]
    ret

; -- ghcb_msr_call --------------------------------------------------------------
; One GHCB MSR protocol request: write RAX to the GHCB MSR, VMGEXIT, read the
; response back into RAX. The MSR is the only channel before a GHCB page is
; shared (spec: "GHCB MSR Protocol").
; In: RAX = request. Out: RAX = response. Changes RCX, RDX.
ghcb_msr_call:
    mov rdx, rax
    shr rdx, 32
    mov ecx, MSR_GHCB
    wrmsr
    vmgexit
    mov ecx, MSR_GHCB
    rdmsr
    shl rdx, 32
    mov eax, eax
    or rax, rdx
    ret

; -- vc_setup -------------------------------------------------------------------
; Negotiate the GHCB protocol version before the first #VC (Linux
; sev_es_negotiate_protocol()): SEV information request (0x002), answer
; 0x001 with the hypervisor's max version in 63:48, min in 47:32 and the
; C-bit position in 31:24. Picks min(hypervisor max, GHCB_PROTOCOL_MAX); no
; overlap with GHCB_PROTOCOL_MIN..MAX -> termination (set 0, reason
; "protocol unsupported"). Also sets vc_cbit_mask from the answer unless
; the program set it already. Preserves all registers.
vc_setup:
    push rax
    push rcx
    push rdx
    push rdi
    mov eax, GHCB_MSR_SEV_INFO_REQ
    call ghcb_msr_call
    mov rcx, rax
    and ecx, GHCB_MSR_INFO_MASK
    mov edi, (GHCB_TERM_SET_GENERAL << 8) | GHCB_TERM_PROTOCOL_UNSUPPORTED
    cmp ecx, GHCB_MSR_SEV_INFO_RESP
    jne vc_terminate_with
    mov rcx, rax
    shr rcx, GHCB_MSR_SEV_INFO_MAX_SHIFT            ; hypervisor max
    cmp rcx, GHCB_PROTOCOL_MIN
    jb vc_terminate_with
    mov rdx, rax
    shr rdx, GHCB_MSR_SEV_INFO_MIN_SHIFT
    and edx, 0xFFFF                                 ; hypervisor min
    cmp rdx, GHCB_PROTOCOL_MAX
    ja vc_terminate_with
    cmp rcx, GHCB_PROTOCOL_MAX
    jbe .version
    mov ecx, GHCB_PROTOCOL_MAX
.version:
    mov [rel vc_ghcb_version], cx
    cmp qword [rel vc_cbit_mask], 0
    jne .done
    shr rax, GHCB_MSR_SEV_INFO_CBIT_SHIFT
    and eax, 0x3F
    xor edx, edx
    bts rdx, rax
    mov [rel vc_cbit_mask], rdx
.done:
    pop rdi
    pop rdx
    pop rcx
    pop rax
    ret

; -- vc_terminate ---------------------------------------------------------------
; Ask the hypervisor to end the guest and never return. Uses the GHCB MSR
; protocol termination request (0x100; reason set 15:12, code 23:16) as
; Linux's sev_es_terminate() does: it works even when the GHCB page or its
; contents cannot be trusted.
; In: EDI = reason code of set VC_REASON_SET (vc_terminate), or
;     EDI = set << 8 | code (vc_terminate_with).
vc_terminate:
    and edi, 0xFF
    or edi, VC_REASON_SET << 8
vc_terminate_with:
    mov eax, edi
    and eax, 0xFF
    shl eax, GHCB_MSR_TERM_CODE_SHIFT
    mov ecx, edi
    shr ecx, 8
    and ecx, 0xF
    shl ecx, GHCB_MSR_TERM_SET_SHIFT
    or eax, ecx
    or eax, GHCB_MSR_TERM_REQ
    xor edx, edx
    mov ecx, MSR_GHCB
    wrmsr
    vmgexit
.halt:
    cli
    hlt
    jmp .halt

; -- vc_this_cpu ----------------------------------------------------------------
; RAX = this vCPU's state block (GHCB VA/PA, DR7 shadow, #VC count, nesting
; flag: offsets VC_PERCPU_* of include/vc_abi.inc). Without VC_PERCPU it is
; the program's own block below (vc_percpu0): one vCPU. With VC_PERCPU each
; vCPU has its own, right after its 64-bit TSS: STR gives the TSS selector,
; SGDT the GDT, the TSS descriptor its base (APM vol 2, 4.8.3). Neither
; instruction exits to the hypervisor, and a ring-3 #VC needs no SWAPGS:
; the handler runs on whatever stack and GS the interrupted code had.
; Changes RAX and flags only.
vc_this_cpu:
%ifdef VC_PERCPU
    push rcx
    push rdx
    sub rsp, 16
    sgdt [rsp + 6]                  ; limit at +6, base at +8
    mov rdx, [rsp + 8]
    add rsp, 16
    xor ecx, ecx
    str cx
    and ecx, 0xFFF8                 ; descriptor offset in the GDT
    add rdx, rcx                    ; the 16-byte TSS descriptor
    mov eax, [rdx + 8]              ; base 63:32
    shl rax, 32
    movzx ecx, byte [rdx + 7]       ; base 31:24
    shl ecx, 24
    or rax, rcx
    mov ecx, [rdx + 2]              ; base 23:0 (and the type byte above it)
    and ecx, 0xFFFFFF
    or rax, rcx
    add rax, VC_PERCPU_TSS_OFFSET
    pop rdx
    pop rcx
    ret
%else
    lea rax, [rel vc_percpu0]
    ret
%endif

; -- the data block ---------------------------------------------------------------
; One set per guest. A program or firmware fills vc_ghcb_va / vc_ghcb_pa
; (and vc_cbit_mask, or calls vc_setup) before the first #VC; the sev_guest
; test fixture does it through %define VC_GHCB_GPA and VC_CBIT_MASK. The
; first six qwords are the per-vCPU block of a one-vCPU program (same layout
; as the VC_PERCPU blocks, VC_PERCPU_* offsets); with VC_PERCPU they go unused.
align 8
vc_percpu0:
vc_ghcb_va:                 ; virtual address of the GHCB page (mapped C=0)
%ifdef VC_GHCB_GPA
    dq VC_GHCB_GPA
%else
    dq 0
%endif
vc_ghcb_pa:                 ; its guest-physical address (what the MSR gets)
%ifdef VC_GHCB_GPA
    dq VC_GHCB_GPA
%else
    dq 0
%endif
vc_dr7:                     ; the guest's DR7 as it last wrote it (shadow)
    dq DR7_RESET
vc_count:                   ; #VC exceptions served
    dq 0
vc_active:                  ; nonzero while the handler runs (no nesting)
    dq 0
vc_forward_target:          ; reserved (the layout of a VC_PERCPU block)
    dq 0
; Shared by every vCPU:
vc_cbit_mask:               ; 1 << C-bit position (needed to refuse private MMIO)
%ifdef VC_CBIT_MASK
    dq VC_CBIT_MASK
%else
    dq 0
%endif
vc_phys_offset:             ; VA of guest-physical p is p + this (page tables)
    dq 0
vc_ghcb_version:            ; GHCB protocol version written into each request
    dw GHCB_PROTOCOL_MAX
align 8

%endif
