"""Docker cannot run here, so the deployment files are checked as files."""

from __future__ import annotations

import re
from pathlib import Path

import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def final_stage() -> str:
    return dockerfile().split(" AS final", 1)[1]


def test_final_image_runs_as_a_non_root_user() -> None:
    users = re.findall(r"^USER\s+(\S+)", final_stage(), re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_entrypoint_healthcheck_and_volumes() -> None:
    stage = final_stage()
    assert 'ENTRYPOINT ["tokenvault"]' in stage
    assert re.search(r"HEALTHCHECK .*\n?.*readyz", stage)
    assert '"/data"' in stage and '"/tmp"' in stage


def test_no_build_tools_in_the_final_image() -> None:
    stage = final_stage()
    for tool in ("gcc", "build-essential", "apt-get install", "make "):
        assert tool not in stage


def test_every_copied_file_exists() -> None:
    for source in re.findall(r"^COPY\s+(?!--from)(.+?)\s+\S+$", dockerfile(), re.MULTILINE):
        for name in source.split():
            assert (ROOT / name).exists(), name


def test_dependencies_are_pinned() -> None:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    dependencies = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    for line in re.findall(r'"([^"]+)"', dependencies):
        assert "==" in line, line


def test_compose_has_the_service_its_database_and_key_service() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"tokenvault", "postgres", "openbao"} <= set(services)
    env = services["tokenvault"]["environment"]
    text = str(env)
    assert "TOKENVAULT_KMS" in text and "vault" in text and "postgresql" in text


def test_the_systemd_unit_stops_the_master_only_and_outlasts_its_drain() -> None:
    """Issue #18: with KillMode=control-group every worker gets SIGTERM with the master; requests in flight are cut."""
    unit = (ROOT / "deploy" / "systemd" / "tokenvault.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["KillMode"] == "mixed" and settings["KillSignal"] == "SIGTERM"
    assert int(settings["TimeoutStopSec"]) > 30  # the server drains for up to 30 s
    assert settings["ExecStart"].endswith("tokenvault serve")
    assert "KillMode=mixed" in (ROOT / "README.md").read_text()
