"""The checkpoint log in a real OpenBao KV v2 (bao server -dev): appends with check-and-set, cross-checked."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select

from api.wiring import Components
from kms.kv_checkpoints import CHUNK, KvCheckpointSink
from tests.conftest import make_components
from tests.support.openbao import OpenBao
from tests.vault.tokens.test_service import tokenize_one
from vault.audit.checkpoints import ZERO_HASH, last_of, line_hash, read_log
from vault.storage.schema import audit_events


def _sink(openbao: OpenBao, path: str, host: str = "h1") -> KvCheckpointSink:
    return KvCheckpointSink(openbao.client(), mount="secret", path=path, host=host)


def _numbered(count: int) -> object:
    def lines(n: int, prev: str) -> list[str]:
        out = []
        for i in range(count):
            line = f'{{"n":{n + i + 1},"prev":"{prev}"}}'
            out.append(line)
            prev = line_hash(line)
        return out
    return lines


def test_appends_chain_across_chunks_and_writers_race_safely(openbao: OpenBao) -> None:
    path = f"tv-test/{secrets.token_hex(4)}"
    sink = _sink(openbao, path)
    assert sink.append(_numbered(CHUNK - 2)) == last_of(sink.logs()["kv:h1"])  # type: ignore[arg-type]
    threads = [threading.Thread(target=sink.append, args=(_numbered(3),)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = sink.logs()["kv:h1"]
    assert len(lines) == CHUNK - 2 + 24
    prev = ZERO_HASH
    for number, line in enumerate(lines, start=1):  # one chain, no number written twice
        assert line == f'{{"n":{number},"prev":"{prev}"}}'
        prev = line_hash(line)


@pytest.fixture
def with_kv(tmp_path: Path, database_url: str, openbao: OpenBao) -> Iterator[tuple[Components, KvCheckpointSink]]:
    path = f"secret/tv-test/{secrets.token_hex(4)}"
    parts = make_components(tmp_path / "data", database_url, TOKENVAULT_AUDIT_KV=path, VAULT_ADDR=openbao.addr,
                            VAULT_TOKEN=openbao.root_token, TOKENVAULT_AUDIT_CHECKPOINT_SECONDS="3600")
    sink = next(s for s in parts.trail.sinks if isinstance(s, KvCheckpointSink))
    yield parts, sink
    parts.trail.close()
    parts.engine.dispose()


def test_the_trail_anchors_in_kv_and_verify_cross_checks_it(with_kv: tuple[Components, KvCheckpointSink],
                                                            tmp_path: Path) -> None:
    parts, sink = with_kv
    tokenize_one(parts, "email", "a@example.com")
    parts.trail.checkpoint()
    with parts.engine.connect() as conn:
        publics = parts.trail.signer.public_keys(conn)
        assert parts.trail.verify(conn).intact
    kinds = [entry["kind"] for entry in read_log(sink.name, sink.logs()[sink.name], publics).entries]
    assert kinds == ["announce", "head"]
    # The file log and the database rewritten together: the KV log still holds the chain.
    for path in (tmp_path / "data-audit-checkpoints").glob("*.jsonl"):
        path.unlink()
    with parts.engine.begin() as conn:
        conn.execute(delete(audit_events))
    with parts.engine.connect() as conn:
        report = parts.trail.verify(conn)
    assert report.broken is not None and "deleted" in report.broken.reason


def test_a_rolled_back_kv_log_is_detected(with_kv: tuple[Components, KvCheckpointSink], openbao: OpenBao) -> None:
    parts, sink = with_kv
    tokenize_one(parts, "email", "a@example.com")
    parts.trail.checkpoint()
    kv = openbao.client().secrets.kv.v2
    base = f"{sink._path}/{sink._host}"
    head = kv.read_secret_version(path=f"{base}/head", mount_point="secret",
                                  raise_on_deleted_version=True)["data"]["data"]
    kv.create_or_update_secret(path=f"{base}/head", secret={**head, "n": 1}, mount_point="secret")
    with parts.engine.connect() as conn:
        report = parts.trail.verify(conn)
    assert report.broken is not None and report.broken.reason == f"checkpoint log {sink.name} truncated or rolled back"
    with parts.engine.connect() as conn:
        assert conn.execute(select(audit_events.c.seq)).first() is not None


def test_transit_signs_checkpoints_with_a_key_that_never_leaves_it(tmp_path: Path, database_url: str,
                                                                   openbao: OpenBao) -> None:
    name = f"tv-audit-{secrets.token_hex(4)}"
    parts = make_components(tmp_path / "data", database_url, TOKENVAULT_AUDIT_SIGNING="transit",
                            TOKENVAULT_AUDIT_SIGNING_KEY=name, VAULT_ADDR=openbao.addr,
                            VAULT_TOKEN=openbao.root_token, TOKENVAULT_AUDIT_CHECKPOINT_SECONDS="3600",
                            TOKENVAULT_AUDIT_CHECKPOINT_DIR=str(tmp_path / "cp"))
    try:
        tokenize_one(parts, "email", "a@example.com")
        parts.trail.checkpoint()
        key = openbao.client().secrets.transit.read_key(name=name)["data"]
        assert key["type"] == "ed25519" and key["exportable"] is False
        with parts.engine.connect() as conn:
            assert parts.trail.verify(conn).intact
        path = next((tmp_path / "cp").glob("*.jsonl"))
        assert all(f'"key":"transit:{name}:v1"' in line for line in path.read_text().splitlines())
        # An entry re-signed with any other ed25519 key (the database's sealed one included) is refused.
        forged = path.read_text().splitlines()
        first = json.loads(forged[0])
        first["sig"] = Ed25519PrivateKey.generate().sign(b"x").hex()
        path.write_text("\n".join([json.dumps(first, sort_keys=True, separators=(",", ":")), *forged[1:]]) + "\n")
        with parts.engine.connect() as conn:
            report = parts.trail.verify(conn)
        assert report.broken is not None and "signature invalid at entry 1" in report.broken.reason
    finally:
        parts.trail.close()
        parts.engine.dispose()
