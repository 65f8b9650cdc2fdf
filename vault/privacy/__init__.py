"""Privacy: customers' rights (export, correct, erase, minors, holds, opt-outs), disclosures on
legal request, transfers to other controllers, retention.

The top of the domain: builds on tokens (where subjects and their state live), access, keys,
audit and storage. Imports neither api/ nor kms/.
"""
