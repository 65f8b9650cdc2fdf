"""Tokens: the kinds of value (validation and canonical form), card numbers, token formats, subjects
and their state, and the token service (tokenize, detokenize, correct, delete).

Subjects live here rather than in privacy/: every detokenize reads a subject's state (opt-outs,
restrictions, holds) before it answers, so the token service depends on it; privacy's use cases
change that state from above. Builds on access, keys, audit and storage; imports neither api/ nor kms/.
"""
