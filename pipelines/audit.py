"""The audit job: verify an archive against its index.

fast: every record's bytes against the index's SHA-256 (and its container checksums);
deep: decode every record, check the pixel digest, and the restored file's SHA-256
where the restore is byte-exact. Missing shards / records and extra (unindexed) tar
members are failures. ``sample`` audits a deterministic fraction of records.

Nothing proportional to the archive enters the job graph (it carries the archive URL and
the options): a worker lists index/, shards/ and runs/; after a reshuffle workers read
each index file (and verify its rows' MACs), each run summary, and meet them with the
listed shard files by shard stem (CoGroupByKey), so every stem -- its index file, the
shard file(s) of that stem, the runs that say they committed it -- is audited by one
worker. Each group's audit rows are written to their own file,
audit/<id>/part-<kind>-<name>.parquet (``read_audit_rows`` reads them all); the summary
(audit/<id>.json) comes from a combiner with bounded state.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas.tables import AUDIT_SCHEMA, table_of

from .archive import Archive, ArchiveError, Identity, archive_identity, shard_stem  # noqa: F401 (re-exported)
from .keys import load_keyring
from .storage import worker_storage_options
from .runner import LOCAL_RUNNERS, pipeline_options, quiet_beam_logs, worker_logs_captured
from . import stopping
from .threadqueue import gathered, local_threads, queued

FIRST_FAILURES = 10  # failures named in the summary (all are in the part files)
# Index row fields the record checks need (an audit group carries only these).
_AUDIT_FIELDS = ("shard", "sop_key", "offset", "length", "record_sha256", "key_id", "pixel_sha256", "restore_mode",
                 "source_sha256")


@dataclass(frozen=True)
class AuditConfig:
    """Everything an audit needs; picklable, and small: no index rows and no key material
    (workers resolve the key from ``key_file`` themselves)."""

    archive: str
    audit_id: str
    deep: bool = False
    sample: float = 1.0
    key_file: str | None = None
    storage_options: dict = field(default_factory=dict)
    started: float = 0.0
    local_threads: int | None = None  # a local run's N > 1 worker threads: stems from one queue (threadqueue)


def sampled(sop_key: str, fraction: float) -> bool:
    """Deterministic sampling: the same records are chosen every time for a given fraction."""
    if fraction >= 1.0:
        return True
    return int(sop_key[:8], 16) / 0xFFFFFFFF < fraction


def _row(cfg: AuditConfig, shard: str, sop_key: str | None, check: str, ok: bool, detail: str = "") -> dict:
    Metrics.counter("medarchive", f"audit_{'ok' if ok else 'fail'}").inc()
    return {"shard": shard, "sop_key": sop_key, "check": check, "status": "ok" if ok else "fail",
            "detail": detail, "audit_id": cfg.audit_id}


def _resolve_identity(cfg: AuditConfig) -> Identity | None:
    """The archive's identity key, resolved on the worker from ``key_file`` (None for a keyring
    archive audited without its key)."""
    archive = Archive(cfg.archive, storage_options=cfg.storage_options)
    return archive_identity(archive.read_manifest(), cfg.key_file)


_SAFE_PART = re.compile(r"^[A-Za-z0-9_-]{1,120}$")


def part_name(kind: str, name: str) -> str:
    """audit/<id>/part-<kind>-<name>.parquet: one file per group, named by what it audits
    (deterministic: a retried bundle rewrites the same file)."""
    if not _SAFE_PART.match(name):
        name = hashlib.sha256(name.encode()).hexdigest()[:32]
    return f"part-{kind}-{name}.parquet"


def _write_part(archive: Archive, cfg: AuditConfig, kind: str, name: str, rows: list[dict]) -> None:
    if rows:
        archive.write_table(f"audit/{cfg.audit_id}/{part_name(kind, name)}", table_of(rows, AUDIT_SCHEMA))


def read_audit_rows(archive: Archive | str, audit_id: str, *, storage_options: dict | None = None) -> list[dict]:
    """Every row of an audit: its part files (audit/<id>/part-*.parquet), or the single
    audit/<id>.parquet that audits wrote before rows were written in parallel."""
    import pyarrow.parquet as pq

    if isinstance(archive, str):
        archive = Archive(archive, storage_options=storage_options)
    archive.fs.invalidate_cache()  # written by workers: a cached listing would miss them
    rows: list[dict] = []
    for name in archive._list(f"audit/{audit_id}", ".parquet"):
        with archive.fs.open(archive.path("audit", audit_id, name), "rb") as fh:
            rows.extend(pq.read_table(fh).to_pylist())
    legacy = archive.path("audit", f"{audit_id}.parquet")
    if not rows and archive.fs.exists(legacy):
        with archive.fs.open(legacy, "rb") as fh:
            rows = pq.read_table(fh).to_pylist()
    return rows


# --- listing (one worker each; the graph holds only the archive URL) -------------------------


class ListFolder(beam.DoFn):
    """The archive URL -> index file names, shard files (stem, "shards/<name>.tar") or run summaries."""

    def __init__(self, cfg: AuditConfig, what: str) -> None:
        self.cfg = cfg
        self.what = what

    def process(self, _: Any) -> Iterator[Any]:
        archive = Archive(self.cfg.archive, storage_options=self.cfg.storage_options)
        archive.fs.invalidate_cache()  # a long-lived worker must not list from a stale cache
        if self.what == "index":
            yield from archive.index_names()
        elif self.what == "shards":
            for name in archive.shard_names():
                yield shard_stem(name), f"shards/{name}.tar"
        else:
            yield from archive._list("runs", ".json")


class ReadIndexFile(beam.DoFn):
    """One index file -> (its name, what the stem's audit needs: problems, the shard it
    names, its rows, rows failing their MAC); stats and model use on tagged outputs."""

    def __init__(self, cfg: AuditConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        self.archive = Archive(self.cfg.archive, storage_options=self.cfg.storage_options)
        self.identity = _resolve_identity(self.cfg)

    def process(self, name: str) -> Iterator[Any]:
        table, problems = self.archive.read_index_reporting([name])
        rows = table.to_pylist()
        forged, authenticated, without_mac = [], 0, 0
        if self.identity is not None:
            for r in rows:
                ok = self.identity.row_verifies(r)
                if ok is None:
                    without_mac += 1
                else:
                    authenticated += 1
                    if not ok:
                        forged.append((r["shard"], r["sop_key"]))
        models = Counter((r["model_id"], r["model_hash"], r.get("adapter_sha256")) for r in rows if r["model_id"])
        for model, users in models.items():
            yield beam.pvalue.TaggedOutput("models", (model, users))
        yield beam.pvalue.TaggedOutput("summary", ("stat", {
            "records_indexed": len(rows), "rows_authenticated": authenticated, "rows_without_mac": without_mac}))
        shards = sorted({r["shard"] for r in rows})
        yield name, {
            "file": f"index/{name}.parquet",
            "problems": [p["reason"] for p in problems],
            "shard": shards[0] if len(shards) == 1 else None,
            "rows": [{k: r.get(k) for k in _AUDIT_FIELDS} for r in rows],
            "forged": forged,
        }


class ReadRun(beam.DoFn):
    """One run summary (runs/<id>.json) -> (index file name, True) for each index file the run
    says it committed; a summary that does not read, or whose list fails its MAC, is an
    audit row (written to its own part file)."""

    def __init__(self, cfg: AuditConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        self.archive = Archive(self.cfg.archive, storage_options=self.cfg.storage_options)
        self.identity = _resolve_identity(self.cfg)

    def process(self, rel: str) -> Iterator[Any]:
        listed, problem = self._committed(rel)
        for name in listed:
            yield name, True
        if problem:
            row = _row(self.cfg, f"runs/{rel}", None, "index", False, problem)
            _write_part(self.archive, self.cfg, "run", rel[: -len(".json")], [row])
            yield beam.pvalue.TaggedOutput("summary", ("row", row))

    def _committed(self, rel: str) -> tuple[list[str], str | None]:
        """(index files the run committed, the problem with its summary if any); a summary
        written before runs listed their index files lists none."""
        import hmac

        try:
            with self.archive.fs.open(self.archive.path("runs", rel), "rb") as fh:
                run = json.loads(fh.read())
        except (OSError, ValueError) as exc:
            return [], f"unreadable ({type(exc).__name__})"
        listed = run.get("index_files")
        if listed is None:
            return [], None
        if self.identity is not None and not hmac.compare_digest(
                str(run.get("index_files_mac", "")), self.identity.manifest_mac(run.get("run_id", ""), listed)):
            return [], "its list of index files fails its authentication code"
        return list(listed), None


class CheckModel(beam.DoFn):
    """((model_id, model_hash, adapter), records using it) -> one "model" audit row."""

    def __init__(self, cfg: AuditConfig) -> None:
        self.cfg = cfg

    def process(self, element: tuple[tuple, int]) -> Iterator[Any]:
        (model_id, model_hash, adapter), users = element
        archive = Archive(self.cfg.archive, storage_options=self.cfg.storage_options)
        row = check_model(archive, model_id, model_hash, adapter, users, self.cfg.audit_id)
        key = "|".join(x or "" for x in (model_id, model_hash, adapter))
        _write_part(archive, self.cfg, "model", hashlib.sha256(key.encode()).hexdigest()[:32], [row])
        yield "row", row


# --- one stem: its index file, its shard file(s), the runs that committed it ------------------


class AuditStem(beam.DoFn):
    """(stem, {"index": [info], "listed": [shard paths], "committed": [...]}) -> audit rows,
    written to audit/<id>/part-shard-<stem>.parquet and passed on to the summary."""

    def __init__(self, cfg: AuditConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        import medcodec
        from medcodec import allocator

        allocator.tune()  # on every worker process (medcodec/allocator.py)

        self.medcodec = medcodec
        self.archive = Archive(self.cfg.archive, storage_options=self.cfg.storage_options)
        self.keyring = load_keyring(self.cfg.key_file)
        # Deep: records decode with the archive's own adapters (models/), handed to the codec.
        self.codec = medcodec.Codec(models=self.archive.model_store() if self.cfg.deep else medcodec.ModelStore())

    def _row(self, shard, sop_key, check, ok, detail=""):
        return _row(self.cfg, shard, sop_key, check, ok, detail)

    def process(self, element: tuple[str, dict]) -> Iterator[Any]:
        stem, groups = element
        rows = list(self._audit(stem, groups))
        _write_part(self.archive, self.cfg, "shard", stem, rows)
        for r in rows:
            yield "row", r
        shards = {r["shard"] for info in groups["index"] for r in info["rows"]} | set(groups["listed"])
        yield "stat", {"shards": len(shards)}

    def _audit(self, stem: str, groups: dict) -> Iterator[dict]:
        infos = list(groups["index"])
        listed = sorted(set(groups["listed"]))
        info = infos[0] if infos else None
        if info is None and groups["committed"]:
            yield self._row(f"index/{stem}.parquet", None, "index", False, "committed by a run (runs/*.json) but missing")
        by_shard: dict[str, list[dict]] = {}
        if info is not None:
            for reason in info["problems"]:
                yield self._row(info["file"], None, "index", False, reason)
            for shard, sop_key in info["forged"]:
                yield self._row(shard, sop_key, "index", False,
                                "index row fails its authentication code (edited, or moved to another record)")
            for r in info["rows"]:
                by_shard.setdefault(r["shard"], []).append(r)
        for shard in sorted(set(by_shard) | set(listed)):
            Metrics.counter("medarchive", "audit_shards").inc()
            if shard in by_shard:
                yield from self._audit_shard(shard, by_shard[shard], shard in listed)
            elif info is not None and info["shard"] is not None:  # its index names another file of the stem
                yield self._row(shard, None, "superseded", True,
                                f"not referenced by any index row ({info['file']} names {info['shard']}): a retried or"
                                " concurrent write that lost the race; cleanup removes it")
            else:
                yield self._row(shard, None, "extra", False, "shard has no index (uncommitted)")

    def _audit_shard(self, shard: str, rows: list[dict], listed: bool) -> Iterator[dict]:
        path = self.archive.path(shard)
        if not listed and not self.archive.fs.exists(path):
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
            for r in sorted(rows, key=lambda r: r["offset"]):
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
                    info = self.codec.inspect(blob)  # reads the whole container: framing, checksums
                except self.medcodec.MedcodecError as exc:
                    yield self._row(shard, r["sop_key"], "record", False, str(exc))
                    continue
                yield self._row(shard, r["sop_key"], "record", True)
                if self.cfg.deep:
                    yield from self._deep(shard, r, blob, info)

    def _deep(self, shard: str, r: dict, blob: bytes, info: dict) -> Iterator[dict]:
        sealed = bool(r["key_id"])
        try:
            # Checks the pixel digest and the (de-identified) file SHA itself; with the key
            # it also opens the sealed sections and restores the original.
            restored = self.codec.decompress_dicom(blob, keyring=self.keyring if sealed else None)
        except self.medcodec.MedcodecError as exc:
            yield self._row(shard, r["sop_key"], "pixels", False, str(exc))
            return
        if info.get("pixel_sha256") is not None and info["pixel_sha256"] != r["pixel_sha256"]:
            yield self._row(shard, r["sop_key"], "pixels", False, "pixel digest differs from the index")
            return
        yield self._row(shard, r["sop_key"], "pixels", True)
        if sealed and self.keyring is None:
            return  # without the key only the de-identified file can be checked (done above)
        if r["restore_mode"] != "pixel-exact":
            # A keyless record's restore was checked against the SHA-256 its config states
            # (decompress_dicom): that one is compared, not the restored file hashed again.
            stated = None if sealed else (info.get("source") or {}).get("sha256")
            ok = (stated if stated is not None else hashlib.sha256(restored).hexdigest()) == r["source_sha256"]
            yield self._row(shard, r["sop_key"], "file", ok, "" if ok else "restored file SHA-256 differs")


# --- the summary: a combiner with bounded state ------------------------------------------------


def _failure_order(r: dict) -> tuple:
    """Which failures the summary names first: the archive-wide checks (models, index files,
    run summaries), then the rest, by shard and SOP key (deterministic, whatever the bundles)."""
    return (0 if r["check"] in ("model", "index") else 1, r["shard"] or "", r["sop_key"] or "", r["check"],
            r["detail"] or "")


class AuditSummaryFn(beam.CombineFn):
    """("row", audit row) and ("stat", {name: count}) -> the summary's counts, failures by
    check and the first FIRST_FAILURES failures; the state holds counters and at most
    FIRST_FAILURES rows, whatever the archive's size."""

    STATS = ("records_indexed", "rows_authenticated", "rows_without_mac", "shards", "superseded")

    def create_accumulator(self) -> dict:
        return {"stats": dict.fromkeys(self.STATS, 0), "checks": 0, "records_checked": 0, "by_check": {}, "first": []}

    def add_input(self, acc: dict, item: tuple[str, dict]) -> dict:
        kind, value = item
        if kind == "stat":
            for k, n in value.items():
                acc["stats"][k] = acc["stats"].get(k, 0) + n
            return acc
        acc["checks"] += 1
        if value["check"] == "superseded":
            acc["stats"]["superseded"] += 1
        if value["check"] == "record" or value["check"] == "missing":
            acc["records_checked"] += 1 if value["sop_key"] else 0
        if value["status"] == "fail":
            acc["by_check"][value["check"]] = acc["by_check"].get(value["check"], 0) + 1
            acc["first"] = sorted([*acc["first"], {k: value[k] for k in ("shard", "sop_key", "check", "detail")}],
                                  key=_failure_order)[:FIRST_FAILURES]
        return acc

    def merge_accumulators(self, accs: Iterable[dict]) -> dict:
        out = self.create_accumulator()
        for acc in accs:
            for k, n in acc["stats"].items():
                out["stats"][k] = out["stats"].get(k, 0) + n
            out["checks"] += acc["checks"]
            out["records_checked"] += acc["records_checked"]
            for k, n in acc["by_check"].items():
                out["by_check"][k] = out["by_check"].get(k, 0) + n
            out["first"] = sorted([*out["first"], *acc["first"]], key=_failure_order)[:FIRST_FAILURES]
        return out

    def extract_output(self, acc: dict) -> dict:
        return {
            **acc["stats"],
            "records_checked": acc["records_checked"],
            "checks": acc["checks"],
            "failures": sum(acc["by_check"].values()),
            "failures_by_check": dict(sorted(acc["by_check"].items())),
            "first_failures": list(acc["first"]),
        }


