"""Access: who may do what. The policy (and policy.toml), API clients, operators, sessions, TOTP,
passwords, dual-control approvals, caller identity, and the audited-operation base every use case
shares.

Builds on storage, keys (sealing TOTP seeds, hashing API keys) and the audit trail. Imports
neither api/ nor kms/.
"""
