"""Routes at rest: sealed, versioned, approved by a second admin; an insider's edits only narrow."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, text, update

from api.wiring import Components
from vault.audit.trail import HOST, Origin
from vault.errors import Conflict, IntegrityFailure
from vault.relay.routes import RouteBook, parse_config
from vault.storage.schema import relay_routes

SECRET = "sk_live_do_not_leak_0123456789"


def doc(name: str = "psp", **changes: Any) -> dict[str, Any]:
    return {"name": name, "direction": "outbound", "upstream": "https://api.psp.example", "paths": ["/v1/charges"],
            "roles": ["payment_gateway"], "purposes": ["payment"], "substitute": {"body": ["card"]},
            "auth": {"type": "bearer", "bearer": SECRET}, **changes}


def current(components: Components, name: str = "psp") -> Any:
    book = RouteBook(components.keys)
    with components.engine.begin() as conn:
        return book.current(conn, name, missing_ok=True)


def test_the_credential_is_never_stored_or_listed_in_clear(components: Components) -> None:
    components.relay_routes.propose(HOST, doc(), Origin())
    with components.engine.connect() as conn:
        rows = conn.execute(select(relay_routes)).mappings().all()
    assert rows and all(SECRET.encode() not in bytes(row["sealed"]) for row in rows)
    listed = components.relay_routes.list(HOST, Origin())
    assert SECRET not in repr(listed) and listed[0]["auth"] == {"type": "bearer"}


def test_a_draft_marked_approved_by_an_insider_does_not_open(components: Components) -> None:
    components.relay_routes.propose(HOST, doc(), Origin())
    # a second version proposed (not approved) that would widen the route to shipping
    wider = parse_config(doc(roles=["payment_gateway", "shipping"], purposes=["payment", "fulfillment"]))
    with components.engine.begin() as conn:
        RouteBook(components.keys).propose(conn, "op_x", wider)
        conn.execute(update(relay_routes).where(relay_routes.c.version == 2).values(state="approved"))
    with pytest.raises(IntegrityFailure), components.engine.begin() as conn:  # the row MAC covers `state`
        RouteBook(components.keys).current(conn, "psp")


def test_a_blob_moved_to_another_route_does_not_open(components: Components) -> None:
    components.relay_routes.propose(HOST, doc("psp"), Origin())
    components.relay_routes.propose(HOST, doc("other", upstream="https://other.example"), Origin())
    with components.engine.begin() as conn:
        row = conn.execute(select(relay_routes).where(relay_routes.c.name == "psp")).mappings().one()
        conn.execute(update(relay_routes).where(relay_routes.c.name == "other")
                     .values(sealed=row["sealed"], data_key_id=row["data_key_id"]))
    with pytest.raises(IntegrityFailure), components.engine.begin() as conn:  # the row MAC covers data_key_id
        RouteBook(components.keys).current(conn, "other")


def test_a_stale_version_cannot_be_approved_after_a_newer_one(components: Components) -> None:
    components.relay_routes.propose(HOST, doc(), Origin())
    book = RouteBook(components.keys)
    with components.engine.begin() as conn:
        v2, _ = book.propose(conn, "op_a", parse_config(doc(paths=["/v1/a"])))
        v3, _ = book.propose(conn, "op_b", parse_config(doc(paths=["/v1/b"])))
    with components.engine.begin() as conn:
        book.approve(conn, "op_c", "psp", v3)
    with pytest.raises(Conflict), components.engine.begin() as conn:
        book.approve(conn, "op_d", "psp", v2)
    assert current(components).config.paths == ("/v1/b",)
    with components.engine.connect() as conn:
        assert conn.execute(text("select count(*) from relay_routes where state = 'approved'")).scalar() == 2
