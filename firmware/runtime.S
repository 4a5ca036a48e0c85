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
;   4. The payload is entered (firmware/README.md, "Payload ABI"). If it
;      returns, RAX is written to the debug-exit port (the run's status).

%include "include/x86.inc"
%include "include/msr.inc"
%include "include/ghcb.inc"
%include "include/fw_abi.inc"
%include "include/platform.inc"

%define LINE_MAX 200                    ; bytes in the line buffer

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
    ; descriptors at the same selectors, so CS and DS need no reload.
    lgdt [rel gdt_desc]
    mov ax, FW_SEL_TSS
    ltr ax
    lidt [rel idt_desc]

    ; 2. The GHCB (SEV-ES only).
    test dword [rbx + BI_SEV_STATUS], SEV_STATUS_SEV_ES_ENABLED
    jz .boot_info
    call ghcb_init

.boot_info:
    call uart_init

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
ghcb_init:
    ; Zero the page through its C=0 mapping: what the host will see.
    mov rdi, FW_GHCB_GPA
    mov ecx, GHCB_SIZE / 8
    xor eax, eax
    rep stosq
    ; GHCB GPA registration: GHCBData = GFN, GHCBInfo 0x012.
    mov rax, FW_GHCB_GPA | GHCB_MSR_REG_GPA_REQ
    call ghcb_msr_call
    mov rdx, rax
    and edx, GHCB_MSR_INFO_MASK
    mov ebx, (FW_REASON_SET << 8) | FW_REASON_GHCB_REGISTER
    cmp edx, GHCB_MSR_REG_GPA_RESP
    jne fw_fail
    shr rax, GHCB_MSR_DATA_SHIFT
    cmp rax, FW_GHCB_GPA >> GHCB_MSR_DATA_SHIFT
    jne fw_fail
    mov rbx, FW_BOOT_INFO_GPA
    mov rax, FW_GHCB_GPA
    mov [rbx + BI_GHCB_GPA], rax
    mov [rbx + BI_GHCB_VA], rax         ; identity map
    ; The #VC handler's data block (guest_asm/ghcb.S).
    mov [rel vc_ghcb_va], rax
    mov [rel vc_ghcb_pa], rax
    mov rax, [rbx + BI_CBIT_MASK]
    mov [rel vc_cbit_mask], rax
    mov eax, [rbx + BI_GHCB_VERSION]
    mov [rel vc_ghcb_version], ax
    ret

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
    cmp qword [rel vc_ghcb_pa], 0
    jne .print
    mov dword [rel line_len], 0
    pop rax
    ret
.print:
    pop rax
    jmp buf_to_serial

; -- the #VC handler (guest_asm) ----------------------------------------------------------
%include "vc_handler64.S"

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
msg_payload_at: db " bytes at ", 0
msg_no_payload: db `sevx86-fw: no payload; halting\n`, 0
msg_exception:  db "sevx86-fw: unhandled exception #", 0
msg_error:      db " error code ", 0
msg_rip:        db " at RIP ", 0
msg_cr2:        db " CR2 ", 0
msg_fatal:      db "sevx86-fw: fatal: reason set ", 0
msg_code:       db " code ", 0

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
    ; FW_SEL_TSS: a 16-byte system descriptor (APM vol 2, 4.8): limit,
    ; base 23:0, type, limit 19:16 and flags, base 31:24, base 63:32.
    dw TSS64_SIZE - 1
    dw tss & 0xFFFF
    db (tss >> 16) & 0xFF
    db FW_TSS_DESC_ATTR
    db 0
    db (tss >> 24) & 0xFF
    dd tss >> 32
    dd 0
gdt_end:
gdt_desc:
    dw gdt_end - gdt - 1
    dq gdt

; The 64-bit TSS: only IST1, the #DF stack (a fault on a broken stack must
; not become a triple fault).
align 16
tss:
    times TSS64_IST1 + (FW_IST_DF - 1) * 8 db 0
    dq FW_IST_STACK_TOP
    times TSS64_SIZE - TSS64_IST1 - FW_IST_DF * 8 db 0

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
