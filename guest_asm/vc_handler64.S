; vc_handler64.S -- a 64-bit #VC handler for SEV-ES guests (label `vc_handler`).
;
; What it does, following the seed talk's #VC slides and the GHCB spec
; (AMD 56421, "Invoking VMGEXIT" and the NAE event table): read the error
; code (the SVM exit code of the intercepted event), check that the
; instruction at RIP really is one that raises it, copy the registers the
; hypervisor needs into the shared GHCB page and mark them valid, VMGEXIT,
; check SW_EXITINFO1 (0 ok, 1 take the exception in SW_EXITINFO2, else
; terminate), copy the answered registers back only if the hypervisor
; marked them valid, and return after the instruction.
;
; Served: CPUID (ECX sub-leaf, XCR0), IN/OUT (imm8 and DX ports, 1/2/4
; bytes), INS/OUTS with or without REP (through the shared buffer in
; chunks; DF honoured), RDMSR/WRMSR, RDTSC, RDTSCP, RDPMC, WBINVD, INVD,
; VMMCALL, MOV to/from DR7 (DR7 is shadowed, as Linux does), MONITOR(X),
; MWAIT(X), and MMIO through #VC(NPF): MOV 88/89/8A/8B/C6/C7/A0-A3, MOVZX
; and MOVSX 0F B6/B7/BE/BF, with every ModRM/SIB/displacement/RIP-relative
; form and REX/66/67 prefixes. MMIO through a C=1 mapping is refused
; (Linux vc_slow_virt_to_phys(), OVMF ValidateMmioMemory()): emulating it
; would hand private data to the host. Anything else terminates the guest
; with a reason of include/vc_abi.inc.
;
; ABI (guest_asm/README.md has the long form)
;   - Vector 29 gate -> vc_handler, 64-bit mode, CPL 0 handler; #VC from
;     CPL 0 or 3. Interrupts stay off while it runs (interrupt gate).
;   - Before the first #VC: vc_ghcb_va / vc_ghcb_pa = the GHCB page (mapped
;     with C=0) and vc_cbit_mask (or call vc_setup). DR7 reads need no GHCB.
;   - Several vCPUs: assemble with %define VC_PERCPU; each vCPU's GHCB and
;     handler state then live in a block right after its own TSS (layout
;     VC_PERCPU_* in include/vc_abi.inc), found with STR + SGDT.
;   - Registers: none changed except the ones the instruction itself writes;
;     RFLAGS restored by IRETQ. Stack: the CPU frame + 0x80 saved GPRs +
;     0x40 locals + at most 5 nested calls (about 0x140 bytes below the frame).
;   - Not re-entrant: a #VC inside the handler terminates (VC_REASON_NESTED).
;   - INS/OUTS from CPL 3 only on memory ring 3 may access, else #PF.
;   - A forwarded #GP/#UD jumps to that vector's IDT handler on the current
;     stack with the #VC frame rewritten (error code for #GP), as if the
;     instruction had faulted.

%include "ghcb.S"
%include "pagetable.S"

%ifndef SEVX86_VC_HANDLER64_S
%define SEVX86_VC_HANDLER64_S

bits 64

; Saved registers, RBP points here: GPR n at 8 * n in ModRM order, so a
; decoded register number indexes the frame directly (Linux pt_regs use).
%define VC_RAX 0x00
%define VC_RCX 0x08
%define VC_RDX 0x10
%define VC_RBX 0x18
%define VC_RSP 0x20
%define VC_RBP 0x28
%define VC_RSI 0x30
%define VC_RDI 0x38
%define VC_R8 0x40
%define VC_R9 0x48
%define VC_R10 0x50
%define VC_R11 0x58
%define VC_R12 0x60
%define VC_R13 0x68
%define VC_R14 0x70
%define VC_R15 0x78
%define VC_REGS_SIZE 0x80
; The CPU's frame above them (APM vol 2, 8.9.3: long-mode stack frame).
%define VC_ERR 0x80
%define VC_RIP 0x88
%define VC_CS 0x90
%define VC_RFLAGS 0x98
%define VC_FRAME_RSP 0xA0
%define VC_SS 0xA8
; Locals below RBP.
%define VC_LOCALS 0x40
%define VC_L0 -0x08
%define VC_L1 -0x10
%define VC_L2 -0x18
%define VC_L3 -0x20
%define VC_L4 -0x28
%define VC_IDTR -0x38          ; 10 bytes for SIDT
%define VC_PCPU -0x40          ; this vCPU's state block (vc_this_cpu)

; Decoded prefixes in R13 (one instruction at a time).
%define PFX_OPSIZE_BIT 0       ; 66
%define PFX_ADDR32_BIT 1       ; 67
%define PFX_REP_BIT 2          ; F3 or F2 (both repeat INS/OUTS)
%define PFX_SEG_BIT 3          ; a segment override; its number in bits 6:4
%define PFX_SEG_SHIFT 4
%define PFX_REX_B_BIT 8        ; the REX byte sits in bits 15:8
%define PFX_REX_X_BIT 9
%define PFX_REX_R_BIT 10
%define PFX_REX_W_BIT 11
%define PFX_REX_BIT 14         ; 0x40 of the REX byte: any REX present
%define MAX_INSN 15

; MMIO access kinds (Linux insn_mmio_type).
%define MMIO_WRITE_REG 1
%define MMIO_WRITE_IMM 2
%define MMIO_READ 3
%define MMIO_READ_ZX 4
%define MMIO_READ_SX 5

; Terminate with a reason of set VC_REASON_SET.
%macro vc_fail 1
    mov edi, VC_REASON_%1
    jmp vc_terminate
%endmacro

; RAX = the instruction length up to %1 (an address register or expression).
%macro vc_length_to 1
    lea rax, [%1]
    sub rax, r12
%endmacro

; =============================================================================
vc_handler:
    sub rsp, VC_REGS_SIZE
    mov [rsp + VC_RAX], rax
    mov [rsp + VC_RCX], rcx
    mov [rsp + VC_RDX], rdx
    mov [rsp + VC_RBX], rbx
    mov [rsp + VC_RBP], rbp
    mov [rsp + VC_RSI], rsi
    mov [rsp + VC_RDI], rdi
    mov [rsp + VC_R8], r8
    mov [rsp + VC_R9], r9
    mov [rsp + VC_R10], r10
    mov [rsp + VC_R11], r11
    mov [rsp + VC_R12], r12
    mov [rsp + VC_R13], r13
    mov [rsp + VC_R14], r14
    mov [rsp + VC_R15], r15
    mov rbp, rsp
    mov rax, [rbp + VC_FRAME_RSP]
    mov [rbp + VC_RSP], rax         ; the interrupted RSP, as a decoded operand sees it
    sub rsp, VC_LOCALS
    cld                             ; the gate does not clear DF; our copies go forward

    ; This vCPU's GHCB and state: the program's data block, or with
    ; VC_PERCPU the block after this vCPU's TSS (ghcb.S, vc_this_cpu).
    call vc_this_cpu
    mov [rbp + VC_PCPU], rax
    ; One GHCB, one set of state: a #VC while serving one would overwrite
    ; the request in flight (Linux keeps a backup GHCB; we refuse).
    cmp qword [rax + VC_PERCPU_ACTIVE], 0
    je .not_nested
    vc_fail NESTED
