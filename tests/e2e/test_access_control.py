"""The real server (`tokenvault init` + `serve`, two gunicorn workers): shared rate limits, an operator's day.

The rate-limit test needs Redis: TOKENVAULT_TEST_REDIS_URL, else redis://127.0.0.1:6379/0.
Where it is absent the test skips with the reason, unless TOKENVAULT_REQUIRE_SERVICES=1 (CI),
which makes it fail.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pyotp
import pytest
import redis
import requests
from sqlalchemy import func, select

from tests.support.operators import seed_of
from tests.support.server import running_server
from vault.access.totp import STEP_SECONDS
from vault.storage.engine import create_engine_for
from vault.storage.schema import audit_events

CARD = {"pan": "4111111111111111", "exp_month": 12, "exp_year": 2099}


def redis_url() -> str:
    url = os.environ.get("TOKENVAULT_TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        reason = f"Redis not reachable at {url} ({type(exc).__name__})"
        if os.environ.get("TOKENVAULT_REQUIRE_SERVICES"):
            pytest.fail(reason + "; TOKENVAULT_REQUIRE_SERVICES makes it mandatory")
        pytest.skip(reason)
    return url


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_detokenize_quota_is_shared_by_both_workers_through_redis(tmp_path: Path) -> None:
    url = redis_url()
    with running_server(tmp_path / "var", TOKENVAULT_REDIS_URL=url,
                        TOKENVAULT_DETOKENIZE_RATE_LIMIT="5/day") as server:
        checkout = server.client_key("checkout")
        gateway = json.loads(server.cli("clients", "create", "--name", "gw", "--role", "payment_gateway"))
        token = requests.post(server.url + "/v1/tokens", json={"kind": "card", "value": CARD},
                              headers=bearer(checkout), timeout=30).json()["token"]
        answers: list[requests.Response] = []
        lock = threading.Lock()

        def call(barrier: threading.Barrier) -> None:
            barrier.wait()  # at once: sync workers take one request each, so both workers serve
            answer = requests.post(server.url + "/v1/detokenize", json={"tokens": [token], "purpose": "payment"},
                                   headers=bearer(gateway["api_key"]), timeout=30)
            with lock:
                answers.append(answer)

        for _ in range(3):
            barrier = threading.Barrier(4)
            threads = [threading.Thread(target=call, args=(barrier,)) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [200] * 5 + [429] * 7  # in-process counters would let up to 10 through
        refused = [a for a in answers if a.status_code == 429]
        assert all(int(a.headers["Retry-After"]) >= 1 for a in refused)
        assert refused[0].json()["error"]["code"] == "rate_limited"
        assert redis.Redis.from_url(url).keys(f"*{gateway['client_id']}*")
        engine = create_engine_for(f"sqlite:///{tmp_path / 'var' / 'tokenvault.db'}")
        with engine.connect() as conn:
            alerts = conn.execute(select(func.count()).select_from(audit_events).where(
                audit_events.c.action == "rate_limit", audit_events.c.outcome == "denied",
                audit_events.c.actor == gateway["client_id"])).scalar_one()
            writers = conn.execute(select(audit_events.c.writer).where(
                audit_events.c.actor == gateway["client_id"])).scalars().all()
        engine.dispose()
        assert alerts == 7
        assert len({writer.split(":")[1] for writer in writers}) == 2  # both worker processes answered


def test_an_operator_is_created_logs_in_and_steps_up(tmp_path: Path) -> None:
    with running_server(tmp_path / "var") as server:
        created = json.loads(server.cli("operators", "create", "--name", "alice", "--role", "admin").splitlines()[0])
        assert set(created) == {"operator_id", "username", "enrolment_code", "expires_at"}  # no credentials
        code, password = created["enrolment_code"], "alice's own passphrase"
        refused = requests.post(server.url + "/v1/auth/login", timeout=30, json={
            "username": "alice", "password": password, "totp": "123456"})
        assert refused.status_code == 401  # not before enrolling
        began = requests.post(server.url + "/v1/enrolment/begin", timeout=30, json={"code": code, "password": password})
        assert began.status_code == 200
        totp = pyotp.TOTP(seed_of(began.json()["totp_uri"]))
        now = int(time.time())
        confirmed = requests.post(server.url + "/v1/enrolment/confirm", timeout=30,
                                  json={"code": code, "totp": totp.at(now - STEP_SECONDS)})
        assert confirmed.status_code == 200
        login = requests.post(server.url + "/v1/auth/login", timeout=30, json={
            "username": "alice", "password": password, "totp": totp.at(now)})
        assert login.status_code == 200
        session = bearer(login.json()["session_token"])
        body = {"username": "bob", "role": "auditor"}
        assert requests.post(server.url + "/v1/operators", json=body, headers=session, timeout=30).status_code == 401
        stepped = requests.post(server.url + "/v1/operators", json=body, timeout=30,
                                headers={**session, "X-TOTP": totp.at(now + STEP_SECONDS)})
        assert stepped.status_code == 201 and stepped.json()["username"] == "bob"
        assert "password" not in stepped.json() and len(stepped.json()["enrolment_code_first_half"]) == 32
