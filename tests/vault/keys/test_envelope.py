"""AES-256-GCM sealing: round trips, opaque failures, published test vectors."""

from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from vault.errors import DecryptionFailed
from vault.keys.envelope import NONCE_BYTES, Cipher, associated_data
from vault.secret import Secret

TAG_BYTES = 16
AAD = associated_data("record", token="tok_email_x", kind="email", subject="s1", key="dk1")


def new_cipher() -> Cipher:
    return Cipher(Secret(secrets.token_bytes(32)))


def flip(blob: bytes, index: int) -> bytes:
    changed = bytearray(blob)
    changed[index] ^= 0x01
    return bytes(changed)


# -- round trip ------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=2048), st.binary(max_size=256))
def test_seal_then_open_returns_the_plaintext(plaintext: bytes, aad: bytes) -> None:
    cipher = new_cipher()
    blob = cipher.seal(plaintext, aad)
    assert len(blob) == NONCE_BYTES + len(plaintext) + TAG_BYTES
    assert cipher.open(blob, aad) == plaintext


def test_sealed_blob_does_not_contain_the_plaintext() -> None:
    plaintext = b'{"pan":"4111111111111111"}'
    assert b"4111111111111111" not in new_cipher().seal(plaintext, AAD)


def test_nonces_differ_between_seals_of_the_same_plaintext() -> None:
    cipher = new_cipher()
    blobs = [cipher.seal(b"same", AAD) for _ in range(200)]
    assert len({blob[:NONCE_BYTES] for blob in blobs}) == 200
    assert len(set(blobs)) == 200


# -- every failure is the same DecryptionFailed -------------------------------------------------

def failures() -> dict[str, tuple[Cipher, bytes, bytes]]:
    cipher = new_cipher()
    plaintext = b"secret value"
    blob = cipher.seal(plaintext, AAD)
    other_aad = associated_data("record", token="tok_email_y", kind="email", subject="s1", key="dk1")
    return {
        "different aad": (cipher, blob, other_aad),
        "empty aad": (cipher, blob, b""),
        "flipped nonce byte": (cipher, flip(blob, 0), AAD),
        "flipped ciphertext byte": (cipher, flip(blob, NONCE_BYTES + 3), AAD),
        "flipped tag byte": (cipher, flip(blob, len(blob) - 1), AAD),
        "truncated by one byte": (cipher, blob[:-1], AAD),
        "truncated below nonce and tag": (cipher, blob[: NONCE_BYTES + TAG_BYTES - 1], AAD),
        "empty blob": (cipher, b"", AAD),
        "extended by one byte": (cipher, blob + b"\x00", AAD),
        "wrong key": (new_cipher(), blob, AAD),
    }


