"""Raster-order global path (weighted predictor, wavefront order) and the per-plane choice."""

import hashlib

import numpy as np
import pytest

import medcodec
from medcodec.coders import coder_for
from medcodec.errors import CorruptRecordError
from medcodec.paths import IntWriter, PlaneInfo, TreeGlobalPathCoder
from medcodec.coders.raster_wp_v4 import RASTER_WP_DIFF_V4, RasterV4GlobalPathCoder
from medcodec.coders.selectors import PER_PLANE_V3, PER_PLANE_V5, PER_PLANE_V6, PER_PLANE_V7, PER_PLANE_V8
from medcodec import ctxtree
from medcodec import wavekernel as wk
from medcodec.paths import token_lookup, tokenize, zigzag
from medcodec.wavekernel import MAX_WEIGHTS, P1C, P2C, P3C
from medcodec.wavefront import (
    MANTISSA,
    RASTER_WP_DIFF_V1,
    LEAF_PREDICTORS,
    LS_MAX_CLASSES,
    LS_MIN_PIXELS,
    LS_NEIGHBOURS,
    RASTER_WP_DIFF_V2,
    RASTER_WP_DIFF_V3,
    RasterGlobalPathCoder,
    RasterLSGlobalPathCoder,
    RasterV2GlobalPathCoder,
    RasterV3GlobalPathCoder,
    Wavefront,
    leaf_predictions,
    leaf_table_arrays,
    ls_feature_count,
    ls_features,
    ls_predict_many,
    ls_predict,
)

from conftest import pydicom_file, smooth_image


def _info(a: np.ndarray, bits: int) -> PlaneInfo:
    return PlaneInfo(rows=a.shape[0], cols=a.shape[1], bits=bits, k=0, preset="max")


def _real_plane(name: str) -> tuple[np.ndarray, int]:
    import pydicom

    ds = pydicom.dcmread(pydicom_file(name))
    a = ds.pixel_array
    a = a[..., 0] if a.ndim == 3 and a.shape[-1] == 3 else a[0] if a.ndim == 3 else a
    a = a.astype(np.int64)
    a -= min(0, int(a.min()))
    return a, max(int(ds.BitsStored), int(a.max()).bit_length())


# --- an independent scalar definition of the predictor, in raster order ---------------------


