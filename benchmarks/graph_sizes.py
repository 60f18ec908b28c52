"""Job-graph size of migrate, audit, restore and rewrap as the index grows.

    python -m benchmarks.graph_sizes [--rows 0,10000,100000] [--files 10]

A keyed archive of one real CT is made, then ``--rows`` synthetic index rows are added in
``--files`` index files (rows without shards behind them: only the graph is measured,
so audit reports them missing and restore finds nothing to write for them). Each job is
run on the in-process runner and the size of the pipeline proto it submitted is
recorded (what Dataflow limits to 20 MB per job request); rewrap's graph is built and
measured but not run (it would open the synthetic rows' shards). Prints one table, in bytes.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.tables import INDEX_SCHEMA


def synthetic_index_file(dst: Path, name: str, rows: int, seed: int) -> None:
    """An index file of ``rows`` made-up rows for shards/<name>.tar (no shard file behind it)."""
    rng = np.random.default_rng(seed)
    hexes = lambda: [rng.bytes(32).hex() for _ in range(rows)]  # noqa: E731
    columns = {f.name: [None] * rows for f in INDEX_SCHEMA}
    for field in ("sop_key", "series_key", "study_key", "patient_key", "source_key", "source_sha256", "record_sha256"):
        columns[field] = hexes()
    columns.update(original_size=[1000] * rows, shard=[f"shards/{name}.tar"] * rows, offset=list(range(rows)),
                   length=[1] * rows, restore_mode=["byte-exact"] * rows, format_version=["1.0"] * rows,
                   run_id=["synthetic"] * rows)
    pq.write_table(pa.Table.from_pydict(columns, schema=INDEX_SCHEMA), Path(dst) / "index" / f"{name}.parquet")


def measure(rows_list: list[int], files: int) -> dict[int, dict[str, int]]:
    import apache_beam as beam
    from pydicom.data import get_testdata_file

    from pipelines.audit import run_audit
    from pipelines.restore import run_restore
    from pipelines.rewrap import run_rewrap
    from pipelines.runner import run_migrate

    sizes: list[int] = []
    run = beam.Pipeline.run
    dry = {"on": False}

    class Measured(Exception):
        pass

    def recording_run(self, *args, **kwargs):
        sizes.append(len(self.to_runner_api().SerializeToString()))
        if dry["on"]:  # the graph is what is measured; running it would open shards that do not exist
            raise Measured()
        return run(self, *args, **kwargs)

    beam.Pipeline.run = recording_run
    root = Path(tempfile.mkdtemp(prefix="medarchive-graphs-"))
    try:
        src, dst, ring = root / "src", root / "dst", root / "ring.json"
        src.mkdir()
        (src / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
        subprocess.run([sys.executable, "-m", "jobs.cli", "keys", "new", str(ring)], check=True, capture_output=True)
        out: dict[int, dict[str, int]] = {}
        for rows in rows_list:
            for f in (dst / "index").glob("synthetic-*") if dst.exists() else []:
                f.unlink()
            if rows:
                for i in range(files):
                    synthetic_index_file(dst, f"synthetic-{i:02d}", rows // files, i)
            got = {}
            for job, call in (
                ("migrate", lambda: run_migrate(str(src), str(dst), preset="fast", key_file=str(ring), progress=False)),
                ("audit", lambda: run_audit(str(dst), key_file=str(ring))),
                ("restore", lambda: run_restore(str(dst), str(root / "out"), key_file=str(ring))),
            ):
                before = len(sizes)
                call()
                got[job] = sizes[before] if len(sizes) > before else None
            shutil.rmtree(root / "out", ignore_errors=True)
            before, dry["on"] = len(sizes), True
            try:
                run_rewrap(str(dst), key_file=str(ring))
            except Measured:
                pass
            finally:
                dry["on"] = False
            got["rewrap"] = sizes[before] if len(sizes) > before else None
            out[rows] = got
        return out
    finally:
        beam.Pipeline.run = run
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="0,10000,100000", help="synthetic index rows to add, comma-separated")
    ap.add_argument("--files", type=int, default=10, help="index files they are spread over")
    args = ap.parse_args(argv)
    rows_list = [int(r) for r in args.rows.split(",")]
    table = measure(rows_list, args.files)
    jobs = list(next(iter(table.values())))
    print(f"{'indexed rows':>14}  " + "  ".join(f"{j:>24}" for j in jobs))
    for rows, got in table.items():
        print(f"{rows + 1:>14,}  " + "  ".join(f"{got[j]:>24,}" if got[j] else f"{'-':>24}" for j in jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
