; runtime.S -- sevx86 firmware, the 64-bit part: from long mode to the payload.
;
; Linked at FW_RUNTIME_GPA; reset.S copies it there from the flash and far
; jumps to its first byte in 64-bit mode, with paging on (identity map, the
; C-bit on all RAM), interrupts off, the flash GDT loaded and RSP unset.
; It runs from RAM because the #VC handler keeps its state next to its code.
;
; Steps:
;   1. GDT with a TSS (IST1 for #DF), IDT: #VC (29) -> vc_handler (guest_asm),
;      every other exception -> a stub that reports on the serial port and
;      ends the guest (fw_fail).
;   2. SEV-ES: the GHCB page (mapped C=0 by reset.S) is cleared through its
;      shared mapping and registered with the hypervisor (GHCB MSR protocol
;      0x012, answer 0x013 must echo the GFN: GHCB spec 56421, "GHCB GPA
;      Registration"); the #VC handler gets its address, the C-bit mask and
;      the protocol version reset.S negotiated. From here a #VC is served
;      through the GHCB page.
;   3. The boot info (include/fw_abi.inc) is completed; one line goes to the
;      debug console (port 0x402, as OVMF logs) -- under SEV-ES the first
;      VMGEXIT through the GHCB page.
;   4. Several vCPUs (smp_boot): the APs are started with INIT-SIPI-SIPI,
;      come up through ap_trampoline16 to ap_entry64, report in and park
;      (under SEV-ES in AP reset hold); the BSP waits for all of them.
;   5. The payload is entered (firmware/README.md, "Payload ABI"). If it
;      returns, RAX is written to the debug-exit port (the run's status).

%include "include/x86.inc"
%include "include/msr.inc"
%include "include/ghcb.inc"
%include "include/fw_abi.inc"
%include "include/platform.inc"
%include "include/vc_abi.inc"
%include "include/cpuid.inc"
%include "include/apic.inc"

%define LINE_MAX 200                    ; bytes in the line buffer

; Every vCPU finds its #VC state (GHCB, nesting flag) after its own TSS
; (guest_asm/README.md, "Several vCPUs").
%define VC_PERCPU 1

bits 64
org FW_RUNTIME_GPA

runtime_entry:
    mov ax, FW_SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov rsp, FW_STACK_TOP
    mov rbx, FW_BOOT_INFO_GPA

    ; 1. Descriptor tables. The new GDT repeats the flash GDT's code and data
    ; descriptors at the same selectors, so CS and DS need no reload. Each
    ; vCPU slot gets a TSS and a #VC block (percpu_init); the BSP is slot 0.
    call percpu_init
    lgdt [rel gdt_desc]
    mov ax, FW_SEL_TSS
    ltr ax
    lidt [rel idt_desc]

    ; 2. The GHCB (SEV-ES only).
    test dword [rbx + BI_SEV_STATUS], SEV_STATUS_SEV_ES_ENABLED
    jz .boot_info
    mov rax, [rbx + BI_CBIT_MASK]
    mov [rel vc_cbit_mask], rax
    mov eax, [rbx + BI_GHCB_VERSION]
    mov [rel vc_ghcb_version], ax
    mov rdi, FW_GHCB_GPA
    call ghcb_register
    mov rax, FW_GHCB_GPA
    mov [rbx + BI_GHCB_GPA], rax
    mov [rbx + BI_GHCB_VA], rax         ; identity map

.boot_info:
    call uart_init
    call smp_boot                       ; the APs; fills BI_VCPU_COUNT, BI_AP_JUMP_TABLE

    ; 3. Boot info for the payload; the magic last, once it is complete.
    mov word [rbx + BI_CONSOLE_PORT], FW_CONSOLE_PORT
    mov word [rbx + BI_DEBUGCON_PORT], FW_DEBUGCON_PORT
    mov word [rbx + BI_EXIT_PORT], FW_EXIT_PORT
    mov qword [rbx + BI_PAYLOAD_GPA], FW_PAYLOAD_GPA
    mov qword [rbx + BI_STACK_TOP], FW_STACK_TOP
    lea rax, [rel vc_handler]
    mov [rbx + BI_VC_HANDLER], rax
    lea rax, [rel idt]
    mov [rbx + BI_IDT_BASE], rax
    call build_memory_map
    mov dword [rbx + BI_VERSION], BOOT_INFO_VERSION
    mov dword [rbx + BI_MAGIC], BOOT_INFO_MAGIC
    call log_banner

    ; 4. The payload.
    cmp qword [rbx + BI_PAYLOAD_SIZE], 0
    je no_payload
    mov rdi, rbx                        ; RDI = boot info
    mov rsp, FW_STACK_TOP
    lea rax, [rel payload_returned]
    push rax                            ; a `ret` comes back here (RSP = 8 mod 16)
    xor eax, eax
    xor ebx, ebx
    xor ecx, ecx
    xor edx, edx
    xor esi, esi
    xor ebp, ebp
    xor r8d, r8d
    xor r9d, r9d
    xor r10d, r10d
    xor r11d, r11d
    xor r12d, r12d
    xor r13d, r13d
    xor r14d, r14d
    xor r15d, r15d
    jmp qword [rel payload_entry]       ; every GPR but RDI and RSP is zero

; The payload returned: its RAX is the status of the run.
payload_returned:
    mov edx, FW_EXIT_PORT
    out dx, eax
    jmp fw_halt

no_payload:
    lea rsi, [rel msg_no_payload]
    call buf_puts
    call buf_to_debugcon
    jmp fw_halt

; -- the GHCB ---------------------------------------------------------------------
; ghcb_register: make RDI (a page mapped 1:1 with C=0) this vCPU's GHCB.
; Zero the page through its C=0 mapping (what the host will see), register
; it (GHCB MSR protocol 0x012 with the GFN; the answer 0x013 must echo it:
; GHCB spec 56421, "GHCB GPA Registration"), then give it to this vCPU's
; #VC block. From here a #VC of this vCPU is served through that page.
; Changes RAX, RCX, RDX, RBX (on failure).
ghcb_register:
    push rdi
    mov ecx, GHCB_SIZE / 8
    xor eax, eax
    rep stosq
    pop rdi
    mov rax, rdi
    or rax, GHCB_MSR_REG_GPA_REQ
    call ghcb_msr_call
    mov rdx, rax
    and edx, GHCB_MSR_INFO_MASK
    mov ebx, (FW_REASON_SET << 8) | FW_REASON_GHCB_REGISTER
    cmp edx, GHCB_MSR_REG_GPA_RESP
    jne fw_fail
    shr rax, GHCB_MSR_DATA_SHIFT
    mov rdx, rdi
    shr rdx, GHCB_MSR_DATA_SHIFT
    cmp rax, rdx
    jne fw_fail
    call vc_this_cpu
    mov [rax + VC_PERCPU_GHCB_VA], rdi
    mov [rax + VC_PERCPU_GHCB_PA], rdi
    mov rbx, FW_BOOT_INFO_GPA
    ret

; -- per-vCPU slots ----------------------------------------------------------------
; percpu_init: for every slot s < FW_MAX_VCPUS, a 64-bit TSS at FW_PERCPU_GPA
; + s * FW_PERCPU_STRIDE (only IST1, the #DF stack, shared: a double fault
; ends the guest anyway), the #VC block right after it (VC_PERCPU), and its
; 16-byte TSS descriptor at FW_SEL_TSS + 16 s (APM vol 2, 4.8.3: base 23:0,
; type, base 31:24, base 63:32). Run by the BSP before anything else, so an
; AP finds its slot ready. Changes RAX, RCX, RDX, RDI.
percpu_init:
    mov rdi, FW_PERCPU_GPA
    mov ecx, FW_MAX_VCPUS * FW_PERCPU_STRIDE / 8
    xor eax, eax
    rep stosq
    lea rdx, [rel gdt + FW_SEL_TSS]
    mov rdi, FW_PERCPU_GPA
    xor ecx, ecx
.slot:
    mov qword [rdi + TSS64_IST1 + (FW_IST_DF - 1) * 8], FW_IST_STACK_TOP
    mov qword [rdi + VC_PERCPU_TSS_OFFSET + VC_PERCPU_DR7], DR7_RESET
    mov word [rdx], TSS64_SIZE - 1
    mov eax, edi
    and eax, 0xFFFFFF
    or eax, FW_TSS_DESC_ATTR << 24
    mov [rdx + 2], eax                  ; base 23:0, then the type byte
    mov eax, edi
    shr eax, 24
    mov byte [rdx + 6], 0               ; limit 19:16, flags
    mov [rdx + 7], al                   ; base 31:24
    mov dword [rdx + 8], 0              ; base 63:32 (below 4 GiB)
    mov dword [rdx + 12], 0
    add rdx, 16
    add rdi, FW_PERCPU_STRIDE
    inc ecx
    cmp ecx, FW_MAX_VCPUS
    jb .slot
    ret

; -- several vCPUs: the BSP's side ---------------------------------------------------
; smp_boot: start every AP and wait until each reported in (firmware/README.md,
; "APs"). How many: SMP_EXPECTED, from CPUID 0x80000008 ECX (reset.S), as the
; host reports it -- a host that claims more vCPUs than it runs makes the
; wait time out, one that claims fewer only keeps some parked.
;   1. The mailbox: the far pointer ap_reset jumps through (IP 0, CS of the
;      trampoline page), then the magic that makes it valid.
;   2. SEV-ES: the AP jump table page (empty: the payload fills it) is given
;      to the host (SW exit 0x8000_0005 SET, GHCB spec "AP Jump Table"), as
;      OVMF does for the OS; a woken AP goes where it says (ap_park).
;   3. INIT, SIPI, SIPI to all but self through the xAPIC ICR (APM vol 2,
;      the APIC chapter, "Interprocessor Interrupts"; the MP start-up sequence). Under
;      SEV-ES each ICR write is an MMIO #VC the handler forwards, and the
;      first SIPI starts an AP from its launch VMSA at ap_reset whatever the
;      vector says; without SEV-ES a host honouring the vector lands in the
;      same trampoline (the vector is its page). The host delivers IPIs at
;      once, so the MP spec's delays between them are left out.
;   4. Poll SMP_REPORTED: FW_AP_POLL_SPINS PAUSEs, then the counter, then
;      the TSC (RDTSC: an exit, so a one-at-a-time host runs the APs) until
;      FW_AP_TIMEOUT_TSC cycles passed -> FW_REASON_AP_TIMEOUT.
; Fills BI_VCPU_COUNT and BI_AP_JUMP_TABLE. RBX = boot info.
smp_boot:
    mov rsi, FW_SMP_GPA
    mov r13d, [rsi + SMP_EXPECTED]
    mov dword [rbx + BI_VCPU_COUNT], 1
    cmp r13d, 1
    jbe .done                           ; one vCPU: nothing to start
    mov ebx, (FW_REASON_SET << 8) | FW_REASON_VCPU_COUNT
    cmp r13d, FW_MAX_VCPUS
    ja fw_fail
    mov rbx, FW_BOOT_INFO_GPA
    ; 1.
    mov dword [rsi + SMP_NEXT_SLOT], 1
    mov dword [rsi + SMP_REPORTED], 0
    mov dword [rsi + SMP_PRINT_LOCK], 0
    lea rax, [rel ap_trampoline16]
    shr eax, 4
    mov word [rsi + SMP_AP_START_IP], 0
    mov [rsi + SMP_AP_START_CS], ax
    mov dword [rsi + SMP_AP_START_MAGIC], FW_AP_START_MAGIC
    ; 2.
    test dword [rbx + BI_SEV_STATUS], SEV_STATUS_SEV_ES_ENABLED
    jz .ipis
    mov rdi, FW_AP_JUMP_TABLE_GPA
    mov ecx, PAGE_SIZE_4K / 8
    xor eax, eax
    rep stosq
    mov rdi, FW_AP_JUMP_TABLE_GPA
    call ap_jump_table_set
    mov dword [rbx + BI_AP_JUMP_TABLE], FW_AP_JUMP_TABLE_GPA
.ipis:
    ; 3.
    lea rax, [rel ap_trampoline16]
    shr eax, 12                         ; the SIPI vector: the trampoline's page
    mov r14d, eax
    mov eax, (APIC_SH_ALL_EXCLUDING_SELF << APIC_ICR_SHORTHAND_SHIFT) | (APIC_DM_INIT << APIC_ICR_MODE_SHIFT) | APIC_ICR_LEVEL_ASSERT
    call apic_send_icr
    mov eax, (APIC_SH_ALL_EXCLUDING_SELF << APIC_ICR_SHORTHAND_SHIFT) | (APIC_DM_STARTUP << APIC_ICR_MODE_SHIFT) | APIC_ICR_LEVEL_ASSERT
    or eax, r14d
    call apic_send_icr
    call apic_send_icr                  ; the second SIPI (ignored if the first started it)
    ; 4.
    lea r14d, [r13 - 1]                 ; APs to wait for
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov r12, rax                        ; start
.wait:
    mov ecx, FW_AP_POLL_SPINS
.spin:
    pause
    dec ecx
    jnz .spin
    mov rsi, FW_SMP_GPA
    cmp [rsi + SMP_REPORTED], r14d
    jae .all_up
    rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, r12
    cmp rax, FW_AP_TIMEOUT_TSC
    jb .wait
    ; Timeout: say how many came, then end the guest.
    call print_lock_acquire
    lea rsi, [rel msg_ap_timeout]
    call buf_puts
    mov rsi, FW_SMP_GPA
    mov eax, [rsi + SMP_REPORTED]
    call buf_dec
    lea rsi, [rel msg_of]
    call buf_puts
    mov eax, r14d
    call buf_dec
    lea rsi, [rel msg_ap_timeout_end]
    call buf_puts
    call buf_to_serial
    mov ebx, (FW_REASON_SET << 8) | FW_REASON_AP_TIMEOUT
    jmp fw_fail
.all_up:
    mov eax, [rsi + SMP_REPORTED]
    inc eax
    mov [rbx + BI_VCPU_COUNT], eax
.done:
    ret

; apic_send_icr: EAX to the xAPIC ICR low dword (the write sends the IPI; the
; shorthand makes the high dword's destination irrelevant). The page at
; XAPIC_BASE is in the device window, mapped C=0. Changes RDI.
apic_send_icr:
    mov rdi, XAPIC_BASE
    mov [rdi + APIC_REG_ICR_LOW], eax
    ret

; print_lock_acquire / print_lock_release: one vCPU at a time in the line
; buffer and the UART (XCHG with memory is locked: APM vol 3, XCHG). A
; waiter backs off with FW_AP_POLL_SPINS PAUSEs and an RDTSC between tries:
; the exit lets a host that runs one vCPU at a time run the holder (what
; pause-loop exiting does for real guests). Change nothing else.
print_lock_acquire:
    push rax
    push rcx
    push rdx
    push rsi
    mov rsi, FW_SMP_GPA
.try:
    mov eax, 1
    xchg [rsi + SMP_PRINT_LOCK], eax
    test eax, eax
    jz .locked
    mov ecx, FW_AP_POLL_SPINS
.spin:
    pause
    dec ecx
    jnz .spin
    rdtsc
    jmp .try
.locked:
    pop rsi
    pop rdx
    pop rcx
    pop rax
    ret

print_lock_release:
    push rsi
    mov rsi, FW_SMP_GPA
    mov dword [rsi + SMP_PRINT_LOCK], 0
    pop rsi
    ret

; -- several vCPUs: the AP's side ---------------------------------------------------
; ap_entry64: an AP in 64-bit mode with the BSP's page tables (from
; ap_trampoline16): the guest's memory is private under one key for every
; vCPU, so the tables the BSP built are the AP's too.
;   1. A slot (LOCK XADD on SMP_NEXT_SLOT): its stack, TSS (LTR) and #VC
;      block; the BSP's IDT.
;   2. SEV-ES: its own GHCB page (FW_AP_GHCB_GPA + (slot - 1) * 4 KiB,
;      C=0), registered through the MSR protocol like the BSP's: two vCPUs
;      must never share a GHCB.
;   3. "sevx86-fw: AP <APIC ID> up" on the serial console (CPUID and the
;      UART: #VC, GHCB, VMGEXIT under SEV-ES).
;   4. Report in (LOCK XADD on SMP_REPORTED) and park (ap_park).
ap_entry64:
    mov ax, FW_SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    ; 1.
    mov rsi, FW_SMP_GPA
    mov eax, 1
    lock xadd [rsi + SMP_NEXT_SLOT], eax
    cmp eax, FW_MAX_VCPUS
    jae ap_no_slot
    mov r12d, eax                       ; R12 = slot, for good
    mov ecx, eax
    shl ecx, 12                         ; * FW_AP_STACK_SIZE
    lea rsp, [rcx + FW_AP_STACKS_GPA]
    shl eax, 4
    add eax, FW_SEL_TSS
    ltr ax
    lidt [rel idt_desc]
    mov rbx, FW_BOOT_INFO_GPA
    xor r15d, r15d                      ; R15 = GHCB GPA (0 without SEV-ES)
    ; 2.
    test dword [rbx + BI_SEV_STATUS], SEV_STATUS_SEV_ES_ENABLED
    jz .report
    lea eax, [r12 - 1]
    shl eax, 12
    lea rdi, [rax + FW_AP_GHCB_GPA]
    mov r15, rdi
    call ghcb_register
.report:
    ; 3.
    mov eax, CPUID_LEAF_FEATURES
    xor ecx, ecx
    cpuid
    shr ebx, CPUID_1_EBX_APIC_ID_SHIFT  ; initial APIC ID, 31:24
    mov r13d, ebx
    call print_lock_acquire
    lea rsi, [rel msg_ap]
    call buf_puts
    mov eax, r13d
    call buf_dec
    lea rsi, [rel msg_ap_up]
    call buf_puts
    test r15, r15
    jz .line
    lea rsi, [rel msg_ap_ghcb]
    call buf_puts
    mov rax, r15
    call buf_hex
.line:
    mov al, `\n`
    call buf_putc
    call buf_to_serial
    call print_lock_release
    ; 4.
    jmp ap_park

; ap_park: report in, then wait. Under SEV-ES in AP reset hold through the
; GHCB (SW exit 0x8000_0004, GHCB spec "AP Reset Hold"; OVMF's
; SevEsPlaceApHlt does the same): the host keeps the AP until an INIT-SIPI,
; which the AP sees as a non-zero SW_EXITINFO2. The count goes up right
; before the hold, as OVMF delays its decrement: a payload may INIT-SIPI an
; AP as soon as it counts, and a wake that lands before the hold is lost
; (the AP's next hold answers "not woken"); waking code retries.
; Woken: go where the AP jump table says (ap_follow_jump_table). Without
; SEV-ES there is no hold: HLT with interrupts off, for good.
ap_park:
    mov rsi, FW_SMP_GPA
    mov eax, 1
    lock xadd [rsi + SMP_REPORTED], eax
    mov rax, FW_BOOT_INFO_GPA
    test dword [rax + BI_SEV_STATUS], SEV_STATUS_SEV_ES_ENABLED
    jz ap_no_slot
    call ap_reset_hold                  ; smp.S: returns once woken
    jmp ap_follow_jump_table

ap_no_slot:
    cli
    hlt
    jmp ap_no_slot

; ap_follow_jump_table: a woken AP leaves for the entry in the AP jump table
; page: IP in bits 15:0, CS in 31:16 (the real-mode far pointer Linux and
; OVMF keep there). The firmware reads its own page, not the host's GET
; answer: the host only stores the GPA. An empty entry ends the guest with
; guest_asm's AP_NO_JUMP_TABLE: an AP woken with nowhere to go must not run
; on. Otherwise, long mode -> compatibility mode -> paging off, EFER.LME
; off (APM vol 2, "Leaving Long Mode") -> 16-bit protected mode with
; real-mode limits -> CR0.PE off -> far jump through the table. The entry
; gets real mode, interrupts off, DS = ES = SS = 0, ESI = this AP's slot.
ap_follow_jump_table:
    mov rax, FW_AP_JUMP_TABLE_GPA
    cmp dword [rax], 0
    jne .go
    mov edi, VC_REASON_AP_NO_JUMP_TABLE
    jmp vc_terminate
.go:
    cli
    mov esi, r12d
    push FW_SEL_CODE32
    lea rax, [rel ap_leave_long_mode]
    push rax
    retfq

; -- the AP trampoline page (SIPI vector = its page) ----------------------------------
; ap_trampoline16: real mode, CS = this page >> 4, IP = 0 (from ap_reset's far
; jump, or from a SIPI a host without SEV-ES honours). The runtime's GDT
; (its 32-bit base fits), CR0.PE, 32-bit code, then long mode with the BSP's
; page tables as reset.S entered it (APM vol 2, 14.6.1); no IDT until
; 64-bit mode, and no instruction that could raise #VC before the AP has
; its GHCB. Under SEV-ES the CR0, CR4 and EFER writes are traps the host sees.
align PAGE_SIZE_4K
bits 16
ap_trampoline16:
    cli
    cld
    mov ax, cs
    mov ds, ax
    o32 lgdt [ap_gdt_desc - ap_trampoline16]
    mov eax, cr0
    or eax, CR0_PE
    mov cr0, eax
    jmp dword FW_SEL_CODE32:ap_trampoline32

bits 32
ap_trampoline32:
    mov ax, FW_SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, cr4
    or eax, CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
    mov cr4, eax
    mov eax, FW_PML4_GPA
    mov cr3, eax
    mov ecx, MSR_EFER
    rdmsr
    or eax, EFER_LME
    wrmsr
    mov eax, cr0
    and eax, ~(CR0_EM | CR0_TS)
    or eax, CR0_PG | CR0_WP | CR0_NE | CR0_MP
    mov cr0, eax
    jmp FW_SEL_CODE64:ap_entry64

; ap_leave_long_mode: the way back (ap_follow_jump_table), in compatibility
; mode: paging off (from here every access is private), EFER.LME and
; CR4.PAE off, 16-bit segments, CR0.PE off, far jump through the table.
ap_leave_long_mode:
    mov eax, cr0
    btr eax, CR0_PG_BIT
    mov cr0, eax
    mov ecx, MSR_EFER
    rdmsr
    btr eax, EFER_LME_BIT
    wrmsr
    mov eax, cr4
    btr eax, CR4_PAE_BIT
    mov cr4, eax
    mov ax, FW_SEL_DATA16
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    jmp FW_SEL_CODE16:(ap_pm16 - FW_RUNTIME_GPA)

bits 16
ap_pm16:
    mov eax, cr0
    btr eax, CR0_PE_BIT
    mov cr0, eax
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    jmp far [FW_AP_JUMP_TABLE_GPA]

align 8
ap_gdt_desc:
    dw gdt_end - gdt - 1
    dd gdt

bits 64

; -- the memory map ---------------------------------------------------------------------
build_memory_map:
    mov dword [rbx + BI_MMAP_ENTRY_SIZE], MMAP_ENTRY_SIZE
    mov dword [rbx + BI_MMAP_COUNT], 0
    mov rdi, PAGE_SIZE_4K               ; page 0 is not mapped: not in the map
    mov rsi, FW_FIRMWARE_RAM_END - PAGE_SIZE_4K
    mov edx, MEM_FIRMWARE
    call mmap_add
    mov rdi, FW_FIRMWARE_RAM_END
    mov rsi, FW_PAYLOAD_GPA - FW_FIRMWARE_RAM_END
    mov edx, MEM_USABLE
    call mmap_add
    mov rdi, FW_PAYLOAD_GPA
    mov rsi, [rbx + BI_PAYLOAD_SIZE]
    add rsi, PAGE_SIZE_4K - 1
    and rsi, ~(PAGE_SIZE_4K - 1)
    mov edx, MEM_PAYLOAD
    call mmap_add
    add rdi, rsi
    mov rsi, [rbx + BI_MEMORY_SIZE]
    sub rsi, rdi
    mov edx, MEM_USABLE
    ; fall through

; mmap_add: one entry (RDI base, RSI size, EDX type) unless it is empty.
mmap_add:
    test rsi, rsi
    jz .done
    mov eax, [rbx + BI_MMAP_COUNT]
    imul eax, eax, MMAP_ENTRY_SIZE
    lea rax, [rbx + rax + BI_MMAP]
    mov [rax + MMAP_BASE], rdi
    mov [rax + MMAP_SIZE], rsi
    mov [rax + MMAP_TYPE], edx
    inc dword [rbx + BI_MMAP_COUNT]
.done:
    ret

; -- the banner on the debug console --------------------------------------------------
log_banner:
    lea rsi, [rel msg_banner]
    call buf_puts
    mov rax, [rbx + BI_SEV_STATUS]
    lea rsi, [rel msg_no_sev]
    test eax, SEV_STATUS_SEV_ENABLED
    jz .mode
    lea rsi, [rel msg_sev]
    test eax, SEV_STATUS_SEV_ES_ENABLED
    jz .mode
    lea rsi, [rel msg_sev_es]
.mode:
    call buf_puts
    test dword [rbx + BI_SEV_STATUS], SEV_STATUS_SEV_ENABLED
    jz .payload
    lea rsi, [rel msg_cbit]
    call buf_puts
    mov eax, [rbx + BI_CBIT_POS]
    call buf_dec
    cmp qword [rbx + BI_GHCB_GPA], 0
    je .payload
    lea rsi, [rel msg_ghcb]
    call buf_puts
    mov rax, [rbx + BI_GHCB_GPA]
    call buf_hex
    lea rsi, [rel msg_protocol]
    call buf_puts
    mov eax, [rbx + BI_GHCB_VERSION]
    call buf_dec
    mov al, ')'
    call buf_putc
.payload:
    mov eax, [rbx + BI_VCPU_COUNT]
    cmp eax, 1
    jbe .payload_size
    lea rsi, [rel msg_sep]
    call buf_puts
    call buf_dec
    lea rsi, [rel msg_vcpus]
    call buf_puts
.payload_size:
    lea rsi, [rel msg_payload]
    call buf_puts
    mov rax, [rbx + BI_PAYLOAD_SIZE]
    call buf_dec
    lea rsi, [rel msg_payload_at]
    call buf_puts
    mov rax, FW_PAYLOAD_GPA
    call buf_hex
    mov al, `\n`
    call buf_putc
    ; fall through

; buf_to_debugcon: the line buffer to the debug console in one string OUT
; (under SEV-ES: one #VC, one VMGEXIT with the bytes in the shared buffer).
buf_to_debugcon:
    push rcx
    push rdx
    push rsi
    lea rsi, [rel line_buf]
    mov ecx, [rel line_len]
    mov edx, FW_DEBUGCON_PORT
    call buf_write_port
    mov dword [rel line_len], 0
    pop rsi
    pop rdx
    pop rcx
    ret

; buf_to_serial: the line buffer to the 16550: after each LSR.THRE up to
; UART_TX_FIFO_SIZE bytes (uart_init enabled the FIFOs), through
; buf_write_port (one string OUT, or single OUTs under plain SEV).
buf_to_serial:
    push rax
    push rcx
    push rdx
    push rsi
    push r8
    lea rsi, [rel line_buf]
    mov r8d, [rel line_len]
.chunk:
    test r8d, r8d
    jz .done
    mov edx, FW_CONSOLE_PORT + UART_LSR
.wait:
    in al, dx
    test al, UART_LSR_THRE
    jz .wait
    mov ecx, UART_TX_FIFO_SIZE
    cmp r8d, ecx
    cmovb ecx, r8d
    sub r8d, ecx
    mov edx, FW_CONSOLE_PORT + UART_THR
    call buf_write_port
    jmp .chunk
.done:
    mov dword [rel line_len], 0
    pop r8
    pop rsi
    pop rdx
    pop rcx
    pop rax
    ret

; buf_write_port: RCX bytes at RSI to port DX; advances RSI, zeroes RCX.
; Under plain SEV the host would read a string OUT's bytes from private
; memory, i.e. ciphertext: the OUTS is unrolled, as Linux does for SEV.
buf_write_port:
    push rax
    mov rax, FW_BOOT_INFO_GPA
    mov eax, [rax + BI_SEV_STATUS]
    and eax, SEV_STATUS_SEV_ENABLED | SEV_STATUS_SEV_ES_ENABLED
    cmp eax, SEV_STATUS_SEV_ENABLED
    je .unrolled
    rep outsb
    pop rax
    ret
.unrolled:
    jrcxz .done
    lodsb
    out dx, al
    dec rcx
    jmp .unrolled
.done:
    pop rax
    ret

; uart_init: COM1 at 115200 8N1 with FIFOs (PC16550D): divisor 1 through
; the divisor latch, then LCR, FCR, no interrupts.
uart_init:
    mov edx, FW_CONSOLE_PORT + UART_LCR
    mov al, UART_LCR_DLAB
    out dx, al
    mov edx, FW_CONSOLE_PORT + UART_DLL
    mov al, 1
    out dx, al
    mov edx, FW_CONSOLE_PORT + UART_DLM
    xor eax, eax
    out dx, al
    mov edx, FW_CONSOLE_PORT + UART_LCR
    mov al, UART_LCR_WLEN8
    out dx, al
    mov edx, FW_CONSOLE_PORT + UART_FCR
    mov al, UART_FCR_ENABLE | UART_FCR_CLEAR_RX | UART_FCR_CLEAR_TX
    out dx, al
    mov edx, FW_CONSOLE_PORT + UART_IER
    xor eax, eax
    out dx, al
    ret

; -- the line buffer --------------------------------------------------------------------
; buf_putc: AL. buf_puts: NUL-terminated RSI. buf_hex: RAX as 0x... (no
; leading zeros). buf_dec: RAX in decimal. All preserve every register.
buf_putc:
    push rcx
    push rdx
    mov ecx, [rel line_len]
    cmp ecx, LINE_MAX
    jae .full
    lea rdx, [rel line_buf]
    mov [rdx + rcx], al
    inc dword [rel line_len]
.full:
    pop rdx
    pop rcx
    ret

buf_puts:
    push rax
    push rsi
.next:
    lodsb
    test al, al
    jz .done
    call buf_putc
    jmp .next
.done:
    pop rsi
    pop rax
    ret

buf_hex:
    push rax
    push rcx
    push rdx
    mov rdx, rax
    mov al, '0'
    call buf_putc
    mov al, 'x'
    call buf_putc
    mov ecx, 60                         ; shift of the top nibble
.skip:
    test ecx, ecx
    jz .digit                           ; the last digit is always printed
    mov rax, rdx
    shr rax, cl
    test al, 0xF
    jnz .digit
    sub ecx, 4
    jmp .skip
.digit:
    mov rax, rdx
    shr rax, cl
    and eax, 0xF
    lea rax, [rax + '0']
    cmp al, '9'
    jbe .put
    add al, 'a' - '9' - 1
.put:
    call buf_putc
    sub ecx, 4
    jns .digit
    pop rdx
    pop rcx
    pop rax
    ret

buf_dec:
    push rax
    push rcx
    push rdx
    push rsi
    sub rsp, 24
    lea rsi, [rsp + 23]
    mov byte [rsi], 0
    mov ecx, 10
.divide:
    xor edx, edx
    div rcx
    add dl, '0'
    dec rsi
    mov [rsi], dl
    test rax, rax
    jnz .divide
    call buf_puts
    add rsp, 24
    pop rsi
    pop rdx
    pop rcx
    pop rax
    ret

; -- exceptions -------------------------------------------------------------------------
; One 16-byte stub per exception vector pushes its number; exc_common finds
; the CPU's frame (with or without an error code: VEC_ERROR_CODE_MASK),
; reports on the serial port and ends the guest.
%macro exc_stub 1
    push %1
    jmp exc_common
    align 16, 0xCC
%endmacro

align 16
exc_stubs:
    exc_stub 0
    exc_stub 1
    exc_stub 2
    exc_stub 3
    exc_stub 4
    exc_stub 5
    exc_stub 6
    exc_stub 7
    exc_stub 8
    exc_stub 9
    exc_stub 10
    exc_stub 11
    exc_stub 12
    exc_stub 13
    exc_stub 14
    exc_stub 15
    exc_stub 16
    exc_stub 17
    exc_stub 18
    exc_stub 19
    exc_stub 20
    exc_stub 21
    exc_stub 22
    exc_stub 23
    exc_stub 24
    exc_stub 25
    exc_stub 26
    exc_stub 27
    exc_stub 28
    exc_stub 29
    exc_stub 30
    exc_stub 31

exc_common:
    mov r12, [rsp]                      ; vector
    xor r13d, r13d                      ; error code (0 if the vector has none)
    lea r14, [rsp + 8]
    mov eax, VEC_ERROR_CODE_MASK
    bt eax, r12d
    jnc .frame
    mov r13, [r14]
    add r14, 8
.frame:
    mov r14, [r14]                      ; RIP of the faulting instruction
    mov r15, cr2
    lea rsi, [rel msg_exception]
    call buf_puts
    lea rsi, [rel vector_names]
    lea rsi, [rsi + r12 * 4]
    call buf_puts
    lea rsi, [rel msg_error]
    call buf_puts
    mov rax, r13
    call buf_hex
    lea rsi, [rel msg_rip]
    call buf_puts
    mov rax, r14
    call buf_hex
    lea rsi, [rel msg_cr2]
    call buf_puts
    mov rax, r15
    call buf_hex
    mov al, `\n`
    call buf_putc
    call safe_to_serial
    lea ebx, [r12 + FW_REASON_EXCEPTION]
    or ebx, FW_REASON_SET << 8
    ; fall through

; fw_fail: report and end the guest. EBX = reason set << 8 | reason code.
; Under SEV-ES: GHCB MSR protocol termination (ghcb.S vc_terminate_with),
; which needs no GHCB page. Without SEV-ES no such request exists: halt.
fw_fail:
    lea rsi, [rel msg_fatal]
    call buf_puts
    mov eax, ebx
    shr eax, 8
    call buf_hex
    lea rsi, [rel msg_code]
    call buf_puts
    movzx eax, bl
    call buf_hex
    mov al, `\n`
    call buf_putc
    call safe_to_serial
    mov rax, FW_BOOT_INFO_GPA
    test dword [rax + BI_SEV_STATUS], SEV_STATUS_SEV_ES_ENABLED
    jz fw_halt
    mov edi, ebx
    jmp vc_terminate_with

fw_halt:
    cli
    hlt
    jmp fw_halt

; safe_to_serial: print the line buffer unless that would need a GHCB that
; is not there yet (SEV-ES before registration: a #VC could not be served).
safe_to_serial:
    push rax
    mov rax, FW_BOOT_INFO_GPA
    test dword [rax + BI_SEV_STATUS], SEV_STATUS_SEV_ES_ENABLED
    jz .print
    push rax
    call vc_this_cpu
    cmp qword [rax + VC_PERCPU_GHCB_PA], 0
    pop rax
    jne .print
    mov dword [rel line_len], 0
    pop rax
    ret
.print:
    pop rax
    jmp buf_to_serial

; -- the #VC handler (guest_asm) ----------------------------------------------------------
%include "vc_handler64.S"
%include "smp.S"

; -- data -----------------------------------------------------------------------------------
align 8
payload_entry:  dq FW_PAYLOAD_GPA
msg_banner:     db "sevx86-fw: ", 0
msg_no_sev:     db "no SEV", 0
msg_sev:        db "SEV", 0
msg_sev_es:     db "SEV-ES", 0
msg_cbit:       db ", C-bit ", 0
msg_ghcb:       db ", GHCB at ", 0
msg_protocol:   db " (protocol ", 0
msg_payload:    db "; payload ", 0
msg_sep:        db "; ", 0
msg_vcpus:      db " vCPUs", 0
msg_payload_at: db " bytes at ", 0
msg_no_payload: db `sevx86-fw: no payload; halting\n`, 0
msg_exception:  db "sevx86-fw: unhandled exception #", 0
msg_error:      db " error code ", 0
msg_rip:        db " at RIP ", 0
msg_cr2:        db " CR2 ", 0
msg_fatal:      db "sevx86-fw: fatal: reason set ", 0
msg_code:       db " code ", 0
msg_ap:         db "sevx86-fw: AP ", 0
msg_ap_up:      db " up", 0
msg_ap_ghcb:    db ", GHCB at ", 0
msg_ap_timeout: db "sevx86-fw: ", 0
msg_of:         db " of ", 0
msg_ap_timeout_end: db ` APs reported in before the timeout\n`, 0

; Mnemonics of vectors 0..31 (APM vol 2, table 8-1), 4 bytes each.
vector_names:
    db "DE", 0, 0, "DB", 0, 0, "NMI", 0, "BP", 0, 0, "OF", 0, 0, "BR", 0, 0
    db "UD", 0, 0, "NM", 0, 0, "DF", 0, 0, "9", 0, 0, 0, "TS", 0, 0, "NP", 0, 0
    db "SS", 0, 0, "GP", 0, 0, "PF", 0, 0, "15", 0, 0, "MF", 0, 0, "AC", 0, 0
    db "MC", 0, 0, "XM", 0, 0, "20", 0, 0, "CP", 0, 0, "22", 0, 0, "23", 0, 0
    db "24", 0, 0, "25", 0, 0, "26", 0, 0, "27", 0, 0, "HV", 0, 0, "VC", 0, 0
    db "SX", 0, 0, "31", 0, 0

align 8
line_len:       dd 0
line_buf:       times LINE_MAX db 0

; GDT: the flash GDT's descriptors at the same selectors, plus the TSS.
align 16
gdt:
    dq 0
    dq FW_GDT_CODE64                    ; FW_SEL_CODE64
    dq FW_GDT_DATA                      ; FW_SEL_DATA
    dq FW_GDT_CODE32                    ; FW_SEL_CODE32
    ; FW_SEL_TSS + 16 s: the TSS of slot s, filled by percpu_init.
    times FW_MAX_VCPUS * 16 db 0
    dq FW_GDT_CODE16                    ; FW_SEL_CODE16 (leaving for real mode)
    dq FW_GDT_DATA16                    ; FW_SEL_DATA16
gdt_end:
gdt_desc:
    dw gdt_end - gdt - 1
    dq gdt

; A 64-bit interrupt gate (APM vol 2, 4.8) to %1 with IST %2.
%macro gate64 2
    dw (%1) & 0xFFFF
    dw FW_SEL_CODE64
    db %2, FW_GATE_ATTR
    dw ((%1) >> 16) & 0xFFFF
    dd (%1) >> 32
    dd 0
%endmacro

align 16
idt:
    gate64 exc_stubs + 0 * 16, 0
    gate64 exc_stubs + 1 * 16, 0
    gate64 exc_stubs + 2 * 16, 0
    gate64 exc_stubs + 3 * 16, 0
    gate64 exc_stubs + 4 * 16, 0
    gate64 exc_stubs + 5 * 16, 0
    gate64 exc_stubs + 6 * 16, 0
    gate64 exc_stubs + 7 * 16, 0
    gate64 exc_stubs + 8 * 16, FW_IST_DF
    gate64 exc_stubs + 9 * 16, 0
    gate64 exc_stubs + 10 * 16, 0
    gate64 exc_stubs + 11 * 16, 0
    gate64 exc_stubs + 12 * 16, 0
    gate64 exc_stubs + 13 * 16, 0
    gate64 exc_stubs + 14 * 16, 0
    gate64 exc_stubs + 15 * 16, 0
    gate64 exc_stubs + 16 * 16, 0
    gate64 exc_stubs + 17 * 16, 0
    gate64 exc_stubs + 18 * 16, 0
    gate64 exc_stubs + 19 * 16, 0
    gate64 exc_stubs + 20 * 16, 0
    gate64 exc_stubs + 21 * 16, 0
    gate64 exc_stubs + 22 * 16, 0
    gate64 exc_stubs + 23 * 16, 0
    gate64 exc_stubs + 24 * 16, 0
    gate64 exc_stubs + 25 * 16, 0
    gate64 exc_stubs + 26 * 16, 0
    gate64 exc_stubs + 27 * 16, 0
    gate64 exc_stubs + 28 * 16, 0
    gate64 vc_handler, 0
    gate64 exc_stubs + 30 * 16, 0
    gate64 exc_stubs + 31 * 16, 0
idt_end:
idt_desc:
    dw idt_end - idt - 1
    dq idt
