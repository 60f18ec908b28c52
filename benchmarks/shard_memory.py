"""Peak memory of one migrate worker while it writes a large shard.

    python -m benchmarks.shard_memory [--gib 1] [--record-mib 8] [--dst DIR]

Feeds the job's own WriteShards DoFn one study of synthetic records (``--gib`` in all,
``--record-mib`` each) as a re-iterable group that makes each record when it is read, as
a runner streams a large group from its shuffle (FnApiRunner holds a group in memory
itself; Dataflow pages it). Reports the worker's peak RSS above its baseline, and
Python's own peak allocation (tracemalloc), in a fresh process each time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time


class SyntheticStudy:
    """A re-iterable group of ``n`` instances of ``size`` bytes each, made on the fly: nothing
    holds them all. Rows carry what WriteShards and the index schema need."""

    def __init__(self, n: int, size: int, run_id: str = "20261204T000000Z-synthetic") -> None:
        self.n, self.size, self.run_id = n, size, run_id

    def __iter__(self):
        for i in range(self.n):
            record = hashlib.sha256(str(i).encode()).digest() * (self.size // 32)
            key = hashlib.sha256(b"k%d" % i).hexdigest()[:32]
            row = {"sop_key": key, "source_key": key, "source_sha256": key * 2, "series_key": key,
                   "study_key": "s" * 32, "patient_key": key, "record_sha256": hashlib.sha256(record).hexdigest(),
                   "original_size": self.size, "rows": 1, "cols": 1, "frames": 1, "samples": 1, "bpp_record": 8.0,
                   "read_seconds": 0.0, "encode_seconds": 0.0, "modality": "OT", "restore_mode": "byte-exact",
                   "format_version": "1.0", "run_id": self.run_id}
            yield {"row": row, "record": record}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(dst: str, n: int, size: int, trace: bool) -> dict:
    """In this process: write one shard of n records; peak memory figures."""
    import tracemalloc

    from pipelines.archive import Archive
    from pipelines.migrate import MigrateConfig, WriteShards

    Archive(dst).open_or_create(key=None, key_mode="keyring")
    write = WriteShards(MigrateConfig(src=dst, dst=dst, run_id="20261204T000000Z-synthetic"))
    write.setup()
    before = _rss_mib()
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    [out] = list(write.process(("s" * 32, SyntheticStudy(n, size))))
    stats = out[1] if isinstance(out, tuple) else out  # ("shard", stats); a bare dict before 2026-12-04
    seconds = time.perf_counter() - t0
    peak_py = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
    return {"shard_bytes": stats["bytes_out"], "records": n, "record_bytes": size, "seconds": seconds,
            "rss_baseline_mib": before, "rss_peak_mib": _rss_mib(), "rss_growth_mib": _rss_mib() - before,
            "python_peak_mib": peak_py}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--record-mib", type=float, default=8.0)
    ap.add_argument("--dst", help="where to write (default: a temporary folder, removed after)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    size = int(args.record_mib * 2**20)
    n = max(1, int(args.gib * 2**30 // size))
    if args.child:
        print(json.dumps(measure(args.dst, n, size, args.trace)))
        return 0
    results = {}
    for trace in (False, True):  # RSS without tracemalloc's own overhead; Python's peak with it
        dst = args.dst or tempfile.mkdtemp(prefix="medarchive-shardmem-")
        try:
            out = subprocess.run([sys.executable, "-m", "benchmarks.shard_memory", "--child", "--dst", dst,
                                  "--gib", str(args.gib), "--record-mib", str(args.record_mib)]
                                 + (["--trace"] if trace else []), capture_output=True, text=True, check=True)
            results["traced" if trace else "plain"] = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            if not args.dst:
                shutil.rmtree(dst, ignore_errors=True)
    plain, traced = results["plain"], results["traced"]
    print(f"one shard of {plain['shard_bytes'] / 2**30:.2f} GiB ({plain['records']} records of"
          f" {plain['record_bytes'] / 2**20:.1f} MiB), written in {plain['seconds']:.1f} s")
    print(f"  worker RSS: baseline {plain['rss_baseline_mib']:.0f} MiB, peak {plain['rss_peak_mib']:.0f} MiB"
          f" (+{plain['rss_growth_mib']:.0f} MiB = {plain['rss_growth_mib'] / (plain['record_bytes'] / 2**20):.1f}"
          f" records)")
    print(f"  Python allocations peak: {traced['python_peak_mib']:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
