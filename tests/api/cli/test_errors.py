"""Every command, run carelessly: one clear line, a documented exit code, never a traceback (issue #18)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from api.cli.main import main

DOCUMENTED_EXITS = {0, 2, 3, 70}
TOKENVAULT = Path(sys.executable).with_name("tokenvault")


def commands(group: click.Group = main, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


ALL = [path for path, command in commands() if not isinstance(command, click.Group)]


def run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=True)
    unexpected = result.exception if not isinstance(result.exception, SystemExit) else None
    assert unexpected is None, f"{args}: {type(unexpected).__name__}: {unexpected}"
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert "Traceback" not in output, (args, output)
    assert result.exit_code in DOCUMENTED_EXITS, (args, result.exit_code, output)
    return result.exit_code, output


def test_every_command_has_help_text() -> None:
    missing = [" ".join(path) for path, command in commands() if not (command.help or command.short_help)]
    assert missing == []


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_bad_arguments_never_give_a_traceback(path: tuple[str, ...], tmp_path: Path) -> None:
    env = {"TOKENVAULT_DATA_DIR": str(tmp_path / "nowhere"), "TOKENVAULT_DATABASE_URL": "",
           "TOKENVAULT_SESSION": ""}
    for extra in (["--no-such-option"], ["a", "b", "c", "d", "e"], ["--since", "yesterday"], []):
        if path == ("serve",) and not extra:
            continue  # would serve
        if path == ("init",) and not extra:
            continue  # creates a vault (tested below)
        code, output = run([*path, *extra], env)
        assert code != 0 or extra == [], (path, extra, output)
        if code:
            lines = [line for line in output.splitlines() if line.strip()]
            assert lines, (path, extra)


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_bad_arguments_against_a_real_vault_are_user_errors(path: tuple[str, ...], tmp_path: Path,
                                                            vault_env: dict[str, str]) -> None:
    for extra in (["--no-such-option"], ["--since", "yesterday"], ["--since", "0001-01-01T00:00:00+14:00"],
                  ["--syslog", "no-such-host.invalid:514"], ["--batch", "-5"]):
        if path == ("serve",):
            continue
        code, output = run([*path, *extra], vault_env)
        assert code in (2, 3), (path, extra, code, output)  # never 70: a user's mistake is not an internal error


@pytest.fixture(scope="module")
def vault_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = {"TOKENVAULT_DATA_DIR": str(tmp_path_factory.mktemp("cli") / "var"), "TOKENVAULT_DATABASE_URL": "",
           "TOKENVAULT_SESSION": ""}
    assert CliRunner().invoke(main, ["init"], env=env).exit_code == 0
    return env


def test_a_wrong_data_directory_names_it_and_the_variable(tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    for args in (["clients", "list"], ["keys", "due"], ["subjects", "requests"], ["purge"], ["audit", "verify"]):
        code, output = run(args, {"TOKENVAULT_DATA_DIR": str(nowhere), "TOKENVAULT_DATABASE_URL": ""})
        assert code == 3, (args, output)
        assert str(nowhere) in output and "TOKENVAULT_DATA_DIR" in output, (args, output)
        assert "init" not in output, (args, output)  # `init` there would make a second, empty vault
    assert not nowhere.exists()


def test_empty_results_say_so(tmp_path: Path) -> None:
    env = {"TOKENVAULT_DATA_DIR": str(tmp_path / "var"), "TOKENVAULT_DATABASE_URL": ""}
    assert run(["init"], env)[0] == 0
    for args, says in ((["clients", "list"], "no clients"), (["keys", "due"], "nothing is due"),
                       (["keys", "resume"], "no unfinished key job"), (["subjects", "requests"], "no open requests")):
        code, output = run(args, env)
        assert code == 0 and says in output, (args, output)
    code, output = run(["transfer", "keygen", "--out", str(tmp_path / "acquirer.pem")], env)
    assert code == 0 and "acquirer.pem.pub" in output


def test_clients_list_prints_iso_8601_utc(tmp_path: Path) -> None:
    env = {"TOKENVAULT_DATA_DIR": str(tmp_path / "var"), "TOKENVAULT_DATABASE_URL": ""}
    run(["init"], env)
    run(["clients", "create", "--name", "shop", "--role", "checkout"], env)
    code, output = run(["clients", "list"], env)
    created = next(line for line in output.splitlines() if "created_at" in line)
    assert code == 0 and '"created_at": "20' in created and 'Z"' in created and "+00:00" not in created


def test_port_in_use_hints_at_tokenvault_bind(tmp_path: Path) -> None:
    env = {"TOKENVAULT_DATA_DIR": str(tmp_path / "var"), "TOKENVAULT_DATABASE_URL": ""}
    run(["init"], env)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([str(TOKENVAULT), "serve", "--bind", f"127.0.0.1:{port}"], capture_output=True,
                              text=True, timeout=60, env={**_os_env(), **env})
    assert done.returncode == 3, done.stderr
    assert "TOKENVAULT_BIND" in done.stderr and "in use" in done.stderr and "Traceback" not in done.stderr


def _os_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TOKENVAULT_")}
