"""Key providers: where key-encryption keys (KEKs) live.

Every provider implements `vault.keys.provider.KeyProvider` (the port, in the domain) and passes the same contract
tests (tests/kms/test_provider_contract.py). kms/ never imports Flask.
"""
