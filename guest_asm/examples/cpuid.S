; cpuid: a CPUID dump of a few leaves, with leaf 0x8000001F decoded.
;
;   sevx86 run example:cpuid
;   sevx86 trace example:cpuid --kinds vc,vmgexit,ghcb-answer
;
; Under SEV-ES every CPUID raises #VC: the firmware's #VC handler puts RAX,
; RCX and XCR0 in the GHCB, VMGEXITs, and copies back what the (untrusted)
; hypervisor answered -- the seed talk's slide 11. Without SEV-ES the
; hypervisor intercepts CPUID directly. Leaf 0x8000001F is the memory
; encryption leaf (AMD APM vol 2, 15.34.1): EAX says SEV/SEV-ES, EBX[5:0] is
; the C-bit position, EBX[11:6] the physical address bits lost to it.

%include "include/fw_abi.inc"
%include "include/platform.inc"

%include "include/cpuid.inc"

%define END_OF_LIST 0xFFFFFFFF              ; ends the list of leaves below

start:
    lea r12, [rel leaves]
.leaf:
    mov eax, [r12]
    cmp eax, END_OF_LIST
    je .decode
    lea rsi, [rel msg_cpuid]
    call pl_puts
    call pl_hex32
    xor ecx, ecx                        ; sub-leaf 0
    cpuid
    lea rsi, [rel msg_eax]
    call pl_puts
    call pl_hex32
    lea rsi, [rel msg_ebx]
    call pl_puts
    mov eax, ebx
    call pl_hex32
    lea rsi, [rel msg_ecx]
    call pl_puts
    mov eax, ecx
    call pl_hex32
    lea rsi, [rel msg_edx]
    call pl_puts
    mov eax, edx
    call pl_hex32
    mov al, `\n`
    call pl_putc
    add r12, 4
    jmp .leaf

.decode:
    ; The vendor string: EBX, EDX, ECX of leaf 0.
    xor eax, eax
    xor ecx, ecx
    cpuid
    mov [rel vendor], ebx
    mov [rel vendor + 4], edx
    mov [rel vendor + 8], ecx
    lea rsi, [rel msg_vendor]
    call pl_puts
    lea rsi, [rel vendor]
    call pl_puts
    mov al, `\n`
    call pl_putc

    mov eax, CPUID_LEAF_EXT_MAX
    xor ecx, ecx
    cpuid
    cmp eax, CPUID_LEAF_MEM_ENCRYPT
    jb .no_leaf
    mov eax, CPUID_LEAF_MEM_ENCRYPT
    xor ecx, ecx
    cpuid
    mov r13d, eax
    mov r14d, ebx
    lea rsi, [rel msg_sev]
    call pl_puts
    bt r13d, CPUID_8000001F_EAX_SEV_BIT
    call yes_no
    lea rsi, [rel msg_sev_es]
    call pl_puts
    bt r13d, CPUID_8000001F_EAX_SEV_ES_BIT
    call yes_no
    lea rsi, [rel msg_cbit]
    call pl_puts
    mov eax, r14d
    and eax, CPUID_8000001F_EBX_CBIT_MASK
    call pl_dec
    lea rsi, [rel msg_reduction]
    call pl_puts
    mov eax, r14d
    shr eax, CPUID_8000001F_EBX_PHYS_REDUCTION_SHIFT
    and eax, CPUID_8000001F_EBX_PHYS_REDUCTION_MASK
    call pl_dec
    mov al, `\n`
    call pl_putc
    jmp .done
.no_leaf:
    lea rsi, [rel msg_no_leaf]
    call pl_puts
.done:
    xor edi, edi
    jmp pl_exit

; yes_no: "yes" if CF is set, else "no".
yes_no:
    lea rsi, [rel msg_yes]
    jc .say
    lea rsi, [rel msg_no]
.say:
    jmp pl_puts

align 4
leaves:
    dd CPUID_LEAF_VENDOR, CPUID_LEAF_FEATURES, CPUID_LEAF_EXT_MAX
    dd CPUID_LEAF_ADDR_SIZES, CPUID_LEAF_MEM_ENCRYPT, END_OF_LIST

vendor:         times 13 db 0
msg_cpuid:      db "CPUID ", 0
msg_eax:        db ": eax=", 0
msg_ebx:        db " ebx=", 0
msg_ecx:        db " ecx=", 0
msg_edx:        db " edx=", 0
msg_vendor:     db "vendor: ", 0
msg_sev:        db "0x8000001f: SEV ", 0
msg_sev_es:     db ", SEV-ES ", 0
msg_cbit:       db ", C-bit position ", 0
msg_reduction:  db ", physical address bits lost ", 0
msg_no_leaf:    db `0x8000001f: not reported (no memory encryption)\n`, 0
msg_yes:        db "yes", 0
msg_no:         db "no", 0

%include "payload.S"
