; smp.S -- 64-bit helpers for several vCPUs under SEV-ES: IPIs, AP reset
; hold, the AP jump table, NMI completion, GHCB registration.
;
; Spec: GHCB 56421, "AP Reset Hold" (SW exit 0x8000_0004 and MSR protocol
; 0x006/0x007), "AP Jump Table" (0x8000_0005, SET/GET), "NMI Complete"
; (0x8000_0003), "GHCB GPA Registration" (0x012/0x013); IPIs through the
; x2APIC ICR MSR (0x830), which under SEV-ES is a #VC the handler forwards.
;
; Include after vc_handler64.S (or ghcb.S) in code built with
; %define VC_PERCPU: the GHCB helpers use this vCPU's block (vc_this_cpu).

%include "ghcb.S"
%include "include/apic.inc"

%ifndef SEVX86_SMP_S
%define SEVX86_SMP_S

bits 64

; -- IPIs -----------------------------------------------------------------------
; smp_send_ipi: write RAX to the x2APIC ICR (destination APIC ID in 63:32).
; The WRMSR raises #VC; the hypervisor delivers the IPI. Changes RCX, RDX.
smp_send_ipi:
    mov rdx, rax
    shr rdx, 32
    mov ecx, X2APIC_ICR
    wrmsr
    ret

; smp_init_sipi: INIT then SIPI (vector in SIL) to the vCPU whose APIC ID is
; EDI -- half of the classic INIT-SIPI-SIPI; send it twice for the whole.
; Changes RAX, RCX, RDX.
smp_init_sipi:
    mov eax, edi
    shl rax, X2APIC_ICR_DEST_SHIFT
    or rax, (APIC_DM_INIT << APIC_ICR_MODE_SHIFT) | APIC_ICR_LEVEL_ASSERT
    push rax
    call smp_send_ipi
    pop rax
    and rax, ~(7 << APIC_ICR_MODE_SHIFT)
    or rax, APIC_DM_STARTUP << APIC_ICR_MODE_SHIFT
    movzx ecx, sil
    or rax, rcx
    jmp smp_send_ipi

; -- GHCB registration ------------------------------------------------------------
; smp_register_ghcb: make RDI (a GPA, mapped 1:1 with C=0) this vCPU's GHCB:
; MSR-protocol registration (0x012, answer 0x013 with the same GFN, else
; terminate), then this vCPU's block gets the VA/PA. Changes RAX, RCX, RDX.
smp_register_ghcb:
    mov rax, rdi
    and rax, ~0xFFF
    or rax, GHCB_MSR_REG_GPA_REQ
    call ghcb_msr_call
    mov rcx, rax
    and ecx, GHCB_MSR_INFO_MASK
    cmp ecx, GHCB_MSR_REG_GPA_RESP
    jne .refused
    xor rax, GHCB_MSR_REG_GPA_RESP
    mov rcx, rdi
    and rcx, ~0xFFF
    cmp rax, rcx
    jne .refused
    call vc_this_cpu
    mov [rax + VC_PERCPU_GHCB_VA], rdi
    mov [rax + VC_PERCPU_GHCB_PA], rdi
    ret
.refused:
    mov edi, VC_REASON_MSR_PROTOCOL
    jmp vc_terminate

; -- one GHCB call from outside the #VC handler -------------------------------------
; smp_ghcb_call: VMGEXIT with exit code EDI, SW_EXITINFO1 = RSI, SW_EXITINFO2 =
; RDX through this vCPU's GHCB. Out: RAX = SW_EXITINFO1 (low half), RDX =
; SW_EXITINFO2. Interrupts must be off (the GHCB holds one request).
; Changes RAX, RCX, RDX.
smp_ghcb_call:
    push rbx
    call vc_this_cpu
    mov rbx, [rax + VC_PERCPU_GHCB_VA]
    test rbx, rbx
    jz .no_ghcb
    call ghcb_invalidate
    call ghcb_vmgexit
    mov rdx, [rbx + GHCB_SW_EXITINFO2]
    pop rbx
    ret
.no_ghcb:
    mov edi, VC_REASON_NO_GHCB
    jmp vc_terminate

; -- AP reset hold ------------------------------------------------------------------
; ap_reset_hold_msr: park this AP in the host (MSR protocol 0x006) until the
; hypervisor answers 0x007 with non-zero data (after INIT + SIPI). A zero
; answer means "not woken": ask again, as the spec says. Needs no GHCB; the
; GHCB MSR holds the answer afterwards. Changes RAX, RCX, RDX.
ap_reset_hold_msr:
    mov eax, GHCB_MSR_AP_RESET_HOLD_REQ
    call ghcb_msr_call
    mov rcx, rax
    and ecx, GHCB_MSR_INFO_MASK
    cmp ecx, GHCB_MSR_AP_RESET_HOLD_RESP
    jne .bad
    shr rax, GHCB_MSR_DATA_SHIFT
    test rax, rax
    jz ap_reset_hold_msr
    ret
.bad:
    mov edi, VC_REASON_MSR_PROTOCOL
    jmp vc_terminate

; ap_reset_hold: the same through the GHCB (SW exit 0x8000_0004): woken when
; SW_EXITINFO2 is non-zero. Changes RAX, RCX, RDX, RSI, RDI.
ap_reset_hold:
    mov edi, SW_EXIT_AP_HLT_LOOP
    xor esi, esi
    xor edx, edx
    call smp_ghcb_call
    test eax, eax
    jnz .error
    test rdx, rdx
    jz ap_reset_hold
    ret
.error:
    mov edi, VC_REASON_HV_ERROR
    jmp vc_terminate

; -- AP jump table -----------------------------------------------------------------
; ap_jump_table_set: tell the hypervisor the jump table's GPA (RDI).
; ap_jump_table_get: RAX = the GPA it holds (0: none was set).
; Both change RAX, RCX, RDX, RSI, RDI.
ap_jump_table_set:
    mov rdx, rdi
    mov edi, SW_EXIT_AP_JUMP_TABLE
    mov esi, AP_JUMP_TABLE_SET
    call smp_ghcb_call
    test eax, eax
    jnz ap_reset_hold.error
    ret

ap_jump_table_get:
    mov edi, SW_EXIT_AP_JUMP_TABLE
    mov esi, AP_JUMP_TABLE_GET
    xor edx, edx
    call smp_ghcb_call
    test eax, eax
    jnz ap_reset_hold.error
    mov rax, rdx
    ret

; ap_jump: go where the AP jump table says (its first qword: a 64-bit
; address in this harness' flat mode; real firmware keeps a 16-bit CS:IP
; there). No table or an empty entry: terminate with AP_NO_JUMP_TABLE so the
; host sees which vCPU could not go on.
ap_jump:
    call ap_jump_table_get
    test rax, rax
    jz .none
    mov rax, [rax]
    test rax, rax
    jz .none
    jmp rax
.none:
    mov edi, VC_REASON_AP_NO_JUMP_TABLE
    jmp vc_terminate

; -- NMI --------------------------------------------------------------------------
; nmi_complete: the NMI handler is done (SW exit 0x8000_0003): the host may
; inject the next NMI. Call it at the end of the handler, before IRETQ.
; Changes RAX, RCX, RDX, RSI, RDI.
nmi_complete:
    mov edi, SW_EXIT_NMI_COMPLETE
    xor esi, esi
    xor edx, edx
    call smp_ghcb_call
    ret

%endif
