"""Learned context trees (v2 global path): exact evaluation, strict parsing, real gains."""

import numpy as np
import pytest

import medcodec
from medcodec import ctxtree
from medcodec.errors import CorruptRecordError, ModelMismatchError
from medcodec.paths import GlobalPathCoder, IntReader, IntWriter, PlaneInfo, TreeGlobalPathCoder

from conftest import pydicom_file


def _tree_from(prop, thr, scales):
    prop = np.array(prop, dtype=np.int64)
    leaf = np.full(prop.size, -1, dtype=np.int64)
    leaf[prop < 0] = np.arange(int((prop < 0).sum()))
    return ctxtree.Tree(
        prop=prop, thr=np.array(thr, dtype=np.int64), right=ctxtree._right_children(prop), leaf=leaf,
        scales=np.array(scales, dtype=np.int64),
    )


def test_tree_routes_by_integer_thresholds():
    # root: p0 > 5 ? (p1 > 0 ? leaf2 : leaf1) : leaf0   (preorder: root, leaf0, node, leaf1, leaf2)
    tree = _tree_from([0, -1, 1, -1, -1], [5, 0, 0, 0, 0], [3, 4, 5])
    props = np.array([[5, 9], [6, 0], [6, 1], [-7, 3], [100, -1]]).T  # (P, N)
    assert tree.contexts(props).tolist() == [0, 1, 2, 0, 1]


def _walk(tree, column) -> int:
    i = 0
    while tree.prop[i] >= 0:
        i = tree.right[i] if column[tree.prop[i]] > tree.thr[i] else i + 1
    return int(tree.leaf[i])


def test_contexts_equal_a_scalar_walk_of_a_learned_tree():
    rng = np.random.default_rng(5)
    props = rng.integers(-50, 50, size=(4, 4000))
    tokens = np.clip((props[0] > 0) * 3 + (props[1] > 10) * 2 + (props[2] % 3 == 0) + rng.integers(0, 2, 4000), 0, 7)
    tree = ctxtree.learn(props, tokens, 8, np.ones((2, 8)))
    assert tree.n_leaves > 3
    for cols in (props[:, :1], props[:, :7], props):
        assert tree.contexts(cols).tolist() == [_walk(tree, col) for col in cols.T]
    assert ctxtree.single_leaf(0).contexts(props).tolist() == [0] * props.shape[1]


def test_tree_serialization_roundtrips_and_rejects_garbage():
    tree = _tree_from([0, -1, 1, -1, -1], [5, 0, -2, 0, 0], [3, 4, 5])
    w = IntWriter()
    tree.write(w)
    back = ctxtree.Tree.read(IntReader(bytes(w.buf)), n_props=2, n_scales=8)
    for field in ("prop", "thr", "right", "leaf", "scales"):
        assert np.array_equal(getattr(back, field), getattr(tree, field)), field
    bad = [
        [3, 1, 5],  # internal node, then the stream ends inside the tree
        [1, 7, 0],  # property 6 of 2
        [1, 0, 9],  # leaf prior 9 of 8
        [0],  # no nodes
        [3, 0, 0, 0, 0, 0, 0],  # a leaf, then nodes after the last leaf
    ]
    for ints in bad:
        w = IntWriter()
        for v in ints:
            w.put(v)
        with pytest.raises(CorruptRecordError):
            ctxtree.Tree.read(IntReader(bytes(w.buf)), n_props=2, n_scales=8)
    deep = IntWriter()
    deep.put(2 * (ctxtree.MAX_DEPTH + 1) + 1)
    for _ in range(ctxtree.MAX_DEPTH + 1):
        deep.put(1)
        deep.put(0)
        deep.put(0)
        deep.put(0)
    deep.put(0)
    deep.put(0)
    with pytest.raises(CorruptRecordError, match="deeper"):
        ctxtree.Tree.read(IntReader(bytes(deep.buf)), n_props=2, n_scales=8)


def test_learning_finds_the_property_that_matters():
    rng = np.random.default_rng(0)
    n = 20000
    props = rng.integers(0, 100, size=(3, n))
    # Tokens are small when property 1 is below 40, wide otherwise; the others are noise.
    tokens = np.where(props[1] < 40, rng.integers(0, 2, n), rng.integers(0, 30, n))
    prior = np.ones((4, 32), dtype=np.int64)
    tree = ctxtree.learn(props, tokens, 32, prior)
    assert tree.prop[0] == 1 and 35 <= tree.thr[0] <= 45
    flat = ctxtree.learn(np.zeros((3, n), dtype=np.int64), tokens, 32, prior)
    assert flat.n_leaves == 1  # nothing to split on


