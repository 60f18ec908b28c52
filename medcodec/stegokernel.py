"""Compiled kernels of :mod:`medcodec.stego`: which runs of values may carry bits, and
the pixel compares and copies that sealing and its verification make.

The run tests are the rules of stego's module docstring (eligible and robust runs):
the embedder asks the eligible test of every run (the capacity needs them all), and a
reader asks both of the runs in the keyed order only as far as its tag and message go
(``next_runs``). As numpy expressions they built a clipped copy and two reductions per
group, and took a third of a keyed migrate's time outside the codec. These loops return
the same flags and stop at a run's first failing value.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _eligible_run(runs, i, maxval, group, min_range):
    """Run ``i`` (row of ``runs``): no value at 0 or ``maxval``, and every group of
    ``group`` values has a range of at least ``min_range`` once clipped to [2, maxval - 2]."""
    if maxval - 2 < 2:
        return False
    for g0 in range(0, runs.shape[1], group):
        lo = maxval
        hi = 0
        for j in range(g0, g0 + group):
            v = np.int64(runs[i, j])
            if v == 0 or v == maxval:
                return False
            c = min(max(v, 2), maxval - 2)
            lo = min(lo, c)
            hi = max(hi, c)
        if hi - lo < min_range:
            return False
    return True


@njit(cache=True, nogil=True)
def _robust_run(runs, i, maxval, group, min_range):
    """Run ``i``: with bit 0 of every value cleared, every value lies in [2, maxval - 3]
    and every group's range is at least ``min_range + 1``."""
    for g0 in range(0, runs.shape[1], group):
        lo = maxval
        hi = -1
        for j in range(g0, g0 + group):
            h = np.int64(runs[i, j]) & ~np.int64(1)
            if h < 2 or h > maxval - 3:
                return False
            lo = min(lo, h)
            hi = max(hi, h)
        if hi - lo < min_range + 1:
            return False
    return True


@njit(cache=True, nogil=True)
def eligible_runs(runs, maxval, group, min_range):
    """``_eligible_run`` of every run (row of ``runs``)."""
    out = np.zeros(runs.shape[0], dtype=np.bool_)
    for i in range(runs.shape[0]):
        out[i] = _eligible_run(runs, i, maxval, group, min_range)
    return out


@njit(cache=True, nogil=True)
def next_runs(runs, allowed, order, start, need, robust, maxval, group, min_range):
    """The first ``need`` indices ``i >= start`` of ``order`` whose run ``order[i]`` is
    robust (``robust``) or eligible, and, where ``allowed`` has rows, allowed in every
    value: fewer where the order ends first. What ``_robust_run`` / ``_eligible_run`` of
    every run, gathered in the order, would give, testing only the runs up to the last
    one found."""
    # never more than the runs left: ``need`` may come from a length field an image states
    out = np.empty(max(0, min(need, order.size - start)), dtype=np.int64)
    n = 0
    i = start
    while i < order.size and n < out.size:
        r = order[i]
        ok = _robust_run(runs, r, maxval, group, min_range) if robust else _eligible_run(runs, r, maxval, group, min_range)
        if ok and allowed.shape[0]:
            for j in range(allowed.shape[1]):
                if not allowed[r, j]:
                    ok = False
                    break
        if ok:
            out[n] = i
            n += 1
        i += 1
    return out[:n]


@njit(cache=True, nogil=True)
def stable_argsort_uniform(keys):
    """``np.argsort(keys, kind="stable")`` of uniformly distributed uint64 sort keys (the
    keyed run order), in linear time: the keys are dealt into about one bucket per four
    keys by their top bits (in index order), and each bucket is sorted by insertion (a key
    moves only past larger ones: equal keys keep their index order). A bucket over 32 keys
    long (keys that are not uniform) is sorted by merge sort, which is stable too. 387,200
    keys: 6 ms, against 24 ms for numpy's (unstable) argsort."""
    n = keys.size
    out = np.empty(n, dtype=np.int64)
    if n == 0:
        return out
    bits = 1
    while (1 << (bits + 2)) < n and bits < 24:
        bits += 1
    shift = np.uint64(64 - bits)
    start = np.zeros((1 << bits) + 1, dtype=np.int64)
    for i in range(n):
        start[np.int64(keys[i] >> shift) + 1] += 1
    for b in range(1 << bits):
        start[b + 1] += start[b]
    fill = start[:-1].copy()
    for i in range(n):
        b = np.int64(keys[i] >> shift)
        out[fill[b]] = i
        fill[b] += 1
    for b in range(1 << bits):
        lo = start[b]
        hi = start[b + 1]
        if hi - lo <= 32:
            for j in range(lo + 1, hi):
                cur = out[j]
                k = keys[cur]
                m = j - 1
                while m >= lo and keys[out[m]] > k:
                    out[m + 1] = out[m]
                    m -= 1
                out[m + 1] = cur
        else:
            part = out[lo:hi].copy()
            rank = np.argsort(keys[part], kind="mergesort")
            for j in range(hi - lo):
                out[lo + j] = part[rank[j]]
    return out


@njit(cache=True, nogil=True)
def equal_outside(a, b, mask):
    """Whether flat arrays ``a`` and ``b`` hold the same values wherever ``mask`` is False
    (one pass, no copies; the values are compared as int64)."""
    for i in range(a.size):
        if not mask[i] and np.int64(a[i]) != np.int64(b[i]):
            return False
    return True


@njit(cache=True, nogil=True)
def masked_samples(flat, mask, maxval, out):
    """``out[i]`` = ``flat[i]``, or 0 where ``mask[i]``: the samples the binding's pixel
    digest hashes, in one pass. Returns the index of the first value outside 0..maxval
    (nothing written past it), or -1."""
    for i in range(flat.size):
        v = np.int64(flat[i])
        if v < 0 or v > maxval:
            return i
        out[i] = 0 if mask[i] else v
    return -1
