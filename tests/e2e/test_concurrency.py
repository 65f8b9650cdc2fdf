"""The concurrency harness, bounded: two vault instances on one database, on both engines.

About half a minute per engine; bench/concurrency_soak.py runs the same rounds for longer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from api.wiring import Components
from tests.conftest import make_settings
from tests.support import harness


@pytest.fixture
def pair(tmp_path: Path, database_url: str) -> Iterator[tuple[Components, Components]]:
    settings = make_settings(tmp_path / "data", database_url, TOKENVAULT_KEY_CACHE_SECONDS="0.3")
    first, second = harness.two_instances(settings)
    yield first, second
    for parts in (first, second):
        parts.trail.close()
        parts.engine.dispose()


def test_two_instances_lose_nothing_and_deliver_once(pair: tuple[Components, Components]) -> None:
    lines: list[str] = []
    problems = harness.run(*pair, rounds=3, seconds=5.0, report=lines.append)
    assert problems == [], "\n".join(lines + problems)
