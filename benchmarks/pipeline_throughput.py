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
  parsed frames, in this process: everything else a migrate does (Beam, listing,
  parsing, de-identification, sealing and stego with ``--keyed``, tar, index) is
  overhead;
* the same overhead beyond a one-file job: the wall time of migrating the smallest
  file alone (Beam's pipeline construction and runner start-up, listing, the summary:
  what every job pays once, and a migration of millions of instances spreads thin) is
  taken off the wall time first.

Each of the ``--runs`` rounds times the codec's pass, then (``--keyed``) the keying
line's, then one job per ``--workers`` value, then the one-file job, back to back: the
overheads are each round's own ratio, and the table gives their median and range. The
machine's speed wanders by 20% and more over minutes; timing the codec's runs first and
the jobs' afterwards let that drift into the ratio (five rounds of keyed `fast` on
2026-12-07, one worker: +43% beyond the one-file job as the median of the rounds' own
ratios, +48% from the medians of the codec's times and the jobs' taken apart).

With ``--keyed`` a line times the encode stage's own work (``Codec.archive_dicom``:
the record and its description) on every file with and without the key, in this process,
each file both ways back to back: the keyed path's cost apart from Beam (whose start-up
and scheduling vary by a second or more between runs on a small job).

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


def codec_arrays(files: list[tuple[Path, Path]]) -> list:
    """(spec, pixel array) of every file, as ``compress_dicom`` codes its frames."""
    import numpy as np

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
    return arrays


def codec_pass(arrays: list, *, preset: str) -> float:
    """Seconds of the codec's encode + decode over every file's pixels, once."""
    import time

    import medcodec

    t0 = time.perf_counter()
    for spec, array in arrays:
        blob = medcodec.compress_pixels(array, bits_stored=spec.bits_stored, signed=spec.signed,
                                        high_bit=spec.high_bit, preset=preset)
        medcodec.decompress_pixels(blob)
    return time.perf_counter() - t0


class Keying:
    """The encode stage's own work (``medcodec.Codec.archive_dicom``: parse, de-identify,
    seal, embed, code, verify, describe) over every file in this process, keyless and
    keyed: what keying costs without Beam's noise."""

    def __init__(self, files: list[tuple[Path, Path]], *, preset: str, key_file: str) -> None:
        import medcodec
        from pipelines.keys import load_keyring

        self.datas = [path.read_bytes() for _, path in files]
        self.codecs = (medcodec.Codec(preset=preset), medcodec.Codec(preset=preset, keyring=load_keyring(key_file)))
        for codec in self.codecs:
            codec.archive_dicom(self.datas[0])  # load the compiled kernels

    def seconds(self) -> tuple[float, float]:
        """(keyless, keyed) seconds of one pass over every file each, file by file: each
        file keyless and keyed back to back, which first alternating, so that the
        machine's drift over the pass falls on both alike (two passes one after the other
        gave keying +0.04 to +1.19 s on the same code, 2026-12-07)."""
        import time

        out = [0.0, 0.0]
        for i, data in enumerate(self.datas):
            for which in ((0, 1) if i % 2 == 0 else (1, 0)):
                t0 = time.perf_counter()
                self.codecs[which].archive_dicom(data)
                out[which] += time.perf_counter() - t0
        return out[0], out[1]


def job(src: Path, dst: Path, *, workers: int, preset: str, key_file: str | None = None,
        expect: int | None = None) -> dict:
    """One migrate of ``src`` into a fresh ``dst`` (removed after): its run summary."""
    from pipelines.runner import run_migrate

    summary = run_migrate(str(src), str(dst), preset=preset, workers=workers, progress=False,
                          phi_in_clear=key_file is None, key_file=key_file)
    shutil.rmtree(dst)
    if summary["deadlettered"] or summary["skipped"]:
        raise RuntimeError(f"expected a clean run, got {summary['deadlettered']} dead letters, "
                           f"{summary['skipped']} skipped")
    if expect is not None and summary["archived"] != expect:
        raise RuntimeError(f"the job archived {summary['archived']} instances, not {expect}")
    return summary


