"""Tokens: the kinds of value (validation and canonical form), card numbers, token formats, and the
token service (tokenize, detokenize, correct, delete).

Builds on access, keys, audit, storage and privacy's subject state. Imports neither api/ nor kms/.
"""
