"""Segmented message steganography in the lowest plane, reversible with the displaced bits.

The message (the sealed PHI) is carried by bit 0 of the stored values:

* Runs. The flattened values (C order over frames, samples, rows, cols) are cut into
  aligned runs of ``SEGMENT_BITS`` consecutive values (a run may continue on the next
  row when the width is not a multiple). A keyed permutation (AES-256-CTR keystream
  -> 64-bit sort keys -> stable argsort: identical on every machine) orders the runs;
  the message is cut into segments of ``SEGMENT_BITS`` bits and segment i goes to the
  i-th *eligible* run after the tag runs in that order (see Framing). Runs never
  overlap by construction.
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
* Framing and authentication (version 2). The first ``TAG_BITS // SEGMENT_BITS`` runs in
  the keyed order that are *robust* carry a 128-bit image tag by LSB replacement; the
  message stream ``u32 message length || message``, XOR-ed with a keyed keystream (so
  the carried bits look uniformly random), goes to the eligible runs that follow the
  last tag run in the keyed order, by LSB matching as above. The tag is HMAC-SHA256 over
  the bit depth, the shape and *every* stego value with only the tag's own bit 0
  cleared, so it authenticates the message and all the pixels, the carrying values'
  upper bits included; the extractor checks it before it reads the length, and a wrong
  key or any altered pixel gives ``MessageNotFoundError``, never a wrong message.
  A robust run is eligible whatever its values' bit 0 is (computed on ``v & ~1``: all
  in [2, max - 3] and every group's range >= MIN_GROUP_RANGE + 1), which is what lets
  the tag change bit 0 without moving any run in or out of eligibility. LSB replacement
  of 128 values is too few for the pairs-of-values attacks: with the tag, their AUCs
  stay at chance (``python -m benchmarks.steganalysis``).
  Version 1 (``_extract_v1``; still read, never written) carried ``length || 16-byte
  HMAC tag of length and message || message`` in the first eligible runs; its tag
  covers only the carried bits, so it cannot see a change to a carrying value's upper
  bits. ``extract_versioned`` says which version authenticated an image.
* Colour images (version 3). For ``values`` of shape (frames, samples, rows, cols) with
  two or more samples, the runs, tag and message are laid over the *first sample* of
  every pixel, and a pixel may carry only when it is grey (every sample equal) or its
  other samples are not all equal (R may carry where G != B). A change to a grey pixel is
  made to all its samples, so it stays grey; a change to another carrying pixel touches
  only its first sample, and since its other samples differ it never becomes grey. The
  rule therefore reads the same on the cover and on the stego image, and grey pixels keep
  their count and positions (embedding each plane on its own, as version 2 did, turned
  grey pixels of near-grey ultrasound into colour ones, a tell for any test of channel
  equality). Pixels whose other samples are equal but differ from the first (G = B != R)
  never change. Version 2 and 3 share keys, framing and the displaced-information layout
  (over the first samples); for one sample per pixel they are the same, and ``embed``
  writes version 2 bytes there. Colour images embedded as version 2 are still read and
  restored.
* Displaced information (``embed`` returns it; the caller seals it): which carrying values
  changed (1 bit per carrying value) and the direction of each change (1 bit per changed
  value, or, where smaller, only the changes whose direction is not the keyed random
  one: ``DIRECTION_EXCEPTIONS``), the original bit 0 of the tag values, plus the count
  and a SHA-256 of the original carrying values (tag values first), so ``restore`` gives
  back the exact original and detects a wrong key or altered stego pixels. About 1 bit
  per message bit, ~2 KiB for a 2 KiB message (1.5 bits with a bit per direction).

Bit depths: any ``bits_stored`` in 1..16. Images of fewer than 4 bits have no robust
run, so no room for the tag: capacity 0, and ``embed`` raises ``CapacityError`` (a 1-bit
image has no noise in which a change could hide, and every change would be a flip
between the two saturated values).

Keys: ``key`` is a per-image secret of >= 16 bytes, e.g. ``Keyring.stego_key(new SOP
Instance UID)``; sub-keys for ordering, whitening, directions and the tag are derived
with HMAC-SHA256 and labels. The capacity depends on the key (eligible runs ahead of
the last tag run in the keyed order carry nothing), so ``capacity_bits`` takes it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import leb128
from .errors import MedcodecError

__all__ = [
    "SEGMENT_BITS",
    "GROUP",
    "MIN_GROUP_RANGE",
    "HEADER_BITS",
    "LENGTH_BITS",
    "TAG_BITS",
    "VERSION",
    "StegoError",
    "CapacityError",
    "MessageNotFoundError",
    "RestoreError",
    "EmbedPlan",
    "Cover",
    "capacity_bits",
    "embeddable_values",
    "plan_embedding",
    "embed",
    "extract",
    "extract_versioned",
    "restore",
    "recover",
    "outside_digest",
    "psnr",
]

SEGMENT_BITS = 32  # values (and message bits) per run
GROUP = 8  # values per texture group inside a run
MIN_GROUP_RANGE = 3  # clipped range a group needs to carry bits
VERSION = 3  # newest layout: embed writes 3 for colour images, 2 (the same as 3) otherwise; 1 is still read
LENGTH_BITS = 32  # u32 message length, first in the message runs
TAG_BITS = 128  # truncated HMAC-SHA256 image tag, in its own robust runs
HEADER_BITS = LENGTH_BITS + TAG_BITS  # carried bits that are not message
HEADER_BYTES = HEADER_BITS // 8  # version 1: u32 message length + 16-byte tag of the message
MIN_KEY_BYTES = 16
MAX_BITS_STORED = 16

_LABEL = b"medarchive/stego/v1/"
_DISPLACED_MAGIC = b"MSD"
_DISPLACED_FIXED = len(_DISPLACED_MAGIC) + 1 + 4 + 32
# Displaced information of version 2 or 3 with this bit set in its version byte gives the
# changes' directions as their exceptions: the changed values (counted in order) whose
# direction is not the keyed random one embedding tried first (``_directions``, and the
# moves that keep a run eligible), as a LEB128 count and the LEB128 gaps between them.
# Embedding keeps the random direction for all but a few: on the 20 pydicom-data images
# that carry a message (2026-12-06), 209 to 250 of about 94,500 changes, so the direction
# bits (11.8 of section 33's 38.9 kB) shrink to a few hundred bytes (27.3 kB in all).
# Writers write the smaller form.
DIRECTION_EXCEPTIONS = 0x80


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
    the whitened length+message stream goes to ``positions[i]``). ``tag_positions``: the
    ``TAG_BITS`` values that carry the image tag. ``capacity_bits``: the image's message
    capacity under this key (same as ``capacity_bits()``). ``linked_positions`` (version 3):
    the other samples of grey carrying pixels, which change together with their first sample.
    """

    shape: tuple[int, ...]
    positions: np.ndarray
    tag_positions: np.ndarray
    message_nbytes: int
    capacity_bits: int
    linked_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def n_bits(self) -> int:
        """Carried bits: tag, length and message."""
        return int(self.positions.size + self.tag_positions.size)

    @property
    def mask(self) -> np.ndarray:
        """Boolean array of ``shape``: True where embedding may change a value."""
        return _mask(self.shape, self.tag_positions, self.positions, self.linked_positions)


