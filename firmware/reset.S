; reset.S -- sevx86 firmware, the flash part: from the reset vector to long mode.
;
; The top 64 KiB of the flash image (QEMU maps pflash0 so that it ends at
; 4 GiB). A vCPU starts in QEMU's reset state: real mode, CS selector F000
; with base FFFF0000, IP FFF0 (AMD APM vol 2, 14.1) -- the `reset_vector`
; below. Under SEV-ES that state is the launch VMSA the Secure Processor
; measured together with this image.
;
; Steps (firmware/README.md has the whole boot flow):
;   1. 16-bit: load the GDT, set CR0.PE, far jump to 32-bit code.
;   2. 32-bit, paging off -- every access is private (APM vol 2, 15.34.5),
;      so no page can be shared yet and under SEV-ES the only channel to the
;      hypervisor is the GHCB MSR protocol (GHCB spec 56421):
;      - an IDT whose #VC gate is guest_asm's vc_early32 (CPUID through the
;        MSR protocol, as OVMF's ResetVector does);
;      - SEV detection: CPUID 0x80000000 / 0x8000001F / 0x80000008 (each a
;        #VC under SEV-ES) and SEV_STATUS (MSR C001_0131, read by the CPU
;        itself, never by the hypervisor); checks that what the untrusted
;        hypervisor answered is consistent (see `sev_detect`);
;      - under SEV-ES the SEV-information request (MSR protocol 0x002): the
;        GHCB protocol version, and a C-bit that must equal CPUID's;
;      - copy the 64-bit runtime and the payload from the flash into RAM;
;      - 4-level page tables: all RAM with the C-bit, the GHCB page without,
;        the device window (3..4 GiB) shared, the flash private read-only;
;      - verify the C-bit with paging on, as Linux's sev_verify_cbit does
;        (see `cbit_verify`): CPUID and the SEV information may agree on a lie;
;      - CR4.PAE, CR3, EFER.LME, CR0.PG: long mode (APM vol 2, 14.6.1).
;   3. Far jump to the runtime (runtime.S) in RAM, 64-bit.
;
; A check that fails ends the guest: under SEV-ES with a GHCB MSR protocol
; termination request (0x100) of reason set FW_REASON_SET; without SEV-ES
; (no such request exists) by printing the reason on the serial port and
; halting with interrupts off.
;
; Built by sevx86.boot.firmware, which assembles runtime.S first (runtime.bin
; on the include path).

%include "include/x86.inc"
%include "include/msr.inc"
%include "include/cpuid.inc"
%include "include/ghcb.inc"
%include "include/fw_abi.inc"
%include "include/platform.inc"

bits 16
org FW_FIRMWARE_BASE

; The 64-bit runtime, linked at FW_RUNTIME_GPA, copied there in step 2.
runtime_image:
    incbin "runtime.bin"
runtime_image_end:

; ---------------------------------------------------------------------------
; 16-bit: real mode, CS base FFFF0000 (so CS-relative offsets are addresses
; minus FW_FIRMWARE_BASE).
start16:
    cli
    cld
    ; o32: load all 32 bits of the GDT base (this GDT sits near 4 GiB).
    o32 lgdt [cs:gdt_desc - FW_FIRMWARE_BASE]
    mov eax, cr0
    or eax, CR0_PE                      ; protected mode (APM vol 2, 14.4)
    mov cr0, eax                        ; SEV-ES: a CR0 write trap (AE)
    jmp dword FW_SEL_CODE32:start32

; ---------------------------------------------------------------------------
bits 32
start32:
    mov ax, FW_SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov esp, FW_STACK_TOP
    lidt [idt32_desc]

    ; The boot info collects what this stage learns; the runtime completes it.
    mov edi, FW_BOOT_INFO_GPA
    mov ecx, BOOT_INFO_SIZE / 4
    xor eax, eax
    rep stosd

    call sev_detect
    call load_images
    call build_page_tables
    call cbit_verify

    ; Long mode (APM vol 2, 14.6.1): PAE, CR3, EFER.LME, then CR0.PG.
    ; OSFXSR/OSXMMEXCPT let the payload use SSE (compiled C does).
    mov eax, cr4
    or eax, CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
    mov cr4, eax                        ; SEV-ES: CR4 write trap
    mov eax, FW_PML4_GPA
    mov cr3, eax
    mov ecx, MSR_EFER
    rdmsr
    or eax, EFER_LME
    wrmsr                               ; SEV-ES: EFER write trap
    mov eax, cr0
    and eax, ~(CR0_EM | CR0_TS)
    ; WP: read-only pages (the flash) stay read-only for CPL 0 too.
    or eax, CR0_PG | CR0_WP | CR0_NE | CR0_MP
    mov cr0, eax                        ; paging on: the C-bit takes effect
    jmp FW_SEL_CODE64:FW_RUNTIME_GPA

