"""Our codec side by side with the standard lossless codecs: JPEG-LS, JPEG 2000, HTJ2K, JPEG-XL.

    python -m benchmarks.compare DIR [DIR ...] [--runs N] [--preset max|fast] [--json OUT.json] [--limit N]
    medarchive bench DIR ...            (the CLI calls main(argv))

DIR is a folder (searched recursively for DICOM files, by content, and ``.npy`` arrays),
a single file, or the literal ``pydicom``: the pydicom-data test files whose modality is
an imaging one (CT, MR, CR, DX, US, MG, XA, RF, OT).

The accounting is the same for every codec:

* every codec gets the same values: the stored bits of each word (BitsStored bits ending
  at HighBit), signed samples mapped to offset binary, as uint8 (<= 8 bits) or uint16;
* every decode is compared with its input; a mismatch is reported as FAIL, an exception
  as ERR, for that image and codec (never skipped silently);
* our size is the whole record ``compress_pixels`` returns (header, config, trailer);
  the standard codecs' sizes are their codestreams, frame by frame, summed;
* bits per sample = 8 * bytes / samples; MB/s counts raw input bytes (1 byte per sample
  up to 8 bits, 2 above); timings are the median of ``--runs`` runs, single-threaded
  where the library lets us choose.

Duplicate pixel data (pydicom-data holds the same image in several transfer syntaxes)
is benchmarked once; the duplicates are listed as skipped.  Images with more than
``--max-frames`` frames (default 8) are cut to their first frames, and the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

# The images (medcodec.model.images) and the codecs (pipelines.standard_codecs) live below
# this module, where train-base and inspect --html use them too.
from medcodec.model.images import (
    DEFAULT_FRAME_CAP,
    IMAGING_MODALITIES,
    BenchImage,
    InputReport,
    Skipped,
    iter_images,
    stored_values,  # noqa: F401  (part of this module's interface: tests/test_bench.py)
)
from pipelines.standard_codecs import (
    ALL_CODECS,
    KNOWN_CODECS,
    OPTIONAL_CODECS,
    Codec,
    CodecInfo,
    build_codecs,
)

STATUS_OK = "ok"
STATUS_FAIL = "FAIL"  # decoded, but not equal to the input
STATUS_ERROR = "ERR"  # the encoder or decoder raised


# --- measuring -----------------------------------------------------------------------------


@dataclass
class CodecResult:
    """One codec on one image."""

    status: str
    nbytes: int | None = None
    bpp: float | None = None
    encode_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    encode_mbps: float | None = None
    decode_mbps: float | None = None
    error: str | None = None
    # ours only: median seconds per path and direction, and the local-path token count
    paths: dict[str, float] | None = None


def _path_medians(calls: list) -> dict[str, float] | None:
    if not calls:
        return None
    out: dict[str, float] = {}
    for direction in ("encode", "decode"):
        runs = [t for d, t in calls if d == direction]
        for key in ("global", "local"):
            if runs:
                out[f"{direction}_{key}_s"] = statistics.median(t.get(key, 0.0) for t in runs)
        if runs:
            out["local_tokens"] = float(runs[0].get("local_tokens", 0))
    return out


@dataclass
class ImageRow:
    """One benchmarked image and every codec's result on it."""

    name: str
    source: str
    modality: str
    rows: int
    cols: int
    frames: int
    frames_total: int
    samples: int
    bits: int
    photometric: str
    origin: str
    n_samples: int
    raw_bytes: int
    results: dict[str, CodecResult] = field(default_factory=dict)


def _mismatch(out: np.ndarray, want: np.ndarray) -> str | None:
    if out.shape != want.shape:
        return f"decoded shape {out.shape} != input shape {want.shape}"
    diff = out.astype(np.int64) != want.astype(np.int64)
    if diff.any():
        worst = int(np.abs(out.astype(np.int64) - want.astype(np.int64)).max())
        return f"{int(diff.sum())} of {want.size} samples differ (max |error| {worst})"
    return None


