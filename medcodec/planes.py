"""Adaptive modality decomposition: stored words <-> (values, outside bits) <-> (global, local).

A stored word of ``bits_allocated`` bits holds the sample in ``bits_stored`` bits ending
at ``high_bit``. We code:

* ``values``: the stored bits as an unsigned number; two's-complement samples are mapped
  to offset binary (flip the sign bit), which keeps order and is its own inverse.
* ``outside``: every other bit of the word, XOR-ed with what a conforming writer would
  put there (sign extension above ``high_bit`` for signed data, zeros otherwise). It is
  almost always all zeros and costs nothing; when it is not, it is kept exactly.
* ``global = values >> k`` and ``local = values & (2**k - 1)``: the split at plane k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import UnsupportedError
from .spec import word_layout_problem

# Upper bound on k: the local alphabet is 2**k symbols per pixel.
MAX_LOCAL_PLANES = 6
# Planes this far below the noise floor go to the local path. Calibrated with
# `python -m benchmarks.split_sweep pydicom` (30 images, weighted bpp): always k = 0 gave
# 4.724, the best k per image 4.675, a margin of 5 gave 4.751 (it split the large CR
# images RG1_* at k = 1-2, costing ~1%). With the classical local model, splitting natural
# images below the noise floor rarely pays, so only very noisy data is split.
LOCAL_PLANE_MARGIN = 7


@dataclass(frozen=True, kw_only=True)
class SampleFormat:
    """How samples sit in their words."""

    bits_allocated: int
    bits_stored: int
    high_bit: int
    signed: bool

    @classmethod
    def of(cls, spec) -> "SampleFormat":
        """The format of a PixelSpec (anything with the same four attributes)."""
        return cls(bits_allocated=spec.bits_allocated, bits_stored=spec.bits_stored, high_bit=spec.high_bit,
                   signed=spec.signed)

    def __post_init__(self) -> None:
        problem = word_layout_problem(self.bits_allocated, self.bits_stored, self.high_bit)  # the same rules as a header's
        if problem:
            raise UnsupportedError(f"sample format bits_allocated={self.bits_allocated}, bits_stored={self.bits_stored},"
                                   f" high_bit={self.high_bit}: {problem}")

    @property
    def word_dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.bits_allocated == 8 else np.uint16)

    @property
    def low_bit(self) -> int:
        return self.high_bit + 1 - self.bits_stored

    @property
    def value_mask(self) -> int:
        return (1 << self.bits_stored) - 1

    @property
    def stored_mask(self) -> int:
        return self.value_mask << self.low_bit

    @property
    def sign_fill(self) -> int:
        """The bits above HighBit that a conforming writer sets in a negative sample's word
        (its sign extension): 0 for unsigned samples and where HighBit is the word's top bit."""
        if not self.signed:
            return 0
        return ((1 << self.bits_allocated) - 1) & ~((1 << (self.high_bit + 1)) - 1)

    def expected_outside(self, values: np.ndarray) -> np.ndarray:
        """The outside bits a conforming writer produces for these (offset-binary) values."""
        if not self.sign_fill:
            return np.zeros(values.shape, dtype=np.int64)  # calloc: no pass over memory
        negative = (values >> (self.bits_stored - 1)) == 0  # offset binary: sign bit flipped
        return np.where(negative, self.sign_fill, 0).astype(np.int64)

    def _sign_extension(self, words: np.ndarray) -> np.ndarray:
        """``expected_outside`` from words whose stored bits are set (their sign bit is
        HighBit), in the words' dtype (``sign_fill`` nonzero)."""
        word = self.word_dtype.type
        return ((words >> word(self.high_bit)) & word(1)) * word(self.sign_fill)


# Both conversions below run over every sample of every image a migrate seals or a
# restore rebuilds: masks, shifts and the sign in the words' own width, and one widening
# or narrowing each (an int64 temporary costs as much as a tenth of the pixel kernel).


