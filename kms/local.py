"""The embedded default key provider: a keyring file sealed under a master key.

For single-node use only. KEK versions are random 256-bit keys, stored in the
keyring file (mode 0600) encrypted with AES-256-GCM under a master key that comes
from TOKENVAULT_MASTER_KEY, TOKENVAULT_MASTER_KEY_FILE, or a key file created by
`tokenvault init`. Production keeps KEKs in Vault (kms.vault_transit).
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault.errors import ConfigurationError, DecryptionFailed, KeyServiceUnavailable
from vault.keys.provider import KEY_BYTES, KekInfo, wrapped_version
from vault.secret import Secret

__all__ = ["LocalKeyProvider", "load_master_key", "create_master_key_file"]

_FORMAT = 1
_PREFIX = "local"
_NONCE = 12


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def load_master_key(env: dict[str, str], default_file: Path) -> Secret[bytes]:
    """The master key from the environment, a named file, or the data dir's key file.

    Fails closed: a missing or malformed key refuses to start rather than falling
    back to anything weaker.
    """
    if env.get("TOKENVAULT_MASTER_KEY"):
        encoded = env["TOKENVAULT_MASTER_KEY"]
        source = "TOKENVAULT_MASTER_KEY"
    else:
        path = Path(env.get("TOKENVAULT_MASTER_KEY_FILE") or default_file)
        source = str(path)
        try:
            encoded = path.read_text(encoding="ascii").strip()
        except OSError as exc:
            raise ConfigurationError(f"master key not readable at {source}: run `tokenvault init`") from exc
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigurationError(f"master key in {source} is not base64") from exc
    if len(key) != KEY_BYTES:
        raise ConfigurationError(f"master key in {source} must be 32 bytes")
    return Secret(key)


def create_master_key_file(path: Path) -> bool:
    """Create a new random master key file (mode 0600) unless one exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(_b64(secrets.token_bytes(KEY_BYTES)) + "\n")
    return True


