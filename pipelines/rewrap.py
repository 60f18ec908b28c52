"""The rewrap job: after a key rotation, re-wrap every record's data keys under the new primary.

Only the wrapped data keys inside sealed sections change; pixel streams are copied
untouched and every record keeps its length and offset. Per shard (one element per index
file: the job graph carries their names, never rows): the old shard is streamed into a
new one with each record re-wrapped, verified, and published under its own content name
(shards/<stem>.<run>.<sha16>.tar, a file no reader uses yet); then index/<stem>.parquet is
replaced, atomically, by one naming the new shard; then the old shard is deleted. At every
moment the committed index names a shard that matches it. Re-running is safe: a record
already wrapped under the primary is simply wrapped again.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from schemas.tables import INDEX_SCHEMA, table_of

from .archive import Archive, Identity
from .migrate import _Sha256Writer, _verify
from .storage import worker_storage_options
from . import stopping
from .threadqueue import gathered, local_threads, queued
from .runner import LOCAL_RUNNERS, lease_held, new_run_id, pipeline_options, quiet_beam_logs, worker_logs_captured


@dataclass(frozen=True)
class RewrapConfig:
    archive: str
    key_file: str
    storage_options: dict = field(default_factory=dict)
    run_id: str = ""  # names its temporary files; the run holds a lease while it runs


class RewrapShard(beam.DoFn):
    def __init__(self, cfg: RewrapConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        from .keys import load_keyring

        self.keyring = load_keyring(self.cfg.key_file)
        self.archive = Archive(self.cfg.archive, storage_options=self.cfg.storage_options, owner=self.cfg.run_id)
        self.identity = Identity(self.keyring.uid_key())

    def process(self, stem: str) -> Iterator[int]:
        from medcodec import rewrap_record

        archive = self.archive
        rows = sorted(archive.read_index([stem]).to_pylist(), key=lambda r: r["offset"])
        if not rows:
            return
        old_shard = rows[0]["shard"]
        tmp = archive.path("shards", f"{archive.tmp_name()}-{stem}.tar")
        new_rows, at = [], 0
        with archive.fs.open(archive.path(old_shard), "rb") as src, archive.fs.open(tmp, "wb") as raw:
            out = _Sha256Writer(raw)
            for r in rows:  # stream: the bytes between records as they are, each record re-wrapped
                _copy(src, out, r["offset"] - at)
                old = src.read(r["length"])
                new = rewrap_record(old, self.keyring)
                if len(new) != len(old):
                    raise RuntimeError(f"re-wrapped record changed length in {old_shard}")
                out.write(new)
                at = r["offset"] + r["length"]
                new_rows.append({**r, "record_sha256": hashlib.sha256(new).hexdigest(),
                                 "key_id": self.keyring.primary_key_id if r["key_id"] else None})
            _copy(src, out, None)
        new_shard = f"shards/{stem}.{self.cfg.run_id}.{out.sha.hexdigest()[:16]}.tar"
        for row in new_rows:
            row["shard"] = new_shard
            row["row_mac"] = self.identity.row_mac(row)
        _verify(archive, tmp, new_rows)
        archive.move(tmp, archive.path(new_shard))
        archive.write_table(f"index/{stem}.parquet", table_of(new_rows, INDEX_SCHEMA))  # the switch
        if new_shard != old_shard:
            try:
                archive.fs.rm(archive.path(old_shard))
            except FileNotFoundError:
                pass
        Metrics.counter("medarchive", "rewrapped").inc(len(new_rows))
        yield len(new_rows)


def _copy(src, out, n: int | None, chunk: int = 8 << 20) -> None:
    """Copy n bytes (None: to the end) from src to out, a chunk at a time."""
    while n is None or n > 0:
        data = src.read(chunk if n is None else min(chunk, n))
        if not data:
            if n:
                raise IOError("shard ended before its index says")
            return
        out.write(data)
        if n is not None:
            n -= len(data)


def run_rewrap(
    archive_url: str,
    *,
    key_file: str,
    runner: str = "FnApiRunner",
    workers: int = 1,
    beam_args: list[str] | None = None,
    storage_options: dict | None = None,
) -> dict:
    from .keys import load_keyring

    quiet_beam_logs()
    keyring = load_keyring(key_file)
    archive = Archive(archive_url, storage_options=storage_options)
    archive.read_manifest()
    stems = archive.index_names()  # names only: each worker reads its index file
    archive.check_index_files(stems)
    started = time.time()
    records = 0
    if stems:
        cfg = RewrapConfig(archive_url, key_file, worker_storage_options(storage_options, local=runner in LOCAL_RUNNERS),
                           run_id=new_run_id())
        archive.hold_lease(cfg.run_id)  # a migrate started meanwhile keeps our temporary files
        with lease_held(archive, cfg.run_id), worker_logs_captured(runner in LOCAL_RUNNERS):
            options = pipeline_options(runner, workers, beam_args)
            # A local run's N threads take the shards from one queue (Beam's in-memory worker is one thread).
            threads = local_threads(options, workers, runner in LOCAL_RUNNERS)
            p = beam.Pipeline(options=options)
            with stopping.removes(p.local_tempdir):  # run() removes it, once it runs
                spread = p | "Stems" >> beam.Create(stems) | "Spread" >> beam.Reshuffle()
                _ = gathered(spread, "Gather", threads) | "Rewrap" >> beam.ParDo(queued(RewrapShard(cfg), threads))
                result = p.run()
                result.wait_until_finish()
        records = _counter(result, "rewrapped")
    return {
        "records": records,
        "shards": len(stems),
        "key_id": keyring.primary_key_id,
        "wall_seconds": time.time() - started,
    }



def _counter(result, name: str) -> int | None:
    """A Beam counter's committed value (None where the runner does not report metrics)."""
    try:
        found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    except Exception:  # noqa: BLE001 - a runner without metrics
        return None
    return sum(c.committed or 0 for c in found) if found else 0
