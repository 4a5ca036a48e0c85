; private_mmio: a store of a secret to a private page the host has turned
; into "MMIO" (sevx86 lab interface).
;
; The host takes the page of `private_var` back for emulation (KVM: drop the
; memory slot, every access becomes a nested page fault). The guest's page
; tables still map it with C=1, so it is private memory to the guest. Without
; SEV-ES the NPF exit hands the host the instruction and the registers: it
; emulates the store and reads the secret. Under SEV-ES the access is a #VC;
; the handler walks the page tables, sees C=1 and refuses to copy the data
; into the GHCB (guest_asm/README.md: MMIO_PRIVATE, reason set 2 code 5).

%include "include/platform.inc"

start:
    mov rax, SECRET
    mov [rel private_var], rax      ; private memory as far as the guest knows
    mov dx, DEBUG_EXIT_PORT
    xor eax, eax
    out dx, al
    hlt

%include "vc_handler64.S"

align 4096
private_var: dq 0
align 4096
