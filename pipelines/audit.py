"""The audit job: verify an archive against its index.

fast: every record's bytes against the index's SHA-256 (and its container checksums);
deep: decode every record, check the pixel digest, and the restored file's SHA-256
where the restore is byte-exact. Missing shards / records and extra (unindexed) tar
members are failures. ``sample`` audits a deterministic fraction of records.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas.tables import AUDIT_SCHEMA, table_of

from .archive import Archive, ArchiveError, archive_identity
from .keys import load_keyring
from .runner import LOCAL_RUNNERS, pipeline_options, quiet_beam_logs, worker_logs_captured


@dataclass(frozen=True)
class AuditConfig:
    archive: str
    audit_id: str
    deep: bool = False
    sample: float = 1.0
    key_file: str | None = None
    storage_options: dict = field(default_factory=dict)
    model_rows: list = field(default_factory=list)  # the driver's checks (models, index files), written with the rest


def sampled(sop_key: str, fraction: float) -> bool:
    """Deterministic sampling: the same records are chosen every time for a given fraction."""
    if fraction >= 1.0:
        return True
    return int(sop_key[:8], 16) / 0xFFFFFFFF < fraction


class AuditShard(beam.DoFn):
    def __init__(self, cfg: AuditConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        import medcodec
        from medcodec import allocator

        allocator.tune()  # on every worker process (medcodec/allocator.py)

        self.codec = medcodec
        self.archive = Archive(self.cfg.archive, storage_options=self.cfg.storage_options)
        self.keyring = load_keyring(self.cfg.key_file)
        if self.cfg.deep:
            self.archive.register_models()

    def _row(self, shard, sop_key, check, ok, detail=""):
        Metrics.counter("medarchive", f"audit_{'ok' if ok else 'fail'}").inc()
        return {"shard": shard, "sop_key": sop_key, "check": check, "status": "ok" if ok else "fail",
                "detail": detail, "audit_id": self.cfg.audit_id}

    def process(self, element: tuple[str, list[dict]]) -> Iterator[dict]:
        shard, rows = element
        path = self.archive.path(shard)
        if not rows:
            yield self._row(shard, None, "extra", False, "shard has no index (uncommitted)")
            return
        if not self.archive.fs.exists(path):
            for r in rows:
                yield self._row(shard, r["sop_key"], "missing", False, "shard file missing")
            return
        indexed = {r["offset"] for r in rows}
        with self.archive.fs.open(path, "rb") as fh:
            try:
                with tarfile.open(fileobj=fh, mode="r:") as tf:
                    members = [(m.offset_data, m.name) for m in tf.getmembers()]
            except tarfile.TarError as exc:
                for r in rows:
                    yield self._row(shard, r["sop_key"], "record", False, f"shard unreadable: {exc}")
                return
            for offset, name in members:
                if offset not in indexed:
                    yield self._row(shard, None, "extra", False, f"tar member {name} not in the index")
            present = {o for o, _ in members}
            for r in rows:
                if not sampled(r["sop_key"], self.cfg.sample):
                    continue
                if r["offset"] not in present:
                    yield self._row(shard, r["sop_key"], "missing", False, "record not in shard")
                    continue
                fh.seek(r["offset"])
                blob = fh.read(r["length"])
                if hashlib.sha256(blob).hexdigest() != r["record_sha256"]:
                    yield self._row(shard, r["sop_key"], "record", False, "record SHA-256 differs from the index")
                    continue
                try:
                    self.codec.container.read_record(blob)
                except self.codec.MedcodecError as exc:
                    yield self._row(shard, r["sop_key"], "record", False, str(exc))
                    continue
                yield self._row(shard, r["sop_key"], "record", True)
                if self.cfg.deep:
                    yield from self._deep(shard, r, blob)

    def _deep(self, shard: str, r: dict, blob: bytes) -> Iterator[dict]:
        sealed = bool(r["key_id"])
        try:
            # Checks the pixel digest and the (de-identified) file SHA itself; with the key
            # it also opens the sealed sections and restores the original.
            restored = self.codec.decompress_dicom(blob, keyring=self.keyring if sealed else None)
        except self.codec.MedcodecError as exc:
            yield self._row(shard, r["sop_key"], "pixels", False, str(exc))
            return
        config = self.codec.container.read_record(blob).config
        pixels = config.get("pixels")
        if pixels and pixels.get("digest") != r["pixel_sha256"]:
            yield self._row(shard, r["sop_key"], "pixels", False, "pixel digest differs from the index")
            return
        yield self._row(shard, r["sop_key"], "pixels", True)
        if sealed and self.keyring is None:
            return  # without the key only the de-identified file can be checked (done above)
        if r["restore_mode"] != "pixel-exact":
            ok = hashlib.sha256(restored).hexdigest() == r["source_sha256"]
            yield self._row(shard, r["sop_key"], "file", ok, "" if ok else "restored file SHA-256 differs")


class WriteAudit(beam.DoFn):
    def __init__(self, cfg: AuditConfig) -> None:
        self.cfg = cfg

    def process(self, rows: list[dict]) -> Iterator[dict]:
        archive = Archive(self.cfg.archive, storage_options=self.cfg.storage_options)
        rows = list(self.cfg.model_rows) + list(rows)
        archive.write_table(f"audit/{self.cfg.audit_id}.parquet", table_of(rows, AUDIT_SCHEMA))
        yield len(rows)


def check_models(archive: Archive, index: list[dict], audit_id: str) -> list[dict]:
    """One "model" row per distinct model the records name: it exists and matches its hash.

    Base transformers must be the shipped file with the recorded SHA-256; adapters must be
    under models/ with bytes matching their name, and fitted to that base.
    """
    from medcodec import MedcodecError

    def row(detail: str, ok: bool, what: str) -> dict:
        return {"shard": "models/", "sop_key": None, "check": "model", "status": "ok" if ok else "fail",
                "detail": f"{what}: {detail}" if detail else what, "audit_id": audit_id}

    out = []
    named = Counter((r["model_id"], r["model_hash"], r.get("adapter_sha256")) for r in index if r["model_id"])
    for (model_id, model_hash, adapter), users in sorted(named.items(), key=lambda kv: tuple(x or "" for x in kv[0])):
        what = f"{model_id}" + (f" + adapter {adapter[:16]}..." if adapter else "") + f" ({users} record(s))"
        if not model_id.startswith("llm-"):
            out.append(row("built into the codec", True, what))
            continue
        try:
            from medcodec.model.adapt import read_adapter
            from medcodec.model.registry import load_model

            base = load_model(model_id, sha256=model_hash, device="cpu")
            if adapter:
                _, meta = read_adapter(archive.read_model(adapter))
                if (meta.get("base_model"), meta.get("base_sha256")) != (base.model_id, base.sha256):
                    raise ArchiveError(f"adapter {adapter[:16]}... was fitted to another base model")
        except (MedcodecError, ArchiveError) as exc:
            out.append(row(str(exc), False, what))
            continue
        out.append(row("present, SHA-256 matches", True, what))
    return out


def run_audit(
    archive_url: str,
    *,
    deep: bool = False,
    sample: float = 1.0,
    key_file: str | None = None,
    runner: str = "FnApiRunner",
    workers: int = 1,
    beam_args: list[str] | None = None,
    storage_options: dict | None = None,
) -> dict:
    if not 0.0 < sample <= 1.0:
        raise ValueError(f"--sample must be in (0, 1], got {sample}")
    quiet_beam_logs()
    archive = Archive(archive_url, storage_options=storage_options)
    manifest = archive.read_manifest()
    table, index_problems = archive.read_index_reporting()
    index = table.to_pylist()
    identity = archive_identity(manifest, key_file)
    by_shard: dict[str, list[dict]] = {}
    for r in index:
        by_shard.setdefault(r["shard"], []).append(r)
    for name in archive.shard_names():
        by_shard.setdefault(f"shards/{name}.tar", [])
    cfg = AuditConfig(
        archive=archive_url,
        audit_id=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8],
        deep=deep,
        sample=sample,
        key_file=key_file,
        storage_options=storage_options or {},
    )
    cfg.model_rows.extend(check_models(archive, index, cfg.audit_id))
    cfg.model_rows.extend({"shard": p["file"], "sop_key": None, "check": "index", "status": "fail",
                           "detail": p["reason"], "audit_id": cfg.audit_id} for p in index_problems)
    committed, run_problems = archive.committed_index_files(identity)
    present = set(archive.index_names())
    cfg.model_rows.extend({"shard": p["file"], "sop_key": None, "check": "index", "status": "fail",
                           "detail": p["reason"], "audit_id": cfg.audit_id} for p in run_problems)
    cfg.model_rows.extend({"shard": f"index/{name}.parquet", "sop_key": None, "check": "index", "status": "fail",
                           "detail": "committed by a run (runs/*.json) but missing", "audit_id": cfg.audit_id}
                          for name in sorted(committed - present))
    verdicts = [identity.row_verifies(r) for r in index] if identity is not None else []
    cfg.model_rows.extend(
        {"shard": r["shard"], "sop_key": r["sop_key"], "check": "index", "status": "fail", "audit_id": cfg.audit_id,
         "detail": "index row fails its authentication code (edited, or moved to another record)"}
        for r, ok in zip(index, verdicts) if ok is False)
    started = time.time()
    with worker_logs_captured(runner in LOCAL_RUNNERS), beam.Pipeline(
        options=pipeline_options(runner, workers, beam_args)
    ) as p:
        _ = (
            p
            | "Shards" >> beam.Create(sorted(by_shard.items()))
            | "Reshuffle" >> beam.Reshuffle()
            | "Audit" >> beam.ParDo(AuditShard(cfg))
            | "Collect" >> beam.combiners.ToList()
            | "Write" >> beam.ParDo(WriteAudit(cfg))
        )
    archive.fs.invalidate_cache()  # the audit table was written by workers (stale listings otherwise)
    with archive.fs.open(archive.path("audit", f"{cfg.audit_id}.parquet"), "rb") as fh:
        import pyarrow.parquet as pq

        rows = pq.read_table(fh).to_pylist()
    failures = [r for r in rows if r["status"] == "fail"]
    summary = {
        "audit_id": cfg.audit_id,
        "mode": "deep" if deep else "fast",
        "sample": sample,
        "shards": len(by_shard),
        "records_indexed": len(index),
        # index rows checked against their MAC (needs the key of a keyring archive), and rows
        # written before index rows carried one
        "rows_authenticated": sum(1 for ok in verdicts if ok is not None),
        "rows_without_mac": sum(1 for ok in verdicts if ok is None),
        "records_checked": sum(1 for r in rows if r["check"] in ("record", "missing") and r["sop_key"]),
        "checks": len(rows),
        "failures": len(failures),
        "failures_by_check": {c: sum(1 for r in failures if r["check"] == c) for c in sorted({r["check"] for r in failures})},
        "first_failures": [{k: r[k] for k in ("shard", "sop_key", "check", "detail")} for r in failures[:10]],
        "wall_seconds": time.time() - started,
    }
    archive.write_atomic(f"audit/{cfg.audit_id}.json", json.dumps(summary, indent=2, sort_keys=True).encode())
    return summary


def format_audit(summary: dict) -> str:
    status = "PASSED" if summary["failures"] == 0 else "FAILED"
    lines = [
        f"audit {summary['audit_id']} ({summary['mode']}, sample {summary['sample']:g}): {status}",
        f"  shards {summary['shards']}, records indexed {summary['records_indexed']}, "
        f"checked {summary['records_checked']}, checks {summary['checks']}, failures {summary['failures']}",
        f"  index rows authenticated {summary.get('rows_authenticated', 0)}"
        + (f", {summary['rows_without_mac']} written before rows carried a MAC" if summary.get("rows_without_mac") else "")
        + ("" if summary.get("rows_authenticated") or not summary["records_indexed"] else " (pass --key-file to check them)"),
    ]
    if summary["failures"]:
        lines.append(f"  failures by check: {summary['failures_by_check']}")
        for f in summary["first_failures"]:
            lines.append(f"    {f['check']:8} {f['shard']} {f['sop_key'] or '-'}: {f['detail']}")
    lines.append(f"  {summary['wall_seconds']:.1f} s")
    return "\n".join(lines)
