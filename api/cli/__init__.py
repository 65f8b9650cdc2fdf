"""The command line (`tokenvault`): `main` parses and dispatches, one module per command group
(access, audit, keys, subjects).

Maps vault errors to exit codes; may import vault/, kms/ and api/http (`serve` starts it).
"""
