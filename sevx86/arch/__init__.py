"""Spec structures and constants, each defined once.

Modules (import them explicitly, e.g. ``from sevx86.arch.vmsa import VMSA``):

- ``layout``  -- ``Field``/``Layout``: named little-endian fields at offsets.
- ``exits``   -- ``SvmExit`` (APM vol 2 appendix C), ``SwExit`` (GHCB spec),
  ``exit_name``.
- ``vmcb``    -- ``VMCB_CONTROL``, ``VMCB_SAVE``, intercept bits, EVENTINJ,
  IOIO EXITINFO1, MSR/IO permission maps.
- ``vmsa``    -- ``VMSA``, the SEV-ES save area, and ``VMSA_GPR_NAMES``.
- ``ghcb``    -- ``GHCB`` page, valid bitmap, GHCB MSR protocol, v2 answers.
- ``msr``     -- MSR numbers, EFER and SEV_STATUS bits.
- ``cr``      -- CR0, CR4 and RFLAGS bits.
- ``cpuid``   -- CPUID leaves, feature bits, leaf 0x8000_001F encode/decode.
- ``paging``  -- page-table entry bits, page sizes, #PF error code.
- ``vectors`` -- exception vectors and which push an error code.
- ``cfi``     -- flash commands, status register bits, CFI query offsets.
"""