def _reference_predictions(img: np.ndarray, maxv: int, prev: np.ndarray | None = None) -> np.ndarray:
    """Pure-Python integers, pixel by pixel in raster order: what the wavefront must equal."""
    rows, cols = img.shape
    te = [[0] * cols for _ in range(rows)]
    se = [[[0] * cols for _ in range(rows)] for _ in range(4 if prev is None else 5)]
    out = np.zeros((rows, cols), dtype=np.int64)

    def val(r, c):
        return int(img[r, c]) << 3

    def flog2(x):
        return x.bit_length() - 1

    for y in range(rows):
        for x in range(cols):
            W = val(y, x - 1) if x > 0 else (val(y - 1, x) if y > 0 else 0)
            N = val(y - 1, x) if y > 0 else W
            NW = val(y - 1, x - 1) if x > 0 and y > 0 else W
            NE = val(y - 1, x + 1) if y > 0 and x + 1 < cols else N
            NN = val(y - 2, x) if y > 1 else N
            teW = te[y][x - 1] if x > 0 else 0
            teN = te[y - 1][x] if y > 0 else 0
            teNW = te[y - 1][x - 1] if y > 0 and x > 0 else teN
            teNE = te[y - 1][x + 1] if y > 0 and x + 1 < cols else teN
            subs = [
                W + NE - N,
                N - (((teW + teN + teNE) * P1C) >> 5),
                W - (((teW + teN + teNW) * P2C) >> 5),
                N - ((teNW * P3C[0] + teN * P3C[1] + teNE * P3C[2] + (NN - N) * P3C[3] + (NW - W) * P3C[4]) >> 5),
            ]
            if prev is not None:
                def pv(r, c):
                    return int(prev[r, c]) << 3

                pW = pv(y, x - 1) if x > 0 else (pv(y - 1, x) if y > 0 else 0)
                pN = pv(y - 1, x) if y > 0 else pW
                subs.append(pv(y, x) + (((W - pW) + (N - pN)) >> 1))
            weights = []
            for i, s in enumerate(se):
                e = 0
                if y > 0:
                    e += s[y - 1][x]
                    e += s[y - 1][x + 1] if x + 1 < cols else s[y - 1][x]
                    e += s[y - 1][x - 1] if x > 0 else s[y - 1][x]
                e += s[y][x - 1] if x > 0 else 0
                e += s[y][x - 2] if x > 1 else 0
                shift = max(flog2(e + 1) - 5, 0)
                weights.append(4 + ((MAX_WEIGHTS[i] * ((1 << 24) // ((e >> shift) + 1))) >> shift))
            log_w = flog2(sum(weights))
            weights = [w >> (log_w - 4) for w in weights]
            wsum = sum(weights)
            total = (wsum >> 1) - 1 + sum(p * w for p, w in zip(subs, weights))
            pred8 = (total * ((1 << 24) // wsum)) >> 24
            if not ((teN ^ teW) | (teN ^ teNW)) > 0:
                pred8 = max(min(W, NE, N), min(max(W, NE, N), pred8))
            out[y, x] = min(max((pred8 + 3) >> 3, 0), maxv)
            v8 = val(y, x)
            te[y][x] = pred8 - v8
            for i, s in enumerate(se):
                s[y][x] = (abs(subs[i] - v8) + 3) >> 3
    return out


class _DiagonalDecoder:
    """The decoder's steps (``wavekernel.predict_diagonal`` / ``finish_diagonal``) driven
    with a plane's true values instead of a stream: what it predicts, and which leaf of
    ``tree`` each pixel reaches, diagonal by diagonal."""

    def __init__(self, img: np.ndarray, maxv: int, prev=None, tree=None, table=None):
        self.img, self.maxv, self.prev = img.astype(np.int64), maxv, prev
        self.tree = ctxtree.single_leaf(0) if tree is None else tree
        self.table = table

    def run(self):
        rows, cols = self.img.shape
        wf = Wavefront(rows, cols, self.prev)
        tree, flat = self.tree, self.img.ravel()
        choice, offset, model, weights = leaf_table_arrays(self.table, wf.has_prev)
        lowest, _ = token_lookup(16, MANTISSA)
        k = min(rows, cols // 2 + 1)
        pos, pred, pred8, ctx = (np.empty(k, dtype=np.int64) for _ in range(4))
        sub = np.empty((5, k), dtype=np.int64)
        pred_all = np.zeros(flat.size, dtype=np.int64)
        ctx_all = np.zeros(flat.size, dtype=np.int64)
        for t in range(2 * (rows - 1) + cols):
            m = wk.predict_diagonal(t, rows, cols, wf.value, wf.true_err, wf.sub_err, wf.prev_shift, wf.has_prev,
                                    self.maxv, tree.prop, tree.thr, tree.right, tree.leaf, self.table is not None,
                                    choice, offset, model, weights, pos, pred, pred8, sub, ctx)
            at = pos[:m]
            pred_all[at], ctx_all[at] = pred[:m], ctx[:m]
            token, extra, _ = tokenize(zigzag(flat[at] - pred[:m]), MANTISSA)
            assert wk.finish_diagonal(m, wf.has_prev, self.maxv, pos, pred, pred8, sub, token, np.arange(m), m, extra,
                                      np.empty(m, dtype=np.int64), lowest, wf.value, wf.true_err, wf.sub_err)
        assert np.array_equal(wf.value[: flat.size], flat)
        return pred_all.reshape(rows, cols), ctx_all


def _wavefront_predictions(img: np.ndarray, maxv: int, prev: np.ndarray | None = None, decoder=True) -> np.ndarray:
    if decoder:
        return _DiagonalDecoder(img, maxv, prev).run()[0]
    return Wavefront(*img.shape, prev).analyse(img.astype(np.int64).ravel(), maxv)[0].reshape(img.shape)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (2, 2), (5, 13), (12, 7)])
def test_wavefront_predictions_equal_the_scalar_raster_definition(shape):
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 1 << 12, size=shape)
    img[: shape[0] // 2] //= 64  # flat and textured parts
    prev = rng.integers(0, 1 << 12, size=shape)
    # A previous plane close to the plane: its sub-predictor then weighs in the prediction.
    near = np.clip(img + rng.integers(-2, 3, size=shape), 0, 4095)
    for p in (None, prev, near):
        want = _reference_predictions(img, 4095, p)
        assert np.array_equal(_wavefront_predictions(img, 4095, p), want)
        assert np.array_equal(_wavefront_predictions(img, 4095, p, decoder=False), want)


def test_wavefront_on_a_real_crop_equals_the_scalar_definition():
    a, bits = _real_plane("CT_small.dcm")
    crop = a[20:44, 30:61]
    maxv = (1 << bits) - 1
    want = _reference_predictions(crop, maxv)
    assert np.array_equal(_wavefront_predictions(crop, maxv), want)
    assert np.array_equal(_wavefront_predictions(crop, maxv, decoder=False), want)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (6, 1), (3, 3), (4, 11), (17, 6)])
def test_diagonals_visit_every_pixel_once_after_its_causal_neighbours(shape):
    rows, cols = shape
    wf = Wavefront(rows, cols)
    step = np.full(rows * cols, -1)
    for t, (pos, r, c) in enumerate(wf.diagonals()):
        assert np.array_equal(pos, r * cols + c) and np.all(np.diff(r) > 0)
        assert np.all(step[pos] == -1)
        step[pos] = t
    assert np.all(step >= 0)
    grid = step.reshape(rows, cols)
    for dr, dc in ((0, -1), (-1, -1), (-1, 0), (-1, 1), (0, -2), (-2, 0)):
        for r in range(rows):
            for c in range(cols):
                if 0 <= r + dr < rows and 0 <= c + dc < cols:
                    assert grid[r + dr, c + dc] < grid[r, c]
    assert np.array_equal(wf.scan_order(), np.concatenate([pos for pos, _, _ in wf.diagonals()]))


@pytest.mark.parametrize("shape", [(2, 300), (300, 2), (64, 65), (129, 7)])
def test_scan_order_is_the_diagonals_concatenated(shape):
    wf = Wavefront(*shape)
    assert np.array_equal(wf.scan_order(), np.concatenate([pos for pos, _, _ in wf.diagonals()]))


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (2, 300), (300, 2), (64, 65), (129, 7), (480, 640)])
def test_scan_sample_is_every_step_th_pixel_of_the_scan_order(shape):
    # The tree's learning sample of a large plane, without ordering every pixel (a single
    # column has no pixel on its odd diagonals).
    wf = Wavefront(*shape)
    diagonals = np.concatenate([pos for pos, _, _ in wf.diagonals()])
    for step in (1, 2, 3, 27, wf.rows * wf.cols, 10**6):
        sample = wf.scan_sample(step)
        assert np.array_equal(sample, diagonals[::step])
        # read-only at every step, as the order itself: the kernels that take it are
        # compiled for one kind of array (the warm-up's small planes take the order)
        assert not sample.flags.writeable


def _reference_properties(img: np.ndarray, prev: np.ndarray, pred: np.ndarray, te: np.ndarray) -> np.ndarray:
    """``Wavefront.PROPERTIES`` pixel by pixel in pure Python, from the plane, its previous
    plane, the weighted predictions and the true errors (x8)."""
    rows, cols = img.shape
    out = np.zeros((len(Wavefront.PROPERTIES), img.size), dtype=np.int64)
    for y in range(rows):
        for x in range(cols):
            def at(a, r, c, fallback):
                return int(a[r, c]) if 0 <= r and 0 <= c < cols else fallback

            def nbrs(a):
                W = at(a, y, x - 1, None) if x > 0 else (int(a[y - 1, x]) if y > 0 else 0)
                N = int(a[y - 1, x]) if y > 0 else W
                NW = int(a[y - 1, x - 1]) if y > 0 and x > 0 else W
                NE = int(a[y - 1, x + 1]) if y > 0 and x + 1 < cols else N
                return W, N, NW, NE

            W, N, NW, NE = nbrs(img)
            NN = int(img[y - 2, x]) if y > 1 else N
            WW = int(img[y, x - 2]) if x > 1 else W
            eW = int(te[y, x - 1]) if x > 0 else 0
            eN = int(te[y - 1, x]) if y > 0 else 0
            eNW = int(te[y - 1, x - 1]) if y > 0 and x > 0 else eN
            eNE = int(te[y - 1, x + 1]) if y > 0 and x + 1 < cols else eN
            errs = [eW, eN, eNW, eNE]
            biggest = max(abs(e) for e in errs)
            p = int(pred[y, x])
            pc = int(prev[y, x])
            pW, pN, pNW, pNE = nbrs(prev)
            out[:, y * cols + x] = [
                next(e for e in errs if abs(e) == biggest), sum(abs(e) for e in errs) >> 3, N, W, N - NW, W - NW,
                NE - N, N - NN, W - WW, max(W, N, NW, NE) - min(W, N, NW, NE), y, x, W + N - NW - p,
                pc - (pW + pN - pNW), abs(W - pW) + abs(N - pN) + abs(NW - pNW) + abs(NE - pNE),
                pc + ((W - pW + N - pN) >> 1) - p,
            ]
    return out


def test_properties_match_a_scalar_definition():
    a, bits = _real_plane("CT_small.dcm")
    img = a[10:40, 20:47]
    prev = np.roll(img, 2, axis=0) + 3
    wf = Wavefront(*img.shape, prev)
    pred, _ = wf.analyse(img.ravel(), (1 << bits) - 1)
    got = wf.properties(np.arange(img.size), pred)
    te = wf.true_err[:-1].reshape(img.shape)
    assert np.array_equal(got, _reference_properties(img, prev, pred.reshape(img.shape), te))


def _comb_tree(props: np.ndarray) -> ctxtree.Tree:
    """A tree that asks every property in turn (at its median) until one says "greater"."""
    prop, thr = [], []
    for j in range(props.shape[0]):
        prop += [j, -1]
        thr += [int(np.median(props[j])), 0]
    prop.append(-1)
    thr.append(0)
    prop_a = np.array(prop, dtype=np.int64)
    leaf = np.full(prop_a.size, -1, dtype=np.int64)
    leaf[prop_a < 0] = np.arange(int((prop_a < 0).sum()))
    return ctxtree.Tree(prop=prop_a, thr=np.array(thr, dtype=np.int64), right=ctxtree._right_children(prop_a),
                        leaf=leaf, scales=np.zeros(int((prop_a < 0).sum()), dtype=np.int64))


@pytest.mark.parametrize("coder", [RasterGlobalPathCoder(), RasterV3GlobalPathCoder()])
def test_the_decoders_contexts_and_predictions_equal_the_encoders(coder):
    # A real plane with a previous plane, a tree that reads every property and (v3) a
    # leaf table with fitted predictors: the decoder's step finds every pixel's leaf and
    # final prediction as the encoder's whole-plane passes do.
    a, bits = _real_plane("MR_small.dcm")
    prev = np.roll(a, 3, axis=1)
    maxv = (1 << bits) - 1
    flat, wf, pred, pred8, _, _ = coder._analyse(a, _info(a, bits), prev)
    allpos = np.arange(flat.size)
    tree = _comb_tree(wf.properties(allpos, pred))
    ctx = coder._all_contexts(wf, tree, pred)
    assert np.unique(ctx).size >= 12  # the pixels spread over the comb
    table = None
    want = pred
    if isinstance(coder, RasterV3GlobalPathCoder):
        rng = np.random.default_rng(5)
        n_fixed = len(LEAF_PREDICTORS)
        choice = rng.integers(0, n_fixed + 2, tree.n_leaves)
        offset = rng.integers(-3, 4, tree.n_leaves)
        x, ref = ls_features(wf, allpos, pred8)
        weights = rng.integers(-3000, 3000, (2, x.shape[0]))
        weights[:, 0] += 4096
        # The numpy rules (leaf_predictions, ls_predict) against the compiled ones the
        # encoder uses (wavekernel.fixed_at, RasterV3GlobalPathCoder._final).
        fixed = leaf_predictions(wf.value, wf.neighbours(allpos, *np.divmod(allpos, a.shape[1])), pred, maxv)
        compiled = np.empty_like(fixed)
        wk.fixed_at(allpos, wf.cols, wf.value, wf.true_err, wf.prev_shift, wf.has_prev, pred, maxv, compiled)
        assert np.array_equal(compiled, fixed)
        pick = choice[ctx]
        fitted = pick >= n_fixed
        assert fitted.sum() > 100 and (pick == 0).sum() > 100
        by_features = ls_predict(x, ref, weights, np.maximum(pick - n_fixed, 0), maxv)
        want = np.clip(np.where(fitted, by_features, fixed[np.minimum(pick, n_fixed - 1), allpos]) + offset[ctx], 0, maxv)
        assert np.array_equal(coder._final(choice, offset, ctx, wf, pred, pred8, list(weights), maxv), want)
        # The encoder's leaves and predictions at a sample of pixels (a plane's first tree).
        at = np.sort(rng.choice(flat.size, flat.size // 3, replace=False))
        assert np.array_equal(coder._contexts_of(wf, tree, pred, at), ctx[at])
        assert np.array_equal(coder._final(choice, offset, ctx[at], wf, pred, pred8, list(weights), maxv, at), want[at])
        table = (choice, offset, list(weights))
    got_pred, got_ctx = _DiagonalDecoder(a, maxv, prev, tree, table).run()
    assert np.array_equal(got_ctx, ctx)
    assert np.array_equal(got_pred.ravel(), want)


@pytest.mark.parametrize("shape,bits", [((1, 1), 1), ((1, 40), 16), ((33, 1), 9), ((2, 3), 8), ((19, 23), 16), ((64, 64), 12)])
def test_raster_roundtrip_on_synthetic_planes(shape, bits):
    rng = np.random.default_rng(bits * 100 + shape[0])
    a = rng.integers(0, 1 << bits, size=shape)
    a.flat[:: 3] = (1 << bits) - 1  # extremes
    a.flat[1:: 5] = 0
    info = _info(a, bits)
    for prev in (None, rng.integers(0, 1 << bits, size=shape)):
        data = RasterGlobalPathCoder().encode(a, info, prev)
        assert np.array_equal(RasterGlobalPathCoder().decode(data, info, prev), a)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "OBXXXX1A.dcm"])
def test_raster_roundtrip_on_real_images(name):
    a, bits = _real_plane(name)
    info = _info(a, bits)
    data = RasterGlobalPathCoder().encode(a, info)
    assert np.array_equal(RasterGlobalPathCoder().decode(data, info), a)


def test_raster_path_beats_the_interlaced_path_on_speckle_and_graphics():
    # Scan-converted ultrasound with text overlays: the raster path's home ground
    # (measured: 0.30 vs 0.53 bits per sample on this image).
    a, bits = _real_plane("OBXXXX1A.dcm")
    info = _info(a, bits)
    raster = len(RasterGlobalPathCoder().encode(a, info))
    tree = len(TreeGlobalPathCoder().encode(a, info))
    assert raster < 0.75 * tree


def test_previous_plane_predicts_a_nearly_equal_plane():
    a, bits = _real_plane("OBXXXX1A.dcm")
    second = a.copy()
    second[100:140, 200:260] += 1
    second = np.minimum(second, (1 << bits) - 1)
    info = _info(a, bits)
    with_prev = RasterGlobalPathCoder().encode(second, info, a)
    assert np.array_equal(RasterGlobalPathCoder().decode(with_prev, info, a), second)
    assert len(with_prev) < len(RasterGlobalPathCoder().encode(second, info)) / 3


def test_raster_stream_is_pinned():
    # The stream is part of the record format: a change to the predictor, the order,
    # the properties or the token scheme must show up here (and needs a new model id).
    rng = np.random.default_rng(7)
    base = np.add.outer(np.arange(24) * 9, np.arange(31) * 5)
    a = (base + rng.integers(0, 40, size=base.shape)) % 1024
    data = RasterGlobalPathCoder().encode(a, _info(a, 10), np.roll(a, 1, axis=0))
    assert hashlib.sha256(data).hexdigest()[:16] == "9ce98bc4274e9c2e"


def test_per_plane_coder_keeps_the_smaller_candidate_and_decodes_it():
    coder = PER_PLANE_V3
    for name in ("OBXXXX1A.dcm", "MR_small.dcm"):
        a, bits = _real_plane(name)
        info = _info(a, bits)
        data = coder.encode(a, info)
        sizes = [len(coder_for(c).encode(a, info)) for c in PER_PLANE_V3.candidates[:2]]  # no previous plane
        assert len(data) == 1 + min(sizes)
        assert data[0] == 2 * int(np.argmin(sizes))  # zigzag varint of the index
        assert np.array_equal(coder.decode(data, info), a)


def _rgb(name: str) -> np.ndarray:
    import pydicom

    a = pydicom.dcmread(pydicom_file(name)).pixel_array
    return a.transpose(2, 0, 1).astype(np.int64)


def test_difference_coder_takes_mostly_grey_colour_planes():
    # US1: a colour-Doppler ultrasound screen stored as RGB, grey almost everywhere.
    r, g, b = _rgb("US1_J2KR.dcm")
    info = _info(r, 8)
    coder = PER_PLANE_V3
    chosen = raster = 0
    picks = []
    for plane, prev in ((g, r), (b, g)):
        data = coder.encode(plane, info, prev)
        picks.append(PER_PLANE_V3.chosen_model(data))
        assert np.array_equal(coder.decode(data, info, prev), plane)
        chosen += len(data)
        raster += len(RasterGlobalPathCoder().encode(plane, info, prev))
    # G takes the difference coder; B is closer still to G, where the interlaced path's
    # L1-fitted predictor (previous plane among its features) now codes it smaller.
    assert picks[0] == "raster-wp-diff-v1" and picks[1] in ("raster-wp-diff-v1", "interlaced-tree-v2")
    assert chosen < 0.8 * raster  # measured: 0.369 + 0.276 vs 0.539 + 0.349 bits per sample
    assert PER_PLANE_V3.chosen_model(coder.encode(r, info)) == "raster-wp-v1"


def test_difference_coder_needs_a_previous_plane():
    a, bits = _real_plane("MR_small.dcm")
    info = _info(a, bits)
    data = RASTER_WP_DIFF_V1.encode(a, info, a[::-1].copy())
    with pytest.raises(CorruptRecordError, match="previous plane"):
        RASTER_WP_DIFF_V1.decode(data, info, None)
    w = IntWriter()
    w.put(PER_PLANE_V3.candidates.index(RASTER_WP_DIFF_V1.model_id))
    with pytest.raises(CorruptRecordError, match="previous plane"):
        PER_PLANE_V3.decode(bytes(w.buf) + data, info, None)
    # The extreme differences (0 - max and max - 0) survive the offset.
    hi = np.full((5, 6), (1 << bits) - 1)
    lo = np.zeros((5, 6), dtype=np.int64)
    for plane, prev in ((hi, lo), (lo, hi)):
        small = _info(plane, bits)
        out = RASTER_WP_DIFF_V1.decode(RASTER_WP_DIFF_V1.encode(plane, small, prev), small, prev)
        assert np.array_equal(out, plane)


def test_per_plane_coder_rejects_an_unknown_candidate():
    a, bits = _real_plane("MR_small.dcm")
    info = _info(a, bits)
    data = PER_PLANE_V3.encode(a, info)
    w = IntWriter()
    w.put(len(PER_PLANE_V3.candidates))
    with pytest.raises(CorruptRecordError, match="candidate"):
        PER_PLANE_V3.decode(bytes(w.buf) + data[1:], info)


def _flipped_bytes_fail_cleanly(coder, data: bytes, info: PlaneInfo, seed: int, trials: int) -> None:
    """Flip a byte in the second half of ``data``: decoding fails with CorruptRecordError
    or (a flipped payload byte may still decode) gives a plane within the stored range."""
    rng = np.random.default_rng(seed)
    for _ in range(trials):
        bad = bytearray(data)
        bad[int(rng.integers(len(bad) // 2, len(bad)))] ^= 0xFF
        try:
            out = coder.decode(bytes(bad), info)
        except CorruptRecordError:
            continue
        assert out.shape == (info.rows, info.cols) and out.min() >= 0 and out.max() < (1 << info.bits)


def test_corrupt_raster_streams_fail_cleanly():
    a, bits = _real_plane("MR_small.dcm")
    info = _info(a, bits)
    data = RasterGlobalPathCoder().encode(a, info)
    _flipped_bytes_fail_cleanly(RasterGlobalPathCoder(), data, info, 3, 12)
    with pytest.raises(CorruptRecordError):
        RasterGlobalPathCoder().decode(data[:3], info)


def test_max_records_use_the_per_plane_global_path():
    a, bits = _real_plane("OBXXXX1A.dcm")
    blob = medcodec.compress_pixels(a.astype(np.uint8), bits_stored=8, signed=False, preset="max",
                                    local_model="classical-v1")
    info = medcodec.inspect_record(blob)
    assert info["models"]["global"] == "per-plane-v8"
    assert info["global_planes"] == {"raster-wp-v4": 1}
    assert np.array_equal(medcodec.decompress_pixels(blob), a)


# --- raster-wp-v2: a predictor and an offset per context leaf --------------------------------


def _scalar_leaf_predictions(img: np.ndarray, weighted: np.ndarray, maxv: int) -> np.ndarray:
    """LEAF_PREDICTORS pixel by pixel with the edge rules of ``Wavefront.neighbours``."""
    rows, cols = img.shape
    out = np.zeros((len(LEAF_PREDICTORS), rows, cols), dtype=np.int64)
    for y in range(rows):
        for x in range(cols):
            W = int(img[y, x - 1]) if x > 0 else (int(img[y - 1, x]) if y > 0 else 0)
            N = int(img[y - 1, x]) if y > 0 else W
            NW = int(img[y - 1, x - 1]) if x > 0 and y > 0 else W
            NE = int(img[y - 1, x + 1]) if y > 0 and x + 1 < cols else N
            wp = int(weighted[y, x])
            grad = min(max(W + N - NW, min(W, N)), max(W, N))
            vals = (wp, grad, W, N, (W + N) // 2, (N + NE) // 2, min(max(W + N - NW, 0), maxv), (wp + grad) // 2)
            out[:, y, x] = vals
    return out


def test_leaf_predictions_match_a_scalar_definition():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 1024, (7, 9))
    weighted = rng.integers(0, 1024, (7, 9))
    wf = Wavefront(7, 9)
    wf.value[: wf.zero] = img.ravel()
    pos = np.arange(img.size)
    r, c = np.divmod(pos, 9)
    got = leaf_predictions(wf.value, wf.neighbours(pos, r, c), weighted.ravel(), 1023)
    assert np.array_equal(got.reshape(-1, 7, 9), _scalar_leaf_predictions(img, weighted, 1023))
    assert got.min() >= 0 and got.max() <= 1023


def test_leaf_medians_are_each_leafs_lower_median():
    from medcodec.learnkernel import leaf_medians

    rng = np.random.default_rng(11)
    for trial in range(60):
        n, leaves = int(rng.integers(0, 3000)), int(rng.integers(1, 200))
        residual = [rng.integers(-40, 40, n), rng.integers(-2, 2, n), np.sort(rng.integers(-999, 999, n)),
                    rng.laplace(0, 9, n).astype(np.int64) * (rng.random(n) < 0.3)][trial % 4]
        ctx = rng.integers(0, leaves, n) if trial % 3 else np.sort(rng.integers(0, max(1, leaves // 3), n))
        want = np.zeros(leaves, dtype=np.int64)
        for leaf in range(leaves):
            mine = np.sort(residual[ctx == leaf])
            if mine.size:
                want[leaf] = mine[(mine.size - 1) // 2]
        assert np.array_equal(leaf_medians(residual, ctx, leaves), want)


@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (13, 1), (2, 3), (37, 29)])
def test_raster_v2_round_trips_every_shape(shape):
    rng = np.random.default_rng(sum(shape))
    a = np.cumsum(rng.integers(-3, 4, shape), axis=-1) + 40
    a = np.clip(a, 0, 255)
    info = _info(a, 8)
    for prev in (None, np.clip(a + rng.integers(-2, 3, shape), 0, 255)):
        data = RasterV2GlobalPathCoder().encode(a, info, prev)
        assert np.array_equal(RasterV2GlobalPathCoder().decode(data, info, prev), a)
        diff = RASTER_WP_DIFF_V2.encode(a, info, a if prev is None else prev)
        assert np.array_equal(RASTER_WP_DIFF_V2.decode(diff, info, a if prev is None else prev), a)


def test_raster_v2_codes_real_images_smaller_than_v1():
    # An ultrasound sector (flat padding, speckle): the clamped gradient wins many leaves.
    # Measured on the full held-out OBXXXX1A.dcm: 0.303 -> 0.257 bits per sample.
    a, bits = _real_plane("OBXXXX1A.dcm")
    info = _info(a, bits)
    v1 = RasterGlobalPathCoder().encode(a, info)
    v2 = RasterV2GlobalPathCoder().encode(a, info)
    assert np.array_equal(RasterV2GlobalPathCoder().decode(v2, info), a)
    assert len(v2) < 0.9 * len(v1)
    # The leaves do not all keep the weighted predictor.
    side, _ = __import__("medcodec.paths", fromlist=["_split"])._split(v2)
    from medcodec import ctxtree
    from medcodec.paths import N_BUCKETS

    ctxtree.Tree.read(side, len(RasterV2GlobalPathCoder.PROPERTIES), N_BUCKETS)  # the reader moves past the tree
    picks = [(side.get(), side.get(), side.get())[1] for _ in range(side.get())]
    assert picks and len(set(picks)) > 1


def _with_side_replaced(data: bytes, skip, entries: list[int]) -> bytes:
    """``data`` with the side information that ``skip(side)`` reads after the tree replaced
    by the varints ``entries``."""
    from medcodec import ctxtree
    from medcodec.paths import N_BUCKETS, _join, _split

    side, payload = _split(data)
    ctxtree.Tree.read(side, len(RasterV2GlobalPathCoder.PROPERTIES), N_BUCKETS)
    w = IntWriter()
    w.buf += side.data[: side.at]
    skip(side)
    for v in entries:
        w.put(v)
    w.buf += side.data[side.at :]
    return _join(w, payload)


def _with_leaf_table(data: bytes, entries: list[int]) -> bytes:
    """``data`` (raster-wp-v2) with its leaf table replaced by the varints ``entries``."""

    def skip(side):
        for _ in range(3 * side.get()):
            side.get()

    return _with_side_replaced(data, skip, entries)


def test_raster_v2_refuses_out_of_range_leaf_predictors_and_offsets():
    a, bits = _real_plane("MR_small.dcm")
    info = _info(a, bits)
    data = RasterV2GlobalPathCoder().encode(a, info)
    # A well-formed but different table (leaf 0 takes the clamped gradient) is read; the
    # payload then decodes to other values, which must stay in range or fail cleanly.
    try:
        out = RasterV2GlobalPathCoder().decode(_with_leaf_table(data, [1, 0, 1, 0]), info)
        assert out.shape == a.shape and out.min() >= 0 and out.max() < (1 << bits)
    except CorruptRecordError as exc:
        assert "stored range" in str(exc)
    for bad in ([1, 0, len(LEAF_PREDICTORS), 0], [1, 0, -1, 0], [1, 0, 0, 1 << bits], [1, -1, 0, 0],
                [1, 1 << 20, 0, 0], [1 << 20], [-1], [1, 0, 0, -(1 << 62)]):
        with pytest.raises(CorruptRecordError, match="leaf"):
            RasterV2GlobalPathCoder().decode(_with_leaf_table(data, bad), info)
    _flipped_bytes_fail_cleanly(RasterV2GlobalPathCoder(), data, info, 4, 8)


# --- raster-wp-v3: fitted predictors over a wider causal neighbourhood ----------------------


def test_ls_neighbours_are_decoded_before_the_pixel():
    # Every offset lies on an earlier anti-diagonal t = 2r + c, and so does every edge
    # fallback: checked on every pixel of small planes, with the indices ls_features reads.
    assert all(2 * dr + dc < 0 for dr, dc in LS_NEIGHBOURS) and len(set(LS_NEIGHBOURS)) == len(LS_NEIGHBOURS)
    for rows, cols in ((1, 1), (1, 9), (9, 1), (6, 7), (12, 11)):
        wf = Wavefront(rows, cols)
        pos = np.arange(rows * cols)
        r, c = np.divmod(pos, cols)
        wf.value[: wf.zero] = pos + 1  # value = 1 + flat index; the sentinel reads 0
        x, ref = ls_features(wf, pos, np.zeros(pos.size, dtype=np.int64))
        src = x[: len(LS_NEIGHBOURS)] + ref - 1  # flat index read, or -1 for the sentinel
        t = 2 * r + c
        read = src >= 0
        src_t = 2 * (src // cols) + src % cols
        assert np.all(src_t[read] < np.broadcast_to(t, src.shape)[read])
        inside = [(r + dr >= 0) & (c + dc >= 0) & (c + dc < cols) for dr, dc in LS_NEIGHBOURS]
        for i, (dr, dc) in enumerate(LS_NEIGHBOURS):
            assert np.array_equal(src[i][inside[i]], (pos + dr * cols + dc)[inside[i]])


def test_ls_features_and_prediction_match_a_scalar_definition():
    rng = np.random.default_rng(11)
    rows, cols = 9, 10
    img = rng.integers(0, 4096, (rows, cols))
    prev = rng.integers(0, 4096, (rows, cols))
    wf = Wavefront(rows, cols, prev)
    wf.value[: wf.zero] = img.ravel()
    wf.true_err[:-1] = rng.integers(-900, 900, rows * cols)
    pos = np.arange(rows * cols)
    r, c = np.divmod(pos, cols)
    pred8 = rng.integers(0, 8 * 4096, pos.size)
    nb = wf.neighbours(pos, r, c)
    x, ref = ls_features(wf, pos, pred8)
    assert x.shape == (ls_feature_count(True), pos.size)
    xf, ref_f = ls_features(wf, pos, pred8, np.float64)  # the encoder's: the same integers as floats
    assert xf.dtype == np.float64 and np.array_equal(xf, x) and np.array_equal(ref_f, ref)
    weights = rng.integers(-5000, 5000, (3, x.shape[0]))
    cls = rng.integers(0, 3, pos.size)
    got = ls_predict(x, ref, weights, cls, 4095)
    many = ls_predict_many(xf, ref, weights, 4095)  # every class's prediction at every pixel
    assert np.array_equal(many[cls, pos], got)
    made = np.empty(pos.size, dtype=np.int64)  # the compiled prediction, without the features
    wk.fitted_at(pos, cls, cols, wf.value, wf.true_err, wf.prev_shift, True, pred8, weights, 4095, made)
    assert np.array_equal(made, got)
    v, te, p = wf.value, wf.true_err, np.append(prev.ravel(), 0)
    for i in range(pos.size):
        y, xx = int(r[i]), int(c[i])
        base = (int(v[nb["W"][i]]) + int(v[nb["N"][i]])) // 2
        feats = []
        for dr, dc in LS_NEIGHBOURS:
            rr, cc = y + dr, xx + dc
            src = rr * cols + cc if rr >= 0 and 0 <= cc < cols else (nb["N"] if dc >= 0 else nb["W"])[i]
            feats.append(int(v[src]) - base)
        feats.append(int(pred8[i]) - 8 * base)
        feats += [int(te[nb[k][i]]) for k in ("eW", "eN", "eNW", "eNE")]
        feats.append(int(p[i]) - (int(p[nb["W"][i]]) + int(p[nb["N"][i]])) // 2)
        assert feats == list(x[:, i])
        dot = sum(int(w) * f for w, f in zip(weights[cls[i]], feats))
        assert got[i] == min(max(base + ((dot + 2048) >> 12), 0), 4095)


@pytest.mark.parametrize("coder,diff", [(RasterV3GlobalPathCoder(), RASTER_WP_DIFF_V3),
                                        (RasterV4GlobalPathCoder(), RASTER_WP_DIFF_V4)], ids=["v3", "v4"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (13, 1), (2, 3), (37, 29), (64, 70)])
def test_raster_v3_and_v4_round_trip_every_shape(shape, coder, diff):
    rng = np.random.default_rng(sum(shape) + 1)
    a = np.clip(np.cumsum(rng.integers(-3, 4, shape), axis=-1) + 40 + rng.integers(0, 3, shape), 0, 255)
    info = _info(a, 8)
    for prev in (None, np.clip(a + rng.integers(-2, 3, shape), 0, 255)):
        data = coder.encode(a, info, prev)
        assert np.array_equal(coder.decode(data, info, prev), a)
        other = a if prev is None else prev
        assert np.array_equal(diff.decode(diff.encode(a, info, other), info, other), a)


def _v3_models(data: bytes, info: PlaneInfo, prev=None):
    """(fitted predictors' weights, leaf table entries) of a raster-wp-v3 stream."""
    from medcodec import ctxtree
    from medcodec.paths import N_BUCKETS, _split

    side, _ = _split(data)
    ctxtree.Tree.read(side, len(RasterV3GlobalPathCoder.PROPERTIES), N_BUCKETS)
    models = RasterV3GlobalPathCoder()._read_models(side, info, prev)
    return models, [(side.get(), side.get(), side.get()) for _ in range(side.get())]


def test_raster_v3_codes_correlated_noise_smaller_than_v2():
    # MR with noise correlated over a few pixels: the wider neighbourhood averages it.
    # Measured on the full held-out MR2_J2KR.dcm: raster-wp-v2 569,596 -> v3 520,804 bytes.
    a, bits = _real_plane("MR2_J2KR.dcm")
    a = a[448:576, 448:576]
    info = _info(a, bits)
    v2 = RasterV2GlobalPathCoder().encode(a, info)
    v3 = RasterV3GlobalPathCoder().encode(a, info)
    assert np.array_equal(RasterV3GlobalPathCoder().decode(v3, info), a)
    assert len(v3) < 0.95 * len(v2)
    models, table = _v3_models(v3, info)
    assert len(models) >= 1 and any(pick >= len(LEAF_PREDICTORS) for _, pick, _ in table)


_V3_SCRIPT = """
import sys, numpy as np
import medcodec.wavefront as wf
from medcodec.paths import PlaneInfo
a = np.frombuffer(sys.stdin.buffer.read(), dtype=np.int64).reshape({shape})
wf.LS_SAMPLE = {sample}
info = PlaneInfo(rows=a.shape[0], cols=a.shape[1], bits={bits}, k=0, preset="max")
sys.stdout.buffer.write({action})
"""


def _v3_subprocess(a, bits, sample, action, data, threads="1"):
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    script = _V3_SCRIPT.format(shape=a.shape, sample=sample, bits=bits, action=action)
    return subprocess.run([sys.executable, "-c", script], input=data, capture_output=True, env=env, check=True).stdout


@pytest.mark.parametrize("sample", [1 << 18, 1 << 11])
def test_raster_v3_same_bytes_with_1_or_2_threads_and_decodes_in_another_process(sample, monkeypatch):
    # The fitted predictors' sampled candidates use a float64 matrix product (BLAS): exact
    # on integers, so the bytes may not depend on threads. 1 << 11: the strided sample.
    import medcodec.wavefront as wf

    a, bits = _real_plane("MR2_J2KR.dcm")
    a = np.ascontiguousarray(a[448:576, 448:576])
    info = _info(a, bits)
    monkeypatch.setattr(wf, "LS_SAMPLE", sample)
    data = RasterV3GlobalPathCoder().encode(a, info)
    assert len(_v3_models(data, info)[0]) >= 1
    for threads in ("1", "2"):
        assert _v3_subprocess(a, bits, sample, "wf.RasterV3GlobalPathCoder().encode(a, info)", a.tobytes(), threads) == data
    back = _decode_v3_elsewhere(data, a.shape, bits)
    assert np.array_equal(np.frombuffer(back, dtype=np.int64).reshape(a.shape), a)


def _decode_v3_elsewhere(data: bytes, shape, bits: int, coder: str = "medcodec.wavefront.RasterV3GlobalPathCoder") -> bytes:
    import subprocess
    import sys

    module, name = coder.rsplit(".", 1)
    script = (
        "import sys, numpy as np\n"
        "from medcodec.paths import PlaneInfo\n"
        f"from {module} import {name} as Coder\n"
        f"info = PlaneInfo(rows={shape[0]}, cols={shape[1]}, bits={bits}, k=0, preset='max')\n"
        "out = Coder().decode(sys.stdin.buffer.read(), info)\n"
        "sys.stdout.buffer.write(np.ascontiguousarray(out, dtype=np.int64).tobytes())\n"
    )
    return subprocess.run([sys.executable, "-c", script], input=data, capture_output=True, check=True).stdout


def test_raster_v3_fits_no_predictor_on_small_planes():
    a, bits = _real_plane("MR_small.dcm")
    a = a[:40, :50]
    assert a.size < LS_MIN_PIXELS
    info = _info(a, bits)
    data = RasterV3GlobalPathCoder().encode(a, info)
    assert len(_v3_models(data, info)[0]) == 0
    assert np.array_equal(RasterV3GlobalPathCoder().decode(data, info), a)


def _with_v3_models(data: bytes, info: PlaneInfo, entries: list[int]) -> bytes:
    """``data`` (raster-wp-v3) with its fitted predictors replaced by the varints ``entries``."""
    return _with_side_replaced(data, lambda side: RasterV3GlobalPathCoder()._read_models(side, info, None), entries)


def test_raster_v3_refuses_bad_fitted_predictors():
    a, bits = _real_plane("MR2_J2KR.dcm")
    a = a[480:544, 480:544]
    info = _info(a, bits)
    data = RasterV3GlobalPathCoder().encode(a, info)
    models, table = _v3_models(data, info)
    assert len(models) >= 1 and table
    f = ls_feature_count(False)
    with pytest.raises(CorruptRecordError, match="fitted predictors"):
        RasterV3GlobalPathCoder().decode(_with_v3_models(data, info, [LS_MAX_CLASSES + 1]), info)
    with pytest.raises(CorruptRecordError, match="fitted predictors"):
        RasterV3GlobalPathCoder().decode(_with_v3_models(data, info, [-1]), info)
    with pytest.raises(CorruptRecordError, match="weight"):
        RasterV3GlobalPathCoder().decode(_with_v3_models(data, info, [1] + [1 << 20] * f), info)
    # No fitted predictor left: a leaf that picks one names a predictor out of range.
    with pytest.raises(CorruptRecordError, match="leaf"):
        RasterV3GlobalPathCoder().decode(_with_v3_models(data, info, [0]), info)
    _flipped_bytes_fail_cleanly(RasterV3GlobalPathCoder(), data, info, 5, 8)


@pytest.mark.parametrize("selector", [PER_PLANE_V5, PER_PLANE_V6, PER_PLANE_V7], ids=lambda s: s.model_id)
def test_per_plane_coders_keep_the_smallest_candidate(selector):
    r, g, _ = _rgb("US1_J2KR.dcm")
    r, g = r[100:196, 100:228], g[100:196, 100:228]
    info = _info(r, 8)
    for plane, prev in ((r, None), (g, r)):
        data = selector.encode(plane, info, prev)
        n = 3 if prev is not None else 2  # the difference coder needs a previous plane
        sizes = [len(coder_for(c).encode(plane, info, prev)) for c in selector.candidates[:n]]
        assert len(data) == 1 + min(sizes)
        assert np.array_equal(selector.decode(data, info, prev), plane)
    assert selector.chosen_model(data).startswith(("raster-wp-diff-", "interlaced-tree-"))


def test_candidate_leaf_costs_equal_the_numpy_costs_of_each_candidate():
    import medcodec.wavefront as wfm
    from medcodec.paths import tokenize, zigzag

    rng = np.random.default_rng(4)
    bits, n, leaves = 12, 20000, 9
    flat = rng.integers(0, 1 << bits, n)
    preds = np.clip(flat[None] + rng.laplace(0, [[3], [40], [900]], (3, n)).astype(np.int64), 0, (1 << bits) - 1)
    ctx = rng.integers(0, leaves, n)
    got = wfm._candidate_leaf_costs(preds, flat, ctx, leaves, bits)
    for k in range(3):
        want = wfm._leaf_costs(*tokenize(zigzag(flat - preds[k]), MANTISSA)[::2], ctx, leaves)
        assert np.array_equal(got[k], want)
    with pytest.raises(IndexError):  # a leaf the table has no row for
        wfm._candidate_leaf_costs(preds, flat, ctx, leaves - 1, bits)
    with pytest.raises(IndexError):  # residuals wider than the alphabet
        wfm._candidate_leaf_costs(preds, flat, ctx, leaves, bits - 4)


def test_class_columns_are_numpys_blocks_of_each_class_taken_as_the_fits_take_them():
    import medcodec.wavefront as wfm

    rng = np.random.default_rng(8)
    x = rng.random((7, 5000))
    cls = rng.integers(0, 4, 5000)
    cls[cls == 2] = 0  # class 2 empty: no block
    cls[np.flatnonzero(cls == 3)[20:]] = 1  # class 3 too small to fit (20 < 4 per feature): none
    blocks = wfm._class_columns(x, cls, 4)
    assert [j for j, _, _ in blocks] == [0, 1]
    for j, members, block in blocks:
        assert np.array_equal(members, np.flatnonzero(cls == j))  # under LS_FIT_ROWS: every member
        assert block.flags.c_contiguous and np.array_equal(block, x[:, members])
    many = np.zeros(3 * wfm.LS_FIT_ROWS + 5, dtype=np.int64)  # one class over LS_FIT_ROWS: every 3rd
    (j, members, block), = wfm._class_columns(rng.random((2, many.size)), many, 1)
    assert np.array_equal(members, np.arange(0, many.size, 3))
    assert block.shape == (2, members.size) and block.flags.c_contiguous


def test_max_tries_the_difference_coder_on_planes_mostly_equal_to_their_previous_plane():
    r, g, _ = _rgb("US1_J2KR.dcm")
    r, g = r[100:196, 100:228], g[100:196, 100:228]
    assert np.count_nonzero(g == r) >= 0.5 * g.size  # grey ultrasound: R and G agree
    assert 2 in PER_PLANE_V7.choose(g, r) and 2 in PER_PLANE_V6.choose(g, r)
    other = np.roll(r, 7, axis=1)  # a previous plane it does not follow pixel for pixel
    assert 2 not in PER_PLANE_V7.choose(g, other) and 1 in PER_PLANE_V7.choose(g, other)
    assert 2 in PER_PLANE_V6.choose(g, other)  # v6's rule, as its records were written
    assert 2 not in PER_PLANE_V7.choose(g, None)


# --- per-plane-v8: wavelet53-v2 on every plane, the paths screened on a crop -----------------


def test_v8_tries_the_wavelet_path_always_and_the_difference_coder_on_mostly_equal_planes():
    from medcodec.coders import selectors

    r, g, _ = _rgb("US1_J2KR.dcm")
    r, g = r[100:196, 100:228], g[100:196, 100:228]
    # under the screen's size, and TREE_GAP_MIN_SAMPLES or more: the raster path, not the tree path
    assert r.size >= selectors.TREE_GAP_MIN_SAMPLES
    assert PER_PLANE_V8.choose(r, None) == (1, 3)
    assert PER_PLANE_V8.choose(g, r) == (1, 2, 3)
    assert PER_PLANE_V8.choose(g, np.roll(r, 7, axis=1)) == (1, 3)
    small_r, small_g = r[:48, :64].copy(), g[:48, :64].copy()  # under TREE_GAP_MIN_SAMPLES: both paths
    assert small_r.size < selectors.TREE_GAP_MIN_SAMPLES
    assert PER_PLANE_V8.choose(small_r, None) == (0, 1, 3)
    assert PER_PLANE_V8.choose(small_g, small_r) == (0, 1, 2, 3)
    for plane, prev in ((r, None), (g, r), (small_r, None), (small_g, small_r)):
        info = _info(plane, 8)
        data = PER_PLANE_V8.encode(plane, info, prev)
        sizes = [len(coder_for(PER_PLANE_V8.candidates[i]).encode(plane, info, prev)) for i in PER_PLANE_V8.choose(plane, prev)]
        assert len(data) == 1 + min(sizes)
        assert np.array_equal(PER_PLANE_V8.decode(data, info, prev), plane)


def _upsampled(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)


@pytest.mark.parametrize("name", ["MR2_UNCI.dcm", pytest.param("OBXXXX1A.dcm", marks=pytest.mark.slow)])
def test_v8_screen_codes_in_full_only_what_the_crop_does_not_rule_out(name, monkeypatch):
    # An MR crop upsampled to 512 x 512 (smooth: the tree path wins) and an ultrasound
    # frame (600 x 800, speckle: the raster path wins); the screen keeps the one that wins
    # in full, not the wavelet path (its crop stream is 2.6 to 3.7 times the winner's, and
    # it loses in full), and the wavelet path too where its margin is wide enough.
    from medcodec.coders import selectors

    a, bits = _real_plane(name)
    plane = _upsampled(a[384:640, 384:640]) if name.startswith("MR2") else a
    assert plane.size >= selectors.TREE_SCREEN_MIN_SAMPLES
    info = _info(plane, bits)
    sizes = [len(coder_for(PER_PLANE_V8.candidates[i]).encode(plane, info)) for i in (0, 1, 3)]
    winner = int(np.argmin(sizes[:2]))
    assert abs(sizes[0] - sizes[1]) > 0.1 * min(sizes)  # a clear case
    assert sizes[2] > 1.1 * min(sizes)  # the wavelet path loses in full
    assert selectors._screen(plane, None) == (winner,)
    data = PER_PLANE_V8.encode(plane, info)
    assert PER_PLANE_V8.chosen_model(data) == PER_PLANE_V8.candidates[winner]
    assert len(data) == 1 + min(sizes)
    assert np.array_equal(PER_PLANE_V8.decode(data, info), plane)
    monkeypatch.setattr(selectors, "WAVELET_SCREEN_MARGIN", 10.0)
    assert selectors._screen(plane, None) == (winner, 3)
    monkeypatch.setattr(selectors, "TREE_SCREEN_MIN_SAMPLES", plane.size + 1)
    assert selectors._screen(plane, None) == (1, 3)
    monkeypatch.setattr(selectors, "TREE_GAP_MIN_SAMPLES", plane.size + 1)
    assert selectors._screen(plane, None) == (0, 1, 3)


def test_v8_screens_the_difference_coder_on_a_plane_mostly_equal_to_its_previous():
    # A textured plane that repeats its previous one but for a small patch (the difference
    # coder wins), and a smooth plane whose previous one has 40% of its pixels replaced by
    # noise (it loses): the crop decides, and the whole planes agree.
    from medcodec.coders import selectors

    rng = np.random.default_rng(5)
    textured = smooth_image(512, 512, 8, seed=4, noise=6.0).astype(np.int64)
    patched = textured.copy()
    patched[100:140, 100:200] = np.minimum(patched[100:140, 100:200] + 3, 255)
    smooth = smooth_image(512, 512, 8, seed=6, noise=0.0).astype(np.int64)
    noisy = smooth.copy()
    hit = rng.random(smooth.shape) < 0.4
    noisy[hit] = rng.integers(0, 256, int(hit.sum()))
    diff_coder = coder_for(PER_PLANE_V8.candidates[2])
    for plane, prev, wins in ((patched, textured, True), (smooth, noisy, False)):
        assert plane.size >= selectors.TREE_SCREEN_MIN_SAMPLES and selectors._mostly_equal(plane, prev)
        crops: dict = {}
        paths = selectors._screen(plane, prev, crops)
        diff = len(diff_coder.encode(crops["crop"], crops["info"], crops["prev"]))
        others = min(crops[i] for i in (0, 1, 3))
        margin = 1 + selectors.DIFF_SCREEN_MARGIN
        assert (diff * margin < others) if wins else (diff > others * margin)
        assert selectors._v8_choice(plane, prev) == ((2,) if wins else paths)
        info = _info(plane, 8)
        full = {i: len(coder_for(PER_PLANE_V8.candidates[i]).encode(plane, info, prev)) for i in (*paths, 2)}
        assert (min(full, key=full.get) == 2) == wins
    with pytest.MonkeyPatch.context() as mp:  # a margin no crop clears: both kept
        mp.setattr(selectors, "DIFF_SCREEN_MARGIN", 100.0)
        assert selectors._v8_choice(smooth, noisy) == tuple(sorted(paths + (2,)))


def test_v8_screen_codes_the_tree_paths_crop_as_it_codes_a_screened_plane():
    # A screened plane (over SMALL_PLANE pixels) takes the learned tree alone; the crop
    # (SMALL_PLANE pixels or fewer) is coded the same way, not also with the fixed contexts: an
    # interlaced-tree-v2 stream in mode 1, which the registered coder decodes.
    from medcodec.coders import selectors
    from medcodec.paths import _split

    plane, bits = _real_plane("MR2_UNCI.dcm")
    crop = np.ascontiguousarray(plane[selectors._centre(plane.shape, selectors.TREE_SCREEN_CROP, 2)])
    assert crop.size <= TreeGlobalPathCoder.SMALL_PLANE
    info = _info(crop, bits)
    data = selectors._ScreenTree().encode(crop, info)
    side, _ = _split(data)
    assert side.get() == 1  # the mode: the learned tree
    assert len(data) == len(TreeGlobalPathCoder().encode(crop, info))  # it wins here anyway, as on every crop measured
    assert np.array_equal(TreeGlobalPathCoder().decode(data, info), crop)


def test_v8_screen_leaves_a_decoded_lossy_jpeg2000_plane_to_the_wavelet_path(monkeypatch):
    # 693_UNCI: a CT stored decoded from lossy JPEG 2000; the wavelet path's crop is a
    # fifth of the others', and in full it is smaller than both by far.
    from medcodec.coders import selectors

    plane, bits = _real_plane("693_UNCI.dcm")
    assert plane.size >= selectors.TREE_SCREEN_MIN_SAMPLES
    info = _info(plane, bits)
    assert selectors._screen(plane, None) == (3,)
    data = PER_PLANE_V8.encode(plane, info)
    assert PER_PLANE_V8.chosen_model(data) == "wavelet53-v2"
    assert np.array_equal(PER_PLANE_V8.decode(data, info), plane)
    others = [len(coder_for(PER_PLANE_V8.candidates[i]).encode(plane, info)) for i in (0, 1)]
    assert len(data) < min(others) / 4
    monkeypatch.setattr(selectors, "TREE_SCREEN_MARGIN", 10.0)  # a margin no crop clears
    assert selectors._screen(plane, None) == (0, 3)  # the smaller crop of tree and raster, and the wavelet path


# --- raster-wp-v4: raster-wp-v3's model, coded inside the kernel ----------------------------


@pytest.mark.parametrize("bits", [1, 12, 16])
def test_raster_v4_round_trips_extreme_values(bits):
    # Residuals of every size (the whole token alphabet and its raw bits) and constant planes.
    rng = np.random.default_rng(bits)
    maxv = (1 << bits) - 1
    for a in (rng.integers(0, maxv + 1, (23, 31)), np.full((9, 12), maxv), np.zeros((5, 7), dtype=np.int64)):
        info = _info(a, bits)
        data = RasterV4GlobalPathCoder().encode(a, info)
        assert np.array_equal(RasterV4GlobalPathCoder().decode(data, info), a)


def test_raster_v4_keeps_v3s_model_and_side_information():
    # The same encoder decisions (tree, fitted predictors, leaf table): only the payload's
    # coding differs, and it codes the same tokens in about as many bytes.
    from medcodec.paths import _split

    a, bits = _real_plane("MR2_J2KR.dcm")
    a = a[448:576, 448:576]
    prev = np.roll(a, 1, axis=0)
    info = _info(a, bits)
    for p in (None, prev):
        v3 = RasterV3GlobalPathCoder().encode(a, info, p)
        v4 = RasterV4GlobalPathCoder().encode(a, info, p)
        assert _split(v4)[0].data == _split(v3)[0].data
        assert abs(len(v4) / len(v3) - 1) < 0.02
        assert np.array_equal(RasterV4GlobalPathCoder().decode(v4, info, p), a)
    assert len(_v3_models(v4, info, prev)[0]) >= 1


def test_raster_v4_same_bytes_with_1_or_2_threads_and_decodes_in_another_process():
    a, bits = _real_plane("MR2_J2KR.dcm")
    a = np.ascontiguousarray(a[448:576, 448:576])
    info = _info(a, bits)
    data = RasterV4GlobalPathCoder().encode(a, info)
    action = "__import__('medcodec.coders.raster_wp_v4', fromlist=['_']).RasterV4GlobalPathCoder().encode(a, info)"
    for threads in ("1", "2"):
        assert _v3_subprocess(a, bits, 1 << 18, action, a.tobytes(), threads) == data
    back = _decode_v3_elsewhere(data, a.shape, bits, "medcodec.coders.raster_wp_v4.RasterV4GlobalPathCoder")
    assert np.array_equal(np.frombuffer(back, dtype=np.int64).reshape(a.shape), a)


def test_raster_v4_starts_a_planes_fits_from_its_previous_planes_models(monkeypatch):
    # Given the dict an image's codings share (``fits``, kept by coders._kept_stream), a plane
    # after its previous plane refines that plane's models in one round of fits, each from
    # one of them (its own previous-plane feature at weight 0), and decodes; without the
    # dict its fits start from least squares.
    from medcodec import wavefront

    a, bits = _real_plane("MR2_J2KR.dcm")
    first = np.ascontiguousarray(a[384:640, 384:640])
    second = np.ascontiguousarray(a[392:648, 384:640])
    info = _info(first, bits)
    starts = []
    real = wavefront._fit

    def spy(*args, init=None, **kwargs):
        starts.append(init)
        return real(*args, init=init, **kwargs)

    monkeypatch.setattr(wavefront, "_fit", spy)
    fits = {}
    RasterV4GlobalPathCoder().encode(first, info, None, fits=fits)
    kept = fits[wavefront._fits_key(first, info)]
    assert len(kept) >= 2 and starts[0] is None
    starts.clear()
    data = RasterV4GlobalPathCoder().encode(second, info, first, fits=fits)
    assert 1 <= len(starts) <= len(kept)
    assert all(s is not None and s[-1] == 0 and any(np.array_equal(s[:-1], w) for w in kept) for s in starts)
    assert wavefront._fits_key(second, info) in fits
    assert np.array_equal(RasterV4GlobalPathCoder().decode(data, info, first), second)
    starts.clear()
    RasterV4GlobalPathCoder().encode(second, info, first)
    assert any(s is None for s in starts)


def test_corrupt_raster_v4_streams_fail_cleanly():
    a, bits = _real_plane("MR2_J2KR.dcm")
    a = a[480:544, 480:544]
    info = _info(a, bits)
    data = RasterV4GlobalPathCoder().encode(a, info)
    _flipped_bytes_fail_cleanly(RasterV4GlobalPathCoder(), data, info, 5, 40)
    for cut in (3, len(data) // 2):
        try:
            out = RasterV4GlobalPathCoder().decode(data[:cut], info)
        except CorruptRecordError:
            continue
        assert out.min() >= 0 and out.max() <= (1 << bits) - 1
    with pytest.raises(CorruptRecordError, match="fitted predictors"):
        RasterV4GlobalPathCoder().decode(_with_v3_models(data, info, [LS_MAX_CLASSES + 1]), info)


# --- records of several planes: each plane after its previous plane ----------------------


def _forced(selector, index: int, plane, info, prev) -> bytes:
    """A per-plane stream that names candidate ``index`` of ``selector``."""
    head = IntWriter()
    head.put(index)
    return bytes(head.buf) + coder_for(selector.candidates[index]).encode(plane, info, prev)


def _frames(count: int) -> list[np.ndarray]:
    """Frames of a real MR series (emri_small: 64 x 64, 12 bits)."""
    import pydicom

    a = pydicom.dcmread(pydicom_file("emri_small.dcm")).pixel_array.astype(np.int64)
    return [a[f % a.shape[0]] for f in range(count)]


# (candidate per plane, previous plane per plane): v6's, v7's and v8's candidates are 0 tree,
# 1 the raster coder (raster-wp-v3, raster-wp-v4), 2 its difference form, 3 wavelet.
PLANE_CASES = {
    "cine": ([1, 1, 1, 1], [None, 0, 1, 2]),
    "colour": ([1, 2, 2], [None, 0, 1]),
    "raster after difference": ([1, 2, 1, 1], [None, 0, 1, 2]),
    "tree in between": ([1, 0, 1, 1], [None, 0, 1, 2]),
    "colour cine": ([1, 2, 2, 1, 2, 2], [None, 0, 1, 0, 3, 4]),  # (f, 0) follows (f - 1, 0)
}


@pytest.mark.parametrize("selector", [PER_PLANE_V6, PER_PLANE_V7, PER_PLANE_V8], ids=lambda s: s.model_id)
@pytest.mark.parametrize("case", sorted(PLANE_CASES))
def test_decode_planes_follows_each_planes_previous_plane(case, selector):
    picks, prev_of = PLANE_CASES[case]
    frames = _frames(len(picks))
    info = _info(frames[0], 12)
    streams = [_forced(selector, k, frames[i], info, None if p is None else frames[p])
               for i, (k, p) in enumerate(zip(picks, prev_of))]
    chosen = [selector._choice(data) for data in streams]
    raster = coder_for(selector.candidates[1])
    assert case != "cine" or any(c == raster.model_id and raster.parse(data[at:], info, p).table
                                 for (c, at), data, p in zip(chosen, streams, prev_of))  # fitted predictors
    got = selector.decode_planes(streams, info, prev_of)
    assert all(np.array_equal(a, b) for a, b in zip(got, frames))


def test_max_records_of_several_frames_decode():
    # A cine whose frames take the raster path (each after the one before) decodes to its frames.
    frames = np.stack(_frames(3))
    blob = medcodec.compress_pixels(frames.astype(np.uint16), bits_stored=12, signed=False, preset="max")
    assert np.array_equal(medcodec.decompress_pixels(blob), frames)


# --- raster-ls-v1 (`fast`): a fitted causal linear predictor, one step -----------------------


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (2, 2), (3, 5), (11, 8)])
def test_raster_ls_shifted_neighbours_equal_the_wavefront_rules(shape):
    rng = np.random.default_rng(shape[0] * 31 + shape[1])
    img = rng.integers(0, 4096, shape)
    out = np.empty((6, *shape), dtype=np.int64)
    RasterLSGlobalPathCoder._shifted(img, out)
    wf = Wavefront(*shape)
    wf.value[: wf.zero] = img.ravel()
    pos = np.arange(img.size)
    r, c = np.divmod(pos, shape[1])
    nb = wf.neighbours(pos, r, c)
    for i, key in enumerate(RasterLSGlobalPathCoder.NEIGHBOURS):
        assert np.array_equal(out[i].ravel(), wf.value[nb[key]]), key
    err = np.zeros(img.size + 1, dtype=np.int64)
    err[:-1] = rng.integers(0, 50, img.size)
    want = err[nb["eW"]] + err[nb["eN"]] + ((err[nb["eNW"]] + err[nb["eNE"]]) >> 1)
    assert np.array_equal(RasterLSGlobalPathCoder._shifted_errors(err[:-1].reshape(shape)).ravel(), want)


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (9, 13), (40, 37)])
def test_raster_ls_round_trips_every_shape(shape):
    rng = np.random.default_rng(sum(shape))
    a = np.clip(np.cumsum(rng.integers(-5, 6, shape), axis=-1) + 200, 0, 1023)
    info = _info(a, 10)
    data = RasterLSGlobalPathCoder().encode(a, info)
    assert np.array_equal(RasterLSGlobalPathCoder().decode(data, info), a)
    for bits, value in ((1, 1), (16, (1 << 16) - 1)):
        const = np.full(shape, value)
        small = _info(const, bits)
        assert np.array_equal(RasterLSGlobalPathCoder().decode(RasterLSGlobalPathCoder().encode(const, small), small), const)


def test_raster_ls_texture_contexts_round_trip_on_large_planes():
    from medcodec.wavefront import TEXTURE_MIN_PIXELS

    rng = np.random.default_rng(21)
    a = np.clip(np.cumsum(rng.integers(-4, 5, (256, 513)), axis=1) + 128, 0, 255)
    assert a.size >= TEXTURE_MIN_PIXELS
    info = _info(a, 8)
    data = RasterLSGlobalPathCoder().encode(a, info)
    assert np.array_equal(RasterLSGlobalPathCoder().decode(data, info), a)


def test_raster_ls_codes_ct_and_ultrasound_smaller_than_the_interlaced_fast_path():
    from medcodec.paths import GlobalPathCoder

    # Measured on the held-out images: 693_J2KR 3.22 -> 2.92 bits per sample, OBXXXX1A
    # 0.476 -> 0.376; here on pydicom's CT_small and a crop of OBXXXX1A.
    for name, crop in (("CT_small.dcm", np.s_[:, :]), ("OBXXXX1A.dcm", np.s_[100:356, 200:456])):
        a, bits = _real_plane(name)
        a = a[crop]
        info = PlaneInfo(rows=a.shape[0], cols=a.shape[1], bits=bits, k=0, preset="fast")
        raster = RasterLSGlobalPathCoder().encode(a, info)
        assert np.array_equal(RasterLSGlobalPathCoder().decode(raster, info), a)
        assert len(raster) < 0.97 * len(GlobalPathCoder().encode(a, info)), name


def test_corrupt_raster_ls_streams_fail_cleanly():
    from medcodec.paths import _join, _split

    a, bits = _real_plane("MR_small.dcm")
    info = _info(a, bits)
    data = RasterLSGlobalPathCoder().encode(a, info)
    side, payload = _split(data)
    head = bytearray(side.data)
    # The token stream's length is the last varint of the side information.
    for length in (len(payload) + 1, -1):
        w = IntWriter()
        w.buf += head[:-2] if head[-2] & 0x80 else head[:-1]
        w.put(length)
        with pytest.raises(CorruptRecordError, match="token stream"):
            RasterLSGlobalPathCoder().decode(_join(w, payload), info)
    with pytest.raises(CorruptRecordError):
        RasterLSGlobalPathCoder().decode(data[: len(data) - len(payload) // 2 - 3], info)
    _flipped_bytes_fail_cleanly(RasterLSGlobalPathCoder(), data, info, 8, 10)


def test_fast_v2_keeps_the_interlaced_path_for_very_large_planes(monkeypatch):
    from medcodec.coders import selectors
    from medcodec.coders.selectors import FAST_V2 as fast

    a, bits = _real_plane("CT_small.dcm")
    info = PlaneInfo(rows=a.shape[0], cols=a.shape[1], bits=bits, k=0, preset="fast")
    assert fast.chosen_model(fast.encode(a, info)) == "raster-ls-v1"
    monkeypatch.setattr(selectors, "RASTER_LS_MAX_PIXELS", a.size - 1)
    data = fast.encode(a, info)
    assert fast.chosen_model(data) == "interlaced-ls-v1"
    assert np.array_equal(fast.decode(data, info), a)


def test_the_per_pixel_kernels_run_without_reference_counting():
    """``medcodec.jit``: the kernels whose per-pixel helpers take arrays are compiled
    without numba's reference counting (without its atomic counts raster-wp-v4 decodes
    twice as fast); their wrappers make the scratch arrays. The round trips above hold
    the bytes."""
    from medcodec import contextkernel, learnkernel, passkernel
    from medcodec.coders import wp4kernel

    kernels = (wp4kernel._code_plane, wk._analyse, wk._contexts_at, wk._contexts_of, wk._properties_at,
               wk.table_predictions, wk.table_predictions_at,
               wk.ls_features_at, contextkernel._interlaced_contexts, contextkernel._interlaced_properties,
               contextkernel.table_probabilities, learnkernel._grow, learnkernel.leaf_token_counts,
               passkernel._pass_predict)
    assert [k.py_func.__name__ for k in kernels if k.targetoptions.get("_nrt") is not False] == []
