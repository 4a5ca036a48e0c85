"""Booting firmware as QEMU does for an SEV-ES guest.

Modules (import them explicitly):

- ``ovmf``       -- the OVMF footer GUID table, SEV-ES reset block, SEV areas.
- ``vcpu_types`` -- QEMU vCPU models and the reset signature (RDX).
- ``reset``      -- the initial VMSA of the BSP and of the APs.
- ``digest``     -- the launch digest an SEV-ES launch must produce.
- ``launch``     -- the QEMU-like launch through the Secure Processor.
- ``fv``         -- firmware volumes, FFS files, sections, image entry points.
- ``varstore``   -- the UEFI variables in a varstore image (pflash1 after a boot).
- ``firmware_run`` -- launch + guest + QEMU-like pc machine + boot milestones
  (what ``sevx86 boot`` runs).
"""
