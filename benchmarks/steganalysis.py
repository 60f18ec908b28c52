"""Steganalysis of medarchive's embedding: chi-square, SPA and WS detectors, cover vs stego, ROC AUC.

    python -m benchmarks.steganalysis [--limit N] [--crop 512] [--json OUT.json]

The issue asks for the detectors of the ``sealwatch`` package. sealwatch 2025.9 cannot be
imported here (it imports torchvision at import time, and the only torchvision wheel
available is a CUDA build that fails against our CPU torch), so the three classic
detectors are implemented below from their papers, for integer images of any bit depth.
They were checked against sealwatch's source (chi2/_attack.py, spa/_attack.py,
ws/_attack.py), with these deliberate differences:

* chi-square (Westfeld & Pfitzmann 1999): one category per pair of values (2k, 2k+1)
  with observed count h[2k] and expected (h[2k] + h[2k+1]) / 2, categories with an
  expected count <= 4 dropped, k - 1 degrees of freedom (the paper's form; sealwatch
  counts both bins of a pair and fixes 255 degrees of freedom, which only suits 8-bit
  images). Score: the p-value (near 1 = pairs equalised = LSB replacement). Because the
  p-value saturates at 0 on almost every real image, the statistic itself (lower = more
  stego-like) is reported as a second score.
* SPA (Dumitrescu, Wu & Wang 2003): the sets X, Y, Z, W of sample pairs and the quadratic
  (W + Z)/2 q^2 + (2X - P) q + (Y - X) = 0 as in sealwatch, smaller root; pairs taken
  horizontally and vertically (sealwatch: horizontally). The raw root is the score (no
  clipping of small estimates to 0, which would only create ties).
* WS (Fridrich & Goljan 2004, Ker's KB predictor and 1/(5 + local variance) weights, as
  sealwatch's defaults): payload estimate 2 * sum w (s - s_bar)(s - s_hat), where s_bar is
  s with its LSB flipped (sealwatch returns half of it, the change rate).

The benchmark: every distinct image among the pydicom test files whose pixels the
codec reads (``medcodec.dicom.parse_dicom``), first frame, first sample, centre crop of
at most ``--crop`` x ``--crop`` values, as offset-binary stored values. For each payload
(2 KiB default, 4 KiB, 8 KiB, and the whole capacity) and each image where it fits, the
cover and its stego image (``medcodec.stego.embed``, random message, per-image random key)
are scored on the raw values and on an 8-bit windowed view (1st..99th percentile mapped
to 0..255, computed independently for cover and stego). AUC is the Mann-Whitney
probability that a stego image scores above a cover (0.5 = chance). As a control, the
same bits written by LSB *replacement* at the same positions are scored too: the
detectors must see that one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medcodec import stego

__all__ = [
    "chi_square_attack",
    "spa_payload",
    "ws_payload",
    "roc_auc",
    "auc_standard_error",
    "windowed_view",
    "load_images",
    "main",
]

DEFAULT_PAYLOAD = 2048
DEFAULT_CROP = 512


# --------------------------------------------------------------------------------------
# Detectors


def _chi2_sf(x: float, dof: int) -> float:
    """Survival function of the chi-square distribution (regularized upper incomplete gamma)."""
    if dof <= 0:
        return float("nan")
    if x <= 0:
        return 1.0
    a, z = dof / 2.0, x / 2.0
    if dof > 400:  # Wilson-Hilferty: accurate to ~1e-4 here, and no long series
        t = ((x / dof) ** (1.0 / 3.0) - (1.0 - 2.0 / (9.0 * dof))) / math.sqrt(2.0 / (9.0 * dof))
        return 0.5 * math.erfc(t / math.sqrt(2.0))
    log_prefix = -z + a * math.log(z) - math.lgamma(a)
    if z < a + 1.0:  # series for P
        term = total = 1.0 / a
        n = a
        for _ in range(10_000):
            n += 1.0
            term *= z / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    # continued fraction for Q (modified Lentz)
    tiny = 1e-300
    b = z + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * h)


def chi_square_attack(image: np.ndarray) -> tuple[float, float]:
    """Westfeld-Pfitzmann pairs-of-values attack: (p-value, chi-square statistic per dof).

    p near 1: the histogram's (2k, 2k+1) pairs are equalised, as full LSB replacement does.
    """
    values = np.asarray(image, dtype=np.int64).reshape(-1)
    if values.size == 0:
        return float("nan"), float("nan")
    hist = np.bincount(values - (values.min() & ~1))
    if hist.size % 2:
        hist = np.append(hist, 0)
    even, odd = hist[0::2].astype(np.float64), hist[1::2].astype(np.float64)
    expected = (even + odd) / 2.0
    keep = expected > 4
    k = int(keep.sum())
    if k < 2:
        return float("nan"), float("nan")
    stat = float(np.sum((even[keep] - expected[keep]) ** 2 / expected[keep]))
    dof = k - 1
    return _chi2_sf(stat, dof), stat / dof


def _pairs(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(image, dtype=np.int64)
    u = np.concatenate([img[:, :-1].reshape(-1), img[:-1, :].reshape(-1)])
    v = np.concatenate([img[:, 1:].reshape(-1), img[1:, :].reshape(-1)])
    return u, v


def spa_payload(image: np.ndarray) -> float:
    """Sample Pair Analysis: estimated LSB-replacement payload (fraction of values carrying bits)."""
    u, v = _pairs(image)
    if u.size == 0:
        return float("nan")
    odd = (v & 1) == 1
    x = int(np.count_nonzero((odd & (u > v)) | (~odd & (u < v))))
    y = int(np.count_nonzero((odd & (u < v)) | (~odd & (u > v))))
    z = int(np.count_nonzero(u == v))
    w = int(np.count_nonzero(((u >> 1) == (v >> 1)) & (u != v)))
    p = u.size
    a, b, c = (w + z) / 2.0, 2.0 * x - p, float(y - x)
    if a == 0:
        return -c / b if b else float("nan")
    disc = b * b - 4.0 * a * c
    if disc < 0:
        return -b / (2.0 * a)  # real part of the complex pair
    root = math.sqrt(disc)
    return min((-b + root) / (2.0 * a), (-b - root) / (2.0 * a))


def ws_payload(image: np.ndarray) -> float:
    """Weighted Stego-image analysis: estimated LSB-replacement payload (KB predictor, 1/(5+var) weights)."""
    img = np.asarray(image, dtype=np.int64)
    if img.ndim != 2 or min(img.shape) < 3:
        return float("nan")
    s = img.astype(np.float64)
    a, b, c = s[:-2, :-2], s[:-2, 1:-1], s[:-2, 2:]
    d, e, f = s[1:-1, :-2], s[1:-1, 1:-1], s[1:-1, 2:]
    g, h, i = s[2:, :-2], s[2:, 1:-1], s[2:, 2:]
    pred = (2.0 * (b + d + f + h) - (a + c + g + i)) / 4.0
    window = (a, b, c, d, e, f, g, h, i)
    mean = sum(window) / 9.0
    var = sum(x * x for x in window) / 9.0 - mean * mean
    weights = 1.0 / (5.0 + np.maximum(var, 0.0))
    weights /= weights.sum()
    centre = img[1:-1, 1:-1]
    flipped = (centre ^ 1).astype(np.float64)
    return float(2.0 * np.sum(weights * (e - flipped) * (e - pred)))


def roc_auc(cover_scores: np.ndarray, stego_scores: np.ndarray) -> float:
    """Rank-based (Mann-Whitney) AUC: P(stego score > cover score), ties counted half; NaNs dropped."""
    cover = np.asarray(cover_scores, dtype=np.float64)
    stego_ = np.asarray(stego_scores, dtype=np.float64)
    cover, stego_ = cover[~np.isnan(cover)], stego_[~np.isnan(stego_)]
    n0, n1 = cover.size, stego_.size
    if n0 == 0 or n1 == 0:
        return float("nan")
    scores = np.concatenate([cover, stego_])
    uniq, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    ranks = avg_rank[inverse]
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2.0) / (n0 * n1))


def auc_standard_error(auc: float, n_cover: int, n_stego: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC estimate."""
    if not (n_cover and n_stego) or math.isnan(auc):
        return float("nan")
    q1, q2 = auc / (2.0 - auc), 2.0 * auc * auc / (1.0 + auc)
    var = (auc * (1 - auc) + (n_stego - 1) * (q1 - auc * auc) + (n_cover - 1) * (q2 - auc * auc)) / (n_cover * n_stego)
    return math.sqrt(max(var, 0.0))