class LocalKeyProvider:
    """KeyProvider backed by a sealed keyring file, safe for several local processes."""

    name = "local"

    def __init__(self, *, keyring_path: Path, master_key: Secret[bytes], key_name: str = "tokenvault-kek") -> None:
        self._path = keyring_path
        self._master = AESGCM(master_key.expose())
        self._key_name = key_name
        self._lock = threading.Lock()
        self._calls = 0
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[int, AESGCM] = {}
        self._created: dict[int, datetime] = {}
        self._min_version = 1

    # -- keyring file ---------------------------------------------------------------

    @property
    def calls(self) -> int:
        return self._calls

    def initialise(self) -> bool:
        """Create the keyring with version 1 unless it exists. Returns True if created."""
        with self._file_lock():
            if self._path.exists():
                self._load()
                return False
            self._write({"format": _FORMAT, "key_name": self._key_name, "min_decryption_version": 1, "versions": {}})
            self._add_version()
            return True

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Serialise writers across processes: rotation must never lose a version."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self._path.with_suffix(".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise KeyServiceUnavailable("keyring missing: run `tokenvault init`") from exc
        except (OSError, ValueError) as exc:
            raise KeyServiceUnavailable("keyring unreadable") from exc
        if data.get("format") != _FORMAT:
            raise KeyServiceUnavailable("keyring format unknown")
        return data

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self._path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self._path)
        self._stamp = None

    def _aad(self, version: int) -> bytes:
        return f"tokenvault-keyring|{self._key_name}|v{version}".encode()

    def _load(self) -> None:
        """(Re)load the keyring if another process changed it since we last looked."""
        try:
            st = self._path.stat()
        except FileNotFoundError as exc:
            raise KeyServiceUnavailable("keyring missing: run `tokenvault init`") from exc
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp == self._stamp:
            return
        data = self._read()
        keys: dict[int, AESGCM] = {}
        created: dict[int, datetime] = {}
        for text_version, entry in data["versions"].items():
            version = int(text_version)
            sealed = _unb64(entry["sealed"])
            try:
                material = self._master.decrypt(sealed[:_NONCE], sealed[_NONCE:], self._aad(version))
            except InvalidTag as exc:
                raise KeyServiceUnavailable("keyring does not open with this master key") from exc
            keys[version] = AESGCM(material)
            created[version] = datetime.fromisoformat(entry["created_at"])
        self._keys, self._created = keys, created
        self._min_version = int(data["min_decryption_version"])
        self._stamp = stamp

    def _add_version(self) -> int:
        data = self._read()
        version = max((int(v) for v in data["versions"]), default=0) + 1
        nonce = secrets.token_bytes(_NONCE)
        sealed = nonce + self._master.encrypt(nonce, secrets.token_bytes(KEY_BYTES), self._aad(version))
        data["versions"][str(version)] = {"created_at": datetime.now(UTC).isoformat(), "sealed": _b64(sealed)}
        self._write(data)
        self._load()
        return version

    def _latest(self) -> tuple[int, AESGCM]:
        self._load()
        if not self._keys:
            raise KeyServiceUnavailable("keyring holds no key version")
        version = max(self._keys)
        return version, self._keys[version]

    # -- KeyProvider --------------------------------------------------------------------

    def generate(self) -> tuple[Secret[bytes], str]:
        key = Secret(secrets.token_bytes(KEY_BYTES))
        return key, self.wrap([key])[0]

    def wrap(self, keys: Sequence[Secret[bytes]]) -> list[str]:
        with self._lock:
            self._calls += 1
            version, kek = self._latest()
            out = []
            for key in keys:
                nonce = secrets.token_bytes(_NONCE)
                sealed = nonce + kek.encrypt(nonce, key.expose(), self._aad(version))
                out.append(f"{_PREFIX}:v{version}:{_b64(sealed)}")
            return out

    def _unwrap_one(self, wrapped: str) -> Secret[bytes] | None:
        try:
            version = wrapped_version(wrapped)
            if not wrapped.startswith(_PREFIX + ":") or version < self._min_version:
                return None
            kek = self._keys.get(version)
            if kek is None:
                return None
            sealed = _unb64(wrapped.rsplit(":", 1)[1])
            return Secret(kek.decrypt(sealed[:_NONCE], sealed[_NONCE:], self._aad(version)))
        except (DecryptionFailed, InvalidTag, binascii.Error, ValueError):
            return None

    def unwrap(self, wrapped: Sequence[str]) -> list[Secret[bytes] | None]:
        with self._lock:
            self._calls += 1
            self._load()
            return [self._unwrap_one(item) for item in wrapped]

    def rewrap(self, wrapped: Sequence[str]) -> list[str | None]:
        plain = self.unwrap(wrapped)
        present = [key for key in plain if key is not None]
        rewrapped = iter(self.wrap(present)) if present else iter(())
        return [next(rewrapped) if key is not None else None for key in plain]

    def rotate(self) -> int:
        with self._lock, self._file_lock():
            self._calls += 1
            return self._add_version()

    def info(self) -> KekInfo:
        with self._lock:
            self._load()
            return KekInfo(
                provider=self.name,
                key_name=self._key_name,
                latest_version=max(self._keys, default=0),
                min_decryption_version=self._min_version,
                versions=dict(self._created),
            )

    def set_min_decryption_version(self, version: int) -> None:
        with self._lock, self._file_lock():
            self._calls += 1
            data = self._read()
            present = [int(v) for v in data["versions"]]
            if not min(present, default=1) <= version <= max(present, default=0):
                raise ConfigurationError("minimum decryption version must be between the oldest kept and the latest")
            data["min_decryption_version"] = version
            self._write(data)
            self._load()

    def destroy_versions_below(self, version: int) -> None:
        """Remove the sealed versions below `version` from the keyring file (a copy of the old file,
        with the master key, still holds them: keep the keyring out of database backups)."""
        with self._lock, self._file_lock():
            self._calls += 1
            data = self._read()
            latest = max((int(v) for v in data["versions"]), default=0)
            if not 1 <= version <= latest:
                raise ConfigurationError("versions can be destroyed only below the latest version")
            data["versions"] = {v: entry for v, entry in data["versions"].items() if int(v) >= version}
            data["min_decryption_version"] = max(int(data["min_decryption_version"]), version)
            self._write(data)
            self._load()

    def check(self) -> None:
        with self._lock:
            self._latest()
