"""The Secure Processor model: guest keys, the SEV launch, VMSA integrity.

Modules (import them explicitly):

- ``secure_processor`` -- ``SecureProcessor``: LAUNCH_START ... LAUNCH_FINISH,
  DBG_DECRYPT/ENCRYPT, ``memory_cipher``, ``vmsa_seal``/``vmsa_check``.
- ``errors``  -- ``SevApiStatus`` (SEV API status codes) and ``SevError``.
- ``policy``  -- ``GuestPolicy`` and ``PolicyFlag`` (the LAUNCH_START policy).
- ``guest``   -- ``GuestState`` (GSTATE) and the SP's per-guest context.
- ``formats`` -- SEV API byte layouts: session buffer, measurement, packet
  header, MAC inputs, SEV certificate.
- ``channel`` -- key agreement, KDF, transport keys, measurement and secret MACs.
- ``certs``   -- SEV certificates for ECDH P-384 keys (PDH, owner DH key).
- ``owner``   -- the guest owner's side: session, verification, secrets.
"""
