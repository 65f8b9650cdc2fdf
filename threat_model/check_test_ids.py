"""Check that every pytest node id named in threat_model/*.md is still collected.

    .venv/bin/python threat_model/check_test_ids.py

Exits 1 and lists the missing ids (renamed or deleted tests) so the threat model never cites a test that
no longer exists. Collection only: nothing runs, no services are needed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NODE_ID = re.compile(r"`(tests/[A-Za-z0-9_/]+\.py(?:::[A-Za-z0-9_]+)?)`")


def cited() -> dict[str, list[str]]:
    """node id -> documents citing it."""
    found: dict[str, list[str]] = {}
    for doc in sorted(HERE.glob("*.md")):
        for node in NODE_ID.findall(doc.read_text(encoding="utf-8")):
            found.setdefault(node, []).append(doc.name)
    return found


def collected(files: list[str]) -> set[str]:
    """Node ids pytest collects from `files`, parameters stripped (`test_x[a]` -> `test_x`)."""
    done = subprocess.run(  # noqa: S603 - fixed argv: this interpreter's pytest and paths from our own documents
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *files],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    ids = set()
    for line in done.stdout.splitlines():
        if "::" in line and line.startswith("tests/"):
            ids.add(line.split("[", 1)[0].strip())
    return ids


def main() -> int:
    nodes = cited()
    files = sorted({node.split("::", 1)[0] for node in nodes})
    missing_files = [f for f in files if not (ROOT / f).is_file()]
    present = collected([f for f in files if f not in missing_files])
    missing = []
    for node, docs in sorted(nodes.items()):
        path = node.split("::", 1)[0]
        if path in missing_files:
            missing.append((node, docs, "file missing"))
        elif "::" in node and node not in present:
            missing.append((node, docs, "not collected"))
        elif "::" not in node and not any(i.startswith(path + "::") for i in present):
            missing.append((node, docs, "no tests collected"))
    print(f"{len(nodes)} test ids cited in threat_model/*.md, {len(nodes) - len(missing)} collected")
    for node, docs, why in missing:
        print(f"MISSING {node} ({why}; cited in {', '.join(sorted(set(docs)))})")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
