"""How much could a stronger predictor still gain over `max`'s raster path? A measurement.

    python -m benchmarks.headroom [FILES, DIRS or 'pydicom'] [--names 693_J2KR,MR2_J2KR,...]
                                  [--crop 512] [--window 6] [--json OUT.json]

The strongest classical lossless image coders (EDP, MRP, TMW) predict each pixel with a
least-squares predictor refitted *per pixel* on a causal window around it. This tool
computes such a predictor for a centre crop of each image (first frame, first sample):
12 causal neighbours, fitted on the rows above the pixel within ``--window`` rows and
columns (ridge-regularized, float64), and gives its prediction to raster-wp-v3, the
`max` preset's raster path, as an extra input plane. v3 uses that plane as it uses a
previous frame: as a fifth sub-predictor of the weighted predictor, as an input of its
fitted per-leaf predictors and as context-tree properties, and keeps whichever mix codes
smallest. So the size change bounds what the per-pixel predictor would add to v3 (it
would have to be made integer-exact to be part of a codec; that work is only worth
doing where this number is large).

Measured with the defaults on the held-out images (centre 512x512 crops): CT 693_J2KR
-2.1%, MR2_UNCI -1.1%, MR2_J2KR -0.3%, RG3_J2KR -0.2%; -0.8% over the four. On the
noise-dominated MR and CR images that hold most of the held-out bytes, better
prediction is not where the remaining size is.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import numpy as np

from benchmarks import no_images, write_json
from benchmarks.adapt import centre_crop
from benchmarks.compare import code_version
from medcodec.model.images import InputReport, iter_images

DEFAULT_NAMES = ("693_J2KR", "MR2_J2KR", "MR2_UNCI", "RG3_J2KR")
# Causal neighbours (row, col offsets) of the per-pixel predictor.
NEIGHBOURS = ((0, -1), (-1, 0), (-1, -1), (-1, 1), (0, -2), (-2, 0), (-1, -2), (-2, -1), (-2, 1), (-1, 2), (-2, -2), (-2, 2))
RIDGE = 1e-2


def _window_sums(a: np.ndarray, window: int) -> np.ndarray:
    """For every pixel (r, c): the sum of ``a`` over rows r - window .. r - 1 and columns
    c - window .. c + window (zero outside the image), from one 2-D cumulative sum."""
    rows, cols = a.shape
    padded = np.zeros((rows + window + 1, cols + 2 * window + 1))
    padded[window + 1 :, window + 1 : window + 1 + cols] = a
    s = padded.cumsum(0).cumsum(1)
    s = np.pad(s, ((1, 0), (1, 0)))
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    r0, r1, c0, c1 = r + 1, r + window + 1, c + 1, c + 2 * window + 2
    return s[r1, c1] - s[r0, c1] - s[r1, c0] + s[r0, c0]


def windowed_ls_prediction(plane: np.ndarray, maxv: int, window: int = 6) -> np.ndarray:
    """Each pixel's prediction by least squares refitted on its causal window (rows above
    it only, so every fitting pixel and its neighbours precede it in raster order).
    Features and target are relative to (W + N) / 2, the image edge is replicated."""
    x = np.asarray(plane, dtype=np.float64)
    rows, cols = x.shape
    pad = 2
    xp = np.pad(x, pad, mode="edge")
    feats = np.stack([xp[pad + dr : pad + dr + rows, pad + dc : pad + dc + cols] for dr, dc in NEIGHBOURS])
    ref = (feats[0] + feats[1]) / 2
    fc, yc = feats - ref, x - ref
    k = len(NEIGHBOURS)
    gram = np.empty((rows, cols, k, k))
    rhs = np.empty((rows, cols, k))
    for i in range(k):
        rhs[:, :, i] = _window_sums(fc[i] * yc, window)
        for j in range(i, k):
            gram[:, :, i, j] = gram[:, :, j, i] = _window_sums(fc[i] * fc[j], window)
    gram += (RIDGE * (np.trace(gram, axis1=2, axis2=3) / k + 1))[..., None, None] * np.eye(k)
    weights = np.linalg.solve(gram, rhs[..., None])[..., 0]
    pred = np.clip(np.rint(ref + np.einsum("rck,krc->rc", weights, fc)), 0, maxv).astype(np.int64)
    # The replicated edge would show a pixel of the first row or column itself (as its
    # N or W): there, predict from the causal neighbour alone.
    pred[0, 0] = 0
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    return pred


def measure(plane: np.ndarray, bits: int, window: int) -> dict:
    """raster-wp-v3 bytes of ``plane`` alone and with the windowed LS prediction as input."""
    from medcodec.paths import PlaneInfo
    from medcodec.wavefront import RasterV3GlobalPathCoder

    plane = np.ascontiguousarray(plane, dtype=np.int64)
    info = PlaneInfo(rows=plane.shape[0], cols=plane.shape[1], bits=bits, k=0, preset="max")
    t = time.perf_counter()
    pred = windowed_ls_prediction(plane, (1 << bits) - 1, window)
    seconds = time.perf_counter() - t
    alone = len(RasterV3GlobalPathCoder().encode(plane, info))
    helped = len(RasterV3GlobalPathCoder().encode(plane, info, pred))
    return {
        "v3_bytes": alone,
        "v3_with_ls_bytes": helped,
        "change": helped / alone - 1,
        "mean_abs_ls_error": float(np.abs(plane - pred).mean()),
        "ls_seconds": round(seconds, 2),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.headroom", description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="*", default=["pydicom"])
    p.add_argument("--names", default=",".join(DEFAULT_NAMES),
                   help="images to measure, by name without extension (default: %(default)s; 'all': every image)")
    p.add_argument("--crop", type=int, default=512,
                   help="centre crop side (0: whole plane, about 1.2 kB of memory per pixel; default 512)")
    p.add_argument("--window", type=int, default=6, help="fitting window: rows above, columns either side (default 6)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.window < 1:
        p.error("--window must be at least 1")
    if args.crop < 0:
        p.error("--crop must be 0 (whole plane) or positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = None if args.names == "all" else set(args.names.split(","))
    report = InputReport()
    rows = []
    for image in iter_images(args.sources, report=report):
        stem = image.name.rsplit("/", 1)[-1].split(".")[0]
        if wanted is not None and stem not in wanted:
            continue
        plane = np.ascontiguousarray(centre_crop(image.values[:1, :1], args.crop)[0, 0])
        row = {"name": image.name, "modality": image.modality, "shape": list(plane.shape), "bits": image.bits,
               **measure(plane, image.bits, args.window)}
        rows.append(row)
        print(f"{image.name:28s} {image.modality:3s} {plane.shape[0]}x{plane.shape[1]}  raster-wp-v3 {row['v3_bytes']:9,d} B"
              f"  with per-pixel LS input {row['v3_with_ls_bytes']:9,d} B  ({100 * row['change']:+.1f}%)", flush=True)
    if not rows:
        return no_images("no images matched --names", report)
    total = sum(r["v3_with_ls_bytes"] for r in rows) / sum(r["v3_bytes"] for r in rows) - 1
    print(f"all: {100 * total:+.2f}% (window {args.window}, crop {args.crop or 'whole'}; code {code_version()})")
    write_json(args.json, {"window": args.window, "crop": args.crop, "images": rows, "total_change": total})
    return 0


if __name__ == "__main__":
    sys.exit(main())
