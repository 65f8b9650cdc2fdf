"""Relay: the vault forwards partners' requests with tokens swapped for values (outbound), and
merchants' inbound requests with values swapped for tokens (inbound), so no one else holds them.

`routes` (the sealed, dual-controlled configuration), `addresses` (the SSRF policy: which URLs,
hosts, addresses and paths a route may reach), `templates` (finding and filling
`{{tokenvault:<token>:<field>}}` in JSON, form and header contexts), `protection` (the PAN
detector and response fields), `upstream` (the port the HTTP adapter in api/ implements) and
`service` (the audited use cases). The top of the domain with privacy: builds on tokens, access,
keys, audit and storage. Imports neither api/ nor kms/, nor any HTTP client.
"""
