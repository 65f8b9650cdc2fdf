"""A bounded coverage-guided fuzz run (atheris/libFuzzer) of the card and address parsers.

The harness (atheris_parsers.py) runs in its own process so a crash of the native fuzzer
cannot take pytest down; any exception other than pydantic's ValidationError, or a PAN
repeated in one, makes libFuzzer stop with a non-zero exit and the crashing input.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).with_name("atheris_parsers.py")
ROOT = Path(__file__).resolve().parents[2]
RUNS = 20_000
SECONDS = 20


def test_card_and_address_parsers_survive_a_fuzz_run(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        if os.environ.get("TOKENVAULT_REQUIRE_SERVICES"):
            pytest.fail("atheris is not installed and TOKENVAULT_REQUIRE_SERVICES makes this test mandatory")
        pytest.skip("atheris is not installed (pip install atheris; it ships libFuzzer in its wheel)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, str(HARNESS), f"-runs={RUNS}", f"-max_total_time={SECONDS}", "-seed=1",
         f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SECONDS + 60, check=False,
    )
    report = done.stderr[-4000:]
    assert done.returncode == 0, report
    assert "Done" in done.stderr and not list(tmp_path.glob("crash-*")), report
