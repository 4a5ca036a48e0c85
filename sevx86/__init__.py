"""sevx86: an AMD SEV-ES guest at the x86 instruction level.

Guest code runs on Unicorn; guest memory is encrypted by a C-bit-aware AES
layer (``sevx86.memory``); NAE events raise #VC in the guest (``sevx86.cpu``);
the guest's own #VC handler talks to an untrusted hypervisor (``sevx86.hv``)
through the GHCB; a Secure Processor model (``sevx86.sp``) owns the keys,
measures the launch and checks the VMSA at every VMRUN.
"""

__version__ = "0.1.0"
