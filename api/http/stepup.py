"""Step-up for sensitive endpoints: a fresh, unused TOTP code in `X-TOTP`, even within a session.

    @blueprint.post("/keys/rotate")
    @require_step_up("manage_keys")
    def rotate() -> ...:
        step_up = current_step_up()   # hand it to the vault call that needs proof

The check itself is vault.operators.OperatorRegistry.step_up (audited as `step_up`). A code is
spent only when the action it authorises runs: if the view fails, the code is given back.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import g, request

from api.http.auth import current_actor
from api.http.tokens import components, origin
from vault.access.operators import StepUp
from vault.errors import StepUpRequired
from vault.secret import Secret

__all__ = ["require_step_up", "current_step_up", "HEADER"]

HEADER = "X-TOTP"
View = TypeVar("View", bound=Callable[..., Any])


def require_step_up(operation: str | None = None) -> Callable[[View], View]:
    """Refuse the request (401 step_up_required) unless it carries a fresh TOTP code of the operator.

    With `operation`, a role the policy does not grant it gets 403 before any code is tried.
    """

    def decorate(view: View) -> View:
        @wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            code = request.headers.get(HEADER)
            step_up = components().operators.step_up(current_actor(), Secret(code) if code else None, origin(),
                                                     operation=operation)
            g.step_up = step_up
            try:
                return view(*args, **kwargs)
            except Exception:
                # Every action runs in one transaction: if it failed, nothing happened, and the code
                # is given back (a request that fails for another reason does not cost a 30 s wait).
                components().operators.release_step_up(step_up, origin())
                raise

        return cast(View, checked)

    return decorate


def current_step_up() -> StepUp:
    found = g.get("step_up")
    if not isinstance(found, StepUp):
        raise StepUpRequired("a fresh TOTP code is required")
    return found