.not_nested:
    mov qword [rax + VC_PERCPU_ACTIVE], 1
    inc qword [rax + VC_PERCPU_COUNT]

    mov r12, [rbp + VC_RIP]
    call vc_decode_prefixes
    mov rax, [rbp + VC_ERR]
    cmp rax, SVM_EXIT_CPUID
    je vc_do_cpuid
    cmp rax, SVM_EXIT_IOIO
    je vc_do_ioio
    cmp rax, SVM_EXIT_MSR
    je vc_do_msr
    cmp rax, SVM_EXIT_NPF
    je vc_do_mmio
    cmp rax, SVM_EXIT_RDTSC
    je vc_do_rdtsc
    cmp rax, SVM_EXIT_RDTSCP
    je vc_do_rdtscp
    cmp rax, SVM_EXIT_RDPMC
    je vc_do_rdpmc
    cmp rax, SVM_EXIT_WBINVD
    je vc_do_wbinvd
    cmp rax, SVM_EXIT_INVD
    je vc_do_invd
    cmp rax, SVM_EXIT_VMMCALL
    je vc_do_vmmcall
    cmp rax, SVM_EXIT_MONITOR
    je vc_do_monitor
    cmp rax, SVM_EXIT_MWAIT
    je vc_do_mwait
    cmp rax, SVM_EXIT_DR7_READ
    je vc_do_dr7_read
    cmp rax, SVM_EXIT_DR7_WRITE
    je vc_do_dr7_write
    vc_fail UNSUPPORTED_EXIT

; -- leaving ------------------------------------------------------------------
; RAX = length of the emulated instruction: continue after it.
vc_done_advance:
    add [rbp + VC_RIP], rax
vc_done:
    call vc_leave
    mov rsp, rbp
    mov rax, [rbp + VC_RSP]
    mov [rbp + VC_FRAME_RSP], rax   ; an emulated load into RSP lands here
    call vc_restore_registers_at_rsp
    add rsp, VC_REGS_SIZE + 8       ; saved GPRs and the error code
    iretq

; This vCPU's handler is done: the next #VC is not nested. Changes RAX.
vc_leave:
    mov rax, [rbp + VC_PCPU]
    mov qword [rax + VC_PERCPU_ACTIVE], 0
    ret

; Reload every GPR from the frame at RSP (RSP itself excepted).
vc_restore_registers_at_rsp:
    mov rax, [rsp + 8 + VC_RAX]
    mov rcx, [rsp + 8 + VC_RCX]
    mov rdx, [rsp + 8 + VC_RDX]
    mov rbx, [rsp + 8 + VC_RBX]
    mov rbp, [rsp + 8 + VC_RBP]
    mov rsi, [rsp + 8 + VC_RSI]
    mov rdi, [rsp + 8 + VC_RDI]
    mov r8, [rsp + 8 + VC_R8]
    mov r9, [rsp + 8 + VC_R9]
    mov r10, [rsp + 8 + VC_R10]
    mov r11, [rsp + 8 + VC_R11]
    mov r12, [rsp + 8 + VC_R12]
    mov r13, [rsp + 8 + VC_R13]
    mov r14, [rsp + 8 + VC_R14]
    mov r15, [rsp + 8 + VC_R15]
    ret

vc_missing_output:
    vc_fail MISSING_OUTPUT

vc_decode_failed:
    vc_fail DECODE

; -- the hypervisor call ------------------------------------------------------------
; ghcb_vmgexit plus the verdict (spec "SW_EXITINFO1 return values"; Linux
; verify_exception_info()): returns only on success.
; In: RBX = GHCB, RDI = exit code, RSI / RDX = SW_EXITINFO1 / 2.
vc_hv_call:
    call ghcb_vmgexit
    cmp eax, GHCB_RESULT_OK
    jne .not_ok
    ret
.not_ok:
    cmp eax, GHCB_RESULT_EXCEPTION
    jne .error
    mov rax, [rbx + GHCB_SW_EXITINFO2]
    jmp vc_forward_exception
.error:
    vc_fail HV_ERROR

; Get the GHCB ready for a new request (RBX = its VA) or terminate without one.
vc_ghcb_begin:
    mov rbx, [rbp + VC_PCPU]
    cmp qword [rbx + VC_PERCPU_GHCB_PA], 0
    je .none
    mov rbx, [rbx + VC_PERCPU_GHCB_VA]
    test rbx, rbx
    jz .none
    jmp ghcb_invalidate
.none:
    vc_fail NO_GHCB

; -- taking an exception the hypervisor asked for ------------------------------------
; RAX = EVENTINJ (APM vol 2, 15.20). Like Linux, accept only a valid #GP or
; #UD of type exception: a hypervisor must not steer the guest into other
; handlers. The #VC frame becomes that exception's frame (RIP still on the
; instruction: a fault), and control goes to the handler in the IDT gate.
vc_forward_exception:
    bt eax, EVENTINJ_V_BIT
    jnc .refuse
    mov ecx, eax
    and ecx, EVENTINJ_TYPE_MASK
    cmp ecx, EVENTINJ_TYPE_EXCEPTION << EVENTINJ_TYPE_SHIFT
    jne .refuse
    movzx ecx, al                   ; vector
    cmp ecx, VEC_GP
    je .accepted
    cmp ecx, VEC_UD
    jne .refuse
.accepted:
    xor edx, edx                    ; error code: EVENTINJ 63:32 if EV, else 0
    bt eax, EVENTINJ_EV_BIT
    jnc vc_deliver_exception
    mov rdx, rax
    shr rdx, EVENTINJ_ERRORCODE_SHIFT
    jmp vc_deliver_exception
.refuse:
    vc_fail BAD_EXCEPTION