; ---------------------------------------------------------------------------
; sev_detect: is this an SEV guest, with SEV-ES, and where is the C-bit?
;
; CPUID answers come from the hypervisor (under SEV-ES through the #VC
; handler and the GHCB MSR protocol); SEV_STATUS comes from the CPU, which
; the hypervisor cannot change (APM vol 2, 15.34). A hypervisor that
; hides SEV or moves the C-bit could make the guest write its memory in
; the clear, so every answer is checked against the others:
;   - SEV_STATUS says SEV: CPUID 0x80000000 must reach 0x8000001F and
;     0x8000001F EAX must say SEV (and SEV-ES if SEV_STATUS says SEV-ES);
;   - the C-bit (0x8000001F EBX[5:0]) must be FW_CBIT_POS_MIN..MAX and at or
;     above the usable physical address width (0x80000008 EAX[7:0] minus the
;     reduction in 0x8000001F EBX[11:6]): else it would be an address bit;
;   - SEV-ES: the SEV-information answer (MSR protocol 0x001) must carry the
;     same C-bit, and a protocol version range meeting GHCB_PROTOCOL_MIN..MAX.
; Fills BI_SEV_STATUS, BI_CBIT_POS, BI_CBIT_MASK, BI_PHYS_BITS, BI_GHCB_VERSION.
sev_detect:
    mov eax, CPUID_LEAF_EXT_MAX         ; under SEV-ES the first #VC
    cpuid
    mov ebp, eax                        ; EBP = highest extended leaf
    xor esi, esi                        ; ESI = 0x8000001F EAX (0: leaf missing)
    xor edi, edi                        ; EDI = 0x8000001F EBX
    cmp ebp, CPUID_LEAF_MEM_ENCRYPT
    jb .phys_bits
    mov eax, CPUID_LEAF_MEM_ENCRYPT
    cpuid
    mov esi, eax
    mov edi, ebx
.phys_bits:
    ; 0x80000008 ECX[7:0] (NC) is the number of cores - 1 (APM vol 3,
    ; CPUID Fn8000_0008): how many vCPUs the runtime waits for. Without
    ; the leaf: one.
    mov dword [FW_SMP_GPA + SMP_EXPECTED], 1
    xor eax, eax
    cmp ebp, CPUID_LEAF_ADDR_SIZES
    jb .status
    mov eax, CPUID_LEAF_ADDR_SIZES
    cpuid
    and eax, 0xFF                       ; physical address bits
    and ecx, CPUID_80000008_ECX_NC_MASK
    inc ecx
    mov [FW_SMP_GPA + SMP_EXPECTED], ecx
.status:
    mov [FW_BOOT_INFO_GPA + BI_PHYS_BITS], eax
    ; SEV_STATUS is read even if CPUID denies SEV: that denial is what a
    ; lying hypervisor would say. Without SEV the MSR may not exist: the
    ; early #GP handler then skips this RDMSR with EDX:EAX = 0.
    mov ecx, MSR_SEV_STATUS
sev_status_probe:
    rdmsr
    mov [FW_BOOT_INFO_GPA + BI_SEV_STATUS], eax
    mov [FW_BOOT_INFO_GPA + BI_SEV_STATUS + 4], edx
    test eax, SEV_STATUS_SEV_ENABLED
    jnz .sev
    mov ebx, (FW_REASON_SET << 8) | FW_REASON_SEV_STATUS
    test eax, SEV_STATUS_SEV_ES_ENABLED | SEV_STATUS_SNP_ENABLED
    jnz fw_fail32
    ret                                 ; no SEV: no C-bit, no GHCB

.sev:
    ; This firmware does not validate pages: an SNP guest must not go on.
    mov ebx, (GHCB_TERM_SET_GENERAL << 8) | GHCB_TERM_SNP_UNSUPPORTED
    test eax, SEV_STATUS_SNP_ENABLED
    jnz fw_fail32
    mov ebx, (FW_REASON_SET << 8) | FW_REASON_CPUID_DENIES_SEV
    test esi, CPUID_8000001F_EAX_SEV    ; (0 if the leaf is missing)
    jz fw_fail32
    test eax, SEV_STATUS_SEV_ES_ENABLED
    jz .cbit
    mov ebx, (FW_REASON_SET << 8) | FW_REASON_CPUID_DENIES_SEV_ES
    test esi, CPUID_8000001F_EAX_SEV_ES
    jz fw_fail32