def row(workers: int, summaries: list[dict]) -> dict:
    """The table's row for ``workers``: medians over the runs' summaries."""
    med = statistics.median
    return {
        "workers": workers,
        "runs": len(summaries),
        "instances": summaries[0]["archived"],
        "bytes_in": summaries[0]["bytes_in"],
        "bytes_out": summaries[0]["bytes_out"],
        "wall_s": med([s["wall_seconds"] for s in summaries]),
        "instances_per_s": med([s["archived"] / s["wall_seconds"] for s in summaries]),
        "mb_per_s": med([s["bytes_in"] / 1e6 / s["wall_seconds"] for s in summaries]),
        "ratio": summaries[0]["bytes_in"] / summaries[0]["bytes_out"],
        "stage_s": {k: med([s["stage_seconds"][k] for s in summaries]) for k in ("read", "encode", "write")},
    }


def measure(files: list[tuple[Path, Path]], src: Path, work: Path, *, workers: list[int], runs: int, preset: str,
            key_file: str | None = None) -> dict:
    """``runs`` rounds, each of them back to back: the codec's pass, the keying line's
    (with ``key_file``), one job per ``workers`` value, and the one-file job (where
    ``workers`` has 1). Returns the rows, the rounds' own figures and the overheads."""
    arrays = codec_arrays(files)
    codec_pass(arrays[:1], preset=preset)  # load the compiled kernels
    keying = Keying(files, preset=preset, key_file=key_file) if key_file else None
    one_src = work / "one-file-src"
    copy_source([min(files, key=lambda f: f[1].stat().st_size)], one_src)
    rounds: list[dict] = []
    summaries: dict[int, list[dict]] = {w: [] for w in workers}
    for run in range(runs):
        r: dict = {"codec_s": codec_pass(arrays, preset=preset)}
        if keying is not None:
            r["keying_s"] = keying.seconds()
        for w in workers:
            summary = job(src, work / f"dst-w{w}-r{run}", workers=w, preset=preset, key_file=key_file)
            summaries[w].append(summary)
            r[f"wall_s_w{w}"] = summary["wall_seconds"]
        if 1 in workers:
            r["startup_s"] = job(one_src, work / f"one-file-dst-r{run}", workers=1, preset=preset,
                                 key_file=key_file, expect=1)["wall_seconds"]
            r["overhead"] = r["wall_s_w1"] / r["codec_s"] - 1
            r["overhead_beyond_startup"] = (r["wall_s_w1"] - r["startup_s"]) / r["codec_s"] - 1
        rounds.append(r)
    return {"rows": [row(w, summaries[w]) for w in workers], "rounds": rounds}


def format_table(rows: list[dict], rounds: list[dict], *, files: int, mb: float, preset: str, keyed: bool) -> str:
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
    med = statistics.median
    codec_s = med([r["codec_s"] for r in rounds])

    def spread(key: str) -> str:
        values = [r[key] for r in rounds]
        return f"{med(values):+.0%}" + (f" (runs {min(values):+.0%} to {max(values):+.0%})" if len(values) > 1 else "")

    if "overhead" in rounds[0]:
        lines.append(f"codec alone (compress_pixels + decompress_pixels on the same pixels): {codec_s:.1f} s; "
                     f"one-worker overhead: {spread('overhead')} of codec time")
        lines.append(f"one-file job (what every job pays once: Beam start-up, listing, summary): "
                     f"{med([r['startup_s'] for r in rounds]):.1f} s; "
                     f"one-worker overhead beyond it: {spread('overhead_beyond_startup')} of codec time")
        lines.append("(overheads: each run's own, its codec pass and jobs timed back to back; median and range)")
    else:
        lines.append(f"codec alone (compress_pixels + decompress_pixels on the same pixels): {codec_s:.1f} s")
    if "keying_s" in rounds[0]:
        plain, sealed = med([r["keying_s"][0] for r in rounds]), med([r["keying_s"][1] for r in rounds])
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
        measured = measure(files, src, Path(tmp), workers=args.workers, runs=args.runs, preset=args.preset,
                           key_file=key_file)
    print(format_table(measured["rows"], measured["rounds"], files=len(files), mb=total / 1e6, preset=args.preset,
                       keyed=args.keyed))
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "keyed": args.keyed, "files": len(files),
                                               "bytes": total, **measured}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