def measure(codec: Codec, image: BenchImage, *, runs: int) -> CodecResult:
    """Encode and decode ``runs`` times; verify every decode; median timings."""
    result = CodecResult(status=STATUS_OK)
    timings = getattr(codec, "path_timings", None)
    if timings is not None:
        timings.clear()
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            blobs = codec.encode(image)
            t1 = time.perf_counter()
            out = codec.decode(blobs, image)
            t2 = time.perf_counter()
            problem = _mismatch(np.asarray(out), image.values)
            if problem:
                return CodecResult(status=STATUS_FAIL, error=problem)
            nbytes = sum(len(b) for b in blobs)
            if result.nbytes is not None and nbytes != result.nbytes:
                result.error = f"size not deterministic: {result.nbytes} then {nbytes} bytes"
            result.nbytes = nbytes
            result.encode_s.append(t1 - t0)
            result.decode_s.append(t2 - t1)
    except Exception as exc:
        return CodecResult(status=STATUS_ERROR, error=f"{type(exc).__name__}: {exc}")
    mb = image.raw_bytes / 1e6
    result.paths = _path_medians(timings) if timings is not None else None
    result.bpp = 8.0 * result.nbytes / image.n_samples
    result.encode_mbps = mb / max(statistics.median(result.encode_s), 1e-9)
    result.decode_mbps = mb / max(statistics.median(result.decode_s), 1e-9)
    return result


@dataclass
class BenchResult:
    """Everything one benchmark run measured."""

    rows: list[ImageRow]
    codecs: list[CodecInfo]
    skipped: list[Skipped]
    filtered: int
    summary: dict[str, Any]
    meta: dict[str, Any]

    @property
    def codec_names(self) -> list[str]:
        return [c.name for c in self.codecs if c.unavailable is None]

    def to_json(self) -> dict[str, Any]:
        def row(r: ImageRow) -> dict[str, Any]:
            d = {k: v for k, v in vars(r).items() if k != "results"}
            d["results"] = {name: vars(res) for name, res in r.results.items()}
            return d

        return {
            "meta": self.meta,
            "codecs": [vars(c) for c in self.codecs],
            "images": [row(r) for r in self.rows],
            "skipped": [vars(s) for s in self.skipped],
            "filtered": self.filtered,
            "summary": self.summary,
        }


def _overall(rows: Sequence[ImageRow], name: str, times: str) -> float | None:
    seconds = sum(statistics.median(getattr(r.results[name], times)) for r in rows)
    return sum(r.raw_bytes for r in rows) / 1e6 / seconds if rows and seconds > 0 else None


def summarize(rows: Sequence[ImageRow], codec_names: Sequence[str]) -> dict[str, Any]:
    """Means, medians and ratios over the images on which every codec round-tripped."""
    common = [r for r in rows if all(r.results[c].status == STATUS_OK for c in codec_names)]
    per_codec: dict[str, Any] = {}
    for name in codec_names:
        res = [r.results[name] for r in common]
        n_samples = sum(r.n_samples for r in common)
        per_codec[name] = {
            "images_ok": sum(r.results[name].status == STATUS_OK for r in rows),
            "images_failed": sum(r.results[name].status != STATUS_OK for r in rows),
            "weighted_bpp": 8.0 * sum(x.nbytes for x in res) / n_samples if common else None,
            "mean_bpp": statistics.fmean(x.bpp for x in res) if common else None,
            "median_encode_mbps": statistics.median(x.encode_mbps for x in res) if common else None,
            "median_decode_mbps": statistics.median(x.decode_mbps for x in res) if common else None,
            # every image's raw MB over the sum of its median seconds: the speed of coding
            # all of them, which no single image's place in the order decides
            "overall_encode_mbps": _overall(common, name, "encode_s"),
            "overall_decode_mbps": _overall(common, name, "decode_s"),
            "total_bytes": sum(x.nbytes for x in res),
        }
    ratios: dict[str, float | None] = {}
    if "ours" in per_codec:
        ours = per_codec["ours"]["weighted_bpp"]
        for name in codec_names:
            theirs = per_codec[name]["weighted_bpp"]
            if name != "ours":
                ratios[name] = ours / theirs if ours is not None and theirs else None
    paths = None
    ours_res = [r.results["ours"] for r in common if "ours" in r.results and r.results["ours"].paths]
    if ours_res:
        raw_mb = sum(r.raw_bytes for r in common if "ours" in r.results and r.results["ours"].paths) / 1e6
        tot = {k: sum(x.paths.get(k, 0.0) for x in ours_res) for k in ours_res[0].paths}
        tokens = tot.get("local_tokens", 0.0)
        paths = {
            "seconds": tot,
            "global_encode_mbps": raw_mb / tot["encode_global_s"] if tot.get("encode_global_s") else None,
            "global_decode_mbps": raw_mb / tot["decode_global_s"] if tot.get("decode_global_s") else None,
            "local_encode_tokens_per_s": tokens / tot["encode_local_s"] if tot.get("encode_local_s") else None,
            "local_decode_tokens_per_s": tokens / tot["decode_local_s"] if tot.get("decode_local_s") else None,
            "local_tokens": tokens,
        }
    return {
        "paths": paths,
        "images": len(rows),
        "images_in_summary": len(common),
        "samples_in_summary": sum(r.n_samples for r in common),
        "raw_bytes_in_summary": sum(r.raw_bytes for r in common),
        "codecs": per_codec,
        "ours_over": ratios,
    }