.cbit:
    mov eax, edi
    and eax, CPUID_8000001F_EBX_CBIT_MASK
    mov ebx, (FW_REASON_SET << 8) | FW_REASON_CBIT_RANGE
    cmp eax, FW_CBIT_POS_MIN
    jb fw_fail32
    cmp eax, FW_CBIT_POS_MAX
    ja fw_fail32
    mov [FW_BOOT_INFO_GPA + BI_CBIT_POS], eax
    ; Usable physical address bits = CPUID 0x80000008 minus the reduction
    ; (APM vol 2, 7.10.1): the C-bit must lie above them.
    mov ecx, edi
    shr ecx, CPUID_8000001F_EBX_PHYS_REDUCTION_SHIFT
    and ecx, CPUID_8000001F_EBX_PHYS_REDUCTION_MASK
    mov edx, [FW_BOOT_INFO_GPA + BI_PHYS_BITS]
    sub edx, ecx
    jae .width
    xor edx, edx
.width:
    mov [FW_BOOT_INFO_GPA + BI_PHYS_BITS], edx
    mov ebx, (FW_REASON_SET << 8) | FW_REASON_CBIT_ADDRESS_BIT
    cmp eax, edx
    jb fw_fail32
    ; C-bit mask: the position is >= 32, so only the high dword has it.
    mov ecx, eax
    sub ecx, 32
    mov edx, 1
    shl edx, cl
    mov [FW_BOOT_INFO_GPA + BI_CBIT_MASK + 4], edx

    test dword [FW_BOOT_INFO_GPA + BI_SEV_STATUS], SEV_STATUS_SEV_ES_ENABLED
    jz .done
    ; SEV-ES: SEV information (GHCB spec, "SEV Information"): request 0x002,
    ; answer 0x001 with max protocol 63:48, min 47:32, C-bit 31:24.
    mov eax, GHCB_MSR_SEV_INFO_REQ
    xor edx, edx
    mov ecx, MSR_GHCB
    wrmsr
    vmgexit
    mov ecx, MSR_GHCB
    rdmsr
    mov ecx, eax
    and ecx, GHCB_MSR_INFO_MASK
    mov ebx, (FW_REASON_SET << 8) | FW_REASON_SEV_INFO
    cmp ecx, GHCB_MSR_SEV_INFO_RESP
    jne fw_fail32
    ; Versions (EDX = bits 63:32): max in 31:16, min in 15:0.
    mov ebx, (GHCB_TERM_SET_GENERAL << 8) | GHCB_TERM_PROTOCOL_UNSUPPORTED
    mov ecx, edx
    shr ecx, GHCB_MSR_SEV_INFO_MAX_SHIFT - 32
    cmp ecx, GHCB_PROTOCOL_MIN
    jb fw_fail32
    movzx ebp, dx
    cmp ebp, GHCB_PROTOCOL_MAX
    ja fw_fail32
    cmp ecx, GHCB_PROTOCOL_MAX
    jbe .version
    mov ecx, GHCB_PROTOCOL_MAX
.version:
    mov [FW_BOOT_INFO_GPA + BI_GHCB_VERSION], ecx
    shr eax, GHCB_MSR_SEV_INFO_CBIT_SHIFT
    and eax, 0xFF
    mov ebx, (FW_REASON_SET << 8) | FW_REASON_CBIT_MISMATCH
    cmp eax, [FW_BOOT_INFO_GPA + BI_CBIT_POS]
    jne fw_fail32
.done:
    ret

