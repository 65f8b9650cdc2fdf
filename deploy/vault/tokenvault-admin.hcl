# TokenVault admin policy: create, rotate and configure the KEK (never export it).
#
# Attach together with tokenvault-service (the admin CLI also wraps/rewraps keys):
# `tokenvault init`, KEK rotation and min_decryption_version changes run under it.
# There is no capability on transit/export/*, transit/backup/* or key deletion,
# and TokenVault creates the key with exportable=false, allow_plaintext_backup=false.
#
# Replace "transit" / "tokenvault-kek" if you set TOKENVAULT_VAULT_MOUNT /
# TOKENVAULT_VAULT_KEY.

# Enable the transit engine at transit/ if it is missing (init), and check its type.
path "sys/mounts/transit" {
  capabilities = ["create", "read", "update"]
}

# Create the key (init) and read its metadata. The parameter allow-list means even
# this policy cannot create the key exportable, backup-able or of another type.
path "transit/keys/tokenvault-kek" {
  capabilities = ["create", "read", "update"]
  allowed_parameters = {
    "type"                   = ["aes256-gcm96"]
    "exportable"             = [false]
    "allow_plaintext_backup" = [false]
  }
}

# New KEK version.
path "transit/keys/tokenvault-kek/rotate" {
  capabilities = ["update"]
}

# min_decryption_version (retire old KEK versions), min_encryption_version (erasure
# epochs, before a trim) and deletion_allowed=false only: exportable/allow_plaintext_backup
# are one-way switches this policy must not flip.
path "transit/keys/tokenvault-kek/config" {
  capabilities = ["update"]
  allowed_parameters = {
    "min_decryption_version" = []
    "min_encryption_version" = []
    "deletion_allowed"       = [false]
  }
}

# Erasure epochs (`tokenvault keys epoch`): destroy KEK versions below the minimum for
# good, so copies of keys wrapped under them (backups, WAL, dead tuples) never open again.
path "transit/keys/tokenvault-kek/trim" {
  capabilities = ["update"]
}

# The audit checkpoint signing key (`tokenvault init`): only as a non-exportable ed25519 key.
path "transit/keys/tokenvault-audit-checkpoints" {
  capabilities = ["create", "read", "update"]
  allowed_parameters = {
    "type"                   = ["ed25519"]
    "exportable"             = [false]
    "allow_plaintext_backup" = [false]
  }
}
