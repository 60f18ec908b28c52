"""Compiled counting passes over an image that the encoder makes before coding it.

* ``value_counts``: the histogram of sample values, for ``planes.value_palette``.
  ``np.bincount`` casts uint8/uint16 input to a temporary int64 copy of the image before
  counting, and counts int64 input at ~3 ns per sample; this loop reads the samples in
  their own dtype. Every migrate asks it twice per image (the sealing's check and the
  codec's).
* ``stored_values``: the codec's first pass: every word's stored value as int64, which
  values occur, and whether any bit outside the stored ones differs from what a conforming
  writer puts there, in one read of the words.
* ``seen_values``: which values occur, and whether any word has a bit outside them, for
  words that are their values (unsigned, from bit 0): sealing's first pass, which then
  reads the words themselves as the values.
* ``colour_slots``: the distinct colours of a multi-sample image and each pixel's index,
  for ``planes.colour_table``.
* ``zero_laplacian_count``: the smoothness half of `fast`'s wavelet probe.
* ``laplacian_median2``: the noise floor ``planes.noise_level`` reads.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def value_counts(flat, n):
    """(counts of each value 0..n-1 in ``flat``, index of the first value outside that
    range or -1; the counts are then partial). Four tables, one per sample of each group
    of four, so that runs of one value (flat backgrounds) do not wait on one counter:
    2-3x faster on the pipeline set's images than one table."""
    c = np.zeros((4, n), dtype=np.int64)
    m = flat.size & ~3
    for i in range(0, m, 4):
        v0 = np.int64(flat[i])
        v1 = np.int64(flat[i + 1])
        v2 = np.int64(flat[i + 2])
        v3 = np.int64(flat[i + 3])
        if min(min(v0, v1), min(v2, v3)) < 0 or max(max(v0, v1), max(v2, v3)) >= n:
            for j in range(i, i + 4):
                v = np.int64(flat[j])
                if v < 0 or v >= n:
                    return c[0], j
        c[0, v0] += 1
        c[1, v1] += 1
        c[2, v2] += 1
        c[3, v3] += 1
    for i in range(m, flat.size):
        v = np.int64(flat[i])
        if v < 0 or v >= n:
            return c[0], i
        c[0, v] += 1
    return c[0] + c[1] + c[2] + c[3], -1


@njit(cache=True, nogil=True)
def stored_values(flat, low_bit, value_mask, sign_bit, outside_mask, high_bit, sign_fill, out, n):
    """(which of the values 0..n-1 occur, as 0/1 bytes; whether any word has an outside
    residual) for the words ``flat``, writing each word's value to ``out`` (int64, same
    length): ``planes.words_to_samples`` and the palette's histogram fused. value =
    ((word >> low_bit) & value_mask) ^ sign_bit; the residual is (word & outside_mask) ^
    (sign_fill where bit ``high_bit`` is set, else 0). Marking a value seen is a store
    with no load, so runs of one value do not wait on a counter (``value_counts`` needs
    four tables for that). The residual has a loop of its own, which the compiler
    vectorises."""
    seen = np.zeros(n, dtype=np.uint8)
    for i in range(flat.size):
        v = ((np.int64(flat[i]) >> low_bit) & value_mask) ^ sign_bit
        out[i] = v
        seen[v] = 1
    o = flat.dtype.type(0)
    word_mask = flat.dtype.type(outside_mask)
    fill = flat.dtype.type(sign_fill)
    top = flat.dtype.type(high_bit)
    one = flat.dtype.type(1)
    for i in range(flat.size):
        w = flat[i]
        o |= (w & word_mask) ^ (((w >> top) & one) * fill)
    return seen, o != 0


@njit(cache=True, nogil=True)
def seen_values(flat, value_mask, outside_mask, n):
    """(which of the values 0..n-1 occur among ``flat & value_mask``, as 0/1 bytes; whether
    any word has a bit of ``outside_mask`` set): ``stored_values`` for words that are their
    values where no outside bit is set (low bit 0, unsigned), without writing the values."""
    seen = np.zeros(n, dtype=np.uint8)
    for i in range(flat.size):
        seen[np.int64(flat[i]) & value_mask] = 1
    o = flat.dtype.type(0)
    word_mask = flat.dtype.type(outside_mask)
    for i in range(flat.size):
        o |= flat[i] & word_mask
    return seen, o != 0