; Deliver exception ECX (error code RDX if the vector has one) to the
; guest's own handler, as if the emulated instruction had raised it.
vc_deliver_exception:
    sidt [rbp + VC_IDTR]
    movzx r8d, word [rbp + VC_IDTR]         ; limit
    mov r9, [rbp + VC_IDTR + 2]             ; base
    mov r10, rcx
    shl r10, 4                              ; 16-byte long-mode gates
    lea r11, [r10 + 15]
    cmp r11, r8
    ja .refuse
    add r9, r10
    bt qword [r9], 47                       ; gate present
    jnc .refuse
    movzx eax, word [r9]                    ; offset 15:0
    movzx r10d, word [r9 + 6]               ; offset 31:16
    shl r10, 16
    or rax, r10
    mov r10d, dword [r9 + 8]                ; offset 63:32
    shl r10, 32
    or rax, r10
    ; RAX = the handler. Its address goes in the qword right below the
    ; exception frame and a RET reaches it with every register restored and
    ; RSP on the frame (no memory below RSP, no global: each vCPU alone).
    mov r8d, VEC_ERROR_CODE_MASK
    bt r8d, ecx
    jnc .no_error_code
    ; With an error code the frame starts at VC_ERR: the handler address
    ; takes R15's slot, and R15 waits in the RSP slot (never restored).
    mov [rbp + VC_ERR], rdx
    mov rcx, [rbp + VC_R15]
    mov [rbp + VC_R15], rax
    mov rax, [rbp + VC_RSP]
    mov [rbp + VC_FRAME_RSP], rax
    mov [rbp + VC_RSP], rcx
    call vc_leave
    mov rsp, rbp
    call vc_restore_registers_at_rsp
    mov r15, [rsp + VC_RSP]
    add rsp, VC_R15
    ret
.no_error_code:
    ; #UD pushes none: the #VC error code slot holds the handler address.
    mov [rbp + VC_ERR], rax
    mov rax, [rbp + VC_RSP]
    mov [rbp + VC_FRAME_RSP], rax
    call vc_leave
    mov rsp, rbp
    call vc_restore_registers_at_rsp
    add rsp, VC_ERR
    ret
.refuse:
    vc_fail BAD_EXCEPTION

; -- prefixes -----------------------------------------------------------------------
; In: R12 = RIP. Out: R14 = address of the opcode, R13 = prefix bits (PFX_*).
; A REX byte counts only right before the opcode (APM vol 3, 1.2.7).
vc_decode_prefixes:
    mov r14, r12
    xor r13d, r13d
.next:
    mov rax, r14
    sub rax, r12
    cmp rax, MAX_INSN - 1
    jae vc_decode_failed
    movzx eax, byte [r14]
    cmp al, 0x66
    je .opsize
    cmp al, 0x67
    je .addr32
    cmp al, 0xF3
    je .rep
    cmp al, 0xF2
    je .rep
    cmp al, 0xF0
    je .legacy                      ; LOCK: nothing to record
    mov ecx, SEG_ES
    cmp al, 0x26
    je .segment
    mov ecx, SEG_CS
    cmp al, 0x2E
    je .segment
    mov ecx, SEG_SS
    cmp al, 0x36
    je .segment
    mov ecx, SEG_DS
    cmp al, 0x3E
    je .segment
    mov ecx, SEG_FS
    cmp al, 0x64
    je .segment
    mov ecx, SEG_GS
    cmp al, 0x65
    je .segment
    mov ecx, eax
    and ecx, 0xF0
    cmp ecx, 0x40
    jne .done
    and r13d, 0xFF                  ; REX: the last one before the opcode wins
    shl eax, 8
    or r13d, eax
    inc r14
    jmp .next
.opsize:
    bts r13d, PFX_OPSIZE_BIT
    jmp .legacy
.addr32:
    bts r13d, PFX_ADDR32_BIT
    jmp .legacy
.rep:
    bts r13d, PFX_REP_BIT
    jmp .legacy
.segment:
    and r13d, ~(7 << PFX_SEG_SHIFT)
    shl ecx, PFX_SEG_SHIFT
    or r13d, ecx
    bts r13d, PFX_SEG_BIT
.legacy:
    and r13d, 0xFF                  ; a legacy prefix after REX voids the REX
    inc r14
    jmp .next
.done:
    ret

; =============================================================================
; CPUID (exit 0x72): EAX, ECX, XCR0 in; RAX, RBX, RCX, RDX out.
; CPUID reads only EAX and ECX: the GHCB gets them zero-extended, so bits
; 63:32 of the guest's RAX/RCX never reach the host (guest_asm/README.md,
; "What the handler sends"). Linux and OVMF send the whole registers.
vc_do_cpuid:
    cmp word [r14], 0xA20F          ; 0F A2
    jne vc_decode_failed
    call vc_ghcb_begin
    mov eax, [rbp + VC_RAX]
    ghcb_set RAX, rax
    mov eax, [rbp + VC_RCX]
    ghcb_set RCX, rax
    ; Leaf 0xD answers depend on XCR0. XGETBV raises #UD unless
    ; CR4.OSXSAVE; then XCR0 has its reset value 1 (Linux vc_handle_cpuid).
    mov rax, cr4
    bt rax, CR4_OSXSAVE_BIT
    mov eax, 1
    jnc .xcr0
    xor ecx, ecx
    xgetbv
    shl rdx, 32
    or rax, rdx
.xcr0:
    ghcb_set XCR0, rax
    mov edi, SVM_EXIT_CPUID
    xor esi, esi
    xor edx, edx
    call vc_hv_call
    ghcb_require RAX, vc_missing_output
    ghcb_require RBX, vc_missing_output
    ghcb_require RCX, vc_missing_output
    ghcb_require RDX, vc_missing_output
    ; CPUID writes 32-bit results, zero-extended to 64 bits.
    mov eax, [rbx + GHCB_RAX]
    mov [rbp + VC_RAX], rax
    mov eax, [rbx + GHCB_RBX]
    mov [rbp + VC_RBX], rax
    mov eax, [rbx + GHCB_RCX]
    mov [rbp + VC_RCX], rax
    mov eax, [rbx + GHCB_RDX]
    mov [rbp + VC_RDX], rax
    vc_length_to r14 + 2
    jmp vc_done_advance

; =============================================================================
; RDMSR / WRMSR (exit 0x7C): SW_EXITINFO1 0 = read, 1 = write; RCX (and
; RAX, RDX for a write) in; RAX, RDX out for a read. The instructions read
; only ECX (and EDX:EAX), so only those 32-bit halves are sent.
vc_do_msr:
    call vc_ghcb_begin
    mov eax, [rbp + VC_RCX]
    ghcb_set RCX, rax
    cmp word [r14], 0x320F          ; 0F 32 RDMSR
    je .read
    cmp word [r14], 0x300F          ; 0F 30 WRMSR
    jne vc_decode_failed
    mov eax, [rbp + VC_RAX]
    ghcb_set RAX, rax
    mov eax, [rbp + VC_RDX]
    ghcb_set RDX, rax
    mov edi, SVM_EXIT_MSR
    mov esi, MSR_EXITINFO1_WRMSR
    xor edx, edx
    call vc_hv_call
    jmp .length
