"""The KeyProvider contract, run against every provider (local keyring and Vault Transit)."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime, timedelta

import pytest

from vault.errors import ConfigurationError
from vault.keys.provider import KEY_BYTES, KeyProvider, wrapped_version
from vault.secret import Secret


def random_keys(count: int) -> list[Secret[bytes]]:
    return [Secret(secrets.token_bytes(KEY_BYTES)) for _ in range(count)]


def tampered(wrapped: str) -> str:
    """Same prefix and version, one bit of the ciphertext flipped."""
    head, body = wrapped.rsplit(":", 1)
    raw = bytearray(base64.b64decode(body))
    raw[-1] ^= 0x01
    return f"{head}:{base64.b64encode(bytes(raw)).decode()}"


def test_is_a_key_provider(provider: KeyProvider) -> None:
    assert isinstance(provider, KeyProvider)


def test_generate_unwrap_round_trip(provider: KeyProvider) -> None:
    key, wrapped = provider.generate()
    assert len(key.expose()) == KEY_BYTES
    assert wrapped.startswith(provider.name + ":v1:")
    assert wrapped_version(wrapped) == 1
    assert key.expose() not in base64.b64decode(wrapped.rsplit(":", 1)[1])
    assert provider.unwrap([wrapped]) == [key]


def test_generate_gives_distinct_keys(provider: KeyProvider) -> None:
    (a, wa), (b, wb) = provider.generate(), provider.generate()
    assert a != b and wa != wb


def test_wrap_unwrap_batches_beyond_one_chunk(provider: KeyProvider) -> None:
    keys = random_keys(601)  # the Vault provider sends chunks of 250
    wrapped = provider.wrap(keys)
    assert len(wrapped) == len(keys) == len(set(wrapped))
    assert all(wrapped_version(item) == 1 for item in wrapped)
    assert provider.unwrap(wrapped) == keys


def test_empty_batches(provider: KeyProvider) -> None:
    assert provider.wrap([]) == []
    assert provider.unwrap([]) == []
    assert provider.rewrap([]) == []


def test_bad_items_become_none_only_for_that_item(provider: KeyProvider) -> None:
    keys = random_keys(3)
    good = provider.wrap(keys)
    other_prefix = "other" + good[0][good[0].index(":") :]
    too_new = good[0].replace(":v1:", ":v99:", 1)
    batch = [
        good[0],
        tampered(good[1]),
        "garbage",
        "",
        other_prefix,
        too_new,
        good[1].rsplit(":", 1)[0] + ":AAAA",
        good[2],
        good[0][:-8],
    ]
    assert provider.unwrap(batch) == [keys[0], None, None, None, None, None, None, keys[2], None]
    rewrapped = provider.rewrap(batch)
    assert [item is None for item in rewrapped] == [False, True, True, True, True, True, True, False, True]


def test_all_bad_batch(provider: KeyProvider) -> None:
    _, wrapped = provider.generate()
    assert provider.unwrap([tampered(wrapped), "nonsense"]) == [None, None]


def test_rotate_increments_version_and_old_keys_still_unwrap(provider: KeyProvider) -> None:
    old_key, old_wrapped = provider.generate()
    assert provider.rotate() == 2
    assert provider.info().latest_version == 2
    new_key, new_wrapped = provider.generate()
    assert wrapped_version(new_wrapped) == 2
    assert provider.unwrap([old_wrapped, new_wrapped]) == [old_key, new_key]
    assert provider.rotate() == 3


def test_rewrap_moves_to_latest_version_without_changing_the_key(provider: KeyProvider) -> None:
    keys = random_keys(2)
    wrapped = provider.wrap(keys)
    provider.rotate()
    provider.rotate()
    rewrapped = provider.rewrap(wrapped)
    assert all(item is not None and wrapped_version(item) == 3 for item in rewrapped)
    assert rewrapped != wrapped
    assert provider.unwrap([item for item in rewrapped if item is not None]) == keys


def test_min_decryption_version_retires_older_versions(provider: KeyProvider) -> None:
    old_key, old_wrapped = provider.generate()
    provider.rotate()
    new_key, new_wrapped = provider.generate()
    provider.set_min_decryption_version(2)
    assert provider.info().min_decryption_version == 2
    assert provider.unwrap([old_wrapped, new_wrapped]) == [None, new_key]
    assert provider.rewrap([old_wrapped]) == [None]
    provider.set_min_decryption_version(1)  # not destructive: the version comes back
    assert provider.unwrap([old_wrapped]) == [old_key]


def test_destroyed_versions_never_come_back(provider: KeyProvider) -> None:
    """Erasure epochs: unlike retirement, destruction cannot be undone by lowering the minimum."""
    _old_key, old_wrapped = provider.generate()
    provider.rotate()
    new_key, new_wrapped = provider.generate()
    provider.destroy_versions_below(2)
    provider.destroy_versions_below(2)  # idempotent: a resumed epoch repeats it
    info = provider.info()
    assert info.min_decryption_version == 2 and sorted(info.versions) == [2]
    assert provider.unwrap([old_wrapped, new_wrapped]) == [None, new_key]
    with pytest.raises(ConfigurationError):
        provider.set_min_decryption_version(1)
    assert provider.unwrap([old_wrapped]) == [None]
    assert provider.rewrap([old_wrapped]) == [None]
    assert wrapped_version(provider.generate()[1]) == 2


@pytest.mark.parametrize("version", [0, 5])
def test_min_decryption_version_out_of_range(provider: KeyProvider, version: int) -> None:
    with pytest.raises(ConfigurationError):
        provider.set_min_decryption_version(version)


def test_info_fields(provider: KeyProvider) -> None:
    info = provider.info()
    assert info.provider == provider.name
    assert isinstance(info.key_name, str) and info.key_name
    assert (info.latest_version, info.min_decryption_version) == (1, 1)
    assert list(info.versions) == [1]
    created = info.versions[1]
    assert created.tzinfo is not None
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)
    provider.rotate()
    assert sorted(provider.info().versions) == [1, 2]


def test_initialise_is_idempotent(fresh_provider: KeyProvider) -> None:
    assert fresh_provider.initialise() is True
    key, wrapped = fresh_provider.generate()
    assert fresh_provider.initialise() is False
    assert fresh_provider.info().latest_version == 1
    assert fresh_provider.unwrap([wrapped]) == [key]


def test_check_passes(provider: KeyProvider) -> None:
    provider.check()


def test_calls_counter_increases(provider: KeyProvider) -> None:
    before = provider.calls
    _, wrapped = provider.generate()
    after_generate = provider.calls
    assert after_generate > before
    provider.unwrap([wrapped])
    assert provider.calls > after_generate
