"""Compiled per-pixel work of the raster-wp coders (``raster-wp-v1``, ``v2``, ``v3``).

These streams were defined by a numpy implementation that visits one anti-diagonal
(t = 2r + c) per vector step; the per-pixel rules are the same here as plain loops, with
the same int64 arithmetic (floor divisions, arithmetic shifts), so the same predictions,
contexts and probabilities, and the same bytes: the golden records decode unchanged and
``tests/test_wavefront.py`` holds every rule to a scalar definition.

* ``analyse``: the encoder's pass over a known plane (raster order: every value a pixel
  reads, W, N, NW, NE, NN and WW, and their errors, come before it in either order).
* ``properties_at``, ``contexts_at``, ``ls_features_at``, ``fixed_at``: what the encoder
  asks of the known plane at chosen pixels; ``table_predictions``: every pixel's final
  prediction under a leaf table, by the decoder's rule (``fitted_at``: the fitted
  predictors alone, which the tests hold to their scalar definition).
* ``predict_diagonal`` and ``finish_diagonal``: the decoder's step. The tokens of a
  diagonal are range-coded by constriction (the coder of record for these streams) with
  the adaptive tables of their contexts, so each anti-diagonal is one round trip: the
  kernel predicts the diagonal and gives its contexts, constriction decodes its tokens,
  the kernel records the values.

State is the ``Wavefront``'s flat arrays: ``value`` (the plane, a sentinel 0 at index
``n``, and, where the plane has a previous plane, that plane ``prev_shift`` entries later
with its own sentinel), ``true_err`` (n + 1) and ``sub_err`` (sub-predictors, n + 1).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros

from .contextkernel import leaf_of
from .entropy import UNIFORM_PIECE
from .jit import kernel
from .paths import _HALF, WEIGHT_BITS

# --- the weighted predictor (part of the bitstream definition) ---------------------------
EXTRA_BITS = 3
_ROUND = ((1 << EXTRA_BITS) >> 1) - 1
P1C, P2C = 16, 10
P3C = (7, 7, 7, 0, 0)  # teNW, teN, teNE, NN - N, NW - W
MAX_WEIGHTS = (13, 12, 12, 12, 12)  # the last: the previous-plane sub-predictor
N_PROPERTIES = 16
N_FIXED = 8  # wavefront.LEAF_PREDICTORS

# Offsets (row, col) of the neighbours a fitted predictor reads. Each has 2 * row + col < 0,
# so it lies on an earlier anti-diagonal (decoded before the pixel). One outside the
# plane reads the pixel's N where col >= 0 and its W otherwise (with their edge rules).
LS_NEIGHBOURS = (
    (0, -1), (-1, 0), (-1, -1), (-1, 1), (0, -2), (-2, 0), (-1, -2), (-2, -1), (-2, 1), (-2, 2), (-2, -2), (0, -3),
    (-3, 0), (-2, 3), (-1, -3), (-3, -1), (-3, 1), (-3, 2), (0, -4), (-4, 0), (-2, -3), (-3, -2), (-3, 3),
)
_LS_DR = np.array([d[0] for d in LS_NEIGHBOURS], dtype=np.int64)
_LS_DC = np.array([d[1] for d in LS_NEIGHBOURS], dtype=np.int64)
_N_LS = len(LS_NEIGHBOURS)
# The fitted predictors' neighbours all lie inside the plane from this row on, and from
# this column to ``cols - _LS_RIGHT`` (exclusive): there, no edge rule applies.
_LS_ROWS = -min(d[0] for d in LS_NEIGHBOURS)
_LS_LEFT = -min(d[1] for d in LS_NEIGHBOURS)
_LS_RIGHT = max(d[1] for d in LS_NEIGHBOURS)
# An index as unsigned, ``_u(i)``: numba then adds no negative-index wraparound (as in
# ``coders.wpkernel``). Every index here is >= 0.
_u = np.uint64
# (1 << 24) // (d + 1) for the predictor's two divisions, whose divisors are small: an error
# sum e shifted by max(floor(log2(e + 1)) - 5, 0) is below 64, and the weights shifted by
# floor(log2(their sum)) - 4 sum to less than 32.
_INV = np.array([(1 << 24) // (d + 1) for d in range(64)], dtype=np.int64)


@njit(cache=True, inline="always")
def _floor_log2(x):
    # x >= 1
    return np.int64(63) - np.int64(leading_zeros(np.uint64(x)))


@njit(cache=True, inline="always")
def _neighbours(pos, r, c, cols, zero):
    """Flat indices (W, N, NW, NE, NN, WW, eW, eN, eNW, eNE, eWW) with the edge rules:
    values W -> N -> 0, N -> W, NW -> W, NE -> N, NN -> N, WW -> W; errors outside the
    plane 0 (the sentinel), except eNW and eNE, which fall back to eN."""
    if r > 1 and 1 < c < cols - 1:  # all inside the plane: one branch, taken on most pixels
        return pos - 1, pos - cols, pos - cols - 1, pos - cols + 1, pos - 2 * cols, pos - 2, pos - 1, pos - cols, \
            pos - cols - 1, pos - cols + 1, pos - 2
    has_n = r > 0
    has_w = c > 0
    has_ne = has_n and c < cols - 1
    en = pos - cols if has_n else zero
    w = pos - 1 if has_w else en
    n = en if has_n else w
    nw = pos - cols - 1 if has_n and has_w else w
    ne = pos - cols + 1 if has_ne else n
    nn = pos - 2 * cols if r > 1 else n
    ww = pos - 2 if c > 1 else w
    ew = pos - 1 if has_w else zero
    enw = pos - cols - 1 if has_n and has_w else en
    ene = pos - cols + 1 if has_ne else en
    eww = pos - 2 if c > 1 else zero
    return w, n, nw, ne, nn, ww, ew, en, enw, ene, eww


@njit(cache=True, inline="always")
def _weight(err, maxw):
    """A sub-predictor's weight from its neighbours' error sum ``err``: about 4 + maxw *
    2**24 / (err + 1), by the reciprocal table ``_INV`` after ``err`` is shifted below 64."""
    shift = _floor_log2(err + 1) - 5
    if shift < 0:
        shift = 0
    return 4 + ((maxw * _INV[_u(err >> shift)]) >> shift)


@njit(cache=True, inline="always")
def _predict(pos, r, c, cols, zero, value, true_err, sub_err, prev_shift, has_prev, maxv):
    """(prediction clipped to [0, maxv], prediction x8, the five sub-predictions; the
    fifth 0 without a previous plane).

    Every intermediate is a scalar: the decoder's step runs this, the tree walk and the
    range coder per pixel, and with the sub-predictions and weights in small arrays each
    store to them made the compiled loop reload what it had just computed (raster-wp-v4's
    decode, 9 held-out planes: 0.87x the time with scalars; 2026-12-07)."""
    w, n, nw, ne, nn, ww, ew, en, enw, ene, eww = _neighbours(pos, r, c, cols, zero)
    W = value[_u(w)] << EXTRA_BITS
    N = value[_u(n)] << EXTRA_BITS
    NW = value[_u(nw)] << EXTRA_BITS
    NE = value[_u(ne)] << EXTRA_BITS
    NN = value[_u(nn)] << EXTRA_BITS
    teW = true_err[_u(ew)]
    teN = true_err[_u(en)]
    teNW = true_err[_u(enw)]
    teNE = true_err[_u(ene)]
    s0 = W + NE - N
    s1 = N - (((teW + teN + teNE) * P1C) >> 5)
    s2 = W - (((teW + teN + teNW) * P2C) >> 5)
    s3 = N - ((teNW * P3C[0] + teN * P3C[1] + teNE * P3C[2] + (NN - N) * P3C[3] + (NW - W) * P3C[4]) >> 5)
    w0 = _weight(_err_sum(sub_err, 0, ew, en, enw, ene, eww), MAX_WEIGHTS[0])
    w1 = _weight(_err_sum(sub_err, 1, ew, en, enw, ene, eww), MAX_WEIGHTS[1])
    w2 = _weight(_err_sum(sub_err, 2, ew, en, enw, ene, eww), MAX_WEIGHTS[2])
    w3 = _weight(_err_sum(sub_err, 3, ew, en, enw, ene, eww), MAX_WEIGHTS[3])
    s4 = np.int64(0)
    w4 = np.int64(0)  # a weight of 0 adds nothing below: four sub-predictors without a previous plane
    if has_prev:
        pc = value[_u(pos + prev_shift)] << EXTRA_BITS
        pW = value[_u(w + prev_shift)] << EXTRA_BITS
        pN = value[_u(n + prev_shift)] << EXTRA_BITS
        s4 = pc + (((W - pW) + (N - pN)) >> 1)
        w4 = _weight(_err_sum(sub_err, 4, ew, en, enw, ene, eww), MAX_WEIGHTS[4])
    shift = _floor_log2(w0 + w1 + w2 + w3 + w4) - 4
    w0 >>= shift
    w1 >>= shift
    w2 >>= shift
    w3 >>= shift
    w4 >>= shift
    wsum = w0 + w1 + w2 + w3 + w4
    total = s0 * w0 + s1 * w1 + s2 * w2 + s3 * w3 + s4 * w4 + (wsum >> 1) - 1
    pred8 = (total * _INV[_u(wsum - 1)]) >> 24
    if not ((teN ^ teW) | (teN ^ teNW)) > 0:
        lo = min(min(W, NE), N)
        hi = max(max(W, NE), N)
        pred8 = min(max(pred8, lo), hi)
    pred = (pred8 + _ROUND) >> EXTRA_BITS
    return min(max(pred, 0), maxv), pred8, s0, s1, s2, s3, s4


@njit(cache=True, inline="always")
def _err_sum(sub_err, i, ew, en, enw, ene, eww):
    return sub_err[i, _u(ew)] + sub_err[i, _u(en)] + sub_err[i, _u(enw)] + sub_err[i, _u(ene)] + sub_err[i, _u(eww)]


@njit(cache=True, inline="always")
def _record(pos, v, pred8, s0, s1, s2, s3, s4, has_prev, value, true_err, sub_err):
    """Record pixel ``pos``'s value ``v``: its value, the weighted predictor's error and
    each sub-predictor's rounded absolute error."""
    value[_u(pos)] = v
    v8 = v << EXTRA_BITS
    true_err[_u(pos)] = pred8 - v8
    sub_err[0, _u(pos)] = (abs(s0 - v8) + _ROUND) >> EXTRA_BITS
    sub_err[1, _u(pos)] = (abs(s1 - v8) + _ROUND) >> EXTRA_BITS
    sub_err[2, _u(pos)] = (abs(s2 - v8) + _ROUND) >> EXTRA_BITS
    sub_err[3, _u(pos)] = (abs(s3 - v8) + _ROUND) >> EXTRA_BITS
    if has_prev:
        sub_err[4, _u(pos)] = (abs(s4 - v8) + _ROUND) >> EXTRA_BITS