.read:
    mov edi, SVM_EXIT_MSR
    mov esi, MSR_EXITINFO1_RDMSR
    xor edx, edx
    call vc_hv_call
    ghcb_require RAX, vc_missing_output
    ghcb_require RDX, vc_missing_output
    mov eax, [rbx + GHCB_RAX]
    mov [rbp + VC_RAX], rax
    mov eax, [rbx + GHCB_RDX]
    mov [rbp + VC_RDX], rax
.length:
    vc_length_to r14 + 2
    jmp vc_done_advance

; =============================================================================
; RDTSC (0x6E): RAX, RDX out. RDTSCP (0x87): RAX, RCX (TSC_AUX), RDX out.
vc_do_rdtsc:
    cmp word [r14], 0x310F          ; 0F 31
    jne vc_decode_failed
    call vc_ghcb_begin
    mov edi, SVM_EXIT_RDTSC
    xor esi, esi
    xor edx, edx
    call vc_hv_call
    jmp vc_tsc_result

vc_do_rdtscp:
    cmp word [r14], 0x010F          ; 0F 01 F9
    jne vc_decode_failed
    cmp byte [r14 + 2], 0xF9
    jne vc_decode_failed
    call vc_ghcb_begin
    mov edi, SVM_EXIT_RDTSCP
    xor esi, esi
    xor edx, edx
    call vc_hv_call
    ghcb_require RCX, vc_missing_output
    mov eax, [rbx + GHCB_RCX]
    mov [rbp + VC_RCX], rax
    ; fall through with the 3-byte length below
vc_tsc_result:
    ghcb_require RAX, vc_missing_output
    ghcb_require RDX, vc_missing_output
    mov eax, [rbx + GHCB_RAX]
    mov [rbp + VC_RAX], rax
    mov eax, [rbx + GHCB_RDX]
    mov [rbp + VC_RDX], rax
    vc_length_to r14 + 2
    cmp byte [r14 + 1], 0x01        ; RDTSCP is one byte longer
    jne vc_done_advance
    inc rax
    jmp vc_done_advance

; RDPMC (0x6F): ECX in (zero-extended); RAX, RDX out.
vc_do_rdpmc:
    cmp word [r14], 0x330F          ; 0F 33
    jne vc_decode_failed
    call vc_ghcb_begin
    mov eax, [rbp + VC_RCX]
    ghcb_set RCX, rax
    mov edi, SVM_EXIT_RDPMC
    xor esi, esi
    xor edx, edx
    call vc_hv_call
    jmp vc_tsc_result               ; same outputs and length as RDTSC

; WBINVD (0x89) and INVD (0x76): no state either way. Linux refuses INVD (it
; would discard dirty cache lines); OVMF forwards it, so do we.
vc_do_wbinvd:
    cmp word [r14], 0x090F          ; 0F 09
    jne vc_decode_failed
    mov edi, SVM_EXIT_WBINVD
    jmp vc_no_state_exit
vc_do_invd:
    cmp word [r14], 0x080F          ; 0F 08
    jne vc_decode_failed
    mov edi, SVM_EXIT_INVD
vc_no_state_exit:
    push rdi
    call vc_ghcb_begin
    pop rdi
    xor esi, esi
    xor edx, edx
    call vc_hv_call
    vc_length_to r14 + 2
    jmp vc_done_advance

; =============================================================================
; VMMCALL (0x81): the GHCB spec asks for RAX and CPL; what the other
; registers mean is the hypervisor's ABI. KVM's hypercall ABI also reads
; RBX, RCX, RDX, RSI (Linux kvm_sev_es_hcall_prepare()), so pass those.
; RAX out.
vc_do_vmmcall:
    cmp word [r14], 0x010F          ; 0F 01 D9
    jne vc_decode_failed
    cmp byte [r14 + 2], 0xD9
    jne vc_decode_failed
    call vc_ghcb_begin
    mov rax, [rbp + VC_RAX]
    ghcb_set RAX, rax
    mov rax, [rbp + VC_RBX]
    ghcb_set RBX, rax
    mov rax, [rbp + VC_RCX]
    ghcb_set RCX, rax
    mov rax, [rbp + VC_RDX]
    ghcb_set RDX, rax
    mov rax, [rbp + VC_RSI]
    ghcb_set RSI, rax
    mov rax, [rbp + VC_CS]
    and eax, 3                      ; CPL = the interrupted CS's RPL
    mov byte [rbx + GHCB_CPL], al
    bts qword [rbx + GHCB_VALID_BITMAP + (GHCB_VALID_CPL >> 6) * 8], GHCB_VALID_CPL & 63
    mov edi, SVM_EXIT_VMMCALL
    xor esi, esi
    xor edx, edx
    call vc_hv_call
    ghcb_require RAX, vc_missing_output
    mov rax, [rbx + GHCB_RAX]
    mov [rbp + VC_RAX], rax
    vc_length_to r14 + 3
    jmp vc_done_advance

; MONITOR / MONITORX (0x8A): RAX (the linear address, all 64 bits with the
; 64-bit address size this decoder accepts; passed as the guest has it, like
; OVMF; Linux treats MONITOR as a NOP instead), ECX, EDX in (zero-extended:
; the instruction reads only their low halves, APM vol 3 "MONITOR").
vc_do_monitor:
    cmp word [r14], 0x010F          ; 0F 01 C8, or 0F 01 FA (MONITORX)
    jne vc_decode_failed
    cmp byte [r14 + 2], 0xC8
    je .ok
    cmp byte [r14 + 2], 0xFA
    jne vc_decode_failed
.ok:
    call vc_ghcb_begin
    mov rax, [rbp + VC_RAX]
    ghcb_set RAX, rax
    mov eax, [rbp + VC_RCX]
    ghcb_set RCX, rax
    mov eax, [rbp + VC_RDX]
    ghcb_set RDX, rax
    mov edi, SVM_EXIT_MONITOR
    xor esi, esi
    xor edx, edx
    call vc_hv_call
    vc_length_to r14 + 3
    jmp vc_done_advance

; MWAIT / MWAITX (0x8B): EAX, ECX in (zero-extended).
vc_do_mwait:
    cmp word [r14], 0x010F          ; 0F 01 C9, or 0F 01 FB (MWAITX)
    jne vc_decode_failed
    cmp byte [r14 + 2], 0xC9
    je .ok
    cmp byte [r14 + 2], 0xFB
    jne vc_decode_failed