def _reference_learn(props, tokens, alphabet, prior_rows, weight=1.0):
    """The tree ``ctxtree.learn`` grows, written with numpy over the samples (its rules as
    documented there): the compiled learner must grow the same tree."""
    B = ctxtree.BINS
    n_props, n = props.shape
    thresholds = np.zeros((n_props, B - 1), dtype=np.int64)
    valid = np.zeros((n_props, B - 1), dtype=bool)
    code = np.empty((n_props, n), dtype=np.int64)
    for j in range(n_props):
        qs = np.unique(np.quantile(props[j], np.linspace(0, 1, B + 1)[1:-1], method="lower").astype(np.int64))
        thresholds[j, : qs.size], valid[j, : qs.size] = qs, True
        code[j] = (j * B + np.searchsorted(qs, props[j], side="left")) * alphabet
    nlogn = np.arange(n + 1, dtype=np.float64)
    nlogn[1:] *= np.log2(nlogn[1:])

    def price(h, total):
        return nlogn[total] - nlogn[h].sum(-1) + 0.5 * (h > 0).sum(-1) * np.log2(np.maximum(total * weight, 2.0)) / weight

    def histogram(idx):
        return np.bincount((code[:, idx] + tokens[idx]).ravel(), minlength=n_props * B * alphabet).reshape(n_props, B, alphabet)

    def best_split(h):
        whole = h[0].sum(0)
        m = int(whole.sum())
        left = np.cumsum(h, axis=1)[:, :-1]
        n_left = left.sum(-1)
        ok = valid & (n_left > 0) & (n_left < m)
        if not ok.any():
            return None
        gain = (price(whole, np.array(m)) - price(left, n_left) - price(whole - left, m - n_left)) * weight
        gain = np.where(ok, gain - ctxtree.SPLIT_COST_BITS, -np.inf)
        j, b = np.unravel_index(int(np.argmax(gain)), gain.shape)
        return float(gain[j, b]), int(j), int(thresholds[j, b]), int(b)

    root = {"idx": np.arange(n), "depth": 0}
    root["split"] = best_split(histogram(root["idx"]))
    frontier, leaves = [root], 1
    while leaves < ctxtree.MAX_LEAVES:
        cand = [nd for nd in frontier if nd["split"] and nd["split"][0] > 0 and nd["depth"] < ctxtree.MAX_DEPTH]
        if not cand:
            break
        nd = max(cand, key=lambda x: x["split"][0])
        _, j, nd["thr"], b = nd["split"]
        nd["prop"], idx = j, nd["idx"]
        go = code[j, idx] > (j * B + b) * alphabet
        nd["kids"] = [{"idx": idx[~go], "depth": nd["depth"] + 1}, {"idx": idx[go], "depth": nd["depth"] + 1}]
        frontier.remove(nd)
        for kid in nd["kids"]:
            kid["split"] = best_split(histogram(kid["idx"]))
            frontier.append(kid)
        leaves += 1
    prop, thr, scales = [], [], []
    log_prior = np.log2(prior_rows / prior_rows.sum(1, keepdims=True))

    def emit(nd):
        prop.append(nd.get("prop", -1))
        thr.append(nd.get("thr", 0))
        if "kids" in nd:
            emit(nd["kids"][0])
            emit(nd["kids"][1])
        else:
            scales.append(int(np.argmax(log_prior @ np.bincount(tokens[nd["idx"]], minlength=alphabet))))

    emit(root)
    return _tree_from(prop, thr, scales)