class WriteSummary(beam.DoFn):
    """The combined counts -> audit/<id>.json (one small element)."""

    def __init__(self, cfg: AuditConfig) -> None:
        self.cfg = cfg

    def process(self, counts: dict) -> Iterator[dict]:
        summary = {
            "audit_id": self.cfg.audit_id,
            "mode": "deep" if self.cfg.deep else "fast",
            "sample": self.cfg.sample,
            **counts,
            "wall_seconds": time.time() - self.cfg.started,
        }
        archive = Archive(self.cfg.archive, storage_options=self.cfg.storage_options)
        archive.write_atomic(f"audit/{self.cfg.audit_id}.json", json.dumps(summary, indent=2, sort_keys=True).encode())
        yield summary


@dataclass
class Audit(beam.PTransform):
    """The whole audit as one transform: a PCollection holding the archive URL -> the summary."""

    cfg: AuditConfig

    def __post_init__(self) -> None:
        super().__init__()

    def expand(self, start):
        cfg = self.cfg
        read = (
            start
            | "ListIndex" >> beam.ParDo(ListFolder(cfg, "index"))
            | "SpreadIndex" >> beam.Reshuffle()
            | "ReadIndex" >> beam.ParDo(ReadIndexFile(cfg)).with_outputs("models", "summary", main="index")
        )
        listed = start | "ListShards" >> beam.ParDo(ListFolder(cfg, "shards")) | "SpreadShards" >> beam.Reshuffle()
        runs = (
            start
            | "ListRuns" >> beam.ParDo(ListFolder(cfg, "runs"))
            | "SpreadRuns" >> beam.Reshuffle()
            | "ReadRuns" >> beam.ParDo(ReadRun(cfg)).with_outputs("summary", main="committed")
        )
        stems = (
            gathered({"index": read.index, "listed": listed, "committed": runs.committed}
                     | "MeetByStem" >> beam.CoGroupByKey(), "Gather", cfg.local_threads)
            | "Audit" >> beam.ParDo(queued(AuditStem(cfg), cfg.local_threads, weight=_stem_bytes))
        )
        models = read.models | "ModelUse" >> beam.CombinePerKey(sum) | "CheckModels" >> beam.ParDo(CheckModel(cfg))
        return (
            (stems, models, read.summary, runs.summary)
            | "AllRows" >> beam.Flatten()
            | "Summary" >> beam.CombineGlobally(AuditSummaryFn())
            | "WriteSummary" >> beam.ParDo(WriteSummary(cfg))
        )


