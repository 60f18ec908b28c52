"""What a one-pass `max` raster coder would cost: fitted predictors adapted online against
``raster-wp-v4``'s offline fits.

    python -m benchmarks.one_pass [FILES, DIRS or 'pydicom'] [--split train|held-out|all]
                                  [--min-pixels 65536] [--sample 32768] [--json OUT.json]

``raster-wp-v4`` (most of `max`'s planes) spends its encode time searching: it fits up to
16 linear predictors over 28 causal features on a large sample of the plane by reweighted
least squares, reassigns the context leaves to them, fits again, and sends the weights.
Its decoder is one cheap pass. A coder whose decoder *learns* the weights as it goes,
from the pixels it has decoded, needs no large search: the encoder would fit on a small
sample only to pick each leaf's class and a starting point. This tool measures that
design on real planes before anyone builds it (it is not a coder: nothing here is
decoded, but every prediction it makes is causal, as a decoder would make it).

Per plane of ``--min-pixels`` or more (first two frames, every sample; each plane alone,
no previous plane), it codes the plane with ``raster-wp-v4`` and with the one-pass design:

1. ``raster-wp-v4``'s analysis and first tree (the weighted predictor's contexts);
2. its fits on pixels every ``n // --sample``-th (``RasterV3GlobalPathCoder._fit_models``),
   and each first-tree leaf's class: the fitted predictor that codes the leaf's sampled
   pixels in fewest bits;
3. one raster pass (``online_predictions``): each pixel predicted by its class's current
   weights; every ``stride``-th pixel's features added to the class's weighted Gram
   matrix (weight 1 / (|residual| + delta), a running form of the L1 reweighting), and
   each class's weights solved again every ``rows_between`` rows, with a ridge pulling
   them toward the starting weights that fades as the class sees pixels, and older rows
   forgotten by ``forget`` per solve. "warm" starts from the sampled fits (sent); "cold"
   from the weighted predictor alone (nothing sent); a coder would flag the smaller;
4. ``raster-wp-v4``'s leaf table over its fixed predictors and the online one, its tree
   grown again on those residuals, the table chosen again, and its payload coder.

Memory grows with the largest plane: its features are held twice (float64, feature- and
pixel-major) beside the candidates' predictions. RG1_UNCI alone (1955 x 1841) peaked at
2.8 GB resident (``/usr/bin/time -v``, 2026-12-07), ~700 bytes a pixel.

Bytes counted: the v4 stream of step 4 (second tree, table, the starting weights where
sent, payload) plus the first tree and the leaf classes. Encode seconds are this
prototype's (numpy and numba, not tuned), against ``raster-wp-v4.encode``'s, one thread.

Measured (2026-12-07, default options, the settings below; a fuzzing campaign on the
other core, so the seconds are only indicative):

* train, 21 planes: ``raster-wp-v4`` 9,000,488 B; warm +0.55%, cold +0.70%, the smaller
  per plane +0.50% (median plane +3.7%). The two 1955x1841 RG1 planes (8.0 MB of the
  total) +0.2 to +0.3%; the rest +2.8%: CT +2.0 to +3.7% (J2K_pixelrep_mismatch,
  bad_sequence), 8-bit photographs +3.4 to +6.1%, the LUT test images +18 to +28%.
* held-out, 16 planes: 3,156,488 B; warm +2.31%, cold +1.83%, the smaller per plane
  +1.55% (median plane +2.9%); MR2 and RG3 -0.5 to +1.1%, 693 CT +1.7 to +2.0%,
  US1 +2.5 to +3.6%, OBXXXX1A +9 to +11%, 693_UNCI +38%.
* the online pass: ~215 ns a pixel as written (28 features, every pixel's Gram update);
  its Gram update alone runs at ~90 ns in a pixel-major layout.

Before this tool, a prototype found that the online weights do about as well as the
same fits made offline on the same 32,768-pixel sample, and that fewer features lose on
CT (bad_sequence with 16 features +11%). So the one-pass design is 1.5-3% larger than
`max`'s raster coder on most planes, which is what `max` would give up for its speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import numpy as np
from numba import njit

from benchmarks import no_images, write_json
from benchmarks.compare import _split_of, code_version
from medcodec.errors import MedcodecError
from medcodec.model.images import InputReport, iter_images

# The online fits' settings (chosen on four train planes: bad_sequence, J2K_pixelrep_mismatch,
# MR-SIEMENS-DICOM-WithOverlays, JPEG-LL): solves every 16 rows, every pixel's features
# added, residual weight 1 / (|e| + 4), 10% forgotten per solve, the ridge toward the
# starting weights as strong as the class's own data until it has seen ~10,000 pixels.
SETTINGS = {"rows_between": 16, "stride": 1, "delta": 4.0, "forget": 0.9, "ridge": 1e-4, "prior": 1.0,
            "prior_pixels": 10_000.0, "min_count": 200.0}


@njit(cache=True)
def _solve(gram, rhs, shrink, toward):
    """(gram + shrink I) w = rhs + shrink toward, by Cholesky; (w, ok)."""
    f = rhs.size
    a = gram.copy()
    b = rhs + shrink * toward
    for i in range(f):
        a[i, i] += shrink
    low = np.zeros((f, f))
    for i in range(f):
        for j in range(i + 1):
            s = a[i, j]
            for k in range(j):
                s -= low[i, k] * low[j, k]
            if i == j:
                if s <= 0.0:
                    return np.zeros(f), False
                low[i, i] = np.sqrt(s)
            else:
                low[i, j] = s / low[j, j]
    z = np.zeros(f)
    for i in range(f):
        s = b[i]
        for k in range(i):
            s -= low[i, k] * z[k]
        z[i] = s / low[i, i]
    w = np.zeros(f)
    for i in range(f - 1, -1, -1):
        s = z[i]
        for k in range(i + 1, f):
            s -= low[k, i] * w[k]
        w[i] = s / low[i, i]
    return w, True


@njit(cache=True)
def _online(xt, ref, flat, cls, start, cols, maxv, rows_between, stride, delta, forget, ridge, prior, prior_pixels,
            min_count, out):
    n, f = xt.shape
    k = start.shape[0]
    w = start.copy()
    gram = np.zeros((k, f, f))
    rhs = np.zeros((k, f))
    seen = np.zeros(k)
    rows = n // cols
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            j = cls[i]
            x = xt[i]
            s = 0.0
            for m in range(f):
                s += w[j, m] * x[m]
            q = np.int64(np.floor(ref[i] + s + 0.5))
            out[i] = 0 if q < 0 else (maxv if q > maxv else q)
            if i % stride == 0:
                y = np.float64(flat[i] - ref[i])
                a = 1.0 / (abs(y - s) + delta)
                g = gram[j]
                for m in range(f):
                    am = a * x[m]
                    rhs[j, m] += am * y
                    row = g[m]
                    for p in range(f):
                        row[p] += am * x[p]
                seen[j] += 1.0
        if (r + 1) % rows_between == 0:
            for j in range(k):
                if seen[j] < min_count:
                    continue
                trace = 0.0
                for m in range(f):
                    trace += gram[j, m, m]
                scale = trace / f
                shrink = (ridge + prior * prior_pixels / (prior_pixels + seen[j])) * scale + 1e-9
                solved, ok = _solve(gram[j], rhs[j], shrink, start[j])
                if ok:
                    w[j] = solved
                gram[j] *= forget
                rhs[j] *= forget
                seen[j] *= forget


def online_predictions(x: np.ndarray, ref: np.ndarray, flat: np.ndarray, pixel_class: np.ndarray, start: np.ndarray,
                       cols: int, maxv: int, settings: dict | None = None) -> np.ndarray:
    """Every pixel's prediction (int64, within [0, maxv]) by its class's weights as they
    stand when the pass reaches it, in raster order: ``x`` (F, n) the features
    (``wavefront.ls_features``), ``ref`` their reference, ``flat`` the plane's values,
    ``pixel_class`` (n,) each pixel's class, ``start`` (K, F) the classes' starting
    weights. A prediction reads only earlier pixels' values and the features of its own
    (causal ones), so a decoder could make the same."""
    s = {**SETTINGS, **(settings or {})}
    out = np.empty(flat.size, dtype=np.int64)
    _online(np.ascontiguousarray(np.asarray(x, dtype=np.float64).T), np.asarray(ref, dtype=np.float64),
            np.ascontiguousarray(flat, dtype=np.int64), np.ascontiguousarray(pixel_class, dtype=np.int64),
            np.ascontiguousarray(start, dtype=np.float64), int(cols), int(maxv), int(s["rows_between"]),
            int(s["stride"]), float(s["delta"]), float(s["forget"]), float(s["ridge"]), float(s["prior"]),
            float(s["prior_pixels"]), float(s["min_count"]), out)
    return out


def code_plane(plane: np.ndarray, bits: int, sample: int) -> dict:
    """``raster-wp-v4``'s bytes and encode seconds for ``plane``, and the one-pass design's
    (module docstring), warm and cold."""
    from medcodec import wavekernel as wk
    from medcodec.coders.raster_wp_v4 import RasterV4GlobalPathCoder
    from medcodec.paths import IntWriter, PlaneInfo
    from medcodec.wavefront import (LS_NEIGHBOURS, N_FIXED, WEIGHT_BITS, RasterV3GlobalPathCoder, _candidate_leaf_costs,
                                    ls_features)

    v4 = RasterV4GlobalPathCoder()
    rows, cols = plane.shape
    info = PlaneInfo(rows=rows, cols=cols, bits=bits, k=0, preset="max")
    t0 = time.perf_counter()
    v4_bytes = len(v4.encode(plane, info))
    v4_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    flat, wf, pred, pred8, tree, ctx = v4._analyse(plane, info, None)
    n, maxv, leaves = flat.size, (1 << bits) - 1, tree.n_leaves
    x, ref = ls_features(wf, np.arange(n, dtype=np.int64), pred8, np.float64)
    step = max(1, n // sample)
    s = slice(None, None, step)
    models, sampled = RasterV3GlobalPathCoder._fit_models(x[:, s], ref[s], flat[s], pred[s], ctx[s], leaves, maxv, n)
    weighted_only = np.zeros((max(1, len(models)), x.shape[0]))
    weighted_only[:, len(LS_NEIGHBOURS)] = 1.0 / 8  # the weighted prediction's feature (x8)
    if models:
        leaf_class = _candidate_leaf_costs(sampled, flat[s], ctx[s], leaves, max(1, maxv.bit_length())).argmin(axis=0)
        fitted = np.array(models, dtype=np.float64) / (1 << WEIGHT_BITS)
    else:  # no class had pixels enough to fit: one class, from the weighted predictor
        leaf_class, fitted = np.zeros(leaves, dtype=np.int64), weighted_only
    side = IntWriter()
    tree.write(side)
    for c in leaf_class:
        side.put(int(c))
    prep = time.perf_counter() - t0
    fixed = np.empty((N_FIXED, n), dtype=np.int64)
    wk.fixed_at(np.arange(n, dtype=np.int64), cols, wf.value, wf.true_err, wf.prev_shift, wf.has_prev, pred, maxv,
                fixed)
    at = wf.learning_sample(pred)[0]
    out = {"v4_bytes": v4_bytes, "v4_seconds": v4_seconds}
    for label, start, sent, settings in (("warm", fitted, models, {}), ("cold", weighted_only, [], {"prior": 0.0})):
        t1 = time.perf_counter()
        online = online_predictions(x, ref, flat, leaf_class[ctx], start, cols, maxv, settings)
        pass_seconds = time.perf_counter() - t1
        cands = np.concatenate([fixed, online[None]])
        choice, offset, final = v4._select(ctx, leaves, flat, cands, maxv)
        tree2 = v4._learn(wf, pred, flat[at] - final[at], info)
        ctx2 = v4._all_contexts(wf, tree2, pred)
        choice, offset, final = v4._select(ctx2, tree2.n_leaves, flat, cands, maxv)
        table = [(int(leaf), int(choice[leaf]), int(offset[leaf])) for leaf in np.flatnonzero(choice | offset)]
        stream = v4._code(tree2, info, wf, ctx2, flat - final, table, sent)
        out[f"{label}_bytes"] = len(stream) + len(bytes(side.buf)) + 1  # + the warm / cold flag
        out[f"{label}_seconds"] = prep + time.perf_counter() - t1
        out[f"{label}_pass_ns"] = pass_seconds * 1e9 / n
    return out


def measure(sources: Sequence[str], *, split: str = "train", min_pixels: int = 1 << 16, sample: int = 1 << 15,
            report: InputReport | None = None) -> list[dict]:
    """One row per plane of ``min_pixels`` or more (first two frames, every sample) of
    the images of ``split``: ``code_plane``'s figures."""
    import medcodec
    from medcodec import allocator

    allocator.tune()
    medcodec.set_model_threads(1)
    rows = []
    for image in iter_images(sources, report=report):
        if split != "all" and _split_of(image.name) != split:
            continue
        values = image.values
        for frame in range(min(values.shape[0], 2)):
            for sample_index in range(values.shape[1]):
                plane = np.ascontiguousarray(values[frame, sample_index], dtype=np.int64)
                if plane.size < min_pixels:
                    continue
                code_plane(plane, image.bits, sample)  # kernels compiled before timing
                rows.append({"name": image.name, "frame": frame, "sample": sample_index,
                             "pixels": int(plane.size), **code_plane(plane, image.bits, sample)})
    return rows


