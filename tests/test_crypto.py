"""Tests for medcodec.crypto: keyring file, envelope round trips, tampering, rotation, nonce uniqueness."""

from __future__ import annotations

import base64
import json
import os
import stat

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medcodec.crypto import (
    NONCE_BYTES,
    IntegrityError,
    Keyring,
    KeyringError,
    RetiredKeyError,
    SealedBox,
    SealedBoxFormatError,
    UnknownKeyError,
    associated_data,
    keyed_hash,
    open_sealed,
    rewrap,
    seal,
    sealed_size,
)
from medcodec.errors import CorruptRecordError, MedcodecError


def _ad(sop: str = "2.25.1", digest: str = "ab" * 32, purpose: str = "phi") -> bytes:
    return associated_data(
        format_version="1.0", uids={"SOPInstanceUID": sop, "StudyInstanceUID": "2.25.9"}, pixel_digest=digest, purpose=purpose
    )


@pytest.fixture
def ring(tmp_path) -> Keyring:
    return Keyring.create(tmp_path / "keys.json")


def _materials(ring: Keyring) -> list[bytes]:
    """Every secret the keyring holds (KEKs, identity secret and derived keys)."""
    obj = json.loads(ring.path.read_text())
    out = [base64.b64decode(k["material"]) for k in obj["keys"]]
    out.append(base64.b64decode(obj["identity_secret"]))
    out += [ring.uid_key(), ring.stego_key(b"ctx")]
    return out


def _leak_forms(secret: bytes) -> list[str]:
    return [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(), repr(secret)[2:-1], str(list(secret)[:8])[1:-1]]


def _assert_no_secret(ring: Keyring, text: str) -> None:
    for secret in _materials(ring):
        for form in _leak_forms(secret):
            assert form not in text


# --------------------------------------------------------------------------------------
# Keyring file


def test_keyring_file_is_owner_only_and_round_trips(ring, tmp_path):
    mode = stat.S_IMODE(os.stat(ring.path).st_mode)
    assert mode == 0o600
    loaded = Keyring.load(ring.path)
    assert loaded.primary_key_id == ring.primary_key_id
    assert loaded.uid_key() == ring.uid_key()
    # No temp file is left behind, and none was ever world-readable (created 0600 by os.open).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json"]


def test_keyring_save_is_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        ring = Keyring.create(tmp_path / "k.json")
        ring.rotate()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(ring.path).st_mode) == 0o600


def test_keyring_refuses_open_permissions_and_overwrite(ring):
    os.chmod(ring.path, 0o644)
    with pytest.raises(KeyringError, match="chmod 600"):
        Keyring.load(ring.path)
    assert Keyring.load(ring.path, check_permissions=False).primary_key_id == ring.primary_key_id
    with pytest.raises(KeyringError, match="already exists"):
        Keyring.create(ring.path)


def test_keyring_load_errors_are_clear_and_quote_no_content(tmp_path, ring):
    with pytest.raises(KeyringError, match="does not exist"):
        Keyring.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b'{"format": "medarchive-keyring", "version": 1, "keys": [' + ring.path.read_bytes()[:40])
    os.close(fd)
    with pytest.raises(KeyringError, match="not valid JSON") as info:
        Keyring.load(bad)
    _assert_no_secret(ring, str(info.value))
    obj = json.loads(ring.path.read_text())
    obj["keys"][0]["material"] = base64.b64encode(b"short").decode()
    fd = os.open(tmp_path / "short.json", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, json.dumps(obj).encode())
    os.close(fd)
    with pytest.raises(KeyringError, match="expected 32"):
        Keyring.load(tmp_path / "short.json")


def test_no_key_material_in_repr_list_or_errors(ring):
    ring.rotate()
    texts = [repr(ring), str(ring), repr(ring.list()), str(ring.list())]
    box = seal(ring, b"secret", associated=_ad())
    texts += [repr(box), str(box)]
    for call in (
        lambda: open_sealed(ring, box, associated=_ad(sop="2.25.2")),
        lambda: open_sealed(ring, SealedBox(**{**box.__dict__, "key_id": "00ff00ff00ff00ff"}), associated=_ad()),
        lambda: SealedBox.from_bytes(b"garbage"),
        lambda: ring.retire(ring.primary_key_id),
    ):
        with pytest.raises(MedcodecError) as info:
            call()
        texts.append(str(info.value))
        texts.append(repr(info.value))
    for text in texts:
        _assert_no_secret(ring, text)
    infos = ring.list()
    assert [i.primary for i in infos] == [False, True]
    assert all(set(vars(i)) == {"key_id", "status", "created", "primary"} for i in infos)