def test_bin_codes_count_the_thresholds_below_each_value():
    """Both of ``learnkernel.bin_codes``' ways (a table over a narrow range, a search over
    a wide one) give ``np.searchsorted(thresholds, v, side="left")``."""
    from medcodec import learnkernel as lk

    rng = np.random.default_rng(11)
    n = 5000
    props = np.stack([
        rng.integers(-30, 30, n),  # narrow: a table
        rng.integers(-(1 << 40), 1 << 40, n),  # wide: searched
        np.full(n, 7),  # one value
        rng.integers(0, 4 * n + 4000, n),  # at the edge of the table's range
    ])
    thresholds = np.zeros((props.shape[0], 255), dtype=np.int64)
    counts = np.array([20, 255, 1, 0])
    for p in range(props.shape[0]):
        thresholds[p, : counts[p]] = np.sort(rng.choice(props[p], counts[p], replace=False)) if counts[p] > 1 else 7
    out = np.empty((n, props.shape[0]), dtype=np.uint8)
    lk.bin_codes(props, thresholds, counts, out)
    for p in range(props.shape[0]):
        assert np.array_equal(out[:, p], np.searchsorted(thresholds[p, : counts[p]], props[p], side="left")), p
    assert out[:, 0].max() == 20 and 0 < out[:, 1].mean() < 255


@pytest.mark.parametrize("case", ["narrow", "wide", "few", "weighted"])
def test_the_compiled_learner_grows_the_reference_tree(case):
    rng = np.random.default_rng(["narrow", "wide", "few", "weighted"].index(case))
    n = 37 if case == "few" else 30000
    props = rng.integers(-40, 40, size=(5, n))
    if case == "wide":  # ranges too wide to count: the order statistics are sorted
        props[1] = rng.integers(-(1 << 40), 1 << 40, n)
        props[3] *= 1 << 33
    props[4] = 7  # a constant property cannot split
    tokens = np.clip((props[0] > 3) * 5 + (props[1] > 0) * 3 + (props[2] % 4 == 0) * 2 + rng.integers(0, 4, n), 0, 15)
    prior = rng.integers(1, 50, size=(3, 16))
    weight = 3.5 if case == "weighted" else 1.0
    got = ctxtree.learn(props, tokens, 16, prior, weight=weight)
    want = _reference_learn(props, tokens, 16, prior, weight)
    assert got.n_leaves > (1 if case == "few" else 4)
    for field in ("prop", "thr", "right", "leaf", "scales"):
        assert np.array_equal(getattr(got, field), getattr(want, field)), field


def test_one_binning_serves_every_tree_grown_on_its_sample():
    """``learn(..., binned=bin_properties(props))`` grows the tree ``learn(props, ...)``
    grows, for other tokens too (raster-wp-v3/v4 grow twice on one sample), and leaves
    the binning as it was (the grower reorders its own copy)."""
    rng = np.random.default_rng(11)
    n = 20000
    props = rng.integers(-40, 40, size=(5, n))
    prior = rng.integers(1, 50, size=(3, 16))
    binned = ctxtree.bin_properties(props)
    kept = binned.bins.copy()
    for seed in range(3):
        tokens = np.clip((props[seed] > 2) * 6 + (props[seed + 1] > -10) * 4 + (props[4] % 3 == 0) * 2
                         + rng.integers(0, 4, n), 0, 15)
        got = ctxtree.learn(None, tokens, 16, prior, weight=2.0, binned=binned)
        want = ctxtree.learn(props, tokens, 16, prior, weight=2.0)
        assert got.n_leaves > 2
        for field in ("prop", "thr", "right", "leaf", "scales"):
            assert np.array_equal(getattr(got, field), getattr(want, field)), field
        assert np.array_equal(binned.bins, kept)
    with pytest.raises(ValueError, match="binned samples"):
        ctxtree.learn(None, tokens[:-1], 16, prior, binned=binned)


def test_the_learner_refuses_tokens_outside_its_alphabet():
    with pytest.raises(ValueError, match="alphabet"):
        ctxtree.learn(np.zeros((2, 10), dtype=np.int64), np.full(10, 16), 16, np.ones((1, 16)))


def _real_plane(name="CT_small.dcm"):
    import pydicom

    ds = pydicom.dcmread(pydicom_file(name))
    a = ds.pixel_array.astype(np.int64)
    if ds.PixelRepresentation:
        a = a - a.min()
    return a, int(a.max()).bit_length()


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "OBXXXX1A.dcm"])
def test_v2_roundtrips_and_beats_v1_on_real_images(name):
    a, bits = _real_plane(name)
    info = PlaneInfo(rows=a.shape[0], cols=a.shape[1], bits=bits, k=0, preset="max")
    v2 = TreeGlobalPathCoder().encode(a, info)
    assert np.array_equal(TreeGlobalPathCoder().decode(v2, info), a)
    v1 = GlobalPathCoder().encode(a, info)
    assert len(v2) < len(v1)


