"""Undetectability at the real operating point, with a trained feature-based detector.

    python -m benchmarks.stego_operating_point [--limit N] [--tile 256] [--folds 5] [--json OUT]

``benchmarks.steganalysis`` scores fixed payloads (2-8 KiB, capacity) with three
targeted detectors. This benchmark measures what an archive actually writes:

1. Operating point, per real image (every native CT / MR / CR / US / NM file of
   pydicom-data, ``benchmarks.keyed_records.real_images``): the image is keyed by the
   real path (``medcodec.compress_dicom`` with a fresh keyring, preset fast), and the
   de-identified copy is compared with the original: which message tier it carries, the
   sealed payload in bytes, changes per stored value over the whole image and over its
   embeddable region (``medcodec.stego.embeddable_values``), PSNR.
2. Detectors. Tiles of up to ``--tile`` x ``--tile`` values from the first frame (at most
   ``--tiles`` per image) of each cover and of its real de-identified copy:
   - a feature-based detector: second-order SPAM features (Pevny, Bas & Fridrich 2010;
     T = 3, 686 features per sample plane, averaged over planes) on the raw stored values,
     classified by an ensemble of Fisher linear discriminants on random feature subspaces
     (Kodovsky, Fridrich & Holub 2012), trained and scored with grouped cross-validation:
     every tile of an image, cover and stego, is in the same fold, so no image is ever
     both trained on and scored;
   - the targeted detectors of ``benchmarks.steganalysis`` (chi-square statistic, SPA,
     WS), which need no training.
   AUC is P(stego tile scores above cover tile) over the out-of-fold scores, with a 95%
   interval from a bootstrap over images (groups), not tiles.
3. Positive controls, on the same cover tiles and with the same detector and folds:
   LSB replacement of every value by a random bit, and random +-1 changes at rate 0.5 on
   the lower-noise half of the tiles (``medcodec.planes.noise_level``). A detector that
   does not find these cannot vouch for chance-level AUCs on the real stego tiles.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.steganalysis import DETECTORS, roc_auc

__all__ = ["spam_features", "FldEnsemble", "grouped_out_of_fold", "bootstrap_auc_interval", "main"]

SPAM_T = 3


# --------------------------------------------------------------------------------------
# Features


def _cooccurrence(d1: np.ndarray, d2: np.ndarray, d3: np.ndarray, t: int) -> np.ndarray:
    m = 2 * t + 1
    idx = ((d1 + t) * m + (d2 + t)) * m + (d3 + t)
    hist = np.bincount(idx.reshape(-1), minlength=m**3).astype(np.float64)
    total = hist.sum()
    return hist / total if total else hist


def spam_features(plane: np.ndarray, t: int = SPAM_T) -> np.ndarray:
    """Second-order SPAM of one 2-D plane: 2 * (2t + 1)^3 features (686 for t = 3).

    Differences between neighbours in the 8 directions, clipped to [-t, t]; the joint
    histogram of three consecutive differences along each direction, normalised; the 4
    straight and the 4 diagonal directions averaged separately.
    """
    x = np.asarray(plane, dtype=np.int64)
    if x.ndim != 2 or min(x.shape) < 4:
        raise ValueError(f"spam_features needs a 2-D plane of at least 4 x 4, got shape {x.shape}")

    def both_ways(first, second, third) -> np.ndarray:
        # a chain read one way, and the same chain read back (differences negated)
        return (_cooccurrence(first, second, third, t) + _cooccurrence(-third, -second, -first, t)) / 2.0

    h = np.clip(x[:, :-1] - x[:, 1:], -t, t)
    v = np.clip(x[:-1, :] - x[1:, :], -t, t)
    d = np.clip(x[:-1, :-1] - x[1:, 1:], -t, t)
    a = np.clip(x[:-1, 1:] - x[1:, :-1], -t, t)
    straight = (both_ways(h[:, :-2], h[:, 1:-1], h[:, 2:]) + both_ways(v[:-2], v[1:-1], v[2:])) / 2.0
    diagonal = (both_ways(d[:-2, :-2], d[1:-1, 1:-1], d[2:, 2:])
                + both_ways(a[:-2, 2:], a[1:-1, 1:-1], a[2:, :-2])) / 2.0
    return np.concatenate([straight, diagonal])


def tile_features(tile: np.ndarray) -> np.ndarray:
    """SPAM features of a (samples, rows, cols) tile, averaged over its sample planes."""
    return np.mean([spam_features(p) for p in tile], axis=0)


# --------------------------------------------------------------------------------------
# Classifier and evaluation


@dataclass
class FldEnsemble:
    """Fisher linear discriminants on random feature subspaces and bootstrap samples; the
    score is the mean of the learners' standardised projections (higher = stego)."""

    n_learners: int = 51
    subspace: int | None = None
    ridge: float = 0.1
    seed: int = 0

    def fit(self, x: np.ndarray, y: np.ndarray) -> "FldEnsemble":
        rng = np.random.default_rng(self.seed)
        self.mean_ = x.mean(axis=0)
        self.scale_ = x.std(axis=0) + 1e-12
        z = (x - self.mean_) / self.scale_
        n, d = z.shape
        k = min(d, self.subspace or max(8, n // 4))
        self.learners_ = []
        for _ in range(self.n_learners):
            feats = rng.choice(d, k, replace=False)
            rows = rng.integers(0, n, n)
            zs, ys = z[rows][:, feats], y[rows]
            if ys.min() == ys.max():
                continue
            m0, m1 = zs[ys == 0].mean(axis=0), zs[ys == 1].mean(axis=0)
            c0, c1 = zs[ys == 0] - m0, zs[ys == 1] - m1
            sw = (c0.T @ c0 + c1.T @ c1) / max(1, n - 2) + self.ridge * np.eye(k)  # within-class scatter
            w = np.linalg.solve(sw, m1 - m0)
            proj = zs @ w
            centre = (proj[ys == 0].mean() + proj[ys == 1].mean()) / 2.0
            self.learners_.append((feats, w, centre, proj.std() + 1e-12))
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean_) / self.scale_
        return np.mean([(z[:, f] @ w - c) / s for f, w, c, s in self.learners_], axis=0)


def grouped_out_of_fold(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, folds: int, seed: int = 0) -> np.ndarray:
    """Out-of-fold scores: groups are split into ``folds`` folds; each fold is scored by a
    detector trained on the others."""
    uniq = np.unique(groups)
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(rng.permutation(uniq).tolist(), np.arange(uniq.size) % folds))
    fold = np.array([fold_of[g] for g in groups.tolist()])
    out = np.full(y.shape, np.nan)
    for f in range(folds):
        test = fold == f
        if not test.any() or test.all():
            continue
        out[test] = FldEnsemble(seed=seed + f).fit(x[~test], y[~test]).score(x[test])
    return out


