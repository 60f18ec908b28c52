"""Compiled kernel of ``wavelet53-v2``'s detail bands: context-modelled binary range
coding of wavelet coefficients, one raster pass per band.

A detail band of a decoded lossy JPEG 2000 image is mostly exact zeros, with its
non-zero coefficients clustered along edges and under non-zero parents. Per
coefficient, in raster order:

* its magnitude class c (0 for zero, else 1 + floor(log2 |v|)) as the decisions
  "c > 0", "c > 1", ..., asked upward from zero;
* for c > 0 its sign, then its first mantissa bit modelled and the rest equiprobable.

Each decision is coded with the mean of four adaptive probabilities, a fast and a slow
estimate in each of two context sets: (1) the activity of the causal neighbours (W,
WW, NW, N, NE, NN) by a roughly logarithmic bucket x the parent coefficient's class;
(2) the magnitude class of W x that of N x whether the parent is zero. The coder is
:mod:`medcodec.coders.wpkernel`'s (LZMA's binary range coder, 16-bit probabilities),
kept in local variables for the same reason as there.

Integer arithmetic only: the encoder and decoder compute the same contexts and
probabilities on any machine, and the kernel runs on one thread.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .wpkernel import (
    FAST_SHIFT,
    PROB_ONE,
    SLOW_SHIFT,
    _TOP,
    _bucket,
    _decide,
    _equiprobable,
    _finish,
    _floor_log2,
    _p0,
    _renormalize,
    _start,
    _u,
    _update,
)

MAX_CLASS = 32  # classes 0..31: magnitudes below 2**31 (bands span at most 30 bits)
N_ACT = 16
N_PARENT = 6  # parent magnitude classes: 0, 1, 2-3, 4-7, 8-15, 16+ (in this band's units)
N_MAG = 6  # W / N magnitude classes for the second context set
N_CTX1 = N_ACT * N_PARENT
N_CTX2 = N_MAG * N_MAG * 2
_S_CLASS = 0  # "c > j", j = 0..MAX_CLASS - 2
_S_SIGN = _S_CLASS + MAX_CLASS  # 3 sign contexts: the signs of W and N agree positive / negative / otherwise
_S_MANT = _S_SIGN + 3  # the first mantissa bit, one slot per class
SLOTS = _S_MANT + MAX_CLASS
# the slow estimate's shift after n decisions in its slot: about log2(n + 2), up to SLOW_SHIFT
_SEEN_MAX = 255
_RATE = np.array([min(SLOW_SHIFT, max(1, (n + 2).bit_length() - 1)) for n in range(_SEEN_MAX + 1)], dtype=np.int64)


@njit(cache=True, inline="always")
def _mag_class(m, n):
    c = 0 if m == 0 else _floor_log2(m) + 1
    return c if c < n else n - 1


@njit(cache=True, nogil=True)
def code_band(band, parent, has_parent, scale, max_class, decode, buf):
    """Encode ``band`` (signed coefficients, in units of ``scale``) into ``buf`` (returns
    the byte count, or -1 if ``buf`` was too small) or decode ``buf`` into ``band``
    (returns 0, or -2 for damage: a class no band can have). ``parent``: the coarser
    band of the same orientation in its own stored units (its values times its scale),
    read at (y // 2, x // 2) clamped to its shape. ``max_class``: the band's
    largest class, from the stream's header (a damaged stream cannot make a larger one)."""
    rows, cols = band.shape
    prow, pcol = parent.shape
    low, rng, cache, csize, pos, code = _start(buf, decode)
    probs = np.empty(((N_CTX1 + N_CTX2) * SLOTS, 2), dtype=np.uint16)
    probs[:, :] = PROB_ONE >> 1
    # decisions seen per slot: an estimate moves by 1/(n + 2) until its rate is reached,
    # so a slot learns from its first decisions (small bands have few per slot)
    seen = np.zeros((N_CTX1 + N_CTX2) * SLOTS, dtype=np.uint8)
    for y in range(rows):
        py = y >> 1
        if py >= prow:
            py = prow - 1
        for x in range(cols):
            W = np.int64(band[_u(y), _u(x - 1)]) if x > 0 else 0
            WW = np.int64(band[_u(y), _u(x - 2)]) if x > 1 else 0
            if y > 0:
                N = np.int64(band[_u(y - 1), _u(x)])
                NW = np.int64(band[_u(y - 1), _u(x - 1)]) if x > 0 else 0
                NE = np.int64(band[_u(y - 1), _u(x + 1)]) if x + 1 < cols else 0
                NN = np.int64(band[_u(y - 2), _u(x)]) if y > 1 else 0
            else:
                N = 0
                NW = 0
                NE = 0
                NN = 0
            aW = abs(W)
            aN = abs(N)
            act = 2 * (aW + aN) + abs(NW) + abs(NE) + abs(WW) + abs(NN)
            pc = 0
            if has_parent:
                px = x >> 1
                if px >= pcol:
                    px = pcol - 1
                pm = abs(np.int64(parent[_u(py), _u(px)])) // scale
                pc = _mag_class(pm, N_PARENT)
            base1 = (_bucket(act, N_ACT) * N_PARENT + pc) * SLOTS
            base2 = (N_CTX1 + (_mag_class(aW, N_MAG) * N_MAG + _mag_class(aN, N_MAG)) * 2
                     + (1 if pc > 0 else 0)) * SLOTS
            sctx = 0 if (W > 0 and N >= 0) or (N > 0 and W >= 0) else (
                1 if (W < 0 and N <= 0) or (N < 0 and W <= 0) else 2)
            v = 0
            m = 0
            c = 0
            if not decode:
                v = np.int64(band[_u(y), _u(x)])
                m = v if v >= 0 else -v
                c = 0 if m == 0 else _floor_log2(m) + 1
            # decisions: class walk (phase 0), sign (1), first mantissa bit (2)
            j = 0
            phase = 0
            neg = 0
            hb = 0
            while phase < 3:
                if phase == 0:
                    slot = _S_CLASS + j
                    want = 1 if c > j else 0
                elif phase == 1:
                    slot = _S_SIGN + sctx
                    want = 1 if v < 0 else 0
                else:
                    slot = _S_MANT + c
                    want = (m >> (c - 2)) & 1
                i1 = base1 + slot
                i2 = base2 + slot
                bit, low, rng, code = _decide(low, rng, code, _p0(probs, i1, i2), want, decode)
                while rng < _TOP:
                    low, rng, cache, csize, pos, code = _renormalize(low, rng, cache, csize, pos, code, buf, decode)
                n1 = np.int64(seen[_u(i1)])
                n2 = np.int64(seen[_u(i2)])
                f1 = _RATE[_u(n1)] if _RATE[_u(n1)] < FAST_SHIFT else FAST_SHIFT
                f2 = _RATE[_u(n2)] if _RATE[_u(n2)] < FAST_SHIFT else FAST_SHIFT
                s1 = _RATE[_u(n1)]
                s2 = _RATE[_u(n2)]
                if n1 < _SEEN_MAX:
                    seen[_u(i1)] = n1 + 1
                if n2 < _SEEN_MAX:
                    seen[_u(i2)] = n2 + 1
                _update(probs, i1, i2, bit, f1, s1, f2, s2)
                if phase == 0:
                    if bit:
                        j += 1
                        if j > max_class:
                            return -2  # a class above the band's largest: damage
                    else:
                        c = j
                        phase = 1 if c > 0 else 3
                elif phase == 1:
                    neg = bit
                    phase = 2 if c > 1 else 3
                else:
                    hb = bit
                    phase = 3
            if c > 1:
                rest = 0
                for k in range(c - 3, -1, -1):  # equiprobable low bits, most significant first
                    d, low, rng, code = _equiprobable(low, rng, code, (m >> k) & 1, decode)
                    rest = (rest << 1) | d
                    if rng < _TOP:
                        low, rng, cache, csize, pos, code = _renormalize(low, rng, cache, csize, pos, code, buf, decode)
                if decode:
                    m = (1 << (c - 1)) | (hb << (c - 2)) | rest
            elif c == 1 and decode:
                m = 1
            if decode:
                band[_u(y), _u(x)] = -m if neg else m
    if decode:
        return 0
    return _finish(low, cache, csize, pos, buf)