def test_derived_keys_are_stable_across_rotation_and_separated(ring):
    uid, stego = ring.uid_key(), ring.stego_key(b"2.25.1")
    assert len(uid) == len(stego) == 32 and uid != stego
    assert ring.stego_key(b"2.25.2") != stego
    ring.rotate()
    reloaded = Keyring.load(ring.path)
    assert reloaded.uid_key() == uid and reloaded.stego_key(b"2.25.1") == stego
    assert keyed_hash(uid, "PID1", purpose="patient-id") != keyed_hash(uid, "PID1", purpose="accession")


# --------------------------------------------------------------------------------------
# Envelope


@given(plaintext=st.binary(max_size=2048), sop=st.text(alphabet="0123456789.", min_size=1, max_size=20))
def test_seal_round_trip(tmp_path_factory, plaintext, sop):
    ring = _shared_ring(tmp_path_factory)
    ad = _ad(sop=sop)
    box = seal(ring, plaintext, associated=ad)
    again = SealedBox.from_bytes(box.to_bytes())
    assert again == box
    assert open_sealed(ring, again, associated=ad) == plaintext


_RINGS: dict[str, Keyring] = {}


def _shared_ring(factory) -> Keyring:
    if "ring" not in _RINGS:
        _RINGS["ring"] = Keyring.create(factory.mktemp("ring") / "keys.json")
    return _RINGS["ring"]


def test_every_flipped_byte_is_rejected(ring):
    ad = _ad()
    blob = seal(ring, b"PHI: Doe^Jane, 19700101", associated=ad).to_bytes()
    for i in range(len(blob)):
        for mask in (0x01, 0x80):
            bad = bytearray(blob)
            bad[i] ^= mask
            with pytest.raises((IntegrityError, UnknownKeyError)):
                open_sealed(ring, SealedBox.from_bytes(bytes(bad)), associated=ad)
    # Truncation and extension too.
    for cut in (1, 16, len(blob) - 1):
        with pytest.raises(SealedBoxFormatError):
            SealedBox.from_bytes(blob[:-cut])
    with pytest.raises(SealedBoxFormatError):
        SealedBox.from_bytes(blob + b"\x00")


def test_integrity_errors_are_corrupt_record_errors():
    assert issubclass(IntegrityError, CorruptRecordError)
    assert issubclass(SealedBoxFormatError, IntegrityError)
    assert issubclass(RetiredKeyError, KeyringError) and issubclass(UnknownKeyError, KeyringError)


def test_wrong_associated_data_and_transplant_fail(ring):
    ad_a, ad_b = _ad(sop="2.25.1"), _ad(sop="2.25.2")
    box_a = seal(ring, b"message of image A", associated=ad_a)
    box_b = seal(ring, b"message of image B", associated=ad_b)
    with pytest.raises(IntegrityError):
        open_sealed(ring, box_a, associated=ad_b)
    for other in (_ad(digest="cd" * 32), _ad(purpose="displaced"), b"", ad_a + b" "):
        with pytest.raises(IntegrityError):
            open_sealed(ring, box_a, associated=other)
    # Mix parts of two boxes: wrapped key of one with ciphertext of the other.
    mixed = SealedBox(box_b.key_id, box_b.wrap_nonce, box_b.wrapped_key, box_a.nonce, box_a.ciphertext)
    with pytest.raises(IntegrityError):
        open_sealed(ring, mixed, associated=ad_b)
    with pytest.raises(IntegrityError):
        open_sealed(ring, mixed, associated=ad_a)


def test_associated_data_is_canonical():
    a = associated_data(format_version="1.0", uids={"b": "2", "a": "1"}, pixel_digest="x", purpose="phi")
    b = associated_data(purpose="phi", pixel_digest="x", uids={"a": "1", "b": "2"}, format_version="1.0")
    assert a == b
    assert json.loads(a)["uids"] == {"a": "1", "b": "2"}
    with pytest.raises(TypeError):
        associated_data(format_version="1", uids={"a": 1}, pixel_digest="x", purpose="phi")


