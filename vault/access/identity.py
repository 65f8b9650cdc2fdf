"""One door for bearer credentials: API keys (clients) and session tokens (operators).

The prefix says which registry answers (`tvk_` API keys, `tvs_` sessions); each one
audits its own failures, and anything else is refused as an invalid API key.
"""

from __future__ import annotations

from vault.access.clients import ClientRegistry
from vault.access.operators import OperatorRegistry
from vault.access.sessions import Sessions
from vault.audit.lockdown import Lockdown
from vault.audit.trail import Actor, Origin
from vault.secret import Secret

__all__ = ["Authenticator"]


class Authenticator:
    def __init__(self, clients: ClientRegistry, operators: OperatorRegistry, lockdown: Lockdown | None = None) -> None:
        self._clients = clients
        self._operators = operators
        self._lockdown = lockdown

    def authenticate(self, credentials: Secret[str] | None, origin: Origin) -> Actor:
        if credentials is not None and Sessions.looks_like_session(credentials):
            actor = self._operators.authenticate(credentials, origin)
        else:
            actor = self._clients.authenticate(credentials, origin)
        if self._lockdown is not None:  # the audit chain is broken: only investigators (vault.audit.lockdown)
            self._lockdown.check(actor, origin)
        return actor