.ok:
    call vc_ghcb_begin
    mov eax, [rbp + VC_RAX]
    ghcb_set RAX, rax
    mov eax, [rbp + VC_RCX]
    ghcb_set RCX, rax
    mov edi, SVM_EXIT_MWAIT
    xor esi, esi
    xor edx, edx
    call vc_hv_call
    vc_length_to r14 + 3
    jmp vc_done_advance

; =============================================================================
; MOV DR7, reg (0x37) and MOV reg, DR7 (0x27): 0F 23 / 0F 21 with ModRM
; reg = 7; the GPR is ModRM.rm (+ REX.B), always 64-bit. The hypervisor
; cannot read the guest's DR7, so the guest keeps the value it wrote
; (Linux runtime_data->dr7) and a read needs no VMGEXIT.
vc_dr7_operand:
    ; Out: ECX = the GPR number; decode failure unless this is DR7.
    cmp byte [r14], 0x0F
    jne vc_decode_failed
    movzx eax, byte [r14 + 2]
    mov ecx, eax
    shr ecx, 3
    and ecx, 7
    cmp ecx, 7
    jne vc_decode_failed
    bt r13d, PFX_REX_R_BIT          ; DR15 does not exist
    jc vc_decode_failed
    mov ecx, eax
    and ecx, 7
    bt r13d, PFX_REX_B_BIT
    jnc .out
    or ecx, 8
.out:
    ret

vc_do_dr7_read:
    cmp byte [r14 + 1], 0x21
    jne vc_decode_failed
    call vc_dr7_operand
    mov rax, [rbp + VC_PCPU]
    mov rax, [rax + VC_PERCPU_DR7]
    mov [rbp + rcx * 8], rax
    vc_length_to r14 + 3
    jmp vc_done_advance

vc_do_dr7_write:
    cmp byte [r14 + 1], 0x23
    jne vc_decode_failed
    call vc_dr7_operand
    mov r15, [rbp + rcx * 8]
    ; Bits 63:32 of DR7 must be zero: #GP(0), as the CPU would raise.
    mov rax, r15
    shr rax, 32
    jz .value_ok
    mov eax, VEC_GP | (EVENTINJ_TYPE_EXCEPTION << EVENTINJ_TYPE_SHIFT) | EVENTINJ_V | EVENTINJ_EV
    jmp vc_forward_exception
.value_ok:
    and r15d, DR7_WRITABLE          ; reserved bits read as written by hardware:
    or r15d, DR7_RESET              ; zeros, and bit 10 as one (Linux does the same)
    call vc_ghcb_begin
    ghcb_set RAX, r15               ; SW_EXITINFO1 = 0: the value is in RAX
    mov edi, SVM_EXIT_DR7_WRITE
    xor esi, esi
    xor edx, edx
    call vc_hv_call
    mov rax, [rbp + VC_PCPU]
    mov [rax + VC_PERCPU_DR7], r15
    vc_length_to r14 + 3
    jmp vc_done_advance

; =============================================================================
; IN / OUT / INS / OUTS (exit 0x7B). The CPU gives only the exit code, so
; build the IOIO EXITINFO1 the hardware would (APM vol 2, 15.10.2; Linux
; vc_ioio_exitinfo()): port 31:16, one-hot size, address size, REP, STR,
; TYPE_IN, segment 12:10.
vc_do_ioio:
    movzx eax, byte [r14]
    xor r15d, r15d                  ; EXITINFO1
    lea r8, [r14 + 1]               ; end of the instruction so far
    cmp al, 0xE4
    jb .string
    cmp al, 0xE7
    jbe .imm_port                   ; E4-E7: IN/OUT imm8
    cmp al, 0xEC
    jb vc_decode_failed
    cmp al, 0xEF
    ja vc_decode_failed             ; EC-EF: IN/OUT DX
    movzx ecx, word [rbp + VC_RDX]
    jmp .port
.imm_port:
    movzx ecx, byte [r14 + 1]
    inc r8
.port:
    shl ecx, IOIO_PORT_SHIFT
    or r15d, ecx
    test al, 2                      ; E4/E5/EC/ED read, E6/E7/EE/EF write
    jnz .size
    bts r15d, IOIO_TYPE_IN_BIT
    jmp .size
.string:
    cmp al, 0x6C
    jb vc_decode_failed
    cmp al, 0x6F
    ja vc_decode_failed             ; 6C/6D INS, 6E/6F OUTS
    bts r15d, IOIO_STR_BIT
    movzx ecx, word [rbp + VC_RDX]
    shl ecx, IOIO_PORT_SHIFT
    or r15d, ecx
    bt r13d, PFX_REP_BIT
    jnc .direction
    bts r15d, IOIO_REP_BIT
.direction:
    test al, 2
    jnz .outs
    bts r15d, IOIO_TYPE_IN_BIT      ; INS writes ES:rDI (no override possible)
    jmp .size
.outs:
    mov ecx, SEG_DS                 ; OUTS reads DS:rSI unless overridden
    bt r13d, PFX_SEG_BIT
    jnc .segment
    mov ecx, r13d
    shr ecx, PFX_SEG_SHIFT
    and ecx, 7
    cmp ecx, SEG_FS
    jae vc_decode_failed            ; FS/GS bases: not supported here
.segment:
    shl ecx, IOIO_SEG_SHIFT
    or r15d, ecx
.size:
    test al, 1                      ; even opcodes move bytes
    jnz .wide
    bts r15d, IOIO_SZ8_BIT
    mov r9d, 1
    jmp .address_size
.wide:
    bt r13d, PFX_OPSIZE_BIT
    jnc .dword
    bts r15d, IOIO_SZ16_BIT
    mov r9d, 2
    jmp .address_size
.dword:
    bts r15d, IOIO_SZ32_BIT         ; REX.W does not widen I/O
    mov r9d, 4
.address_size:
    bt r13d, PFX_ADDR32_BIT
    jc .a32
    bts r15d, IOIO_A64_BIT
    jmp .ready
.a32:
    bts r15d, IOIO_A32_BIT
.ready:
    ; R15 = EXITINFO1, R9 = operand size, R8 = end of the instruction.
    call vc_ghcb_begin
    bt r15d, IOIO_STR_BIT
    jc vc_ioio_string
    ; IN/OUT through rAX.
    mov ecx, r9d
    shl ecx, 3
    mov r10d, 1
    shl r10, cl
    dec r10                         ; mask of the operand size
    xor eax, eax                    ; IN: RAX 0, still marked valid (Linux)
    bt r15d, IOIO_TYPE_IN_BIT
    jc .rax
    mov rax, [rbp + VC_RAX]
    and rax, r10
