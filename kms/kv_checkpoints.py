"""The audit checkpoint log in OpenBao/Vault KV v2, written with check-and-set.

A sink outside the database administrators' reach (they hold no token for it): each host's
log is a `head` secret {n, hash, chunks, tail} plus immutable `chunk-<k>` secrets of exactly
500 lines. The head is the only commit point: an append rewrites it with `cas` set to the
version it read, the new lines in its tail, so two writers (threads, worker processes, hosts
sharing a name) never both extend the same entry number, and a lost race is retried. Once a
committed tail holds a full chunk, that chunk is created (`cas=0`: never overwritten; its
content follows from the committed head, so whoever writes it writes the same lines) and the
head drops it from its tail. KV v2 keeps every version, so a rewrite is visible in the
secret's history too.

It satisfies vault.audit.checkpoints.CheckpointSink structurally (kms/ does not import the
audit wing): `append(lines)` and `logs()`.
"""

from __future__ import annotations

import contextlib
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
                chunks, tail = (int(head["chunks"]), list(head["tail"])) if head else (0, [])
                new = lines(n, prev)
                if not new:
                    return n, prev
                last, digest = n + len(new), _hash(new[-1])
                try:
                    self._write(f"{base}/head", {"n": last, "hash": digest, "chunks": chunks, "tail": tail + new},
                                cas=head_version)
                except hvac.exceptions.InvalidRequest:
                    continue  # another writer committed first: read again
                self._flush(base)
                return last, digest
            raise AuditWriteFailed("checkpoint store contended")
        except hvac.exceptions.VaultError as exc:
            raise AuditWriteFailed("checkpoint store unavailable") from exc
        except OSError as exc:
            raise AuditWriteFailed("checkpoint store unreachable") from exc

    def _flush(self, base: str) -> None:
        """Move full chunks out of the committed head's tail (any writer may finish another's flush)."""
        for _attempt in range(_ATTEMPTS):
            head, head_version = self._read(f"{base}/head")
            if head is None or len(head["tail"]) < CHUNK:
                return
            number, tail = int(head["chunks"]), list(head["tail"])
            full = tail[:CHUNK]
            stored, _version = self._read(f"{base}/chunk-{number}")
            if stored is None:
                with contextlib.suppress(hvac.exceptions.InvalidRequest):  # another writer created it: checked below
                    self._write(f"{base}/chunk-{number}", {"lines": full}, cas=0)  # create only
                stored, _version = self._read(f"{base}/chunk-{number}")
            if stored is None or list(stored["lines"]) != full:
                raise AuditWriteFailed("checkpoint store inconsistent")
            try:
                self._write(f"{base}/head", {**head, "chunks": number + 1, "tail": tail[CHUNK:]}, cas=head_version)
            except hvac.exceptions.InvalidRequest:
                continue

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
            for chunk_no in range(int(head["chunks"])):
                chunk, _v = self._read(f"{self._path}/{host}/chunk-{chunk_no}")
                lines.extend(chunk["lines"] if chunk else [])
            lines.extend(head["tail"])
            found[f"kv:{host}"] = lines[:n]
        return found