def summarize(rows: list[dict]) -> dict:
    """Totals and their change against ``raster-wp-v4``: warm, cold, and the smaller per plane."""
    v4 = sum(r["v4_bytes"] for r in rows)
    out = {"planes": len(rows), "v4_bytes": v4, "v4_seconds": sum(r["v4_seconds"] for r in rows)}
    for label in ("warm", "cold"):
        out[f"{label}_bytes"] = sum(r[f"{label}_bytes"] for r in rows)
        out[f"{label}_change"] = out[f"{label}_bytes"] / v4 - 1
        out[f"{label}_seconds"] = sum(r[f"{label}_seconds"] for r in rows)
    out["best_bytes"] = sum(min(r["warm_bytes"], r["cold_bytes"]) for r in rows)
    out["best_change"] = out["best_bytes"] / v4 - 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.one_pass", description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="*", default=["pydicom"], help="files, folders, or 'pydicom' (default)")
    parser.add_argument("--split", choices=("train", "held-out", "all"), default="train")
    parser.add_argument("--min-pixels", type=int, default=1 << 16, help="planes smaller than this are left out")
    parser.add_argument("--sample", type=int, default=1 << 15, help="about how many pixels the starting fits see")
    parser.add_argument("--json", help="write the rows and the summary here")
    args = parser.parse_args(argv)
    if args.min_pixels < 4096 or args.sample < 1024:
        parser.error("--min-pixels must be >= 4096 (planes with fitted predictors) and --sample >= 1024")
    report = InputReport()
    try:
        rows = measure(args.sources, split=args.split, min_pixels=args.min_pixels, sample=args.sample, report=report)
    except MedcodecError as exc:  # a plane the raster coder refuses
        print(f"one_pass: {exc}", file=sys.stderr)
        return 1
    if not rows:
        return no_images(f"no planes of {args.min_pixels}+ pixels in the {args.split} split", report)
    summary = summarize(rows)
    print(f"one-pass raster coder against raster-wp-v4, {args.split} split, {len(rows)} planes, sample {args.sample}, "
          f"one thread (code {code_version()})")
    print(f"{'plane':40s} {'v4 B':>9s} {'warm':>8s} {'cold':>8s} {'v4 s':>6s} {'1-pass s':>8s} {'pass ns/px':>10s}")
    for r in rows:
        name = f"{r['name']}[{r['frame']},{r['sample']}]"
        print(f"{name[:40]:40s} {r['v4_bytes']:9,d} {100 * (r['warm_bytes'] / r['v4_bytes'] - 1):+7.2f}% "
              f"{100 * (r['cold_bytes'] / r['v4_bytes'] - 1):+7.2f}% {r['v4_seconds']:6.2f} "
              f"{min(r['warm_seconds'], r['cold_seconds']):8.2f} {r['warm_pass_ns']:10.0f}")
    print(f"{'total':40s} {summary['v4_bytes']:9,d} {100 * summary['warm_change']:+7.2f}% "
          f"{100 * summary['cold_change']:+7.2f}%  smaller per plane {100 * summary['best_change']:+.2f}%")
    write_json(args.json, {"split": args.split, "sample": args.sample, "settings": SETTINGS, "rows": rows,
                           "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
