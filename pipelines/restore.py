"""The restore job: original files out of an archive, to any fsspec destination.

Select by study / series / SOP instance UID (hashed with the archive's identity key
to find index rows) or everything; every file is verified (SHA-256 of the original
for byte-exact and verbatim records, pixel digest for pixel-exact ones) before it is
written as <StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm (with
-<source key prefix> before .dcm when the selection holds one SOP instance from
several sources, e.g. a file and its RLE copy).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Iterator

import apache_beam as beam
import fsspec
from apache_beam.metrics import Metrics

from .archive import Archive, Identity
from .keys import load_keyring
from .runner import LOCAL_RUNNERS, pipeline_options, quiet_beam_logs, worker_logs_captured


@dataclass(frozen=True)
class RestoreConfig:
    archive: str
    dst: str
    storage_options: dict = field(default_factory=dict)
    dst_storage_options: dict = field(default_factory=dict)
    key_file: str | None = None


def _safe(uid: str | None, fallback: str) -> str:
    uid = (uid or "").strip()
    return uid if uid and all(c.isdigit() or c == "." for c in uid) else fallback


class RestoreShard(beam.DoFn):
    def __init__(self, cfg: RestoreConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        import medcodec
        from medcodec import allocator

        allocator.tune()  # on every worker process (medcodec/allocator.py)

        self.codec = medcodec
        self.archive = Archive(self.cfg.archive, storage_options=self.cfg.storage_options)
        self.archive.register_models()  # A-LoRA adapters the records name
        self.dst_fs, self.dst_root = fsspec.core.url_to_fs(self.cfg.dst, **self.cfg.dst_storage_options)
        self.keyring = load_keyring(self.cfg.key_file)

    def process(self, element: tuple[str, list[dict]]) -> Iterator[dict]:
        import pydicom

        shard, rows = element
        with self.archive.fs.open(self.archive.path(shard), "rb") as fh:
            for r in rows:
                fh.seek(r["offset"])
                data = self.codec.decompress_dicom(fh.read(r["length"]), keyring=self.keyring)  # verified inside
                try:
                    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
                    study, series, sop = (str(ds.get(k, "") or "") for k in
                                          ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
                except Exception:
                    study = series = sop = ""
                # Two sources of one SOP instance (e.g. a file and its RLE copy) must not overwrite each other.
                suffix = f"-{r['source_key'][:8]}" if r.get("duplicate_sop") else ""
                rel = "/".join([_safe(study, r["study_key"]), _safe(series, r["series_key"]),
                                _safe(sop, r["sop_key"]) + suffix + ".dcm"])
                path = f"{self.dst_root.rstrip('/')}/{rel}"
                self.dst_fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                with self.dst_fs.open(path, "wb") as out:
                    out.write(data)
                Metrics.counter("medarchive", "restored").inc()
                yield {"sop_key": r["sop_key"], "path": rel, "bytes": len(data), "mode": r["restore_mode"]}


def select_rows(archive: Archive, identity: Identity, *, study=None, series=None, sop=None) -> list[dict]:
    rows = archive.read_index().to_pylist()
    if study:
        rows = [r for r in rows if r["study_key"] == identity.hash("study", study)]
    if series:
        rows = [r for r in rows if r["series_key"] == identity.hash("series", series)]
    if sop:
        rows = [r for r in rows if r["sop_key"] == identity.hash("sop", sop)]
    return rows


def run_restore(
    archive_url: str,
    dst: str,
    *,
    key_file: str | None = None,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    runner: str = "FnApiRunner",
    workers: int = 1,
    beam_args: list[str] | None = None,
    storage_options: dict | None = None,
    dst_storage_options: dict | None = None,
) -> dict:
    quiet_beam_logs()
    archive = Archive(archive_url, storage_options=storage_options)
    ident = archive.read_manifest()["identity"]
    if ident["mode"] == "archive-salt":
        identity = Identity(bytes.fromhex(ident["salt"]))
    else:
        from .keys import identity_key_from

        identity = Identity(identity_key_from(key_file))
        if identity.check != ident.get("check"):
            raise ValueError("the key file does not belong to this archive")
    rows = select_rows(archive, identity, study=study, series=series, sop=sop)
    per_sop: dict[str, int] = {}
    for r in rows:
        per_sop[r["sop_key"]] = per_sop.get(r["sop_key"], 0) + 1
    by_shard: dict[str, list[dict]] = {}
    for r in rows:
        r["duplicate_sop"] = per_sop[r["sop_key"]] > 1
        by_shard.setdefault(r["shard"], []).append(r)
    if any(r["key_id"] for r in rows) and not key_file:
        raise ValueError("the selected records are sealed: pass --key-file to restore the originals")
    cfg = RestoreConfig(archive_url, dst, storage_options or {}, dst_storage_options or {}, key_file)
    started = time.time()
    restored: list[dict] = []
    if by_shard:
        with worker_logs_captured(runner in LOCAL_RUNNERS), beam.Pipeline(
            options=pipeline_options(runner, workers, beam_args)
        ) as p:
            _ = (
                p
                | "Shards" >> beam.Create(sorted(by_shard.items()))
                | "Reshuffle" >> beam.Reshuffle()
                | "Restore" >> beam.ParDo(RestoreShard(cfg))
                | "Count" >> beam.combiners.Count.Globally()
                | "Check" >> beam.Map(_check_count, expected=len(rows))
            )
    return {"selected": len(rows), "shards": len(by_shard), "wall_seconds": time.time() - started, "dst": dst}


def _check_count(n: int, expected: int) -> int:
    if n != expected:
        raise RuntimeError(f"restored {n} of {expected} selected records")
    return n
