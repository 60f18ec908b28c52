"""The rewrap job: after a key rotation, re-wrap every record's data keys under the new primary.

Only the wrapped data keys inside sealed sections change; pixel streams are copied
untouched and every record keeps its length and offset. Per shard: the new shard is
written under a temporary name and verified, then moved over the old one, then the
shard's index (new record SHA-256 and key id) is rewritten. Re-running is safe: a
record already wrapped under the primary is simply wrapped again.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Iterator

import apache_beam as beam

from schemas.tables import INDEX_SCHEMA, table_of

from .archive import Archive, Identity
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

    def process(self, element: tuple[str, list[dict]]) -> Iterator[int]:
        from medcodec.sealing import rewrap_record

        shard, rows = element
        archive = self.archive
        with archive.fs.open(archive.path(shard), "rb") as fh:
            data = bytearray(fh.read())
        new_rows = []
        for r in rows:
            old = bytes(data[r["offset"] : r["offset"] + r["length"]])
            new = rewrap_record(old, self.keyring)
            if len(new) != len(old):
                raise RuntimeError(f"re-wrapped record changed length in {shard}")
            data[r["offset"] : r["offset"] + r["length"]] = new
            row = {**r, "record_sha256": hashlib.sha256(new).hexdigest(),
                   "key_id": self.keyring.primary_key_id if r["key_id"] else None}
            new_rows.append({**row, "row_mac": self.identity.row_mac(row)})
        name = shard.rsplit("/", 1)[-1]
        tmp = archive.path("shards", f"{archive.tmp_name()}-{name}")
        with archive.fs.open(tmp, "wb") as fh:
            fh.write(bytes(data))
        with archive.fs.open(tmp, "rb") as fh:
            for r in new_rows:
                fh.seek(r["offset"])
                if hashlib.sha256(fh.read(r["length"])).hexdigest() != r["record_sha256"]:
                    raise IOError(f"verification of the re-wrapped shard {shard} failed")
        archive.fs.mv(tmp, archive.path(shard))
        archive.write_table(f"index/{name[: -len('.tar')]}.parquet", table_of(new_rows, INDEX_SCHEMA))
        yield len(new_rows)


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
    by_shard: dict[str, list[dict]] = {}
    for r in archive.read_index().to_pylist():
        by_shard.setdefault(r["shard"], []).append(r)
    started = time.time()
    if by_shard:
        cfg = RewrapConfig(archive_url, key_file, storage_options or {}, run_id=new_run_id())
        archive.hold_lease(cfg.run_id)  # a migrate started meanwhile keeps our temporary files
        with lease_held(archive, cfg.run_id), worker_logs_captured(runner in LOCAL_RUNNERS), beam.Pipeline(
            options=pipeline_options(runner, workers, beam_args)
        ) as p:
            _ = (p | beam.Create(sorted(by_shard.items())) | beam.Reshuffle() | beam.ParDo(RewrapShard(cfg)))
    return {
        "records": sum(len(v) for v in by_shard.values()),
        "shards": len(by_shard),
        "key_id": keyring.primary_key_id,
        "wall_seconds": time.time() - started,
    }
