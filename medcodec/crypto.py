"""Keyring and AES-256-GCM envelope encryption for sealed record sections.

Envelope (one ``SealedBox`` per sealed section):

* a fresh random 32-byte data key per seal encrypts the plaintext with AES-256-GCM
  under a fresh random 96-bit nonce;
* the data key is wrapped with AES-256-GCM under the keyring's primary key-encryption
  key (KEK), with its own random nonce; the wrap's associated data binds the KEK's key
  id and the box's associated data, so a wrapped key cannot be moved to another box,
  another image or another key id;
* rotation (``Keyring.rotate`` + ``rewrap``) re-wraps the data key under the new
  primary without touching the ciphertext, so no pixels are re-coded.

The key id is bound by the envelope itself (wrap associated data), not by the caller's
associated data: that is what lets ``rewrap`` change the key id while the ciphertext and
its associated data stay as they were.

Key material never appears in exception messages, reprs or logs; only key ids do.

Nonces are random 96-bit values (``fresh_nonce``). A data key encrypts exactly one
message, so its nonce can never repeat under it; a KEK wraps one data key per seal, and
NIST SP 800-38D (8.3) caps random-nonce use at 2**32 invocations per key: rotate the
primary long before 2**32 seals.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import CorruptRecordError, MedcodecError

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "KeyringError",
    "UnknownKeyError",
    "RetiredKeyError",
    "IntegrityError",
    "SealedBoxFormatError",
    "KeyInfo",
    "Keyring",
    "SealedBox",
    "seal",
    "open_sealed",
    "rewrap",
    "associated_data",
    "keyed_hash",
    "fresh_nonce",
    "sealed_size",
]

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96-bit GCM nonce
TAG_BYTES = 16
STATUS_ACTIVE = "active"
STATUS_RETIRED = "retired"

_KEYRING_FORMAT = "medarchive-keyring"
_KEYRING_VERSION = 1
_KEY_ID_BYTES = 8  # 16 hex characters
_KEY_ID_RE = re.compile(r"^[0-9a-f]{4,64}$")
_FILE_MODE = 0o600

_BOX_MAGIC = b"MSBX"
_BOX_VERSION = 1
_WRAP_AD_PREFIX = b"medarchive/wrap/v1\x00"
_DATA_AD_PREFIX = b"medarchive/data/v1\x00"
_AD_SCHEME = "medarchive-ad-v1"


# --------------------------------------------------------------------------------------
# Errors


class KeyringError(MedcodecError):
    """The keyring file is missing, unreadable, malformed, too open, or an operation on it is not allowed."""


class UnknownKeyError(KeyringError):
    """A sealed box names a key id that this keyring does not hold."""


class RetiredKeyError(KeyringError):
    """A sealed box names a key id that this keyring holds but has retired."""


class IntegrityError(CorruptRecordError):
    """A sealed box fails authentication: tampered, truncated, or opened with the wrong associated data."""


class SealedBoxFormatError(IntegrityError):
    """The bytes are not a sealed box this version can read (bad magic, version or lengths)."""


# --------------------------------------------------------------------------------------
# Keyring


@dataclass(frozen=True)
class KeyInfo:
    """Metadata of one key-encryption key; never holds key material."""

    key_id: str
    status: str
    created: str
    primary: bool


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, *, what: str, path: Path, size: int) -> bytes:
    if not isinstance(text, str):
        raise KeyringError(f"keyring {path}: {what} must be a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise KeyringError(f"keyring {path}: {what} is not valid base64") from None
    if len(raw) != size:
        raise KeyringError(f"keyring {path}: {what} has {len(raw)} bytes; expected {size}")
    return raw


class Keyring:
    """A file-backed set of key-encryption keys with key ids, one of them primary.

    The file is JSON, written atomically with mode 0600 (owner only). It holds the KEKs
    in clear, so it is the secret: keep it off the archive and out of shared storage.
    It also holds an "identity secret", created once, from which the stable sub-keys
    (``uid_key``, ``stego_key``) are derived: they do not change on rotation, so
    pseudonymous UIDs and embedding positions stay the same for the keyring's life.

    ``rotate`` and ``retire`` save the file before returning.
    """

    def __init__(
        self,
        path: Path,
        *,
        keys: dict[str, dict[str, Any]],
        primary: str,
        identity_secret: bytes,
    ) -> None:
        # Private: use Keyring.create / Keyring.load.
        self._path = Path(path)
        self._keys = keys  # key id -> {"status", "created", "material": bytes}
        self._primary = primary
        self._identity_secret = identity_secret

    # --- construction -------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, overwrite: bool = False) -> "Keyring":
        """Create a new keyring with one fresh primary key and write it to ``path`` (mode 0600).

        Refuses to replace an existing file unless ``overwrite`` is true: replacing a
        keyring destroys the keys needed to open everything sealed with it.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise KeyringError(
                f"keyring {path} already exists; refusing to replace it (its keys would be lost)"
            )
        key_id = _new_key_id(set())
        ring = cls(
            path,
            keys={key_id: {"status": STATUS_ACTIVE, "created": _now(), "material": AESGCM.generate_key(256)}},
            primary=key_id,
            identity_secret=secrets.token_bytes(KEY_BYTES),
        )
        ring.save()
        return ring

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, check_permissions: bool = True) -> "Keyring":
        """Read a keyring file.

        With ``check_permissions`` (the default) a file readable by group or others is
        refused, as ssh does for private keys.
        """
        path = Path(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise KeyringError(f"keyring {path} does not exist; create one with `medarchive keys new {path}`") from None
        except OSError as exc:
            raise KeyringError(f"keyring {path} cannot be read ({exc.strerror})") from None
        if check_permissions and st.st_mode & 0o077:
            raise KeyringError(
                f"keyring {path} has mode {st.st_mode & 0o777:#o}; it must be readable by its owner"
                f" only (chmod 600 {path})"
            )
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise KeyringError(f"keyring {path} cannot be read ({exc.strerror})") from None
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            # Never quote the content: it is key material.
            raise KeyringError(f"keyring {path} is not valid JSON") from None
        return cls._from_json(path, obj)

    @classmethod
    def from_source(cls, source: "KeySource") -> "Keyring":
        """Read a keyring from a :class:`KeySource` (a file, an environment variable, an
        fsspec URL, or anything else that implements the protocol, e.g. a KMS client)."""
        if isinstance(source, FileKeySource):
            return cls.load(source.path)
        text = source.read()
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise KeyringError(f"keyring {source.describe()} is not valid JSON") from None  # never quote key material
        return cls._from_json(Path(source.describe()), obj)

    @classmethod
    def _from_json(cls, path: Path, obj: Any) -> "Keyring":
        if not isinstance(obj, dict) or obj.get("format") != _KEYRING_FORMAT:
            raise KeyringError(f"keyring {path}: not a medarchive keyring (expected format {_KEYRING_FORMAT!r})")
        version = obj.get("version")
        if version != _KEYRING_VERSION:
            raise KeyringError(
                f"keyring {path}: version {version!r} is not supported; this reader knows version {_KEYRING_VERSION}"
            )
        identity = _unb64(obj.get("identity_secret"), what="identity_secret", path=path, size=KEY_BYTES)
        raw_keys = obj.get("keys")
        if not isinstance(raw_keys, list) or not raw_keys:
            raise KeyringError(f"keyring {path}: 'keys' must be a non-empty list")
        keys: dict[str, dict[str, Any]] = {}
        for i, entry in enumerate(raw_keys):
            if not isinstance(entry, dict):
                raise KeyringError(f"keyring {path}: keys[{i}] must be an object")
            key_id = entry.get("key_id")
            if not isinstance(key_id, str) or not _KEY_ID_RE.match(key_id):
                raise KeyringError(f"keyring {path}: keys[{i}] has an invalid key_id {key_id!r}")
            if key_id in keys:
                raise KeyringError(f"keyring {path}: key id {key_id} appears twice")
            status = entry.get("status")
            if status not in (STATUS_ACTIVE, STATUS_RETIRED):
                raise KeyringError(
                    f"keyring {path}: key {key_id} has status {status!r}; expected"
                    f" {STATUS_ACTIVE!r} or {STATUS_RETIRED!r}"
                )
            created = entry.get("created", "")
            material = _unb64(entry.get("material"), what=f"material of key {key_id}", path=path, size=KEY_BYTES)
            keys[key_id] = {"status": status, "created": str(created), "material": material}
        primary = obj.get("primary")
        if primary not in keys:
            raise KeyringError(f"keyring {path}: primary key id {primary!r} is not among its keys")
        if keys[primary]["status"] != STATUS_ACTIVE:
            raise KeyringError(f"keyring {path}: primary key id {primary} is retired")
        return cls(path, keys=keys, primary=primary, identity_secret=identity)

    # --- persistence --------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def primary_key_id(self) -> str:
        return self._primary

    def save(self) -> None:
        """Write the keyring atomically: a 0600 temp file in the same folder, fsync, rename."""
        obj = {
            "format": _KEYRING_FORMAT,
            "version": _KEYRING_VERSION,
            "primary": self._primary,
            "identity_secret": _b64(self._identity_secret),
            "keys": [
                {
                    "key_id": key_id,
                    "status": entry["status"],
                    "created": entry["created"],
                    "material": _b64(entry["material"]),
                }
                for key_id, entry in self._keys.items()
            ],
        }
        data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("ascii")
        folder = self._path.parent
        tmp = folder / f".{self._path.name}.{secrets.token_hex(6)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(tmp, flags, _FILE_MODE)
        except OSError as exc:
            raise KeyringError(f"cannot write keyring in {folder} ({exc.strerror})") from None
        try:
            try:
                os.fchmod(fd, _FILE_MODE)  # exact 0600 whatever the umask
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise KeyringError(f"cannot write keyring {self._path} ({exc.strerror})") from None
        try:
            dir_fd = os.open(folder, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    # --- key management -----------------------------------------------------------------

    def rotate(self) -> str:
        """Add a fresh key and make it primary; the old primary stays active for opening.

        Returns the new key id. Saves the file.
        """
        key_id = _new_key_id(set(self._keys))
        self._keys[key_id] = {"status": STATUS_ACTIVE, "created": _now(), "material": AESGCM.generate_key(256)}
        self._primary = key_id
        self.save()
        return key_id

    def retire(self, key_id: str) -> None:
        """Mark ``key_id`` retired: boxes still wrapped under it no longer open.

        The primary cannot be retired (rotate first). Re-wrap every record before
        retiring its key. The material stays in the file (retirement is a policy, not
        destruction), so a mistaken retire can be undone by restoring a backup. Saves.
        """
        entry = self._entry(key_id)
        if key_id == self._primary:
            raise KeyringError(f"key id {key_id} is the primary and cannot be retired; rotate first")
        entry["status"] = STATUS_RETIRED
        self.save()

    def list(self) -> list[KeyInfo]:
        """Metadata of every key, oldest first, without key material."""
        return [
            KeyInfo(key_id=key_id, status=entry["status"], created=entry["created"], primary=key_id == self._primary)
            for key_id, entry in self._keys.items()
        ]

    def _entry(self, key_id: str) -> dict[str, Any]:
        entry = self._keys.get(key_id)
        if entry is None:
            raise UnknownKeyError(
                f"key id {key_id!r} is not in keyring {self._path} (known: {', '.join(self._keys)})"
            )
        return entry

    def _kek_for_wrap(self) -> tuple[str, bytes]:
        return self._primary, self._keys[self._primary]["material"]

    def _kek_for_unwrap(self, key_id: str) -> bytes:
        entry = self._entry(key_id)
        if entry["status"] != STATUS_ACTIVE:
            raise RetiredKeyError(
                f"key id {key_id} is retired in keyring {self._path}; records sealed under it"
                " must be re-wrapped before retirement (medarchive rewrap)"
            )
        return entry["material"]

    # --- derived sub-keys ---------------------------------------------------------------

    def uid_key(self) -> bytes:
        """32-byte key for pseudonymous UIDs and keyed hashes of identifiers; stable across rotation."""
        return _hkdf(self._identity_secret, b"medarchive/uid-key/v1")

    def stego_key(self, context: bytes) -> bytes:
        """32-byte key seeding embedding positions for ``context`` (e.g. the image's new SOP
        Instance UID); stable across rotation."""
        if not isinstance(context, (bytes, bytearray)):
            raise TypeError(f"context must be bytes, got {type(context).__name__}")
        return _hkdf(self._identity_secret, b"medarchive/stego-key/v1\x00" + bytes(context))

    def __repr__(self) -> str:
        return f"Keyring(path={str(self._path)!r}, primary={self._primary!r}, keys={len(self._keys)})"

    __str__ = __repr__


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def _new_key_id(taken: set[str]) -> str:
    while True:
        key_id = secrets.token_hex(_KEY_ID_BYTES)
        if key_id not in taken:
            return key_id


# --------------------------------------------------------------------------------------
# Envelope


def fresh_nonce() -> bytes:
    """A fresh random 96-bit nonce (the only nonce source ``seal`` and ``rewrap`` use)."""
    return os.urandom(NONCE_BYTES)


@dataclass(frozen=True)
class SealedBox:
    """One sealed section: the wrapped data key and the ciphertext (GCM tag included)."""

    key_id: str
    wrap_nonce: bytes
    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        """Versioned little-endian layout:

        ``b"MSBX"``, u8 version (1), u8 key id length, key id (ASCII hex), wrap nonce (12),
        wrapped key (48: 32 + tag), nonce (12), u64 ciphertext length, ciphertext (>= 16).
        """
        kid = self.key_id.encode("ascii")
        return b"".join(
            (
                _BOX_MAGIC,
                struct.pack("<BB", _BOX_VERSION, len(kid)),
                kid,
                self.wrap_nonce,
                self.wrapped_key,
                self.nonce,
                struct.pack("<Q", len(self.ciphertext)),
                self.ciphertext,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "SealedBox":
        """Parse ``to_bytes`` output; anything else raises SealedBoxFormatError."""
        data = bytes(data)
        if len(data) < 6 or data[:4] != _BOX_MAGIC:
            raise SealedBoxFormatError("not a sealed box (bad magic); expected bytes written by SealedBox.to_bytes")
        version, kid_len = data[4], data[5]
        if version != _BOX_VERSION:
            raise SealedBoxFormatError(f"sealed box version {version} is not supported; this reader knows {_BOX_VERSION}")
        pos = 6
        fixed = kid_len + NONCE_BYTES + KEY_BYTES + TAG_BYTES + NONCE_BYTES + 8
        if len(data) < pos + fixed:
            raise SealedBoxFormatError(f"sealed box truncated: {len(data)} bytes, header alone needs {pos + fixed}")
        try:
            key_id = data[pos : pos + kid_len].decode("ascii")
        except UnicodeDecodeError:
            raise SealedBoxFormatError("sealed box key id is not ASCII") from None
        if not _KEY_ID_RE.match(key_id):
            raise SealedBoxFormatError(f"sealed box key id ({len(key_id)} characters) is not 4..64 lowercase hex characters")
        pos += kid_len
        wrap_nonce = data[pos : pos + NONCE_BYTES]
        pos += NONCE_BYTES
        wrapped_key = data[pos : pos + KEY_BYTES + TAG_BYTES]
        pos += KEY_BYTES + TAG_BYTES
        nonce = data[pos : pos + NONCE_BYTES]
        pos += NONCE_BYTES
        (ct_len,) = struct.unpack_from("<Q", data, pos)
        pos += 8
        if ct_len < TAG_BYTES:
            raise SealedBoxFormatError(f"sealed box ciphertext length {ct_len} is shorter than the {TAG_BYTES}-byte tag")
        if len(data) - pos != ct_len:
            raise SealedBoxFormatError(
                f"sealed box ciphertext length field says {ct_len} bytes but {len(data) - pos} follow"
            )
        return cls(key_id=key_id, wrap_nonce=wrap_nonce, wrapped_key=wrapped_key, nonce=nonce, ciphertext=data[pos:])

    def __repr__(self) -> str:
        return f"SealedBox(key_id={self.key_id!r}, ciphertext={len(self.ciphertext)} bytes)"

    __str__ = __repr__


def sealed_size(plaintext_nbytes: int, *, key_id: str) -> int:
    """Length of ``SealedBox.to_bytes()`` for a plaintext of ``plaintext_nbytes`` sealed under
    ``key_id``: lets a caller plan the embedding (and bind its digest) before sealing."""
    return 4 + 2 + len(key_id.encode("ascii")) + NONCE_BYTES + KEY_BYTES + TAG_BYTES + NONCE_BYTES + 8 + plaintext_nbytes + TAG_BYTES


def _wrap_ad(key_id: str, associated: bytes) -> bytes:
    kid = key_id.encode("ascii")
    return _WRAP_AD_PREFIX + struct.pack("<B", len(kid)) + kid + associated


def _check_associated(associated: bytes) -> bytes:
    if not isinstance(associated, (bytes, bytearray, memoryview)):
        raise TypeError(f"associated must be bytes, got {type(associated).__name__}")
    return bytes(associated)


def seal(keyring: Keyring, plaintext: bytes, *, associated: bytes) -> SealedBox:
    """Encrypt ``plaintext`` under a fresh data key wrapped by the keyring's primary KEK."""
    associated = _check_associated(associated)
    data_key = AESGCM.generate_key(256)
    nonce = fresh_nonce()
    ciphertext = AESGCM(data_key).encrypt(nonce, bytes(plaintext), _DATA_AD_PREFIX + associated)
    key_id, kek = keyring._kek_for_wrap()
    wrap_nonce = fresh_nonce()
    wrapped = AESGCM(kek).encrypt(wrap_nonce, data_key, _wrap_ad(key_id, associated))
    return SealedBox(key_id=key_id, wrap_nonce=wrap_nonce, wrapped_key=wrapped, nonce=nonce, ciphertext=ciphertext)


def _unwrap(keyring: Keyring, box: SealedBox, associated: bytes) -> bytes:
    kek = keyring._kek_for_unwrap(box.key_id)
    if len(box.wrap_nonce) != NONCE_BYTES or len(box.nonce) != NONCE_BYTES:
        raise SealedBoxFormatError(f"sealed box nonces must be {NONCE_BYTES} bytes")
    try:
        return AESGCM(kek).decrypt(box.wrap_nonce, box.wrapped_key, _wrap_ad(box.key_id, associated))
    except InvalidTag:
        raise IntegrityError(
            f"sealed box does not authenticate: its data key (wrapped under key id {box.key_id}) fails"
            " its tag; the box was altered, or it belongs to another image or section"
        ) from None


def _decrypt(data_key: bytes, box: SealedBox, associated: bytes) -> bytes:
    try:
        return AESGCM(data_key).decrypt(box.nonce, box.ciphertext, _DATA_AD_PREFIX + associated)
    except InvalidTag:
        raise IntegrityError(
            "sealed box does not authenticate: the ciphertext fails its tag; the box was altered,"
            " or it belongs to another image or section"
        ) from None


def open_sealed(keyring: Keyring, box: SealedBox, *, associated: bytes) -> bytes:
    """Authenticate and decrypt ``box``; any alteration or wrong ``associated`` raises IntegrityError.

    An unknown or retired key id raises UnknownKeyError / RetiredKeyError.
    """
    associated = _check_associated(associated)
    data_key = _unwrap(keyring, box, associated)
    return _decrypt(data_key, box, associated)


def rewrap(keyring: Keyring, box: SealedBox, *, associated: bytes) -> SealedBox:
    """Re-wrap ``box``'s data key under the current primary; the ciphertext is kept as is.

    The whole box is authenticated first (a tampered box is never given a fresh wrap).
    A box already under the primary is returned unchanged.
    """
    associated = _check_associated(associated)
    data_key = _unwrap(keyring, box, associated)
    _decrypt(data_key, box, associated)
    key_id, kek = keyring._kek_for_wrap()
    if box.key_id == key_id:
        return box
    wrap_nonce = fresh_nonce()
    wrapped = AESGCM(kek).encrypt(wrap_nonce, data_key, _wrap_ad(key_id, associated))
    return SealedBox(key_id=key_id, wrap_nonce=wrap_nonce, wrapped_key=wrapped, nonce=box.nonce, ciphertext=box.ciphertext)


def associated_data(*, format_version: str, uids: dict[str, str], pixel_digest: str, purpose: str) -> bytes:
    """Canonical associated data binding a sealed section to its image.

    Sorted, compact JSON of the format version, the UIDs (use the ones a reader of the
    record or of the stego DICOM sees, i.e. the de-identified UIDs), the digest of the
    pixels that embedding does not touch (``stego.outside_digest``) and the section's
    purpose (e.g. ``"phi"``, ``"displaced"``). The key id is not an input: the envelope
    binds it in the wrap, which is what lets ``rewrap`` change it.
    """
    if not isinstance(uids, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in uids.items()):
        raise TypeError("uids must be a dict of str -> str")
    for name, value in (("format_version", format_version), ("pixel_digest", pixel_digest), ("purpose", purpose)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be str, got {type(value).__name__}")
    obj = {
        "scheme": _AD_SCHEME,
        "format_version": format_version,
        "uids": uids,
        "pixel_digest": pixel_digest,
        "purpose": purpose,
    }
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def keyed_hash(key: bytes, value: str, *, purpose: str) -> str:
    """Hex HMAC-SHA256 of ``value`` under ``key`` (e.g. ``Keyring.uid_key()``), domain-separated
    by ``purpose``: for lookup identifiers that must not appear in clear (index columns)."""
    mac = hmac.new(bytes(key), purpose.encode("utf-8") + b"\x00" + value.encode("utf-8"), hashlib.sha256)
    return mac.hexdigest()


# --- where a keyring comes from ------------------------------------------------------------------


class KeySource(Protocol):
    """Where a keyring's JSON comes from. Jobs carry a source's *spec* (a path, a URL, an
    environment variable's name) to their workers, never the key material; each worker
    reads the keyring itself, once. A secret manager or KMS client implements these two
    methods."""

    def describe(self) -> str:
        """What to name in messages (never the material)."""
        ...

    def read(self) -> bytes:
        """The keyring file's bytes; KeyringError when they cannot be had."""
        ...


@dataclass(frozen=True)
class FileKeySource:
    """A local keyring file (refused when group or others may read it)."""

    path: str

    def describe(self) -> str:
        return self.path

    def read(self) -> bytes:
        try:
            return Path(self.path).read_bytes()
        except OSError as exc:
            raise KeyringError(f"keyring {self.path} cannot be read ({exc.strerror})") from None


@dataclass(frozen=True)
class EnvKeySource:
    """A keyring held in an environment variable of every worker (``env:NAME``)."""

    variable: str

    def describe(self) -> str:
        return f"env:{self.variable}"

    def read(self) -> bytes:
        value = os.environ.get(self.variable)
        if not value:
            raise KeyringError(f"keyring env:{self.variable}: the environment variable is not set or empty")
        return value.encode()


@dataclass(frozen=True)
class UrlKeySource:
    """A keyring object in storage (``s3://secrets/ring.json``, ``gs://...``), read with
    fsspec and the worker's own credentials (none travel with the job)."""

    url: str

    def describe(self) -> str:
        return self.url

    def read(self) -> bytes:
        import fsspec

        try:
            with fsspec.open(self.url, "rb") as fh:
                return fh.read()
        except (OSError, ValueError, ImportError) as exc:
            raise KeyringError(f"keyring {self.url} cannot be read ({type(exc).__name__})") from None


def key_source(spec: str | os.PathLike[str]) -> KeySource:
    """The key source a ``--key-file`` value names: ``env:NAME``, a URL (``scheme://``,
    read with fsspec), or a local path."""
    text = os.fspath(spec)
    if text.startswith("env:"):
        return EnvKeySource(text[4:])
    if "://" in text and not text.startswith("file://"):
        return UrlKeySource(text)
    return FileKeySource(text.removeprefix("file://"))