def test_rotation_rewrap_and_retirement(ring):
    ad = _ad()
    old_id = ring.primary_key_id
    old_box = seal(ring, b"sealed before rotation", associated=ad)
    new_id = ring.rotate()
    assert new_id != old_id and ring.primary_key_id == new_id
    ring = Keyring.load(ring.path)
    # The old key still opens old boxes; new seals use the new primary.
    assert open_sealed(ring, old_box, associated=ad) == b"sealed before rotation"
    assert seal(ring, b"x", associated=ad).key_id == new_id
    # Rewrap changes only the wrap.
    new_box = rewrap(ring, old_box, associated=ad)
    assert new_box.key_id == new_id
    assert (new_box.nonce, new_box.ciphertext) == (old_box.nonce, old_box.ciphertext)
    assert new_box.wrapped_key != old_box.wrapped_key
    assert open_sealed(ring, new_box, associated=ad) == b"sealed before rotation"
    assert rewrap(ring, new_box, associated=ad) is new_box
    # Rewrap never re-wraps a tampered box, nor with the wrong associated data.
    with pytest.raises(IntegrityError):
        rewrap(ring, old_box, associated=_ad(sop="2.25.7"))
    tampered = SealedBox(old_box.key_id, old_box.wrap_nonce, old_box.wrapped_key, old_box.nonce,
                         old_box.ciphertext[:-1] + bytes([old_box.ciphertext[-1] ^ 1]))
    with pytest.raises(IntegrityError):
        rewrap(ring, tampered, associated=ad)
    # Retire the old key: old boxes fail with a clear error naming the key id; rewrapped ones open.
    with pytest.raises(KeyringError, match="primary"):
        ring.retire(new_id)
    ring.retire(old_id)
    ring = Keyring.load(ring.path)
    assert {i.key_id: i.status for i in ring.list()} == {old_id: "retired", new_id: "active"}
    with pytest.raises(RetiredKeyError, match=old_id):
        open_sealed(ring, old_box, associated=ad)
    with pytest.raises(RetiredKeyError):
        rewrap(ring, old_box, associated=ad)
    assert open_sealed(ring, new_box, associated=ad) == b"sealed before rotation"


def test_unknown_key_id_is_a_clear_error(ring, tmp_path):
    other = Keyring.create(tmp_path / "other.json")
    box = seal(other, b"x", associated=b"ad")
    with pytest.raises(UnknownKeyError, match=box.key_id):
        open_sealed(ring, box, associated=b"ad")
    with pytest.raises(UnknownKeyError):
        ring.retire("deadbeefdeadbeef")


def test_sealed_box_layout_is_versioned(ring):
    blob = seal(ring, b"x", associated=b"ad").to_bytes()
    assert len(blob) == sealed_size(1, key_id=ring.primary_key_id)
    assert len(seal(ring, bytes(1000), associated=b"").to_bytes()) == sealed_size(1000, key_id=ring.primary_key_id)
    assert blob[:4] == b"MSBX" and blob[4] == 1
    with pytest.raises(SealedBoxFormatError, match="version 2"):
        SealedBox.from_bytes(blob[:4] + b"\x02" + blob[5:])
    with pytest.raises(SealedBoxFormatError, match="magic"):
        SealedBox.from_bytes(b"")


@given(st.binary(max_size=200))
def test_from_bytes_on_garbage_raises_only_typed_errors(data):
    try:
        SealedBox.from_bytes(data)
    except SealedBoxFormatError:
        pass


@pytest.mark.slow
def test_one_million_seals_give_unique_key_id_nonce_pairs(ring):
    """1,000,000 real seals (about 6-10 s here); both nonces are checked, grouped by key id."""
    n = 1_000_000
    key_ids = set()
    wrap_nonces = bytearray()
    data_nonces = bytearray()
    for i in range(n):
        if i == n // 2:
            ring.rotate()  # two key ids in play
        box = seal(ring, b"", associated=b"")
        key_ids.add(box.key_id)
        wrap_nonces += box.wrap_nonce
        data_nonces += box.nonce
    assert len(key_ids) == 2
    for blob in (wrap_nonces, data_nonces):
        arr = np.frombuffer(bytes(blob), dtype=np.dtype((np.void, NONCE_BYTES)))
        assert len(arr) == n
        assert len(np.unique(arr)) == n  # unique even across key ids, a fortiori per (key id, nonce)