def bootstrap_auc_interval(scores: np.ndarray, y: np.ndarray, groups: np.ndarray, *, n_boot: int = 1000,
                           seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the AUC, resampling whole groups (images) with replacement."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in uniq.tolist()}
    aucs = []
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.choice(uniq, uniq.size).tolist()])
        s, t = scores[idx], y[idx]
        if t.min() != t.max():
            aucs.append(roc_auc(s[t == 0], s[t == 1]))
    if not aucs:
        return float("nan"), float("nan")
    lo, hi = np.percentile(aucs, [2.5, 97.5])
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------
# Operating points and tiles


def _values(dicom: bytes):
    from medcodec.dicom import parse_dicom
    from medcodec.planes import SampleFormat, words_to_values

    parsed = parse_dicom(dicom)
    fmt = SampleFormat.of(parsed.spec)
    return words_to_values(parsed.frames, fmt)[0], fmt.bits_stored


def operating_points(limit: int | None = None) -> list[dict]:
    """Cover and real de-identified values of every real image, with its operating point."""
    import medcodec
    from benchmarks.keyed_records import real_images
    from medcodec import container, stego
    from medcodec.crypto import Keyring

    ring = Keyring.create(Path(tempfile.mkdtemp()) / "ring.json")
    out = []
    for path in real_images(limit):
        data = path.read_bytes()
        blob = medcodec.compress_dicom(data, keyring=ring, preset="fast", verify=False)
        report = container.read_record(blob).config["sealed"]["stego"]
        cover, bits = _values(data)
        stego_values, _ = _values(medcodec.decompress_dicom(blob))
        changes = int(np.count_nonzero(stego_values != cover))
        region = stego.embeddable_values(cover, bits)
        out.append({
            "image": path.name, "shape": list(cover.shape), "bits_stored": bits, "tier": report["tier"],
            "payload_bytes": report["message_bytes"], "capacity_bytes": report.get("capacity_bits", 0) // 8,
            "changes": changes, "changes_per_value": changes / cover.size,
            "embeddable_fraction": region / cover.size,
            "changes_per_embeddable_value": changes / region if region else 0.0,
            "psnr_db": report.get("psnr"), "reason": report.get("reason"),
            "_cover": cover, "_stego": stego_values,
        })
    return out


