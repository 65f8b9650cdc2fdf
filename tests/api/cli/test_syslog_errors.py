"""`audit export --syslog` with a wrong address: one line naming the host, not the resolver's words (issue #18)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from api.cli.main import main


def test_an_unresolvable_syslog_host_is_named_in_one_line(tmp_path: Path) -> None:
    env = {"TOKENVAULT_DATA_DIR": str(tmp_path / "var"), "TOKENVAULT_DATABASE_URL": "", "TOKENVAULT_SESSION": ""}
    assert CliRunner().invoke(main, ["init"], env=env).exit_code == 0
    result = CliRunner().invoke(main, ["audit", "export", "--syslog", "no-such-host.invalid:514"], env=env)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 3, result.output
    assert lines == ["Error: syslog host no-such-host.invalid cannot be resolved (--syslog)"]
    bad = CliRunner().invoke(main, ["audit", "export", "--syslog", "no-such-host.invalid:port"], env=env)
    assert bad.exit_code == 2 and "Traceback" not in bad.output and "HOST:PORT" in bad.output