@njit(cache=True, inline="always")
def _properties(pos, r, c, cols, zero, value, true_err, prev_shift, has_prev, pred, out):
    """``Wavefront.PROPERTIES`` of one pixel into ``out`` (16,)."""
    w, n, nw, ne, nn, ww, ew, en, enw, ene, eww = _neighbours(pos, r, c, cols, zero)
    # max_err: the error of largest size among eW, eN, eNW, eNE (the first on ties)
    best = true_err[_u(ew)]
    size = abs(best)
    total = size
    for e in (true_err[_u(en)], true_err[_u(enw)], true_err[_u(ene)]):
        total += abs(e)
        if abs(e) > size:
            best, size = e, abs(e)
    out[0] = best
    out[1] = total >> EXTRA_BITS
    W, N, NW, NE = value[_u(w)], value[_u(n)], value[_u(nw)], value[_u(ne)]
    out[2] = N
    out[3] = W
    out[4] = N - NW
    out[5] = W - NW
    out[6] = NE - N
    out[7] = N - value[_u(nn)]
    out[8] = W - value[_u(ww)]
    out[9] = max(max(W, N), max(NW, NE)) - min(min(W, N), min(NW, NE))
    out[10] = r
    out[11] = c
    out[12] = W + N - NW - pred
    if has_prev:
        pc, pW, pN = value[_u(pos + prev_shift)], value[_u(w + prev_shift)], value[_u(n + prev_shift)]
        pNW, pNE = value[_u(nw + prev_shift)], value[_u(ne + prev_shift)]
        out[13] = pc - (pW + pN - pNW)
        out[14] = abs(W - pW) + abs(N - pN) + abs(NW - pNW) + abs(NE - pNE)
        out[15] = pc + ((W - pW + N - pN) >> 1) - pred
    else:
        out[13] = 0
        out[14] = 0
        out[15] = 0


