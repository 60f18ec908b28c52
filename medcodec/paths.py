"""The two coding paths for one image plane (one frame, one sample).

GlobalPathCoder codes the global modality (values >> k) first, on its own.
ClassicalLocalPathCoder codes the local modality (values & (2**k - 1)) given the
whole decoded global modality: for each pixel the global value fixes a 2**k-wide
interval, a predictor that sees decoded neighbours and the global values of past
and future neighbours (the visual prompt) places a residual distribution over it.

Both walk the same interlaced scan (hierarchy.py). Predictions are integer linear
combinations with weights fitted in the encoder (minimizing absolute residuals, see
``_fit``) and transmitted as integers, so the decoder reproduces every prediction
exactly; probabilities come from integer count tables (entropy.py). Nothing the decoder computes depends on
floating-point rounding.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .coders import register
from . import contextkernel as ck
from . import passkernel as pk
from . import ctxtree, hierarchy
from .entropy import AdaptiveTables, Decoder, Encoder, RowModel, geometric_prior
from .errors import CorruptRecordError

# Fixed-point scale of predictor weights (part of the bitstream definition; the compiled
# prediction in ``passkernel`` holds the number).
WEIGHT_BITS = pk.WEIGHT_BITS
_HALF = 1 << (WEIGHT_BITS - 1)
_WMAX = (1 << 15) - 1
# Passes smaller than this use the default (average) predictor and no side information.
MIN_FIT_PIXELS = 192
# Passes at least this large get one predictor per activity class.
MIN_CLASS_PIXELS = 6144
MAX_CLASSES = 3
# Activity thresholds (bucket b holds activity in [T[b-1], T[b])): roughly geometric.
_ACT_THRESHOLDS = np.array(
    [1, 2, 3, 4, 6, 8, 11, 15, 20, 27, 36, 48, 64, 85, 113, 150, 200, 265, 350, 465, 620, 820, 1100, 1500, 2000, 2700,
     3600, 4800, 6400, 8500, 11300, 15000, 20000, 26500, 35000, 46500, 62000],
    dtype=np.int64,
)
N_BUCKETS = _ACT_THRESHOLDS.size + 1
# Texture: how many of the nearest neighbours lie above the prediction (0..4).
N_TEXTURES = hierarchy.N_NEAREST + 1
N_CONTEXTS = hierarchy.PASS_KINDS * N_BUCKETS * N_TEXTURES
# Residual tokens: |z| < 16 direct, larger as (exponent, next bit) plus raw low bits.
_DIRECT = 16
_NO_OUTER = np.zeros((0, 1), dtype=np.int64)
_POW2 = np.array([1 << i for i in range(40)], dtype=np.int64)


@dataclass(frozen=True, kw_only=True)
class PlaneInfo:
    """What a path coder needs to know about the plane besides the stream."""

    rows: int
    cols: int
    bits: int  # width of the values of this path (global: bits - k)
    k: int  # number of local planes
    preset: str


class LocalPathModel(Protocol):
    """Interface of a local-path model (classical here; the transformer path implements it too)."""

    model_id: str

    def encode(self, local: np.ndarray, global_part: np.ndarray, info: PlaneInfo, prev: np.ndarray | None) -> bytes: ...

    def decode(self, data: bytes, global_part: np.ndarray, info: PlaneInfo, prev: np.ndarray | None) -> np.ndarray: ...


# --- side information: zigzag varints -------------------------------------------------


class IntWriter:
    def __init__(self) -> None:
        self.buf = bytearray()

    def put(self, value: int) -> None:
        z = (value << 1) ^ (value >> 63)
        while True:
            b = z & 0x7F
            z >>= 7
            if z:
                self.buf.append(b | 0x80)
            else:
                self.buf.append(b)
                return


class IntReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def get(self) -> int:
        z = shift = 0
        while True:
            if self.at >= len(self.data):
                raise CorruptRecordError("side information ends early")
            b = self.data[self.at]
            self.at += 1
            z |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if z >> 64:  # writers put 64-bit integers: anything wider is damage (and no int64)
                    raise CorruptRecordError("varint in side information exceeds 64 bits")
                return (z >> 1) ^ -(z & 1)
            if shift > 70:
                raise CorruptRecordError("bad varint in side information")


def _join(side: IntWriter, payload: bytes) -> bytes:
    head = IntWriter()
    head.put(len(side.buf))
    return bytes(head.buf) + bytes(side.buf) + payload


def _split(data: bytes) -> tuple[IntReader, bytes]:
    r = IntReader(data)
    n = r.get()
    if n < 0 or r.at + n > len(data):
        raise CorruptRecordError("side information length exceeds the stream")
    side = IntReader(data[r.at : r.at + n])
    return side, data[r.at + n :]


# --- tokens ----------------------------------------------------------------------------


def token_alphabet(bits: int, mantissa: int = 1) -> int:
    """Number of residual tokens for values of ``bits`` bits (|residual| < 2**bits)."""
    zmax = (1 << (bits + 1)) - 1
    return int(tokenize(np.array([zmax], dtype=np.int64), mantissa)[0][0]) + 1


# Arrays of at least this many elements are tokenized by the compiled rule (the same
# tokens; 3.6 M values in 13 ms against numpy's 172 ms), smaller ones by numpy.
_COMPILED_TOKENIZE = 4096


def tokenize(z: np.ndarray, mantissa: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-negative ints -> (token, raw low bits, number of raw bits).

    z < 16 is its own token; larger z becomes (exponent, the ``mantissa`` bits after the
    leading one) and the remaining low bits travel raw.
    """
    z = np.asarray(z, dtype=np.int64)
    if z.size >= _COMPILED_TOKENIZE and z.ndim == 1:
        from . import learnkernel as lk  # numba: loaded on first use (encoders)

        token, extra, nbits = np.empty_like(z), np.empty_like(z), np.empty_like(z)
        lk.tokenize_into(np.ascontiguousarray(z), mantissa, _DIRECT, token, extra, nbits)
        return token, extra, nbits
    # floor(log2 z), exact below 2**53 (frexp of an exactly converted integer); -1 for 0.
    n = np.frexp(z.astype(np.float64))[1].astype(np.int64) - 1
    big = z >= _DIRECT
    nb = np.where(big, n - mantissa, 0)
    low = z >> nb  # the leading one and the mantissa bits (z itself where nb is 0)
    token = np.where(big, _DIRECT - (4 << mantissa) + (n << mantissa) + (low & ((1 << mantissa) - 1)), z)
    return token, z - (low << nb), nb


