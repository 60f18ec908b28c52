"""Segmented message steganography in the lowest plane, reversible with the displaced bits.

The message (the sealed PHI) is carried by bit 0 of the stored values:

* Runs. The flattened values (C order over frames, samples, rows, cols) are cut into
  aligned runs of ``SEGMENT_BITS`` consecutive values (a run may continue on the next
  row when the width is not a multiple). A keyed permutation (AES-256-CTR keystream
  -> 64-bit sort keys -> stable argsort: identical on every machine) orders the runs;
  the message is cut into segments of ``SEGMENT_BITS`` bits and segment i goes to the
  i-th *eligible* run in that order. Runs never overlap by construction.
* Eligibility (textured, unsaturated runs only). A run is eligible when none of its
  values is 0 or the maximum 2**bits_stored - 1, and every group of ``GROUP``
  consecutive values in it has a range >= ``MIN_GROUP_RANGE`` after clipping the values
  to [2, max - 2]. Flat regions (padding, air, empty background) and saturated ones are
  never touched: noise added there would be visible to a human and to any steganalyser,
  it would cost the codec bits, and at 0 / max a +-1 change has only one direction,
  which is exactly what LSB replacement does and what the attacks detect. The criterion
  is computed by the extractor on the stego image; embedding never changes it (see
  ``_embed_run_values``).
* Embedding by LSB matching (+-1): a value whose bit 0 already equals the message bit is
  left alone, the others move by +1 or -1 (max abs change 1 stored unit, never out of
  the stored range). The direction is keyed pseudo-random, except that 1 always goes up
  and max - 1 always down (so no run becomes saturated), and, in the rare run where
  random directions would shrink a group's clipped range below the threshold, the
  group's extreme values move outwards (which provably never shrinks a clipped range).
  LSB matching, unlike LSB replacement, does not create the pairs-of-values structure
  that the chi-square, SPA and WS attacks measure.
* Whitening and framing. The embedded stream is ``u32 message length || 16-byte
  HMAC-SHA256 tag || message``, XOR-ed with a keyed keystream, so the carried bits look
  uniformly random whatever the message. The extractor reads the length from the first
  run(s), then the message, and checks the tag: a wrong key or altered pixels give
  ``MessageNotFoundError``, never a wrong message.
* Displaced information (``embed`` returns it; the caller seals it): which carrying values
  changed (1 bit per carrying value) and the direction of each change (1 bit per changed
  value), plus the count and a SHA-256 of the original carrying values, so ``restore``
  gives back the exact original and detects a wrong key or altered stego pixels.
  About 1.5 bits per message bit, ~3 KiB for a 2 KiB message.

Bit depths: any ``bits_stored`` in 1..16. Images of fewer than 3 bits (binary masks,
2-bit data) have no eligible run: capacity 0, and ``embed`` raises ``CapacityError``
(a 1-bit image has no noise in which a change could hide, and every change would be a
flip between the two saturated values). 3-bit data carries bits only in runs whose
groups span 2..5.

Keys: ``key`` is a per-image secret of >= 16 bytes, e.g. ``Keyring.stego_key(new SOP
Instance UID)``; sub-keys for ordering, whitening, directions and the tag are derived
with HMAC-SHA256 and labels.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import struct
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import MedcodecError

__all__ = [
    "SEGMENT_BITS",
    "GROUP",
    "MIN_GROUP_RANGE",
    "HEADER_BITS",
    "StegoError",
    "CapacityError",
    "MessageNotFoundError",
    "RestoreError",
    "EmbedPlan",
    "capacity_bits",
    "plan_embedding",
    "embed",
    "extract",
    "restore",
    "outside_digest",
    "psnr",
]

SEGMENT_BITS = 32  # values (and message bits) per run
GROUP = 8  # values per texture group inside a run
MIN_GROUP_RANGE = 3  # clipped range a group needs to carry bits
HEADER_BYTES = 4 + 16  # u32 message length + truncated HMAC tag
HEADER_BITS = 8 * HEADER_BYTES
MIN_KEY_BYTES = 16
MAX_BITS_STORED = 16

_LABEL = b"medarchive/stego/v1/"
_DISPLACED_MAGIC = b"MSD"
_DISPLACED_VERSION = 1
_DISPLACED_FIXED = len(_DISPLACED_MAGIC) + 1 + 4 + 32


class StegoError(MedcodecError):
    """Embedding, extraction or restore cannot proceed with these values, key or parameters."""


class CapacityError(StegoError):
    """The message does not fit in the eligible runs of the image (never truncated)."""


class MessageNotFoundError(StegoError):
    """No authentic message for this key: wrong key, altered pixels, or not a stego image."""


class RestoreError(StegoError):
    """The displaced information does not restore these stego values (wrong key, altered pixels or record)."""


@dataclass(frozen=True, eq=False)
class EmbedPlan:
    """Where a message of ``message_nbytes`` bytes goes.

    ``positions``: int64 flat (C-order) indices into the values, in stream order (bit i of
    the whitened header+message stream goes to ``positions[i]``). ``capacity_bits``: the
    image's message capacity (same as ``capacity_bits()``).
    """

    shape: tuple[int, ...]
    positions: np.ndarray
    message_nbytes: int
    capacity_bits: int

    @property
    def n_bits(self) -> int:
        return int(self.positions.size)

    @property
    def mask(self) -> np.ndarray:
        """Boolean array of ``shape``: True where a message bit is carried."""
        mask = np.zeros(int(np.prod(self.shape, dtype=np.int64)), dtype=bool)
        mask[self.positions] = True
        return mask.reshape(self.shape)


# --------------------------------------------------------------------------------------
# Checks and keyed streams


def _check_params(bits_stored: int, segment_bits: int) -> None:
    if not isinstance(bits_stored, (int, np.integer)) or not 1 <= int(bits_stored) <= MAX_BITS_STORED:
        raise StegoError(f"bits_stored must be an integer in 1..{MAX_BITS_STORED}, got {bits_stored!r}")
    if not isinstance(segment_bits, (int, np.integer)) or segment_bits < GROUP or segment_bits % GROUP:
        raise StegoError(f"segment_bits must be a positive multiple of {GROUP}, got {segment_bits!r}")


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
        raise StegoError(f"key must be at least {MIN_KEY_BYTES} bytes (use Keyring.stego_key(context))")
    return bytes(key)


def _flat_values(values: np.ndarray, bits_stored: int) -> np.ndarray:
    """The values as a flat int64 array (a copy), checked to lie in [0, 2**bits_stored)."""
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.integer):
        raise StegoError(f"values must be an integer array, got dtype {arr.dtype}")
    flat = arr.astype(np.int64, copy=True).reshape(-1)
    if flat.size:
        low, high = int(flat.min()), int(flat.max())
        if low < 0 or high >= 1 << bits_stored:
            raise StegoError(
                f"values must lie in [0, {(1 << bits_stored) - 1}] for bits_stored={bits_stored},"
                f" got min {low} max {high}"
            )
    return flat


def _subkey(key: bytes, label: bytes) -> bytes:
    return hmac.new(key, _LABEL + label, hashlib.sha256).digest()


def _keystream(key: bytes, label: bytes, nbytes: int) -> bytes:
    if nbytes <= 0:
        return b""
    encryptor = Cipher(algorithms.AES(_subkey(key, label)), modes.CTR(b"\x00" * 16)).encryptor()
    return encryptor.update(b"\x00" * nbytes) + encryptor.finalize()


def _keyed_bits(key: bytes, label: bytes, n: int) -> np.ndarray:
    stream = np.frombuffer(_keystream(key, label, (n + 7) // 8), dtype=np.uint8)
    return np.unpackbits(stream)[:n]


# --------------------------------------------------------------------------------------
# Runs


def _clip(values: np.ndarray, maxval: int) -> np.ndarray:
    return np.clip(values, 2, maxval - 2)


def _eligible(runs: np.ndarray, bits_stored: int) -> np.ndarray:
    """Runs (k, L) that carry bits: no value at 0 or the maximum, and every group's
    clipped range (values clipped to [2, max - 2]) at least MIN_GROUP_RANGE."""
    maxval = (1 << bits_stored) - 1
    if runs.shape[0] == 0 or maxval - 2 < 2:
        return np.zeros(runs.shape[0], dtype=bool)
    groups = _clip(runs, maxval).reshape(runs.shape[0], -1, GROUP)
    textured = (groups.max(axis=2) - groups.min(axis=2) >= MIN_GROUP_RANGE).all(axis=1)
    unsaturated = ((runs != 0) & (runs != maxval)).all(axis=1)
    return textured & unsaturated


def _all_runs(flat: np.ndarray, segment_bits: int) -> np.ndarray:
    n_slots = flat.size // segment_bits
    return flat[: n_slots * segment_bits].reshape(n_slots, segment_bits)


def _eligible_order(flat: np.ndarray, key: bytes, bits_stored: int, segment_bits: int) -> np.ndarray:
    """Eligible run indices, in keyed order."""
    runs = _all_runs(flat, segment_bits)
    n_slots = runs.shape[0]
    if n_slots == 0:
        return np.zeros(0, dtype=np.int64)
    sort_keys = np.frombuffer(_keystream(key, b"order", 8 * n_slots), dtype="<u8")
    order = np.argsort(sort_keys, kind="stable").astype(np.int64)
    eligible = _eligible(runs, bits_stored)
    return order[eligible[order]]


def _positions(order: np.ndarray, n_bits: int, segment_bits: int, capacity: int) -> np.ndarray:
    n_runs = -(-n_bits // segment_bits)
    if n_runs > order.size:
        raise CapacityError(
            f"message needs {n_bits - HEADER_BITS} bits ({(n_bits - HEADER_BITS) // 8} bytes) plus a"
            f" {HEADER_BITS}-bit header, but the image has room for {capacity} message bits"
            f" ({capacity // 8} bytes) in {order.size} textured runs of {segment_bits} values"
        )
    runs = order[:n_runs]
    return (runs[:, None] * segment_bits + np.arange(segment_bits, dtype=np.int64)).reshape(-1)[:n_bits]


def _capacity_from_order(order: np.ndarray, segment_bits: int) -> int:
    return max(0, int(order.size) * segment_bits - HEADER_BITS)


def capacity_bits(values: np.ndarray, bits_stored: int, *, segment_bits: int = SEGMENT_BITS) -> int:
    """Message bits the image can carry (header excluded); independent of the key."""
    _check_params(bits_stored, segment_bits)
    flat = _flat_values(values, bits_stored)
    eligible = int(_eligible(_all_runs(flat, segment_bits), bits_stored).sum())
    return max(0, eligible * segment_bits - HEADER_BITS)


def plan_embedding(
    values: np.ndarray, message_nbytes: int, *, key: bytes, bits_stored: int, segment_bits: int = SEGMENT_BITS
) -> EmbedPlan:
    """The positions a message of ``message_nbytes`` bytes will occupy (before embedding).

    Embedding keeps eligibility, so the plan computed on the cover equals the one the
    extractor finds on the stego image: ``outside_digest(cover, plan.mask)`` can be bound
    into the associated data before the message is sealed. Raises CapacityError.
    """
    _check_params(bits_stored, segment_bits)
    key = _check_key(key)
    flat = _flat_values(values, bits_stored)
    order = _eligible_order(flat, key, bits_stored, segment_bits)
    capacity = _capacity_from_order(order, segment_bits)
    positions = _positions(order, HEADER_BITS + 8 * int(message_nbytes), segment_bits, capacity)
    return EmbedPlan(
        shape=tuple(np.shape(values)), positions=positions, message_nbytes=int(message_nbytes), capacity_bits=capacity
    )


# --------------------------------------------------------------------------------------
# Embed / extract / restore


def _stream_bits(key: bytes, message: bytes) -> np.ndarray:
    if len(message) >= 1 << 32:
        raise CapacityError(f"message of {len(message)} bytes exceeds the 4 GiB length field")
    length = struct.pack("<I", len(message))
    tag = hmac.new(_subkey(key, b"tag"), length + message, hashlib.sha256).digest()[:16]
    plain = np.unpackbits(np.frombuffer(length + tag + message, dtype=np.uint8))
    return plain ^ _keyed_bits(key, b"whiten", plain.size)


def _directions(cover: np.ndarray, random_up: np.ndarray, maxval: int) -> np.ndarray:
    d = np.where(random_up.astype(bool), 1, -1).astype(np.int64)
    d[cover == 1] = 1  # never reach 0 (nor leave an eligible run)
    d[cover == maxval - 1] = -1  # never reach the maximum
    return d


def _embed_run_values(
    flat: np.ndarray, positions: np.ndarray, bits: np.ndarray, random_up: np.ndarray, bits_stored: int, segment_bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stego flat values, plus (changed, direction) per carrying value.

    Invariant (what makes extraction possible): every used run stays eligible. Values
    never reach 0 or the maximum (1 always goes up, max - 1 always down). Random
    directions are tried first; in a run where they break a group's clipped range, the
    changed values equal to their group's clipped minimum move down (1 goes up) and those
    equal to the clipped maximum move up (max - 1 goes down). With the clip to
    [2, max - 2], such a move never raises a group's clipped minimum or lowers its
    clipped maximum, and any other value moves within [min, max], so the clipped range
    cannot shrink.
    """
    maxval = (1 << bits_stored) - 1
    cover = flat[positions]
    changed = (cover & 1) != bits
    d = _directions(cover, random_up, maxval)
    stego = flat.copy()
    stego[positions] = cover + changed * d

    run_starts = positions[::segment_bits] // segment_bits
    run_idx = run_starts[:, None] * segment_bits + np.arange(segment_bits, dtype=np.int64)
    ok = _eligible(stego[run_idx], bits_stored)
    if not ok.all():
        cover_runs = flat[run_idx]  # (k, L)
        clipped = _clip(cover_runs, maxval).reshape(cover_runs.shape[0], -1, GROUP)
        gmin = np.repeat(clipped.min(axis=2), GROUP, axis=1).reshape(-1)
        gmax = np.repeat(clipped.max(axis=2), GROUP, axis=1).reshape(-1)
        c_run = clipped.reshape(-1)
        run_of_value = np.arange(positions.size) // segment_bits
        sel = ~ok[run_of_value]  # carrying values in failing runs
        local = run_of_value * segment_bits + (np.arange(positions.size) % segment_bits)
        c = c_run[local]
        low = sel & (c == gmin[local])
        high = sel & (c == gmax[local])
        d[low] = np.where(cover[low] > 1, -1, 1)
        d[high] = np.where(cover[high] < maxval - 1, 1, -1)
        stego[positions] = cover + changed * d
        if not _eligible(stego[run_idx], bits_stored).all():  # pragma: no cover - excluded by the invariant
            raise StegoError("internal error: embedding changed run eligibility")
    return stego, changed, d