@njit(cache=True, inline="always")
def _fitted(pos, r, c, cols, zero, value, true_err, prev_shift, has_prev, pred8, weights, m, maxv):
    """Fitted predictor ``m``'s prediction: ``clip(ref + (w . x + half) >> WEIGHT_BITS)``
    over ``wavefront.ls_features`` (computed in place, not stored)."""
    w, n, nw, ne, nn, ww, ew, en, enw, ene, eww = _neighbours(pos, r, c, cols, zero)
    ref = (value[_u(w)] + value[_u(n)]) >> 1
    acc = np.int64(0)
    if r >= _LS_ROWS and _LS_LEFT <= c < cols - _LS_RIGHT:  # every neighbour inside the plane
        for k in range(_N_LS):
            acc += weights[m, k] * (value[_u(pos + _LS_DR[k] * cols + _LS_DC[k])] - ref)
    else:
        for k in range(_N_LS):
            rr = r + _LS_DR[k]
            cc = c + _LS_DC[k]
            if rr >= 0 and cc >= 0 and cc < cols:
                at = pos + _LS_DR[k] * cols + _LS_DC[k]
            else:
                at = n if _LS_DC[k] >= 0 else w
            acc += weights[m, k] * (value[_u(at)] - ref)
    acc += weights[m, _N_LS] * (pred8 - (ref << EXTRA_BITS))
    acc += weights[m, _N_LS + 1] * true_err[_u(ew)] + weights[m, _N_LS + 2] * true_err[_u(en)]
    acc += weights[m, _N_LS + 3] * true_err[_u(enw)] + weights[m, _N_LS + 4] * true_err[_u(ene)]
    if has_prev:
        acc += weights[m, _N_LS + 5] * (value[_u(pos + prev_shift)] - ((value[_u(w + prev_shift)] + value[_u(n + prev_shift)]) >> 1))
    out = ref + ((acc + _HALF) >> WEIGHT_BITS)
    return min(max(out, 0), maxv)