def raw_bits_of(token: np.ndarray, mantissa: int = 1) -> np.ndarray:
    big = token >= _DIRECT
    return np.where(big, (token - _DIRECT) // (1 << mantissa) + 4 - mantissa, 0)


def detokenize(token: np.ndarray, extra: np.ndarray, mantissa: int = 1) -> np.ndarray:
    big = token >= _DIRECT
    n = (token - _DIRECT) // (1 << mantissa) + 4
    top = (token - _DIRECT) % (1 << mantissa)
    nb = np.maximum(n - mantissa, 0)
    z = (_POW2[np.clip(n, 0, 39)]) | (top << nb) | extra
    return np.where(big, z, token)


def _token_bounds(bits: int, mantissa: int) -> tuple[np.ndarray, np.ndarray]:
    """The interval [lo, hi) of z values each token stands for."""
    t = np.arange(token_alphabet(bits, mantissa), dtype=np.int64)
    n = (t - _DIRECT) // (1 << mantissa) + 4
    width = 1 << np.clip(n - mantissa, 0, 62)
    lo = np.where(t < _DIRECT, t, (1 << np.clip(n, 0, 62)) + ((t - _DIRECT) % (1 << mantissa)) * width)
    hi = np.where(t < _DIRECT, t + 1, lo + width)
    return lo, hi


@functools.lru_cache(maxsize=64)
def token_lookup(bits: int, mantissa: int) -> tuple[np.ndarray, np.ndarray]:
    """(smallest z, raw bits) of every token: a token and its raw bits ``extra`` stand for
    ``z = lowest[token] + extra`` (``detokenize`` by two lookups)."""
    lo, hi = _token_bounds(bits, mantissa)
    raw = np.frexp((hi - lo).astype(np.float64))[1].astype(np.int64) - 1  # widths are powers of two
    lo.setflags(write=False)
    raw.setflags(write=False)
    return lo, raw


def zigzag(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, dtype=np.int64)
    return (e << 1) ^ (e >> 63)  # 2e for e >= 0, -2e - 1 below


def unzigzag(z: np.ndarray) -> np.ndarray:
    return (z >> 1) ^ -(z & 1)  # z / 2 for even z, -(z + 1) / 2 for odd


# --- priors ------------------------------------------------------------------------------
# Initial counts: a geometric law whose scale follows the context's activity, so small
# images do not pay to learn every table from scratch. Part of the bitstream definition.
PRIOR_SLOPE_NUM, PRIOR_SLOPE_DEN = 1, 3  # expected |residual| ~ activity * 1/3
PRIOR_TOTAL = 384


def _bucket_scales() -> list[int]:
    t = [0] + [int(v) for v in _ACT_THRESHOLDS] + [int(_ACT_THRESHOLDS[-1]) * 2]
    return [max(2, ((t[b] + t[b + 1]) // 2) * PRIOR_SLOPE_NUM // PRIOR_SLOPE_DEN) for b in range(N_BUCKETS)]


@functools.lru_cache(maxsize=64)
def _token_scale_rows(bits: int, mantissa: int) -> np.ndarray:
    """One geometric prior row per activity bucket over the residual tokens."""
    lo, hi = _token_bounds(bits, mantissa)
    # z = zigzag(residual) ~ 2|residual|: twice the scale.
    return geometric_prior([2 * s for s in _bucket_scales()], lo, hi, total=PRIOR_TOTAL)


@functools.lru_cache(maxsize=64)
def _token_prior(bits: int, mantissa: int = 1) -> np.ndarray:
    row = _token_scale_rows(bits, mantissa)
    return np.tile(np.repeat(row, N_TEXTURES, axis=0), (hierarchy.PASS_KINDS, 1))


@functools.lru_cache(maxsize=64)
def _residual_prior(span: int) -> np.ndarray:
    r = np.abs(np.arange(-span, span + 1, dtype=np.int64))
    row = geometric_prior(_bucket_scales(), r, r + 1, total=PRIOR_TOTAL)
    return np.tile(np.repeat(row, N_TEXTURES, axis=0), (hierarchy.PASS_KINDS, 1))


# --- the shared predictor machine -------------------------------------------------------


def _activity(near: np.ndarray, emap: np.ndarray, p: hierarchy.Pass) -> np.ndarray:
    """Activity bucket from ``near``, the values of the N_NEAREST nearest neighbours (rows)."""
    spread = near.max(axis=0) - near.min(axis=0)
    noise = emap[p.inner[: hierarchy.N_NEAREST]].sum(axis=0) >> 2
    return np.searchsorted(_ACT_THRESHOLDS, 2 * spread + noise, side="right")


def activity_bucket(activity: np.ndarray) -> np.ndarray:
    """Bucket (0..N_BUCKETS-1) of non-negative activity values; the priors' row index."""
    return np.searchsorted(_ACT_THRESHOLDS, activity, side="right")


def _default_weights(n_features: int) -> np.ndarray:
    w = np.zeros(n_features, dtype=np.int64)
    w[: hierarchy.N_NEAREST] = (1 << WEIGHT_BITS) // hierarchy.N_NEAREST
    return w


# Rows used to fit one predictor; larger passes are subsampled with a fixed stride.
# `fast` fits its few weights (inner neighbours only, one class) on fewer rows. `max`'s
# chained fits (L1_CHAINED_ITERATIONS) need no more than 2**16: train, 35
# interlaced-tree-v2 planes, 9,373,848 B in 7.0 s against 9,374,147 B in 8.2 s with 2**17
# (2**15: 9,381,688 B in 6.6 s).
FIT_ROWS = {"max": 1 << 16, "fast": 1 << 14}
# The fit minimizes absolute residuals (iteratively reweighted least squares): residuals
# are close to Laplacian and their code length grows like log |r|, so squared error
# lets a few large residuals (edges) pull the weights away from what most pixels need.
# Measured on the held-out benchmark images (interlaced-tree-v2): MR2_UNCI -4.5%,
# RG3_UNCI -4.1%, 693_UNCI -46% (a decoded lossy JPEG 2000 image: smooth, with exact
# linear structure that the L1 fit finds and least squares misses). Encoder only: the
# weights are transmitted. `fast` stops after 3 reweightings, most of the gain (8 made
# its v1 encode of MR2_UNCI about a third slower).
L1_ITERATIONS = {"max": 8, "fast": 3}
L1_FLOOR = 0.5  # residuals below this count as this (keeps the weights bounded)
# `max`, interlaced passes: a pass's class fits start from the weights the same class of
# the previous pass of its kind (one level coarser) ended with, so the reweighting goes on
# across levels instead of restarting from least squares. The fits had not converged:
# train, 35 interlaced-tree-v2 planes (one thread), 8 solves chained: -0.67% bytes
# (9,374,147 against 9,437,683 B) in 7.9 s against 8.5 s; 4: -0.09%; 12: -0.85% in 9.1 s.
L1_CHAINED_ITERATIONS = 8


# The first FIT_COARSE_SOLVES solves of a fit (all but the last, for fits of fewer) use
# every FIT_COARSE-th of its rows; each iterate is still scored, and reweighted, on all of
# them. The early solves only steer the reweighting. `max` (one thread, separate
# processes, 2 rounds): train 8,542,106 -> 8,541,292 B, 25.0 -> 23.8 s; held-out
# 2,759,150 -> 2,757,795 B, 15.4 -> 13.8-14.6 s (the fits were a fifth of `max`'s
# encode time). Fits with fewer than FIT_COARSE_MIN_ROWS rows per feature in the subset
# solve on all rows throughout. `fast`'s fits are too small: its records are unchanged.
FIT_COARSE = 4
FIT_COARSE_SOLVES = 3
FIT_COARSE_MIN_ROWS = 16
# Measured and not kept (2026-12-07; raster-wp-v4's fits of `max` on 693_UNCR, MR2_UNCI,
# US1_UNCI and RG3_UNCR, 222-253 of them, in-process, best of 5, one thread):
# * The features, products and residuals in float32 (the features are integers below 2**22,
#   exact in it; the Gram matrix and right-hand side solved in float64): the fits took
#   0.61-0.67x the time and `max`'s encode 0.86-0.97x, but the weights differ in 98 of 222
#   fits and the records grow: train +0.036%, held-out +0.027%, train J2K_pixelrep_mismatch
#   (a CT, decoded lossy JPEG 2000, whose exact linear structure the L1 fit finds) +0.86%.
#   Every variant kept that loss: the first round's fits alone in float32 +0.82%, the
#   residuals or the last solve in float64 +1.1% and +1.2%, a ridge of 1e-7 to 1e-4 +1.2%
#   to +4.0%. The issue's targets keep `max`'s size; float32 buys a tenth of its encode.
# * The weighted rows in blocks of 1,024-8,192 columns, multiplied and summed into the Gram
#   matrix block by block (to stay in cache): the same weights, 0.95-1.005x the time. The
#   Gram matrix as (x * w) @ x.T, a general product without the square roots (OpenBLAS's
#   syrk is slow at 28 rows: 28 x 16,384 in 608 us against a general product's 546): the
#   same weights, 1.125x the time.


def _fit(x: np.ndarray, y: np.ndarray, iterations: int, rows: int = FIT_ROWS["max"],
         init: np.ndarray | None = None) -> np.ndarray:
    """Fixed-point weights for features ``x`` (F, N) that keep residuals small in the L1
    sense (encoder only; the integers are transmitted), from at most about ``rows`` of
    the N columns taken at a fixed stride.

    Starts from least squares and reweights by 1 / max(|residual|, L1_FLOOR); every
    iterate is scored by sum(log2(1 + |residual|)), a proxy of the coded size, and the
    best is kept. The first solves may use a subset of the rows (FIT_COARSE).
    With ``init`` (fixed-point weights fitted before, e.g. on similar pixels) the
    reweighting starts from its residuals instead, ``init`` is the first candidate, and
    ``iterations`` weighted solves follow (no least-squares start).
    """
    step = max(1, x.shape[1] // rows)
    xf = np.asarray(x[:, ::step], dtype=np.float64)  # no copy of float64 columns taken whole
    yf = np.asarray(y[::step], dtype=np.float64)
    eye = np.eye(xf.shape[0])
    row_w = np.ones_like(yf)
    best_w, best_cost = None, np.inf
    xw, root, resid = np.empty_like(xf), np.empty_like(yf), np.empty_like(yf)  # reused: no new pages per step
    # np.dot where ``@`` gives the same numbers: numpy's matmul holds the GIL through its
    # BLAS call, np.dot releases it, so two worker threads fit at once (two threads of
    # ``xw @ xw.T`` at 20 x 65,536 ran at 1.03x one thread's rate, of np.dot at 1.91x).
    # On a strided ``xf`` matmul takes its own loop, whose sums differ from BLAS's in the
    # last bits: those products stay ``@``, so the fits are the same to the bit.
    product = np.dot if xf.flags.c_contiguous else np.matmul
    weighted = np.dot if xw.flags.c_contiguous else np.matmul  # a new array: C order for any C-ordered x
    if init is not None:
        best_w = np.asarray(init, dtype=np.float64) / (1 << WEIGHT_BITS)
        np.abs(np.subtract(yf, product(best_w, xf), out=resid), out=resid)
        best_cost = float(np.log2(np.add(resid, 1.0, out=row_w), out=row_w).sum())
        np.divide(1.0, np.maximum(resid, L1_FLOOR, out=row_w), out=row_w)
    solves = iterations + (init is None)
    coarse = min(FIT_COARSE_SOLVES, solves - 1) if yf.size // FIT_COARSE >= FIT_COARSE_MIN_ROWS * xf.shape[0] else 0
    if coarse:
        # The coarse rows, copied once: each coarse solve read them from ``xf`` with a
        # stride, every cache line of it for a quarter of its numbers (the same products).
        xf_c, yf_c = np.ascontiguousarray(xf[:, ::FIT_COARSE]), np.ascontiguousarray(yf[::FIT_COARSE])
        xw_c, root_c = np.empty_like(xf_c), np.empty_like(yf_c)
    for solve in range(solves):
        if solve < coarse:
            np.sqrt(row_w[::FIT_COARSE], out=root_c)
            np.multiply(xf_c, root_c, out=xw_c)
            gram = np.dot(xw_c, xw_c.T)
            rhs = np.dot(xw_c, np.multiply(yf_c, root_c, out=root_c))
        else:
            np.sqrt(row_w, out=root)
            np.multiply(xf, root, out=xw)
            gram = weighted(xw, xw.T)  # one product with its own transpose: BLAS computes half (syrk)
            rhs = weighted(xw, np.multiply(yf, root, out=root))
        ridge = 1e-6 * (np.trace(gram) / gram.shape[0] + 1.0)
        try:
            w = np.linalg.solve(gram + ridge * eye, rhs)
        except np.linalg.LinAlgError:
            break
        np.abs(np.subtract(yf, product(w, xf), out=resid), out=resid)
        cost = float(np.log2(np.add(resid, 1.0, out=row_w), out=row_w).sum())
        if cost < best_cost:
            best_w, best_cost = w, cost
        np.divide(1.0, np.maximum(resid, L1_FLOOR, out=row_w), out=row_w)
    if best_w is None:
        return np.zeros(xf.shape[0], dtype=np.int64)
    return np.clip(np.rint(best_w * (1 << WEIGHT_BITS)), -_WMAX, _WMAX).astype(np.int64)


class _Predictor:
    """Per-pass integer linear prediction with optional classes.

    Features and target are taken relative to ``ref`` (the mean of the nearest known
    neighbours), so the weights need not sum to one and the image's DC level does not
    turn weight rounding into bias. Pixels are split into classes by an integer key
    the decoder can compute too. The encoder fits weights per class and writes classes
    and weights to ``side``; the decoder reads the same integers back. Both evaluate
    ``ref + ((x - ref) @ w + half) >> WEIGHT_BITS`` in exact integer arithmetic.
    """

    def __init__(self, preset: str, max_classes: int = MAX_CLASSES) -> None:
        self.fast = preset == "fast"
        self.max_classes = max_classes
        self.l1_iterations = L1_ITERATIONS["fast" if self.fast else "max"]
        self.fit_rows = FIT_ROWS["fast" if self.fast else "max"]
        self._ended: dict = {}  # `max`: each pass kind's last class weights (L1_CHAINED_ITERATIONS)

    def _classes_for(self, n: int) -> int:
        if self.fast or n < MIN_CLASS_PIXELS:
            return 1
        return min(self.max_classes, max(1, n // (MIN_CLASS_PIXELS // MAX_CLASSES)))

    def choose(self, x, ref: np.ndarray, y: np.ndarray, key: np.ndarray, side: IntWriter) -> np.ndarray:
        """Prediction for features ``x`` (F, N): a matrix, or a pass's ``PassFeatures``
        (gathered where needed); fits and writes the weights."""
        x = _as_features(x)
        f, n = x.shape
        if n < MIN_FIT_PIXELS:
            return x.predict(ref, _default_weights(f)[None], np.zeros(n, dtype=np.int64))
        n_cls = self._classes_for(n)
        bounds = self._class_bounds(key, n_cls)
        side.put(n_cls)
        for b in bounds:
            side.put(int(b))
        cls = np.searchsorted(bounds, key, side="right")
        weights = np.empty((n_cls, f), dtype=np.int64)
        # Fit on at most about fit_rows pixels of the pass, taken at a fixed stride; each
        # class on its own columns, in scan order.
        sample = np.arange(0, n, max(1, n // self.fit_rows))
        in_class = cls[sample]
        order = np.argsort(in_class, kind="stable")
        starts = np.zeros(n_cls + 1, dtype=np.int64)
        np.cumsum(np.bincount(in_class, minlength=n_cls), out=starts[1:])
        blocks = x.blocks(ref, sample, order, starts)
        ys = (y - ref)[sample[order]]
        chain = None if self.fast else getattr(x, "kind", None)  # interlaced passes of `max`
        earlier = self._ended.get(chain) if chain is not None else None
        for c in range(n_cls):
            lo, hi = starts[c], starts[c + 1]
            if hi - lo < f * 4:
                weights[c] = _default_weights(f)
            elif earlier is None:
                weights[c] = _fit(blocks[c], ys[lo:hi], self.l1_iterations, self.fit_rows)
            else:  # the class at the same activity rank, one level coarser
                start = earlier[min(len(earlier) - 1, c * len(earlier) // n_cls)]
                weights[c] = _fit(blocks[c], ys[lo:hi], L1_CHAINED_ITERATIONS, self.fit_rows, init=start)
            for v in weights[c]:
                side.put(int(v))
        if chain is not None:
            self._ended[chain] = weights.copy()
        return x.predict(ref, weights, cls)

    def read(self, x, ref: np.ndarray, key: np.ndarray, side: IntReader) -> np.ndarray:
        """The prediction ``choose`` made, from the weights it wrote to ``side``."""
        x = _as_features(x)
        model = self.read_weights(x.shape[0], x.shape[1], side)
        if model is None:
            return x.predict(ref, _default_weights(x.shape[0])[None], np.zeros(x.shape[1], dtype=np.int64))
        bounds, weights = model
        return x.predict(ref, weights, np.searchsorted(bounds, key, side="right"))

    def read_weights(self, f: int, n: int, side: IntReader) -> tuple[np.ndarray, np.ndarray] | None:
        """(class bounds, weights) that ``choose`` wrote for ``n`` pixels of ``f`` features;
        None where it wrote nothing (fewer than MIN_FIT_PIXELS: the default weights)."""
        if n < MIN_FIT_PIXELS:
            return None
        n_cls = side.get()
        if not 1 <= n_cls <= self.max_classes:
            raise CorruptRecordError(f"predictor class count {n_cls} outside 1..{self.max_classes}")
        bounds = np.array([side.get() for _ in range(n_cls - 1)], dtype=np.int64)
        weights = np.array([[side.get() for _ in range(f)] for _ in range(n_cls)], dtype=np.int64)
        return bounds, weights

    def apply(self, x: np.ndarray, ref: np.ndarray, key: np.ndarray, model: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        """The prediction minus ``ref`` for features ``x`` with ``read_weights``'s model."""
        if model is None:
            return self._apply(x, ref, _default_weights(x.shape[0])[None], np.zeros(x.shape[1], dtype=np.int64))
        bounds, weights = model
        return self._apply(x, ref, weights, np.searchsorted(bounds, key, side="right"))

    @staticmethod
    def _class_bounds(key: np.ndarray, n_cls: int) -> np.ndarray:
        if n_cls == 1:
            return np.zeros(0, dtype=np.int64)
        qs = np.quantile(key, [c / n_cls for c in range(1, n_cls)], method="lower")
        return np.maximum.accumulate(np.asarray(qs, dtype=np.int64)) + 1

    @staticmethod
    def _apply(x: np.ndarray, ref: np.ndarray, weights: np.ndarray, cls: np.ndarray) -> np.ndarray:
        # Exact integer dot products of (x - ref) with the weights, as x @ w - ref * sum(w)
        # (the same integers, one pass less).
        if weights.shape[0] == 1:
            out = weights[0] @ x  # int64 weights: an int64 matrix product for any integer x, exact
            out -= int(weights[0].sum()) * ref
        else:
            out = np.zeros(x.shape[1], dtype=np.int64)
            for wf, row in zip(np.ascontiguousarray(weights.T), x):
                out += np.take(wf, cls) * row
            out -= np.take(weights.sum(axis=1), cls) * ref
        return (out + _HALF) >> WEIGHT_BITS


class _Matrix:
    """Features held as a matrix (F, N), for ``_Predictor``."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.shape = x.shape

    def blocks(self, ref: np.ndarray, sample: np.ndarray, order: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
        """Per class c, the features minus ``ref`` of the columns ``sample[order[starts[c]:
        starts[c + 1]]]`` (float64, C order). No constant feature: flat regions must stay
        exactly predicted."""
        cols = sample[order]
        xs = self.x[:, cols] - ref[cols][None, :]
        return [np.ascontiguousarray(xs[:, lo:hi], dtype=np.float64) for lo, hi in zip(starts[:-1], starts[1:])]

    def predict(self, ref: np.ndarray, weights: np.ndarray, cls: np.ndarray) -> np.ndarray:
        return ref + _Predictor._apply(self.x, ref, weights, cls)


class PassFeatures:
    """The features ``_features`` would build for one interlaced pass, read from the plane
    where they are needed (``passkernel``): the matrix (F, N) is never formed."""

    def __init__(self, flat: np.ndarray, p: hierarchy.Pass, prev_flat: np.ndarray | None, fast: bool) -> None:
        self.flat = flat
        self.has_prev = prev_flat is not None
        self.prev = prev_flat if self.has_prev else flat
        self.kind = p.kind
        self.pos = np.ascontiguousarray(p.pos, dtype=np.int64)
        self.inner = np.ascontiguousarray(p.inner, dtype=np.int64)
        self.outer = _NO_OUTER if fast else np.ascontiguousarray(p.outer, dtype=np.int64)
        n_features = self.inner.shape[0] + self.outer.shape[0] + (pk.N_PREV if self.has_prev else 0)
        self.shape = (n_features, self.pos.size)

    def _args(self) -> tuple:
        return self.flat, self.prev, self.has_prev, self.pos, self.inner, self.outer

    def blocks(self, ref: np.ndarray, sample: np.ndarray, order: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
        """As ``_Matrix.blocks``: the same float64 values, gathered in one compiled pass."""
        f = self.shape[0]
        out = np.empty(f * int(starts[-1]), dtype=np.float64)
        pk.pass_blocks(*self._args(), ref, np.ascontiguousarray(sample, dtype=np.int64),
                       np.ascontiguousarray(order, dtype=np.int64), starts, out)
        return [out[f * lo : f * hi].reshape(f, hi - lo) for lo, hi in zip(starts[:-1], starts[1:])]

    def predict(self, ref: np.ndarray, weights: np.ndarray, cls: np.ndarray) -> np.ndarray:
        """As ``_Matrix.predict``: the same integers (``passkernel.pass_predict``)."""
        out = np.empty(self.shape[1], dtype=np.int64)
        pk.pass_predict(*self._args(), ref, np.ascontiguousarray(weights, dtype=np.int64),
                        np.ascontiguousarray(cls, dtype=np.int64), out)
        return out


def _as_features(x):
    return _Matrix(x) if isinstance(x, np.ndarray) else x


def _pass_base(flat: np.ndarray, emap: np.ndarray, p: hierarchy.Pass, prev_flat: np.ndarray | None):
    """(reference, activity bucket, class key) of the pixels of pass ``p``: ``_reference``,
    ``_activity`` and ``_class_key`` of its nearest neighbours, in one compiled pass."""
    ref, bucket, key = (np.empty(p.size, dtype=np.int64) for _ in range(3))
    pk.pass_base(flat, emap, flat if prev_flat is None else prev_flat, prev_flat is not None,
                 np.ascontiguousarray(p.inner[: hierarchy.N_NEAREST], dtype=np.int64), _ACT_THRESHOLDS, ref, bucket, key)
    return ref, bucket, key


def _context(near: np.ndarray, p: hierarchy.Pass, bucket: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Entropy-model context: pass kind, activity bucket, texture relative to the prediction."""
    above = (near > pred[None, :]).sum(axis=0)
    return (p.kind * N_BUCKETS + bucket) * N_TEXTURES + above


def _reference(near: np.ndarray) -> np.ndarray:
    return near.sum(axis=0) >> 2


def _class_key(values: np.ndarray, prev: np.ndarray | None, p: hierarchy.Pass, bucket: np.ndarray) -> np.ndarray:
    """Activity bucket, or with a previous plane how far the nearest neighbours differ from it."""
    if prev is None:
        return bucket
    nearest = p.inner[: hierarchy.N_NEAREST]
    return np.abs(values[nearest] - prev[nearest]).sum(axis=0)


def _features(values: np.ndarray, p: hierarchy.Pass, prev: np.ndarray | None, fast: bool) -> np.ndarray:
    """Least-squares features (F, N): inner (and outer) neighbours, previous plane.

    The first N_NEAREST rows are the nearest neighbours' values (callers reuse them)."""
    if fast and prev is None:
        return values[p.inner]
    rows = [values[p.inner]]
    if not fast:
        rows.append(values[p.outer])
    if prev is not None:
        rows.append(prev[p.pos][None, :])
        rows.append(prev[p.inner[: hierarchy.N_NEAREST]])
    return np.concatenate(rows, axis=0)


# --- global path -----------------------------------------------------------------------


@register(record_level=True)
class GlobalPathCoder:
    """Exact adaptive context model for the global modality (v1: fixed contexts)."""

    model_id = "interlaced-ls-v1"

    def encode(self, plane: np.ndarray, info: PlaneInfo, prev: np.ndarray | None = None) -> bytes:
        flat = plane.astype(np.int64).ravel()
        enc, side = Encoder(), IntWriter()
        enc.uniform(flat[:1], np.array([info.bits]))
        self._walk(info, prev, flat, enc=enc, side=side)
        return _join(side, enc.finish())

    def decode(self, data: bytes, info: PlaneInfo, prev: np.ndarray | None = None) -> np.ndarray:
        side, payload = _split(data)
        dec = Decoder(payload)
        flat = np.zeros(info.rows * info.cols, dtype=np.int64)
        flat[:1] = dec.uniform(np.array([info.bits]))
        self._walk(info, prev, flat, dec=dec, side=side)
        return flat.reshape(info.rows, info.cols)

    def _walk(self, info: PlaneInfo, prev, flat, *, enc=None, dec=None, side) -> None:
        maxv = (1 << info.bits) - 1
        prev_flat = None if prev is None else prev.astype(np.int64).ravel()
        emap = np.zeros_like(flat)
        tables = AdaptiveTables(N_CONTEXTS, token_alphabet(info.bits), init=_token_prior(info.bits))
        predictor = _Predictor(info.preset)
        for p in hierarchy.iter_passes(info.rows, info.cols):
            x = PassFeatures(flat, p, prev_flat, predictor.fast)
            ref, bucket, key = _pass_base(flat, emap, p, prev_flat)
            near = flat[p.inner[: hierarchy.N_NEAREST]]
            if enc is not None:
                pred = np.clip(predictor.choose(x, ref, flat[p.pos], key, side), 0, maxv)
                ctx = _context(near, p, bucket, pred)
                token, extra, nbits = tokenize(zigzag(flat[p.pos] - pred))
                enc.adaptive(token, ctx, tables)
                enc.uniform(extra, nbits)
            else:
                pred = np.clip(predictor.read(x, ref, key, side), 0, maxv)
                ctx = _context(near, p, bucket, pred)
                token = dec.adaptive(ctx, tables)
                extra = dec.uniform(raw_bits_of(token))
                value = pred + unzigzag(detokenize(token, extra))
                if value.min(initial=0) < 0 or value.max(initial=0) > maxv:
                    raise CorruptRecordError("global path decoded a value outside the stored range")
                flat[p.pos] = value
            emap[p.pos] = np.abs(flat[p.pos] - pred)


@register(record_level=True)
class TreeGlobalPathCoder:
    """v2 global path: the v1 predictors, finer residual tokens, and learned context trees.

    The predictions are those of :class:`GlobalPathCoder`; what changes is how residuals
    are modelled. Tokens keep two bits after the leading one (fewer raw bits), and the
    encoder grows a context tree (:mod:`medcodec.ctxtree`) over per-pixel properties the
    decoder also knows, writes it at the head of the side information, and codes each
    token with the adaptive table of its leaf. Planes of at most ``SMALL_PLANE`` pixels
    are also coded with the fixed v1 contexts (mode 0) and the smaller stream is kept:
    a tree does not pay for itself on tiny images.
    """

    model_id = "interlaced-tree-v2"
    MANTISSA = 2
    CLASSES = 12
    SMALL_PLANE = 1 << 16
    PROPERTIES = (
        "kind", "level", "spread", "noise", "above", "ref", "deviation", "grad_a", "grad_b", "err_max",
        "plane_diff", "plane_spread", "activity", "row", "col", "outer_spread", "plane_edge",
    )

    def encode(self, plane: np.ndarray, info: PlaneInfo, prev: np.ndarray | None = None) -> bytes:
        flat = plane.astype(np.int64).ravel()
        prev_flat = None if prev is None else prev.astype(np.int64).ravel()
        side_ls = IntWriter()
        maxv = (1 << info.bits) - 1
        emap = np.zeros_like(flat)
        predictor = _Predictor(info.preset, self.CLASSES)
        passes, preds = [], []
        for p in hierarchy.iter_passes(info.rows, info.cols):
            ref, _, key = _pass_base(flat, emap, p, prev_flat)
            x = PassFeatures(flat, p, prev_flat, predictor.fast)
            pred = np.clip(predictor.choose(x, ref, flat[p.pos], key, side_ls), 0, maxv)
            emap[p.pos] = np.abs(flat[p.pos] - pred)
            passes.append(p)
            preds.append(pred)
        modes = [0] if not passes else [1] if flat.size > self.SMALL_PLANE else [0, 1]
        best = None
        for mode in modes:
            side = IntWriter()
            side.put(mode)
            tree = self._learn(flat, emap, passes, preds, prev_flat, info) if mode else None
            if tree is not None:
                tree.write(side)
            side.buf += side_ls.buf
            enc = Encoder()
            enc.uniform(flat[:1], np.array([info.bits]))
            tables = self._tables(tree, info)
            for p, pred in zip(passes, preds):
                ctx = self._contexts(tree, flat, emap, p, pred, prev_flat, info.cols)
                token, extra, nbits = tokenize(zigzag(flat[p.pos] - pred), self.MANTISSA)
                enc.adaptive(token, ctx, tables)
                enc.uniform(extra, nbits)
            data = _join(side, enc.finish())
            if best is None or len(data) < len(best):
                best = data
        return best

    def decode(self, data: bytes, info: PlaneInfo, prev: np.ndarray | None = None) -> np.ndarray:
        side, payload = _split(data)
        mode = side.get()
        if mode not in (0, 1):
            raise CorruptRecordError(f"global stream mode {mode} unknown")
        tree = ctxtree.Tree.read(side, len(self.PROPERTIES), N_BUCKETS) if mode else None
        dec = Decoder(payload)
        flat = np.zeros(info.rows * info.cols, dtype=np.int64)
        flat[:1] = dec.uniform(np.array([info.bits]))
        maxv = (1 << info.bits) - 1
        prev_flat = None if prev is None else prev.astype(np.int64).ravel()
        emap = np.zeros_like(flat)
        predictor = _Predictor(info.preset, self.CLASSES)
        tables = self._tables(tree, info)
        for p in hierarchy.iter_passes(info.rows, info.cols):
            ref, _, key = _pass_base(flat, emap, p, prev_flat)
            pred = np.clip(predictor.read(PassFeatures(flat, p, prev_flat, predictor.fast), ref, key, side), 0, maxv)
            ctx = self._contexts(tree, flat, emap, p, pred, prev_flat, info.cols)
            token = dec.adaptive(ctx, tables)
            extra = dec.uniform(raw_bits_of(token, self.MANTISSA))
            value = pred + unzigzag(detokenize(token, extra, self.MANTISSA))
            if value.min(initial=0) < 0 or value.max(initial=0) > maxv:
                raise CorruptRecordError("global path decoded a value outside the stored range")
            flat[p.pos] = value
            emap[p.pos] = np.abs(value - pred)
        return flat.reshape(info.rows, info.cols)

    # --- contexts -------------------------------------------------------------------------

    def _tables(self, tree: ctxtree.Tree | None, info: PlaneInfo) -> AdaptiveTables:
        rows = _token_scale_rows(info.bits, self.MANTISSA)
        if tree is None:
            return AdaptiveTables(N_CONTEXTS, rows.shape[1], init=_token_prior(info.bits, self.MANTISSA))
        return AdaptiveTables(tree.n_leaves, rows.shape[1], init=rows[tree.scales])

    def _contexts(self, tree, flat, emap, p: hierarchy.Pass, pred, prev_flat, cols: int) -> np.ndarray:
        if tree is None:
            near = flat[p.inner[: hierarchy.N_NEAREST]]
            return _context(near, p, _activity(near, emap, p), pred)
        # The properties of each pixel, walked down the tree at once (none stored).
        out = np.empty(p.size, dtype=np.int64)
        ck.interlaced_contexts(*self._property_args(flat, emap, p, pred, prev_flat, cols, tree.used),
                               tree.prop, tree.thr, tree.right, tree.leaf, out)
        return out

    @staticmethod
    def _properties(flat, emap, p: hierarchy.Pass, pred, prev_flat, cols: int, used=None) -> np.ndarray:
        """Integer properties (P, N) of the pixels of pass ``p`` (rows as in PROPERTIES),
        computed in one compiled pass (``contextkernel.interlaced_properties``).

        With ``used`` (a set of row numbers) the pass's wider neighbours are read only
        where row 15 is among them (a tree never reads the rows it does not use).
        """
        out = np.empty((len(TreeGlobalPathCoder.PROPERTIES), p.size), dtype=np.int64)
        ck.interlaced_properties(*TreeGlobalPathCoder._property_args(flat, emap, p, pred, prev_flat, cols, used), out)
        return out

    @staticmethod
    def _property_args(flat, emap, p: hierarchy.Pass, pred, prev_flat, cols: int, used) -> tuple:
        """The compiled property rule's arguments for pass ``p``: the pass's wider
        neighbours are read only where ``used`` (None: every row) holds row 15."""
        has_outer = used is None or 15 in used
        return (flat, emap, flat if prev_flat is None else prev_flat, prev_flat is not None,
                np.ascontiguousarray(p.pos, dtype=np.int64),
                np.ascontiguousarray(p.inner[: hierarchy.N_NEAREST], dtype=np.int64),
                np.ascontiguousarray(p.outer, dtype=np.int64) if has_outer else _NO_OUTER, has_outer,
                cols, p.kind, int(p.h).bit_length() - 1, np.ascontiguousarray(pred, dtype=np.int64))

    def _learn(self, flat, emap, passes, preds, prev_flat, info: PlaneInfo) -> ctxtree.Tree:
        total = sum(p.size for p in passes)
        step = max(1, total // ctxtree.LEARN_ROWS)
        props, tokens = [], []
        for p, pred in zip(passes, preds):
            sel = slice(None, None, step)
            sub = p.subset(sel)
            props.append(self._properties(flat, emap, sub, pred[sel], prev_flat, info.cols))
            tokens.append(tokenize(zigzag(flat[sub.pos] - pred[sel]), self.MANTISSA)[0])
        prior = _token_scale_rows(info.bits, self.MANTISSA)
        tokens_a = np.concatenate(tokens)
        return ctxtree.learn(
            np.concatenate(props, axis=1), tokens_a, prior.shape[1], prior, weight=total / tokens_a.size
        )


# --- local path (classical) --------------------------------------------------------------


class ClassicalLocalPathCoder:
    """Exact classical model for the local modality, conditioned on the whole global modality."""

    model_id = "classical-v1"

    def encode(self, local: np.ndarray, global_part: np.ndarray, info: PlaneInfo, prev: np.ndarray | None = None) -> bytes:
        if info.k == 0:
            return b""
        flat_l = local.astype(np.int64).ravel()
        enc, side = Encoder(), IntWriter()
        enc.uniform(flat_l[:1], np.array([info.k]))
        self._walk(info, global_part, prev, flat_l, enc=enc, side=side)
        return _join(side, enc.finish())

    def decode(self, data: bytes, global_part: np.ndarray, info: PlaneInfo, prev: np.ndarray | None = None) -> np.ndarray:
        if info.k == 0:
            if data:
                raise CorruptRecordError("local stream present although k = 0")
            return np.zeros((info.rows, info.cols), dtype=np.int64)
        side, payload = _split(data)
        dec = Decoder(payload)
        flat_l = np.zeros(info.rows * info.cols, dtype=np.int64)
        flat_l[:1] = dec.uniform(np.array([info.k]))
        self._walk(info, global_part, prev, flat_l, dec=dec, side=side)
        return flat_l.reshape(info.rows, info.cols)

    def _walk(self, info: PlaneInfo, global_part, prev, flat_l, *, enc=None, dec=None, side) -> None:
        k = info.k
        width = 1 << k
        base = global_part.astype(np.int64).ravel() << k
        mid = base + (width >> 1)
        # Values: exact where already decoded, the interval midpoint elsewhere.
        values = mid.copy()
        values[0] = base[0] + flat_l[0]
        maxv = (1 << (info.bits + k)) - 1
        prev_flat = None if prev is None else prev.astype(np.int64).ravel()
        emap = np.zeros_like(values)
        span = max(16, 2 * width)
        model = RowModel(N_CONTEXTS, span, init=_residual_prior(span))
        predictor = _Predictor(info.preset)
        for p in hierarchy.iter_passes(info.rows, info.cols):
            unit = hierarchy.unit_neighbours(p.pos, info.rows, info.cols)
            x = np.concatenate(
                [_features(values, p, prev_flat, predictor.fast), mid[p.pos][None, :], mid[unit]], axis=0
            )
            near = x[: hierarchy.N_NEAREST]
            ref = _reference(near)
            bucket = _activity(near, emap, p)
            key = _class_key(values, prev_flat, p, bucket)
            if enc is not None:
                target = base[p.pos] + flat_l[p.pos]
                pred = np.clip(predictor.choose(x, ref, target, key, side), 0, maxv)
                ctx = _context(near, p, bucket, pred)
                enc.windowed(flat_l[p.pos], ctx, base[p.pos] - pred, width, model)
            else:
                pred = np.clip(predictor.read(x, ref, key, side), 0, maxv)
                ctx = _context(near, p, bucket, pred)
                flat_l[p.pos] = dec.windowed(ctx, base[p.pos] - pred, width, model)
            values[p.pos] = base[p.pos] + flat_l[p.pos]
            emap[p.pos] = np.abs(values[p.pos] - pred)
