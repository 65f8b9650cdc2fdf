"""The threat model is evidence only if every test it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def named_tests() -> list[tuple[str, str, str]]:
    found = []
    for document in sorted((ROOT / "threat_model").glob("*.md")):
        for path, name in NODE.findall(document.read_text(encoding="utf-8")):
            found.append((document.name, path, name))
    return found


def test_threat_model_names_tests() -> None:
    assert len(named_tests()) >= 20


def test_every_named_test_exists() -> None:
    missing = []
    for document, path, name in named_tests():
        source = ROOT / path
        text = source.read_text(encoding="utf-8") if source.exists() else ""
        if not re.search(rf"^(async )?def {name}\(", text, re.MULTILINE):
            missing.append(f"{document}: {path}::{name}")
    assert missing == []


def test_stride_table_covers_every_category() -> None:
    text = (ROOT / "threat_model" / "README.md").read_text(encoding="utf-8").lower()
    for category in ("spoofing", "tampering", "repudiation", "information disclosure", "denial of service",
                     "elevation of privilege"):
        assert category in text
