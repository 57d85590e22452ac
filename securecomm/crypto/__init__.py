"""Pure cryptography: envelopes, identities, certificates, digests.

The only I/O here is reading and writing key files (through securecomm.files).
"""