def test_v2_uses_a_tree_on_large_planes_and_the_previous_plane():
    a, bits = _real_plane("OBXXXX1A.dcm")
    rng = np.random.default_rng(1)
    second = np.clip(a + rng.integers(-1, 2, a.shape) * (rng.random(a.shape) < 0.05), 0, (1 << bits) - 1)
    info = PlaneInfo(rows=a.shape[0], cols=a.shape[1], bits=bits, k=0, preset="max")
    data = TreeGlobalPathCoder().encode(second, info, a)
    side = IntReader(data)
    side.get()  # side-information length
    assert side.get() == 1  # mode 1: a learned tree
    assert np.array_equal(TreeGlobalPathCoder().decode(data, info, a), second)
    # Knowing the previous plane, the nearly equal second plane costs far less than alone.
    # (measured: 13,816 vs 35,884 bytes; before the L1 predictor fit, 13,840 vs 41,953)
    assert len(data) < len(TreeGlobalPathCoder().encode(second, info)) / 2.5


def test_presets_name_their_global_model_and_v1_records_still_decode():
    a, bits = _real_plane("CT_small.dcm")
    for preset, model in (("max", "per-plane-v8"), ("fast", "per-plane-fast-v6")):
        blob = medcodec.compress_pixels(a.astype(np.uint16), bits_stored=bits, signed=False, preset=preset, local_model="classical-v1")
        assert medcodec.inspect_record(blob)["models"]["global"] == model
        assert np.array_equal(medcodec.decompress_pixels(blob), a)


def test_unknown_global_model_is_a_clear_error():
    from medcodec import container as ct

    a, bits = _real_plane("CT_small.dcm")
    blob = medcodec.compress_pixels(a.astype(np.uint16), bits_stored=bits, signed=False, preset="fast")
    rec = ct.read_record(blob)
    rec.config["pixels"]["global_model"] = "interlaced-nn-v9"
    with pytest.raises(ModelMismatchError, match="interlaced-tree-v2"):
        medcodec.decompress_pixels(ct.write_record(rec))


def test_contexts_need_only_the_properties_the_tree_splits_on():
    from medcodec import hierarchy

    a, _ = _real_plane("CT_small.dcm")
    flat = a.ravel().astype(np.int64)
    emap = np.abs(flat - np.roll(flat, 1))
    p = list(hierarchy.iter_passes(*a.shape))[-1]
    pred = flat[p.inner[:4]].sum(axis=0) >> 2
    full = TreeGlobalPathCoder._properties(flat, emap, p, pred, flat[::-1].copy(), a.shape[1])
    tree = _tree_from([5, -1, 15, -1, 9, -1, -1], [int(np.median(full[5])), 0, 3, 0, 2, 0, 0], [1, 2, 3, 4])
    assert tree.used == {5, 15, 9}
    some = TreeGlobalPathCoder._properties(flat, emap, p, pred, flat[::-1].copy(), a.shape[1], tree.used)
    assert np.array_equal(some[[5, 9, 15]], full[[5, 9, 15]])
    assert np.array_equal(tree.contexts(some), tree.contexts(full))
    assert len(set(tree.contexts(full).tolist())) > 1


def _reference_properties(flat, emap, p, pred, prev_flat, cols):
    """The interlaced path's 17 properties, written with numpy over the pass (the compiled
    ``contextkernel.interlaced_properties`` must give the same integers)."""
    nn = p.inner[:4]
    nv, ne = flat[nn], emap[nn]
    out = np.zeros((17, p.size), dtype=np.int64)
    out[0], out[1] = p.kind, int(p.h).bit_length() - 1
    noise, spread = ne.sum(axis=0) >> 2, nv.max(axis=0) - nv.min(axis=0)
    out[2], out[3], out[9], out[12] = spread, noise, ne.max(axis=0), 2 * spread + noise
    out[4] = (nv > pred[None, :]).sum(axis=0)
    out[5] = nv.sum(axis=0) >> 2
    out[6] = pred - out[5]
    out[7], out[8] = np.abs(nv[0] - nv[1]), np.abs(nv[2] - nv[3])
    if prev_flat is not None:
        d = nv - prev_flat[nn]
        out[10], out[11] = np.abs(d).sum(axis=0), d.max(axis=0) - d.min(axis=0)
        out[16] = np.abs(4 * prev_flat[p.pos] - prev_flat[nn].sum(axis=0))
    out[13], out[14] = np.divmod(p.pos, cols)
    ov = flat[p.outer]
    out[15] = ov.max(axis=0) - ov.min(axis=0)
    return out


