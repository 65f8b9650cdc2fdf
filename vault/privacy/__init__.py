"""Privacy: customers' rights (export, correct, erase, minors, holds, opt-outs), subjects and their
state, disclosures on legal request, transfers to other controllers, retention.

The top of the domain: builds on tokens, access, keys, audit and storage. Imports neither api/
nor kms/.
"""
