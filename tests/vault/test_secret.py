"""Secret: a value that cannot leak through repr, str, logs or pickling."""

from __future__ import annotations

import copy
import logging
import pickle

import pytest

from vault.secret import Secret

VALUE = "tvk_live_s3cr3t-value"


def test_repr_is_redacted() -> None:
    assert repr(Secret(VALUE)) == "Secret('**redacted**')"


def test_str_and_format_are_redacted() -> None:
    secret = Secret(VALUE)
    for rendered in (str(secret), f"{secret}", f"{secret!r}", "%s" % (secret,), format(secret)):  # noqa: UP031
        assert VALUE not in rendered
        assert "redacted" in rendered


def test_secret_inside_a_container_is_redacted() -> None:
    rendered = repr({"key": Secret(VALUE), "items": [Secret(b"\x01\x02")]})
    assert VALUE not in rendered
    assert "\\x01" not in rendered


def test_logging_a_secret_does_not_log_the_value(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        logging.getLogger("test.secret").info("key is %s", Secret(VALUE))
    assert VALUE not in caplog.text
    assert "redacted" in caplog.text


def test_expose_returns_the_value() -> None:
    assert Secret(VALUE).expose() == VALUE
    assert Secret(b"\x00\xff").expose() == b"\x00\xff"


def test_secret_has_no_instance_dict() -> None:
    secret = Secret(VALUE)
    assert not hasattr(secret, "__dict__")
    with pytest.raises(AttributeError):
        secret.extra = VALUE  # type: ignore[attr-defined]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickling_is_refused(protocol: int) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Secret(VALUE), protocol=protocol)


def test_copying_is_refused_like_pickling() -> None:
    with pytest.raises(TypeError):
        copy.deepcopy(Secret(VALUE))


def test_equal_bytes_secrets_are_equal() -> None:
    assert Secret(b"abc") == Secret(b"abc")


def test_different_bytes_secrets_are_not_equal() -> None:
    assert Secret(b"abc") != Secret(b"abd")
    assert Secret(b"abc") != Secret(b"ab")
    assert Secret(b"") != Secret(b"\x00")


def test_str_secrets_compare_by_value_including_non_ascii() -> None:
    assert Secret("passwört") == Secret("passwört")
    assert Secret("passwört") != Secret("passwort")


def test_str_and_bytes_secrets_are_not_equal() -> None:
    assert Secret("abc") != Secret(b"abc")


def test_secret_is_not_equal_to_its_bare_value() -> None:
    assert Secret(VALUE) != VALUE
    assert Secret(b"abc") != b"abc"


def test_other_values_fall_back_to_plain_equality() -> None:
    assert Secret(42) == Secret(42)
    assert Secret(42) != Secret(43)