def embed(
    values: np.ndarray, message: bytes, *, key: bytes, bits_stored: int, segment_bits: int = SEGMENT_BITS
) -> tuple[np.ndarray, bytes]:
    """Embed ``message`` into a copy of ``values``; returns (stego values, displaced).

    ``values``: integer array (frames, samples, rows, cols) of offset-binary stored values
    in [0, 2**bits_stored). The stego array has the same shape, dtype int64, and differs
    from ``values`` by at most 1, only at the plan's positions. ``displaced`` (bytes) is what
    ``restore`` needs to give back ``values`` exactly; seal it. Raises CapacityError with
    the needed and available bits when the message does not fit.
    """
    _check_params(bits_stored, segment_bits)
    key = _check_key(key)
    message = bytes(message)
    flat = _flat_values(values, bits_stored)
    order = _eligible_order(flat, key, bits_stored, segment_bits)
    bits = _stream_bits(key, message)
    positions = _positions(order, bits.size, segment_bits, _capacity_from_order(order, segment_bits))
    random_up = _keyed_bits(key, b"direction", bits.size)
    stego, changed, d = _embed_run_values(flat, positions, bits, random_up, bits_stored, segment_bits)
    displaced = b"".join(
        (
            _DISPLACED_MAGIC,
            bytes([_DISPLACED_VERSION]),
            struct.pack("<I", positions.size),
            _carried_digest(flat[positions]),
            np.packbits(changed).tobytes(),
            np.packbits(d[changed] > 0).tobytes(),
        )
    )
    return stego.reshape(np.shape(values)), displaced