def windowed_view(values: np.ndarray) -> np.ndarray:
    """8-bit display view: 1st..99th percentile of the image mapped to 0..255 (rounded, clipped)."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = np.percentile(v, [1.0, 99.0])
    if hi <= lo:
        return np.zeros(v.shape, dtype=np.uint8)
    return np.clip(np.rint((v - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class Image:
    name: str
    modality: str
    bits_stored: int
    values: np.ndarray  # 2-D int64 offset-binary stored values


def load_images(*, crop: int = DEFAULT_CROP, limit: int | None = None) -> list[Image]:
    """Distinct first-frame, first-sample centre crops of every pydicom test file the codec reads."""
    import pydicom
    from pydicom.data import get_testdata_files

    from medcodec.dicom import RESTORE_VERBATIM, parse_dicom
    from medcodec.errors import MedcodecError
    from medcodec.planes import SampleFormat, words_to_values

    images: list[Image] = []
    seen: set[str] = set()
    for path in sorted(p for p in get_testdata_files() if os.path.isfile(p)):
        try:
            data = Path(path).read_bytes()
            parsed = parse_dicom(data)
        except MedcodecError:
            continue
        if parsed.restore_mode == RESTORE_VERBATIM or parsed.frames is None or parsed.spec is None:
            continue
        spec = parsed.spec
        try:
            fmt = SampleFormat(
                bits_allocated=spec.bits_allocated,
                bits_stored=spec.bits_stored,
                high_bit=spec.high_bit,
                signed=spec.signed,
            )
            values, _ = words_to_values(parsed.frames[:1, :1], fmt)
        except MedcodecError:
            continue
        img = values[0, 0]
        rows, cols = img.shape
        r0, c0 = max(0, (rows - crop) // 2), max(0, (cols - crop) // 2)
        img = np.ascontiguousarray(img[r0 : r0 + crop, c0 : c0 + crop])
        digest = hashlib.sha256(img.astype("<i8").tobytes() + bytes([spec.bits_stored])).hexdigest()
        if digest in seen or img.size < 64:
            continue
        seen.add(digest)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                modality = str(pydicom.dcmread(path, stop_before_pixels=True).get("Modality", "?"))
            except Exception:
                modality = "?"
        images.append(Image(name=os.path.basename(path), modality=modality, bits_stored=spec.bits_stored, values=img))
        if limit is not None and len(images) >= limit:
            break
    return images


# --------------------------------------------------------------------------------------
# Benchmark


DETECTORS: dict[str, Callable[[np.ndarray], float]] = {
    "chi2_p": lambda img: chi_square_attack(img)[0],
    "chi2_stat": lambda img: -chi_square_attack(img)[1],  # lower statistic = more stego-like
    "spa": spa_payload,
    "ws": ws_payload,
}
VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"raw": lambda v: v, "win8": windowed_view}


def _scores(img: np.ndarray) -> dict[str, dict[str, float]]:
    out = {}
    for view_name, view in VIEWS.items():
        shown = view(img)
        out[view_name] = {name: float(fn(shown)) for name, fn in DETECTORS.items()}
    return out


def run(images: list[Image], payloads: list[int | None], *, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    per_image = []
    cover_scores = {img.name + str(i): _scores(img.values) for i, img in enumerate(images)}
    results: dict[str, dict] = {}
    for payload in payloads:
        label = "capacity" if payload is None else f"{payload}B"
        cov, ste, rep = [], [], []
        skipped = []
        psnrs = []
        rates = []
        for i, img in enumerate(images):
            key = rng.bytes(32)
            cap = stego.capacity_bits(img.values, img.bits_stored, key=key)
            nbytes = cap // 8 if payload is None else payload
            if nbytes <= 0 or 8 * nbytes > cap:
                skipped.append(img.name)
                continue
            message = rng.bytes(nbytes)
            stego_values, _ = stego.embed(img.values, message, key=key, bits_stored=img.bits_stored)
            _, mask = stego.extract(stego_values, key=key, bits_stored=img.bits_stored)
            replaced = img.values.copy()
            replaced[mask] = (img.values[mask] & ~1) | (stego_values[mask] & 1)
            cov.append(cover_scores[img.name + str(i)])
            ste.append(_scores(stego_values))
            rep.append(_scores(replaced))
            psnrs.append(stego.psnr(img.values, stego_values, img.bits_stored))
            rates.append(float(mask.sum()) / img.values.size)
            per_image.append(
                {
                    "payload": label,
                    "image": img.name,
                    "modality": img.modality,
                    "bits_stored": img.bits_stored,
                    "shape": list(img.values.shape),
                    "capacity_bits": cap,
                    "message_bytes": nbytes,
                    "carrying_fraction": rates[-1],
                    "changed_fraction": float(np.count_nonzero(stego_values != img.values)) / img.values.size,
                    "psnr_db": psnrs[-1],
                    "max_abs_error": int(np.abs(stego_values - img.values).max()),
                }
            )
        aucs: dict[str, dict[str, dict[str, float]]] = {"stego": {}, "lsb_replacement": {}}
        for kind, group in (("stego", ste), ("lsb_replacement", rep)):
            for view_name in VIEWS:
                aucs[kind][view_name] = {
                    det: roc_auc(
                        np.array([c[view_name][det] for c in cov]), np.array([s[view_name][det] for s in group])
                    )
                    for det in DETECTORS
                }
        results[label] = {
            "n_images": len(cov),
            "skipped_too_small": skipped,
            "median_carrying_fraction": float(np.median(rates)) if rates else float("nan"),
            "min_psnr_db": float(np.min(psnrs)) if psnrs else float("nan"),
            "auc": aucs,
        }
    return {"results": results, "per_image": per_image}


def _print_table(report: dict, n_images: int, seconds: float) -> None:
    print(f"{n_images} distinct images (first frame, first sample, centre crop); {seconds:.1f} s")
    dets = list(DETECTORS)
    header = f"{'payload':>10} {'n':>3} {'rate':>6} {'kind':>16} {'view':>5} " + " ".join(f"{d:>13}" for d in dets)
    print(header)
    print("-" * len(header))
    for label, res in report["results"].items():
        for kind in ("stego", "lsb_replacement"):
            for view in VIEWS:
                row = res["auc"][kind][view]
                n = res["n_images"]
                cells = [f"{row[d]:.3f}+-{auc_standard_error(row[d], n, n):.2f}" for d in dets]
                print(
                    f"{label:>10} {n:>3} {res['median_carrying_fraction']:>6.3f} {kind:>16} {view:>5} "
                    + " ".join(f"{c:>13}" for c in cells)
                )
    print("AUC +- Hanley-McNeil standard error: P(stego scores above cover); 0.5 = chance.")
    print("rate: median fraction of values carrying bits.")
    print("lsb_replacement: same bits at the same positions written by LSB replacement (control).")
    by_payload: dict[str, list[float]] = {}
    for row in report["per_image"]:
        by_payload.setdefault(row["payload"], []).append(row["psnr_db"])
    for label, values in by_payload.items():
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            print(f"PSNR {label}: min {min(finite):.1f} dB, median {float(np.median(finite)):.1f} dB; max abs error 1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.steganalysis", description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="use at most N images")
    parser.add_argument("--crop", type=int, default=DEFAULT_CROP, help="centre crop size (default 512)")
    parser.add_argument("--payload", type=int, default=DEFAULT_PAYLOAD, help="default payload in bytes (2048)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    images = load_images(crop=args.crop, limit=args.limit)
    if not images:
        print("no images found", file=sys.stderr)
        return 1
    payloads: list[int | None] = [args.payload, 2 * args.payload, 4 * args.payload, None]
    report = run(images, payloads, seed=args.seed)
    seconds = time.perf_counter() - start
    _print_table(report, len(images), seconds)
    if args.json is not None:
        report["images"] = [
            {"name": i.name, "modality": i.modality, "bits_stored": i.bits_stored, "shape": list(i.values.shape)}
            for i in images
        ]
        report["seconds"] = seconds
        args.json.write_text(json.dumps(report, indent=2, allow_nan=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