@pytest.mark.parametrize("with_prev", [False, True])
def test_interlaced_properties_equal_their_numpy_definition(with_prev):
    from medcodec import hierarchy

    a, _ = _real_plane("CT_small.dcm")
    flat = a.ravel().astype(np.int64)
    rng = np.random.default_rng(2)
    emap = rng.integers(0, 300, flat.size)
    prev = flat[::-1].copy() if with_prev else None
    # A tree that reads the pass, the outer spread, the previous plane's and the position's rows.
    tree = _tree_from([15, 16, -1, 4, -1, -1, 13, 10, -1, -1, 0, -1, -1],
                      [40, 200, 0, 1, 0, 0, 60, 90, 0, 0, 1, 0, 0], [0, 1, 2, 3, 4, 5, 6])
    seen = set()
    for p in hierarchy.iter_passes(*a.shape):
        pred = rng.integers(flat.min(), flat.max() + 1, p.size)
        want = _reference_properties(flat, emap, p, pred, prev, a.shape[1])
        got = TreeGlobalPathCoder._properties(flat, emap, p, pred, prev, a.shape[1])
        assert np.array_equal(got, want), (p.kind, p.h)
        ctx = TreeGlobalPathCoder()._contexts(tree, flat, emap, p, pred, prev, a.shape[1])  # walked in the kernel
        assert np.array_equal(ctx, tree.contexts(want)), (p.kind, p.h)
        seen.update(ctx.tolist())
    assert len(seen) >= (7 if with_prev else 4)  # without a previous plane row 16 is 0


@pytest.mark.parametrize("fast, with_prev", [(False, False), (False, True), (True, False), (True, True)])
def test_pass_kernels_equal_the_feature_matrix(fast, with_prev):
    """``PassFeatures`` and ``_pass_base`` (compiled, reading neighbours in place) give the
    integers and floats of the feature matrix ``_features`` and its numpy rules, on every
    pass of a real plane and of an odd-sized one (reflected borders)."""
    from medcodec import hierarchy
    from medcodec.paths import (PassFeatures, _activity, _class_key, _features, _Matrix, _pass_base, _reference)

    rng = np.random.default_rng(5)
    real, _ = _real_plane("CT_small.dcm")
    for a in (real, rng.integers(0, 4096, (37, 23))):
        flat = a.ravel().astype(np.int64)
        emap = rng.integers(0, 300, flat.size)
        prev = np.clip(flat + rng.integers(-40, 40, flat.size), 0, None) if with_prev else None
        for p in hierarchy.iter_passes(*a.shape):
            x = _features(flat, p, prev, fast)
            ref, bucket, key = _pass_base(flat, emap, p, prev)
            near = x[: hierarchy.N_NEAREST]
            assert np.array_equal(ref, _reference(near))
            assert np.array_equal(bucket, _activity(near, emap, p))
            assert np.array_equal(key, _class_key(flat, prev, p, bucket))
            got, want = PassFeatures(flat, p, prev, fast), _Matrix(x)
            assert got.shape == want.shape
            n_cls = 3
            cls = rng.integers(0, n_cls, p.size)
            weights = rng.integers(-(1 << 15) + 1, 1 << 15, (n_cls, x.shape[0]))
            assert np.array_equal(got.predict(ref, weights, cls), want.predict(ref, weights, cls))
            sample = np.arange(0, p.size, 3)
            order = np.argsort(cls[sample], kind="stable")
            starts = np.concatenate([[0], np.cumsum(np.bincount(cls[sample], minlength=n_cls))])
            for g, w in zip(got.blocks(ref, sample, order, starts), want.blocks(ref, sample, order, starts)):
                assert g.flags.c_contiguous and g.dtype == np.float64 and np.array_equal(g, w)
        with pytest.raises(IndexError):
            got.predict(ref, weights, np.full(p.size, n_cls))


