"""The HTTP face: the Flask app factory, one module per group of routes, request schemas and the
OpenAPI document, error mapping, authentication, step-up, rate limits, metrics and logs.

Only this package (and api/cli/) maps vault errors to answers. May import vault/ and kms/.
"""
