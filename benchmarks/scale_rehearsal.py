"""Scale rehearsal: migrate many small real-derived instances, then resume over all of them.

    python -m benchmarks.scale_rehearsal [--n 10000] [--workers 1 2] [--json OUT.json]

The source is ``--n`` DICOM files derived from pydicom-data's native CT and MR images:
each is a 64x64 crop of one of them (a different crop per file) with its own Study /
Series / SOP Instance UIDs, 10 instances per series, 100 per study, in study folders.
For each worker count, one migrate (preset fast, keyless, Beam's local runner) runs in a
fresh process into a fresh archive; the table gives instances/s and MB/s over the run's
wall time (Beam start-up included), the size of the job graph Beam was handed (its
runner-API proto), the peak RSS of the largest process (the launcher or a worker) and
how long a second migrate of the same source takes once the archive holds everything
(the resume lookup: listing, reading the index files, meeting them with the inputs,
reading and hashing every input to compare checksums).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CROP = 64
PER_SERIES = 10
PER_STUDY = 100

# Runs one migrate in this process: the graph size (recorded as Beam is handed the
# pipeline), the summary, and this process tree's peak RSS, as one JSON line on stdout.
_CHILD = r"""
import json, resource, sys
import apache_beam as beam
from pipelines.runner import quiet_beam_logs, run_migrate
graphs = []
run = beam.Pipeline.run
def recording_run(self, *a, **k):
    graphs.append(len(self.to_runner_api().SerializeToString()))
    return run(self, *a, **k)
beam.Pipeline.run = recording_run
quiet_beam_logs()
src, dst, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = run_migrate(src, dst, preset="fast", workers=workers, progress=False, phi_in_clear=True)
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"graph_bytes": graphs[0], "archived": s["archived"], "skipped": s["skipped"],
                  "deadlettered": s["deadlettered"], "inputs": s["inputs"], "bytes_in": s["bytes_in"],
                  "bytes_out": s["bytes_out"], "wall_seconds": s["wall_seconds"], "peak_rss_kib": peak}))
"""


def make_source(dest: Path, n: int) -> int:
    """Write ``n`` derived instances under ``dest``; returns their total bytes."""
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    bases = []
    for name in ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        frames = ds.pixel_array if int(getattr(ds, "NumberOfFrames", 1) or 1) == 1 else ds.pixel_array[0]
        bases.append((ds, np.asarray(frames)))
    total = 0
    study = series = None
    for i in range(n):
        ds, pixels = bases[i % len(bases)]
        rows, cols = pixels.shape
        r0 = (i * 7) % max(1, rows - CROP + 1)
        c0 = (i * 13) % max(1, cols - CROP + 1)
        crop = np.ascontiguousarray(pixels[r0 : r0 + CROP, c0 : c0 + CROP])
        if i % PER_STUDY == 0:
            study = generate_uid()
        if i % PER_SERIES == 0:
            series = generate_uid()
        out = ds.copy()
        for keyword in ("NumberOfFrames",):
            if keyword in out:
                del out[keyword]
        out.Rows, out.Columns = crop.shape
        out.PixelData = crop.astype(pixels.dtype).tobytes()
        out.StudyInstanceUID, out.SeriesInstanceUID = study, series
        out.SOPInstanceUID = generate_uid()
        out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        folder = dest / f"study-{i // PER_STUDY:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:06d}.dcm"
        out.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def migrate_in_a_fresh_process(src: Path, dst: Path, workers: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(dst), str(workers)], capture_output=True,
                          text=True, timeout=6 * 3600)
    if proc.returncode != 0:
        raise RuntimeError(f"migrate failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_rehearsal", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="instances to derive (default 10,000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.n < 1 or any(w < 1 for w in args.workers):
        parser.error("--n and --workers must be >= 1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="medarchive-scale-") as tmp:
        src = Path(tmp) / "src"
        started = time.perf_counter()
        total = make_source(src, args.n)
        print(f"made {args.n} instances ({total / 1e6:.1f} MB) in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
        for workers in args.workers:
            dst = Path(tmp) / f"dst-{workers}"
            first = migrate_in_a_fresh_process(src, dst, workers)
            again = migrate_in_a_fresh_process(src, dst, workers)
            rows.append({"workers": workers, "first": first, "resume": again})
    print(f"scale rehearsal: {args.n} instances ({total / 1e6:.1f} MB), preset fast, local runner, "
          f"{os.cpu_count()} CPU(s), Python {sys.version.split()[0]}")
    print("workers  archived  dead  instances/s   MB/s   graph kB  peak RSS MB  resume s  resume skipped")
    for r in rows:
        f, g = r["first"], r["resume"]
        print(f"{r['workers']:>7}  {f['archived']:>8}  {f['deadlettered']:>4}  {f['inputs'] / f['wall_seconds']:>11.1f}"
              f"  {f['bytes_in'] / 1e6 / f['wall_seconds']:>5.2f}  {f['graph_bytes'] / 1e3:>9.1f}"
              f"  {f['peak_rss_kib'] / 1024:>11.0f}  {g['wall_seconds']:>8.1f}  {g['skipped']:>14}")
    if args.json:
        Path(args.json).write_text(json.dumps({"n": args.n, "bytes": total, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