def words_to_values(words: np.ndarray, fmt: SampleFormat) -> tuple[np.ndarray, np.ndarray]:
    """Split stored words into (offset-binary values, outside-bit residual), both int64."""
    values, outside = words_to_samples(words, fmt)
    if outside is None:
        return values.astype(np.int64), np.zeros(values.shape, dtype=np.int64)  # the usual case, without a pass
    return values.astype(np.int64), outside.astype(np.int64)


def words_to_samples(words: np.ndarray, fmt: SampleFormat) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`words_to_values` in the words' own dtype (uint8 or uint16), the outside
    residual None where it is all zero: what sealing, stego and the digests read, at a
    quarter (16-bit) or an eighth (8-bit) of the int64 bytes. The values may share memory
    with ``words`` (when no bit needs moving): read them, do not write to them."""
    if words.dtype != fmt.word_dtype:
        raise UnsupportedError(f"words must be {fmt.word_dtype}, got {words.dtype}")
    word_mask = (1 << fmt.bits_allocated) - 1
    shifted = words >> fmt.low_bit if fmt.low_bit else words
    if fmt.bits_stored < fmt.bits_allocated:
        shifted = shifted & fmt.value_mask
    if fmt.signed:
        shifted = shifted ^ fmt.word_dtype.type(1 << (fmt.bits_stored - 1))
    outside_mask = word_mask & ~fmt.stored_mask
    outside = words & fmt.word_dtype.type(outside_mask) if outside_mask else None
    if fmt.sign_fill:
        outside ^= fmt._sign_extension(words)
    if outside is None or not outside.any():
        return shifted, None
    return shifted, outside


def values_and_seen(words: np.ndarray, fmt: SampleFormat, *, dtype: Any = np.int64,
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(values, outside residual in the words' dtype or None where all zero, 0/1 per
    value 0..2**bits_stored - 1: whether it occurs): :func:`words_to_values` and what
    :func:`value_palette` needs to know, in one compiled pass over the words, which is
    what the encoder reads them for before coding (and sealing, before embedding). The
    values are int64, or ``dtype`` (sealing: the words' own, which holds them). Where the
    words are their values (``dtype`` theirs, unsigned, from bit 0, no outside bit set) the
    values are the words themselves, not copied (as ``words_to_samples``' may be): read
    them, do not write to them."""
    from .countkernel import seen_values, stored_values  # numba: loaded on first use

    if words.dtype != fmt.word_dtype:
        raise UnsupportedError(f"words must be {fmt.word_dtype}, got {words.dtype}")
    outside_mask = ((1 << fmt.bits_allocated) - 1) & ~fmt.stored_mask
    if np.dtype(dtype) == words.dtype and not fmt.low_bit and not fmt.signed:
        words = np.ascontiguousarray(words)
        seen, outside_set = seen_values(words.reshape(-1), fmt.value_mask, outside_mask, 1 << fmt.bits_stored)
        if not outside_set:
            return words, None, seen
    values = np.empty(words.shape, dtype=dtype)
    seen, outside_set = stored_values(
        np.ascontiguousarray(words).reshape(-1), fmt.low_bit, fmt.value_mask,
        1 << (fmt.bits_stored - 1) if fmt.signed else 0, outside_mask,
        fmt.high_bit, fmt.sign_fill, values.reshape(-1), 1 << fmt.bits_stored)
    return values, (words_to_samples(words, fmt)[1] if outside_set else None), seen