def _carried_digest(carried: np.ndarray) -> bytes:
    return hashlib.sha256(_LABEL + b"carried\x00" + carried.astype("<u2").tobytes()).digest()


def extract(
    stego_values: np.ndarray, *, key: bytes, bits_stored: int, segment_bits: int = SEGMENT_BITS
) -> tuple[bytes, np.ndarray]:
    """Read the message back with the key alone; returns (message, positions mask).

    Raises MessageNotFoundError for a wrong key, altered carrying pixels, or an image that
    carries no message.
    """
    _check_params(bits_stored, segment_bits)
    key = _check_key(key)
    flat = _flat_values(stego_values, bits_stored)
    order = _eligible_order(flat, key, bits_stored, segment_bits)
    capacity = _capacity_from_order(order, segment_bits)
    not_found = (
        "no message for this key in these pixels (wrong key, pixels altered, or not a stego image)"
    )
    if order.size * segment_bits < HEADER_BITS:
        raise MessageNotFoundError(f"{not_found}: the image has no room for a header")
    header_pos = _positions(order, HEADER_BITS, segment_bits, capacity)
    whiten_header = _keyed_bits(key, b"whiten", HEADER_BITS)
    header = np.packbits((flat[header_pos] & 1).astype(np.uint8) ^ whiten_header).tobytes()
    (length,) = struct.unpack("<I", header[:4])
    if 8 * length > capacity:
        raise MessageNotFoundError(f"{not_found}: the length field is beyond the image's capacity")
    n_bits = HEADER_BITS + 8 * length
    positions = _positions(order, n_bits, segment_bits, capacity)
    stream = np.packbits((flat[positions] & 1).astype(np.uint8) ^ _keyed_bits(key, b"whiten", n_bits)).tobytes()
    message = stream[HEADER_BYTES:]
    tag = hmac.new(_subkey(key, b"tag"), stream[:4] + message, hashlib.sha256).digest()[:16]
    if not hmac.compare_digest(tag, stream[4:HEADER_BYTES]):
        raise MessageNotFoundError(f"{not_found}: the message tag does not verify")
    mask = np.zeros(flat.size, dtype=bool)
    mask[positions] = True
    return message, mask.reshape(np.shape(stego_values))


