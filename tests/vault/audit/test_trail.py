"""Tamper evidence of the audit trail, on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete, func, insert, select, text, update

from api.wiring import Components
from tests.conftest import make_components
from tests.vault.tokens.test_service import CARD, CHECKOUT, GATEWAY, HERE, read, tokenize_one
from vault.audit.trail import AuditEvent, AuditTrail
from vault.storage.schema import audit_events


@pytest.fixture
def audited(tmp_path: Path, database_url: str) -> Iterator[Components]:
    """Components with a checkpoint sink, and a little traffic on two connections."""
    parts = make_components(tmp_path / "data", database_url,
                            TOKENVAULT_AUDIT_CHECKPOINT_DIR=str(tmp_path / "checkpoints"))
    for _ in range(3):
        record = tokenize_one(parts, "card", CARD)
        read(parts, GATEWAY, record.token, "payment")
    yield parts
    parts.trail.close()
    parts.engine.dispose()


def verify(parts: Components) -> tuple[bool, str | None]:
    with parts.engine.connect() as conn:
        report = parts.trail.verify(conn)
    return report.intact, report.broken.reason if report.broken else None


def events(parts: Components) -> list[dict[str, object]]:
    with parts.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(audit_events).order_by(audit_events.c.seq)).mappings()]


def test_untouched_trail_verifies(audited: Components) -> None:
    assert verify(audited) == (True, None)
    assert len(events(audited)) == 6


def test_modified_event_is_detected(audited: Components) -> None:
    target = events(audited)[2]["seq"]
    with audited.engine.begin() as conn:
        conn.execute(update(audit_events).where(audit_events.c.seq == target).values(actor="someone-else"))
    assert verify(audited) == (False, "event modified")


def test_deleted_event_is_detected(audited: Components) -> None:
    target = events(audited)[1]
    with audited.engine.begin() as conn:
        conn.execute(delete(audit_events).where(audit_events.c.seq == target["seq"]))
    ok, reason = verify(audited)
    assert not ok and reason == "event missing before this one"


def test_inserted_event_is_detected(audited: Components) -> None:
    """A forged event copying a real one's chain fields still cannot carry a valid MAC."""
    original = events(audited)[2]
    forged = {**original, "action": "tokenize", "actor": "ghost", "chain_seq": 3}
    forged.pop("seq")
    with audited.engine.begin() as conn:
        conn.execute(update(audit_events).where(audit_events.c.writer == original["writer"],
                                                audit_events.c.chain_seq >= 3)
                     .values(chain_seq=audit_events.c.chain_seq + 1000))
        conn.execute(insert(audit_events).values(**forged))
    ok, reason = verify(audited)
    assert not ok and reason in {"event modified", "event missing before this one"}


def test_reordered_events_are_detected(audited: Components) -> None:
    rows = events(audited)
    first, second = rows[1], rows[2]
    assert first["writer"] == second["writer"]
    with audited.engine.begin() as conn:
        conn.execute(update(audit_events).where(audit_events.c.seq == first["seq"]).values(seq=-1))
        conn.execute(update(audit_events).where(audit_events.c.seq == second["seq"]).values(seq=first["seq"]))
        conn.execute(update(audit_events).where(audit_events.c.seq == -1).values(seq=second["seq"]))
    ok, reason = verify(audited)
    assert not ok and reason == "event modified"  # `seq` is under the MAC


def test_truncated_tail_is_detected_by_checkpoints(audited: Components) -> None:
    assert audited.trail.checkpoint(audited.engine, all_writers=True) >= 1
    last = events(audited)[-1]
    with audited.engine.begin() as conn:
        conn.execute(delete(audit_events).where(audit_events.c.seq == last["seq"]))
    ok, reason = verify(audited)
    assert not ok and reason == "events truncated: a checkpointed event is missing"


def test_concurrent_writers_keep_verifiable_chains(audited: Components) -> None:
    def work() -> None:
        for _ in range(10):
            tokenize_one(audited, "email", "a@example.com")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert verify(audited) == (True, None)
    with audited.engine.connect() as conn:
        writers = conn.execute(select(func.count(func.distinct(audit_events.c.writer)))).scalar_one()
    assert writers >= 1
    assert len(events(audited)) == 46


def test_rolled_back_events_leave_no_gap(audited: Components) -> None:
    with pytest.raises(RuntimeError), audited.engine.begin() as conn:
        audited.trail.record(conn, [AuditEvent(at=audited.trail._clock(), actor="x", role="y", action="probe",
                                               outcome="allowed")])
        raise RuntimeError("abort the transaction")
    tokenize_one(audited, "email", "a@example.com")
    assert verify(audited) == (True, None)