_SYNTAX_SUFFIX = re.compile(r"_(UNCI|UNCR|J2KR|J2KI|JPLY|JPLL|RLE|2frame)$", re.IGNORECASE)


def source_group(name: str) -> str:
    """The source image a pydicom test file was made from: 693_UNCI.dcm and 693_J2KR.dcm
    are one image in two transfer syntaxes, and must share a cross-validation fold."""
    return _SYNTAX_SUFFIX.sub("", Path(name).stem)


def tiles_of(values: np.ndarray, size: int, count: int) -> list[tuple[slice, slice]]:
    """Up to ``count`` non-overlapping tiles of at most size x size from the image centre out."""
    rows, cols = values.shape[-2:]
    th, tw = min(size, rows), min(size, cols)
    if th < 16 or tw < 16:
        return []
    grid = [(r, c) for r in range(0, rows - th + 1, th) for c in range(0, cols - tw + 1, tw)]
    cy, cx = rows / 2, cols / 2
    grid.sort(key=lambda rc: (rc[0] + th / 2 - cy) ** 2 + (rc[1] + tw / 2 - cx) ** 2)
    return [(slice(r, r + th), slice(c, c + tw)) for r, c in grid[:count]]


def _lsb_replacement(tile: np.ndarray, rng) -> np.ndarray:
    return (tile & ~1) | rng.integers(0, 2, tile.shape)


def _plus_minus_one(tile: np.ndarray, bits: int, rng, rate: float = 0.5) -> np.ndarray:
    maxval = (1 << bits) - 1
    step = np.where(rng.random(tile.shape) < 0.5, 1, -1)
    step = np.where(tile == 0, 1, np.where(tile == maxval, -1, step))
    return tile + step * (rng.random(tile.shape) < rate)


# --------------------------------------------------------------------------------------
# Benchmark


def _evaluate(x_cover, x_stego, groups, folds, seed) -> dict:
    x = np.vstack([x_cover, x_stego])
    y = np.r_[np.zeros(len(x_cover)), np.ones(len(x_stego))].astype(int)
    g = np.r_[groups, groups]
    scores = grouped_out_of_fold(x, y, g, folds=folds, seed=seed)
    auc = roc_auc(scores[y == 0], scores[y == 1])
    lo, hi = bootstrap_auc_interval(scores, y, g, seed=seed)
    return {"auc": auc, "ci95": [lo, hi], "n_tiles": int(len(x_cover)), "n_images": int(np.unique(groups).size)}


def _targeted(covers, stegos, groups, seed) -> dict:
    out = {}
    for name, fn in DETECTORS.items():
        sc = np.array([np.mean([fn(p) for p in t]) for t in covers])
        ss = np.array([np.mean([fn(p) for p in t]) for t in stegos])
        s = np.r_[sc, ss]
        y = np.r_[np.zeros(len(sc)), np.ones(len(ss))].astype(int)
        g = np.r_[groups, groups]
        lo, hi = bootstrap_auc_interval(s, y, g, seed=seed)
        out[name] = {"auc": roc_auc(sc, ss), "ci95": [lo, hi]}
    return out


def run(points: list[dict], *, tile: int, tiles_per_image: int, folds: int, seed: int = 0) -> dict:
    from medcodec.planes import noise_level

    rng = np.random.default_rng(seed)
    covers, stegos, lsbr, pm1, groups, noise = [], [], [], [], [], []
    group_ids: dict[str, int] = {}
    for p in points:
        gi = group_ids.setdefault(source_group(p["image"]), len(group_ids))
        if p["tier"] == "none":
            continue
        cover, stego_values = p["_cover"][0], p["_stego"][0]  # first frame: (samples, rows, cols)
        for rs, cs in tiles_of(cover, tile, tiles_per_image):
            c, s = cover[:, rs, cs], stego_values[:, rs, cs]
            covers.append(c)
            stegos.append(s)
            lsbr.append(_lsb_replacement(c, rng))
            pm1.append(_plus_minus_one(c, p["bits_stored"], rng))
            groups.append(gi)
            noise.append(noise_level(c[0]))
    groups_a = np.array(groups)
    feats = {name: np.array([tile_features(t) for t in tiles])
             for name, tiles in (("cover", covers), ("stego", stegos), ("lsbr", lsbr), ("pm1", pm1))}
    low = np.array(noise) <= np.median(noise)
    result = {
        "stego_at_operating_point": _evaluate(feats["cover"], feats["stego"], groups_a, folds, seed),
        "control_lsb_replacement_all_values": _evaluate(feats["cover"], feats["lsbr"], groups_a, folds, seed),
        "control_pm1_rate_0.5_low_noise": _evaluate(feats["cover"][low], feats["pm1"][low], groups_a[low], folds, seed),
        "targeted_at_operating_point": _targeted(covers, stegos, groups_a, seed),
        "low_noise_threshold": float(np.median(noise)) if noise else float("nan"),
        "changes_per_value_in_tiles": float(np.mean([np.mean(s != c) for s, c in zip(stegos, covers)])) if covers else 0.0,
    }
    return result