@njit(cache=True, inline="always")
def _table_prediction(pos, r, c, cols, zero, value, true_err, prev_shift, has_prev, weighted, pred8, leaf,
                      choice, offset, model, weights, maxv):
    """The prediction under the leaf's entry (v2, v3): ``wavefront.LEAF_PREDICTORS[pick]``
    or fitted predictor ``pick - N_FIXED``, plus the leaf's offset, within [0, maxv]."""
    pick = choice[_u(leaf)]
    if pick == 0:
        out = weighted
    elif pick >= N_FIXED:
        out = _fitted(pos, r, c, cols, zero, value, true_err, prev_shift, has_prev, pred8, weights, model[_u(leaf)], maxv)
    else:
        w, n, nw, ne, nn, ww, ew, en, enw, ene, eww = _neighbours(pos, r, c, cols, zero)
        out = _fixed(pick, value[_u(w)], value[_u(n)], value[_u(nw)], value[_u(ne)], weighted, maxv)
    return min(max(out + offset[_u(leaf)], 0), maxv)


@njit(cache=True, inline="always")
def _fixed(pick, W, N, NW, NE, weighted, maxv):
    """``wavefront.LEAF_PREDICTORS[pick]`` from the neighbours' values, within [0, maxv]."""
    if pick == 0:
        return weighted
    plane = W + N - NW
    gradient = min(max(plane, min(W, N)), max(W, N))
    if pick == 1:
        return gradient
    if pick == 2:
        return W
    if pick == 3:
        return N
    if pick == 4:
        return (W + N) >> 1
    if pick == 5:
        return (N + NE) >> 1
    if pick == 6:
        return min(max(plane, 0), maxv)
    return (weighted + gradient) >> 1