def restore(
    stego_values: np.ndarray, displaced: bytes, *, key: bytes, bits_stored: int, segment_bits: int = SEGMENT_BITS
) -> np.ndarray:
    """The exact original values from the stego values, the displaced bytes and the key.

    Raises RestoreError when they do not belong together (checked with the SHA-256 of the
    original carrying values kept in ``displaced``).
    """
    _check_params(bits_stored, segment_bits)
    key = _check_key(key)
    displaced = bytes(displaced)
    if len(displaced) < _DISPLACED_FIXED or displaced[:3] != _DISPLACED_MAGIC:
        raise RestoreError("displaced bytes are not medarchive stego displaced information (bad magic)")
    if displaced[3] != _DISPLACED_VERSION:
        raise RestoreError(
            f"displaced information version {displaced[3]} is not supported; this reader knows {_DISPLACED_VERSION}"
        )
    (n_bits,) = struct.unpack_from("<I", displaced, 4)
    digest = displaced[8:40]
    changed_bytes = (n_bits + 7) // 8
    if len(displaced) < _DISPLACED_FIXED + changed_bytes:
        raise RestoreError(f"displaced information truncated: {len(displaced)} bytes for {n_bits} carrying values")
    changed = np.unpackbits(np.frombuffer(displaced, np.uint8, changed_bytes, _DISPLACED_FIXED))[:n_bits].astype(bool)
    n_changed = int(changed.sum())
    expected = _DISPLACED_FIXED + changed_bytes + (n_changed + 7) // 8
    if len(displaced) != expected:
        raise RestoreError(f"displaced information has {len(displaced)} bytes; its counts say {expected}")
    up_all = np.unpackbits(np.frombuffer(displaced, np.uint8, offset=_DISPLACED_FIXED + changed_bytes))
    up = up_all[:n_changed]
    changed_all = np.unpackbits(np.frombuffer(displaced, np.uint8, changed_bytes, _DISPLACED_FIXED))
    if changed_all[n_bits:].any() or up_all[n_changed:].any():
        raise RestoreError("displaced information has non-zero padding bits (altered record)")

    flat = _flat_values(stego_values, bits_stored)
    order = _eligible_order(flat, key, bits_stored, segment_bits)
    try:
        positions = _positions(order, n_bits, segment_bits, _capacity_from_order(order, segment_bits))
    except CapacityError:
        raise RestoreError("stego values do not hold the runs the displaced information describes"
                           " (wrong key or altered pixels)") from None
    d = np.where(up.astype(bool), 1, -1)
    carried = flat[positions]
    carried[changed] -= d
    if carried.size and (carried.min() < 0 or carried.max() >= 1 << bits_stored) or not hmac.compare_digest(
        _carried_digest(carried), digest
    ):
        raise RestoreError("restored values fail their digest (wrong key, altered pixels, or another image's record)")
    flat[positions] = carried
    return flat.reshape(np.shape(stego_values))


