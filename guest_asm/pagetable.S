; pagetable.S -- walk and extend 4-level long-mode page tables, C-bit aware.
;
; The #VC handler needs the guest-physical address and the C-bit of an MMIO
; access (Linux vc_slow_virt_to_phys(), OVMF ValidateMmioMemory()); a program
; needs to map a device window with C=0 (what ioremap does in an SEV guest).
; Entry layout: AMD APM vol 2, 5.3 "Long-Mode Page Translation"; the C-bit
; position comes from CPUID 0x8000001F EBX[5:0] (15.34.1) and is kept in
; vc_cbit_mask. Tables are read at VA = GPA + vc_phys_offset (0: identity).
; Not supported: 5-level paging (CR4.LA57).

%include "ghcb.S"

%ifndef SEVX86_PAGETABLE_S
%define SEVX86_PAGETABLE_S

bits 64

; -- pt_walk ----------------------------------------------------------------------
; Translate a linear address through the tables at CR3.
; In:  RDI = linear address.
; Out: CF=0: RAX = guest-physical address (C-bit stripped), RDX = the leaf
;      entry (test its C-bit with vc_cbit_mask), RCX = VA of that entry.
;      CF=1: some level is not present (RCX = VA of the entry that is not).
; Preserves all other registers.
pt_walk:
    push r11
    call pt_walk_access
    pop r11
    ret

; pt_walk_access: pt_walk, plus R11 = PTE_RW | PTE_US as every level grants
; them (the effective permission is the AND over the walk, APM vol 2, 5.6).
pt_walk_access:
    push rsi
    push r8
    push r9
    push r10
    mov r11d, PTE_RW | PTE_US
    mov r9, PTE_ADDR_MASK
    mov rax, [rel vc_cbit_mask]
    not rax
    and r9, rax                     ; frame bits: 51:12 without the C-bit
    mov rax, cr3
    and rax, r9                     ; PML4 base (guest-physical)
    mov r8d, PT_LEVEL0_SHIFT        ; 39, 30, 21, 12
.level:
    mov rsi, rdi
    mov ecx, r8d
    shr rsi, cl
    and esi, PTE_INDEX_MASK
    lea r10, [rax + rsi * 8]
    add r10, [rel vc_phys_offset]   ; where this entry is in our address space
    mov rdx, [r10]
    bt rdx, PTE_P_BIT
    jnc .absent
    and r11, rdx
    cmp r8d, PT_LEVEL3_SHIFT
    je .leaf                        ; a PTE is always a leaf
    cmp r8d, PT_LEVEL0_SHIFT
    je .next                        ; PS in a PML4E is reserved, not a leaf
    bt rdx, PTE_PS_BIT
    jc .leaf                        ; 1 GiB (PDPE) or 2 MiB (PDE) page
.next:
    mov rax, rdx
    and rax, r9
    sub r8d, 9
    jmp .level
.leaf:
    ; GPA = frame (aligned to the page size 1 << shift) | offset in the page.
    mov rax, rdx
    and rax, r9
    mov rsi, -1
    mov ecx, r8d
    shl rsi, cl                     ; ~(page size - 1)
    and rax, rsi
    not rsi
    and rsi, rdi
    or rax, rsi
    mov rcx, r10
    pop r10
    pop r9
    pop r8
    pop rsi
    clc
    ret
.absent:
    mov rcx, r10
    pop r10
    pop r9
    pop r8
    pop rsi
    stc
    ret

; -- pt_map_2m --------------------------------------------------------------------
; Map one 2 MiB page: the PDE for RDI becomes RSI | RDX | P | RW | PS, and
; the old translation is flushed. The PML4E and PDPE must exist already
; (true for the harness' first GiB). Use RDX = 0 for a shared (C=0) device
; window, RDX = [vc_cbit_mask] for a private one; add PTE_PCD | PTE_PWT for
; uncached MMIO.
; In:  RDI = 2 MiB-aligned linear address, RSI = 2 MiB-aligned GPA,
;      RDX = extra entry bits. Out: CF=1 if an upper level is missing.
; Preserves all registers.
pt_map_2m:
    push rax
    push rcx
    push rdx
    push r8
    push r9
    mov r8, rdx
    mov r9, PTE_ADDR_MASK
    mov rax, [rel vc_cbit_mask]
    not rax
    and r9, rax
    mov rax, cr3
    and rax, r9
    ; PML4E
    mov rcx, rdi
    shr rcx, PT_LEVEL0_SHIFT
    and ecx, PTE_INDEX_MASK
    lea rcx, [rax + rcx * 8]
    add rcx, [rel vc_phys_offset]
    mov rax, [rcx]
    bt rax, PTE_P_BIT
    jnc .missing
    and rax, r9
    ; PDPE: present and not itself a 1 GiB leaf
    mov rcx, rdi
    shr rcx, PT_LEVEL1_SHIFT
    and ecx, PTE_INDEX_MASK
    lea rcx, [rax + rcx * 8]
    add rcx, [rel vc_phys_offset]
    mov rax, [rcx]
    bt rax, PTE_P_BIT
    jnc .missing
    bt rax, PTE_PS_BIT
    jc .missing
    and rax, r9
    ; PDE
    mov rcx, rdi
    shr rcx, PT_LEVEL2_SHIFT
    and ecx, PTE_INDEX_MASK
    lea rcx, [rax + rcx * 8]
    add rcx, [rel vc_phys_offset]
    mov rax, rsi
    or rax, r8
    or rax, PTE_P | PTE_RW | PTE_PS
    mov [rcx], rax
    invlpg [rdi]
    clc
    jmp .out
.missing:
    stc
.out:
    pop r9
    pop r8
    pop rdx
    pop rcx
    pop rax
    ret

; -- pt_map_1g --------------------------------------------------------------------
; Map one 1 GiB page: the PDPE for RDI becomes RSI | RDX | P | RW | PS (APM
; vol 2, 5.3.5: 1-Gbyte pages). Only the PML4E must exist, so this reaches
; device windows far above RAM (e.g. 0xC000_0000-0xFFFF_FFFF) without
; allocating a table; it replaces whatever that PDPE held.
; In:  RDI = 1 GiB-aligned linear address, RSI = 1 GiB-aligned GPA,
;      RDX = extra entry bits (0: shared; [vc_cbit_mask]: private).
; Out: CF=1 if the PML4E is missing. Preserves all registers.
pt_map_1g:
    push rax
    push rcx
    push r9
    mov r9, PTE_ADDR_MASK
    mov rax, [rel vc_cbit_mask]
    not rax
    and r9, rax
    mov rax, cr3
    and rax, r9
    mov rcx, rdi
    shr rcx, PT_LEVEL0_SHIFT
    and ecx, PTE_INDEX_MASK
    lea rcx, [rax + rcx * 8]
    add rcx, [rel vc_phys_offset]
    mov rax, [rcx]
    bt rax, PTE_P_BIT
    jnc .missing
    and rax, r9
    mov rcx, rdi
    shr rcx, PT_LEVEL1_SHIFT
    and ecx, PTE_INDEX_MASK
    lea rcx, [rax + rcx * 8]
    add rcx, [rel vc_phys_offset]
    mov rax, rsi
    or rax, rdx
    or rax, PTE_P | PTE_RW | PTE_PS
    mov [rcx], rax
    mov rax, cr3                    ; a whole GiB changed: flush everything
    mov cr3, rax
    clc
    jmp .out
.missing:
    stc
.out:
    pop r9
    pop rcx
    pop rax
    ret

%endif