def test_predictor_fit_is_robust_to_outliers_where_least_squares_is_not():
    # y is exactly 3/4 x0 + 1/4 x1 except on 10% of pixels (edges), where it is far off.
    from medcodec.paths import WEIGHT_BITS, _fit

    rng = np.random.default_rng(7)
    x = rng.integers(-200, 200, size=(2, 20000))
    y = (3 * x[0] + x[1]) // 4
    out = rng.random(y.size) < 0.1
    y = np.where(out, y + rng.integers(300, 900, size=y.size), y)
    exact = [3 << (WEIGHT_BITS - 2), 1 << (WEIGHT_BITS - 2)]
    l1 = _fit(x, y, 8)
    assert np.abs(l1 - exact).max() <= 8  # within 0.2% of the true weights
    ls = _fit(x, y, 0)  # plain least squares: pulled by the outliers
    assert np.abs(ls - exact).max() > 40
    cost = lambda w: np.log2(1 + np.abs(y - ((w @ x) >> WEIGHT_BITS))).sum()  # noqa: E731
    assert cost(l1) < 0.5 * cost(ls)


def test_predictor_fit_refined_from_earlier_weights_is_never_worse_than_them():
    from medcodec.paths import WEIGHT_BITS, _fit

    rng = np.random.default_rng(9)
    x = rng.integers(-200, 200, size=(3, 20000))
    y = (3 * x[0] + x[1]) // 4 + rng.laplace(0, 2, 20000).astype(np.int64)
    cost = lambda w: np.log2(1 + np.abs(y - ((w @ x) >> WEIGHT_BITS))).sum()  # noqa: E731
    rough = np.array([1 << (WEIGHT_BITS - 1), 1 << (WEIGHT_BITS - 1), 0])  # half and half
    assert _fit(x, y, 0, init=rough).tolist() == rough.tolist()  # no step: the start itself
    refined = _fit(x, y, 2, init=rough)
    assert cost(refined) < 0.9 * cost(rough)
    assert np.abs(refined - [3 << (WEIGHT_BITS - 2), 1 << (WEIGHT_BITS - 2), 0]).max() <= 40
    exact = np.array([3 << (WEIGHT_BITS - 2), 1 << (WEIGHT_BITS - 2), 0])
    assert cost(_fit(x, y, 2, init=exact)) <= cost(exact)  # a good start is kept or bettered


def test_max_chains_each_pass_kinds_fits_from_level_to_level():
    """`max`'s interlaced fits start from the same kind's previous pass (L1_CHAINED_ITERATIONS);
    `fast` and matrix features (the local path) fit from least squares; the stream decodes."""
    from medcodec import hierarchy
    from medcodec.paths import IntWriter, PassFeatures, _pass_base, _Predictor

    a, _ = _real_plane("CT_small.dcm")
    flat = a.ravel().astype(np.int64)
    for preset, chained in (("max", {hierarchy.D, hierarchy.A1, hierarchy.A2}), ("fast", set())):
        predictor, emap = _Predictor(preset, 12), np.zeros_like(flat)
        for p in hierarchy.iter_passes(*a.shape):
            ref, _, key = _pass_base(flat, emap, p, None)
            pred = predictor.choose(PassFeatures(flat, p, None, preset == "fast"), ref, flat[p.pos], key, IntWriter())
            emap[p.pos] = np.abs(flat[p.pos] - pred)
        assert set(predictor._ended) == chained
    matrix = _Predictor("max")
    x = np.random.default_rng(0).integers(0, 99, (4, 5000))
    matrix.choose(x, x[:4].sum(axis=0) >> 2, x[0], np.zeros(5000, dtype=np.int64), IntWriter())
    assert not matrix._ended
    info = PlaneInfo(rows=a.shape[0], cols=a.shape[1], bits=int(a.max()).bit_length(), k=0, preset="max")
    coder = TreeGlobalPathCoder()
    assert np.array_equal(coder.decode(coder.encode(a, info), info), a)


def test_predictor_fit_survives_constant_and_empty_features():
    from medcodec.paths import _fit

    assert _fit(np.zeros((3, 50), dtype=np.int64), np.zeros(50, dtype=np.int64), 8).tolist() == [0, 0, 0]
    x = np.ones((2, 40), dtype=np.int64)  # two identical features: singular without the ridge
    w = _fit(x, 5 * np.ones(40, dtype=np.int64), 8)
    assert abs(int(w.sum()) - (5 << 12)) <= 2