def test_audit_key_is_never_stored_unwrapped(audited: Components) -> None:
    with audited.engine.connect() as conn:
        wrapped = conn.execute(text("SELECT wrapped FROM domain_keys WHERE purpose = 'audit'")).scalar_one()
    assert wrapped.startswith("local:v")


def test_checkpointer_writes_only_committed_heads(tmp_path: Path, sqlite_url: str) -> None:
    parts = make_components(tmp_path / "data", sqlite_url, TOKENVAULT_AUDIT_CHECKPOINT_DIR=str(tmp_path / "cp"))
    tokenize_one(parts, "email", "a@example.com")
    assert isinstance(parts.trail, AuditTrail)
    assert parts.trail.checkpoint() == 1  # the writer used by this process
    assert verify(parts) == (True, None)
    assert CHECKOUT.role == "checkout" and HERE.request_id


def _heads_in_sink(directory: Path) -> list[int]:
    lines = [json.loads(line) for path in directory.glob("*.jsonl") for line in path.read_text().splitlines()]
    return [int(entry["chain_seq"]) for entry in lines if entry["kind"] == "head"]


def _wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_api_writers_checkpoint_by_time(tmp_path: Path, database_url: str) -> None:
    parts = make_components(tmp_path / "data", database_url, TOKENVAULT_AUDIT_CHECKPOINT_DIR=str(tmp_path / "cp"),
                            TOKENVAULT_AUDIT_CHECKPOINT_SECONDS="0.2")
    try:
        tokenize_one(parts, "email", "a@example.com")
        assert _wait_for(lambda: _heads_in_sink(tmp_path / "cp") == [1])
    finally:
        parts.trail.close()
        parts.engine.dispose()


def test_api_writers_checkpoint_every_thousand_events(tmp_path: Path, database_url: str) -> None:
    parts = make_components(tmp_path / "data", database_url, TOKENVAULT_AUDIT_CHECKPOINT_DIR=str(tmp_path / "cp"),
                            TOKENVAULT_AUDIT_CHECKPOINT_SECONDS="3600")
    try:
        event = AuditEvent(at=datetime.now(UTC), actor="x", role="y", action="probe", outcome="allowed")
        with parts.engine.begin() as conn:
            parts.trail.record(conn, [event] * 999)
        time.sleep(0.3)
        assert _heads_in_sink(tmp_path / "cp") == []
        with parts.engine.begin() as conn:
            parts.trail.record(conn, [event])
        assert _wait_for(lambda: max(_heads_in_sink(tmp_path / "cp"), default=0) == 1000)
    finally:
        parts.trail.close()
        parts.engine.dispose()


def test_graceful_close_anchors_the_last_events(tmp_path: Path, database_url: str) -> None:
    parts = make_components(tmp_path / "data", database_url, TOKENVAULT_AUDIT_CHECKPOINT_DIR=str(tmp_path / "cp"),
                            TOKENVAULT_AUDIT_CHECKPOINT_SECONDS="3600")
    tokenize_one(parts, "email", "a@example.com")
    assert _heads_in_sink(tmp_path / "cp") == []
    parts.trail.close()
    assert _heads_in_sink(tmp_path / "cp") == [1]
    parts.engine.dispose()


def test_checkpoint_lines_are_mirrored_to_syslog_over_tcp(tmp_path: Path, sqlite_url: str) -> None:
    """RFC 5424 messages, octet-counted (RFC 6587), carrying the same signed lines as the log."""
    received = bytearray()
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def collect() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(65536):
                received.extend(chunk)

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    parts = make_components(tmp_path / "data", sqlite_url, TOKENVAULT_AUDIT_CHECKPOINT_DIR=str(tmp_path / "cp"),
                            TOKENVAULT_AUDIT_SYSLOG=f"127.0.0.1:{port}", TOKENVAULT_AUDIT_CHECKPOINT_SECONDS="3600")
    tokenize_one(parts, "email", "a@example.com")
    parts.trail.close()
    parts.engine.dispose()
    assert _wait_for(lambda: received.count(b"<110>1 ") == 2)
    server.close()
    frames, data = [], bytes(received)
    while data:
        size, _, rest = data.partition(b" ")
        frames.append(rest[: int(size)].decode())
        data = rest[int(size):]
    logged = [line for path in (tmp_path / "cp").glob("*.jsonl") for line in path.read_text().splitlines()]
    assert [frame.split(" checkpoint - ", 1)[1] for frame in frames] == logged
    assert all(frame.startswith("<110>1 ") and " tokenvault " in frame for frame in frames)
