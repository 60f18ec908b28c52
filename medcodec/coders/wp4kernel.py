"""Compiled kernel of ``raster-wp-v4``: raster-wp-v3's model coded in raster order by a
binary range coder inside the kernel.

The model is v3's, rule for rule (``medcodec.wavekernel``: the weighted predictor, the
context tree over its 16 properties, the leaf table of fixed and fitted predictors and
offsets). What changes is the coding: v3 hands every anti-diagonal's probability rows to
constriction (the decoder's only way to learn the next diagonal's contexts is to go back
to Python), while here one loop over the plane predicts, finds the leaf and codes the
token with LZMA's binary range coder (``wpkernel``'s, 16-bit probabilities):

* the token (``paths.tokenize``, two mantissa bits) as ``depth`` binary decisions down a
  binary tree of the token alphabet (most significant bit first), each decision with the
  mean of a fast and a slow adaptive probability of its node in the pixel's leaf, both
  starting from the leaf's prior row (v3's initial counts: the probability of the left
  subtree's tokens);
* then its raw low bits, equiprobable, most significant first.

Encoder and decoder are one function (``code_plane``): the encoder passes the tokens,
raw bits and leaves it computed for the whole plane, the decoder computes them pixel by
pixel, and the decisions are coded at one place. Integer arithmetic only.
"""

from __future__ import annotations

import numpy as np

from ..jit import kernel
from ..wavekernel import N_PROPERTIES, _record, model_step
from .wpkernel import _TOP, _adapt, _decide, _equiprobable, _finish, _renormalize, _start, _u

# Adaptation rates of a node's two estimates (a move of 1/2**shift towards each bit).
# Chosen on 18 planes of the train split, bytes against raster-wp-v3's: (4, 7) -0.45%,
# (5, 8) -0.64%, (6, 9) -0.58%, (5, 10) -0.55%; without the early rates below, +2.1% at
# (4, 7) and +4.0% at (5, 8) (deep nodes see few tokens and never leave their priors).
FAST_SHIFT = 5
SLOW_SHIFT = 8
# A node's first decisions move its estimates by more: a node that has seen n decisions
# adapts at shift _RATE[n] (capped at the estimate's own), 1 / (n + PRIOR_WEIGHT) roughly,
# so deep nodes, which see few tokens, learn from their first ones.
PRIOR_WEIGHT = 2
_SEEN_MAX = 255
_RATE = np.array([max(1, (n + PRIOR_WEIGHT).bit_length() - 1) for n in range(_SEEN_MAX + 1)], dtype=np.int64)


def code_plane(rows, cols, value, true_err, sub_err, prev_shift, has_prev, maxv, prop, thr, right, leaf, has_table,
               choice, offset, model, weights, probs, depth, alphabet, lowest, raw_bits, tokens, extras, leaves,
               decode, buf):
    """Encode (``decode`` False: ``tokens``, ``extras`` and ``leaves`` given in raster
    order) into ``buf``, returning the byte count or -1 if ``buf`` was too small; or
    decode ``buf`` into ``value`` (the ``Wavefront`` state), returning 0, or -2 for
    damage (a token outside the alphabet, a value outside [0, maxv]). The kernel's
    scratch (properties, decisions seen per node) is made here: it is compiled without
    reference counting (``medcodec.jit``)."""
    return _code_plane(rows, cols, value, true_err, sub_err, prev_shift, has_prev, maxv, prop, thr, right, leaf,
                       has_table, choice, offset, model, weights, probs, depth, alphabet, lowest, raw_bits, tokens,
                       extras, leaves, decode, buf, np.empty(N_PROPERTIES, dtype=np.int64),
                       np.zeros(probs.shape[0], dtype=np.int64))


