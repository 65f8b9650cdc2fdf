"""The tamper matrix: an insider edits the database or the checkpoint sink directly (SQLite and PostgreSQL).

Each case is detected with its own reason, or falls inside the documented window (events
after the last checkpoint) and is reported as un-anchored, with its size.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select, update

from api.wiring import Components, build
from tests.conftest import Clock, make_components
from tests.vault.tokens.test_service import CARD, GATEWAY, read, tokenize_one
from vault.audit.chain import mac_of
from vault.audit.trail import HOST, AuditEvent
from vault.audit.verification import Verification
from vault.storage.schema import audit_archives, audit_events, audit_sink_heads, audit_verify_jobs, domain_keys


@pytest.fixture
def audited(tmp_path: Path, database_url: str, clock: Clock) -> Iterator[Components]:
    """A vault whose trail holds a few events on one chain, all anchored by a checkpoint."""
    parts = make_components(tmp_path / "data", database_url, clock,
                            TOKENVAULT_AUDIT_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
                            TOKENVAULT_AUDIT_CHECKPOINT_SECONDS="3600")  # the tests checkpoint by hand
    for _ in range(3):
        record = tokenize_one(parts, "card", CARD)
        read(parts, GATEWAY, record.token, "payment")
    parts.trail.checkpoint()
    yield parts
    parts.trail.close()
    parts.engine.dispose()


def report(parts: Components) -> Verification:
    with parts.engine.connect() as conn:
        return parts.trail.verify(conn)


def reason(parts: Components) -> str | None:
    found = report(parts)
    return found.broken.reason if found.broken else None


def rows(parts: Components) -> list[dict[str, object]]:
    with parts.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(audit_events).order_by(audit_events.c.seq)).mappings()]


def edit(parts: Components, *statements: object) -> None:
    with parts.engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[call-overload]


def sink_file(tmp_path: Path) -> Path:
    return next((tmp_path / "checkpoints").glob("checkpoints-*.jsonl"))


def cli_writer(parts: Components) -> str:
    """What a short-lived command does: a fresh process (new chain) writes one event and closes."""
    command = build(parts.settings)
    with command.engine.begin() as conn:
        command.trail.record(conn, [AuditEvent(at=datetime.now(UTC), actor=HOST.id, role=HOST.role,
                                               action="create_client", outcome="allowed")])
        writer = str(conn.execute(select(audit_events.c.writer).order_by(audit_events.c.seq.desc())).scalar())
    command.trail.close()
    command.engine.dispose()
    return writer


def test_untouched_trail_verifies_and_is_anchored(audited: Components) -> None:
    found = report(audited)
    assert found.intact and found.anchored and found.unanchored == [] and found.events == 6


def test_modify(audited: Components) -> None:
    edit(audited, update(audit_events).where(audit_events.c.seq == rows(audited)[2]["seq"]).values(actor="x"))
    assert reason(audited) == "event modified"


def test_delete_from_the_middle(audited: Components) -> None:
    edit(audited, delete(audit_events).where(audit_events.c.seq == rows(audited)[1]["seq"]))
    assert reason(audited) == "event missing before this one"


def test_delete_the_anchored_tail(audited: Components) -> None:
    edit(audited, delete(audit_events).where(audit_events.c.seq == rows(audited)[-1]["seq"]))
    assert reason(audited) == "events truncated: a checkpointed event is missing"


def test_delete_a_tail_inside_the_window_is_reported_unanchored(audited: Components, clock: Clock) -> None:
    """Events after the last checkpoint (a writer killed before its next one) can go: reported with their count."""
    tokenize_one(audited, "email", "a@example.com")
    tokenize_one(audited, "email", "b@example.com")
    found = report(audited)
    assert found.intact and [t.events for t in found.unanchored] == [2] and found.anchored  # still in the window
    clock.advance(60)
    found = report(audited)
    assert found.intact and not found.anchored and found.unanchored[0].stale
    edit(audited, delete(audit_events).where(audit_events.c.seq == rows(audited)[-1]["seq"]))
    found = report(audited)
    assert found.intact and [t.events for t in found.unanchored] == [1]


def test_delete_an_api_writers_whole_chain(audited: Components) -> None:
    edit(audited, delete(audit_events))
    assert reason(audited) == "chain deleted: its checkpointed events are missing"


def test_delete_a_cli_writers_whole_chain(audited: Components) -> None:
    writer = cli_writer(audited)
    assert reason(audited) is None and report(audited).anchored
    edit(audited, delete(audit_events).where(audit_events.c.writer == writer))
    found = report(audited)
    assert found.broken is not None and found.broken.writer == writer
    assert found.broken.reason == "chain deleted: its checkpointed events are missing"


def test_insert_a_forged_event_without_keys(audited: Components) -> None:
    last = rows(audited)[-1]
    forged = {**last, "seq": int(str(last["seq"])) + 100, "chain_seq": int(str(last["chain_seq"])) + 1,
              "prev_mac": last["mac"], "mac": secrets.token_bytes(32), "actor": "ghost"}
    edit(audited, insert(audit_events).values(**forged))
    assert reason(audited) == "event modified"


def test_insert_a_forged_event_with_a_key_of_another_purpose(audited: Components) -> None:
    """Someone who holds (or can compute MACs with) the index key still cannot forge an audit event."""
    last = rows(audited)[-1]
    with audited.engine.connect() as conn:
        other = str(conn.execute(select(domain_keys.c.id).where(domain_keys.c.purpose == "index")).scalar())
        key = audited.keys.hmac_key_by_id(conn, other, "index").expose()
    forged = {**last, "seq": int(str(last["seq"])) + 100, "chain_seq": int(str(last["chain_seq"])) + 1,
              "prev_mac": last["mac"], "actor": "ghost", "mac_key_id": other}
    forged["mac"] = mac_of(key, bytes(last["mac"]), forged)  # type: ignore[arg-type]
    edit(audited, insert(audit_events).values(**forged))
    assert reason(audited) == "MAC key is not an audit key"


def test_reorder(audited: Components) -> None:
    first, second = rows(audited)[1:3]
    edit(audited, update(audit_events).where(audit_events.c.seq == first["seq"]).values(seq=-1),
         update(audit_events).where(audit_events.c.seq == second["seq"]).values(seq=first["seq"]),
         update(audit_events).where(audit_events.c.seq == -1).values(seq=second["seq"]))
    assert reason(audited) == "event modified"


def test_move_between_writers(audited: Components) -> None:
    writer = cli_writer(audited)
    last = rows(audited)[-2]  # the API chain's head
    assert last["writer"] != writer
    edit(audited, update(audit_events).where(audit_events.c.seq == last["seq"]).values(writer=writer, chain_seq=2))
    assert reason(audited) in {"event modified", "link to previous event broken"}


def test_rename_a_writer(audited: Components) -> None:
    edit(audited, update(audit_events).values(writer="renamed:1:abc"))
    assert reason(audited) == "event modified"


def test_swap_seq_between_writers(audited: Components) -> None:
    writer = cli_writer(audited)
    mine = rows(audited)[-1]
    theirs = rows(audited)[-2]
    assert mine["writer"] == writer and theirs["writer"] != writer
    edit(audited, update(audit_events).where(audit_events.c.seq == mine["seq"]).values(seq=-1),
         update(audit_events).where(audit_events.c.seq == theirs["seq"]).values(seq=mine["seq"]),
         update(audit_events).where(audit_events.c.seq == -1).values(seq=theirs["seq"]))
    assert reason(audited) == "event modified"


def test_forged_archive_rows_cannot_hide_the_trail(audited: Components) -> None:
    """Issue case 1: delete every event, insert one archive record per writer naming the head."""
    heads = {r["writer"]: r for r in rows(audited)}
    edit(audited, delete(audit_events))
    for writer, head in heads.items():
        edit(audited, insert(audit_archives).values(
            writer=writer, chain_seq=head["chain_seq"], mac=head["mac"], archive="x", archived_at=datetime.now(UTC),
            last_seq=head["seq"], mac_key_id=head["mac_key_id"], record_mac=secrets.token_bytes(32)))
    assert reason(audited) == "archive record forged or modified"
    edit(audited, update(audit_archives).values(record_mac=None))
    assert reason(audited) == "archive record refused: archive record not sealed"


def test_checkpoint_log_deleted(audited: Components, tmp_path: Path) -> None:
    sink_file(tmp_path).unlink()
    assert reason(audited) is not None and "deleted" in str(reason(audited))


def test_checkpoint_log_truncated(audited: Components, tmp_path: Path) -> None:
    path = sink_file(tmp_path)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    assert reason(audited) == f"checkpoint log file:{path.name[12:-6]} truncated or rolled back"


def test_checkpoint_log_rolled_back(audited: Components, tmp_path: Path) -> None:
    path = sink_file(tmp_path)
    old = path.read_text()
    tokenize_one(audited, "email", "a@example.com")
    audited.trail.checkpoint()
    path.write_text(old)  # an older, authentic copy
    assert str(reason(audited)).endswith("truncated or rolled back")


def test_checkpoint_log_entry_forged(audited: Components, tmp_path: Path) -> None:
    path = sink_file(tmp_path)
    path.write_text(path.read_text().replace('"chain_seq":6', '"chain_seq":3'))
    assert str(reason(audited)).startswith("checkpoint log file:")


def test_checkpoint_log_and_its_database_record_deleted(audited: Components, tmp_path: Path) -> None:
    """Even with the sink head row gone too, the chains the log announced are not announced any more."""
    sink_file(tmp_path).unlink()
    edit(audited, delete(audit_sink_heads))
    assert reason(audited) == "chain not announced in the checkpoint log (forged, or the log lost)"


def test_audit_key_row_replaced(audited: Components) -> None:
    edit(audited, update(domain_keys).where(domain_keys.c.purpose == "audit").values(wrapped="local:v1:AAAA"))
    fresh = build(audited.settings)  # a new process: nothing cached
    try:
        assert reason(fresh) == "audit key unreadable"
    finally:
        fresh.engine.dispose()


def test_seq_is_never_reused_after_a_deleted_tail(audited: Components) -> None:
    last = rows(audited)[-1]
    edit(audited, delete(audit_events).where(audit_events.c.seq == last["seq"]))
    tokenize_one(audited, "email", "a@example.com")
    assert int(str(rows(audited)[-1]["seq"])) > int(str(last["seq"]))


def test_verification_resumes_from_the_last_verified_anchor(audited: Components) -> None:
    """A second run walks only the new events; the anchors it skips over are still checked."""
    job = audited.audit_log.start_local_job("host")
    first = audited.audit_log.run_job(job)
    assert first is not None and first.intact and not first.incremental and first.events == 6
    tokenize_one(audited, "email", "a@example.com")
    audited.trail.checkpoint()
    second = audited.audit_log.run_job(audited.audit_log.start_local_job("host"))
    assert second is not None and second.intact and second.incremental
    assert second.events == 2  # the new event, plus the verification's own `verify_audit_result`
    # An edit before the resume point escapes an incremental run (by design) but not --full ...
    edit(audited, update(audit_events).where(audit_events.c.seq == rows(audited)[1]["seq"]).values(actor="x"))
    full = audited.audit_log.run_job(audited.audit_log.start_local_job("host"), full=True)
    assert full is not None and full.broken is not None and full.broken.reason == "event modified"


def test_deleting_the_event_a_resumed_run_starts_from_is_caught(audited: Components) -> None:
    audited.audit_log.run_job(audited.audit_log.start_local_job("host"))
    anchored = rows(audited)[5]  # the checkpointed head; the run's own event came after it
    edit(audited, delete(audit_events).where(audit_events.c.seq == anchored["seq"]))
    again = audited.audit_log.run_job(audited.audit_log.start_local_job("host"))
    assert again is not None and again.incremental and again.broken is not None
    assert again.broken.reason == "events truncated: a checkpointed event is missing"


def test_a_forged_resume_point_is_ignored(audited: Components) -> None:
    audited.audit_log.run_job(audited.audit_log.start_local_job("host"))
    edit(audited, update(audit_verify_jobs).values(resume='{"key_id": "x", "state": "{}", "mac": "00"}'))
    again = audited.audit_log.run_job(audited.audit_log.start_local_job("host"))
    assert again is not None and again.intact and not again.incremental
