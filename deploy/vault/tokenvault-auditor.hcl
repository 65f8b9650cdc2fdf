# TokenVault auditor policy: check checkpoint signatures in Vault, nothing else.
#
# `tokenvault audit verify` checks signatures locally with the public keys it reads; an
# auditor or SIEM that prefers to ask Vault can use transit/verify with this policy
# (e.g. `bao write transit/verify/tokenvault-audit-checkpoints input=... signature=vault:v1:...`).
# Replace "tokenvault-audit-checkpoints" if you set TOKENVAULT_AUDIT_SIGNING_KEY.

path "transit/verify/tokenvault-audit-checkpoints" {
  capabilities = ["update"]
}

path "transit/keys/tokenvault-audit-checkpoints" {
  capabilities = ["read"]
}
