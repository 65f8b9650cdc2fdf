"""`tokenvault operators|auth|approvals|policy` and `clients rotate`, against a real database (real time).

TOTP codes are made just before each command from the current time, choosing a time
step this operator has not used yet (the vault accepts each step once).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path

import pyotp
import pytest
from click.testing import CliRunner
from sqlalchemy import delete

from api.cli.access import qr_text
from api.cli.main import main
from api.settings import Settings
from api.wiring import build
from tests.conftest import make_components
from tests.support.operators import PASSWORD, seed_of
from vault.access.totp import STEP_SECONDS
from vault.audit.trail import Origin
from vault.keys.row_mac import RowMacs
from vault.secret import Secret
from vault.storage.schema import operators, totp_uses


@pytest.fixture
def env(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "TOKENVAULT_DATA_DIR": str(tmp_path / "data"),
        "TOKENVAULT_DATABASE_URL": database_url,
        "TOKENVAULT_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "TOKENVAULT_AUDIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "TOKENVAULT_LOG_LEVEL": "warning",
        "TOKENVAULT_ARGON2_TIME_COST": "1",
        "TOKENVAULT_ARGON2_MEMORY_KIB": "64",
        "TOKENVAULT_ARGON2_PARALLELISM": "1",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    make_components(tmp_path / "data", database_url, **values).engine.dispose()
    return values


def run(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, result.output


class Codes:
    """Fresh TOTP codes per operator: never a time step already used."""

    def __init__(self) -> None:
        self.used: dict[str, set[int]] = {}

    def next(self, seed: str) -> str:
        now = int(time.time()) // STEP_SECONDS
        used = self.used.setdefault(seed, set())
        step = next(s for s in (now, now + 1, now - 1) if s not in used)
        used.add(step)
        return pyotp.TOTP(seed).at(step * STEP_SECONDS)


def enrol(codes: Codes, enrolment_code: str, password: str = PASSWORD) -> str:
    """`operators enrol` then `operators confirm`, as the new operator; the enrolled otpauth URI.

    Confirming claims a time step; the claim is dropped again (as tests/support/operators.py does) so
    that `codes` still has three steps to hand out for this operator.
    """
    code, out = run("operators", "enrol", stdin=f"{enrolment_code}\n{password}\n")
    assert code == 0, out
    uri: str = json.loads(out.splitlines()[0])["totp_uri"]
    code, out = run("operators", "confirm", stdin=f"{enrolment_code}\n{pyotp.TOTP(seed_of(uri)).now()}\n")
    assert code == 0 and json.loads(out.splitlines()[0])["enrolled"] is True, out
    operator_id = json.loads(out.splitlines()[0])["id"]
    parts = build(Settings.from_env())  # the operator row's used steps are MACed: reset through RowMacs
    try:
        with parts.engine.begin() as conn:
            conn.execute(delete(totp_uses).where(totp_uses.c.operator_id == operator_id))
            RowMacs(parts.keys).update(conn, operators, operator_id, {"totp_used_steps": None})
    finally:
        parts.trail.close()
        parts.engine.dispose()
    codes.used.pop(seed_of(uri), None)
    return uri


def create(name: str, role: str, codes: Codes) -> dict[str, str]:
    """Created on the host and enrolled by the operator: {id, username, totp_uri}."""
    code, out = run("operators", "create", "--name", name, "--role", role)
    assert code == 0, out
    created: dict[str, str] = json.loads(out.splitlines()[0])
    return {"id": created["operator_id"], "username": name,
            "totp_uri": enrol(codes, created["enrolment_code"])}


def session(codes: Codes, created: dict[str, str]) -> str:
    code, out = run("auth", "login", "--username", created["username"], "--password-stdin",
                    "--totp", codes.next(seed_of(created["totp_uri"])), stdin=PASSWORD + "\n")
    assert code == 0, out
    token: str = json.loads(out)["session_token"]
    return token


def test_operators_create_prints_an_enrolment_code_and_no_credentials(env: dict[str, str]) -> None:
    code, out = run("operators", "create", "--name", "alice", "--role", "admin")
    assert code == 0
    created = json.loads(out.splitlines()[0])
    assert set(created) == {"operator_id", "username", "enrolment_code", "expires_at"}
    assert len(created["enrolment_code"]) == 64 and "operators enrol" in out
    listed = run("operators", "list")[1]
    assert "alice" in listed and created["enrolment_code"] not in listed
    assert run("operators", "create", "--name", "alice", "--role", "admin")[0] == 2
    assert run("operators", "create", "--name", "eve", "--role", "checkout")[0] == 2
    assert run("auth", "login", "--username", "alice", "--password-stdin", "--totp", "123456",
               stdin=PASSWORD + "\n")[0] == 2  # not before enrolling
    codes = Codes()
    uri = enrol(codes, created["enrolment_code"])
    assert uri.startswith("otpauth://totp/TokenVault:alice?")
    again = run("operators", "enrol", stdin=f"{created['enrolment_code']}\nanother password!\n")
    assert again[0] == 2 and "invalid or expired enrolment code" in again[1]  # single use
    assert session(codes, {"username": "alice", "totp_uri": uri})


def test_forced_reenrolment_and_own_password_change(env: dict[str, str]) -> None:
    codes = Codes()
    alice, bob, dave = create("alice", "admin", codes), create("bob", "admin", codes), create("dave", "auditor", codes)
    alice_session, bob_session = session(codes, alice), session(codes, bob)
    code, out = run("operators", "reenrol", "dave", "--session", alice_session,
                    "--totp", codes.next(seed_of(alice["totp_uri"])))
    assert code == 0, out
    filed = json.loads(out.splitlines()[0])
    first = filed["enrolment_code_first_half"]
    code, out = run("approvals", "approve", filed["approval"]["id"], "--session", bob_session,
                    "--totp", codes.next(seed_of(bob["totp_uri"])))
    assert code == 0, out
    second = json.loads(out.splitlines()[0])["shown_once"]["enrolment_code_second_half"]
    assert run("operators", "enrol", stdin=f"{first}{first}\n{PASSWORD}\n")[0] == 2
    assert run("auth", "login", "--username", "dave", "--password-stdin", "--totp",
               codes.next(seed_of(dave["totp_uri"])), stdin=PASSWORD + "\n")[0] == 2
    dave["totp_uri"] = enrol(codes, first + second)
    dave_session = session(codes, dave)
    code, out = run("auth", "password", "--session", dave_session, "--totp", codes.next(seed_of(dave["totp_uri"])),
                    stdin=f"{PASSWORD}\na brand new passphrase\n")
    assert code == 0 and json.loads(out)["sessions_revoked"] == 1, out
    assert run("auth", "login", "--username", "dave", "--password-stdin", "--totp",
               codes.next(seed_of(dave["totp_uri"])), stdin="a brand new passphrase\n")[0] == 0


def test_host_reissue_is_a_break_glass_reset(env: dict[str, str]) -> None:
    codes = Codes()
    alice = create("alice", "admin", codes)
    code, out = run("operators", "reissue", "alice")
    assert code == 0
    fresh = json.loads(out.splitlines()[0])["enrolment_code"]
    assert run("auth", "login", "--username", "alice", "--password-stdin", "--totp",
               codes.next(seed_of(alice["totp_uri"])), stdin=PASSWORD + "\n")[0] == 2
    alice["totp_uri"] = enrol(codes, fresh)
    assert session(codes, alice)


def test_login_and_a_step_up_action_with_dual_control(env: dict[str, str]) -> None:
    codes = Codes()
    alice, bob = create("alice", "admin", codes), create("bob", "admin", codes)
    mallory = create("mallory", "admin", codes)
    alice_session, bob_session = session(codes, alice), session(codes, bob)
    mallory_session = session(codes, mallory)

    code, out = run("operators", "disable", "mallory", "--session", alice_session,
                    "--totp", codes.next(seed_of(alice["totp_uri"])))
    assert code == 0, out
    request = json.loads(out.splitlines()[0])
    assert request["status"] == "pending" and request["params"] == {"operator_id": mallory["id"]}

    listed = run("approvals", "list", "--session", bob_session)[1]
    assert request["id"] in listed
    own = run("approvals", "approve", request["id"], "--session", alice_session,
              "--totp", codes.next(seed_of(alice["totp_uri"])))
    assert own[0] == 2
    replayed = run("approvals", "approve", request["id"], "--session", bob_session,
                   "--totp", pyotp.TOTP(seed_of(bob["totp_uri"])).at(min(codes.used[seed_of(bob["totp_uri"])])
                                                                     * STEP_SECONDS))
    assert replayed[0] == 2 and "TOTP" in replayed[1]
    code, out = run("approvals", "approve", request["id"], "--session", bob_session,
                    "--totp", codes.next(seed_of(bob["totp_uri"])))
    assert code == 0, out
    assert json.loads(out)["status"] == "executed"
    rows = [json.loads(line) for line in run("operators", "list")[1].splitlines()]
    assert [r["username"] for r in rows if r["disabled_at"]] == ["mallory"]
    assert run("approvals", "list", "--session", mallory_session)[0] == 2  # her session ended
    code, out = run("operators", "enable", "mallory", "--session", bob_session,
                    "--totp", codes.next(seed_of(bob["totp_uri"])))
    assert code == 0 and json.loads(out.splitlines()[0])["action"] == "enable_operator"


def test_a_wrong_code_fails_login(env: dict[str, str]) -> None:
    create("alice", "admin", Codes())
    code, out = run("auth", "login", "--username", "alice", "--password-stdin", "--totp", "000000",
                    stdin=PASSWORD + "\n")
    assert code == 2 and "invalid credentials" in out and PASSWORD not in out


def test_logout(env: dict[str, str]) -> None:
    codes = Codes()
    token = session(codes, create("alice", "admin", codes))
    assert run("auth", "logout", "--session", token)[0] == 0
    assert run("approvals", "list", "--session", token)[0] == 2
    assert run("approvals", "list")[0] == 2  # no session at all


def test_clients_rotate_with_a_grace_period(env: dict[str, str]) -> None:
    created = json.loads(run("clients", "create", "--name", "shop", "--role", "checkout")[1])
    code, out = run("clients", "rotate", created["client_id"], "--grace", "3600")
    assert code == 0
    rotated = json.loads(out)
    assert rotated["client_id"] == created["client_id"] and rotated["api_key"] != created["api_key"]
    parts = make_components(Path(env["TOKENVAULT_DATA_DIR"]), env["TOKENVAULT_DATABASE_URL"], **env)
    for key in (created["api_key"], rotated["api_key"]):
        assert parts.clients.authenticate(Secret(key), Origin()).id == created["client_id"]
    parts.engine.dispose()
    assert run("clients", "rotate", created["client_id"], "--grace", "-1")[0] == 2
    assert run("clients", "rotate", "cli_0000000000000000")[0] == 2


def test_policy_check_and_explain(env: dict[str, str], tmp_path: Path) -> None:
    code, out = run("policy", "check")
    assert code == 0 and "valid, 9 roles" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[roles.x]\nrules = [{ operations = ["detokenize"], kinds = ["card"], purposes = ["curiosity"] }]\n')
    code, out = run("policy", "check", "--file", str(bad))
    assert code == 2 and "roles.x.rules.0.purposes.0" in out
    code, out = run("policy", "explain", "--role", "marketing")
    assert code == 0
    lines = out.splitlines()
    assert lines[2].split() == ["operation", "kinds", "purposes", "uses", "fields", "view"]
    assert lines[4].split() == ["detokenize", "email", "marketing", "-", "all", "plain"]
    assert run("policy", "explain", "--role", "intern")[0] == 2


def test_qr_code_for_a_terminal() -> None:
    text = qr_text("otpauth://totp/TokenVault:alice?secret=JBSWY3DPEHPK3PXP&issuer=TokenVault")
    assert len(text.splitlines()) > 10 and "JBSWY3DP" not in text
