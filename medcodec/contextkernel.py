"""Compiled context-model primitives shared by the coders: the walk down a context tree
(``ctxtree.Tree``) and the adaptive frequency tables (``entropy.AdaptiveTables``).

Both are integer rules of the bitstream: a node goes right when its property is greater
than its threshold; a table counts each coded symbol, halves a row (rounding up) once its
total passes its limit, and gives a symbol the probability ``(fast * slow_total + slow *
fast_total) / (2 * fast_total * slow_total)``, one exactly rounded float64 division (the
same float on every IEEE-754 machine, as numpy's ``int64 / int64``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .jit import kernel

# (increment, limit) of each row's fast and slow copy.
FAST = (48, 1 << 13)
SLOW = (24, 1 << 16)
# Symbols per adaptation step. Smaller adapts faster, larger costs fewer calls.
# Part of the bitstream definition: changing it changes every record.
CHUNK = 512
_FAST_INC, _FAST_LIMIT = FAST
_SLOW_INC, _SLOW_LIMIT = SLOW


# --- context trees ----------------------------------------------------------------------------


# A step down the tree is arithmetic, not a branch: ``node + 1 + go * (right - node - 1)``.
# Which way a pixel goes depends on its data and its neighbour's path tells little, so a
# branch there was mispredicted often: raster-wp-v4's decode (trees of ~256 leaves, ~10
# levels deep) spent ~35 ns a pixel in the walk, and the arithmetic step made the whole
# decode 0.91x the time (9 held-out planes, the same values; 2026-12-07). Indices are
# taken unsigned (``_u``): every index here is >= 0, so numba adds no wraparound.
_u = np.uint64


@njit(cache=True, inline="always")
def leaf_of(prop, thr, right, leaf, root, props):
    """The leaf id a pixel's properties reach from node ``root`` (trees are checked when
    read: every step moves forward and ends at a leaf)."""
    node = np.int64(root)
    p = prop[_u(node)]
    while p >= 0:
        go = np.int64(props[_u(p)] > thr[_u(node)])
        node += 1 + go * (right[_u(node)] - node - 1)
        p = prop[_u(node)]
    return leaf[_u(node)]


@kernel
def leaves(prop, thr, right, leaf, props, out):
    """The leaf of every column of ``props`` (P, n)."""
    for i in range(props.shape[1]):
        node = np.int64(0)
        p = prop[0]
        while p >= 0:
            go = np.int64(props[_u(p), i] > thr[_u(node)])
            node += 1 + go * (right[_u(node)] - node - 1)
            p = prop[_u(node)]
        out[i] = leaf[_u(node)]


# --- adaptive frequency tables (``entropy.AdaptiveTables``) -----------------------------------


@kernel
def table_probabilities(fast, slow, fast_total, slow_total, ctx, out):
    """The probability row of each symbol's context: ``AdaptiveTables.probabilities``."""
    alphabet = fast.shape[1]
    for i in range(ctx.size):
        k = ctx[i]
        if k < 0 or k >= fast.shape[0]:  # indices are not bounds-checked in compiled code
            raise IndexError("adaptive table context out of range")
        ft = fast_total[k]
        st = slow_total[k]
        total = np.float64(2 * ft * st)
        for a in range(alphabet):
            out[i, a] = np.float64(fast[k, a] * st + slow[k, a] * ft) / total


@kernel
def table_chunks(fast, slow, fast_total, slow_total, ctx, symbols, seen, out):
    """The probability rows of known symbols coded in chunks of ``CHUNK``, the tables
    updated after each chunk: what ``Decoder.adaptive`` will see (the encoder's side)."""
    for lo in range(0, ctx.size, CHUNK):
        hi = min(ctx.size, lo + CHUNK)
        table_probabilities(fast, slow, fast_total, slow_total, ctx[lo:hi], out[lo:hi])
        table_update(fast, slow, fast_total, slow_total, ctx[lo:hi], symbols[lo:hi], seen)


@kernel
def table_update(fast, slow, fast_total, slow_total, ctx, symbols, seen):
    """``AdaptiveTables.update`` over one chunk: every symbol's count raised, then each row
    the chunk touched halved (rounding up) if its total passed its limit. ``seen``: one
    flag per context, all False on entry and on return."""
    for i in range(ctx.size):  # indices are not bounds-checked in compiled code
        if ctx[i] < 0 or ctx[i] >= fast.shape[0] or symbols[i] < 0 or symbols[i] >= fast.shape[1]:
            raise IndexError("adaptive table context or symbol out of range")
    for i in range(ctx.size):
        k = ctx[i]
        s = symbols[i]
        fast[k, s] += _FAST_INC
        fast_total[k] += _FAST_INC
        slow[k, s] += _SLOW_INC
        slow_total[k] += _SLOW_INC
    for i in range(ctx.size):
        k = ctx[i]
        if seen[k]:
            continue
        seen[k] = True
        if fast_total[k] > _FAST_LIMIT:
            fast_total[k] = _halve(fast, k)
        if slow_total[k] > _SLOW_LIMIT:
            slow_total[k] = _halve(slow, k)
    for i in range(ctx.size):
        seen[ctx[i]] = False


