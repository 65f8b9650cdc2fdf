"""Storage: the database schema, engine setup, the SQLite writer lock, and Alembic migrations.

The bottom of the domain: imports only vault.errors and vault.secret, never another wing.
"""