def values_to_words(values: np.ndarray, outside: np.ndarray | None, fmt: SampleFormat) -> np.ndarray:
    """Exact inverse of :func:`words_to_values` (``outside`` None: all zero, the usual case).
    Where the words are the values themselves (unsigned, from bit 0, nothing outside) and
    ``values`` already has the words' dtype, they are returned as they are, not copied."""
    moved = fmt.signed or fmt.low_bit or fmt.sign_fill or outside is not None
    words = np.asarray(values).astype(fmt.word_dtype, copy=bool(moved))  # values lie in 0..2**bits_stored - 1
    if fmt.signed:
        words ^= fmt.word_dtype.type(1 << (fmt.bits_stored - 1))
    if fmt.low_bit:
        words <<= fmt.word_dtype.type(fmt.low_bit)
    fill = fmt._sign_extension(words) if fmt.sign_fill else None
    if outside is not None:  # the residual is relative to the sign extension
        fill = outside.astype(fmt.word_dtype) if fill is None else fill ^ outside.astype(fmt.word_dtype)
    if fill is not None:
        words |= fill
    return words


def split_planes(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Global modality (high planes) and local modality (low k planes). With k = 0 the
    global part is ``values`` itself, not a copy (no coder writes to its plane)."""
    if k == 0:
        return values, np.zeros(values.shape, dtype=np.int64)  # calloc: no pass over memory
    return values >> k, values & ((1 << k) - 1)


def merge_planes(global_part: np.ndarray, local_part: np.ndarray, k: int) -> np.ndarray:
    """Exact inverse of :func:`split_planes`."""
    return (global_part << k) | local_part


# The histogram noise_level counts in holds residuals up to this (16-bit samples: 8 x
# 65,535); wider values take numpy's partition instead, whose memory follows the plane.
NOISE_HISTOGRAM_MAX = 1 << 20


def noise_level(values: np.ndarray) -> float:
    """Median absolute residual of the 4-neighbour average (in stored units): the noise
    floor. ``np.median`` of |4 x centre - the four neighbours| over the interior, divided
    by 4: the same float, from a compiled histogram (``countkernel.laplacian_median2``)
    where the residuals fit NOISE_HISTOGRAM_MAX."""
    from .countkernel import laplacian_median2  # numba: loaded on first use

    img = values if values.ndim == 2 else values.reshape(-1, values.shape[-1])
    if img.shape[0] < 3 or img.shape[1] < 3:
        return 0.0
    twice = laplacian_median2(np.ascontiguousarray(img), NOISE_HISTOGRAM_MAX)
    if twice >= 0:
        return twice / 2.0 / 4.0
    v = img.astype(np.int64)
    res = 4 * v[1:-1, 1:-1] - v[:-2, 1:-1] - v[2:, 1:-1] - v[1:-1, :-2] - v[1:-1, 2:]
    return float(np.median(np.abs(res))) / 4.0


def choose_k(values: np.ndarray, bits: int, *, margin: int = LOCAL_PLANE_MARGIN) -> tuple[int, dict]:
    """Split plane k for one image and the statistics it was chosen from.

    A plane goes to the local path when it lies ``margin`` planes or more below the
    measured noise floor: there it is close to incompressible given the global
    modality, and splitting it off costs the global path nothing measurable. Only the
    encoder calls this; k is written into the record.
    """
    sigma = noise_level(values)
    k = 0
    while k < min(bits - 1, MAX_LOCAL_PLANES) and sigma >= float(1 << (k + margin)):
        k += 1
    return k, {"noise": round(sigma, 3)}


# The transformer local path takes the noise-floor planes and TRANSFORMER_K_OFFSET more:
# k = round(log2(max(noise, 1))) + offset. Calibrated on the 29 training images of the
# shipped models (benchmarks/split_sweep.py --local llm-base-v1, images up to 1.1 M pixels,
# weighted bpp): k = 0 2.528; offset -1 2.374, 0 2.355, +1 2.293, +2 2.254; best k per
# image 2.207. The transformer sees the 5x5 global neighbourhood on all sides, so it
# codes planes above the noise floor better than the causal global path does.
TRANSFORMER_K_OFFSET = 2


def choose_k_transformer(
    values: np.ndarray, bits: int, *, max_k: int, offset: int = TRANSFORMER_K_OFFSET
) -> tuple[int, dict]:
    """Split plane k for the transformer local path."""
    sigma = noise_level(values)
    k = int(round(np.log2(max(sigma, 1.0)))) + offset
    return max(0, min(k, bits - 1, max_k)), {"noise": round(sigma, 3)}


# Pack values when the used span is at least this many times the number of distinct values,
# and the table is small next to the image (its cost is then negligible).
PACK_SPAN_FACTOR = 2
PACK_PIXELS_PER_ENTRY = 8


def value_palette(values: np.ndarray, bits: int) -> np.ndarray | None:
    """The sorted distinct values, when coding indices into them beats coding the values.

    Images with sparse histograms (rescaled data, few grey levels in a wide range) are
    common; their indices are dense, which the predictors and tables need.
    """
    from .countkernel import value_counts  # numba: loaded on first use

    flat = np.ascontiguousarray(values).reshape(-1)
    if not np.issubdtype(flat.dtype, np.integer):
        raise TypeError(f"values must be integers, got {flat.dtype}")
    counts, bad = value_counts(flat, 1 << bits)
    if bad >= 0:
        raise ValueError(f"value {flat[bad]} lies outside 0..{(1 << bits) - 1}")
    return palette_of(counts, values.size)


def palette_of(occurs: np.ndarray, n_samples: int) -> np.ndarray | None:
    """:func:`value_palette`'s choice for an image of ``n_samples`` samples, from
    ``occurs`` (one entry per value, nonzero where the value occurs: counts or flags)."""
    used = np.flatnonzero(occurs)
    sparse = used.size and (int(used[-1]) - int(used[0]) + 1) >= PACK_SPAN_FACTOR * used.size
    if sparse and used.size * PACK_PIXELS_PER_ENTRY <= n_samples:
        return used.astype(np.int64)
    return None


def pack_values(values: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Each value's index in ``palette`` (sorted, holding every one of the values)."""
    lut = np.zeros(int(palette[-1]) + 1, dtype=np.int64)
    lut[palette] = np.arange(palette.size, dtype=np.int64)
    return lut[values]


def unpack_values(indices: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return palette[indices]


def palette_bits(palette: np.ndarray) -> int:
    return max(1, int(palette.size - 1).bit_length())


# Multi-sample images with few distinct colours (grey ultrasound with a colour overlay,
# screen captures) are coded as one plane of indices into a table of their colours.
# Greys (all samples equal) come first in value order, so a grey image's indices rise
# with its values; the other colours follow by sum of samples. Held-out US1_J2KR.dcm
# (480x640 RGB, 282 colours): `max` 0.988 -> 0.778 bits per sample, `fast` 1.345 -> 0.936
# (JPEG-XL e7 0.783). Orderings by luma alone gave 0.850, unsorted 0.798.
COLOUR_PALETTE_MAX = 4096
COLOUR_PIXELS_PER_ENTRY = 16


def colour_table(values: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray] | None:
    """((n, samples) table of the distinct colours of ``values`` (frames, samples, rows,
    cols), (frames, 1, rows, cols) indices into it), or None when the image has one sample
    or too many colours to pay off (found without reading further)."""
    from .countkernel import colour_slots  # numba: loaded on first use

    n_frames, n_samples, rows, cols = values.shape
    if n_samples < 2 or n_samples * bits > 62:
        return None
    limit = min(COLOUR_PALETTE_MAX, n_frames * rows * cols // COLOUR_PIXELS_PER_ENTRY)
    keys, first_seen, n = colour_slots(values, bits, limit)
    if n < 0:
        return None
    shifts = bits * np.arange(n_samples - 1, -1, -1, dtype=np.int64)
    table = (keys[:, None] >> shifts[None, :]) & ((1 << bits) - 1)
    grey = (table == table[:, :1]).all(axis=1)
    order = np.lexsort((keys, table.sum(axis=1), ~grey))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64)
    return table[order], rank[first_seen][:, None]


def unpack_colours(indices: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(frames, 1, rows, cols) indices -> (frames, samples, rows, cols) values."""
    return np.moveaxis(table[indices[:, 0]], -1, 1)
