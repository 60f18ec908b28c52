"""Compiled histogram of sample values, for ``planes.value_palette``.

``np.bincount`` casts uint8/uint16 input to a temporary int64 copy of the image before
counting, and counts int64 input at ~3 ns per sample; this loop reads the samples in their
own dtype. Every migrate asks it twice per image (the sealing's check and the codec's).
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