; ---------------------------------------------------------------------------
; load_images: check the payload header (measured with the image), copy the
; runtime and the payload into RAM. Fills BI_MEMORY_SIZE, BI_PAYLOAD_SIZE.
; Paging is off: flash and RAM are both read and written private.
load_images:
    mov esi, FW_PAYLOAD_HEADER_GPA
    mov ebx, (FW_REASON_SET << 8) | FW_REASON_PAYLOAD
    cmp dword [esi + PH_MAGIC], FW_PAYLOAD_MAGIC
    jne fw_fail32
    cmp dword [esi + PH_VERSION], FW_PAYLOAD_HEADER_VERSION
    jne fw_fail32
    cmp dword [esi + PH_PAYLOAD_SIZE + 4], 0
    jne fw_fail32
    cmp dword [esi + PH_MEMORY_SIZE + 4], 0
    jne fw_fail32
    mov ecx, [esi + PH_PAYLOAD_SIZE]
    cmp ecx, FW_PAYLOAD_MAX
    ja fw_fail32
    mov eax, [esi + PH_MEMORY_SIZE]
    cmp eax, FW_RAM_MIN
    jb fw_fail32
    cmp eax, FW_RAM_MAX
    ja fw_fail32
    lea edx, [ecx + FW_PAYLOAD_GPA]
    cmp edx, eax
    ja fw_fail32
    mov [FW_BOOT_INFO_GPA + BI_MEMORY_SIZE], eax
    mov [FW_BOOT_INFO_GPA + BI_PAYLOAD_SIZE], ecx

    ; The payload ends at the header page and starts on a page boundary.
    mov esi, ecx
    add esi, PAGE_SIZE_4K - 1
    and esi, ~(PAGE_SIZE_4K - 1)
    neg esi
    add esi, FW_PAYLOAD_HEADER_GPA
    mov edi, FW_PAYLOAD_GPA
    rep movsb

    mov esi, runtime_image
    mov edi, FW_RUNTIME_GPA
    mov ecx, (runtime_image_end - runtime_image + 3) / 4
    rep movsd
    ret

