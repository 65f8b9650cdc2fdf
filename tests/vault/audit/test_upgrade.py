"""An existing database upgrades to 0016a via `tokenvault init` and its old trail still verifies."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from sqlalchemy import select, text

from tests.conftest import Clock, make_components
from tests.vault.audit.test_tamper import report, rows
from tests.vault.tokens.test_service import CARD, tokenize_one
from vault.audit.chain import GENESIS, mac_of
from vault.storage.engine import create_engine_for
from vault.storage.migrate import alembic_config, upgrade


def test_an_old_trail_upgrades_and_keeps_verifying(tmp_path: Path, database_url: str, clock: Clock) -> None:
    parts = make_components(tmp_path / "data", database_url, clock, TOKENVAULT_AUDIT_CHECKPOINT_SECONDS="3600")
    engine = create_engine_for(database_url)
    config = alembic_config()
    with parts.engine.begin() as conn:  # the audit key, read while the current schema (key epochs) is there
        key_id, key = parts.keys.active_hmac_key(conn, "audit")
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0004")
    with parts.engine.begin() as conn:  # what a 0004 vault wrote: MACs without seq, one chain
        prev = GENESIS
        for chain_seq in (1, 2, 3):
            row = {"seq": 10 + chain_seq, "at": datetime.now(UTC), "actor": "old", "role": "system",
                   "action": "tokenize", "outcome": "allowed", "writer": "oldhost:1:abc", "chain_seq": chain_seq,
                   "mac_key_id": key_id, "prev_mac": prev}
            row["mac"] = prev = mac_of(key.expose(), prev, row)
            conn.execute(text(
                "INSERT INTO audit_events (seq, at, actor, role, action, outcome, writer, chain_seq, mac_key_id, "
                "prev_mac, mac) VALUES (:seq, :at, :actor, :role, :action, :outcome, :writer, :chain_seq, "
                ":mac_key_id, :prev_mac, :mac)"), row)
    upgrade(engine)
    engine.dispose()
    assert parts.trail.adopt(parts.engine) == 1  # what `tokenvault init` does after the upgrade
    found = report(parts)
    assert found.intact and found.anchored and found.events == 3, found.broken
    tokenize_one(parts, "card", CARD)
    parts.trail.checkpoint()
    found = report(parts)
    assert found.intact and found.anchored and found.events == 4, found.broken
    assert int(str(rows(parts)[-1]["seq"])) > 13
    with parts.engine.connect() as conn:
        assert conn.execute(select(text("mac_scheme")).select_from(text("audit_events"))
                            .where(text("actor = 'old'"))).scalars().all() == [1, 1, 1]
    parts.trail.close()
    parts.engine.dispose()


def test_init_never_anchors_chains_after_the_log_was_lost(tmp_path: Path, sqlite_url: str) -> None:
    """Deleting the log and running `tokenvault init` again must not launder the loss."""
    parts = make_components(tmp_path / "data", sqlite_url, TOKENVAULT_AUDIT_CHECKPOINT_DIR=str(tmp_path / "cp"))
    tokenize_one(parts, "card", CARD)
    parts.trail.checkpoint()
    for path in (tmp_path / "cp").glob("*.jsonl"):
        path.unlink()
    assert parts.trail.adopt(parts.engine) == 0
    found = report(parts)
    assert found.broken is not None and "deleted" in found.broken.reason