@njit(cache=True, inline="always")
def model_step(pos, r, c, cols, zero, value, true_err, sub_err, prev_shift, has_prev, maxv, props,
               prop, thr, right, leaf, has_table, choice, offset, model, weights):
    """A decoder's model at one pixel whose causal neighbours are decoded: (final
    prediction, weighted prediction x8, tree leaf, the five sub-predictions)."""
    p, p8, s0, s1, s2, s3, s4 = _predict(pos, r, c, cols, zero, value, true_err, sub_err, prev_shift, has_prev, maxv)
    _properties(pos, r, c, cols, zero, value, true_err, prev_shift, has_prev, p, props)
    ctx = leaf_of(prop, thr, right, leaf, 0, props)
    if has_table:
        p = _table_prediction(pos, r, c, cols, zero, value, true_err, prev_shift, has_prev, p, p8, ctx,
                              choice, offset, model, weights, maxv)
    return p, p8, ctx, s0, s1, s2, s3, s4


# --- the encoder: a known plane ------------------------------------------------------------


def analyse(rows, cols, value, true_err, sub_err, prev_shift, has_prev, maxv, pred, pred8):
    """Every pixel's weighted prediction (clipped) and prediction x8 of a plane already in
    ``value``, filling ``true_err`` and ``sub_err`` as the decoder will."""
    _analyse(rows, cols, value, true_err, sub_err, prev_shift, has_prev, maxv, pred, pred8)


@kernel
def _analyse(rows, cols, value, true_err, sub_err, prev_shift, has_prev, maxv, pred, pred8):
    zero = rows * cols
    for r in range(rows):
        for c in range(cols):
            pos = r * cols + c
            p, p8, s0, s1, s2, s3, s4 = _predict(pos, r, c, cols, zero, value, true_err, sub_err, prev_shift, has_prev,
                                                 maxv)
            pred[pos] = p
            pred8[pos] = p8
            _record(pos, value[_u(pos)], p8, s0, s1, s2, s3, s4, has_prev, value, true_err, sub_err)


# ``_properties_at`` and ``ls_features_at`` write ROW_BLOCK pixels' values (16 properties,
# 28 features) to a scratch block a pixel at a time, then copy them into their rows a row
# at a time. Written straight into the rows, a value to each row per pixel, they fell in
# few L1 sets where the rows are a multiple of 4 KB apart (learning samples of 2**17
# pixels; the fits' samples of held-out 693_J2KR and MR2_J2KR, 262,144 columns, RG3_J2KR
# 281,600) or of 2 KB (OBXXXX1A, 480,000): 8 to 28 lines in sets that hold 8. On
# 693_J2KR's learning sample the properties took 3.1 ms instead of 7.7; on its fits'
# sample the features 13.5 ms instead of 23.9 (OBXXXX1A's 25 instead of 40); blocks of
# 16 to 256 pixels ran alike; on OBXXXX1A's learning sample (rows 2 KB apart, 16 of
# them: two lines to a set) the properties took 4.2 ms instead of 3.8. raster-wp-v4's
# encode (in-process against the code before, best of 7-9, the same bytes): with the
# features' blocks 0.945-0.972x the time on held-out 693_J2KR, MR2_J2KR, OBXXXX1A,
# US1_J2KR and RG3_J2KR; with both, 0.960-0.981x on the first four, in a slower hour.
ROW_BLOCK = 64


@njit(cache=True, nogil=True, inline="always")
def _copy_block(block, out, start, stop):
    """``out[j, start:stop] = block[:stop - start, j]`` for every row j of ``out``."""
    for j in range(out.shape[0]):
        for i in range(start, stop):
            out[j, i] = block[i - start, j]