def _stem_bytes(element: tuple[str, dict]) -> int:
    """A stem's record bytes, as its index rows give them: what a deep audit reads and decodes."""
    return sum(r.get("length") or 0 for info in element[1]["index"] for r in info["rows"])


def check_model(archive: Archive, model_id: str, model_hash: str | None, adapter: str | None, users: int,
                audit_id: str) -> dict:
    """One "model" row for a model the records name: it exists and matches its hash.

    Base transformers must be the shipped file with the recorded SHA-256; adapters must be
    under models/ with bytes matching their name, and fitted to that base.
    """
    import medcodec

    def row(detail: str, ok: bool, what: str) -> dict:
        return {"shard": "models/", "sop_key": None, "check": "model", "status": "ok" if ok else "fail",
                "detail": f"{what}: {detail}" if detail else what, "audit_id": audit_id}

    what = f"{model_id}" + (f" + adapter {adapter[:16]}..." if adapter else "") + f" ({users} record(s))"
    if not model_id.startswith("llm-"):
        return row("built into the codec", True, what)
    try:  # the shipped base with that SHA-256; the adapter's bytes under models/, fitted to that base
        store = medcodec.ModelStore([archive.read_model(adapter)] if adapter else [])
        medcodec.check_model(store, model_id, model_hash, adapter)
    except (medcodec.MedcodecError, ArchiveError) as exc:
        return row(str(exc), False, what)
    return row("present, SHA-256 matches", True, what)


