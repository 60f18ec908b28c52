"""Nanoseconds per sample of the compiled global coders, one plane at a time.

    python -m benchmarks.kernel_speed [--split held-out|train|all] [--runs 3] [--limit N]

For each single-plane pydicom-data image of the split, codes its plane with `fast`'s
raster coder (``raster-wpc-v3``) and, where the wavelet probe would send it there, its
wavelet path (``wavelet53-v2``),
then decodes it and checks the round trip. Reports the best of ``--runs`` encode and
decode times per sample (the coder alone: no record, digest or words), so a kernel
change can be timed without the rest of the codec. The numba cache is loaded before
timing.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _best(fn, runs: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def measure(split: str, runs: int, limit: int | None) -> list[dict]:
    from medcodec.coders import coder_for
    from medcodec.model.images import iter_images, pydicom_test_files
    from medcodec.model.train import held_out
    from medcodec.paths import PlaneInfo
    from medcodec.codec import PRESET_GLOBAL_MODEL
    from medcodec.coders.selectors import FAST_WAVELET_PROBE, wavelet_probe

    raster, wavelet = coder_for(PRESET_GLOBAL_MODEL["fast"]).candidates[:2]

    rows = []
    for image in iter_images(sorted(pydicom_test_files())):
        if split != "all" and (split == "held-out") != held_out(image.name):
            continue
        if image.values.shape[:2] != (1, 1):
            continue
        plane = np.ascontiguousarray(image.values[0, 0], dtype=np.int64)
        info = PlaneInfo(rows=plane.shape[0], cols=plane.shape[1], bits=image.bits, k=0, preset="fast")
        ids = [raster] + ([wavelet] if wavelet_probe(plane) >= FAST_WAVELET_PROBE else [])
        for model_id in ids:
            coder = coder_for(model_id)
            coder.decode(coder.encode(plane, info), info)  # load the compiled kernels
            enc_s, data = _best(lambda: coder.encode(plane, info), runs)
            dec_s, out = _best(lambda: coder.decode(data, info), runs)
            if not np.array_equal(out, plane):
                raise RuntimeError(f"{image.name}: {model_id} did not round-trip")
            rows.append({"image": image.name, "coder": model_id, "samples": plane.size, "bytes": len(data),
                         "encode_ns": 1e9 * enc_s / plane.size, "decode_ns": 1e9 * dec_s / plane.size})
        if limit is not None and len(rows) >= limit:
            break
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernel_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=("held-out", "train", "all"), default="held-out")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="stop after this many rows")
    args = parser.parse_args(argv)
    rows = measure(args.split, max(1, args.runs), args.limit)
    print(f"compiled global coders, {args.split} split, best of {args.runs} runs, one thread")
    print(f"{'image':28s} {'coder':14s} {'samples':>9s} {'bytes':>9s} {'enc ns/px':>10s} {'dec ns/px':>10s}")
    for r in rows:
        print(f"{r['image'][:28]:28s} {r['coder']:14s} {r['samples']:9d} {r['bytes']:9d} "
              f"{r['encode_ns']:10.1f} {r['decode_ns']:10.1f}")
    if rows:
        total = sum(r["samples"] for r in rows)
        for key in ("encode_ns", "decode_ns"):
            weighted = sum(r[key] * r["samples"] for r in rows) / total
            print(f"sample-weighted {key.replace('_ns', '')}: {weighted:.1f} ns per sample")
    return 0


if __name__ == "__main__":
    sys.exit(main())