def _print(points: list[dict], result: dict, seconds: float) -> None:
    print(f"{'image':30} {'shape':>18} {'tier':>9} {'payload B':>9} {'cap B':>6} {'chg/value':>9} "
          f"{'embeddable':>10} {'chg/emb':>8} {'PSNR':>6}")
    for p in points:
        psnr = f"{p['psnr_db']:.1f}" if p["psnr_db"] is not None else "-"
        print(f"{p['image']:30} {'x'.join(map(str, p['shape'])):>18} {p['tier']:>9} {p['payload_bytes']:9d} "
              f"{p['capacity_bytes']:6d} {p['changes_per_value']:9.5f} {p['embeddable_fraction']:10.3f} "
              f"{p['changes_per_embeddable_value']:8.4f} {psnr:>6}")
    carried = [p for p in points if p["tier"] != "none"]
    if carried:
        print(f"operating point over {len(carried)} carrying images: payload median "
              f"{np.median([p['payload_bytes'] for p in carried]):.0f} B (range {min(p['payload_bytes'] for p in carried)}"
              f"-{max(p['payload_bytes'] for p in carried)}), changes per value median "
              f"{np.median([p['changes_per_value'] for p in carried]):.5f}, per embeddable value median "
              f"{np.median([p['changes_per_embeddable_value'] for p in carried]):.4f}")
    print()
    print(f"{'detector / case':44} {'AUC':>6} {'95% CI (images)':>17} {'tiles':>6} {'sources':>7}")
    for key in ("stego_at_operating_point", "control_lsb_replacement_all_values", "control_pm1_rate_0.5_low_noise"):
        r = result[key]
        print(f"{'SPAM-686 + FLD ensemble: ' + key:44.44} {r['auc']:6.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
              f" {r['n_tiles']:6d} {r['n_images']:6d}")
    n = result["stego_at_operating_point"]
    for name, r in result["targeted_at_operating_point"].items():
        print(f"{'targeted ' + name + ' at operating point':44.44} {r['auc']:6.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
              f" {n['n_tiles']:6d} {n['n_images']:6d}")
    print(f"AUC: P(stego tile scores above cover tile), out-of-fold, grouped by image; 95% CI: bootstrap over images."
          f" {seconds:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stego_operating_point",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="use at most N real images")
    parser.add_argument("--tile", type=int, default=256, help="tile size in values (default 256)")
    parser.add_argument("--tiles", type=int, default=4, help="tiles per image (default 4)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds over images (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    for name in ("limit", "tile", "tiles", "folds"):
        value = getattr(args, name)
        if value is not None and value < (2 if name == "folds" else 1):
            parser.error(f"--{name} must be at least {2 if name == 'folds' else 1}, got {value}")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's notes on the test files' odd encodings
        points = operating_points(args.limit)
    carrying = {source_group(p["image"]) for p in points if p["tier"] != "none"}
    if len(carrying) < args.folds:
        print(f"{len(carrying)} source images carry a message; need at least --folds {args.folds}", file=sys.stderr)
        return 2
    result = run(points, tile=args.tile, tiles_per_image=args.tiles, folds=args.folds, seed=args.seed)
    seconds = time.perf_counter() - start
    _print(points, result, seconds)
    if args.json is not None:
        report = {"images": [{k: v for k, v in p.items() if not k.startswith("_")} for p in points],
                  "detection": result, "seconds": seconds}
        args.json.write_text(json.dumps(report, indent=2, allow_nan=True, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
