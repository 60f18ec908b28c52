"""What `max`'s raster encoder search buys: size and encode time with its settings lowered.

    python -m benchmarks.encoder_frontier [FILES, DIRS or 'pydicom'] [--split train|held-out|all]
                                          [--set NAME=V[,NAME=V...]]... [--runs 2] [--json OUT.json]

`max` codes most planes with ``raster-wp-v4``, whose encoder searches: it fits up to
``LS_MAX_CLASSES`` linear predictors on pixels sampled every ``n // LS_SAMPLE``-th, by
``LS_L1_ITERATIONS`` reweighted solves, reassigns the context leaves to them and fits
again (``LS_ROUNDS``), then lets every leaf choose its predictor. The decoder reads
what was chosen, so these settings are the encoder's alone: lowering them changes
records' sizes and the encoder's time, never what a record means. This tool codes
every image of the split with `max` as shipped and with each ``--set`` (several names
joined by commas make one setting), alternated image by image so that the machine's
drift falls on all of them alike, decodes every record to check it, and reports each
setting's total bytes and summed encode time against the shipped settings (best of
``--runs`` per image, one thread). Tune on the train split (the default); the
held-out split is for confirming a choice, not for making it.

Measured on the train split (2026-12-07, 29 images, two runs, one process:
``--set LS_SAMPLE=65536 --set LS_ROUNDS=1,LS_L1_ITERATIONS=3 --runs 2``): fits and
choices on a 2**16-pixel sample encode 19% faster and 0.22% larger (the LUT test
images mlut_18 and vlut_04 +30% and +26%, bad_sequence, a CT, +1.3%); one round of fits
with three reweighted solves 15% faster and 0.10% larger (J2K_pixelrep_mismatch, a CT,
+1.9%). Neither was taken: `max` is the preset chosen for its size, its CT images
lost 1-2% under both, and neither brings its encode near JPEG-XL e7's speed (that
needs ~5x). All four lowered at once (``--set LS_SAMPLE=32768,LS_ROUNDS=1,
LS_L1_ITERATIONS=2,LS_FIT_ROWS=8192``, the same day, a fuzzing campaign on the other
core): 30.5% faster for 0.38% more bytes, the CT images +2.0 to +2.6% (bad_sequence,
J2K_pixelrep_mismatch), the LUT test images +33 to +36%.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import numpy as np

from benchmarks import no_images, write_json
from benchmarks.compare import _split_of, code_version
from medcodec.errors import MedcodecError
from medcodec.model.images import InputReport, iter_images

# The raster encoder's search settings (medcodec.wavefront), and whether a setting may
# exceed the shipped value. LS_MAX_CLASSES also bounds what a reader accepts (a stream
# naming more fitted predictors is refused), so it may only be lowered.
SETTINGS = {
    "LS_SAMPLE": True,
    "LS_ROUNDS": True,
    "LS_L1_ITERATIONS": True,
    "LS_WARM_ITERATIONS": True,
    "LS_FIT_ROWS": True,
    "LS_CLASS_PIXELS": True,
    "LS_MAX_CLASSES": False,
}


def parse_setting(text: str) -> dict[str, int]:
    """``NAME=V[,NAME=V...]`` -> {NAME: V}; ValueError naming what is wrong."""
    from medcodec import wavefront

    out: dict[str, int] = {}
    for part in text.split(","):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or name not in SETTINGS:
            raise ValueError(f"{part!r}: expected NAME=VALUE with NAME one of {', '.join(SETTINGS)}")
        try:
            v = int(value)
        except ValueError:
            raise ValueError(f"{part!r}: the value must be an integer") from None
        shipped = getattr(wavefront, name)
        if v < 1 or (not SETTINGS[name] and v > shipped):
            bound = f"1..{shipped}" if not SETTINGS[name] else ">= 1"
            raise ValueError(f"{part!r}: {name} must be {bound}")
        out[name] = v
    return out


def _label(setting: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in setting.items()) or "shipped"


def _with(setting: dict[str, int], fn):
    """``fn()`` with the wavefront settings ``setting`` in place, the shipped ones restored after."""
    from medcodec import wavefront

    before = {k: getattr(wavefront, k) for k in setting}
    try:
        for k, v in setting.items():
            setattr(wavefront, k, v)
        return fn()
    finally:
        for k, v in before.items():
            setattr(wavefront, k, v)


def measure(sources: Sequence[str], settings: list[dict[str, int]], *, split: str = "train", runs: int = 2,
            report: InputReport | None = None) -> list[dict]:
    """One row per image of ``split``: per setting (the shipped one first), the record's
    bytes and the best of ``runs`` encode seconds. Every record is decoded (with the
    shipped settings) and compared with the image."""
    import medcodec
    from medcodec import allocator
    from pipelines.standard_codecs import OurCodec

    allocator.tune()
    medcodec.set_model_threads(1)
    codec = OurCodec(preset="max")
    all_settings = [{}] + settings
    rows = []
    for image in iter_images(sources, report=report):
        if split != "all" and _split_of(image.name) != split:
            continue
        row = {"name": image.name, "modality": image.modality, "raw_bytes": int(image.values.nbytes),
               "bytes": [], "seconds": []}
        codec.encode(image)  # the image's kernels and models loaded before timing
        best = [float("inf")] * len(all_settings)
        blobs: list = [None] * len(all_settings)
        for _ in range(runs):
            for i, setting in enumerate(all_settings):  # alternated: drift falls on every setting alike
                t0 = time.perf_counter()
                blobs[i] = _with(setting, lambda: codec.encode(image))
                best[i] = min(best[i], time.perf_counter() - t0)
        for i, blob in enumerate(blobs):
            out = codec.decode(blob, image)
            if not np.array_equal(out, image.values):
                raise RuntimeError(f"{image.name}: the record coded with {_label(all_settings[i])} does not decode")
        row["bytes"] = [sum(len(b) for b in blob) for blob in blobs]
        row["seconds"] = best
        rows.append(row)
        codec.path_timings.clear()
    return rows


def summarize(rows: list[dict], settings: list[dict[str, int]]) -> list[dict]:
    """Per setting (shipped first): total bytes and seconds, and their change against shipped."""
    out = []
    base_b = sum(r["bytes"][0] for r in rows)
    base_s = sum(r["seconds"][0] for r in rows)
    for i, setting in enumerate([{}] + settings):
        b = sum(r["bytes"][i] for r in rows)
        s = sum(r["seconds"][i] for r in rows)
        worst = max(rows, key=lambda r: r["bytes"][i] / r["bytes"][0])
        out.append({"setting": _label(setting), "bytes": b, "seconds": s, "size_change": b / base_b - 1,
                    "time_change": s / base_s - 1, "worst_image": worst["name"],
                    "worst_change": worst["bytes"][i] / worst["bytes"][0] - 1})
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.encoder_frontier", description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="*", default=["pydicom"], help="files, folders, or 'pydicom' (default)")
    parser.add_argument("--split", choices=("train", "held-out", "all"), default="train")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=V[,NAME=V]",
                        help=f"a lowered search setting to compare ({', '.join(SETTINGS)}); repeatable")
    parser.add_argument("--runs", type=int, default=2, help="encodes per image and setting; the fastest counts")
    parser.add_argument("--json", help="write the rows and the summary here")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    try:
        args.parsed = [parse_setting(s) for s in args.settings]
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = InputReport()
    try:
        rows = measure(args.sources, args.parsed, split=args.split, runs=args.runs, report=report)
    except (RuntimeError, MedcodecError) as exc:  # a record that does not decode, or an image the codec refuses
        print(f"encoder_frontier: {exc}", file=sys.stderr)
        return 1
    if not rows:
        return no_images(f"no images in the {args.split} split", report)
    summary = summarize(rows, args.parsed)
    print(f"max encoder search settings, {args.split} split, {len(rows)} images, best of {args.runs} runs, one thread "
          f"(code {code_version()})")
    print(f"{'setting':44s} {'bytes':>12s} {'size':>8s} {'encode s':>9s} {'time':>8s}  largest growth")
    for s in summary:
        print(f"{s['setting'][:44]:44s} {s['bytes']:12,d} {100 * s['size_change']:+7.2f}% {s['seconds']:9.2f} "
              f"{100 * s['time_change']:+7.1f}%  {s['worst_image']} {100 * s['worst_change']:+.2f}%")
    write_json(args.json, {"split": args.split, "runs": args.runs, "rows": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
