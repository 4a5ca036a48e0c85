; relocation: a guest variable whose ciphertext the host moves and replays
; (sevx86 lab relocation).
;
; `counter` is written twice (1, then 2) with an intercepted CPUID after
; each write; the host may copy or put back DRAM contents at those exits.
; At the end the program reads `counter` and `copy` (a variable it set to 0
; and never wrote again) into `results`, where the lab reads them with the
; experimenter's view. Each variable is one 16-byte block of its own, the
; unit of the memory encryption (APM vol 2, 7.10.3 and 15.34.1).

%include "include/platform.inc"

start:
    mov qword [rel copy], 0
    mov qword [rel counter], 1
    xor eax, eax
    xor ecx, ecx
    cpuid                           ; exit 1: the host keeps what it wants of DRAM
    mov qword [rel counter], 2
    xor eax, eax
    xor ecx, ecx
    cpuid                           ; exit 2: the host may put the old block back
    mov rax, [rel counter]
    mov [rel results], rax          ; what the guest now reads as its counter
    mov rax, [rel copy]
    mov [rel results + 8], rax      ; what it reads where it left a 0
    mov dx, DEBUG_EXIT_PORT
    xor eax, eax
    out dx, al
    hlt

align 16
counter: dq 0, 0
copy: dq 0, 0
results: dq 0, 0

%include "vc_handler64.S"
