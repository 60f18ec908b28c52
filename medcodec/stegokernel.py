"""Compiled run tests of :mod:`medcodec.stego`: which runs of values may carry bits.

Sealing asks them of every run of an image several times (capacity, layout, embedding,
and again when verifying); as numpy expressions they built a clipped copy and two
reductions per group, and took a third of a keyed migrate's time outside the codec.
The rules are stego's (its ``_eligible`` and ``_robust`` docstrings); these loops
return the same flags and stop at a run's first failing value.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def eligible_runs(runs, maxval, group, min_range):
    """Per run (row of ``runs``): no value at 0 or ``maxval``, and every group of
    ``group`` values has a range of at least ``min_range`` once clipped to [2, maxval - 2]."""
    k, length = runs.shape
    out = np.zeros(k, dtype=np.bool_)
    if maxval - 2 < 2:
        return out
    for i in range(k):
        ok = True
        for g0 in range(0, length, group):
            lo = maxval
            hi = 0
            for j in range(g0, g0 + group):
                v = np.int64(runs[i, j])
                if v == 0 or v == maxval:
                    ok = False
                    break
                c = min(max(v, 2), maxval - 2)
                lo = min(lo, c)
                hi = max(hi, c)
            if not ok or hi - lo < min_range:
                ok = False
                break
        out[i] = ok
    return out


@njit(cache=True, nogil=True)
def robust_runs(runs, maxval, group, min_range):
    """Per run: with bit 0 of every value cleared, every value lies in [2, maxval - 3]
    and every group's range is at least ``min_range + 1``."""
    k, length = runs.shape
    out = np.zeros(k, dtype=np.bool_)
    for i in range(k):
        ok = True
        for g0 in range(0, length, group):
            lo = maxval
            hi = -1
            for j in range(g0, g0 + group):
                h = np.int64(runs[i, j]) & ~np.int64(1)
                if h < 2 or h > maxval - 3:
                    ok = False
                    break
                lo = min(lo, h)
                hi = max(hi, h)
            if not ok or hi - lo < min_range + 1:
                ok = False
                break
        out[i] = ok
    return out