@pytest.mark.parametrize("case", list(failures()))
def test_tampering_raises_decryption_failed(case: str) -> None:
    cipher, blob, aad = failures()[case]
    with pytest.raises(DecryptionFailed) as caught:
        cipher.open(blob, aad)
    error = caught.value
    assert type(error) is DecryptionFailed
    assert str(error) == "decryption failed"
    assert error.code == "decryption_failed"
    assert error.__cause__ is None
    assert error.__suppress_context__ or error.__context__ is None


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.data())
def test_any_single_bit_flip_is_detected(plaintext: bytes, data: st.DataObject) -> None:
    cipher = new_cipher()
    blob = cipher.seal(plaintext, AAD)
    index = data.draw(st.integers(min_value=0, max_value=len(blob) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    changed = bytearray(blob)
    changed[index] ^= 1 << bit
    with pytest.raises(DecryptionFailed, match=r"^decryption failed$"):
        cipher.open(bytes(changed), AAD)


# -- keys and reprs ---------------------------------------------------------------------------

@pytest.mark.parametrize("length", [0, 16, 24, 31, 33, 64])
def test_key_of_other_than_32_bytes_is_refused(length: int) -> None:
    with pytest.raises(ValueError, match="32-byte key"):
        Cipher(Secret(b"k" * length))


def test_cipher_repr_is_redacted() -> None:
    key = bytes(range(32))
    cipher = Cipher(Secret(key))
    assert repr(cipher) == "Cipher(**redacted**)"
    assert key.hex() not in repr(cipher) and str(key) not in repr(cipher)
    assert not hasattr(cipher, "__dict__")


# -- associated data ----------------------------------------------------------------------------

def test_associated_data_ignores_keyword_order() -> None:
    one = associated_data("record", token="t", kind="card", subject="s", key="k", meta={"b": 1, "a": 2})
    other = associated_data("record", meta={"a": 2, "b": 1}, key="k", subject="s", kind="card", token="t")
    assert one == other


def test_associated_data_is_canonical_json_after_the_label() -> None:
    assert associated_data("record", b=2, a="x") == b'record|{"a":"x","b":2}'


@pytest.mark.parametrize(
    "changed",
    [
        {"label": "other"},
        {"token": "t2"},
        {"kind": "email"},
        {"subject": None},
    ],
)
def test_associated_data_differs_when_any_part_differs(changed: dict[str, object]) -> None:
    base: dict[str, object] = {"label": "record", "token": "t", "kind": "card", "subject": "s"}
    merged = {**base, **changed}

    def build(parts: dict[str, object]) -> bytes:
        fields = {key: value for key, value in parts.items() if key != "label"}
        return associated_data(str(parts["label"]), **fields)

    assert build(base) != build(merged)


def test_blob_sealed_for_one_context_does_not_open_in_another() -> None:
    cipher = new_cipher()
    blob = cipher.seal(b"value", associated_data("record", token="t1", kind="card"))
    assert cipher.open(blob, associated_data("record", kind="card", token="t1")) == b"value"
    with pytest.raises(DecryptionFailed):
        cipher.open(blob, associated_data("record", token="t2", kind="card"))


# -- published AES-256-GCM vectors (McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 13-16) --

GCM_KEY = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"
GCM_IV = "cafebabefacedbaddecaf888"
GCM_P = ("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
         "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255")
GCM_C = ("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
         "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad")

VECTORS = {
    "13": ("00" * 32, "00" * 12, "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"),
    "14": ("00" * 32, "00" * 12, "00" * 16, "", "cea7403d4d606b6e074ec5d3baf39d18",
           "d0d1c8a799996bf0265b98b5d48ab919"),
    "15": (GCM_KEY, GCM_IV, GCM_P, "", GCM_C, "b094dac5d93471bdec1a502270e3cc6c"),
    "16": (GCM_KEY, GCM_IV, GCM_P[:120], "feedfacedeadbeeffeedfacedeadbeefabaddad2", GCM_C[:120],
           "76fc6ece0f4e1768cddf8853bb2d551b"),
}


@pytest.mark.parametrize("case", list(VECTORS))
def test_gcm_spec_vector_opens_through_cipher(case: str) -> None:
    key, iv, plaintext, aad, ciphertext, tag = (bytes.fromhex(part) for part in VECTORS[case])
    blob = iv + ciphertext + tag
    assert Cipher(Secret(key)).open(blob, aad) == plaintext


@pytest.mark.parametrize("case", list(VECTORS))
def test_gcm_spec_vector_seals_with_the_aead_cipher_uses(case: str) -> None:
    key, iv, plaintext, aad, ciphertext, tag = (bytes.fromhex(part) for part in VECTORS[case])
    assert AESGCM(key).encrypt(iv, plaintext, aad) == ciphertext + tag


@pytest.mark.parametrize("case", list(VECTORS))
def test_gcm_spec_vector_with_a_flipped_tag_is_refused(case: str) -> None:
    key, iv, _plaintext, aad, ciphertext, tag = (bytes.fromhex(part) for part in VECTORS[case])
    blob = flip(iv + ciphertext + tag, -1)
    with pytest.raises(DecryptionFailed):
        Cipher(Secret(key)).open(blob, aad)


def test_cipher_output_opens_with_plain_aesgcm() -> None:
    key = secrets.token_bytes(32)
    blob = Cipher(Secret(key)).seal(b"interoperable", b"ctx")
    assert AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], b"ctx") == b"interoperable"
