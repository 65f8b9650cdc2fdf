"""Archiving while the vault serves: chains stay continuous, seq never reused, records authenticated."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from tests.conftest import Clock, make_components
from tests.vault.audit.test_tamper import report, rows
from tests.vault.tokens.test_service import CARD, tokenize_one
from vault.audit.archive import archive_events, verify_archive_files
from vault.storage.schema import audit_archives


def test_archiving_while_serving_keeps_every_chain_continuous(tmp_path: Path, database_url: str,
                                                               clock: Clock) -> None:
    """Issue case 7: the serving writer's whole chain is archived, then it writes again."""
    parts = make_components(tmp_path / "data", database_url, clock, TOKENVAULT_AUDIT_CHECKPOINT_SECONDS="3600")
    try:
        for _ in range(3):
            tokenize_one(parts, "card", CARD)
        parts.trail.checkpoint()
        archived_seqs = [int(str(r["seq"])) for r in rows(parts)]
        clock.advance(10)
        with parts.engine.begin() as conn:
            done = archive_events(parts.keys, conn, clock.now - timedelta(seconds=5), tmp_path / "archive", clock.now)
        assert done.events == 3 and rows(parts) == []
        tokenize_one(parts, "card", CARD)  # same process, same pooled connection: same writer
        parts.trail.checkpoint()
        after = rows(parts)
        assert len(after) == 1 and int(str(after[0]["chain_seq"])) == 4
        assert int(str(after[0]["seq"])) > max(archived_seqs)  # never reused
        found = report(parts)
        assert found.intact, found.broken
        assert found.anchored and found.archives == 1
        with parts.engine.connect() as conn:
            assert verify_archive_files(parts.keys, conn, tmp_path / "archive") == []
            record = conn.execute(select(audit_archives)).mappings().one()
        assert record["last_seq"] == max(archived_seqs) and record["record_mac"] is not None
    finally:
        parts.trail.close()
        parts.engine.dispose()
