"""Raster-order global path: a self-correcting weighted predictor and learned context trees.

The interlaced global path (``paths.TreeGlobalPathCoder``) predicts each pixel from
neighbours at a distance on the coarse passes. On images whose noise is correlated at
the pixel scale (CT reconstructed with a sharp kernel, scan-converted ultrasound, screen
graphics) a raster scan that sees the nearest causal neighbours W, N, NW, NE predicts
better. This module codes a plane in raster-causal form:

* **Prediction.** Four sub-predictors, in units of 1/8 (``EXTRA_BITS``):
  ``W + NE - N``; ``N`` and ``W`` corrected by the neighbours' signed errors; ``N``
  corrected by a weighted sum of them; and, given a previous plane (the previous sample
  or frame), the previous plane's value moved by this plane's W and N differences. They
  are averaged with integer weights that fall with each sub-predictor's recent error at
  N, NE, NW, W and WW (the weighted predictor of JPEG-XL's modular mode, whose
  constants we reuse). Where the neighbours' errors disagree in sign, the result is
  clamped to the range of W, N and NE. Everything is int64 arithmetic with floor
  divisions and arithmetic shifts: exact on every machine.
* **Order.** The predictor needs the true errors of W, N, NW and NE, so a pixel can be
  computed once those are known. Pixel (r, c) is visited at step ``t = 2r + c``: its W
  and NE were visited at t - 1, N at t - 2, NW at t - 3. Symbols are coded in that order
  (diagonal by diagonal, increasing row within a diagonal); adaptive tables update
  between diagonals (and every ``entropy.CHUNK`` symbols within one). The order was
  chosen when each step was one numpy operation; the per-pixel rules are now compiled
  (``wavekernel``), and the decoder still takes one step per anti-diagonal: the
  constriction call that decodes a diagonal's tokens needs their contexts first.
* **Contexts.** The encoder grows a context tree (``ctxtree``) over ``PROPERTIES``, all
  computable by the decoder from decoded neighbours and errors, and writes it first.

Stream: side information (the tree) then the range-coded payload; per diagonal, the
residual tokens (``paths.tokenize`` with two mantissa bits, of ``zigzag(value - pred)``)
with the adaptive table of each pixel's leaf, then their raw low bits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from .coders import _content, register
from .coders.difference import DifferenceCoder
from . import ctxtree
from .entropy import CHUNK, AdaptiveTables, BitReader, Decoder, Encoder, PieceDecoder, pack_bits
from .errors import CorruptRecordError
from . import wavekernel as wk
from .wavekernel import LS_NEIGHBOURS, N_FIXED
from .paths import (
    N_BUCKETS,
    GlobalPathCoder,
    IntReader,
    IntWriter,
    PlaneInfo,
    _DIRECT,
    _HALF,
    _WMAX,
    WEIGHT_BITS,
    _fit,
    _join,
    _Predictor,
    _split,
    _token_scale_rows,
    activity_bucket,
    token_alphabet,
    token_lookup,
    tokenize,
    unzigzag,
    zigzag,
)

# The weighted predictor's constants, the fitted predictors' neighbourhood and every
# per-pixel rule live in ``wavekernel`` (compiled); they are part of the bitstream definition.
MANTISSA = 2


class Neighbours(dict):
    """Neighbour name -> flat indices (see ``Wavefront.neighbours``); ``index`` holds them
    all as one (11, n) array, rows in the order of ``Wavefront.NB_KEYS``."""

    def __init__(self, index: np.ndarray) -> None:
        super().__init__(zip(Wavefront.NB_KEYS, index))
        self.index = index


class Wavefront:
    """Predictor state of one plane: values, true errors and sub-predictor errors, as
    the compiled rules (``wavekernel``) read and write them.

    Flat arrays of ``rows * cols + 1`` entries whose last entry is a sentinel that stays
    0 and stands for a neighbour outside the plane. Given a previous plane ``prev``,
    ``value`` also holds a segment of zeros and then that plane (with its own sentinel),
    read ``prev_shift`` entries after the pixel's own value.
    """

    def __init__(self, rows: int, cols: int, prev: np.ndarray | None = None) -> None:
        self.rows, self.cols = rows, cols
        n = rows * cols
        self.zero = n
        self.segment = seg = n + 1
        self.has_prev = prev is not None
        self.value = np.zeros((3 if self.has_prev else 1) * seg, dtype=np.int64)
        if self.has_prev:
            self.value[2 * seg : 2 * seg + n] = np.asarray(prev, dtype=np.int64).ravel()
        self.prev_shift = 2 * seg if self.has_prev else 0
        self.true_err = np.zeros(seg, dtype=np.int64)
        self.n_sub = 5 if self.has_prev else 4
        self.sub_err = np.zeros((self.n_sub, seg), dtype=np.int64)
        self._deltas = np.array([dr * cols + dc for dr, dc in self._OFFSETS], dtype=np.int64)[:, None]
        self._learning: tuple | None = None  # learning_sample's (pred, sample, binned)

    def analyse(self, flat: np.ndarray, maxv: int) -> tuple[np.ndarray, np.ndarray]:
        """Load the known plane ``flat`` and run the predictor over it (encoder): every
        pixel's weighted prediction within [0, maxv] and its prediction x8."""
        n = flat.size
        self.value[:n] = flat
        pred = np.empty(n, dtype=np.int64)
        pred8 = np.empty(n, dtype=np.int64)
        wk.analyse(self.rows, self.cols, self.value, self.true_err, self.sub_err, self.prev_shift, self.has_prev,
                   maxv, pred, pred8)
        return pred, pred8

    def diagonals(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(flat positions, rows, cols) of each anti-diagonal t = 2r + c, in coding order."""
        rows, cols = self.rows, self.cols
        for t in range(2 * (rows - 1) + cols):
            r = np.arange(max(0, (t - cols + 2) // 2), min(rows - 1, t // 2) + 1, dtype=np.int64)
            c = t - 2 * r
            yield r * cols + c, r, c

    def scan_order(self) -> np.ndarray:
        """The flat positions of every ``diagonals`` step, concatenated, computed in one
        pass: a pixel's rank is the size of the earlier diagonals plus its row's place in
        its own diagonal (whose first row is max(0, (t - cols + 2) // 2)). Computed once
        per plane (the encoder asks three times) and read-only."""
        order = getattr(self, "_scan_order", None)
        if order is None:
            order = self._scan_order = self._compute_scan_order()
            order.setflags(write=False)
        return order

    def scan_sample(self, step: int) -> np.ndarray:
        """``scan_order()[::step]``, computed for those ranks alone: rank j lies on the
        last diagonal that starts at or before it, ``j - start`` rows below its first
        (the encoder's learning sample of a 3.6 M pixel plane without ordering every
        pixel). Read-only, as ``scan_order()`` is: the kernels that take it are compiled
        for one kind of array (the warm-up's small planes take the order itself), not
        again on a worker's first large plane."""
        if step == 1:
            return self.scan_order()
        rows, cols = self.rows, self.cols
        t = np.arange(2 * (rows - 1) + cols, dtype=np.int64)
        first = np.maximum(0, (t - cols + 2) // 2)
        size = np.minimum(rows - 1, t // 2) - first + 1  # 0 for the odd diagonals of one column
        start = np.cumsum(size) - size
        rank = np.arange(0, rows * cols, step, dtype=np.int64)
        diag = np.searchsorted(start, rank, side="right") - 1
        r = first[diag] + rank - start[diag]
        sample = r * cols + diag - 2 * r
        sample.setflags(write=False)
        return sample

    def _compute_scan_order(self) -> np.ndarray:
        rows, cols = self.rows, self.cols
        t = (2 * np.arange(rows, dtype=np.int64)[:, None] + np.arange(cols, dtype=np.int64)[None, :]).ravel()
        size = np.bincount(t)
        start = np.cumsum(size) - size
        first = np.maximum(0, (np.arange(size.size, dtype=np.int64) - cols + 2) // 2)
        rank = (start - first)[t] + np.repeat(np.arange(rows, dtype=np.int64), cols)
        order = np.empty(t.size, dtype=np.int64)
        order[rank] = np.arange(t.size, dtype=np.int64)
        return order

    # Neighbour keys in the row order of ``neighbours``' index array, and their offsets
    # (row, col) away from the plane's edges.
    NB_KEYS = ("W", "N", "NW", "NE", "NN", "WW", "eW", "eN", "eNW", "eNE", "eWW")
    _OFFSETS = ((0, -1), (-1, 0), (-1, -1), (-1, 1), (-2, 0), (0, -2), (0, -1), (-1, 0), (-1, -1), (-1, 1), (0, -2))

    def neighbours(self, pos: np.ndarray, r: np.ndarray, c: np.ndarray) -> Neighbours:
        """Flat indices of the causal neighbours, with the edge rules applied.

        Values: W falls back to N, then to 0; N to W; NW to W; NE to N; NN to N; WW to W.
        Errors (keys ``e*``): outside the plane they are 0, except NW and NE, which
        fall back to N's.
        """
        idx = pos[None, :] + self._deltas
        # Only pixels within two rows or columns of an edge need the rules.
        edge = np.flatnonzero((r < 2) | (c < 2) | (c >= self.cols - 1))
        if edge.size:
            idx[:, edge] = self._edge_neighbours(pos[edge], r[edge], c[edge])
        return Neighbours(idx)

    def _edge_neighbours(self, pos: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        cols, zero = self.cols, self.zero
        has_n, has_w = r > 0, c > 0
        has_ne = has_n & (c < cols - 1)
        n_raw = np.where(has_n, pos - cols, zero)
        w = np.where(has_w, pos - 1, n_raw)
        n = np.where(has_n, n_raw, w)
        return np.stack([
            w,
            n,
            np.where(has_n & has_w, pos - cols - 1, w),
            np.where(has_ne, pos - cols + 1, n),
            np.where(r > 1, pos - 2 * cols, n),
            np.where(c > 1, pos - 2, w),
            np.where(has_w, pos - 1, zero),
            n_raw,
            np.where(has_n & has_w, pos - cols - 1, n_raw),
            np.where(has_ne, pos - cols + 1, n_raw),
            np.where(c > 1, pos - 2, zero),
        ])

    # --- context properties ---------------------------------------------------------------

    PROPERTIES = (
        "max_err", "err_sum", "N", "W", "N-NW", "W-NW", "NE-N", "N-NN", "W-WW", "spread", "row", "col",
        "gradient-pred", "prev_residual", "plane_diff", "prev_pred-pred",
    )

    def learning_sample(self, pred: np.ndarray) -> tuple[np.ndarray, ctxtree.Binned]:
        """The pixels a context tree of this plane is grown on (``ctxtree.LEARN_ROWS`` spread
        evenly over the coding order) and their properties binned (``ctxtree.bin_properties``),
        given ``pred``, every pixel's weighted prediction. Made once per plane and ``pred``:
        raster-wp-v3/v4 grow their tree twice on the same sample (the binning was a fifth
        of a tree's learning)."""
        if self._learning is None or self._learning[0] is not pred:
            sample = self.scan_sample(max(1, pred.size // ctxtree.LEARN_ROWS))
            self._learning = (pred, sample, ctxtree.bin_properties(self.properties(sample, pred)))
        return self._learning[1], self._learning[2]

    def properties(self, pos: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """Integer properties (P, n) of the pixels ``pos`` of an analysed plane, whose
        weighted predictions are ``pred`` (every pixel's)."""
        out = np.empty((len(self.PROPERTIES), pos.size), dtype=np.int64)
        wk.properties_at(np.ascontiguousarray(pos, dtype=np.int64), self.cols, self.value, self.true_err,
                         self.prev_shift, self.has_prev, pred, out)
        return out


@register(record_level=True)
class RasterGlobalPathCoder:
    """Global path coded in raster-causal order with the weighted predictor (see module doc)."""

    model_id = "raster-wp-v1"
    PROPERTIES = Wavefront.PROPERTIES

    def encode(self, plane: np.ndarray, info: PlaneInfo, prev: np.ndarray | None = None) -> bytes:
        flat, wf, pred, _, tree, ctx = self._analyse(plane, info, prev)
        side = IntWriter()
        tree.write(side)
        return self._payload(side, tree, info, wf, ctx, flat - pred)

    def _analyse(self, plane: np.ndarray, info: PlaneInfo, prev: np.ndarray | None, contexts: bool = True):
        """(values, predictor state, predictions, predictions x8, tree, contexts or None
        without ``contexts``): encoder only."""
        flat = np.asarray(plane, dtype=np.int64).ravel()
        wf = Wavefront(info.rows, info.cols, prev)
        pred, pred8 = wf.analyse(flat, (1 << info.bits) - 1)
        at = wf.learning_sample(pred)[0]
        tree = self._learn(wf, pred, flat[at] - pred[at], info)
        return flat, wf, pred, pred8, tree, self._all_contexts(wf, tree, pred) if contexts else None

    @staticmethod
    def _all_contexts(wf: Wavefront, tree, pred: np.ndarray) -> np.ndarray:
        """Every pixel's leaf: its properties read decoded neighbours only, all known now."""
        ctx = np.empty(pred.size, dtype=np.int64)
        wk.contexts_at(0, pred.size, wf.cols, wf.value, wf.true_err, wf.prev_shift, wf.has_prev, pred,
                       tree.prop, tree.thr, tree.right, tree.leaf, ctx)
        return ctx

    @staticmethod
    def _contexts_of(wf: Wavefront, tree, pred: np.ndarray, at: np.ndarray) -> np.ndarray:
        """The leaves of the pixels ``at`` alone (``_all_contexts()[at]``)."""
        ctx = np.empty(at.size, dtype=np.int64)
        wk.contexts_of(at, wf.cols, wf.value, wf.true_err, wf.prev_shift, wf.has_prev, pred,
                       tree.prop, tree.thr, tree.right, tree.leaf, ctx)
        return ctx

    def _payload(self, side: IntWriter, tree, info: PlaneInfo, wf: Wavefront, ctx: np.ndarray, residual: np.ndarray) -> bytes:
        """Per anti-diagonal, the residual tokens with their leaves' adaptive tables (in
        chunks of ``CHUNK``: the probabilities of a chunk are the tables' before it), then
        their raw low bits."""
        order = wf.scan_order()
        token, extra, nbits = tokenize(zigzag(residual[order]), MANTISSA)
        ctx = ctx[order]
        tables = _leaf_tables(tree, info.bits)
        rows, cols = info.rows, info.cols
        bounds = np.concatenate([[0], np.cumsum(np.bincount(
            (2 * np.arange(rows)[:, None] + np.arange(cols)[None, :]).ravel(), minlength=2 * (rows - 1) + cols))])
        longest = min(rows, cols // 2 + 1)
        probs = np.empty((longest, tables.alphabet), dtype=np.float64)
        order = np.empty(longest, dtype=np.int64)
        sizes = np.empty(longest, dtype=np.int32)
        values = np.empty(longest, dtype=np.int32)
        _, raw_bits = token_lookup(info.bits, MANTISSA)
        enc = Encoder()
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            p = probs[: hi - lo]
            tables.code_chunks(ctx[lo:hi], token[lo:hi], p)
            enc.categorical(token[lo:hi], p)
            k = wk.raw_order(token[lo:hi], hi - lo, raw_bits, extra[lo:hi], order, sizes, values)
            if k >= 0:
                enc.sized(values[:k], sizes[:k])
            else:
                enc.uniform(extra[lo:hi], nbits[lo:hi])
        return _join(side, enc.finish())

    def decode(self, data: bytes, info: PlaneInfo, prev: np.ndarray | None = None) -> np.ndarray:
        return decode_plane(info.rows, info.cols, self.parse(data, info, prev))

    def parse(self, data: bytes, info: PlaneInfo, prev: np.ndarray | None = None) -> "ParsedPlane":
        """The plane's stream read up to its payload, for ``decode_plane``; ``prev`` is its
        previous plane."""
        side, payload = _split(data)
        tree = ctxtree.Tree.read(side, len(self.PROPERTIES), N_BUCKETS)
        return ParsedPlane(tree, None, payload, info.bits, prev)

    def _learn(self, wf: Wavefront, pred, residual: np.ndarray, info: PlaneInfo) -> ctxtree.Tree:
        """A tree over ``wf.learning_sample``, pixels spread evenly over the coding order,
        for the tokens of ``residual``, the residuals of those pixels alone (encoder only;
        ``pred``: the weighted predictions the properties read)."""
        prior = _token_scale_rows(info.bits, MANTISSA)
        sample, binned = wf.learning_sample(pred)
        token = tokenize(zigzag(residual), MANTISSA)[0]
        return ctxtree.learn(None, token, prior.shape[1], prior, weight=pred.size / sample.size, binned=binned)


# --- raster-wp-v2: a predictor and an offset per context leaf ---------------------------
# The weighted predictor adapts to noise, but in some contexts a plain predictor is
# better: flat padding and the ramps of ultrasound sectors (the clamped gradient), sharp
# vertical or horizontal structure (N, W), and leaves with a steady bias (the weighted
# predictor plus an offset). Part of the bitstream definition: index = stream value.
# A leaf switches only where its static code length falls by more than this many bits.
LEAF_SWITCH_BITS = 32.0
# Planes larger than this keep their leaf table without coding the plane without it too
# (encoder only; the check is a second full coding pass): of 35 train planes
# (raster-wp-v4) none over this size was smaller without it, and one of the planes from
# 4,096 pixels up was (SC_rgb_jpeg_dcmd's 256x256 first plane: 906 B without, 946 with).
TABLE_CHECK_MAX_PIXELS = 1 << 16
LEAF_PREDICTORS = ("weighted", "gradient", "W", "N", "(W+N)/2", "(N+NE)/2", "W+N-NW", "(weighted+gradient)/2")


def leaf_predictions(v: np.ndarray, nb: Neighbours, weighted: np.ndarray, maxv: int) -> np.ndarray:
    """(len(LEAF_PREDICTORS), n) candidate predictions, each within [0, maxv]."""
    W, N, NW, NE = v[nb.index[:4]]
    out = np.empty((len(LEAF_PREDICTORS), W.size), dtype=np.int64)
    out[0] = weighted
    plane = W + N - NW
    out[1] = np.minimum(np.maximum(plane, np.minimum(W, N)), np.maximum(W, N))
    out[2] = W
    out[3] = N
    out[4] = (W + N) >> 1
    out[5] = (N + NE) >> 1
    out[6] = np.minimum(np.maximum(plane, 0), maxv)
    out[7] = (weighted + out[1]) >> 1
    return out


def _leaf_costs(token: np.ndarray, nbits: np.ndarray, ctx: np.ndarray, leaves: int) -> np.ndarray:
    """Static code length in bits of each leaf's tokens plus their raw bits (encoder only)."""
    alphabet = int(token.max(initial=0)) + 1
    h = np.bincount(ctx * alphabet + token, minlength=leaves * alphabet).reshape(leaves, alphabet)
    return _static_bits(h) + np.bincount(ctx, weights=nbits, minlength=leaves)


def _static_bits(h: np.ndarray) -> np.ndarray:
    """Empirical code length in bits of each row of token counts ``h`` (.., alphabet)."""
    h = h.astype(np.float64)
    total = h.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -(h * np.log2(np.where(h > 0, h / np.maximum(total, 1), 1.0))).sum(axis=-1)


def _candidate_leaf_costs(preds: np.ndarray, flat: np.ndarray, ctx: np.ndarray, leaves: int, bits: int) -> np.ndarray:
    """``_leaf_costs`` of the residuals of each row of ``preds`` (K, n) against ``flat``
    (K, leaves), counted in one compiled pass (``learnkernel.leaf_token_counts``); the
    same floats as ``_leaf_costs`` row by row."""
    from . import learnkernel as lk  # numba: loaded on first use

    preds = np.ascontiguousarray(preds, dtype=np.int64)
    hist = np.empty((preds.shape[0], leaves, token_alphabet(bits, MANTISSA)), dtype=np.int64)
    top = np.empty(preds.shape[0], dtype=np.int64)
    lk.leaf_token_counts(preds, np.ascontiguousarray(flat, dtype=np.int64), np.ascontiguousarray(ctx, dtype=np.int64),
                         MANTISSA, _DIRECT, hist, top)
    raw = hist @ token_lookup(bits, MANTISSA)[1].astype(np.int64)  # each token's raw bits, summed per leaf
    return np.stack([_static_bits(hist[k, :, : top[k] + 1]) + raw[k] for k in range(preds.shape[0])])


@register
class RasterV2GlobalPathCoder(RasterGlobalPathCoder):
    """``raster-wp-v1`` with a predictor and an offset chosen per context leaf.

    Contexts are those of v1 (the tree reads the weighted predictor's state). The
    encoder then picks, for each leaf, the entry of ``LEAF_PREDICTORS`` whose residuals
    cost least in that leaf (static code length), and an offset (the leaf's median
    residual, kept where it lowers that cost). The pixel's prediction is
    ``clip(candidate + offset, 0, maxv)``; the weighted predictor still learns from its
    own errors. Held-out, against v1: 693_J2KR (CT) -2.6%, OBXXXX1A (US) -16%, US1_UNCI
    red plane -2.2%; the interlaced tree path gained nothing from offsets.

    The encoder codes the plane with and without the leaf table and keeps the smaller.

    Stream: the tree; the number of leaves that differ from (weighted, offset 0); for each,
    in increasing leaf order, the varints ``leaf - previous leaf - 1, choice, offset``;
    then the v1 payload.
    """

    model_id = "raster-wp-v2"

    def encode(self, plane: np.ndarray, info: PlaneInfo, prev: np.ndarray | None = None) -> bytes:
        flat, wf, pred, _, tree, ctx = self._analyse(plane, info, prev)
        maxv = (1 << info.bits) - 1
        allpos = np.arange(flat.size, dtype=np.int64)
        r, c = np.divmod(allpos, info.cols)
        cands = leaf_predictions(wf.value, wf.neighbours(allpos, r, c), pred, maxv)
        choice, offset, final = self._select(ctx, tree.n_leaves, flat, cands, maxv)
        return self._code_choice(tree, info, wf, ctx, flat, pred, choice, offset, final)

    def _code_choice(self, tree, info: PlaneInfo, wf: Wavefront, ctx, flat, pred, choice, offset, final, models=()) -> bytes:
        """Codes the plane with the leaf table (``choice``, ``offset``; ``final`` the
        pixels' predictions under it) and without one (the weighted predictor
        everywhere); the smaller stream wins. ``models`` (v3): the fitted predictors the
        choices past LEAF_PREDICTORS name; only those some leaf picks are written."""
        # Fitted predictors no leaf picks are dropped; the others are renumbered in order.
        fixed = len(LEAF_PREDICTORS)
        used = np.unique(choice[choice >= fixed]) - fixed
        renumber = np.arange(fixed + len(models))
        renumber[fixed + used] = fixed + np.arange(used.size)
        choice = renumber[choice]
        models = [models[i] for i in used]
        # The leaf table is checked by coding: the static costs ignore the adaptive
        # tables' learning and the table's own bytes, so small planes may do better without
        # (planes of TABLE_CHECK_MAX_PIXELS or fewer).
        changed = np.flatnonzero(choice | offset)
        table = [(int(leaf), int(choice[leaf]), int(offset[leaf])) for leaf in changed]
        if changed.size and flat.size > TABLE_CHECK_MAX_PIXELS:
            return self._code(tree, info, wf, ctx, flat - final, table, models)
        best = self._code(tree, info, wf, ctx, flat - pred, [], [])
        if changed.size:
            data = self._code(tree, info, wf, ctx, flat - final, table, models)
            best = data if len(data) < len(best) else best
        return best

    @staticmethod
    def _select(ctx, leaves: int, flat, cands, maxv: int, scale: int = 1):
        """(choice, offset) per leaf and the pixels' final predictions (encoder only).
        ``scale``: how many pixels of the plane each given pixel stands for (a sample)."""
        from .learnkernel import leaf_medians  # numba: loaded on first use

        allpos = np.arange(flat.size, dtype=np.int64)
        bits = max(1, int(maxv).bit_length())
        costs = scale * _candidate_leaf_costs(cands, flat, ctx, leaves, bits)
        # A leaf leaves the weighted predictor (or takes an offset) only for a clear gain:
        # the static cost is measured on the leaf's own pixels, and small leaves overfit.
        choice = np.where(costs[0] - costs.min(axis=0) > LEAF_SWITCH_BITS, costs.argmin(axis=0), 0)
        chosen = costs[choice, np.arange(leaves)]
        final = cands[choice[ctx], allpos]
        offset = leaf_medians(flat - final, ctx, leaves)
        moved = np.clip(final + offset[ctx], 0, maxv)
        moved_cost = scale * _candidate_leaf_costs(moved[None], flat, ctx, leaves, bits)[0]
        offset = np.where(chosen - moved_cost > LEAF_SWITCH_BITS, offset, 0)
        final = np.clip(final + offset[ctx], 0, maxv)
        return choice, offset, final

    def _code(self, tree, info: PlaneInfo, wf: Wavefront, ctx: np.ndarray, residual: np.ndarray, table, models) -> bytes:
        side = IntWriter()
        tree.write(side)
        self._write_models(side, models)
        side.put(len(table))
        last = -1
        for leaf, pick, move in table:
            side.put(leaf - last - 1)
            side.put(pick)
            side.put(move)
            last = leaf
        return self._payload(side, tree, info, wf, ctx, residual)

    @staticmethod
    def _write_models(side: IntWriter, models) -> None:
        """v2 has no fitted predictors."""

    def _read_models(self, side: IntReader, info: PlaneInfo, prev) -> list:
        return []

    def parse(self, data: bytes, info: PlaneInfo, prev=None) -> "ParsedPlane":
        side, payload = _split(data)
        tree = ctxtree.Tree.read(side, len(self.PROPERTIES), N_BUCKETS)
        models = self._read_models(side, info, prev)
        maxv = (1 << info.bits) - 1
        choice = np.zeros(tree.n_leaves, dtype=np.int64)
        offset = np.zeros(tree.n_leaves, dtype=np.int64)
        changed = side.get()
        if not 0 <= changed <= tree.n_leaves:
            raise CorruptRecordError(f"raster leaf table of {changed} entries for {tree.n_leaves} leaves")
        leaf = -1
        for _ in range(changed):
            step, pick, move = side.get(), side.get(), side.get()
            leaf += step + 1
            if step < 0 or leaf >= tree.n_leaves or not 0 <= pick < len(LEAF_PREDICTORS) + len(models) or abs(move) > maxv:
                raise CorruptRecordError(f"raster leaf {leaf}: predictor {pick} or offset {move} out of range")
            choice[leaf], offset[leaf] = pick, move
        return ParsedPlane(tree, (choice, offset, models) if changed else None, payload, info.bits, prev)


# --- raster-wp-v3: fitted linear predictors over a wider causal neighbourhood ------------
# Fitted predictors per plane: one per LS_CLASS_PIXELS pixels, at most LS_MAX_CLASSES,
# none under LS_MIN_PIXELS. Encoder only (the stream says how many it holds).
LS_CLASS_PIXELS = 1 << 14
LS_MAX_CLASSES = 16
LS_MIN_PIXELS = 1 << 12
LS_ROUNDS = 2  # fit, reassign leaves, fit again
LS_FIT_ROWS = 1 << 15
LS_SAMPLE = 1 << 18
LS_L1_ITERATIONS = 4
# Later rounds refine each class's model from the one its leaves chose, with this many
# reweighted solves instead of LS_L1_ITERATIONS + 1 from least squares. Train, 35 planes
# (raster-wp-v4 alone, one thread): 9,102,191 B against 9,102,300 B, and 14% less time
# (12.98 s against 15.10 s). 1: +0.07%; 3: +0.03% (a different, not better, optimum).
LS_WARM_ITERATIONS = 2
# A plane coded after its previous plane (a later frame, a colour sample after the first)
# takes that plane's final models instead of its own first round (``_fit_models``'
# ``start``): its leaves join the class whose model codes them best, and one round of
# warm fits follows. Only the encoder changes (the weights are sent), and only within one
# image (``coders._kept_stream``). 2026-12-07, `max`, the images of several planes, in-process
# against the package before, best of 3: train 105,264 -> 104,483 B (-0.74%; examples_rgb_color
# -2.2%, color-pl +0.25%, SC_rgb_jpeg_dcmd +0.17%, SC_rgb_dcmtk_ebcyn1_dcmd +25 B, the others
# the same bytes) in 0.94x the encode time; held-out OBXXXX1A_2frame -0.68%, emri_small
# -0.05%, US1_J2KR and US1_UNCI the same bytes (US1_UNCI 2.73 -> 2.47 s), in 0.93x. Every
# image of one plane is the same bytes. A warm first round from one model fitted on the
# whole sample instead (images of one plane too) was +0.056% on train.


def ls_feature_count(has_prev: bool) -> int:
    return len(LS_NEIGHBOURS) + 5 + has_prev


def ls_features(wf: Wavefront, pos: np.ndarray, pred8: np.ndarray, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """(features (F, n), ref) of the fitted predictors at the pixels ``pos`` of an
    analysed plane (``pred8``: every pixel's weighted prediction x8), all integers
    relative to ``ref = (W + N) >> 1``: the LS_NEIGHBOURS' values minus ref (a neighbour
    outside the plane reads N where its column offset is >= 0, else W); the weighted
    prediction (x8) minus ``8 ref``; the weighted predictor's errors at W, N, NW and NE
    (x8); and, given a previous plane, its value at the pixel minus the mean of its W and N.
    ``dtype`` float64 (the encoder's fits) holds the same integers exactly, written once."""
    n_feat = ls_feature_count(wf.has_prev)
    x = np.empty((n_feat, pos.size), dtype=dtype)
    ref = np.empty(pos.size, dtype=np.int64)
    wk.ls_features_at(np.ascontiguousarray(pos, dtype=np.int64), wf.cols, wf.value, wf.true_err, wf.prev_shift,
                      wf.has_prev, pred8, x, ref, np.empty((wk.ROW_BLOCK, n_feat), dtype=dtype))
    return x, ref


def ls_predict(x: np.ndarray, ref: np.ndarray, weights: np.ndarray, cls: np.ndarray | None, maxv: int) -> np.ndarray:
    """``clip(ref + (w[cls] . x + half) >> WEIGHT_BITS, 0, maxv)``, exact; ``cls`` None:
    every pixel takes ``weights[0]``. ``x`` may be int64 or float64 holding the same
    integers: every product and partial sum stays below 2**42 (features below 2**22 in
    magnitude, weights at most _WMAX, under 32 features), so a float64 product is exact."""
    if cls is None:
        out = weights[0].astype(x.dtype) @ x
        if out.dtype != np.int64:
            out = out.astype(np.int64)
    else:
        out = np.einsum("nf,fn->n", weights[cls], x)
    return np.minimum(np.maximum(ref + ((out + _HALF) >> WEIGHT_BITS), 0), maxv)


def _class_columns(x: np.ndarray, cls: np.ndarray, k: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(j, members, ``x[:, members]`` C-ordered) for each class j < k of the sample's
    columns (``cls``) that has at least 4 members per feature, its members taken every
    (count // LS_FIT_ROWS)-th: the fits ``_fit_models`` makes. The blocks are taken in one
    pass over ``x`` (``wk.take_class_columns``), into one array."""
    n_feat = x.shape[0]
    dest = np.full(cls.size, -1, dtype=np.int64)
    stride = np.zeros(cls.size, dtype=np.int64)
    chosen, total = [], 0
    for j in range(k):
        members = np.flatnonzero(cls == j)
        if members.size < 4 * n_feat:
            continue
        members = members[:: max(1, members.size // LS_FIT_ROWS)]
        dest[members] = np.arange(total * n_feat, total * n_feat + members.size)
        stride[members] = members.size
        chosen.append((j, members, total * n_feat))
        total += members.size
    out = np.empty(total * n_feat, dtype=x.dtype)
    if chosen:
        wk.take_class_columns(x, dest, stride, out)
    return [(j, members, out[at : at + n_feat * members.size].reshape(n_feat, members.size))
            for j, members, at in chosen]


def _fits_key(plane: np.ndarray, info: PlaneInfo) -> tuple:
    """A plane's key among an image's fitted predictors (``RasterV3GlobalPathCoder.reuses_fits``):
    its content as int64 (rows, cols), whatever type or layout it was given in."""
    return ("fitted-models", _content(np.asarray(plane, dtype=np.int64).reshape(info.rows, info.cols)))


def ls_predict_many(x: np.ndarray, ref: np.ndarray, weights: np.ndarray, maxv: int) -> np.ndarray:
    """``ls_predict`` with each row of ``weights`` (K, F) for every pixel: (K, n), the
    products summed in one matrix product (exact in float64, as ``ls_predict`` says)."""
    sums = np.dot(weights.astype(np.float64), np.asarray(x, dtype=np.float64))  # np.dot: releases the GIL (paths._fit)
    out = np.empty(sums.shape, dtype=np.int64)
    wk.clip_predictions(sums, np.ascontiguousarray(ref, dtype=np.int64), _HALF, WEIGHT_BITS, maxv, out)
    return out


# --- decoding: one anti-diagonal per step ----------------------------------------------


class ParsedPlane(NamedTuple):
    """A raster plane's stream, read up to its payload: the tree, the leaf table
    ``(choice, offset, fitted predictors)`` or None, the payload, the coded bits, and its
    previous plane (None or an array)."""

    tree: ctxtree.Tree
    table: tuple | None
    payload: bytes
    bits: int
    prev: np.ndarray | None


def _leaf_tables(tree: ctxtree.Tree, bits: int) -> AdaptiveTables:
    rows = _token_scale_rows(bits, MANTISSA)
    return AdaptiveTables(tree.n_leaves, rows.shape[1], init=rows[tree.scales])


def leaf_table_arrays(table: tuple | None, has_prev: bool):
    """A parsed leaf table ``(choice, offset, fitted predictors)`` (or None) as the
    kernels take it: (choice, offset, fitted predictor index, weights (K, F)) per leaf."""
    n_feat = ls_feature_count(has_prev)
    if table is None:
        zero = np.zeros(1, dtype=np.int64)
        return zero, zero, zero, np.zeros((1, n_feat), dtype=np.int64)
    choice, offset, fitted = table
    weights = np.zeros((max(1, len(fitted)), n_feat), dtype=np.int64)
    weights[: len(fitted)] = np.asarray(fitted, dtype=np.int64).reshape(len(fitted), n_feat)
    return choice, offset, np.maximum(choice - N_FIXED, 0), weights


def decode_plane(rows: int, cols: int, plane: ParsedPlane) -> np.ndarray:
    """A parsed raster plane, decoded: per anti-diagonal, the kernel predicts the pixels
    and finds their contexts, constriction decodes their tokens (in chunks of ``CHUNK``,
    the tables updated after each) and then their raw low bits, and the kernel records
    the values."""
    wf = Wavefront(rows, cols, plane.prev)
    tree = plane.tree
    maxv = (1 << plane.bits) - 1
    choice, offset, model, weights = leaf_table_arrays(plane.table, wf.has_prev)
    tables = _leaf_tables(tree, plane.bits)
    dec = Decoder(plane.payload)
    lowest, raw_bits = token_lookup(plane.bits, MANTISSA)
    longest = min(rows, cols // 2 + 1)
    pos = np.empty(longest, dtype=np.int64)
    pred = np.empty(longest, dtype=np.int64)
    pred8 = np.empty(longest, dtype=np.int64)
    sub = np.empty((5, longest), dtype=np.int64)
    ctx = np.empty(longest, dtype=np.int64)
    token = np.empty(longest, dtype=np.int64)
    extra = np.empty(longest, dtype=np.int64)
    order = np.empty(longest, dtype=np.int64)
    sizes = np.empty(longest, dtype=np.int32)
    none = np.zeros(0, dtype=np.int64)
    probs = np.empty((min(longest, CHUNK), tables.alphabet), dtype=np.float64)
    for t in range(2 * (rows - 1) + cols):
        m = wk.predict_diagonal(t, rows, cols, wf.value, wf.true_err, wf.sub_err, wf.prev_shift, wf.has_prev, maxv,
                                tree.prop, tree.thr, tree.right, tree.leaf, plane.table is not None,
                                choice, offset, model, weights, pos, pred, pred8, sub, ctx)
        for lo in range(0, m, CHUNK):
            hi = min(m, lo + CHUNK)
            token[lo:hi] = dec.categorical(tables.probabilities(ctx[lo:hi], probs[: hi - lo]))
            tables.update(ctx[lo:hi], token[lo:hi])
        k = wk.raw_order(token, m, raw_bits, none, order, sizes, none)
        if k >= 0:
            fields = dec.sized(sizes[:k])
        else:  # a field wider than one uniform piece: entropy's general rule
            k, fields = m, dec.uniform(raw_bits[token[:m]])
            order[:m] = np.arange(m)
        if not wk.finish_diagonal(m, wf.has_prev, maxv, pos, pred, pred8, sub, token, order, k, fields, extra,
                                  lowest, wf.value, wf.true_err, wf.sub_err):
            raise CorruptRecordError("global path decoded a value outside the stored range")
    return wf.value[: rows * cols].reshape(rows, cols)


@register
class RasterV3GlobalPathCoder(RasterV2GlobalPathCoder):
    """``raster-wp-v2`` whose leaves may also pick one of a few fitted linear predictors.

    The weighted predictor and the fixed candidates see four to six neighbours. Where the
    noise is correlated over a few pixels (MR and CR detectors, reconstructions, scan
    conversion) a predictor over a wider neighbourhood averages it better: each fitted
    predictor is ``ref + ((x @ w + half) >> 12)`` over ``ls_features`` (14 causal
    neighbours, the weighted prediction, and the previous plane's local deviation),
    integer weights sent in the stream. The encoder groups the context leaves into
    classes (first by their mean absolute residual, then each leaf to the class whose
    predictor codes it in fewest bits, ``LS_ROUNDS`` times; a plane after its previous plane
    starts from that plane's predictors, ``reuses_fits``), fits one predictor per class
    for small absolute residuals (``paths._fit``), and lets every leaf choose among the
    fixed candidates and the fitted ones as in v2 (fits and choices on pixels at a fixed
    stride on planes over 2 * LS_SAMPLE pixels). It then grows the tree again on the
    residuals of the chosen predictions and chooses again. Predictors no leaf picks are
    not sent. Held-out, whole planes against v2: MR2_J2KR 569,596 -> 521,020 bytes,
    693_J2KR 83,138 -> 78,946, RG3_J2KR 793,234 -> 771,973.

    Stream: the tree; the number of fitted predictors and their weights; then v2's leaf
    table (choice ``len(LEAF_PREDICTORS) + j`` names fitted predictor j) and payload.
    """

    model_id = "raster-wp-v3"
    # The encoder takes ``fits``, an image's fitted predictors by plane (``coders._kept_stream``
    # passes the dict it keeps per image): a plane with a previous plane starts from that
    # plane's models (``_fit_models``' ``start``), and leaves its own for the next.
    reuses_fits = True

    def encode(self, plane: np.ndarray, info: PlaneInfo, prev: np.ndarray | None = None, *,
               fits: dict | None = None) -> bytes:
        """The plane's stream; ``fits`` (encoder only): the image's fitted predictors by
        plane content, read for ``prev`` and written for ``plane`` (the stream carries its
        own weights, so a decoder needs none of it)."""
        n = info.rows * info.cols
        # A plane that fits predictors needs its first tree's leaves only where it fits and
        # chooses (``sample``) and where the second tree learns; the second tree's, everywhere.
        flat, wf, pred, pred8, tree, ctx = self._analyse(plane, info, prev, contexts=n < LS_MIN_PIXELS)
        maxv = (1 << info.bits) - 1
        # Predictors are fitted and leaves choose on pixels at a fixed stride (all of
        # them up to 2 * LS_SAMPLE, and all of a plane too small to fit predictors); the
        # chosen predictions are then made for every pixel.
        step = max(1, n // LS_SAMPLE) if n >= LS_MIN_PIXELS else 1
        sample = np.arange(0, n, step, dtype=np.int64)
        fixed = np.empty((N_FIXED, sample.size), dtype=np.int64)
        wk.fixed_at(sample, wf.cols, wf.value, wf.true_err, wf.prev_shift, wf.has_prev, pred, maxv, fixed)
        if n < LS_MIN_PIXELS:
            choice, offset, final = self._select(ctx, tree.n_leaves, flat, fixed, maxv)
            return self._code_choice(tree, info, wf, ctx, flat, pred, choice, offset, final)
        s = slice(None, None, step)
        xs, refs = ls_features(wf, sample, pred8, np.float64)
        flats = flat[s]
        ctx_s = self._contexts_of(wf, tree, pred, sample)
        start = None if fits is None or prev is None else fits.get(_fits_key(prev, info))
        models, fitted = self._fit_models(xs, refs, flats, pred[s], ctx_s, tree.n_leaves, maxv, n, start)
        if fits is not None:
            fits[_fits_key(plane, info)] = list(models)
        cands = np.concatenate([fixed, fitted])
        choice, offset, _ = self._select(ctx_s, tree.n_leaves, flats, cands, maxv, step)
        # The tree was grown on the weighted predictor's residuals: grow it again on
        # those of the chosen predictions (same properties), and choose again.
        at = wf.learning_sample(pred)[0]
        ctx_at = ctx_s[at] if step == 1 else self._contexts_of(wf, tree, pred, at)  # step 1: the sample is every pixel
        final_at = self._final(choice, offset, ctx_at, wf, pred, pred8, models, maxv, at)
        tree = self._learn(wf, pred, flat[at] - final_at, info)
        ctx = self._all_contexts(wf, tree, pred)
        choice, offset, _ = self._select(ctx[s], tree.n_leaves, flats, cands, maxv, step)
        final = self._final(choice, offset, ctx, wf, pred, pred8, models, maxv)
        return self._code_choice(tree, info, wf, ctx, flat, pred, choice, offset, final, models)

    @staticmethod
    def _final(choice, offset, ctx, wf: Wavefront, pred, pred8, models, maxv: int,
               at: np.ndarray | None = None) -> np.ndarray:
        """Every pixel's prediction under a leaf table (encoder only): the decoder's rule,
        compiled (``wavekernel.table_predictions``); with ``at``, those of the pixels
        ``at`` alone, whose leaves ``ctx`` are."""
        table = leaf_table_arrays((choice, offset, models), wf.has_prev)
        if at is not None:
            out = np.empty(at.size, dtype=np.int64)
            wk.table_predictions_at(at, wf.cols, wf.value, wf.true_err, wf.prev_shift, wf.has_prev, pred, pred8, ctx,
                                    *table, maxv, out)
            return out
        out = np.empty(pred.size, dtype=np.int64)
        wk.table_predictions(wf.cols, wf.value, wf.true_err, wf.prev_shift, wf.has_prev, pred, pred8, ctx,
                             *table, maxv, out)
        return out

    @staticmethod
    def _fit_models(x, ref, flat, pred, ctx, leaves: int, maxv: int, n: int,
                    start: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], np.ndarray]:
        """(weights of the fitted predictors, one per class of leaves, from pixels sampled
        from a plane of ``n``; their predictions (K, sample) at those pixels), encoder only.

        ``start``: the previous plane's models (``reuses_fits``), which stand in for the
        first round: each leaf joins the class whose model codes it in fewest bits, and the
        classes' fits refine those models (a feature the previous plane lacked, its own
        previous plane's, starts at weight 0)."""
        y = flat - ref
        bits = max(1, maxv.bit_length())
        rounds = LS_ROUNDS
        if start:
            earlier = [np.pad(w[: x.shape[0]], (0, max(0, x.shape[0] - w.size))) for w in start]
            group = _candidate_leaf_costs(ls_predict_many(x, ref, np.array(earlier), maxv), flat, ctx, leaves,
                                          bits).argmin(axis=0)
            k, rounds = len(earlier), 1
        else:
            k = int(min(LS_MAX_CLASSES, max(1, n // LS_CLASS_PIXELS)))
            counts = np.bincount(ctx, minlength=leaves)
            activity = np.bincount(ctx, weights=np.abs(flat - pred), minlength=leaves) / np.maximum(counts, 1)
            order = np.argsort(activity, kind="stable")
            group = np.empty(leaves, dtype=np.int64)
            group[order] = np.minimum((np.cumsum(counts[order]) - counts[order]) * k // max(flat.size, 1), k - 1)
            earlier = None  # the previous round's models: class j now holds the leaves model j coded best
        for fit_round in range(rounds):
            models = []
            for j, members, block in _class_columns(x, group[ctx], k):
                if earlier is None:
                    models.append(_fit(block, y[members], LS_L1_ITERATIONS, LS_FIT_ROWS))
                else:  # refined from model j, which these leaves chose
                    models.append(_fit(block, y[members], LS_WARM_ITERATIONS, LS_FIT_ROWS, init=earlier[j]))
            if not models:
                return [], np.empty((0, flat.size), dtype=np.int64)
            preds = ls_predict_many(x, ref, np.array(models), maxv)
            if fit_round + 1 == rounds:
                break  # the last round's models are final: no leaves to reassign
            group = _candidate_leaf_costs(preds, flat, ctx, leaves, bits).argmin(axis=0)
            k = len(models)
            earlier = models
        return models, preds

    @staticmethod
    def _write_models(side: IntWriter, models) -> None:
        side.put(len(models))
        for w in models:
            for value in w:
                side.put(int(value))

    def _read_models(self, side: IntReader, info: PlaneInfo, prev) -> list:
        count = side.get()
        if not 0 <= count <= LS_MAX_CLASSES:
            raise CorruptRecordError(f"raster stream names {count} fitted predictors (0..{LS_MAX_CLASSES})")
        n_feat = ls_feature_count(prev is not None)
        models = np.array([[side.get() for _ in range(n_feat)] for _ in range(count)], dtype=np.int64).reshape(count, n_feat)
        if np.abs(models).max(initial=0) > _WMAX:
            raise CorruptRecordError("fitted predictor weight out of range")
        return models


# raster-wp-v1 on the difference to the previous plane (``medcodec.coders.difference``):
# for a plane coded after a nearly equal one (grey RGB).
RASTER_WP_DIFF_V1 = register(DifferenceCoder("raster-wp-diff-v1", RasterGlobalPathCoder.model_id))


# raster-ls-v1: planes of at least this many pixels split each activity bucket by texture
# (how many of W, N, NW, NE exceed the prediction) and by the sign of W's residual, 15
# contexts per bucket. Held-out: 693_J2KR -1.9%, OBXXXX1A -16%, US1_UNCI red -2.6%,
# MR2_J2KR -0.1%; on pydicom's 64x64 to 128x128 test images +1.5 to +2.6% (too few pixels
# to learn 15 times the tables).
TEXTURE_MIN_PIXELS = 1 << 17


@register
class RasterLSGlobalPathCoder:
    """`fast`'s raster path: a fitted linear predictor over six causal neighbours.

    ``interlaced-ls-v1`` predicts each pixel from neighbours at a distance on the coarse
    passes; where the noise is correlated at the pixel scale (CT reconstructed with a sharp
    kernel, ultrasound speckle) the nearest causal neighbours predict better, but the
    weighted predictor of ``raster-wp-v1`` carries per-pixel state that makes it a
    sequential loop. Here the prediction is ``ref + ((x - ref) @ w + half) >> 12`` over
    W, N, NW, NE, WW and NN (edge rules of ``Wavefront.neighbours``), ``ref = (W + N) >> 1``,
    one weight vector fitted by the encoder for small absolute residuals (``paths._fit``,
    `fast` settings) and transmitted: the encoder predicts every pixel in one step. The
    context is the activity bucket of ``(2 * g // 3 + |eW| + |eN| + (|eNW| + |eNE|) // 2) // 2``,
    g the local gradient ``|W - NW| + |N - NW| + |N - NE|`` and e the neighbours' residuals;
    on planes of ``TEXTURE_MIN_PIXELS`` or more, times the texture and W's residual sign.
    The decoder works one anti-diagonal at a time (t = 2r + c, as ``raster-wp-v1``). Held-out
    planes (against ``interlaced-ls-v1``): 693_J2KR 3.22 -> 2.86 bits per sample, OBXXXX1A
    0.476 -> 0.316, US1_UNCI red 3.02 -> 2.82, MR2_J2KR 4.43 -> 4.29, RG3_J2KR 2.13 -> 2.10.

    The encoder codes the whole plane in one call: the residual tokens (two mantissa bits),
    in scan order (anti-diagonal by anti-diagonal, increasing row within one), with the
    adaptive table of their bucket (updated every ``entropy.CHUNK`` symbols, across
    diagonals: ``entropy.PieceDecoder`` reads them back a diagonal at a time), and their
    raw low bits packed apart (``entropy.pack_bits``), so the decoder can read both as it goes.

    Stream: side information (the predictor's weights, as ``_Predictor``; the token
    stream's length in bytes), then the token stream, then the packed raw bits.
    """

    model_id = "raster-ls-v1"
    NEIGHBOURS = ("W", "N", "NW", "NE", "WW", "NN")

    @staticmethod
    def _textured(info: PlaneInfo) -> bool:
        return info.rows * info.cols >= TEXTURE_MIN_PIXELS

    @staticmethod
    def _contexts(near, gradient, x, pred, west_residual, textured: bool) -> np.ndarray:
        bucket = activity_bucket((2 * gradient // 3 + near) >> 1)
        if not textured:
            return bucket
        above = np.count_nonzero(x[:4] > pred, axis=0)  # of W, N, NW, NE
        return (bucket * 5 + above) * 3 + np.sign(west_residual) + 1

    def _tables(self, info: PlaneInfo) -> AdaptiveTables:
        prior = _token_scale_rows(info.bits, MANTISSA)
        if self._textured(info):
            prior = np.repeat(prior, 15, axis=0)
        return AdaptiveTables(prior.shape[0], prior.shape[1], init=prior)

    @staticmethod
    def _shifted(img: np.ndarray, out: np.ndarray) -> None:
        """W, N, NW, NE, WW, NN of every pixel into ``out`` (6, rows, cols): the values
        ``Wavefront.neighbours`` indexes, by slicing (the encoder knows the whole plane)."""
        W, N, NW, NE, WW, NN = out
        W[:, 1:] = img[:, :-1]
        W[1:, 0] = img[:-1, 0]
        W[0, 0] = 0
        N[1:] = img[:-1]
        N[0] = W[0]
        NW[1:, 1:] = img[:-1, :-1]
        NW[0] = W[0]
        NW[1:, 0] = W[1:, 0]
        NE[1:, :-1] = img[:-1, 1:]
        NE[0] = N[0]
        NE[1:, -1] = N[1:, -1]
        WW[:, 2:] = img[:, :-2]
        WW[:, :2] = W[:, :2]
        NN[2:] = img[:-2]
        NN[:2] = N[:2]

    @staticmethod
    def _shifted_errors(err: np.ndarray) -> np.ndarray:
        """|eW| + |eN| + (|eNW| + |eNE|) >> 1 of every pixel, zero outside the plane and NW,
        NE falling back to N (as ``Wavefront.neighbours``)."""
        eN = np.zeros_like(err)
        eN[1:] = err[:-1]
        diag = eN.copy()  # eNW + eNE, starting from their fall-back eN
        diag[1:, 1:] = err[:-1, :-1]
        pair = eN.copy()
        pair[1:, :-1] = err[:-1, 1:]
        near = eN + ((diag + pair) >> 1)
        near[:, 1:] += err[:, :-1]
        return near

    def encode(self, plane: np.ndarray, info: PlaneInfo, prev: np.ndarray | None = None) -> bytes:
        # Values of at most 16 bits: the neighbour planes are int32 (half the memory
        # traffic); every sum, product and residual below is formed in int64.
        img = np.asarray(plane, dtype=np.int32 if info.bits <= 16 else np.int64)
        flat = img.ravel().astype(np.int64)
        maxv = (1 << info.bits) - 1
        n = flat.size
        shifted = np.empty((len(self.NEIGHBOURS), info.rows, info.cols), dtype=img.dtype)
        self._shifted(img, shifted)
        x = shifted.reshape(len(self.NEIGHBOURS), n)
        W, N, NW, NE = (x[i].astype(np.int64) for i in range(4))
        gradient = np.abs(W - NW) + np.abs(N - NW) + np.abs(N - NE)
        side = IntWriter()
        ref = (W + N) >> 1
        pred = np.clip(_Predictor("fast").choose(x, ref, flat, gradient, side), 0, maxv)
        residual = flat - pred
        near = self._shifted_errors(np.abs(residual).reshape(info.rows, info.cols)).ravel()
        west = np.zeros((info.rows, info.cols), dtype=np.int64)
        west[:, 1:] = residual.reshape(info.rows, info.cols)[:, :-1]
        ctx = self._contexts(near, gradient, x, pred, west.ravel(), self._textured(info))
        wf = Wavefront(info.rows, info.cols)
        token, extra, nbits = tokenize(zigzag(residual), MANTISSA)
        order = wf.scan_order()
        enc = Encoder()
        enc.adaptive(token[order], ctx[order], self._tables(info))
        tokens = enc.finish()
        side.put(len(tokens))
        return _join(side, tokens + pack_bits(extra[order], nbits[order]))

    BLOCK_STEPS = 64  # decoder: scan steps whose neighbour indices are computed together

    ERROR_NEIGHBOURS = ("eW", "eN", "eNW", "eNE")

    @classmethod
    def _blocks(cls, wf: Wavefront):
        """(positions, value neighbour indices (6, m), error neighbour indices (4, m)) of
        each scan step, the indices computed and stacked per block of steps."""
        steps = list(wf.diagonals())
        for lo in range(0, len(steps), cls.BLOCK_STEPS):
            block = steps[lo : lo + cls.BLOCK_STEPS]
            nb = wf.neighbours(*(np.concatenate(parts) for parts in zip(*block)))
            values = np.stack([nb[k] for k in cls.NEIGHBOURS])
            errors = np.stack([nb[k] for k in cls.ERROR_NEIGHBOURS])
            at = 0
            for pos, _, _ in block:
                yield pos, values[:, at : at + pos.size], errors[:, at : at + pos.size]
                at += pos.size

    def decode(self, data: bytes, info: PlaneInfo, prev: np.ndarray | None = None) -> np.ndarray:
        side, payload = _split(data)
        maxv = (1 << info.bits) - 1
        predictor = _Predictor("fast")
        model = predictor.read_weights(len(self.NEIGHBOURS), info.rows * info.cols, side)
        n_tokens = side.get()
        if not 0 <= n_tokens <= len(payload):
            raise CorruptRecordError(f"token stream of {n_tokens} bytes in a payload of {len(payload)}")
        tokens = PieceDecoder(Decoder(payload[:n_tokens]), self._tables(info))
        raw = BitReader(payload[n_tokens:])
        wf = Wavefront(info.rows, info.cols)
        res = np.zeros(info.rows * info.cols + 1, dtype=np.int64)  # signed residuals; sentinel 0
        err = np.zeros_like(res)
        textured = self._textured(info)
        lowest, raw_bits = token_lookup(info.bits, MANTISSA)
        for pos, at, eat in self._blocks(wf):
            x = wf.value[at]
            W, N, NW, NE = x[0], x[1], x[2], x[3]
            gradient = np.abs(W - NW) + np.abs(N - NW) + np.abs(N - NE)
            ref = (W + N) >> 1
            pred = np.minimum(np.maximum(ref + predictor.apply(x, ref, gradient, model), 0), maxv)
            e = err[eat]
            near = e[0] + e[1] + ((e[2] + e[3]) >> 1)
            token = tokens.decode(self._contexts(near, gradient, x, pred, res[eat[0]], textured))
            z = lowest[token] + raw.read(raw_bits[token])
            residual = unzigzag(z)
            value = pred + residual
            if value.min(initial=0) < 0 or value.max(initial=0) > maxv:
                raise CorruptRecordError("global path decoded a value outside the stored range")
            wf.value[pos] = value
            res[pos] = residual
            err[pos] = np.abs(residual)
        return wf.value[: info.rows * info.cols].reshape(info.rows, info.cols)


# interlaced-ls-v1 (the `fast` global path before the compiled coders) and raster-wp-v2 on
# the difference to the previous plane.
INTERLACED_LS_DIFF_V1 = register(DifferenceCoder("interlaced-ls-diff-v1", GlobalPathCoder.model_id))
RASTER_WP_DIFF_V2 = register(DifferenceCoder("raster-wp-diff-v2", RasterV2GlobalPathCoder.model_id))


RASTER_WP_DIFF_V3 = register(DifferenceCoder("raster-wp-diff-v3", RasterV3GlobalPathCoder.model_id))
