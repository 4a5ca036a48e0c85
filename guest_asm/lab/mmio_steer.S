; mmio_steer: a guest that sizes a copy from a device register (sevx86 lab
; interface).
;
; It writes a record count of 4 into the MMIO test device's scratch register,
; reads it back (a device it trusts to echo), and copies that many qwords
; into an 8-entry buffer followed by a canary. The host answers MMIO reads
; itself. Nothing in the #VC handler or the hardware can tell a true device
; answer from a false one: only the guest's own check can, and only for
; values it knows to be impossible. With BOUNDS_CHECK the guest refuses a
; count above 8 (exit status 0x33); without it a large count runs the copy
; past the buffer. The exit status is the count it used; the lab reads the
; canary with the experimenter's view.

%include "include/platform.inc"

%define RECORDS 4
%define BUFFER_ENTRIES 8
%define STATUS_REFUSED 0x33

start:
    mov rdi, MMIO_TEST_BASE
    mov qword [rdi + MMIO_TEST_REG_SCRATCH], RECORDS
    mov rcx, [rdi + MMIO_TEST_REG_SCRATCH]      ; the count, as the "device" says
%ifdef BOUNDS_CHECK
    cmp rcx, BUFFER_ENTRIES
    ja .refuse
%endif
    mov r12, rcx
    and rcx, 0xFF                               ; a bounded overrun, not a crash
    lea rsi, [rel records]
    lea rdi, [rel buffer]
    rep movsq
    mov rax, r12
    jmp .report
.refuse:
    mov eax, STATUS_REFUSED
.report:
    mov dx, DEBUG_EXIT_PORT
    out dx, al
    hlt

align 16
records: times 256 dq 0x5245434F52440000   ; "RECORD" marks, as many as any count copies
buffer: times BUFFER_ENTRIES dq 0
canary: dq 0xC0FFEE0DDBA11
        times 256 dq 0

%include "vc_handler64.S"
