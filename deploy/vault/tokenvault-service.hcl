# TokenVault service policy: use the KEK, never manage or export it.
#
# The running service only wraps, unwraps and rewraps domain keys, and reads the
# key's metadata (versions, min_decryption_version) for `check()`/`info()`.
# "update" but not "create" on encrypt: with "create", Transit's encrypt would
# silently create a missing key with default settings instead of failing closed.
#
# Replace "transit" / "tokenvault-kek" if you set TOKENVAULT_VAULT_MOUNT /
# TOKENVAULT_VAULT_KEY.

path "transit/encrypt/tokenvault-kek" {
  capabilities = ["update"]
}

path "transit/decrypt/tokenvault-kek" {
  capabilities = ["update"]
}

path "transit/rewrap/tokenvault-kek" {
  capabilities = ["update"]
}

path "transit/keys/tokenvault-kek" {
  capabilities = ["read"]
}

# Audit checkpoints: sign with the ed25519 key (it never leaves Transit) and read its
# public keys to verify. No create: `tokenvault init` makes the key with the admin role.
# Replace "tokenvault-audit-checkpoints" if you set TOKENVAULT_AUDIT_SIGNING_KEY.
path "transit/sign/tokenvault-audit-checkpoints" {
  capabilities = ["update"]
}

path "transit/keys/tokenvault-audit-checkpoints" {
  capabilities = ["read"]
}
