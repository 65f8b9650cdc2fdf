"""Keys: envelope encryption, the key hierarchy and its caches, rotation jobs, and the KeyProvider port.

`provider.KeyProvider` is the port every adapter in kms/ implements; the domain never imports kms/.
Imports storage, audit and access (rotation jobs are authorised and audited operations),
vault.errors and vault.secret.
"""