def check_models(archive: Archive, index: list[dict], audit_id: str) -> list[dict]:
    """One "model" row per distinct model the rows name (check_model for each)."""
    named = Counter((r["model_id"], r["model_hash"], r.get("adapter_sha256")) for r in index if r["model_id"])
    return [check_model(archive, *model, users, audit_id)
            for model, users in sorted(named.items(), key=lambda kv: tuple(x or "" for x in kv[0]))]


def new_audit_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


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
    """Audit the archive; returns the summary (also in audit/<id>.json; every row in
    audit/<id>/part-*.parquet, see ``read_audit_rows``).

    The launcher only checks that the archive exists and that ``key_file`` is its key (one
    line, before any job starts); workers read the index, the runs and the shards."""
    if not 0.0 < sample <= 1.0:
        raise ValueError(f"--sample must be in (0, 1], got {sample}")
    quiet_beam_logs()
    if "://" not in archive_url:
        import os

        archive_url = os.path.abspath(archive_url)  # workers run in other directories
    # Secrets never travel in the job graph (pipelines.storage): env:NAME references instead.
    storage_options = worker_storage_options(storage_options, local=runner in LOCAL_RUNNERS)
    archive = Archive(archive_url, storage_options=storage_options)
    archive_identity(archive.read_manifest(), key_file)  # not an archive / not its key: one line, here
    options = pipeline_options(runner, workers, beam_args)
    cfg = AuditConfig(
        archive=archive_url,
        audit_id=new_audit_id(),
        deep=deep,
        sample=sample,
        key_file=key_file,
        storage_options=storage_options or {},
        started=time.time(),
        local_threads=local_threads(options, workers, runner in LOCAL_RUNNERS),
    )
    pipeline = beam.Pipeline(options=options)
    with worker_logs_captured(runner in LOCAL_RUNNERS), stopping.removes(pipeline.local_tempdir), pipeline as p:
        _ = p | "Archive" >> beam.Create([archive_url]) | "Audit" >> Audit(cfg)
    archive.fs.invalidate_cache()  # the summary was written by workers (stale listings otherwise)
    with archive.fs.open(archive.path("audit", f"{cfg.audit_id}.json"), "rb") as fh:
        return json.loads(fh.read())


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
    if summary.get("superseded"):
        lines.append(f"  {summary['superseded']} superseded shard file(s) (not referenced; cleanup removes them)")
    if summary["failures"]:
        lines.append(f"  failures by check: {summary['failures_by_check']}")
        for f in summary["first_failures"]:
            lines.append(f"    {f['check']:8} {f['shard']} {f['sop_key'] or '-'}: {f['detail']}")
    lines.append(f"  {summary['wall_seconds']:.1f} s")
    return "\n".join(lines)