.rax:
    ghcb_set RAX, rax
    mov edi, SVM_EXIT_IOIO
    mov esi, r15d
    xor edx, edx
    call vc_hv_call
    bt r15d, IOIO_TYPE_IN_BIT
    jnc .finish
    ghcb_require RAX, vc_missing_output
    mov rax, [rbx + GHCB_RAX]
    cmp r9d, 4
    jne .merge
    mov eax, eax                    ; IN EAX zero-extends into RAX
    mov [rbp + VC_RAX], rax
    jmp .finish
.merge:
    and rax, r10                    ; IN AL / AX keep the rest of RAX
    not r10
    and r10, [rbp + VC_RAX]
    or rax, r10
    mov [rbp + VC_RAX], rax
.finish:
    mov rax, r8
    sub rax, r12
    jmp vc_done_advance

; INS / OUTS: R15 = EXITINFO1, R9 = element size, R8 = instruction end,
; RBX = GHCB. The elements travel through the shared buffer, at most
; GHCB_SHARED_BUFFER_SIZE / size per VMGEXIT (SW_EXITINFO2 = count,
; SW_SCRATCH = the buffer's GPA); a REP with a larger count loops here,
; updating rSI/rDI and rCX after each chunk as the instruction would.
vc_ioio_string:
    mov r10d, 1                     ; elements left
    bt r15d, IOIO_REP_BIT
    jnc .chunk_size
    mov r10, [rbp + VC_RCX]
    bt r13d, PFX_ADDR32_BIT
    jnc .chunk_size
    mov r10d, r10d                  ; a 32-bit address size counts with ECX
.chunk_size:
    mov eax, GHCB_SHARED_BUFFER_SIZE
    xor edx, edx
    div r9
    mov r11, rax                    ; elements per chunk
.chunk:
    test r10, r10
    jz .done
    mov rcx, r10
    cmp rcx, r11
    jbe .count
    mov rcx, r11
.count:
    mov [rbp + VC_L0], rcx          ; elements this time
    test byte [rbp + VC_CS], 3
    jz .kernel
    call vc_user_string_check
.kernel:
    call ghcb_invalidate
    bt r15d, IOIO_TYPE_IN_BIT
    jc .exit
    mov rsi, [rbp + VC_RSI]         ; OUTS: gather from [rSI] into the buffer
    call vc_string_pointer
    lea rdi, [rbx + GHCB_SHARED_BUFFER]
    mov rcx, [rbp + VC_L0]
    call vc_gather
.exit:
    mov rax, [rbp + VC_PCPU]
    mov rax, [rax + VC_PERCPU_GHCB_PA]
    add rax, GHCB_SHARED_BUFFER
    ghcb_set SW_SCRATCH, rax
    mov edi, SVM_EXIT_IOIO
    mov esi, r15d
    mov rdx, [rbp + VC_L0]
    call vc_hv_call
    bt r15d, IOIO_TYPE_IN_BIT
    jnc .advance
    mov rdi, [rbp + VC_RDI]         ; INS: scatter from the buffer to [rDI]
    mov rsi, rdi
    call vc_string_pointer
    mov rdi, rsi
    lea rsi, [rbx + GHCB_SHARED_BUFFER]
    mov rcx, [rbp + VC_L0]
    call vc_scatter
.advance:
    mov rax, [rbp + VC_L0]
    imul rax, r9                    ; bytes moved
    bt qword [rbp + VC_RFLAGS], RFLAGS_DF_BIT
    jnc .forward
    neg rax
.forward:
    mov ecx, VC_RSI
    bt r15d, IOIO_TYPE_IN_BIT
    jnc .pointer
    mov ecx, VC_RDI
.pointer:
    add rax, [rbp + rcx]
    bt r13d, PFX_ADDR32_BIT
    jnc .store_pointer
    mov eax, eax
.store_pointer:
    mov [rbp + rcx], rax
    mov rax, [rbp + VC_L0]
    sub r10, rax
    bt r15d, IOIO_REP_BIT
    jnc .chunk
    mov rcx, [rbp + VC_RCX]
    sub rcx, rax
    bt r13d, PFX_ADDR32_BIT
    jnc .store_count
    mov ecx, ecx
.store_count:
    mov [rbp + VC_RCX], rcx
    jmp .chunk
.done:
    mov rax, r8
    sub rax, r12
    jmp vc_done_advance

; A string I/O instruction from CPL 3 makes this CPL-0 handler read or
; write memory for it: only memory ring 3 may access itself (U/S on every
; level, and R/W for INS). Otherwise the instruction faults with #PF, CR2 on
; the first byte refused -- Linux's check against user-space IOIO into
; kernel memory (vc_insn_string_check(), CVE-2023-46813).
; In: [VC_L0] elements of R9 bytes, R15 = EXITINFO1. Changes RAX, RCX, RDX,
; RSI, RDI, VC_L1, VC_L2.
vc_user_string_check:
    push r11
    mov rax, [rbp + VC_RSI]
    bt r15d, IOIO_TYPE_IN_BIT
    jnc .pointer
    mov rax, [rbp + VC_RDI]
.pointer:
    mov rsi, rax
    call vc_string_pointer
    mov rax, rsi
    mov rcx, [rbp + VC_L0]
    imul rcx, r9                    ; bytes
    bt qword [rbp + VC_RFLAGS], RFLAGS_DF_BIT
    jc .down
    lea rdx, [rax + rcx - 1]        ; last byte touched
    jmp .range
.down:
    lea rdx, [rax + r9 - 1]         ; the first element is the highest
    sub rcx, r9
    sub rax, rcx                    ; the last element is the lowest
.range:
    mov [rbp + VC_L1], rax          ; first byte touched
    mov [rbp + VC_L2], rdx
    and rax, -0x1000
.page:
    mov rdi, rax
    push rax
    call pt_walk_access
    pop rax
    mov esi, PF_ERR_US
    jc .fault                       ; not present: P clear
    or esi, PF_ERR_P
    mov edx, PTE_US
    bt r15d, IOIO_TYPE_IN_BIT
    jnc .need
    or edx, PTE_RW
.need:
    and r11d, edx
    cmp r11d, edx
    jne .fault
    add rax, 0x1000
    cmp rax, [rbp + VC_L2]
    jbe .page
    pop r11
    ret
.fault:
    bt r15d, IOIO_TYPE_IN_BIT
    jnc .cr2
    or esi, PF_ERR_WR
.cr2:
    cmp rax, [rbp + VC_L1]
    jae .report
    mov rax, [rbp + VC_L1]
.report:
    mov cr2, rax
    mov ecx, VEC_PF
    mov edx, esi
    jmp vc_deliver_exception

; RSI = a string operand register value -> RSI = the address to use (32-bit
; address size truncates it).
vc_string_pointer:
    bt r13d, PFX_ADDR32_BIT
    jnc .out
    mov esi, esi
.out:
    ret

; Copy RCX elements of R9 bytes: element i from RSI + i*size (DF clear) or
; RSI - i*size (DF set, the instruction walks down) to RDI + i*size.
vc_gather:
    bt qword [rbp + VC_RFLAGS], RFLAGS_DF_BIT
    jc .down
    imul rcx, r9
    rep movsb
    ret
.down:
    mov rdx, rcx
.element:
    test rdx, rdx
    jz .out
    mov rcx, r9
    rep movsb
    sub rsi, r9
    sub rsi, r9
    dec rdx
    jmp .element
.out:
    ret

; The reverse: element i from RSI + i*size to RDI + i*size or RDI - i*size.
vc_scatter:
    bt qword [rbp + VC_RFLAGS], RFLAGS_DF_BIT
    jc .down
    imul rcx, r9
    rep movsb
    ret
.down:
    mov rdx, rcx
.element:
    test rdx, rdx
    jz .out
    mov rcx, r9
    rep movsb
    sub rdi, r9
    sub rdi, r9
    dec rdx
    jmp .element
.out:
    ret

; =============================================================================
; MMIO (#VC with error code 0x400, NPF): the access hit a guest-physical
; address with no RAM behind it. Decode the MOV (Linux insn_decode_mmio(),
; OVMF MmioExit()), compute its linear address (Linux insn_get_addr_ref()),
; translate it through our page tables, refuse a C=1 mapping, and have the
; hypervisor do the access through the shared buffer: SW exit MMIO_READ or
; MMIO_WRITE, SW_EXITINFO1 = GPA, SW_EXITINFO2 = size, SW_SCRATCH = buffer.
vc_do_mmio:
    ; Operand size of the full-size forms: REX.W 8, else 66 2, else 4.
    mov r11d, 4
    bt r13d, PFX_OPSIZE_BIT
    jnc .rex_w
    mov r11d, 2
.rex_w:
    bt r13d, PFX_REX_W_BIT
    jnc .opcode
    mov r11d, 8
.opcode:
    mov qword [rbp + VC_L4], 0      ; immediate value (C6/C7)
    movzx eax, byte [r14]
    lea r8, [r14 + 1]               ; ModRM, or the moffs
    cmp al, 0x0F
    je .two_byte
    mov r15d, MMIO_WRITE_REG
    mov r9d, 1
    cmp al, 0x88                    ; MOV r/m8, r8
    je .modrm
    mov r9d, r11d
    cmp al, 0x89                    ; MOV r/m, r
    je .modrm
    mov r15d, MMIO_READ
    mov r9d, 1
    cmp al, 0x8A                    ; MOV r8, r/m8
    je .modrm
    mov r9d, r11d
    cmp al, 0x8B                    ; MOV r, r/m
    je .modrm
    mov r15d, MMIO_WRITE_IMM
    mov r9d, 1
    cmp al, 0xC6                    ; MOV r/m8, imm8
    je .modrm
    mov r9d, r11d
    cmp al, 0xC7                    ; MOV r/m, imm16/32 (sign-extended for 64)
    je .modrm
    cmp al, 0xA0
    jb vc_decode_failed
    cmp al, 0xA3
    ja vc_decode_failed
    ; A0-A3: MOV AL/rAX <-> moffs; the address is an immediate of the
    ; address size (8 bytes, 4 with 67).
    mov r15d, MMIO_READ
    test al, 2
    jz .moffs_size
    mov r15d, MMIO_WRITE_REG
.moffs_size:
    mov r9d, 1
    test al, 1
    jz .moffs
    mov r9d, r11d
.moffs:
    xor ecx, ecx                    ; the register is rAX
    bt r13d, PFX_ADDR32_BIT
    jc .moffs32
    mov rax, [r8]
    add r8, 8
    jmp .have_address
.moffs32:
    mov eax, [r8]
    add r8, 4
    jmp .have_address

.two_byte:
    movzx eax, byte [r14 + 1]
    inc r8
    mov r10d, r11d                  ; destination size
    mov r15d, MMIO_READ_ZX
    mov r9d, 1
    cmp al, 0xB6                    ; MOVZX r, r/m8
    je .modrm
    mov r9d, 2
    cmp al, 0xB7                    ; MOVZX r, r/m16
    je .modrm
    mov r15d, MMIO_READ_SX
    mov r9d, 1
    cmp al, 0xBE                    ; MOVSX r, r/m8
    je .modrm
    mov r9d, 2
    cmp al, 0xBF                    ; MOVSX r, r/m16
    je .modrm
    jmp vc_decode_failed

.modrm:
    call vc_modrm                   ; RAX = address, ECX = reg, R8 past it, DL = RIP-rel
    jc vc_decode_failed             ; mod = 11: no memory operand, no NPF
    cmp r15d, MMIO_WRITE_IMM
    jne .rip_relative
    test ecx, ecx                   ; C6 /0, C7 /0 only
    jnz vc_decode_failed
    ; Immediate: 1, 2 or 4 bytes; a 64-bit store sign-extends imm32.
    cmp r9d, 1
    jne .imm16
    movzx esi, byte [r8]
    inc r8
    jmp .imm_done
.imm16:
    cmp r9d, 2
    jne .imm32
    movzx esi, word [r8]
    add r8, 2
    jmp .imm_done
.imm32:
    movsxd rsi, dword [r8]
    add r8, 4
.imm_done:
    mov [rbp + VC_L4], rsi
.rip_relative:
    test dl, dl
    jz .have_address
    add rax, r8                     ; RIP-relative: from the end of the instruction
    bt r13d, PFX_ADDR32_BIT
    jnc .have_address
    mov eax, eax

.have_address:
    ; RAX = linear address, ECX = register, R8 = end, R9 = access size,
    ; R10 = destination size (MOVZX/MOVSX), R15 = kind.
    mov [rbp + VC_L1], rax
    mov [rbp + VC_L2], rcx
    mov [rbp + VC_L3], r8
    ; Linear addresses are flat in 64-bit mode except for FS/GS overrides.
    bt r13d, PFX_SEG_BIT
    jnc .one_page
    mov edx, r13d
    shr edx, PFX_SEG_SHIFT
    and edx, 7
    cmp edx, SEG_FS
    jae vc_decode_failed            ; FS/GS bases: not supported here
.one_page:
    mov edx, eax                    ; an access split over two pages is not MMIO we emulate
    and edx, 0xFFF
    add edx, r9d
    cmp edx, 0x1000
    ja vc_decode_failed
    ; The published attacks on #VC MMIO emulation: a host that unmaps a
    ; private page makes the guest hand its contents over as "MMIO". Only a
    ; C=0 mapping may be emulated.
    cmp qword [rel vc_cbit_mask], 0
    jne .walk
    vc_fail NO_CBIT
.walk:
    mov rdi, rax
    call pt_walk
    jnc .mapped
    vc_fail PAGE_WALK
.mapped:
    test rdx, [rel vc_cbit_mask]
    jz .shared
    vc_fail MMIO_PRIVATE
.shared:
    mov [rbp + VC_L0], rax          ; GPA
    call vc_ghcb_begin
    mov rax, [rbp + VC_PCPU]
    mov rax, [rax + VC_PERCPU_GHCB_PA]
    add rax, GHCB_SHARED_BUFFER
    ghcb_set SW_SCRATCH, rax
    mov rcx, [rbp + VC_L2]
    cmp r15d, MMIO_READ
    jae .read
    ; Write: the value goes into the shared buffer.
    mov rax, [rbp + VC_L4]
    cmp r15d, MMIO_WRITE_IMM
    je .store
    mov rax, [rbp + rcx * 8]
    cmp r9d, 1
    jne .store
    call vc_get_reg8
.store:
    mov [rbx + GHCB_SHARED_BUFFER], rax
    mov edi, SW_EXIT_MMIO_WRITE
    mov rsi, [rbp + VC_L0]
    mov edx, r9d
    call vc_hv_call
    jmp .finish
.read:
    mov edi, SW_EXIT_MMIO_READ
    mov rsi, [rbp + VC_L0]
    mov edx, r9d
    call vc_hv_call
    mov rcx, [rbp + VC_L2]
    mov rax, [rbx + GHCB_SHARED_BUFFER]
    cmp r15d, MMIO_READ_SX
    je .sign_extend
    cmp r9d, 1
    jne .zx16
    movzx eax, al
    cmp r15d, MMIO_READ
    jne .put_extended
    call vc_put_reg8                ; MOV r8, m8: only that byte changes
    jmp .finish
.zx16:
    cmp r9d, 2
    jne .put_plain
    movzx eax, ax
    cmp r15d, MMIO_READ
    jne .put_extended
.put_plain:
    mov edx, r9d                    ; MOV r16/r32/r64, m
    call vc_put_reg
    jmp .finish
.sign_extend:
    cmp r9d, 1
    jne .sx16
    movsx rax, al
    jmp .put_extended
.sx16:
    movsx rax, ax
.put_extended:
    mov edx, r10d
    call vc_put_reg
.finish:
    mov rax, [rbp + VC_L3]
    sub rax, r12
    jmp vc_done_advance

; ModRM/SIB/displacement -> effective address (APM vol 3, 1.4 and 2.2.1;
; Linux insn_get_addr_ref()).
; In:  R8 = address of the ModRM byte, R13 = prefixes, RBP = saved GPRs.
; Out: CF=1 if mod = 11 (a register, not memory). Else RAX = address (for
;      RIP-relative only the displacement, with DL = 1: the caller adds the
;      end of the instruction), ECX = ModRM.reg (+ REX.R), R8 = address past
;      ModRM, SIB and displacement. 67 truncates the address to 32 bits.
; Changes RAX, RCX, RDX, RSI, RDI, R8.
vc_modrm:
    push r9
    push r10
    push r11
    movzx esi, byte [r8]
    inc r8
    mov ecx, esi
    shr ecx, 3
    and ecx, 7
    bt r13d, PFX_REX_R_BIT
    jnc .reg_done
    or ecx, 8
.reg_done:
    mov edi, esi
    shr edi, 6                      ; mod
    cmp edi, 3
    je .register
    and esi, 7                      ; rm
    xor eax, eax
    xor edx, edx
    cmp esi, 4
    je .sib
    cmp esi, 5
    jne .base_rm
    test edi, edi
    jnz .base_rm
    mov dl, 1                       ; mod 00, rm 101: RIP + disp32
    jmp .disp32
.base_rm:
    bt r13d, PFX_REX_B_BIT
    jnc .base_rm_value
    or esi, 8
.base_rm_value:
    mov rax, [rbp + rsi * 8]
    jmp .displacement
.sib:
    movzx r9d, byte [r8]
    inc r8
    mov r10d, r9d
    shr r10d, 3
    and r10d, 7
    bt r13d, PFX_REX_X_BIT
    jnc .index
    or r10d, 8
.index:
    cmp r10d, 4                     ; index 100 without REX.X: none
    je .sib_base
    mov rax, [rbp + r10 * 8]
    mov r11d, ecx
    mov ecx, r9d
    shr ecx, 6                      ; scale
    shl rax, cl
    mov ecx, r11d
.sib_base:
    mov r10d, r9d
    and r10d, 7
    cmp r10d, 5
    jne .sib_base_value
    test edi, edi
    jz .disp32                      ; mod 00, base 101: disp32 and no base
.sib_base_value:
    bt r13d, PFX_REX_B_BIT
    jnc .sib_add
    or r10d, 8
.sib_add:
    add rax, [rbp + r10 * 8]
.displacement:
    cmp edi, 1
    je .disp8
    cmp edi, 2
    je .disp32
    jmp .done
.disp8:
    movsx r9, byte [r8]
    inc r8
    add rax, r9
    jmp .done
.disp32:
    movsxd r9, dword [r8]
    add r8, 4
    add rax, r9
.done:
    test dl, dl
    jnz .out
    bt r13d, PFX_ADDR32_BIT
    jnc .out
    mov eax, eax
.out:
    pop r11
    pop r10
    pop r9
    clc
    ret
.register:
    pop r11
    pop r10
    pop r9
    stc
    ret

; Byte registers: without any REX, numbers 4-7 are AH, CH, DH, BH (byte 1
; of RAX..RBX); with a REX they are SPL, BPL, SIL, DIL.
; vc_get_reg8: ECX = register -> RAX = its byte. vc_put_reg8: AL -> it.
vc_get_reg8:
    call vc_reg8_address
    movzx eax, byte [rdx]
    ret
vc_put_reg8:
    call vc_reg8_address
    mov [rdx], al
    ret
vc_reg8_address:
    lea rdx, [rbp + rcx * 8]
    bt r13d, PFX_REX_BIT
    jc .out
    cmp ecx, 4
    jb .out
    cmp ecx, 8
    jae .out
    lea rdx, [rbp + rcx * 8 - 31]   ; register n-4, byte 1
.out:
    ret

; Write RAX to register ECX as an instruction of operand size EDX does:
; 2 keeps bits 63:16, 4 zero-extends into 63:32, 8 replaces it.
vc_put_reg:
    cmp edx, 2
    je .word
    cmp edx, 4
    jne .qword
    mov eax, eax
.qword:
    mov [rbp + rcx * 8], rax
    ret
.word:
    mov [rbp + rcx * 8], ax
    ret

%endif