@njit(cache=True, inline="always")
def _halve(table, k):
    total = np.int64(0)
    for a in range(table.shape[1]):
        table[k, a] = (table[k, a] + 1) >> 1
        total += table[k, a]
    return total


# --- the interlaced tree path's properties (``paths.TreeGlobalPathCoder.PROPERTIES``) ---------


@njit(cache=True, nogil=True, inline="always")
def _interlaced_at(i, flat, emap, prev, has_prev, pos, nearest, outer, has_outer, cols, kind, level, p, out):
    """The 17 properties of pixel ``i`` of an interlaced pass into ``out`` (17,)."""
    a, b, c, d = nearest[0, i], nearest[1, i], nearest[2, i], nearest[3, i]
    v0, v1, v2, v3 = flat[a], flat[b], flat[c], flat[d]
    e0, e1, e2, e3 = emap[a], emap[b], emap[c], emap[d]
    noise = (e0 + e1 + e2 + e3) >> 2
    spread = max(max(v0, v1), max(v2, v3)) - min(min(v0, v1), min(v2, v3))
    ref = (v0 + v1 + v2 + v3) >> 2
    out[0] = kind
    out[1] = level
    out[2] = spread
    out[3] = noise
    out[4] = np.int64(v0 > p) + np.int64(v1 > p) + np.int64(v2 > p) + np.int64(v3 > p)
    out[5] = ref
    out[6] = p - ref
    out[7] = abs(v0 - v1)
    out[8] = abs(v2 - v3)
    out[9] = max(max(e0, e1), max(e2, e3))
    out[12] = 2 * spread + noise
    out[13] = pos[i] // cols
    out[14] = pos[i] - out[13] * cols
    out[10] = out[11] = out[16] = 0
    if has_prev:
        d0, d1, d2, d3 = v0 - prev[a], v1 - prev[b], v2 - prev[c], v3 - prev[d]
        out[10] = abs(d0) + abs(d1) + abs(d2) + abs(d3)
        out[11] = max(max(d0, d1), max(d2, d3)) - min(min(d0, d1), min(d2, d3))
        out[16] = abs(4 * prev[pos[i]] - (prev[a] + prev[b] + prev[c] + prev[d]))
    out[15] = 0
    if has_outer and outer.shape[0] > 0:
        lo = hi = flat[outer[0, i]]
        for k in range(1, outer.shape[0]):
            v = flat[outer[k, i]]
            lo = min(lo, v)
            hi = max(hi, v)
        out[15] = hi - lo


def interlaced_properties(flat, emap, prev, has_prev, pos, nearest, outer, has_outer, cols, kind, level, pred, out):
    """The 17 integer properties (17, N) of the N pixels ``pos`` of one interlaced pass:
    ``nearest`` (4, N) their nearest known neighbours, ``outer`` (M, N) the wider ones
    (read where ``has_outer``; row 15 is left 0 otherwise), ``pred`` their predictions,
    ``emap`` every known pixel's absolute residual, ``prev`` the previous plane (rows 10,
    11 and 16 are 0 without one)."""
    _interlaced_properties(flat, emap, prev, has_prev, pos, nearest, outer, has_outer, cols, kind, level, pred, out,
                           np.empty(17, dtype=np.int64))


@kernel  # without reference counting: the helpers below take 7 arrays per pixel (medcodec.jit)
def _interlaced_properties(flat, emap, prev, has_prev, pos, nearest, outer, has_outer, cols, kind, level, pred, out,
                           props):
    for i in range(pos.size):
        _interlaced_at(i, flat, emap, prev, has_prev, pos, nearest, outer, has_outer, cols, kind, level, pred[i], props)
        for j in range(17):
            out[j, i] = props[j]


def interlaced_contexts(flat, emap, prev, has_prev, pos, nearest, outer, has_outer, cols, kind, level, pred,
                        prop, thr, right, leaf, out):
    """The tree leaf of each pixel of an interlaced pass (``interlaced_properties``, walked
    at once): ``out`` (N,)."""
    _interlaced_contexts(flat, emap, prev, has_prev, pos, nearest, outer, has_outer, cols, kind, level, pred,
                         prop, thr, right, leaf, out, np.empty(17, dtype=np.int64))


@kernel
def _interlaced_contexts(flat, emap, prev, has_prev, pos, nearest, outer, has_outer, cols, kind, level, pred,
                         prop, thr, right, leaf, out, props):
    for i in range(pos.size):
        _interlaced_at(i, flat, emap, prev, has_prev, pos, nearest, outer, has_outer, cols, kind, level, pred[i], props)
        out[i] = leaf_of(prop, thr, right, leaf, 0, props)
