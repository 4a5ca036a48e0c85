; smp: the vCPUs the firmware brought up, and a wake through the AP jump table.
;
;   sevx86 run example:smp --vcpus 4
;   sevx86 trace example:smp --vcpus 2 --kinds ipi,ap-reset-hold,msr-protocol,cr-trap,console
;
; The firmware started every AP with INIT-SIPI-SIPI, gave each its own GHCB
; and parked it in AP reset hold (firmware/README.md, "APs"); the boot info
; says how many vCPUs came up. Under SEV-ES the host cannot set an AP's
; registers, so an OS starts a held AP the way the GHCB spec (56421, "AP
; Jump Table") and Linux (sev_es_setup_ap_jump_table) do: it writes a
; real-mode entry point (IP, CS) into the AP jump table page the firmware
; gave the host, then sends INIT-SIPI. The host ends the AP's hold; the
; firmware leaves long mode and far-jumps through the table.
;
; The entry here is a real-mode stub copied below 1 MiB: it marks its AP
; (ESI = the AP's firmware slot) and parks it again with the MSR-protocol
; AP reset hold (no #VC may happen in real mode: there is no handler).
; A wake can be lost if INIT-SIPI lands before an AP's hold, so the BSP
; sends it again until every AP answered. Exit status: 0 if every AP came
; through the table (or there was nothing to wake), 1 otherwise.

%include "include/fw_abi.inc"
%include "include/platform.inc"
%include "include/apic.inc"
%include "include/ghcb.inc"
%include "include/msr.inc"

%define STUB_GPA 0x80000                ; usable RAM below 1 MiB (boot-info memory map)
%define WAKE_TRIES 20
%define POLLS_PER_TRY 200

start:
    mov rbx, rdi                        ; the boot info
    mov r12d, [rbx + BI_VCPU_COUNT]
    mov eax, r12d
    call pl_dec
    lea rsi, [rel msg_vcpus]
    call pl_puts
    xor edi, edi
    cmp r12d, 1
    jbe pl_exit                         ; no AP to wake
    mov r13d, [rbx + BI_AP_JUMP_TABLE]
    test r13d, r13d
    jz .no_table                        ; no AP jump table without SEV-ES

    ; The stub below 1 MiB; its far pointer (IP 0, CS = STUB_GPA >> 4) in
    ; the table's first dword.
    lea rsi, [rel ap_stub]
    mov edi, STUB_GPA
    mov ecx, ap_stub_end - ap_stub
    rep movsb
    mov dword [r13], (STUB_GPA >> 4) << 16

    mov r14d, WAKE_TRIES
.try:
    ; INIT, then SIPI, to every AP (the vector does not matter under SEV-ES:
    ; the AP resumes in the firmware, which follows the table).
    mov rdi, XAPIC_BASE
    mov dword [rdi + APIC_REG_ICR_LOW], (APIC_SH_ALL_EXCLUDING_SELF << APIC_ICR_SHORTHAND_SHIFT) | (APIC_DM_INIT << APIC_ICR_MODE_SHIFT) | APIC_ICR_LEVEL_ASSERT
    mov dword [rdi + APIC_REG_ICR_LOW], (APIC_SH_ALL_EXCLUDING_SELF << APIC_ICR_SHORTHAND_SHIFT) | (APIC_DM_STARTUP << APIC_ICR_MODE_SHIFT) | APIC_ICR_LEVEL_ASSERT | (STUB_GPA >> 12)
    mov r15d, POLLS_PER_TRY
.poll:
    call woken_count
    inc eax                             ; + the BSP
    cmp eax, r12d
    jae .all
    rdtsc                               ; an exit: the APs run meanwhile
    dec r15d
    jnz .poll
    dec r14d
    jnz .try
    call woken_count
    call pl_dec
    lea rsi, [rel msg_some]
    call pl_puts
    mov edi, 1
    jmp pl_exit

.all:
    lea eax, [r12 - 1]
    call pl_dec
    lea rsi, [rel msg_woken]
    call pl_puts
    xor edi, edi
    jmp pl_exit

.no_table:
    lea rsi, [rel msg_no_table]
    call pl_puts
    xor edi, edi
    jmp pl_exit

; woken_count: EAX = APs whose flag the stub set (slots 1..FW_MAX_VCPUS-1).
woken_count:
    push rcx
    push rsi
    mov esi, STUB_GPA + (stub_woken - ap_stub)
    xor eax, eax
    mov ecx, 1
.next:
    movzx edx, byte [rsi + rcx]
    add eax, edx
    inc ecx
    cmp ecx, FW_MAX_VCPUS
    jb .next
    pop rsi
    pop rcx
    ret

; -- the real-mode entry (copied to STUB_GPA; CS = STUB_GPA >> 4, IP = 0) --------
; From the firmware: interrupts off, DS = ES = SS = 0, ESI = the AP's slot.
; Paging is off, so every access is private: the flag is the guest's own.
bits 16
ap_stub:
    mov byte [cs:si + (stub_woken - ap_stub)], 1
.hold:
    ; AP reset hold through the GHCB MSR (request 0x006; the answer 0x007
    ; carries non-zero data once the host was told to wake us).
    mov eax, GHCB_MSR_AP_RESET_HOLD_REQ
    xor edx, edx
    mov ecx, MSR_GHCB
    wrmsr
    vmgexit
    rdmsr
    mov ebx, eax
    and ebx, GHCB_MSR_INFO_MASK
    cmp ebx, GHCB_MSR_AP_RESET_HOLD_RESP
    jne .hold
    shr eax, GHCB_MSR_DATA_SHIFT
    or eax, edx
    jz .hold                            ; "not woken": ask again
    jmp ap_stub                         ; woken again: the same entry
align 4
stub_woken:
    times FW_MAX_VCPUS db 0
ap_stub_end:
bits 64

msg_vcpus:    db ` vCPU(s) up\n`, 0
msg_woken:    db ` AP(s) woken through the AP jump table\n`, 0
msg_some:     db ` AP(s) woken through the AP jump table: not all of them\n`, 0
msg_no_table: db `no AP jump table (it exists under SEV-ES only)\n`, 0

%include "payload.S"