def code_version() -> str:
    """Git commit of the codec under test, marked dirty when medcodec/ has uncommitted edits."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "medcodec"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{head}{' + uncommitted medcodec/ edits' if dirty else ''}"


def _machine() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    versions = {"numpy": np.__version__}
    for mod in ("imagecodecs", "pydicom"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = "missing"
    from medcodec import allocator

    return {
        "allocator": allocator.tune() or "default",
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _warm_up(codecs: Sequence[Codec]) -> None:
    """One untimed round trip per codec, so that imports and first-call setup stay out of the
    first image's timings."""
    ramp = np.add.outer(np.arange(16), np.arange(16)).astype(np.uint8)
    image = BenchImage(
        name="warm-up", source="", modality="-", values=ramp[None, None], bits=8,
        frames_total=1, photometric="-", origin="npy",
    )
    for codec in codecs:
        try:
            codec.decode(codec.encode(image), image)
        except Exception:  # a real failure shows up (and is reported) on the real images
            pass


def run_benchmark(
    paths: Iterable[str | os.PathLike],
    *,
    runs: int = 3,
    preset: str = "max",
    codecs: Sequence[str] | None = None,
    limit: int | None = None,
    frame_cap: int = DEFAULT_FRAME_CAP,
    dedupe: bool = True,
    split: str = "all",
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Benchmark every image under ``paths`` (folders, files, or ``"pydicom"``) with ``codecs``.

    ``codecs`` names columns from :data:`KNOWN_CODECS` (default: :data:`ALL_CODECS`). Returns the per-image
    rows, the skipped inputs with reasons, and the summary; never raises for a bad input.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if frame_cap < 1:
        raise ValueError(f"frame_cap must be >= 1, got {frame_cap}")
    paths = [str(p) for p in paths]
    import medcodec
    from medcodec import allocator

    allocator.tune()  # as medarchive's jobs run (every codec shares the process and its allocator)
    medcodec.set_model_threads(1)  # single-threaded, as the standard codecs (torch and BLAS)
    start = time.perf_counter()
    active, infos = build_codecs(codecs, preset=preset)
    _warm_up(active)
    report = InputReport()
    rows: list[ImageRow] = []
    for image in iter_images(paths, frame_cap=frame_cap, dedupe=dedupe, limit=limit, report=report):
        if split != "all" and _split_of(image.name) != split:
            report.skipped.append(Skipped(image.name, f"not in the {split} split"))
            continue
        t0 = time.perf_counter()
        row = ImageRow(
            name=image.name,
            source=image.source,
            modality=image.modality,
            rows=image.rows,
            cols=image.cols,
            frames=image.frames,
            frames_total=image.frames_total,
            samples=image.samples,
            bits=image.bits,
            photometric=image.photometric,
            origin=image.origin,
            n_samples=image.n_samples,
            raw_bytes=image.raw_bytes,
        )
        for codec in active:
            row.results[codec.name] = measure(codec, image, runs=runs)
        rows.append(row)
        if progress:
            states = " ".join(f"{n}={r.status}" for n, r in row.results.items())
            progress(f"[{len(rows)}] {image.name} {image.rows}x{image.cols}x{image.frames}: "
                     f"{time.perf_counter() - t0:.1f}s {states}")
    names = [c.name for c in active]
    meta = {
        "sources": paths,
        "split": split,
        "models": _model_sizes(preset) if "ours" in names else {},
        "runs": runs,
        "preset": preset,
        "frame_cap": frame_cap,
        "dedupe": dedupe,
        "limit": limit,
        "code_version": code_version(),
        "wall_s": round(time.perf_counter() - start, 2),
        **_machine(),
    }
    return BenchResult(
        rows=rows, codecs=infos, skipped=report.skipped, filtered=report.filtered,
        summary=summarize(rows, names), meta=meta,
    )


def _split_of(name: str) -> str:
    """'held-out' for the images the shipped models were never trained on, else 'train'."""
    from medcodec.model.train import held_out

    return "held-out" if held_out(name) else "train"


def _model_sizes(preset: str) -> dict[str, int]:
    """Bytes of the model(s) a record of this preset needs (shipped, or stored once per archive)."""
    from medcodec.codec import PRESET_LOCAL_MODELS
    from medcodec.model.registry import WEIGHTS_DIR

    paths = {m: WEIGHTS_DIR / f"{m}.safetensors" for m in PRESET_LOCAL_MODELS[preset]}
    return {m: p.stat().st_size for m, p in paths.items() if p.is_file()}


# --- reporting -----------------------------------------------------------------------------


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cell(res: CodecResult | None) -> str:
    if res is None:
        return "-"
    if res.status != STATUS_OK:
        return res.status
    return f"{res.bpp:.3f}"


def _align(table: list[list[str]], left: int) -> list[str]:
    """Text columns (the first ``left``) left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    out = []
    for row in table:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        out.append("  ".join(cells).rstrip())
    return out


def format_table(result: BenchResult) -> str:
    """The plain-text report: setup, one row per image, summary rows, notes and skips."""
    meta, summary = result.meta, result.summary
    names = result.codec_names
    lines = [
        "Lossless benchmark: bits per sample (lower is better); every decode verified against its input",
        f"command: {meta.get('command', '(run_benchmark)')}",
        f"machine: {meta['cpu_count']} CPUs ({meta['cpus_usable']} usable), {meta['platform']}, "
        f"Python {meta['python']}, numpy {meta['versions']['numpy']}, imagecodecs {meta['versions']['imagecodecs']}",
        f"code: {meta.get('code_version', 'unknown')}",
        f"runs: {meta['runs']} (timings: median; sizes are deterministic); preset: {meta['preset']}; "
        f"images: {meta.get('split', 'all')}; "
        f"wall time {meta['wall_s']:.1f}s",
        "codecs:",
    ]
    for c in result.codecs:
        lines.append(f"  {c.name:<7} {c.label if c.unavailable is None else 'UNAVAILABLE: ' + c.unavailable}")
    lines.append("")

    header = ["image", "mod", "rows x cols", "frames", "spp", "bits", *names]
    table = [header]
    capped = False
    for r in result.rows:
        frames = str(r.frames)
        if r.frames < r.frames_total:
            frames, capped = f"{r.frames} of {r.frames_total}*", True
        table.append(
            [r.name, r.modality, f"{r.rows}x{r.cols}", frames, str(r.samples), str(r.bits),
             *(_cell(r.results.get(n)) for n in names)]
        )
    per = summary["codecs"]
    blank = [""] * 5
    summary_rows = [
        ["weighted mean bpp", *blank, *(_fmt(per[n]["weighted_bpp"], 3) for n in names)],
        ["unweighted mean bpp", *blank, *(_fmt(per[n]["mean_bpp"], 3) for n in names)],
        ["median encode MB/s", *blank, *(_fmt(per[n]["median_encode_mbps"], 2) for n in names)],
        ["median decode MB/s", *blank, *(_fmt(per[n]["median_decode_mbps"], 2) for n in names)],
        ["overall encode MB/s", *blank, *(_fmt(per[n]["overall_encode_mbps"], 2) for n in names)],
        ["overall decode MB/s", *blank, *(_fmt(per[n]["overall_decode_mbps"], 2) for n in names)],
    ]
    if "ours" in names:
        summary_rows.append(
            ["ours / codec (weighted bpp)", *blank,
             *("-" if n == "ours" else _fmt(summary["ours_over"].get(n), 3) for n in names)]
        )
    aligned = _align(table + summary_rows, left=2)
    width = max(len(s) for s in aligned)
    lines += aligned[: len(table)]
    lines.append("-" * width)
    lines.append(
        f"summary over {summary['images_in_summary']} of {summary['images']} images on which every codec "
        f"round-tripped ({summary['samples_in_summary']} samples, {summary['raw_bytes_in_summary'] / 1e6:.1f} MB raw):"
    )
    lines += aligned[len(table):]
    paths = summary.get("paths")
    if paths:
        sec = paths["seconds"]
        lines.append(
            f"ours per path (summed over the summary images, medians of runs): global path "
            f"{_fmt(paths['global_encode_mbps'], 2)} MB/s encode, {_fmt(paths['global_decode_mbps'], 2)} MB/s decode; "
            f"local path (transformer) {paths['local_tokens'] / 1e6:.2f} M tokens, "
            f"{_fmt(paths['local_encode_tokens_per_s'], 0)} tokens/s encode, "
            f"{_fmt(paths['local_decode_tokens_per_s'], 0)} tokens/s decode; seconds: "
            + ", ".join(f"{k} {v:.1f}" for k, v in sec.items() if k.endswith("_s"))
        )
    models = meta.get("models") or {}
    if models and "ours" in names and per["ours"]["weighted_bpp"] is not None:
        model_bytes = sum(models.values())
        n_img = max(summary["images_in_summary"], 1)
        mean_samples = summary["samples_in_summary"] / n_img
        amort = ", ".join(
            f"{n:,} images +{8.0 * model_bytes / (n * mean_samples):.4f} bpp" for n in (1_000, 10_000, 100_000)
        )
        lines.append(
            f"model bytes: {', '.join(f'{k} {v:,} B' for k, v in models.items())} (shipped with the package; "
            f"stored once per archive if archived): weighted bpp with the model counted once over these "
            f"{n_img} images {8.0 * (per['ours']['total_bytes'] + model_bytes) / summary['samples_in_summary']:.3f}; "
            f"amortized over {amort} (images of this mean size)"
        )
    lines.append("")

    notes = []
    if capped:
        notes.append(f"* only the first {meta['frame_cap']} frames benchmarked (keeps the run short)")
    notes.append("bpp = 8 x compressed bytes / samples; MB = raw input bytes (1 per sample <= 8 bits, else 2)")
    notes.append("median MB/s: the median image's; overall MB/s: all images' MB over the sum of their median times")
    notes.append("ours: whole record (header, config, trailer); standard codecs: codestream per frame, summed")
    for r in result.rows:
        for n in names:
            res = r.results[n]
            if res.status != STATUS_OK or res.error:
                notes.append(f"{res.status} {n} on {r.name}: {res.error}")
    lines += ["notes:", *("  " + n for n in notes)]
    if result.skipped or result.filtered:
        lines.append(f"skipped ({len(result.skipped)}):")
        lines += [f"  {s.name}: {s.reason}" for s in result.skipped]
        if result.filtered:
            lines.append(
                f"  (+{result.filtered} pydicom-data files not considered: modality outside "
                f"{', '.join(IMAGING_MODALITIES)}, or not DICOM)"
            )
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description="Compare our lossless codec with JPEG-LS, JPEG 2000, HTJ2K and JPEG-XL.",
    )
    parser.add_argument("sources", nargs="+", metavar="DIR",
                        help="folder (recursive), file, or 'pydicom' for the pydicom-data test files")
    parser.add_argument("--runs", type=int, default=3, help="timing runs per image and codec (median; default 3)")
    parser.add_argument("--preset", choices=("max", "fast"), default="max", help="our codec's preset")
    parser.add_argument("--json", metavar="OUT.json", help="also write every measurement as JSON")
    parser.add_argument("--limit", type=int, help="benchmark at most N images")
    parser.add_argument("--codecs", default=",".join(ALL_CODECS),
                        help=f"comma-separated subset of {','.join(KNOWN_CODECS)} "
                             f"(default: {','.join(ALL_CODECS)}; {','.join(OPTIONAL_CODECS)} only when named)")
    parser.add_argument("--max-frames", type=int, default=DEFAULT_FRAME_CAP,
                        help=f"benchmark at most the first N frames of an image (default {DEFAULT_FRAME_CAP})")
    parser.add_argument("--keep-duplicates", action="store_true",
                        help="benchmark images whose pixels equal an earlier image's too")
    parser.add_argument("--split", choices=("all", "held-out", "train"), default="all",
                        help="pydicom images the shipped models never saw (held-out), trained on, or all")
    parser.add_argument("--quiet", action="store_true", help="no per-image progress on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table. Exit status: 0 ok; 1 our codec failed to
    round-trip (or raised) on some image; 2 bad arguments or no image found."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return int(exc.code or 0)
    if args.runs < 1 or (args.limit is not None and args.limit < 1) or args.max_frames < 1:
        print("error: --runs, --limit and --max-frames must be >= 1", file=sys.stderr)
        return 2
    codec_names = [c.strip() for c in args.codecs.split(",") if c.strip()]
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        result = run_benchmark(
            args.sources, runs=args.runs, preset=args.preset, codecs=codec_names, limit=args.limit,
            frame_cap=args.max_frames, dedupe=not args.keep_duplicates, split=args.split, progress=progress,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result.meta["command"] = shlex.join(["python", "-m", "benchmarks.compare", *argv])
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_json(), indent=1, default=str) + "\n")
    if not result.rows:
        print("error: no benchmarkable image found", file=sys.stderr)
        return 2
    ours_bad = [r.name for r in result.rows if "ours" in r.results and r.results["ours"].status != STATUS_OK]
    return 1 if ours_bad else 0


if __name__ == "__main__":
    sys.exit(main())
