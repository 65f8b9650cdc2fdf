"""The audit checkpoint log in OpenBao/Vault KV v2, written with check-and-set.

A sink outside the database administrators' reach (they hold no token for it): each host's
log is a `head` secret {n, hash, chunks} plus `chunk-<k>` secrets of up to 500 lines. Every
append rewrites the last chunk and then the head with `cas` set to the version it read, so
two writers never both extend the same entry number and a lost race is retried; KV v2 keeps
every version, so a rewrite is visible in the secret's history too.

It satisfies vault.audit.checkpoints.CheckpointSink structurally (kms/ does not import the
audit wing): `append(lines)` and `logs()`.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable
from typing import Any

import hvac
import hvac.exceptions

from vault.errors import AuditWriteFailed

__all__ = ["KvCheckpointSink"]

CHUNK = 500
_ATTEMPTS = 8
_ZERO = "0" * 64


def _hash(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


class KvCheckpointSink:
    """One log per host under `<path>/<host>/` in a KV v2 mount."""

    def __init__(self, client: hvac.Client, *, mount: str = "secret", path: str = "tokenvault/audit-checkpoints",
                 host: str | None = None) -> None:
        self._client = client
        self._mount = mount
        self._path = path.strip("/")
        self._host = (host or socket.gethostname())[:30]
        self.name = f"kv:{self._host}"

    def _kv(self) -> Any:
        return self._client.secrets.kv.v2

    def _read(self, path: str) -> tuple[dict[str, Any] | None, int]:
        try:
            answer = self._kv().read_secret_version(path=path, mount_point=self._mount, raise_on_deleted_version=True)
        except hvac.exceptions.InvalidPath:
            return None, 0
        return answer["data"]["data"], int(answer["data"]["metadata"]["version"])

    def _write(self, path: str, data: dict[str, Any], cas: int) -> None:
        self._kv().create_or_update_secret(path=path, secret=data, cas=cas, mount_point=self._mount)

    def append(self, lines: Callable[[int, str], list[str]]) -> tuple[int, str]:
        base = f"{self._path}/{self._host}"
        try:
            for _attempt in range(_ATTEMPTS):
                head, head_version = self._read(f"{base}/head")
                n, prev = (int(head["n"]), str(head["hash"])) if head else (0, _ZERO)
                new = lines(n, prev)
                if not new:
                    return n, prev
                chunk_no = n // CHUNK
                chunk, chunk_version = self._read(f"{base}/chunk-{chunk_no}")
                kept = list(chunk["lines"])[: n - chunk_no * CHUNK] if chunk else []
                pending = kept + new  # lines of chunk `chunk_no` onwards
                try:
                    for offset in range(0, len(pending), CHUNK):
                        number = chunk_no + offset // CHUNK
                        cas = chunk_version if offset == 0 else self._read(f"{base}/chunk-{number}")[1]
                        self._write(f"{base}/chunk-{number}", {"lines": pending[offset:offset + CHUNK]}, cas=cas)
                    last, digest = n + len(new), _hash(new[-1])
                    self._write(f"{base}/head", {"n": last, "hash": digest}, cas=head_version)
                    return last, digest
                except hvac.exceptions.InvalidRequest:
                    continue  # another writer moved the head or a chunk first: read again
            raise AuditWriteFailed("checkpoint store contended")
        except hvac.exceptions.VaultError as exc:
            raise AuditWriteFailed("checkpoint store unavailable") from exc
        except OSError as exc:
            raise AuditWriteFailed("checkpoint store unreachable") from exc

    def logs(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        try:
            hosts = self._kv().list_secrets(path=self._path, mount_point=self._mount)["data"]["keys"]
        except hvac.exceptions.InvalidPath:
            return found
        except (hvac.exceptions.VaultError, OSError) as exc:
            raise AuditWriteFailed("checkpoint store unavailable") from exc
        for host in hosts:
            host = str(host).rstrip("/")
            head, _version = self._read(f"{self._path}/{host}/head")
            if head is None:
                found[f"kv:{host}"] = []
                continue
            n = int(head["n"])
            lines: list[str] = []
            for chunk_no in range(n // CHUNK + 1):
                chunk, _v = self._read(f"{self._path}/{host}/chunk-{chunk_no}")
                lines.extend(chunk["lines"] if chunk else [])
            found[f"kv:{host}"] = lines[:n]
        return found