; ---------------------------------------------------------------------------
; build_page_tables: identity map (APM vol 2, 5.3 "Long-Mode Page
; Translation"), the C-bit (15.34.1) in every entry that maps private memory.
;   GiB 0..2: RAM. The first 2 MiB in 4 KiB pages: page 0 absent (NULL
;             guard), the GHCB page shared under SEV-ES (C=0: the host must
;             read it); the rest in 2 MiB pages up to the RAM size.
;   GiB 3:    the device window, shared (MMIO must be C=0: the host emulates
;             it), except the 2 MiB pages holding the flash: private, read-only.
; Table pages are read by the CPU's walk, which is always private, and are
; written here with paging off, i.e. private too.
%define PT_ENTRIES (PTE_INDEX_MASK + 1)
build_page_tables:
    mov edi, FW_PAGE_TABLES_GPA
    mov ecx, FW_PAGE_TABLES_SIZE / 4
    xor eax, eax
    rep stosd
    mov ebp, [FW_BOOT_INFO_GPA + BI_CBIT_MASK + 4]     ; C-bit, high dword (or 0)

    mov dword [FW_PML4_GPA], FW_PDPT_GPA | PTE_P | PTE_RW
    mov [FW_PML4_GPA + 4], ebp
    xor ecx, ecx
.pdpt:
    mov eax, ecx
    shl eax, PT_LEVEL3_SHIFT
    add eax, FW_PD_GPA | PTE_P | PTE_RW
    mov [FW_PDPT_GPA + ecx * 8], eax
    mov [FW_PDPT_GPA + ecx * 8 + 4], ebp
    inc ecx
    cmp ecx, 4
    jb .pdpt

    mov dword [FW_PD_GPA], FW_PT0_GPA | PTE_P | PTE_RW
    mov [FW_PD_GPA + 4], ebp
    mov ecx, 1                          ; entry 0 stays absent
.pt0:
    mov eax, ecx
    shl eax, PT_LEVEL3_SHIFT
    or eax, PTE_P | PTE_RW
    mov [FW_PT0_GPA + ecx * 8], eax
    mov [FW_PT0_GPA + ecx * 8 + 4], ebp
    inc ecx
    cmp ecx, PT_ENTRIES
    jb .pt0
    test dword [FW_BOOT_INFO_GPA + BI_SEV_STATUS], SEV_STATUS_SEV_ES_ENABLED
    jz .ram
    mov dword [FW_PT0_GPA + (FW_GHCB_GPA >> PT_LEVEL3_SHIFT) * 8 + 4], 0
    ; The APs' GHCB pages (one per AP slot) are shared too.
    mov ecx, FW_AP_GHCB_GPA >> PT_LEVEL3_SHIFT
.ap_ghcb:
    mov dword [FW_PT0_GPA + ecx * 8 + 4], 0
    inc ecx
    cmp ecx, (FW_AP_GHCB_GPA >> PT_LEVEL3_SHIFT) + FW_MAX_VCPUS - 1
    jb .ap_ghcb

.ram:
    ; The four PDs are consecutive: entry n maps 2 MiB page n of 0..4 GiB.
    mov edx, [FW_BOOT_INFO_GPA + BI_MEMORY_SIZE]
    add edx, PAGE_SIZE_2M - 1
    shr edx, PT_LEVEL2_SHIFT            ; 2 MiB pages of RAM
    mov ecx, 1
.ram_page:
    cmp ecx, edx
    jae .devices
    mov eax, ecx
    shl eax, PT_LEVEL2_SHIFT
    or eax, PTE_P | PTE_RW | PTE_PS
    mov [FW_PD_GPA + ecx * 8], eax
    mov [FW_PD_GPA + ecx * 8 + 4], ebp
    inc ecx
    jmp .ram_page

.devices:
    ; ESI = first 2 MiB page of the flash (the payload is at its bottom).
    mov esi, [FW_BOOT_INFO_GPA + BI_PAYLOAD_SIZE]
    add esi, PAGE_SIZE_4K - 1
    and esi, ~(PAGE_SIZE_4K - 1)
    neg esi
    add esi, FW_PAYLOAD_HEADER_GPA
    shr esi, PT_LEVEL2_SHIFT
    mov ecx, FW_DEVICE_WINDOW >> PT_LEVEL2_SHIFT
.device_page:
    mov eax, ecx
    shl eax, PT_LEVEL2_SHIFT
    or eax, PTE_P | PTE_PS
    cmp ecx, esi
    jae .flash_page
    or eax, PTE_RW
    mov [FW_PD_GPA + ecx * 8], eax      ; shared: high dword stays 0
    jmp .next_device_page
.flash_page:
    mov [FW_PD_GPA + ecx * 8], eax      ; private, read-only
    mov [FW_PD_GPA + ecx * 8 + 4], ebp
.next_device_page:
    inc ecx
    cmp ecx, (FW_FLASH_TOP >> PT_LEVEL2_SHIFT)
    jb .device_page
    ret

; ---------------------------------------------------------------------------
; cbit_verify: does the C-bit position we were told really encrypt?
;
; sev_detect checks that the hypervisor's answers agree; a hypervisor can
; still make them agree on a wrong position. Page tables built with it would
; map RAM shared (the real C-bit clear) or elsewhere (an address bit), and
; the guest would put its data in the clear. Linux checks the position after
; switching page tables (arch/x86/kernel/sev_verify_cbit.S): a random value
; written through the encrypted mapping must read back through the new one.
; Here paging is still off, so every write is private (APM vol 2, 15.34.5):
;   1. plant a random value (RDRAND: the hypervisor cannot predict it) at
;      FW_CBIT_CHECK_NONCE;
;   2. enter long mode on small check tables: the flash's top 2 MiB without
;      any C-bit (instruction fetches and table walks are private whatever
;      the entries say, 15.34.5), GiB 0 identity-mapped shared, and GiB 1
;      mapping RAM from GPA 0 with the claimed C-bit;
;   3. read the value back at FW_CBIT_CHECK_VA + the nonce's GPA. With the
;      right position the read is private and equal; with a wrong one it is
;      shared (ciphertext), another address, or a reserved-bit #PF;
;   4. paging off again, the check pages zeroed; build_page_tables' tables
;      are then entered as before.
; Faults during step 3 must not become a triple fault: a long-mode IDT (and
; the GDT and stack it needs) is written through the shared mapping, so the
; CPU reads them back consistently, and every vector leads to cbit_fault64.
; A mismatch or a fault terminates with FW_REASON_CBIT_VERIFY.
; Changes EAX, ECX, EDX, ESI, EDI; no-op without SEV (no C-bit).
%define CBIT_PML4 FW_CBIT_CHECK_PML4
%define CBIT_PDPT (FW_CBIT_CHECK_PML4 + 0x1000)
%define CBIT_PD0 (FW_CBIT_CHECK_PML4 + 0x2000)
%define CBIT_PD1 (FW_CBIT_CHECK_PML4 + 0x3000)
%define CBIT_PD3 (FW_CBIT_CHECK_PML4 + 0x4000)
%define CBIT_GDTR (FW_CBIT_CHECK_SHARED + 0x100)
%define CBIT_IDTR (FW_CBIT_CHECK_SHARED + 0x110)
%define CBIT_IDT (FW_CBIT_CHECK_SHARED + 0x200)
%define CBIT_STACK_TOP (FW_CBIT_CHECK_SHARED + PAGE_SIZE_4K)
cbit_verify:
    mov ebp, [FW_BOOT_INFO_GPA + BI_CBIT_MASK + 4]     ; claimed C-bit, high dword
    test ebp, ebp
    jz .done
    push ebx
    mov edi, FW_CBIT_CHECK_GPA
    mov ecx, FW_CBIT_CHECK_SIZE / 4
    xor eax, eax
    rep stosd
    ; Check tables: PML4 -> PDPT -> the PDs of GiB 0, 1 and 3.
    mov dword [CBIT_PML4], CBIT_PDPT | PTE_P | PTE_RW
    mov dword [CBIT_PDPT], CBIT_PD0 | PTE_P | PTE_RW
    mov dword [CBIT_PDPT + 8], CBIT_PD1 | PTE_P | PTE_RW
    mov dword [CBIT_PDPT + 3 * 8], CBIT_PD3 | PTE_P | PTE_RW
    mov dword [CBIT_PD0], PTE_P | PTE_RW | PTE_PS               ; GiB 0, shared
    mov dword [CBIT_PD1], PTE_P | PTE_RW | PTE_PS               ; GiB 1 ...
    mov [CBIT_PD1 + 4], ebp                                     ; ... with the C-bit
    mov dword [CBIT_PD3 + (PT_ENTRIES - 1) * 8], (FW_FLASH_TOP - PAGE_SIZE_2M) | PTE_P | PTE_PS
.rand_lo:
    rdrand esi
    jnc .rand_lo
.rand_hi:
    rdrand edi
    jnc .rand_hi
    mov [FW_CBIT_CHECK_NONCE], esi
    mov [FW_CBIT_CHECK_NONCE + 4], edi

    mov eax, cr4
    or eax, CR4_PAE
    mov cr4, eax                        ; SEV-ES: CR4 write trap
    mov eax, CBIT_PML4
    mov cr3, eax
    mov ecx, MSR_EFER
    rdmsr
    or eax, EFER_LME
    wrmsr                               ; SEV-ES: EFER write trap
    mov ebx, esp                        ; the stack is private: not touched until paging is off
    mov eax, cr0
    or eax, CR0_PG
    mov cr0, eax                        ; long mode, compatibility mode (CS is 32-bit)

    ; Written and read shared (GiB 0): the GDT (same descriptors as the
    ; flash's), a 64-bit IDT sending every vector to cbit_fault64, a stack.
    mov dword [FW_CBIT_CHECK_SHARED + FW_SEL_CODE64], FW_GDT_CODE64 & 0xFFFFFFFF
    mov dword [FW_CBIT_CHECK_SHARED + FW_SEL_CODE64 + 4], FW_GDT_CODE64 >> 32
    mov dword [FW_CBIT_CHECK_SHARED + FW_SEL_DATA], FW_GDT_DATA & 0xFFFFFFFF
    mov dword [FW_CBIT_CHECK_SHARED + FW_SEL_DATA + 4], FW_GDT_DATA >> 32
    mov dword [FW_CBIT_CHECK_SHARED + FW_SEL_CODE32], FW_GDT_CODE32 & 0xFFFFFFFF
    mov dword [FW_CBIT_CHECK_SHARED + FW_SEL_CODE32 + 4], FW_GDT_CODE32 >> 32
    mov word [CBIT_GDTR], FW_SEL_CODE32 + 7
    mov dword [CBIT_GDTR + 2], FW_CBIT_CHECK_SHARED
    mov word [CBIT_IDTR], 32 * 16 - 1
    mov dword [CBIT_IDTR + 2], CBIT_IDT
    mov edx, CBIT_IDT
    mov ecx, 32
.gate:
    ; A 64-bit interrupt gate (APM vol 2, 4.8.4): offset 15:0, selector,
    ; attributes, offset 31:16, offset 63:32 (0), reserved.
    mov dword [edx], (cbit_fault64 & 0xFFFF) | (FW_SEL_CODE64 << 16)
    mov dword [edx + 4], (cbit_fault64 & 0xFFFF0000) | (FW_GATE_ATTR << 8)
    mov dword [edx + 8], 0              ; zeroed privately before: ciphertext here
    mov dword [edx + 12], 0
    add edx, 16
    loop .gate
    lgdt [CBIT_GDTR]
    lidt [CBIT_IDTR]
    mov esp, CBIT_STACK_TOP

    mov eax, [FW_CBIT_CHECK_VA + FW_CBIT_CHECK_NONCE]
    mov edx, [FW_CBIT_CHECK_VA + FW_CBIT_CHECK_NONCE + 4]
    cmp eax, esi
    jne cbit_abort32
    cmp edx, edi
    jne cbit_abort32

    mov eax, cr0
    btr eax, CR0_PG_BIT
    mov cr0, eax                        ; paging off: private again (long mode off)
    mov esp, ebx
    lgdt [gdt_desc]
    lidt [idt32_desc]
    mov edi, FW_CBIT_CHECK_GPA          ; leave no trace of the value or the tables
    mov ecx, FW_CBIT_CHECK_SIZE / 4
    xor eax, eax
    rep stosd
    pop ebx
.done:
    ret

; A fault during the check: back to compatibility mode (a far return to
; FW_SEL_CODE32), and from there out of long mode (APM vol 2, 14.7).
bits 64
cbit_fault64:
    mov eax, cbit_abort32
    push FW_SEL_CODE32
    push rax
    db 0x48, 0xCB                       ; RETFQ (REX.W RETF)
bits 32
cbit_abort32:
    mov eax, cr0
    btr eax, CR0_PG_BIT
    mov cr0, eax                        ; paging and long mode off: all private
    lgdt [gdt_desc]
    lidt [idt32_desc]
    mov esp, FW_STACK_TOP
    mov ebx, (FW_REASON_SET << 8) | FW_REASON_CBIT_VERIFY
    jmp fw_fail32

; ---------------------------------------------------------------------------
; Early exceptions (32-bit IDT). The #VC gate is vc_early32 (guest_asm).

; #GP: only expected from the SEV_STATUS probe (no such MSR without SEV).
early_gp:
    cmp dword [esp + 4], sev_status_probe   ; [esp] error code, [esp+4] EIP
    jne early_fault
    xor eax, eax
    xor edx, edx
    add esp, 4
    add dword [esp], 2                  ; past RDMSR (0F 32)
    iret

early_fault:
    mov ebx, (FW_REASON_SET << 8) | FW_REASON_EARLY_EXCEPTION
    ; fall through

; fw_fail32: stop the guest. EBX = reason set << 8 | reason code.
fw_fail32:
    test dword [FW_BOOT_INFO_GPA + BI_SEV_STATUS], SEV_STATUS_SEV_ES_ENABLED
    jz .report
    ; GHCB MSR protocol termination request (GHCB spec, "Termination
    ; Request"): GHCBInfo 0x100, reason set 15:12, reason code 23:16.
    movzx eax, bl
    shl eax, GHCB_MSR_TERM_CODE_SHIFT
    movzx ecx, bh
    and ecx, 0xF
    shl ecx, GHCB_MSR_TERM_SET_SHIFT
    or eax, ecx
    or eax, GHCB_MSR_TERM_REQ
    xor edx, edx
    mov ecx, MSR_GHCB
    wrmsr
    vmgexit
    jmp .halt
.report:
    ; No GHCB MSR protocol without SEV-ES: say it on the serial port.
    mov esi, msg_fatal
    call early_puts
    mov al, bh
    call early_puthex8
    mov esi, msg_code
    call early_puts
    mov al, bl
    call early_puthex8
    mov esi, msg_newline
    call early_puts
.halt:
    cli
    hlt
    jmp .halt

; early_puts: the NUL-terminated string at ESI to the 16550 (direct port I/O:
; only without SEV-ES). Changes EAX, EDX, ESI.
early_puts:
    lodsb
    test al, al
    jz .done
    call early_putc
    jmp early_puts
.done:
    ret

; early_puthex8: AL as two hex digits. Changes EAX, EDX.
early_puthex8:
    push eax
    shr al, 4
    call early_putnibble
    pop eax
    ; fall through
early_putnibble:
    and al, 0xF
    add al, '0'
    cmp al, '9'
    jbe early_putc
    add al, 'a' - '0' - 10
    ; fall through

; early_putc: AL to the UART once it can take a byte (LSR.THRE).
early_putc:
    mov ah, al
    mov dx, FW_CONSOLE_PORT + UART_LSR
.wait:
    in al, dx
    test al, UART_LSR_THRE
    jz .wait
    mov al, ah
    mov dx, FW_CONSOLE_PORT + UART_THR
    out dx, al
    ret

msg_fatal:      db "sevx86-fw: fatal: reason set 0x", 0
msg_code:       db " code 0x", 0
msg_newline:    db `\n`, 0

%include "vc_early32.S"

; ---------------------------------------------------------------------------
; Descriptor tables (read-only data in the flash).
align 8
gdt:
    dq 0
    dq FW_GDT_CODE64                    ; FW_SEL_CODE64
    dq FW_GDT_DATA                      ; FW_SEL_DATA
    dq FW_GDT_CODE32                    ; FW_SEL_CODE32
gdt_end:
gdt_desc:
    dw gdt_end - gdt - 1
    dd gdt

; A 32-bit interrupt gate (APM vol 2, 4.8) to %1 in FW_SEL_CODE32.
%macro gate32 1
    dw (%1) & 0xFFFF
    dw FW_SEL_CODE32
    db 0, FW_GATE_ATTR
    dw ((%1) >> 16) & 0xFFFF
%endmacro

align 8
idt32:
    gate32 early_fault                  ; 0 #DE
    gate32 early_fault                  ; 1 #DB
    gate32 early_fault                  ; 2 NMI
    gate32 early_fault                  ; 3 #BP
    gate32 early_fault                  ; 4 #OF
    gate32 early_fault                  ; 5 #BR
    gate32 early_fault                  ; 6 #UD
    gate32 early_fault                  ; 7 #NM
    gate32 early_fault                  ; 8 #DF
    gate32 early_fault                  ; 9
    gate32 early_fault                  ; 10 #TS
    gate32 early_fault                  ; 11 #NP
    gate32 early_fault                  ; 12 #SS
    gate32 early_gp                     ; 13 #GP
    gate32 early_fault                  ; 14 #PF
    gate32 early_fault                  ; 15
    gate32 early_fault                  ; 16 #MF
    gate32 early_fault                  ; 17 #AC
    gate32 early_fault                  ; 18 #MC
    gate32 early_fault                  ; 19 #XM
    gate32 early_fault                  ; 20
    gate32 early_fault                  ; 21 #CP
    gate32 early_fault                  ; 22
    gate32 early_fault                  ; 23
    gate32 early_fault                  ; 24
    gate32 early_fault                  ; 25
    gate32 early_fault                  ; 26
    gate32 early_fault                  ; 27
    gate32 early_fault                  ; 28 #HV
    gate32 vc_early32                   ; 29 #VC
    gate32 early_fault                  ; 30 #SX
    gate32 early_fault                  ; 31
idt32_end:
idt32_desc:
    dw idt32_end - idt32 - 1
    dd idt32

; ---------------------------------------------------------------------------
; APs start here in real mode (CS base = address & FFFF0000, IP = address &
; FFFF, as QEMU sets them from the reset block). Under SEV-ES this state is
; the AP's launch VMSA, measured with the image: the host cannot start an AP
; anywhere else, and the flash cannot be changed. So the address only holds
; an indirection the BSP programs before its INIT-SIPI-SIPI: a far jump
; through the SMP mailbox to the AP trampoline in RAM (runtime.S) -- what
; OVMF does with the far jump it writes at its AP reset address (MpInitLib
; SetSevEsJumpTable). With paging off every access is private, so the
; mailbox is read with the guest's key, out of the host's reach. An AP the
; host starts before the BSP is ready (ap_start="run") waits for the magic.
bits 16
ap_reset:
    cli
    xor ax, ax
    mov ds, ax                          ; DS base 0: the mailbox is below 64 KiB
.wait:
    cmp dword [FW_SMP_GPA + SMP_AP_START_MAGIC], FW_AP_START_MAGIC
    je .go
    pause
    jmp .wait
.go:
    jmp far [FW_SMP_GPA + SMP_AP_START_IP]

; ---------------------------------------------------------------------------
; The OVMF-style footer GUID table QEMU reads (hw/i386/pc_sysfw_ovmf.c): it
; ends OVMF_FOOTER_END_OFFSET bytes below 4 GiB; entries are data, a u16
; length covering the entry, then the GUID. The one entry is the SEV-ES
; reset block: QEMU starts every AP (SEV-ES vCPU 1..n) at that address, and
; the launch digest covers their VMSAs, so `sevx86 measure` and
; sev-snp-measure need it.
%define RESET_BLOCK_ENTRY_SIZE (OVMF_SEV_ES_RESET_BLOCK_SIZE + OVMF_ENTRY_TRAILER_SIZE)
%define FOOTER_TABLE_SIZE (RESET_BLOCK_ENTRY_SIZE + OVMF_ENTRY_TRAILER_SIZE)
    pad_to FW_FLASH_TOP - OVMF_FOOTER_END_OFFSET - FOOTER_TABLE_SIZE
footer_table:
    dd ap_reset                         ; SEV-ES reset block: the AP reset address
    dw RESET_BLOCK_ENTRY_SIZE
    dq OVMF_SEV_ES_RESET_BLOCK_GUID_LO, OVMF_SEV_ES_RESET_BLOCK_GUID_HI
    dw FOOTER_TABLE_SIZE                ; the table footer: its length, its GUID
    dq OVMF_TABLE_FOOTER_GUID_LO, OVMF_TABLE_FOOTER_GUID_HI

    pad_to FW_FLASH_TOP - 0x10
bits 16
reset_vector:                           ; F000:FFF0, the first instruction
    jmp near start16
    pad_to FW_FLASH_TOP
