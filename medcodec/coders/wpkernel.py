"""Compiled per-pixel kernel of ``raster-wpc-v1``, ``v2`` and ``v3``: a weighted
predictor, bias cancellation and context-modelled binary range coding, in one raster
pass (v2 adds a run mode, v3 lightens the model: below).

Everything here is integer arithmetic on int64, so the encoder and decoder compute
the same prediction and the same probability at every pixel on any machine, with any
number of threads, in any process (numba does not reassociate integer code, and the
kernel runs on one thread). The encoder and the decoder are one function
(``code_plane``, compiled once per direction): the only difference is whether a decision's bit is given or read,
which keeps the two sides from drifting apart.

The model, per pixel, in the scan order of the rows:

* sub-predictions in units of 1/8: JPEG-XL's self-correcting weighted predictor (W + NE
  - N and three error-corrected N / W forms), the gradient W + N - NW, the means of N
  and NE and of W and N, a normalized LMS filter over 12 causal neighbours (integer
  weights, updated after every pixel) and, where the plane has a previous plane, that
  plane's value moved by the local difference;
* their mean, weighted by the inverse of each one's recent error around the pixel
  (JPEG-XL's rule), clamped to the neighbours' range where the neighbours' errors
  disagree in sign, then corrected by the mean residual of its context (bias
  cancellation, as CALIC does), rounded and clamped to the value range;
* the residual as binary decisions (its magnitude class, asked from the context's
  expected class up or down; the sign; two modelled mantissa bits; the rest
  equiprobable), each coded with
  the mean of four adaptive probabilities: a fast and a slow estimate in each of two
  context sets (activity x gradient; coarse activity x the north neighbour's level).

With ``v2`` (``raster-wpc-v2``), a pixel whose W, N, NW and NE are equal is first
asked one decision, "equal to W?" (two context slots of its own: whether W was such a
run pixel; whether four more neighbours equal N); a pixel that is skips everything
above and records zero errors, so flat backgrounds cost one decision per pixel. v2 also
codes the sign and the mantissa bits below the top one as equiprobable bits: 0.12%
larger and 12% faster than modelling them.

``raster-wpc-v3`` is v2 without the two plain means, with 8 filter taps (a reciprocal
for the step's division; the weights clamped every 4096 pixels) and one estimate per context
slot: 0.09% larger than v2 on the train planes, encoded 1.29x and decoded 1.30x as fast.
v3 and the older models are compiled apart (``_LEAN``, ``_FULL``), so neither pays for
the other's branches.

The range coder is LZMA's (32-bit range, carry through a cached byte) with 16-bit
probabilities. numba compiles the kernel once per machine and caches it beside this
file (``cache=True``); without a writable cache it compiles in each new process.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros


# An index as unsigned, ``_u(i)``: numba then adds no negative-index wraparound (a compare
# and an add per subscript; 10% of the kernel's time). Every index here is >= 0. The type
# itself rather than an inlined function: the same bytes and speed, and each of the kernel's
# two copies compiles 0.9 s faster (7.5 -> 6.6 s) without 67 inlinings.
_u = np.uint64

# --- binary range coder ---------------------------------------------------------------------------

_TOP = 1 << 24
_MASK32 = (1 << 32) - 1
PROB_ONE = 1 << 16
FAST_SHIFT = 4
SLOW_SHIFT = 7
LEAN_SHIFT = 6  # v3's one estimate per context slot

# The coder's state (low, range, cache, cache size, position, code) lives in local
# variables of the kernel, and a decision is coded at one place in it: passed through
# functions (as a tuple or an array), numba kept it in memory and a decision cost 20-45 ns
# instead of 11.
#
# Where v3's encoder spends its time, and what did not make it faster (the 10 train planes
# of 4.69 M samples, ns per sample, best of 3, the same bytes unless said): 67.4 in all;
# 31.9 without the residual's decisions (bytes not decodable), so about half is coding.
# Measured and not kept, against 67.2-67.6 in the same runs: the encoder's decisions
# written out straight, since it knows every bit (no state machine), 87.3, or only the
# class's upward walk straight, 68.9; the model and the coding as two passes per row (the
# decisions queued, then coded), 73.7; a decision and a probability update with masks
# instead of branches, 70.2 and 67.7; error rows or the weight table as int32, 69.1 and
# 67.7; one probability column for v3 (half the table), 66.9 (noise). Leaving the
# probability updates out saves 3 ns, the plain mantissa bits 3 ns: the modelled
# decisions themselves are the cost. Two stream changes measured against it and not kept
# (5.88 M train samples): the class as one adaptive 16-symbol symbol (integer cumulative
# frequencies, both context sets mixed, AV1's count-based rate) instead of the up/down
# walk, +0.8 to +1.5% bytes and 73.0 ns (every node of the walk adapts only when visited,
# which models the class better); the top mantissa bit equiprobable from class 4 on,
# +0.47% for 66.2 ns. The walk asks 2.65 class decisions per coded sample, and the best
# start per context chosen with hindsight 2.62. Coding a plane's left and right halves as
# two independent v3 streams in one loop (a pixel of each per iteration, so that the CPU
# might overlap two dependency chains) was slower: 73.3 ns against 67.3, +0.10% bytes.


@njit(cache=True, inline="always")
def _shift_low(low, cache, csize, pos, buf):
    if low < 0xFF000000 or low > _MASK32:
        carry = low >> 32
        temp = cache
        while True:
            if pos < buf.size:
                buf[_u(pos)] = (temp + carry) & 0xFF
            pos += 1
            temp = 0xFF
            csize -= 1
            if csize == 0:
                break
        cache = (low >> 24) & 0xFF
    csize += 1
    low = (low & 0x00FFFFFF) << 8
    return low, cache, csize, pos


@njit(cache=True, inline="always")
def _renormalize(low, rng, cache, csize, pos, code, buf, decode):
    """One byte of renormalization: the encoder writes one, the decoder reads one."""
    rng <<= 8
    if decode:
        code = ((code << 8) | (buf[_u(pos)] if pos < buf.size else 0)) & _MASK32
        pos += 1
    else:
        low, cache, csize, pos = _shift_low(low, cache, csize, pos, buf)
    return low, rng, cache, csize, pos, code


@njit(cache=True, inline="always")
def _start(buf, decode):
    """The coder's initial state (low, range, cache, cache size, position, code); the
    decoder reads its first five bytes."""
    pos = 0
    code = 0
    if decode:
        for _ in range(5):
            code = ((code << 8) | (buf[_u(pos)] if pos < buf.size else 0)) & _MASK32
            pos += 1
    return 0, _MASK32, 0, 1, pos, code


@njit(cache=True, inline="always")
def _finish(low, cache, csize, pos, buf):
    """Flush the encoder: the byte count, or -1 if ``buf`` was too small."""
    for _ in range(5):
        low, cache, csize, pos = _shift_low(low, cache, csize, pos, buf)
    return -1 if pos > buf.size else pos


@njit(cache=True, inline="always")
def _decide(low, rng, code, p0, want, decode):
    """One binary decision with probability ``p0`` (of 16 bits) of a 0: the encoder codes
    ``want``, the decoder reads the bit. Returns (bit, low, range, code); renormalize after."""
    bound = (rng >> 16) * p0
    if decode:
        if code < bound:
            return 0, low, bound, code
        return 1, low, rng - bound, code - bound
    if want == 0:
        return 0, low, bound, code
    return 1, low + bound, rng - bound, code


@njit(cache=True, inline="always")
def _equiprobable(low, rng, code, want, decode):
    """One bit at probability 1/2 (``want`` when encoding). Returns (bit, low, range,
    code); renormalize after."""
    rng >>= 1
    if decode:
        d = 1 if code >= rng else 0
        return d, low, rng, code - rng * d
    return want, low + rng * want, rng, code


@njit(cache=True, inline="always")
def _adapt(p, bit, shift):
    """A 16-bit probability of a 0 moved 1/2**shift of the way towards what was seen."""
    return p + ((PROB_ONE - p) >> shift) if bit == 0 else p - (p >> shift)


@njit(cache=True, inline="always")
def _p0(probs, i1, i2):
    """A decision's probability of a 0: the mean of the fast and slow estimates of its two
    context slots (rows ``i1`` and ``i2`` of ``probs``)."""
    return (np.int64(probs[_u(i1), 0]) + np.int64(probs[_u(i1), 1]) + np.int64(probs[_u(i2), 0]) + np.int64(probs[_u(i2), 1])) >> 2


@njit(cache=True, inline="always")
def _update(probs, i1, i2, bit, fast1, slow1, fast2, slow2):
    """Move the four estimates of a decision towards its bit, each at its own shift."""
    probs[_u(i1), 0] = _adapt(np.int64(probs[_u(i1), 0]), bit, fast1)
    probs[_u(i1), 1] = _adapt(np.int64(probs[_u(i1), 1]), bit, slow1)
    probs[_u(i2), 0] = _adapt(np.int64(probs[_u(i2), 0]), bit, fast2)
    probs[_u(i2), 1] = _adapt(np.int64(probs[_u(i2), 1]), bit, slow2)


@njit(cache=True, inline="always")
def _model_p0(probs, i1, i2, lean):
    """The raster kernel's probability of a 0: ``_p0``, or with v3 (``lean``) the mean of
    one estimate in each of the two slots (column 0)."""
    if lean:
        return (np.int64(probs[_u(i1), 0]) + np.int64(probs[_u(i2), 0])) >> 1
    return _p0(probs, i1, i2)


@njit(cache=True, inline="always")
def _model_update(probs, i1, i2, bit, lean):
    """The raster kernel's update: ``_update`` at FAST_SHIFT and SLOW_SHIFT, or with v3
    its one estimate per slot at LEAN_SHIFT."""
    if lean:
        probs[_u(i1), 0] = _adapt(np.int64(probs[_u(i1), 0]), bit, LEAN_SHIFT)
        probs[_u(i2), 0] = _adapt(np.int64(probs[_u(i2), 0]), bit, LEAN_SHIFT)
    else:
        _update(probs, i1, i2, bit, FAST_SHIFT, SLOW_SHIFT, FAST_SHIFT, SLOW_SHIFT)


# --- model ------------------------------------------------------------------------------------------

N_BASE = 8  # sub-predictors without the previous plane
N_PRED = N_BASE + 1
EXTRA = 3  # sub-predictions are in units of 1 / 2**EXTRA
# JPEG-XL's weighted-predictor defaults (p1, p2, p3a..p3e, and the sub-predictors' maximum weights).
_P1, _P2, _P3A, _P3B, _P3C = 16, 10, 7, 7, 7
_WMAX0, _WMAX1, _WMAX7, _WMAX8 = 13, 12, 14, 12  # W + NE - N; the error-corrected forms and the rest; LMS; previous plane
N_TAPS = 12  # the filter below is written out tap by tap (t0..t11, w0..w11)
LMS_BITS = 16
LMS_MU = 2  # step: MU / 2**LMS_STEP of the normalized gradient
LMS_STEP = 4
LMS_WMAX = 1 << 20
LMS_CLAMP_EVERY = 1 << 12  # v3: the weights are clamped at the start of a row and every 4096 pixels in it
N_ACT = 16  # activity buckets
N_GRAD = 4  # gradient buckets
N_CTX = N_ACT * N_GRAD
N_LEVEL = 8  # second context set: coarse activity x the north neighbour's level (eighths of the range)
N_CTX2 = (N_ACT // 2) * N_LEVEL
MAX_EXP = 24  # exponents above this are damage
N_BIAS = N_ACT * 16  # bias contexts: activity x error-sign texture
BIAS_LIMIT = 64  # bias counts are halved at this many samples

# decision phases of one residual, and each decision's slot in a context's table
_PH_UP, _PH_DOWN, _PH_SIGN, _PH_MANT1, _PH_MANT2, _PH_DONE = 0, 1, 2, 3, 4, 5
MAX_CLASS = MAX_EXP + 1  # class c: 0 for a zero residual, else 1 + floor(log2 |r|)
_S_UP = 0  # "c > j", j = 0..MAX_CLASS - 1
_S_DOWN = _S_UP + MAX_CLASS  # "c < j", j = 1..MAX_CLASS - 1
_S_SIGN = _S_DOWN + MAX_CLASS  # 3 sign contexts
_S_MANT = _S_SIGN + 3  # two context-coded mantissa bits per exponent: 3 slots each
SLOTS = _S_MANT + 3 * (MAX_EXP + 1)
_RUN = (N_CTX + N_CTX2) * SLOTS  # run mode's 4 probabilities: W was a run pixel (2) x a wider flat neighbourhood (2)

# 2**16 / n, rounded: bias means without a division per pixel
_RECIP = np.array([0] + [((1 << 17) // n + 1) >> 1 for n in range(1, 65)], dtype=np.int64)
# v3: 2**24 / m for an energy's top 8 bits m (energies are at least 16)
_INV_ENERGY = np.array([0] + [(1 << 24) // m for m in range(1, 256)], dtype=np.int64)
_INV_SIZE = 1 << 14
_INV = np.array([(1 << 24) // (i + 1) for i in range(_INV_SIZE)], dtype=np.int64)
_DIV = np.array([(1 << 24) // (i + 1) for i in range(64)], dtype=np.int64)


@njit(cache=True, inline="always")
def _floor_log2(x):
    # x >= 1
    return np.int64(63) - np.int64(leading_zeros(np.uint64(x)))


@njit(cache=True, inline="always")
def _weight(err_sum, wmax):
    # JPEG-XL's error-to-weight map, 4 + wmax * 2**24 / (err_sum + 1), from one table
    # (error sums beyond its end weigh as its last entry)
    return 4 + wmax * _INV[_u(err_sum if err_sum < _INV_SIZE else _INV_SIZE - 1)]


@njit(cache=True, inline="always")
def _bucket(x, n):
    # roughly logarithmic: 0, 1, 2, 3, 4-5, 6-7, 8-11, 12-15, ...
    if x < 4:
        b = x
    else:
        lg = _floor_log2(x)
        b = 2 * lg + ((x >> (lg - 1)) & 1)
    return b if b < n else n - 1


@njit(cache=True, inline="always")
def _near_errors(perr, pN, pNE, pNW, i):
    """Sub-predictor ``i``'s error sum around the pixel: N, NE and NW (W is added into N's slot)."""
    return perr[_u(pN), i] + perr[_u(pNE), i] + perr[_u(pNW), i]


@njit(cache=True, inline="always")
def _record_error(perr, here, ne_of_west, i, sub, val):
    """Sub-predictor ``i``'s error at this pixel, kept for the next row and added into the
    slot the next pixel reads as its N (JPEG-XL's N + W sum)."""
    err = (abs(sub - val) + 3) >> 3
    perr[_u(here), i] = err
    perr[_u(ne_of_west), i] += err


@njit(cache=True, nogil=True)
def _kernel(plane, prev, has_prev, maxv, direction, buf, v2, model):
    """``code_plane``'s work; ``direction`` is ``_DECODE`` or ``_ENCODE``, ``model``
    ``_LEAN`` (v3) or ``_FULL`` (v1 and v2, told apart by ``v2``)."""
    decode = len(direction) == 1  # constants in each compiled copy
    lean = len(model) == 1
    v2 = v2 or lean  # v3 keeps v2's run mode and residual
    rows, cols = plane.shape
    low, rng, cache, csize, pos, code = _start(buf, decode)
    # 16-bit probabilities stay below PROB_ONE (an update moves one by less than its
    # distance to 0 or PROB_ONE), so uint16 holds them: half the cache of int32.
    probs = np.empty((_RUN + 4, 2), dtype=np.uint16)
    probs[:, :] = PROB_ONE >> 1
    bias_sum = np.zeros(N_BIAS, dtype=np.int64)
    bias_cnt = np.zeros(N_BIAS, dtype=np.int64)
    width = cols + 2
    # per sub-predictor error rows (two rows, ring) and the true error of the final prediction
    perr = np.zeros((2 * width, N_PRED), dtype=np.int64)  # a position's errors side by side
    terr = np.zeros(2 * width, dtype=np.int64)
    # The filter's weights and taps are scalars, not arrays: numba kept arrays in memory
    # and reloaded them at every use (5% of the kernel's time).
    w0 = np.int64(1 << (LMS_BITS - 1))  # start as the mean of W and N
    w1 = np.int64(0)
    w2 = np.int64(0)
    w3 = np.int64(0)
    w4 = np.int64(0)
    w5 = np.int64(0)
    w6 = np.int64(0)
    w7 = np.int64(0)
    w8 = np.int64(0)
    w9 = np.int64(0)
    w10 = np.int64(0)
    w11 = np.int64(0)
    half = (maxv + 1) >> 1
    maxs = maxv << EXTRA
    lshift = _floor_log2(maxv + 1) - 3
    if lshift < 0:
        lshift = 0
    for y in range(rows):
        cur = 0 if (y & 1) else width
        prv = width if (y & 1) else 0
        hit_w = 0  # the pixel to the left was coded as a run pixel
        for x in range(cols):
            if lean and (x & (LMS_CLAMP_EVERY - 1)) == 0:
                # v3 clamps the filter's weights here, not after every step. A step moves a
                # weight by at most about 2**27 (gain * t >> LMS_STEP: about 2**17 * |lerr| *
                # |t| / (16 + t**2) / 16, with |lerr| and |t| under 2**17 in a difference
                # plane), so between two clamps |w| < 2**40 and the 8 products w * t sum far
                # inside int64.
                w0 = min(max(w0, -LMS_WMAX), LMS_WMAX)
                w1 = min(max(w1, -LMS_WMAX), LMS_WMAX)
                w2 = min(max(w2, -LMS_WMAX), LMS_WMAX)
                w3 = min(max(w3, -LMS_WMAX), LMS_WMAX)
                w4 = min(max(w4, -LMS_WMAX), LMS_WMAX)
                w5 = min(max(w5, -LMS_WMAX), LMS_WMAX)
                w6 = min(max(w6, -LMS_WMAX), LMS_WMAX)
                w7 = min(max(w7, -LMS_WMAX), LMS_WMAX)
            if y > 2 and x > 2 and x + 2 < cols:  # every neighbour exists: no edge rules
                W = np.int64(plane[_u(y), _u(x - 1)])
                N = np.int64(plane[_u(y - 1), _u(x)])
                NW = np.int64(plane[_u(y - 1), _u(x - 1)])
                NE = np.int64(plane[_u(y - 1), _u(x + 1)])
                NN = np.int64(plane[_u(y - 2), _u(x)])
                t4 = np.int64(plane[_u(y), _u(x - 2)]) - N
                t5 = np.int64(plane[_u(y - 2), _u(x + 1)]) - N
                t6 = np.int64(plane[_u(y - 2), _u(x - 1)]) - N
                t7 = np.int64(plane[_u(y - 1), _u(x - 2)]) - N
                t8 = np.int64(plane[_u(y - 1), _u(x + 2)]) - N
                t9 = np.int64(plane[_u(y), _u(x - 3)]) - N
                t10 = np.int64(plane[_u(y - 3), _u(x)]) - N
                t11 = np.int64(plane[_u(y - 2), _u(x + 2)]) - N
            else:
                # neighbours (edges replicate what exists)
                if x > 0:
                    W = np.int64(plane[_u(y), _u(x - 1)])
                elif y > 0:
                    W = np.int64(plane[_u(y - 1), _u(x)])
                else:
                    W = half
                if y > 0:
                    N = np.int64(plane[_u(y - 1), _u(x)])
                    NW = np.int64(plane[_u(y - 1), _u(x - 1)]) if x > 0 else N
                    NE = np.int64(plane[_u(y - 1), _u(x + 1)]) if x + 1 < cols else N
                    NN = np.int64(plane[_u(y - 2), _u(x)]) if y > 1 else N
                else:
                    N = W
                    NW = W
                    NE = W
                    NN = W
                t4 = (np.int64(plane[_u(y), _u(x - 2)]) if x > 1 else W) - N
                t5 = (np.int64(plane[_u(y - 2), _u(x + 1)]) if y > 1 and x + 1 < cols else NN) - N
                t6 = (np.int64(plane[_u(y - 2), _u(x - 1)]) if y > 1 and x > 0 else NN) - N
                t7 = (np.int64(plane[_u(y - 1), _u(x - 2)]) if y > 0 and x > 1 else NW) - N
                t8 = (np.int64(plane[_u(y - 1), _u(x + 2)]) if y > 0 and x + 2 < cols else NE) - N
                t9 = (np.int64(plane[_u(y), _u(x - 3)]) if x > 2 else W) - N
                t10 = (np.int64(plane[_u(y - 3), _u(x)]) if y > 2 else NN) - N
                t11 = (np.int64(plane[_u(y - 2), _u(x + 2)]) if y > 1 and x + 2 < cols else NE) - N
            if v2 and W == N and N == NW and N == NE:
                # run mode (raster-wpc-v2): a flat neighbourhood asks "same as W?" first;
                # a pixel that is records zero errors and leaves the filter and the bias
                # as they are (a miss is coded as any other pixel)
                i1 = _RUN + hit_w
                i2 = _RUN + 2 + (1 if (t4 | t5 | t7 | t8) == 0 else 0)
                want = 0
                if not decode:
                    want = 1 if np.int64(plane[_u(y), _u(x)]) == W else 0
                bit, low, rng, code = _decide(low, rng, code, _model_p0(probs, i1, i2, lean), want, decode)
                while rng < _TOP:
                    low, rng, cache, csize, pos, code = _renormalize(low, rng, cache, csize, pos, code, buf, decode)
                _model_update(probs, i1, i2, bit, lean)
                if bit:
                    if decode:
                        plane[_u(y), _u(x)] = W
                    terr[_u(cur + x)] = 0
                    for i in range(N_PRED):
                        perr[_u(cur + x), i] = 0
                    hit_w = 1
                    continue
            hit_w = 0
            pN = prv + x
            pNE = pN + 1 if x + 1 < cols else pN
            pNW = pN - 1 if x > 0 else pN
            teW = terr[_u(cur + x - 1)] if x > 0 else 0
            teN = terr[_u(pN)]
            teNW = terr[_u(pNW)]
            teNE = terr[_u(pNE)]
            Ws = W << EXTRA
            Ns = N << EXTRA
            NEs = NE << EXTRA
            NWs = NW << EXTRA
            sumWN = teN + teW
            s0 = Ws + NEs - Ns
            s1 = Ns - (((sumWN + teNE) * _P1) >> 5)
            s2 = Ws - (((sumWN + teNW) * _P2) >> 5)
            s3 = Ns - ((teNW * _P3A + teN * _P3B + teNE * _P3C) >> 5)
            s4 = Ws + Ns - NWs
            s5 = (Ns + NEs) >> 1
            s6 = (Ws + Ns) >> 1
            # normalized LMS over 12 causal neighbours, relative to N
            t0 = W - N
            t1 = NW - N
            t2 = NE - N
            t3 = NN - N
            lacc = w0 * t0 + w1 * t1 + w2 * t2 + w3 * t3 + w4 * t4 + w5 * t5 + w6 * t6 + w7 * t7
            if not lean:  # v3's filter has the first 8 taps
                lacc += w8 * t8 + w9 * t9 + w10 * t10 + w11 * t11
            # v1's (lacc << EXTRA) >> LMS_BITS without the shift left, which v3's weights could overflow
            s7 = min(max(Ns + (lacc >> (LMS_BITS - EXTRA)), 0), maxs)  # a runaway filter stays in range

            s8 = 0
            q8 = 0
            if has_prev:
                P = np.int64(prev[_u(y), _u(x)])
                PW = np.int64(prev[_u(y), _u(x - 1)]) if x > 0 else P
                PN = np.int64(prev[_u(y - 1), _u(x)]) if y > 0 else P
                s8 = (P << EXTRA) + (((W - PW) + (N - PN)) << (EXTRA - 1))
                q8 = _weight(_near_errors(perr, pN, pNE, pNW, 8), _WMAX8)
            # each sub-prediction's weight (scalars: a weights array made numba store them
            # one by one and reload them as a vector, a store-forwarding stall)
            q0 = _weight(_near_errors(perr, pN, pNE, pNW, 0), _WMAX0)
            q1 = _weight(_near_errors(perr, pN, pNE, pNW, 1), _WMAX1)
            q2 = _weight(_near_errors(perr, pN, pNE, pNW, 2), _WMAX1)
            q3 = _weight(_near_errors(perr, pN, pNE, pNW, 3), _WMAX1)
            q4 = _weight(_near_errors(perr, pN, pNE, pNW, 4), _WMAX1)
            q5 = 0 if lean else _weight(_near_errors(perr, pN, pNE, pNW, 5), _WMAX1)  # v3: no plain means
            q6 = 0 if lean else _weight(_near_errors(perr, pN, pNE, pNW, 6), _WMAX1)
            q7 = _weight(_near_errors(perr, pN, pNE, pNW, 7), _WMAX7)
            lw = _floor_log2(q0 + q1 + q2 + q3 + q4 + q5 + q6 + q7 + q8) - 4
            if lw < 0:
                lw = 0
            q0 >>= lw
            q1 >>= lw
            q2 >>= lw
            q3 >>= lw
            q4 >>= lw
            q5 >>= lw
            q6 >>= lw
            q7 >>= lw
            q8 >>= lw
            wsum = q0 + q1 + q2 + q3 + q4 + q5 + q6 + q7 + q8
            acc = ((wsum >> 1) - 1 + s0 * q0 + s1 * q1 + s2 * q2 + s3 * q3 + s4 * q4 + s5 * q5 + s6 * q6
                   + s7 * q7 + s8 * q8)
            pred = (acc * _DIV[_u(wsum - 1)]) >> 24
            if ((teN ^ teW) | (teN ^ teNW)) <= 0:
                lo = min(Ws, min(Ns, NEs))
                hi = max(Ws, max(Ns, NEs))
                pred = min(max(pred, lo), hi)
            # contexts
            act = (abs(teW) + abs(teN) + abs(teNE) + abs(teNW)) >> EXTRA
            grad = abs(W - NW) + abs(N - NW) + abs(N - NE)
            a = _bucket(act, N_ACT)
            g = 0 if grad == 0 else (1 if grad <= act else (2 if grad <= 4 * act + 4 else 3))
            ctx = a * N_GRAD + g
            texture = (1 if teW > 0 else 0) | (2 if teN > 0 else 0) | (4 if teNW > 0 else 0) | (8 if teNE > 0 else 0)
            bctx = a * 16 + texture
            cnt = bias_cnt[_u(bctx)]
            corr = 0
            if cnt > 0:
                bs = bias_sum[_u(bctx)]
                corr = (bs * _RECIP[_u(cnt)] + (1 << 15)) >> 16
            predc = pred + corr
            pv = (predc + (1 << (EXTRA - 1))) >> EXTRA
            if pv < 0:
                pv = 0
            elif pv > maxv:
                pv = maxv
            base = ctx * SLOTS
            base2 = (N_CTX + (a >> 1) * N_LEVEL + (N >> lshift)) * SLOTS
            # The residual as decisions: its class c (0 for zero, else 1 + the exponent of
            # |r|), asked from the context's expected class up or down; the sign; two
            # modelled mantissa bits; the rest equiprobable. One coding site (a small state
            # machine) keeps the coder's state in registers.
            r = 0
            c = 0
            mant = 0
            if not decode:
                r = np.int64(plane[_u(y), _u(x)]) - pv
                if r != 0:
                    m = r if r > 0 else -r
                    c = _floor_log2(m) + 1
                    mant = m - (1 << (c - 1))
            sctx = 0 if corr == 0 else (1 if corr > 0 else 2)
            k0 = _floor_log2((act >> 1) + 1)  # expected class
            if k0 > MAX_CLASS - 1:
                k0 = MAX_CLASS - 1
            neg = 0
            hb = 0
            e = 0
            cc = k0 - 1 if k0 > 0 else 0  # first question: c > k0 - 1, that is c >= k0
            phase = _PH_UP
            while phase != _PH_DONE:
                if phase == _PH_UP:
                    slot = _S_UP + cc
                    want = 1 if c > cc else 0
                elif phase == _PH_DOWN:
                    slot = _S_DOWN + cc
                    want = 1 if c < cc else 0
                elif phase == _PH_SIGN:
                    slot = _S_SIGN + sctx
                    want = 1 if r < 0 else 0
                elif phase == _PH_MANT1:
                    slot = _S_MANT + 3 * e
                    want = (mant >> (e - 1)) & 1
                else:  # _PH_MANT2
                    slot = _S_MANT + 3 * e + 1 + hb
                    want = (mant >> (e - 2)) & 1
                # -- one adaptive binary decision: the mean of four estimates (v3: two) --
                i1 = base + slot
                i2 = base2 + slot
                bit, low, rng, code = _decide(low, rng, code, _model_p0(probs, i1, i2, lean), want, decode)
                while rng < _TOP:
                    low, rng, cache, csize, pos, code = _renormalize(low, rng, cache, csize, pos, code, buf, decode)
                _model_update(probs, i1, i2, bit, lean)
                # -- what the decision means --
                class_known = False
                if phase == _PH_UP:
                    if bit:
                        cc += 1
                        if cc >= MAX_CLASS:
                            return -2  # only damage gets here: no residual is that large
                    elif k0 > 0 and cc == k0 - 1:
                        if cc > 0:
                            phase = _PH_DOWN  # c < k0: walk down
                        else:
                            class_known = True
                    else:
                        class_known = True
                elif phase == _PH_DOWN:
                    if bit:
                        cc -= 1
                        if cc == 0:
                            class_known = True
                    else:
                        class_known = True
                elif phase == _PH_SIGN:
                    neg = bit
                    phase = _PH_MANT1 if e > 0 else _PH_DONE
                elif phase == _PH_MANT1 and e > 1 and not v2:
                    hb = bit
                    phase = _PH_MANT2
                else:
                    # the modelled top bit (v2), or the top two (v1), then the bits below
                    # them equiprobable, most significant first
                    if phase == _PH_MANT1:
                        hb = bit
                        top = hb << (e - 1)
                        n = e - 1
                    else:
                        top = (hb << (e - 1)) | (bit << (e - 2))
                        n = e - 2
                    rest = 0
                    for j in range(n - 1, -1, -1):
                        d, low, rng, code = _equiprobable(low, rng, code, (mant >> j) & 1, decode)
                        rest = (rest << 1) | d
                        if rng < _TOP:
                            low, rng, cache, csize, pos, code = _renormalize(
                                low, rng, cache, csize, pos, code, buf, decode)
                    mant = top | rest
                    phase = _PH_DONE
                if class_known:
                    c = cc
                    e = c - 1
                    if c == 0:
                        phase = _PH_DONE
                    elif v2:
                        # v2: the sign is equiprobable (modelling it gained 0.02%)
                        neg, low, rng, code = _equiprobable(low, rng, code, 1 if r < 0 else 0, decode)
                        if rng < _TOP:
                            low, rng, cache, csize, pos, code = _renormalize(
                                low, rng, cache, csize, pos, code, buf, decode)
                        phase = _PH_MANT1 if e > 0 else _PH_DONE
                    else:
                        phase = _PH_SIGN
            if decode and c > 0:
                m = (1 << e) + mant
                r = -m if neg else m
            if decode:
                v = pv + r
                if v < 0 or v > maxv:
                    return -2
                plane[_u(y), _u(x)] = v
            val = (pv + r) << EXTRA
            lerr = (val - s7) >> EXTRA
            if lerr != 0 and lean:
                # v3: 8 taps, the division by the energy as a product with an 8-bit
                # reciprocal, and the weights clamped every LMS_CLAMP_EVERY pixels (above)
                energy = (16 + t0 * t0 + t1 * t1 + t2 * t2 + t3 * t3 + t4 * t4 + t5 * t5 + t6 * t6 + t7 * t7)
                le = _floor_log2(energy)
                sh = le - 7 if le > 7 else 0
                gain = ((lerr << LMS_BITS) * LMS_MU * _INV_ENERGY[_u(energy >> sh)]) >> (24 + sh)
                w0 += (gain * t0) >> LMS_STEP
                w1 += (gain * t1) >> LMS_STEP
                w2 += (gain * t2) >> LMS_STEP
                w3 += (gain * t3) >> LMS_STEP
                w4 += (gain * t4) >> LMS_STEP
                w5 += (gain * t5) >> LMS_STEP
                w6 += (gain * t6) >> LMS_STEP
                w7 += (gain * t7) >> LMS_STEP
            elif lerr != 0:  # else the gain is 0 and every weight (inside +-LMS_WMAX) stays as it is
                energy = (16 + t0 * t0 + t1 * t1 + t2 * t2 + t3 * t3 + t4 * t4 + t5 * t5
                          + t6 * t6 + t7 * t7 + t8 * t8 + t9 * t9 + t10 * t10 + t11 * t11)
                gain = ((lerr << LMS_BITS) * LMS_MU) // energy
                w0 = min(max(w0 + ((gain * t0) >> LMS_STEP), -LMS_WMAX), LMS_WMAX)
                w1 = min(max(w1 + ((gain * t1) >> LMS_STEP), -LMS_WMAX), LMS_WMAX)
                w2 = min(max(w2 + ((gain * t2) >> LMS_STEP), -LMS_WMAX), LMS_WMAX)
                w3 = min(max(w3 + ((gain * t3) >> LMS_STEP), -LMS_WMAX), LMS_WMAX)
                w4 = min(max(w4 + ((gain * t4) >> LMS_STEP), -LMS_WMAX), LMS_WMAX)
                w5 = min(max(w5 + ((gain * t5) >> LMS_STEP), -LMS_WMAX), LMS_WMAX)
                w6 = min(max(w6 + ((gain * t6) >> LMS_STEP), -LMS_WMAX), LMS_WMAX)
                w7 = min(max(w7 + ((gain * t7) >> LMS_STEP), -LMS_WMAX), LMS_WMAX)
                w8 = min(max(w8 + ((gain * t8) >> LMS_STEP), -LMS_WMAX), LMS_WMAX)
                w9 = min(max(w9 + ((gain * t9) >> LMS_STEP), -LMS_WMAX), LMS_WMAX)
                w10 = min(max(w10 + ((gain * t10) >> LMS_STEP), -LMS_WMAX), LMS_WMAX)
                w11 = min(max(w11 + ((gain * t11) >> LMS_STEP), -LMS_WMAX), LMS_WMAX)
            # updates
            terr[_u(cur + x)] = pred - val
            _record_error(perr, cur + x, prv + x + 1, 0, s0, val)
            _record_error(perr, cur + x, prv + x + 1, 1, s1, val)
            _record_error(perr, cur + x, prv + x + 1, 2, s2, val)
            _record_error(perr, cur + x, prv + x + 1, 3, s3, val)
            _record_error(perr, cur + x, prv + x + 1, 4, s4, val)
            if not lean:
                _record_error(perr, cur + x, prv + x + 1, 5, s5, val)
                _record_error(perr, cur + x, prv + x + 1, 6, s6, val)
            _record_error(perr, cur + x, prv + x + 1, 7, s7, val)
            if has_prev:
                _record_error(perr, cur + x, prv + x + 1, 8, s8, val)
            d = val - pred
            lim = ((abs(teW) + abs(teN) + abs(teNE) + abs(teNW)) >> 2) + 8
            bias_sum[_u(bctx)] += min(max(d, -lim), lim)
            bias_cnt[_u(bctx)] += 1
            if bias_cnt[_u(bctx)] >= BIAS_LIMIT:
                bias_sum[_u(bctx)] >>= 1
                bias_cnt[_u(bctx)] >>= 1
    if decode:
        return 0
    return _finish(low, cache, csize, pos, buf)


# The direction as a type, not a value: numba compiles ``_kernel`` once for each (the
# tuple's length is a constant of its type), so neither copy branches on it per pixel:
# decoding 6% faster on the train planes. A constant flag through an inlined wrapper did the
# same but took twice as long to compile; this costs one more compile of the kernel (~6 s,
# once per machine: the cache keeps both).
_ENCODE = ()
_DECODE = (0,)
# The model the same way: v3's copies leave out v1's and v2's work, and v1 and v2 share theirs.
_FULL = ()
_LEAN = (0,)


def code_plane(plane, prev, has_prev, maxv, decode, buf, version=1):
    """Encode ``plane`` into ``buf`` (returns the byte count, or -1 if ``buf`` was too
    small) or decode ``buf`` into ``plane`` (returns 0, or -2 if the data decodes to a
    value outside 0..maxv: damage). ``version``: raster-wpc-v1's model, v2's (run mode,
    lean residual) or v3's (v2's with a lighter predictor and probability model)."""
    return _kernel(plane, prev, has_prev, maxv, _DECODE if decode else _ENCODE, buf, version == 2,
                   _LEAN if version == 3 else _FULL)