def _fit_with_matmul(x, y, iterations, rows, init=None):
    """``paths._fit`` as it was written with ``@`` throughout (numpy's matmul, which holds
    the GIL through BLAS), its first solves on every FIT_COARSE-th row: the weights
    ``_fit`` must still give, to the bit."""
    from medcodec.paths import _WMAX, FIT_COARSE, FIT_COARSE_MIN_ROWS, FIT_COARSE_SOLVES, L1_FLOOR, WEIGHT_BITS

    step = max(1, x.shape[1] // rows)
    xf = np.asarray(x[:, ::step], dtype=np.float64)
    yf = np.asarray(y[::step], dtype=np.float64)
    row_w, best_w, best_cost = np.ones_like(yf), None, np.inf
    if init is not None:
        best_w = np.asarray(init, dtype=np.float64) / (1 << WEIGHT_BITS)
        resid = np.abs(yf - best_w @ xf)
        best_cost, row_w = float(np.log2(resid + 1.0).sum()), 1.0 / np.maximum(resid, L1_FLOOR)
    solves = iterations + (init is None)
    coarse = min(FIT_COARSE_SOLVES, solves - 1) if yf.size // FIT_COARSE >= FIT_COARSE_MIN_ROWS * len(xf) else 0
    for solve in range(solves):
        sub = FIT_COARSE if solve < coarse else 1
        root = np.sqrt(row_w[::sub])
        xw = xf[:, ::sub] * root
        gram = xw @ xw.T
        ridge = 1e-6 * (np.trace(gram) / gram.shape[0] + 1.0)
        w = np.linalg.solve(gram + ridge * np.eye(xf.shape[0]), xw @ (yf[::sub] * root))
        resid = np.abs(yf - w @ xf)
        cost = float(np.log2(resid + 1.0).sum())
        if cost < best_cost:
            best_w, best_cost = w, cost
        row_w = 1.0 / np.maximum(resid, L1_FLOOR)
    return np.clip(np.rint(best_w * (1 << WEIGHT_BITS)), -_WMAX, _WMAX).astype(np.int64)


@pytest.mark.parametrize("features", [3, 14, 21])
def test_fit_releases_the_gil_and_keeps_its_weights_to_the_bit(features):
    """``_fit`` takes its BLAS products by np.dot (which releases the GIL, so two worker
    threads fit at once) wherever that gives numpy's matmul's numbers, and keeps matmul on
    a strided sample: float64 blocks taken whole (contiguous) and strided, integer
    features, with and without a start."""
    from medcodec.paths import _fit

    rng = np.random.default_rng(features)
    n = 3 * 4096 + 17
    x_int = rng.integers(-300, 300, (features, n))
    y = (x_int[0] * 3 + x_int[-1]) // 4 + rng.laplace(0, 3, n).astype(np.int64)
    init = rng.integers(-2000, 2000, features)
    for x in (x_int, x_int.astype(np.float64)):
        for rows in (n, 4096):  # every column (contiguous float64) / every 3rd (a strided view)
            for start in (None, init):
                got = _fit(x, y, 4, rows, init=start)
                assert np.array_equal(got, _fit_with_matmul(x, y, 4, rows, init=start))


def test_np_dot_gives_matmuls_numbers_on_the_contiguous_products_fit_takes():
    """The premise of ``_fit``'s np.dot: on C-contiguous float64 operands (the weighted
    sample, and the sample itself when taken whole) BLAS computes np.dot and ``@`` alike,
    to the bit; a numpy or BLAS upgrade that broke it fails here, not in the bytes."""
    rng = np.random.default_rng(3)
    for features in (3, 12, 21, 33):
        for n in (100, 4097, 65536):
            x = rng.normal(0, 300, (features, n)).round()
            xw = x * np.sqrt(1 / np.maximum(np.abs(rng.normal(0, 5, n)), 0.5))
            w, y = rng.normal(0, 1, features), rng.normal(0, 300, n)
            assert np.array_equal(np.dot(xw, xw.T), xw @ xw.T)
            assert np.array_equal(np.dot(xw, y), xw @ y)
            assert np.array_equal(np.dot(w, x), w @ x)