def _mask(shape: tuple[int, ...], *positions: np.ndarray) -> np.ndarray:
    mask = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=bool)
    for p in positions:
        mask[p] = True
    return mask.reshape(shape)


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


# Values are worked on as uint16 (bits_stored <= MAX_BITS_STORED = 16): a copy of the
# image costs 2 bytes per sample, not int64's 8 (sealing a 3.1 M-sample CR held ~95 MB
# more than the keyless path, most of it int64 copies). Arithmetic that can leave
# 0..65535 (+-1 changes, bit masks with ~1) is done on int64 gathers of the few values
# it concerns.
WORK_DTYPE = np.dtype(np.uint16)


def _flat_values(values: np.ndarray, bits_stored: int, *, copy: bool = True) -> np.ndarray:
    """The values as a flat uint16 array, checked to lie in [0, 2**bits_stored): a copy,
    or with ``copy=False`` a read-only view where the values already are uint16."""
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.integer):
        raise StegoError(f"values must be an integer array, got dtype {arr.dtype}")
    if arr.size:
        low = 0 if np.issubdtype(arr.dtype, np.unsignedinteger) else int(arr.min())  # a pass fewer for words
        high = int(arr.max())
        if low < 0 or high >= 1 << bits_stored:
            raise StegoError(
                f"values must lie in [0, {(1 << bits_stored) - 1}] for bits_stored={bits_stored},"
                f" got min {low} max {high}"
            )
    flat = np.array(arr, dtype=WORK_DTYPE, copy=True if copy else None, order="C").reshape(-1)
    if not copy:
        flat = flat.view()
        flat.flags.writeable = False
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


def _keyed_order(key: bytes, label: bytes, n: int) -> np.ndarray:
    """The keyed permutation of ``n`` runs: the stable argsort of 64-bit keystream sort keys
    (``stegokernel.stable_argsort_uniform``: linear time, since the keys are uniform)."""
    from .stegokernel import stable_argsort_uniform  # numba: loaded on first use

    return stable_argsort_uniform(np.frombuffer(_keystream(key, label, 8 * n), dtype="<u8"))


def _clip(values: np.ndarray, maxval: int) -> np.ndarray:
    return np.clip(values, 2, maxval - 2)


def _eligible(runs: np.ndarray, bits_stored: int) -> np.ndarray:
    """Runs (k, L) that carry bits: no value at 0 or the maximum, and every group's
    clipped range (values clipped to [2, max - 2]) at least MIN_GROUP_RANGE."""
    from .stegokernel import eligible_runs  # numba: loaded on first use

    if runs.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    return eligible_runs(np.ascontiguousarray(runs), (1 << bits_stored) - 1, GROUP, MIN_GROUP_RANGE)