def properties_at(at, cols, value, true_err, prev_shift, has_prev, pred, out):
    """``Wavefront.PROPERTIES`` (16, m) of the pixels ``at`` of an analysed plane."""
    _properties_at(at, cols, value, true_err, prev_shift, has_prev, pred, out,
                   np.empty((ROW_BLOCK, N_PROPERTIES), dtype=np.int64))


@kernel
def _properties_at(at, cols, value, true_err, prev_shift, has_prev, pred, out, block):
    zero = true_err.size - 1
    size = block.shape[0]
    for start in range(0, at.size, size):
        stop = min(at.size, start + size)
        for i in range(start, stop):
            pos = at[i]
            _properties(pos, pos // cols, pos % cols, cols, zero, value, true_err, prev_shift, has_prev, pred[pos],
                        block[i - start])
        _copy_block(block, out, start, stop)


def contexts_at(start, stop, cols, value, true_err, prev_shift, has_prev, pred, prop, thr, right, leaf, out):
    """The tree's leaf of every pixel ``start <= pos < stop`` of an analysed plane."""
    _contexts_at(start, stop, cols, value, true_err, prev_shift, has_prev, pred, prop, thr, right, leaf, out,
                 np.empty(N_PROPERTIES, dtype=np.int64))


@kernel
def _contexts_at(start, stop, cols, value, true_err, prev_shift, has_prev, pred, prop, thr, right, leaf, out, props):
    zero = true_err.size - 1
    for pos in range(start, stop):
        _properties(pos, pos // cols, pos % cols, cols, zero, value, true_err, prev_shift, has_prev, pred[pos], props)
        out[pos] = leaf_of(prop, thr, right, leaf, 0, props)


def contexts_of(at, cols, value, true_err, prev_shift, has_prev, pred, prop, thr, right, leaf, out):
    """The tree's leaf of each pixel ``at[i]`` of an analysed plane."""
    _contexts_of(at, cols, value, true_err, prev_shift, has_prev, pred, prop, thr, right, leaf, out,
                 np.empty(N_PROPERTIES, dtype=np.int64))


@kernel
def _contexts_of(at, cols, value, true_err, prev_shift, has_prev, pred, prop, thr, right, leaf, out, props):
    zero = true_err.size - 1
    for i in range(at.size):
        pos = at[i]
        _properties(pos, pos // cols, pos % cols, cols, zero, value, true_err, prev_shift, has_prev, pred[pos], props)
        out[i] = leaf_of(prop, thr, right, leaf, 0, props)


@kernel
def ls_features_at(at, cols, value, true_err, prev_shift, has_prev, pred8, out, ref, block):
    """``wavefront.ls_features`` (F, m) and ``ref`` of the pixels ``at`` of an analysed
    plane. ``block`` (B, F): scratch for B pixels' features, written a pixel at a time and
    copied to ``out`` a row at a time (``ROW_BLOCK``)."""
    zero = true_err.size - 1
    size = block.shape[0]
    for start in range(0, at.size, size):
        stop = min(at.size, start + size)
        for i in range(start, stop):
            pos = at[i]
            r = pos // cols
            c = pos % cols
            w, n, nw, ne, nn, ww, ew, en, enw, ene, eww = _neighbours(pos, r, c, cols, zero)
            base = (value[_u(w)] + value[_u(n)]) >> 1
            ref[i] = base
            row = block[i - start]
            for k in range(_N_LS):
                rr = r + _LS_DR[k]
                cc = c + _LS_DC[k]
                if rr >= 0 and cc >= 0 and cc < cols:
                    row[k] = value[pos + _LS_DR[k] * cols + _LS_DC[k]] - base
                else:
                    row[k] = value[n if _LS_DC[k] >= 0 else w] - base
            row[_N_LS] = pred8[pos] - (base << EXTRA_BITS)
            row[_N_LS + 1] = true_err[_u(ew)]
            row[_N_LS + 2] = true_err[_u(en)]
            row[_N_LS + 3] = true_err[_u(enw)]
            row[_N_LS + 4] = true_err[_u(ene)]
            if has_prev:
                row[_N_LS + 5] = value[_u(pos + prev_shift)] - ((value[_u(w + prev_shift)] + value[_u(n + prev_shift)]) >> 1)
        _copy_block(block, out, start, stop)


@kernel
def fitted_at(at, cls, cols, value, true_err, prev_shift, has_prev, pred8, weights, maxv, out):
    """Fitted predictor ``cls[i]``'s prediction at each pixel ``at[i]`` of an analysed plane."""
    zero = true_err.size - 1
    for i in range(at.size):
        pos = at[i]
        out[i] = _fitted(pos, pos // cols, pos % cols, cols, zero, value, true_err, prev_shift, has_prev, pred8[pos],
                         weights, cls[i], maxv)


@kernel
def fixed_at(at, cols, value, true_err, prev_shift, has_prev, pred, maxv, out):
    """``wavefront.LEAF_PREDICTORS``' predictions (N_FIXED, m) at the pixels ``at`` of an
    analysed plane (``pred``: the weighted predictions), by the decoder's rule."""
    zero = true_err.size - 1
    for i in range(at.size):
        pos = at[i]
        w, n, nw, ne, nn, ww, ew, en, enw, ene, eww = _neighbours(pos, pos // cols, pos % cols, cols, zero)
        W, N, NW, NE = value[_u(w)], value[_u(n)], value[_u(nw)], value[_u(ne)]
        for k in range(N_FIXED):
            out[k, i] = _fixed(k, W, N, NW, NE, pred[pos], maxv)


@kernel
def table_predictions(cols, value, true_err, prev_shift, has_prev, pred, pred8, ctx, choice, offset, model, weights,
                      maxv, out):
    """Every pixel's final prediction under a leaf table (``ctx``: its leaf), by the
    decoder's rule (``_table_prediction``), of an analysed plane."""
    zero = true_err.size - 1
    for pos in range(zero):
        out[pos] = _table_prediction(pos, pos // cols, pos % cols, cols, zero, value, true_err, prev_shift, has_prev,
                                     pred[pos], pred8[pos], ctx[pos], choice, offset, model, weights, maxv)


@kernel
def table_predictions_at(at, cols, value, true_err, prev_shift, has_prev, pred, pred8, ctx, choice, offset, model,
                         weights, maxv, out):
    """``table_predictions`` of the pixels ``at[i]`` alone, whose leaves are ``ctx[i]``."""
    zero = true_err.size - 1
    for i in range(at.size):
        pos = at[i]
        out[i] = _table_prediction(pos, pos // cols, pos % cols, cols, zero, value, true_err, prev_shift, has_prev,
                                   pred[pos], pred8[pos], ctx[i], choice, offset, model, weights, maxv)


# --- the decoder: one anti-diagonal per step -----------------------------------------------


@njit(cache=True, nogil=True)
def predict_diagonal(t, rows, cols, value, true_err, sub_err, prev_shift, has_prev, maxv,
                     prop, thr, right, leaf, has_table, choice, offset, model, weights,
                     pos_out, pred_out, pred8_out, sub_out, ctx_out):
    """Predict anti-diagonal ``t`` (increasing row) of a plane decoded up to it: each
    pixel's position, final prediction, prediction x8, sub-predictions and tree leaf.
    Returns the diagonal's length."""
    zero = rows * cols
    props = np.empty(N_PROPERTIES, dtype=np.int64)
    r0 = max(0, (t - cols + 2) // 2)
    r1 = min(rows - 1, t // 2)
    m = 0
    for r in range(r0, r1 + 1):
        c = t - 2 * r
        pos = r * cols + c
        p, p8, ctx, s0, s1, s2, s3, s4 = model_step(pos, r, c, cols, zero, value, true_err, sub_err, prev_shift,
                                                    has_prev, maxv, props, prop, thr, right, leaf, has_table, choice,
                                                    offset, model, weights)
        pos_out[m] = pos
        pred_out[m] = p
        pred8_out[m] = p8
        sub_out[0, m] = s0
        sub_out[1, m] = s1
        sub_out[2, m] = s2
        sub_out[3, m] = s3
        sub_out[4, m] = s4
        ctx_out[m] = ctx
        m += 1
    return m


@njit(cache=True, nogil=True)
def raw_order(token, m, raw_bits, extra, order, sizes, values):
    """The order in which ``entropy.Encoder.uniform`` codes the raw low bits of ``m``
    tokens (by width, stable; fields of no bits left out) into ``order``, their sizes
    (int32) into ``sizes`` and, given the fields ``extra`` (the encoder), their values
    into ``values``. Returns their count, or -1 where a field is wider than
    ``UNIFORM_PIECE`` bits (then ``uniform`` codes it in pieces)."""
    counts = np.zeros(UNIFORM_PIECE + 1, dtype=np.int64)
    for i in range(m):
        b = raw_bits[token[i]]
        if b > UNIFORM_PIECE:
            return -1
        counts[b] += 1
    at = np.zeros(UNIFORM_PIECE + 1, dtype=np.int64)
    k = 0
    for b in range(1, UNIFORM_PIECE + 1):
        at[b] = k
        k += counts[b]
    for i in range(m):
        b = raw_bits[token[i]]
        if b > 0:
            j = at[b]
            at[b] += 1
            order[j] = i
            sizes[j] = np.int32(1 << b)
            if extra.size:
                values[j] = np.int32(extra[i])
    return k


@kernel
def finish_diagonal(m, has_prev, maxv, pos_in, pred_in, pred8_in, sub_in, token, order, k, fields, extra, lowest,
                    value, true_err, sub_err):
    """Record a predicted diagonal's decoded values, ``pred + unzigzag(lowest[token] +
    extra)``, the raw fields ``fields[j]`` belonging to pixel ``order[j]`` (``extra`` is
    scratch); returns False, recording nothing, where a value falls outside [0, maxv]."""
    n_sub = 5 if has_prev else 4
    for i in range(m):
        extra[i] = 0
    for j in range(k):
        extra[order[j]] = fields[j]
    for i in range(m):
        z = lowest[token[i]] + extra[i]
        v = pred_in[i] + ((z >> 1) ^ -(z & 1))
        if v < 0 or v > maxv:
            return False
    for i in range(m):
        z = lowest[token[i]] + extra[i]
        v = pred_in[i] + ((z >> 1) ^ -(z & 1))
        pos = pos_in[i]
        value[_u(pos)] = v
        v8 = v << EXTRA_BITS
        true_err[_u(pos)] = pred8_in[i] - v8
        for s in range(n_sub):
            sub_err[s, _u(pos)] = (abs(sub_in[s, i] - v8) + _ROUND) >> EXTRA_BITS
    return True


@kernel
def take_class_columns(x, dest, stride, out):
    """Blocks of the columns of ``x`` (F, N), in one pass over it a row at a time:
    ``out[dest[t] + f * stride[t]] = x[f, t]`` for each column t with ``dest[t] >= 0``.
    With ``dest[t]`` a block's start plus the column's place among the block's columns
    and ``stride[t]`` their number, each block of ``out`` (flat) is the C-ordered (F,
    stride) array of ``x[:, cols]``, ``cols`` its columns in order (``_class_columns``).
    Taking the blocks one at a time read the whole of ``x`` once per block: over the
    pipeline benchmark's files, samples of up to 475,136 columns of 28 features in up to
    16 classes."""
    for f in range(x.shape[0]):
        for t in range(x.shape[1]):
            d = dest[t]
            if d >= 0:
                out[d + f * stride[t]] = x[f, t]


@kernel
def clip_predictions(sums, ref, half, shift, maxv, out):
    """``out[k, i] = clip(ref[i] + ((int(sums[k, i]) + half) >> shift), 0, maxv)`` in one
    pass (numpy took five over the (K, n) arrays, three quarters of ``ls_predict_many``).
    ``sums`` hold integers exactly (float64 products of integers below 2**53)."""
    for k in range(sums.shape[0]):
        for i in range(sums.shape[1]):
            v = ref[i] + ((np.int64(sums[k, i]) + half) >> shift)
            out[k, i] = 0 if v < 0 else (maxv if v > maxv else v)
