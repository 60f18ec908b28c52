"""Throughput of the migrate job on the local runner, by number of workers (threads).

    python -m benchmarks.pipeline_throughput [--workers 1 2] [--runs 3] [--preset max|fast]
                                             [--keyed] [--max-mb MB] [--json OUT.json]

The source is every pydicom-data file (pydicom's own test files and the pydicom-data
package) of an imaging modality (CT, MR, CR, US, NM) with native (uncompressed) pixel
data that medcodec restores byte-exact, copied into a temporary folder. Each run
migrates it into a fresh archive with Beam's in-process runner; the table gives the
median over ``--runs`` of:

* instances/s and MB/s: archived instances and input bytes over the run's wall time
  (job start to summary, Beam start-up included);
* ratio: input bytes / bytes written in shards;
* the per-stage split from the run summary: read / encode / write, each summed over
  instances inside the workers (so with 2 workers they can add up to more than wall);
* overhead: the one-worker wall time over the codec's own time on the same pixels,
  less one. The codec's time is ``medcodec.compress_pixels`` plus
  ``decompress_pixels`` (migrate verifies every record by decoding it) on each file's
  parsed frames, in this process, median over ``--runs``: everything else a migrate
  does (Beam, listing, parsing, de-identification, sealing and stego with
  ``--keyed``, tar, index) is overhead;
* the same overhead beyond a one-file job: the wall time of migrating the smallest
  file alone (Beam's pipeline construction and runner start-up, listing, the summary:
  what every job pays once, and a migration of millions of instances spreads thin) is
  taken off the wall time first.

With ``--keyed`` a last line times the encode stage's own work (``Codec.archive_dicom``:
the record and its description) on every file with and without the key, in this process: the keyed
path's cost apart from Beam (whose start-up and scheduling vary by a second or more
between runs on a small job).

``--keyed`` migrates with a fresh keyring (sealed, de-identified records); without it
the records keep the headers in clear.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

MODALITIES = ("CT", "MR", "CR", "US", "NM")


def pydicom_data_dirs() -> list[Path]:
    """pydicom's bundled test files and the pydicom-data package's files (when installed)."""
    from pydicom.data import get_testdata_file

    dirs = []
    for probe in ("CT_small.dcm", "emri_small.dcm"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = get_testdata_file(probe)
        if path and Path(path).parent not in dirs:
            dirs.append(Path(path).parent)
    return dirs


def native_imaging_files(dirs: list[Path], *, max_bytes: int | None = None) -> list[tuple[Path, Path]]:
    """(root, path) of each file of an imaging modality that parses byte-exact (native pixels)."""
    import pydicom

    from medcodec import MedcodecError
    from medcodec.dicom import parse_dicom

    found = []
    for root in dirs:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if max_bytes is not None and path.stat().st_size > max_bytes:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    modality = pydicom.dcmread(path, stop_before_pixels=True).get("Modality")
            except Exception:  # not DICOM (README, .json, .icc ...)
                continue
            if modality not in MODALITIES:
                continue
            try:
                if parse_dicom(path.read_bytes()).restore_mode != "byte-exact":
                    continue
            except MedcodecError:
                continue
            found.append((root, path))
    return found


def copy_source(files: list[tuple[Path, Path]], dest: Path) -> int:
    """Copies the files under ``dest`` (keeping their relative paths); returns the bytes copied."""
    total = 0
    for i, (root, path) in enumerate(files):
        target = dest / f"{i:02d}-{root.name}" / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        total += path.stat().st_size
    return total


def codec_seconds(files: list[tuple[Path, Path]], *, runs: int, preset: str) -> float:
    """Median over ``runs`` of the codec's encode + decode time over every file's pixels."""
    import time

    import numpy as np

    import medcodec
    from medcodec.dicom import parse_dicom

    arrays = []
    for _, path in files:
        parsed = parse_dicom(path.read_bytes())
        frames = parsed.frames  # (frames, samples, rows, cols) words, as compress_dicom codes them
        if frames.shape[1] > 1:
            array = frames.transpose(0, 2, 3, 1)  # compress_pixels takes samples last
        else:
            array = frames[0, 0] if frames.shape[0] == 1 else frames[:, 0]
        arrays.append((parsed.spec, np.ascontiguousarray(array)))
    totals = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for spec, array in arrays:
            blob = medcodec.compress_pixels(array, bits_stored=spec.bits_stored, signed=spec.signed,
                                            high_bit=spec.high_bit, preset=preset)
            medcodec.decompress_pixels(blob)
        totals.append(time.perf_counter() - t0)
    return statistics.median(totals)


def keying_seconds(files: list[tuple[Path, Path]], *, runs: int, preset: str, key_file: str) -> tuple[float, float]:
    """Median over ``runs`` of (keyless, keyed) seconds of the encode stage's own work,
    ``medcodec.Codec.archive_dicom`` (parse, de-identify, seal, embed, code, verify,
    describe), over every file in this process: what keying costs without Beam's noise.
    The two alternate within each run."""
    import time

    import medcodec
    from pipelines.keys import load_keyring

    datas = [path.read_bytes() for _, path in files]
    codecs = (medcodec.Codec(preset=preset), medcodec.Codec(preset=preset, keyring=load_keyring(key_file)))
    for codec in codecs:
        codec.archive_dicom(datas[0])  # load the compiled kernels
    totals: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for codec, times in zip(codecs, totals):
            t0 = time.perf_counter()
            for data in datas:
                codec.archive_dicom(data)
            times.append(time.perf_counter() - t0)
    return statistics.median(totals[0]), statistics.median(totals[1])


def measure(src: Path, work: Path, *, workers: int, runs: int, preset: str, key_file: str | None = None) -> dict:
    from pipelines.runner import run_migrate

    summaries = []
    for run in range(runs):
        dst = work / f"dst-w{workers}-r{run}"
        summary = run_migrate(str(src), str(dst), preset=preset, workers=workers, progress=False,
                              phi_in_clear=key_file is None, key_file=key_file)
        if summary["deadlettered"] or summary["skipped"]:
            raise RuntimeError(f"expected a clean run, got {summary['deadlettered']} dead letters, "
                               f"{summary['skipped']} skipped")
        summaries.append(summary)
        shutil.rmtree(dst)
    med = lambda values: statistics.median(values)  # noqa: E731
    return {
        "workers": workers,
        "runs": runs,
        "instances": summaries[0]["archived"],
        "bytes_in": summaries[0]["bytes_in"],
        "bytes_out": summaries[0]["bytes_out"],
        "wall_s": med([s["wall_seconds"] for s in summaries]),
        "instances_per_s": med([s["archived"] / s["wall_seconds"] for s in summaries]),
        "mb_per_s": med([s["bytes_in"] / 1e6 / s["wall_seconds"] for s in summaries]),
        "ratio": summaries[0]["bytes_in"] / summaries[0]["bytes_out"],
        "stage_s": {k: med([s["stage_seconds"][k] for s in summaries]) for k in ("read", "encode", "write")},
    }


def startup_seconds(files: list[tuple[Path, Path]], work: Path, *, runs: int, preset: str,
                    key_file: str | None = None) -> float:
    """Median over ``runs`` of the wall time of a one-worker job that migrates the
    smallest file alone: the cost every job pays once, whatever its size."""
    from pipelines.runner import run_migrate

    src = work / "one-file-src"
    copy_source([min(files, key=lambda f: f[1].stat().st_size)], src)
    walls = []
    for run in range(runs):
        dst = work / f"one-file-dst-r{run}"
        summary = run_migrate(str(src), str(dst), preset=preset, workers=1, progress=False,
                              phi_in_clear=key_file is None, key_file=key_file)
        if summary["archived"] != 1:
            raise RuntimeError(f"the one-file job archived {summary['archived']} instances")
        walls.append(summary["wall_seconds"])
        shutil.rmtree(dst)
    return statistics.median(walls)


def format_table(rows: list[dict], *, files: int, mb: float, preset: str, keyed: bool, codec_s: float,
                 keying: tuple[float, float] | None = None, startup_s: float | None = None) -> str:
    lines = [
        f"migrate throughput, local FnApiRunner, preset {preset}, {'keyed' if keyed else 'keyless'}: {files} "
        f"instances, {mb:.1f} MB (pydicom-data, native {'/'.join(MODALITIES)}), {os.cpu_count()} CPU(s), "
        f"{platform.python_implementation()} {platform.python_version()}",
        "workers  runs  instances/s   MB/s   ratio   wall s   read s  encode s  write s",
    ]
    for r in rows:
        st = r["stage_s"]
        lines.append(
            f"{r['workers']:7d}  {r['runs']:4d}  {r['instances_per_s']:11.2f}  {r['mb_per_s']:5.2f}  "
            f"{r['ratio']:5.2f}x  {r['wall_s']:7.1f}  {st['read']:7.2f}  {st['encode']:8.1f}  {st['write']:7.2f}"
        )
    lines.append("(medians over runs; stage seconds are summed inside the workers, wall is the whole job)")
    one = [r for r in rows if r["workers"] == 1]
    if one:
        lines.append(f"codec alone (compress_pixels + decompress_pixels on the same pixels): {codec_s:.1f} s; "
                     f"one-worker overhead: {one[0]['wall_s'] / codec_s - 1:+.0%} of codec time")
        if startup_s is not None:
            lines.append(f"one-file job (what every job pays once: Beam start-up, listing, summary): {startup_s:.1f} s; "
                         f"one-worker overhead beyond it: {(one[0]['wall_s'] - startup_s) / codec_s - 1:+.0%} of codec time")
    if keying:
        plain, sealed = keying
        lines.append(f"keying in the codec (Codec.archive_dicom, this process): {plain:.2f} s keyless, "
                     f"{sealed:.2f} s keyed: +{sealed - plain:.2f} s ({(sealed - plain) / codec_s:+.0%} of codec time)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--preset", choices=("max", "fast"), default="max")
    parser.add_argument("--keyed", action="store_true", help="migrate with a fresh keyring (sealed records)")
    parser.add_argument("--max-mb", type=float, default=None, help="leave out files larger than this")
    parser.add_argument("--json", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.runs < 1 or any(w < 1 for w in args.workers):
        parser.error("--runs and --workers must be >= 1")

    from pipelines.runner import quiet_beam_logs

    import medcodec

    medcodec.allocator.tune()  # as the migrate's workers do (EncodeInstance.setup): the codec-only timings too
    quiet_beam_logs()
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # odd test files warn while sniffing
    max_bytes = int(args.max_mb * 1e6) if args.max_mb else None
    files = native_imaging_files(pydicom_data_dirs(), max_bytes=max_bytes)
    if not files:
        print("no pydicom-data files found (is pydicom-data installed?)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="medarchive-bench-") as tmp:
        src = Path(tmp) / "src"
        total = copy_source(files, src)
        key_file = None
        if args.keyed:
            from medcodec import Keyring

            key_file = str(Path(tmp) / "bench.key")
            Keyring.create(key_file)
        codec_s = codec_seconds(files, runs=args.runs, preset=args.preset)
        keying = keying_seconds(files, runs=args.runs, preset=args.preset, key_file=key_file) if key_file else None
        rows = [measure(src, Path(tmp), workers=w, runs=args.runs, preset=args.preset, key_file=key_file)
                for w in args.workers]
        startup_s = (startup_seconds(files, Path(tmp), runs=args.runs, preset=args.preset, key_file=key_file)
                     if 1 in args.workers else None)
    print(format_table(rows, files=len(files), mb=total / 1e6, preset=args.preset, keyed=args.keyed,
                       codec_s=codec_s, keying=keying, startup_s=startup_s))
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "keyed": args.keyed, "files": len(files),
                                               "bytes": total, "codec_s": codec_s, "keying_s": keying,
                                               "startup_s": startup_s, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
