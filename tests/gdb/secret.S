; A payload for the gdb tests: one CPUID (a #VC under SEV-ES) and a private secret.
start:
    mov eax, 0x8000001f
    xor ecx, ecx
the_cpuid:
    cpuid
after_cpuid:
    mov [rel scratch], rax          ; a store a watchpoint can catch
after_store:
    mov edx, 0xF4                   ; the debug-exit port: exit status 0
    xor eax, eax
the_out:
    out dx, eax
    hlt
align 16
secret:
    db "top secret 1234!"
scratch:
    dq 0
