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
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from .archive import Archive, ArchiveError, Identity, archive_identity
from .storage import open_fs
from .keys import load_keyring
from .runner import LOCAL_RUNNERS, pipeline_options, quiet_beam_logs, worker_logs_captured


@dataclass(frozen=True)
class RestoreConfig:
    archive: str
    dst: str
    storage_options: dict = field(default_factory=dict)
    dst_storage_options: dict = field(default_factory=dict)
    key_file: str | None = None
    fail_fast: bool = False
    identity_key: str | None = None  # hex; set when restored files can be checked against the index
    report: str = ""  # the report's path under dst


def _safe(uid: str | None, fallback: str) -> str:
    uid = (uid or "").strip()
    return uid if uid and all(c.isdigit() or c == "." for c in uid) else fallback


class RestoreShard(beam.DoFn):
    """Records of one shard -> files; a record that fails is reported on the "failed" output
    (named by shard and SOP key, with the reason) and the others proceed."""

    def __init__(self, cfg: RestoreConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        import medcodec
        from medcodec import allocator

        allocator.tune()  # on every worker process (medcodec/allocator.py)

        self.codec = medcodec
        self.archive = Archive(self.cfg.archive, storage_options=self.cfg.storage_options)
        self.archive.register_models()  # A-LoRA adapters the records name
        self.dst_fs, self.dst_root = open_fs(self.cfg.dst, self.cfg.dst_storage_options)
        self.keyring = load_keyring(self.cfg.key_file)
        # With the originals (a key, or a keyless archive) the restored file's SOP Instance
        # UID must hash to the row's sop_key: an index row moved to another record is caught.
        self.identity = self.cfg.identity_key and Identity(bytes.fromhex(self.cfg.identity_key))

    def process(self, element: tuple[str, list[dict]]) -> Iterator[Any]:
        shard, rows = element
        try:
            fh = self.archive.fs.open(self.archive.path(shard), "rb")
        except Exception as exc:  # a missing or unreadable shard fails its rows, not the job
            for r in rows:
                yield self._failed(shard, r, f"shard unreadable ({type(exc).__name__})")
            return
        with fh:
            for r in rows:
                try:
                    fh.seek(r["offset"])
                    blob = fh.read(r["length"])
                    data = self.codec.decompress_dicom(blob, keyring=self.keyring)  # verified inside
                    rel = self._place(r, data)
                except Exception as exc:  # noqa: BLE001 - one bad record is reported, the rest proceed
                    if self.cfg.fail_fast:
                        raise
                    yield self._failed(shard, r, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                                       if isinstance(exc, (self.codec.MedcodecError, _WrongInstance))
                                       else type(exc).__name__)
                    continue
                Metrics.counter("medarchive", "restored").inc()
                yield {"sop_key": r["sop_key"], "path": rel, "bytes": len(data), "mode": r["restore_mode"]}

    def _place(self, r: dict, data: bytes) -> str:
        """Check the file is the row's instance, then write it atomically; its relative path."""
        import pydicom

        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
            study, series, sop = (str(ds.get(k, "") or "") for k in
                                  ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
        except Exception:
            study = series = sop = ""
        if self.identity and sop and self.identity.hash("sop", sop) != r["sop_key"]:
            raise _WrongInstance("the record is not the instance its index row names (index altered or swapped)")
        # Two sources of one SOP instance (e.g. a file and its RLE copy) must not overwrite each other.
        suffix = f"-{r['source_key'][:8]}" if r.get("duplicate_sop") else ""
        rel = "/".join([_safe(study, r["study_key"]), _safe(series, r["series_key"]),
                        _safe(sop, r["sop_key"]) + suffix + ".dcm"])
        path = f"{self.dst_root.rstrip('/')}/{rel}"
        folder, name = path.rsplit("/", 1)
        self.dst_fs.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex}-{name}"  # a reader never sees half a file
        with self.dst_fs.open(tmp, "wb") as out:
            out.write(data)
        self.dst_fs.mv(tmp, path)
        return rel

    @staticmethod
    def _failed(shard: str, r: dict, reason: str) -> beam.pvalue.TaggedOutput:
        Metrics.counter("medarchive", "restore_failed").inc()
        return beam.pvalue.TaggedOutput("failed", {"shard": shard, "sop_key": r["sop_key"], "reason": reason})


class _WrongInstance(Exception):
    """A record decodes, but to another instance than its index row names."""


def select_rows(rows: list[dict], identity: Identity | None, *, study=None, series=None, sop=None) -> list[dict]:
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
    fail_fast: bool = False,
) -> dict:
    """Restore the selected records to ``dst``; returns a summary with every failure named.

    Without ``key_file``, sealed records restore to their de-identified files. A record or
    shard that cannot be restored is reported (shard, SOP key, reason) and skipped, unless
    ``fail_fast``; unreadable index files are reported too. Files are written under a
    temporary name and moved into place. When anything failed, the summary is kept in
    ``dst/.medarchive-restore-<id>.json``.
    """
    quiet_beam_logs()
    archive = Archive(archive_url, storage_options=storage_options)
    if archive.exists():
        identity = archive_identity(archive.read_manifest(), key_file)
    elif study or series or sop:
        raise ArchiveError("archive.json is missing: selecting by UID needs it (`medarchive repair --key-file`);"
                           " without a selection every record is restored")
    else:  # archive.json lost: the rows' MACs still tell whether the key file is the archive's
        from .keys import identity_key_from

        identity = Identity(identity_key_from(key_file)) if key_file else None
    if identity is None and (study or series or sop):
        raise ArchiveError("selecting by UID in this archive needs its key: pass --key-file")
    index, bad_indexes = archive.read_index_reporting()
    if bad_indexes and fail_fast:
        raise ArchiveError(f"index file {bad_indexes[0]['file']} is unreadable ({bad_indexes[0]['reason']})")
    rows = select_rows(index.to_pylist(), identity, study=study, series=series, sop=sop)
    # An index row that fails its MAC names a record it does not describe: never restored.
    forged = [r for r in rows if identity is not None and identity.row_verifies(r) is False]
    rows = [r for r in rows if not (identity is not None and identity.row_verifies(r) is False)]
    per_sop: dict[str, int] = {}
    for r in rows:
        per_sop[r["sop_key"]] = per_sop.get(r["sop_key"], 0) + 1
    by_shard: dict[str, list[dict]] = {}
    for r in rows:
        r["duplicate_sop"] = per_sop[r["sop_key"]] > 1
        by_shard.setdefault(r["shard"], []).append(r)
    # The originals carry the UIDs the index keys were made from: check every file against its row.
    originals = key_file is not None or not any(r["key_id"] for r in rows)
    run_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    cfg = RestoreConfig(archive_url, dst, storage_options or {}, dst_storage_options or {}, key_file, fail_fast,
                        identity.key.hex() if identity is not None and originals else None,
                        f".medarchive-restore-{run_id}.json")
    started = time.time()
    if by_shard:
        with worker_logs_captured(runner in LOCAL_RUNNERS), beam.Pipeline(
            options=pipeline_options(runner, workers, beam_args)
        ) as p:
            results = (
                p
                | "Shards" >> beam.Create(sorted(by_shard.items()))
                | "Reshuffle" >> beam.Reshuffle()
                | "Restore" >> beam.ParDo(RestoreShard(cfg)).with_outputs("failed", main="restored")
            )
            restored_n = results.restored | "Count" >> beam.combiners.Count.Globally()
            failed = results.failed | "Failures" >> beam.combiners.ToList()
            _ = restored_n | "Report" >> beam.Map(_write_report, beam.pvalue.AsSingleton(failed), cfg=cfg,
                                                   selected=len(rows) + len(forged), bad_indexes=bad_indexes,
                                                   forged=[_forged(r) for r in forged])
        fs, root = open_fs(dst, dst_storage_options)
        report_path = f"{root.rstrip('/')}/{cfg.report}"
        with fs.open(report_path, "rb") as fh:
            report = json.loads(fh.read())
        if not report["failed"] and not bad_indexes:
            fs.rm(report_path)  # kept only as the record of what failed
    else:
        report = {"selected": len(forged), "restored": 0, "failed": [_forged(r) for r in forged],
                  "unreadable_indexes": bad_indexes}
    kept = bool(by_shard) and bool(report["failed"] or bad_indexes)
    return {**report, "shards": len(by_shard), "wall_seconds": time.time() - started, "dst": dst,
            "deidentified": not originals, "report": cfg.report if kept else None}


def _forged(row: dict) -> dict:
    return {"shard": row["shard"], "sop_key": row["sop_key"],
            "reason": "index row fails its authentication code (edited, or moved to another record)"}


def _write_report(restored: int, failed: list[dict], *, cfg: RestoreConfig, selected: int, bad_indexes: list,
                  forged: list[dict]) -> None:
    report = {"selected": selected, "restored": restored,
              "failed": sorted(failed + forged, key=lambda f: (f["shard"], f["sop_key"])),
              "unreadable_indexes": bad_indexes}
    fs, root = open_fs(cfg.dst, cfg.dst_storage_options)
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root.rstrip('/')}/{cfg.report}", "wb") as fh:
        fh.write(json.dumps(report, indent=2).encode())