# Secondary estimation, measured and not built (2026-12-08; ideal code lengths of this model's
# decisions, and of variants, on the leaves, residuals and priors this encoder coded, for
# the train planes of 2,000 B or more, 4.89 MB in all; the held-out split's 1.84 MB were
# looked at once, after). The variant that paid best: each decision's probability from a
# logistic mixer (weights per decision level and context, learning rate 1/500) of three
# estimates, the node's fast and slow ones and a second node estimate keyed by
# q = bit length of 2|rW| + 2|rN| + |rNW| + |rNE| (the final predictor's residuals at the
# neighbours, which the tree does not see). It came to train -0.34% (RG1_J2KR -0.26%,
# J2K_pixelrep_mismatch -1.2%, bad_sequence -0.55%, the LUT test images -6 to -8%), held-out
# -0.78%. Variants:
# * two inputs (the node's mean and the second estimate): -0.25%;
# * the two means averaged without a mixer: +0.16%, or 3:1, -0.06%;
# * the mixer on the first 1 to 4 levels only: -0.05% to -0.19%;
# * an adaptive bias correction before the token (a running mean of the residual per sign
#   and magnitude context, or per leaf and signs): larger on nearly every plane, since the
#   leaves' offsets already take the static bias.
# In integers (lpaq's 33-point squash and its inverse, 16.16 weights, updates of
# stretch * error >> 13): train -0.31%, held-out -0.65%. The prototype's decision loop, timed
# alone without the range coder on the same planes (best of 5, alternated), took 49-61 ns a
# pixel more than this model's (693_J2KR 35.3 -> 95.9 ns, MR2_J2KR 37.7 -> 86.6, OBXXXX1A
# 23.3 -> 73.7, US1_J2KR 30.1 -> 81.0). On the decode's ~98 ns a pixel that is ~1.5x the
# time: 17-18 MB/s would fall to ~11, at the edge of the 10 MB/s target, for 0.3-0.65%.
# A leaner loop (two inputs, the node's mean and a one-rate second estimate, and a direct
# 4,095-entry squash table) gave half of both: train -0.17%, held-out -0.41%, +26-33 ns a pixel.
#
# Measured and not kept (2026-12-07, the decoder on 19 captured held-out planes, in-process
# against this loop, the same values): both children's estimates read before a decision,
# so that the next decision's load is not on the path from one decision to the next, took
# 1.07x the time with the child chosen by a conditional and 1.11x by arithmetic (the
# table padded by one leaf); the decisions and probability updates without branches on the
# bit (arithmetic on 0 or 1), 1.09x (OBXXXX1A, whose bits are well predicted, 1.30x).
# The CPU already runs ahead on its guess of the branch; the model (weighted predictor,
# properties, tree walk, leaf predictor: 26-50 ns a pixel) and these decisions (~55 ns a
# pixel on 693_J2KR, 2.4 bits a sample) are the decode's time.
@kernel
def _code_plane(rows, cols, value, true_err, sub_err, prev_shift, has_prev, maxv, prop, thr, right, leaf, has_table,
                choice, offset, model, weights, probs, depth, alphabet, lowest, raw_bits, tokens, extras, leaves,
                decode, buf, props, seen):
    low, rng, cache, csize, at, code = _start(buf, decode)
    zero = rows * cols
    nodes = np.int64(1) << depth
    for r in range(rows):
        for c in range(cols):
            pos = r * cols + c
            p = np.int64(0)
            p8 = np.int64(0)
            t = np.int64(0)
            e = np.int64(0)
            s0 = s1 = s2 = s3 = s4 = np.int64(0)
            if decode:
                p, p8, ctx, s0, s1, s2, s3, s4 = model_step(pos, r, c, cols, zero, value, true_err, sub_err, prev_shift,
                                                            has_prev, maxv, props, prop, thr, right, leaf, has_table,
                                                            choice, offset, model, weights)
            else:
                ctx = leaves[_u(pos)]
                t = tokens[_u(pos)]
                e = extras[_u(pos)]
            base = ctx * nodes
            node = np.int64(1)
            for j in range(depth - 1, -1, -1):
                i = _u(base + node)
                p0 = (probs[i, 0] + probs[i, 1]) >> 1
                bit, low, rng, code = _decide(low, rng, code, p0, (t >> j) & 1, decode)
                while rng < _TOP:
                    low, rng, cache, csize, at, code = _renormalize(low, rng, cache, csize, at, code, buf, decode)
                n = seen[i]
                rate = _RATE[_u(n)]
                probs[i, 0] = _adapt(probs[i, 0], bit, rate if rate < FAST_SHIFT else FAST_SHIFT)
                probs[i, 1] = _adapt(probs[i, 1], bit, rate if rate < SLOW_SHIFT else SLOW_SHIFT)
                if n < _SEEN_MAX:
                    seen[i] = n + 1
                node = 2 * node + bit
            t = node - nodes
            if t >= alphabet:
                return -2
            x = np.int64(0)
            for k in range(raw_bits[_u(t)] - 1, -1, -1):
                d, low, rng, code = _equiprobable(low, rng, code, (e >> k) & 1, decode)
                x = (x << 1) | d
                if rng < _TOP:
                    low, rng, cache, csize, at, code = _renormalize(low, rng, cache, csize, at, code, buf, decode)
            if decode:
                z = lowest[_u(t)] + x
                v = p + ((z >> 1) ^ -(z & 1))
                if v < 0 or v > maxv:
                    return -2
                _record(pos, v, p8, s0, s1, s2, s3, s4, has_prev, value, true_err, sub_err)
    if decode:
        return 0
    return _finish(low, cache, csize, at, buf)