@njit(cache=True, nogil=True)
def colour_slots(values, bits, limit):
    """(distinct colour keys in order of first appearance, each pixel's index into them,
    their number; -1 and partial arrays once more than ``limit`` colours are seen) for
    ``values`` (frames, samples, rows, cols): a colour's key is its samples' bits joined,
    first sample highest (samples x bits <= 62). One pass and an open-addressed table a
    quarter full at most, where np.unique and a search sort the whole image twice."""
    n_frames, n_samples, rows, cols = values.shape
    log2 = 4
    while (1 << log2) < 4 * limit:
        log2 += 1
    size = 1 << log2
    mask = size - 1
    shift = np.uint64(64 - log2)
    table = np.full(size, -1, dtype=np.int64)
    slot_index = np.zeros(size, dtype=np.int32)
    keys = np.empty(max(limit, 1), dtype=np.int64)
    index = np.empty((n_frames, rows, cols), dtype=np.int32)
    n = 0
    last_key = np.int64(-1)
    last = 0
    for f in range(n_frames):
        for r in range(rows):
            for c in range(cols):
                key = np.int64(0)
                for s in range(n_samples):
                    key = (key << bits) | np.int64(values[f, s, r, c])
                if key != last_key:  # runs of one colour skip the table
                    h = np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> shift)
                    while True:
                        k = table[h]
                        if k == key:
                            last = slot_index[h]
                            break
                        if k == -1:
                            if n == limit:
                                return keys[:n], index, -1
                            table[h] = key
                            slot_index[h] = n
                            keys[n] = key
                            last = n
                            n += 1
                            break
                        h = (h + 1) & mask
                    last_key = key
                index[f, r, c] = last
    return keys[:n], index, n


@njit(cache=True, nogil=True)
def zero_laplacian_count(plane):
    """How many interior samples of ``plane`` equal the mean of their four neighbours
    (4 x centre - up - down - left - right == 0): the wavelet probe's smoothness measure."""
    rows, cols = plane.shape
    n = 0
    for r in range(1, rows - 1):
        for c in range(1, cols - 1):
            v = (4 * np.int64(plane[r, c]) - np.int64(plane[r - 1, c]) - np.int64(plane[r + 1, c])
                 - np.int64(plane[r, c - 1]) - np.int64(plane[r, c + 1]))
            n += v == 0
    return n


@njit(cache=True, nogil=True)
def laplacian_median2(plane, limit):
    """Twice the median of |4 x centre - up - down - left - right| over the interior
    samples of ``plane`` (at least one): the sum of the two middle values of their sorted
    list, or twice the middle one, as an integer. Counted in a histogram (two passes:
    the largest value, then the counts) instead of numpy's residual array and partition.
    -1 where a value exceeds ``limit``: the histogram would be larger than that."""
    rows, cols = plane.shape
    top = 0
    for r in range(1, rows - 1):
        for c in range(1, cols - 1):
            v = abs(4 * np.int64(plane[r, c]) - np.int64(plane[r - 1, c]) - np.int64(plane[r + 1, c])
                    - np.int64(plane[r, c - 1]) - np.int64(plane[r, c + 1]))
            top = max(top, v)
    if top > limit:
        return -1
    counts = np.zeros(top + 1, dtype=np.int64)
    for r in range(1, rows - 1):
        for c in range(1, cols - 1):
            v = abs(4 * np.int64(plane[r, c]) - np.int64(plane[r - 1, c]) - np.int64(plane[r + 1, c])
                    - np.int64(plane[r, c - 1]) - np.int64(plane[r, c + 1]))
            counts[v] += 1
    n = (rows - 2) * (cols - 2)
    lo, hi = (n - 1) // 2, n // 2  # the middle ranks (equal for odd n)
    seen = 0
    a = -1
    for v in range(top + 1):
        seen += counts[v]
        if a < 0 and seen > lo:
            a = v
        if seen > hi:
            return a + v
    return 2 * top