# --------------------------------------------------------------------------------------
# Binding and quality


def outside_digest(values: np.ndarray, positions_mask: np.ndarray) -> str:
    """Hex SHA-256 of the values outside the embedded positions (and of the mask and shape).

    Equal for the cover and the stego image (embedding only changes masked values), so
    it binds a sealed message to the pixels that embedding does not touch.
    """
    arr = np.asarray(values)
    mask = np.asarray(positions_mask, dtype=bool)
    if mask.size != arr.size:
        raise StegoError(f"positions mask has {mask.size} entries for {arr.size} values")
    flat = arr.reshape(-1)
    flat_mask = mask.reshape(-1)
    h = hashlib.sha256(_LABEL + b"outside\x00")
    h.update(json.dumps(list(arr.shape)).encode("ascii"))
    h.update(np.packbits(flat_mask).tobytes())
    h.update(np.ascontiguousarray(flat[~flat_mask]).astype("<i8").tobytes())
    return h.hexdigest()


def psnr(a: np.ndarray, b: np.ndarray, bits_stored: int) -> float:
    """Peak signal-to-noise ratio in dB of ``b`` against ``a``, peak 2**bits_stored - 1 (inf if equal)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise StegoError(f"psnr needs equal shapes, got {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2)) if a.size else 0.0
    if mse == 0.0:
        return math.inf
    peak = float((1 << bits_stored) - 1)
    return 10.0 * math.log10(peak * peak / mse)
