"""Audit: the chained trail written in each operation's transaction, the auditors' log reader, alerts.

`trail` sits low (storage and keys beneath it); `log` is the auditors' use case and builds on
access (policy and audited operations). Imports neither api/ nor kms/.
"""