@dataclass(frozen=True, eq=False)
class _Carrier:
    """The values a layout runs over, and how they map back to the image's values.

    Version 2 (and any one-sample image): the values themselves. Version 3, colour images
    (frames, samples, rows, cols): the first sample of every pixel, of which only the
    pixels that are grey (every sample equal) or whose other samples are not all equal may
    carry (``allowed``). A change to a grey pixel's first sample is written to all its
    samples, so it stays grey; a change to another carrying pixel leaves its other samples,
    which differ among themselves, as they are, so it never becomes grey. Which pixels are
    grey, and which may carry, is therefore the same on the cover and on the stego image.
    """

    flat: np.ndarray  # the values the layout and the embedding run over
    allowed: np.ndarray | None  # per carrier value: may carry (None: all may)
    grey: np.ndarray | None  # per carrier value: a grey pixel (version 3)
    shape: tuple[int, ...]

    def full(self, positions: np.ndarray) -> np.ndarray:
        """Flat image indices of the values at carrier ``positions``."""
        if self.grey is None:
            return positions
        frames, samples, rows, cols = self.shape
        per_frame = rows * cols
        return (positions // per_frame) * samples * per_frame + positions % per_frame

    def linked(self, positions: np.ndarray) -> np.ndarray:
        """Flat image indices of the other samples of the grey pixels among ``positions``."""
        if self.grey is None:
            return np.zeros(0, dtype=np.int64)
        per_frame = self.shape[2] * self.shape[3]
        first = self.full(positions[self.grey[positions]])
        return (first[:, None] + per_frame * np.arange(1, self.shape[1], dtype=np.int64)).reshape(-1)

    def write(self, image_flat: np.ndarray, positions: np.ndarray, values: np.ndarray) -> None:
        """Put carrier values back into the image's flat values (grey pixels: every sample)."""
        image_flat[self.full(positions)] = values
        if self.grey is not None:
            grey = self.grey[positions]
            per_frame = self.shape[2] * self.shape[3]
            first = self.full(positions[grey])
            for s in range(1, self.shape[1]):
                image_flat[first + s * per_frame] = values[grey]


def _carrier(flat: np.ndarray, shape: tuple[int, ...], version: int) -> _Carrier:
    if version != 3:
        return _Carrier(flat=flat, allowed=None, grey=None, shape=shape)
    v = flat.reshape(shape)
    grey = (v == v[:, :1]).all(axis=1).reshape(-1)
    rest = v[:, 1:]
    others_differ = (rest != rest[:, :1]).any(axis=1).reshape(-1)
    return _Carrier(flat=np.ascontiguousarray(v[:, 0]).reshape(-1), allowed=grey | others_differ, grey=grey,
                    shape=shape)


def _version_for(shape: tuple[int, ...]) -> int:
    """The stego version ``embed`` writes for an image of this shape: 3 for colour, else 2
    (for one sample per pixel the two layouts are the same, and so are the bytes)."""
    return 3 if len(shape) == 4 and shape[1] >= 2 else 2


def _layout(
    flat: np.ndarray, key: bytes, bits_stored: int, segment_bits: int, carriers: np.ndarray | None = None,
    order: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(tag positions, message run order, message capacity in bits) for versions 2 and 3.

    The tag runs are the first ``ceil(TAG_BITS / segment_bits)`` robust runs in the keyed
    order; the message runs are the eligible runs after the last of them. Runs ahead of
    the last tag run keep their values (or, for tag runs, their robustness) through
    embedding, and message runs stay eligible, so the extractor finds the same layout.
    ``carriers`` (version 3, ``_Carrier.allowed``) further restricts both kinds of run to
    those whose every value may carry. ``order``: the keyed permutation of the runs
    (``_run_order``), when the caller has it.
    """
    read = _ReadLayout(flat, carriers, key, bits_stored, segment_bits, order)  # the tag: robust runs as far as needed
    empty = np.zeros(0, dtype=np.int64)
    if not read.tag_positions.size:
        return empty, empty, 0
    runs, after = read.runs, read.order[read.tag_end:]
    allowed = True if carriers is None else _all_runs(carriers, segment_bits).all(axis=1)
    # every run's test in place is cheaper than gathering the runs after the tag (a copy of
    # most of the image) to test those alone; the capacity needs all of them
    message_order = after[(_eligible(runs, bits_stored) & allowed)[after]]
    return read.tag_positions, message_order, max(0, int(message_order.size) * segment_bits - LENGTH_BITS)


class _ReadLayout:
    """``_layout`` as a reader needs it, found in the keyed order as far as it is read:
    the tag runs (the first robust runs) at once, and the message runs (the eligible
    runs after the last tag run) as many as ``message_positions`` asks for, so a reader
    tests the runs up to the last one its message uses, not every run of the image
    (``_layout``, which the embedder needs for the capacity). The same positions as
    ``_layout``'s, and the same answer to whether a message of n bits fits
    (``message_positions`` None exactly when its message runs cannot hold n bits). What
    it allocates is bounded by the image's runs, whatever n a length field states."""

    def __init__(self, flat: np.ndarray, allowed: np.ndarray | None, key: bytes, bits_stored: int, segment_bits: int,
                 order: np.ndarray | None = None) -> None:
        from .stegokernel import next_runs  # numba: loaded on first use

        self._next_runs = next_runs
        self.segment_bits = segment_bits
        self.maxval = (1 << bits_stored) - 1
        self.runs = _all_runs(flat, segment_bits)
        n_slots = self.runs.shape[0]
        self.allowed = (np.zeros((0, segment_bits), dtype=bool) if allowed is None
                        else _all_runs(allowed, segment_bits))
        self.order = _run_order(key, n_slots) if order is None else order
        n_tag_runs = -(-TAG_BITS // segment_bits)
        tag_at = self._find(0, n_tag_runs, robust=True) if n_slots else np.zeros(0, dtype=np.int64)
        self.tag_positions = np.zeros(0, dtype=np.int64)
        self._message_at = np.zeros(0, dtype=np.int64)  # indices into the order found so far
        if tag_at.size == n_tag_runs:
            tag_runs = self.order[tag_at]
            self.tag_positions = (tag_runs[:, None] * segment_bits
                                  + np.arange(segment_bits, dtype=np.int64)).reshape(-1)[:TAG_BITS]
            self.tag_end = int(tag_at[-1]) + 1  # the message runs come after the last tag run
        else:
            self.tag_end = self.order.size  # no tag: no message either
        self._next = self.tag_end

    def _find(self, start: int, need: int, *, robust: bool) -> np.ndarray:
        return self._next_runs(self.runs, self.allowed, self.order, start, need, robust, self.maxval, GROUP,
                               MIN_GROUP_RANGE)

    def message_positions(self, n_bits: int) -> np.ndarray | None:
        """The carrier positions of the message stream's first ``n_bits`` bits (length
        field first); None where the image has fewer message runs than they need."""
        n_runs = -(-n_bits // self.segment_bits)
        missing = n_runs - self._message_at.size
        if missing > 0 and self._next < self.order.size:
            more = self._find(self._next, missing, robust=False)
            self._message_at = np.concatenate([self._message_at, more])
            # all found: the next search starts after the last; fewer: the order is used up
            self._next = int(more[-1]) + 1 if more.size == missing else self.order.size
        if n_runs > self._message_at.size:
            return None
        runs = self.order[self._message_at[:n_runs]]
        return (runs[:, None] * self.segment_bits + np.arange(self.segment_bits, dtype=np.int64)).reshape(-1)[:n_bits]


def _run_order(key: bytes, n_slots: int) -> np.ndarray:
    """The keyed permutation of ``n_slots`` runs that versions 2 and 3 lay out in."""
    return _keyed_order(key, b"v2/order", n_slots)


def _all_runs(flat: np.ndarray, segment_bits: int) -> np.ndarray:
    n_slots = flat.size // segment_bits
    return flat[: n_slots * segment_bits].reshape(n_slots, segment_bits)


def _eligible_order(flat: np.ndarray, key: bytes, bits_stored: int, segment_bits: int) -> np.ndarray:
    """Eligible run indices, in the version 1 keyed order."""
    runs = _all_runs(flat, segment_bits)
    n_slots = runs.shape[0]
    if n_slots == 0:
        return np.zeros(0, dtype=np.int64)
    order = _keyed_order(key, b"order", n_slots)
    eligible = _eligible(runs, bits_stored)
    return order[eligible[order]]


def _positions(order: np.ndarray, n_bits: int, segment_bits: int, capacity: int, header_bits: int) -> np.ndarray:
    n_runs = -(-n_bits // segment_bits)
    if n_runs > order.size:
        raise CapacityError(
            f"message needs {n_bits - header_bits} bits ({(n_bits - header_bits) // 8} bytes) plus a"
            f" {header_bits}-bit header, but the image has room for {capacity} message bits"
            f" ({capacity // 8} bytes) in {order.size} textured runs of {segment_bits} values"
        )
    runs = order[:n_runs]
    return (runs[:, None] * segment_bits + np.arange(segment_bits, dtype=np.int64)).reshape(-1)[:n_bits]


def _capacity_from_order(order: np.ndarray, segment_bits: int) -> int:
    """Version 1 message capacity."""
    return max(0, int(order.size) * segment_bits - HEADER_BITS)


class Cover:
    """One image made ready to carry a message under one key: its checked flat values, its
    carrier and its layout, computed once. Sealing asks the same image for its capacity,
    a plan per message tier and the embedding; through one ``Cover`` they share one copy of
    the values and one layout instead of each recomputing (or hashing the image to find)
    them. ``capacity_bits``, ``plan_embedding`` and ``embed`` are this class for one call.
    """

    def __init__(self, values: np.ndarray, *, key: bytes, bits_stored: int, segment_bits: int = SEGMENT_BITS,
                 version: int | None = None) -> None:
        _check_params(bits_stored, segment_bits)
        self.key = _check_key(key)
        self.bits_stored = int(bits_stored)
        self.segment_bits = int(segment_bits)
        self.shape = tuple(np.shape(values))
        self.version = _version_for(self.shape) if version is None else version
        self.flat = _flat_values(values, bits_stored, copy=False)  # read, never written: the caller's values
        self.carrier = _carrier(self.flat, self.shape, self.version)
        self.run_order = _run_order(self.key, self.carrier.flat.size // self.segment_bits)
        self.run_order.setflags(write=False)  # shared with ``Embedded``
        self.tag_positions, self.order, self.capacity_bits = _layout(
            self.carrier.flat, self.key, self.bits_stored, self.segment_bits, self.carrier.allowed, self.run_order)

    def plan(self, message_nbytes: int) -> EmbedPlan:
        """``plan_embedding`` for this image."""
        carrier, tag_positions = self.carrier, self.tag_positions
        positions = _planned(tag_positions, self.order, LENGTH_BITS + 8 * int(message_nbytes), self.segment_bits,
                             self.capacity_bits)
        return EmbedPlan(shape=self.shape, positions=carrier.full(positions), tag_positions=carrier.full(tag_positions),
                         message_nbytes=int(message_nbytes), capacity_bits=self.capacity_bits,
                         linked_positions=carrier.linked(np.concatenate([tag_positions, positions])))

    def embed(self, message: bytes) -> tuple[np.ndarray, bytes]:
        """``embed`` into this image (the cover is left as it was); the stego values are
        uint16, the module's working width."""
        stego, displaced, _ = self.embed_known(message)
        return stego, displaced

    def embed_known(self, message: bytes) -> tuple[np.ndarray, bytes, Embedded]:
        """``embed``, plus what it knows of the stego image it made (``Embedded``), for
        verifying it (``recover(..., known=)``)."""
        key, carrier, tag_positions, segment_bits = self.key, self.carrier, self.tag_positions, self.segment_bits
        message = bytes(message)
        bits = _stream_bits(key, message)
        positions = _planned(tag_positions, self.order, bits.size, segment_bits, self.capacity_bits)
        random_up = _keyed_bits(key, b"v2/direction", bits.size)
        carried, changed, d = _embed_run_values(carrier.flat, positions, bits, random_up, self.bits_stored, segment_bits)
        stego = self.flat.copy()
        carrier.write(stego, positions, carried)
        tag_cover = carrier.flat[tag_positions] & 1
        tag = _image_tag(key, stego, self.shape, self.bits_stored, _tag_cleared(carrier, tag_positions))
        carrier.write(stego, tag_positions, (carrier.flat[tag_positions].astype(np.int64) & ~1) | tag)
        up = d[changed] > 0
        directions = np.packbits(up).tobytes()
        exceptions = _leb128_gaps(np.flatnonzero(up != random_up.astype(bool)[changed]))
        flag = DIRECTION_EXCEPTIONS if len(exceptions) < len(directions) else 0
        displaced = b"".join(
            (
                _DISPLACED_MAGIC,
                bytes([self.version | flag]),
                struct.pack("<I", positions.size),
                _carried_digest(carrier.flat[np.concatenate([tag_positions, positions])]),
                np.packbits(tag_cover).tobytes(),
                np.packbits(changed).tobytes(),
                exceptions if flag else directions,
            )
        )
        known = Embedded(key=key, version=self.version, segment_bits=segment_bits, run_order=self.run_order,
                         tag_positions=tag_positions, tag=tag)
        return stego.reshape(self.shape), displaced, known

    def changes(self, stego_values: np.ndarray, plan: EmbedPlan) -> dict[str, float | int]:
        """What embedding ``plan``'s message changed: values changed, the largest change and
        the PSNR of the stego image against this cover. Embedding changes only the plan's
        values (its mask), so only those are compared."""
        at = np.concatenate([plan.tag_positions, plan.positions, plan.linked_positions])
        diff = np.asarray(stego_values).reshape(-1)[at].astype(np.int64) - self.flat[at]
        sse = float(np.dot(diff, diff))
        return {"changed": int(np.count_nonzero(diff)), "max_error": int(np.abs(diff).max(initial=0)),
                "psnr": _psnr(sse, self.flat.size, self.bits_stored)}


@dataclass(frozen=True, eq=False)
class Embedded:
    """What ``Cover.embed_known`` knows of the stego image it made: under which key and
    layout version, the keyed run order, and the image tag it wrote (its bits and their
    carrier positions). Verifying that image just after (``recover(..., known=)``)
    compares with these instead of recomputing them: the order is a function of the key
    and the image's size alone, and the tag, an HMAC over every value, is the same
    function of the same values wherever extraction finds the tag at the same positions
    (the image is the one embedding made: verification has compared the decoded pixels
    with it). Where it finds the tag elsewhere, the HMAC is computed as on any image."""

    key: bytes
    version: int
    segment_bits: int
    run_order: np.ndarray
    tag_positions: np.ndarray
    tag: np.ndarray

    def applies(self, key: bytes, version: int, segment_bits: int) -> bool:
        return key == self.key and version == self.version and segment_bits == self.segment_bits


def capacity_bits(values: np.ndarray, bits_stored: int, *, key: bytes, segment_bits: int = SEGMENT_BITS) -> int:
    """Message bits the image can carry under ``key`` (length field and tag excluded)."""
    return Cover(values, key=key, bits_stored=bits_stored, segment_bits=segment_bits).capacity_bits


def embeddable_values(values: np.ndarray, bits_stored: int, *, segment_bits: int = SEGMENT_BITS) -> int:
    """Values in the runs that may carry bits (eligible runs, with the colour rule for colour
    images): the embeddable region, the same under every key (only the order is keyed)."""
    _check_params(bits_stored, segment_bits)
    shape = tuple(np.shape(values))
    carrier = _carrier(_flat_values(values, bits_stored, copy=False), shape, _version_for(shape))
    eligible = _eligible(_all_runs(carrier.flat, segment_bits), bits_stored)
    if carrier.allowed is not None:
        eligible &= _all_runs(carrier.allowed, segment_bits).all(axis=1)
    return int(eligible.sum()) * segment_bits


def plan_embedding(
    values: np.ndarray, message_nbytes: int, *, key: bytes, bits_stored: int, segment_bits: int = SEGMENT_BITS
) -> EmbedPlan:
    """The positions a message of ``message_nbytes`` bytes will occupy (before embedding).

    Embedding keeps the layout, so the plan computed on the cover equals the one the
    extractor finds on the stego image: ``outside_digest(cover, plan.mask)`` can be bound
    into the associated data before the message is sealed. Raises CapacityError.
    """
    return Cover(values, key=key, bits_stored=bits_stored, segment_bits=segment_bits).plan(message_nbytes)


def _planned(tag_positions: np.ndarray, order: np.ndarray, n_bits: int, segment_bits: int, capacity: int) -> np.ndarray:
    if not tag_positions.size:
        raise CapacityError(
            f"message needs {n_bits - LENGTH_BITS} bits plus a {HEADER_BITS}-bit header, but the image has"
            f" room for 0 message bits: fewer than {-(-TAG_BITS // segment_bits)} runs of {segment_bits}"
            " values are textured enough to carry the image tag"
        )
    return _positions(order, n_bits, segment_bits, capacity, LENGTH_BITS)


# --------------------------------------------------------------------------------------
# Embed / extract / restore


def _stream_bits(key: bytes, message: bytes) -> np.ndarray:
    if len(message) >= 1 << 32:
        raise CapacityError(f"message of {len(message)} bytes exceeds the 4 GiB length field")
    plain = np.unpackbits(np.frombuffer(struct.pack("<I", len(message)) + message, dtype=np.uint8))
    return plain ^ _keyed_bits(key, b"v2/whiten", plain.size)


def _image_tag(key: bytes, flat: np.ndarray, shape: tuple[int, ...], bits_stored: int, tag_positions: np.ndarray) -> np.ndarray:
    """The image tag's bits: HMAC-SHA256 over the bit depth, the shape and every value,
    with bit 0 of the tag's own values cleared."""
    mac = hmac.new(_subkey(key, b"v2/tag"), digestmod=hashlib.sha256)
    mac.update(struct.pack("<B", bits_stored) + json.dumps(list(shape)).encode("ascii") + b"\x00")
    words = np.ascontiguousarray(flat, dtype="<u2")  # the values as the tag covers them (bits_stored <= 16)
    at = 0
    for p in np.unique(tag_positions):  # the values between the cleared ones are hashed in place
        mac.update(words[at:p].data)
        mac.update(struct.pack("<H", int(words[p]) & 0xFFFE))
        at = int(p) + 1
    mac.update(words[at:].data)
    return np.unpackbits(np.frombuffer(mac.digest()[: TAG_BITS // 8], dtype=np.uint8))


def _directions(cover: np.ndarray, random_up: np.ndarray, maxval: int) -> np.ndarray:
    d = np.where(random_up.astype(bool), 1, -1).astype(np.int64)
    d[cover == 1] = 1  # never reach 0 (nor leave an eligible run)
    d[cover == maxval - 1] = -1  # never reach the maximum
    return d


def _embed_run_values(
    flat: np.ndarray, positions: np.ndarray, bits: np.ndarray, random_up: np.ndarray, bits_stored: int, segment_bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The carrying values after embedding, plus (changed, direction), each per carrying value.

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

    # Only the used runs are looked at (not a copy of the image): the carrying values are
    # the first values of the runs they fill, in order.
    run_starts = positions[::segment_bits] // segment_bits
    run_idx = run_starts[:, None] * segment_bits + np.arange(segment_bits, dtype=np.int64)
    if not np.array_equal(run_idx.reshape(-1)[: positions.size], positions):  # pragma: no cover - by construction
        raise StegoError("internal error: carrying positions do not fill their runs in order")
    cover_runs = flat[run_idx]  # (k, L)
    runs = cover_runs.copy()
    runs.reshape(-1)[: positions.size] = cover + changed * d
    ok = _eligible(runs, bits_stored)
    if not ok.all():
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
        runs.reshape(-1)[: positions.size] = cover + changed * d
        if not _eligible(runs, bits_stored).all():  # pragma: no cover - excluded by the invariant
            raise StegoError("internal error: embedding changed run eligibility")
    return runs.reshape(-1)[: positions.size], changed, d


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
    return _embed(values, message, key=key, bits_stored=bits_stored, segment_bits=segment_bits,
                  version=_version_for(tuple(np.shape(values))))


def _embed(values: np.ndarray, message: bytes, *, key: bytes, bits_stored: int, segment_bits: int,
           version: int) -> tuple[np.ndarray, bytes]:
    """``embed`` with the layout version given (2 or 3): tests write version 2 colour images
    as earlier releases did, to check that they are still read."""
    stego, displaced = Cover(values, key=key, bits_stored=bits_stored, segment_bits=segment_bits,
                             version=version).embed(message)
    return stego.astype(np.int64), displaced


def _tag_cleared(carrier: _Carrier, tag_positions: np.ndarray) -> np.ndarray:
    """Image indices whose bit 0 the image tag does not cover: the tag values (and, in
    version 3, the other samples of grey tag pixels, which repeat them)."""
    return np.concatenate([carrier.full(tag_positions), carrier.linked(tag_positions)])


def _carried_digest(carried: np.ndarray) -> bytes:
    return hashlib.sha256(_LABEL + b"carried\x00" + carried.astype("<u2").tobytes()).digest()


_NOT_FOUND = "no message for this key in these pixels (wrong key, pixels altered, or not a stego image)"


def extract(
    stego_values: np.ndarray, *, key: bytes, bits_stored: int, segment_bits: int = SEGMENT_BITS
) -> tuple[bytes, np.ndarray]:
    """Read the message back with the key alone; returns (message, positions mask).

    Raises MessageNotFoundError for a wrong key, altered pixels, or an image that carries
    no message.
    """
    message, mask, _ = extract_versioned(stego_values, key=key, bits_stored=bits_stored, segment_bits=segment_bits)
    return message, mask


def extract_versioned(
    stego_values: np.ndarray, *, key: bytes, bits_stored: int, segment_bits: int = SEGMENT_BITS
) -> tuple[bytes, np.ndarray, int]:
    """``extract``, plus the version that authenticated the image: 3 (a colour image with
    the colour rule of ``_Carrier``; the tag covers every value), 2 (the tag covers
    every value) or 1 (an image embedded before version 2: the tag covers the carried bits
    only)."""
    _check_params(bits_stored, segment_bits)
    key = _check_key(key)
    flat = _flat_values(stego_values, bits_stored, copy=False)
    shape = tuple(np.shape(stego_values))
    return _extract(flat, shape, key, bits_stored, segment_bits, _read_layouts(flat, shape, key, bits_stored, segment_bits))


def recover(
    stego_values: np.ndarray, displaced: bytes, *, key: bytes, bits_stored: int, segment_bits: int = SEGMENT_BITS,
    known: Embedded | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(original values, positions mask): what ``restore`` and ``extract`` return, with the
    image tag checked as ``extract`` checks it, but reading the stego values and finding
    their layout once. Verifying a keyed record needs both. The values are uint16 (the
    module's working width: a quarter of int64's memory for the restore's copy).
    ``known``: what embedding knew of these very values (``Embedded``), when verifying
    the image it made."""
    _check_params(bits_stored, segment_bits)
    key = _check_key(key)
    displaced = _checked_displaced(displaced)
    flat = _flat_values(stego_values, bits_stored)
    shape = tuple(np.shape(stego_values))
    layouts = _read_layouts(flat, shape, key, bits_stored, segment_bits, known)
    _, mask, _ = _extract(flat, shape, key, bits_stored, segment_bits, layouts, known)
    return _restore(flat, shape, displaced, key, bits_stored, segment_bits, layouts), mask  # restore writes into flat


def _read_layouts(flat: np.ndarray, shape: tuple[int, ...], key: bytes, bits_stored: int, segment_bits: int,
                  embedded: Embedded | None = None):
    """version -> (carrier, ``_ReadLayout``), each made once for the caller; with the run
    order ``embedded`` knows, where it applies."""
    known: dict = {}

    def layout(version: int):
        if version not in known:
            carrier = _carrier(flat, shape, version)
            order = None
            if (embedded is not None and embedded.applies(key, version, segment_bits)
                    and embedded.run_order.size == carrier.flat.size // segment_bits):
                order = embedded.run_order
            known[version] = carrier, _ReadLayout(carrier.flat, carrier.allowed, key, bits_stored, segment_bits, order)
        return known[version]
    return layout


def _extract(flat: np.ndarray, shape: tuple[int, ...], key: bytes, bits_stored: int, segment_bits: int,
             layouts, known: Embedded | None = None) -> tuple[bytes, np.ndarray, int]:
    for version in range(_version_for(shape), 1, -1):  # 3 (colour images only), then 2
        carrier, layout = layouts(version)
        tag_positions = layout.tag_positions
        if not tag_positions.size:
            continue
        if (known is not None and known.applies(key, version, segment_bits)
                and np.array_equal(tag_positions, known.tag_positions)):
            tag = known.tag  # the HMAC of these values with these positions cleared (``Embedded``)
        else:
            tag = _image_tag(key, flat, shape, bits_stored, _tag_cleared(carrier, tag_positions))
        if not np.array_equal(carrier.flat[tag_positions] & 1, tag):
            continue
        header_positions = layout.message_positions(LENGTH_BITS)
        if header_positions is None:
            raise MessageNotFoundError(f"{_NOT_FOUND}: the image has no room for a length field")
        whiten = _keyed_bits(key, b"v2/whiten", LENGTH_BITS)
        header = np.packbits((carrier.flat[header_positions] & 1).astype(np.uint8) ^ whiten).tobytes()
        (length,) = struct.unpack("<I", header)
        n_bits = LENGTH_BITS + 8 * length
        positions = layout.message_positions(n_bits)
        if positions is None:  # only a forged tag gets here (2**-128)
            raise MessageNotFoundError(f"{_NOT_FOUND}: the length field is beyond the image's capacity")
        stream = np.packbits((carrier.flat[positions] & 1).astype(np.uint8) ^ _keyed_bits(key, b"v2/whiten", n_bits))
        used = np.concatenate([tag_positions, positions])
        return stream.tobytes()[LENGTH_BITS // 8:], _mask(shape, carrier.full(used), carrier.linked(used)), version
    try:
        message, positions = _extract_v1(flat, key, bits_stored, segment_bits)
    except MessageNotFoundError:
        raise MessageNotFoundError(f"{_NOT_FOUND}: the image tag does not verify") from None
    return message, _mask(shape, positions), 1


def _extract_v1(flat: np.ndarray, key: bytes, bits_stored: int, segment_bits: int) -> tuple[bytes, np.ndarray]:
    """(message, positions) of a version 1 image, whose stream ``length || tag || message``
    fills the first eligible runs in the version 1 keyed order."""
    order = _eligible_order(flat, key, bits_stored, segment_bits)
    capacity = _capacity_from_order(order, segment_bits)
    if order.size * segment_bits < HEADER_BITS:
        raise MessageNotFoundError(f"{_NOT_FOUND}: the image has no room for a header")
    header_pos = _positions(order, HEADER_BITS, segment_bits, capacity, HEADER_BITS)
    whiten_header = _keyed_bits(key, b"whiten", HEADER_BITS)
    header = np.packbits((flat[header_pos] & 1).astype(np.uint8) ^ whiten_header).tobytes()
    (length,) = struct.unpack("<I", header[:4])
    if 8 * length > capacity:
        raise MessageNotFoundError(f"{_NOT_FOUND}: the length field is beyond the image's capacity")
    n_bits = HEADER_BITS + 8 * length
    positions = _positions(order, n_bits, segment_bits, capacity, HEADER_BITS)
    stream = np.packbits((flat[positions] & 1).astype(np.uint8) ^ _keyed_bits(key, b"whiten", n_bits)).tobytes()
    message = stream[HEADER_BYTES:]
    tag = hmac.new(_subkey(key, b"tag"), stream[:4] + message, hashlib.sha256).digest()[:16]
    if not hmac.compare_digest(tag, stream[4:HEADER_BYTES]):
        raise MessageNotFoundError(f"{_NOT_FOUND}: the message tag does not verify")
    return message, positions


def _bit_field(data: bytes, offset: int, n: int) -> tuple[np.ndarray, int]:
    """``n`` bits packed at ``offset``; returns them and the offset after them. Padding bits
    must be zero."""
    nbytes = (n + 7) // 8
    if len(data) < offset + nbytes:
        raise RestoreError(f"displaced information truncated: {len(data)} bytes, {offset + nbytes} needed")
    bits = np.unpackbits(np.frombuffer(data, np.uint8, nbytes, offset))
    if bits[n:].any():
        raise RestoreError("displaced information has non-zero padding bits (altered record)")
    return bits[:n].astype(bool), offset + nbytes


def restore(
    stego_values: np.ndarray, displaced: bytes, *, key: bytes, bits_stored: int, segment_bits: int = SEGMENT_BITS
) -> np.ndarray:
    """The exact original values from the stego values, the displaced bytes and the key.

    Raises RestoreError when they do not belong together (checked with the SHA-256 of the
    original carrying values kept in ``displaced``).
    """
    _check_params(bits_stored, segment_bits)
    key = _check_key(key)
    displaced = _checked_displaced(displaced)
    flat = _flat_values(stego_values, bits_stored)
    shape = tuple(np.shape(stego_values))
    return _restore(flat, shape, displaced, key, bits_stored, segment_bits,
                    _read_layouts(flat, shape, key, bits_stored, segment_bits)).astype(np.int64)


def _leb128_gaps(indices: np.ndarray) -> bytes:
    """Increasing ``indices`` as a LEB128 count and the LEB128 gaps (index - previous - 1)."""
    return b"".join(leb128.encode(n) for n in (indices.size, *(np.diff(indices, prepend=-1) - 1).tolist()))


def _read_leb128_gaps(data: bytes, offset: int, below: int) -> tuple[np.ndarray, int]:
    """``_leb128_gaps``' indices read at ``offset`` (each below ``below``), and the offset after them."""
    def number() -> int:
        nonlocal offset
        found = leb128.decode(data, offset, 35)
        if found is None:
            raise RestoreError("displaced information's direction exceptions are truncated or malformed")
        value, offset = found
        return value

    count = number()
    if count > below:
        raise RestoreError(f"displaced information names {count} direction exceptions for {below} changes")
    indices = np.empty(count, dtype=np.int64)
    at = -1
    for i in range(count):
        at += number() + 1
        if at >= below:
            raise RestoreError(f"displaced information names direction exception {at} of {below} changes")
        indices[i] = at
    return indices, offset


def _checked_displaced(displaced: bytes) -> bytes:
    """``displaced`` as bytes, with its magic and version checked."""
    displaced = bytes(displaced)
    if len(displaced) < _DISPLACED_FIXED or displaced[:3] != _DISPLACED_MAGIC:
        raise RestoreError("displaced bytes are not medarchive stego displaced information (bad magic)")
    version = displaced[3]
    if version & DIRECTION_EXCEPTIONS and (version & ~DIRECTION_EXCEPTIONS) in (2, 3):
        version &= ~DIRECTION_EXCEPTIONS
    if version not in (1, 2, 3):
        raise RestoreError(
            f"displaced information version {version} is not supported; this reader knows 1 to {VERSION}"
        )
    return displaced


def _restore(flat: np.ndarray, shape: tuple[int, ...], displaced: bytes, key: bytes, bits_stored: int,
             segment_bits: int, layouts) -> np.ndarray:
    version, exceptions = displaced[3] & ~DIRECTION_EXCEPTIONS, bool(displaced[3] & DIRECTION_EXCEPTIONS)
    (n_bits,) = struct.unpack_from("<I", displaced, 4)
    digest = displaced[8:40]
    offset = _DISPLACED_FIXED
    wrong = "stego values do not hold the runs the displaced information describes (wrong key or altered pixels)"
    if version == 3 and _version_for(shape) != 3:
        raise RestoreError(f"displaced information version 3 is for colour images; these values have shape {shape}")
    layout = None
    if version >= 2:
        carrier, layout = layouts(version)
        tag_positions = layout.tag_positions
        if not tag_positions.size:
            raise RestoreError(wrong)
        tag_cover, offset = _bit_field(displaced, offset, TAG_BITS)
    else:
        carrier = _carrier(flat, shape, version)
        tag_positions = np.zeros(0, dtype=np.int64)
    changed, offset = _bit_field(displaced, offset, n_bits)
    n_changed = int(changed.sum())
    if exceptions:
        flipped, offset = _read_leb128_gaps(displaced, offset, n_changed)
        up = _keyed_bits(key, b"v2/direction", n_bits).astype(bool)[changed]
        up[flipped] = ~up[flipped]
    else:
        up, offset = _bit_field(displaced, offset, n_changed)
    if len(displaced) != offset:
        raise RestoreError(f"displaced information has {len(displaced)} bytes; its counts say {offset}")
    if layout is not None:
        positions = layout.message_positions(n_bits)
    else:
        order = _eligible_order(flat, key, bits_stored, segment_bits)
        try:
            positions = _positions(order, n_bits, segment_bits, _capacity_from_order(order, segment_bits), HEADER_BITS)
        except CapacityError:
            positions = None
    if positions is None:
        raise RestoreError(wrong)
    carried = carrier.flat[positions].astype(np.int64)
    carried[changed] -= np.where(up, 1, -1)
    tag_values = carrier.flat[tag_positions].astype(np.int64)
    if version >= 2:
        tag_values = (tag_values & ~1) | tag_cover
    original = np.concatenate([tag_values, carried])
    if original.size and (original.min() < 0 or original.max() >= 1 << bits_stored) or not hmac.compare_digest(
        _carried_digest(original), digest
    ):
        raise RestoreError("restored values fail their digest (wrong key, altered pixels, or another image's record)")
    carrier.write(flat, tag_positions, tag_values)
    carrier.write(flat, positions, carried)
    return flat.reshape(shape)


# --------------------------------------------------------------------------------------
# Binding and quality


def outside_digest(values: np.ndarray, positions_mask: np.ndarray, *, bits_stored: int | None = None) -> str:
    """Hex SHA-256 of the values outside the embedded positions (and of the mask and shape).

    Equal for the cover and the stego image (embedding only changes masked values), so
    it binds a sealed message to the pixels that embedding does not touch.

    ``bits_stored`` None: the digest of binding format 1.0, the outside values in order
    as little-endian int64. Given (binding format 1.1): every value at its sample width
    (1 byte up to 8 bits, else 2; little-endian, unsigned), the embedded positions' as
    0, under its own label: a quarter of the bytes to hash for 16-bit images, and no
    gather of the outside values. Values outside 0..2**bits_stored - 1 are refused.
    """
    arr = np.asarray(values)
    mask = np.asarray(positions_mask, dtype=bool)
    if mask.size != arr.size:
        raise StegoError(f"positions mask has {mask.size} entries for {arr.size} values")
    flat = arr.reshape(-1)
    flat_mask = mask.reshape(-1)
    h = hashlib.sha256(_LABEL + (b"outside\x00" if bits_stored is None else b"outside-samples\x00"))
    h.update(json.dumps(list(arr.shape)).encode("ascii"))
    h.update(np.packbits(flat_mask).tobytes())
    if bits_stored is None:
        h.update(np.ascontiguousarray(flat[~flat_mask], dtype="<i8").data)  # the same bytes, hashed in place
        return h.hexdigest()
    if not 1 <= bits_stored <= 16:
        raise StegoError(f"bits_stored must be 1..16, got {bits_stored}")
    from .stegokernel import masked_samples  # numba: loaded on first use

    flat, flat_mask = np.ascontiguousarray(flat), np.ascontiguousarray(flat_mask)
    width = np.dtype("<u1" if bits_stored <= 8 else "<u2")
    maxval = (1 << bits_stored) - 1
    if flat.dtype == width:  # the values are the samples' bytes: hashed where they lie, between the masked spans
        masked = np.flatnonzero(flat_mask)
        breaks = np.flatnonzero(np.diff(masked) != 1) + 1
        if breaks.size < _DIGEST_SPANS:
            if flat.size and int(flat.max()) > maxval:
                raise StegoError(f"values must lie in 0..{maxval}")
            spans = (zip(masked[np.concatenate(([0], breaks))].tolist(),
                         (masked[np.concatenate((breaks - 1, [masked.size - 1]))] + 1).tolist()) if masked.size else ())
            at = 0
            for start, end in spans:
                h.update(flat[at:start].data)
                h.update(bytes(width.itemsize * (end - start)))
                at = end
            h.update(flat[at:].data)
            return h.hexdigest()
    # hashed a cache-sized piece at a time: no copy of the image, and SHA-256 reads each
    # piece from the cache the kernel just wrote it to
    samples = np.empty(min(flat.size, _DIGEST_PIECE), dtype=width)
    for start in range(0, flat.size, _DIGEST_PIECE):
        piece = samples[: min(_DIGEST_PIECE, flat.size - start)]
        if masked_samples(flat[start:start + piece.size], flat_mask[start:start + piece.size], maxval, piece) >= 0:
            raise StegoError(f"values must lie in 0..{maxval}")
        h.update(piece.data)
    return h.hexdigest()


_DIGEST_PIECE = 1 << 17  # values
# Values already at the digest's sample width (uint8 up to 8 bits, else uint16: sealing's
# values at the words' width) are hashed in place between the masked spans, a zero piece
# for each span, when the mask has fewer spans than this (an embedded message's runs of
# SEGMENT_BITS values, a few hundred); other values are written to a piece first. On the
# pipeline benchmark's 64 files, with a 600-byte message planned in each image that holds
# one: 40.2-41.4 ms -> 35.5-35.7 ms, three alternated runs (the copy was a pass of its
# own; the digests are the same).
_DIGEST_SPANS = 1 << 12


def psnr(a: np.ndarray, b: np.ndarray, bits_stored: int) -> float:
    """Peak signal-to-noise ratio in dB of ``b`` against ``a``, peak 2**bits_stored - 1 (inf if equal)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise StegoError(f"psnr needs equal shapes, got {a.shape} and {b.shape}")
    d = (a - b).reshape(-1)
    return _psnr(float(np.dot(d, d)), a.size, bits_stored)


def _psnr(sse: float, n: int, bits_stored: int) -> float:
    """PSNR in dB from the sum of squared differences over ``n`` values (inf if none differ)."""
    mse = sse / n if n else 0.0
    if mse == 0.0:
        return math.inf
    peak = float((1 << bits_stored) - 1)
    return 10.0 * math.log10(peak * peak / mse)
