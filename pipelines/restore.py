"""The restore job: original files out of an archive, to any fsspec destination.

Select by study / series / SOP instance UID (hashed with the archive's identity key
to find index rows) or everything; every file is verified (SHA-256 of the original
for byte-exact and verbatim records, pixel digest for pixel-exact ones) before it is
written as <StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm (with
-<source key prefix> before .dcm when the selection holds one SOP instance from
several sources, e.g. a file and its RLE copy).

Nothing proportional to the archive enters the job graph (it carries the archive URL,
the options and the selection's keyed hashes; never key material): a worker lists
index/, workers read the index files after a reshuffle, select rows and verify their
MACs, rows meet by SOP key (a SOP instance held by several sources, in any index files,
is restored under distinct names) and then by shard, and each shard's records are
restored by one worker. The report (counts, failures) comes from one combiner.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from .archive import Archive, ArchiveError, Identity, archive_identity
from .storage import REMOTE_WRITE_THREADS, is_local, makedirs_once, move_file, open_fs, worker_storage_options
from .keys import load_keyring
from .runner import LOCAL_RUNNERS, pipeline_options, quiet_beam_logs, worker_logs_captured
from . import stopping
from .threadqueue import gathered, local_threads, queued


@dataclass(frozen=True)
class RestoreConfig:
    """Everything a restore needs; picklable, and small: no index rows and no key material
    (workers resolve the identity key from ``key_file``)."""

    archive: str
    dst: str
    storage_options: dict = field(default_factory=dict)
    dst_storage_options: dict = field(default_factory=dict)
    key_file: str | None = None
    fail_fast: bool = False
    report: str = ""  # the report's path under dst
    # The selection: keyed hashes of the UIDs (as in the index), never the UIDs themselves.
    study_key: str | None = None
    series_key: str | None = None
    sop_key: str | None = None
    local_threads: int | None = None  # a local run's N > 1 worker threads: shards from one queue (threadqueue)


def _safe(uid: str | None, fallback: str) -> str:
    uid = (uid or "").strip()
    return uid if uid and all(c.isdigit() or c == "." for c in uid) else fallback


def _resolve_identity(cfg: RestoreConfig) -> Identity | None:
    """The archive's identity key, resolved on the worker: from archive.json (its salt) or the
    key file; without archive.json, the key file's (the rows' MACs tell whether it is the
    archive's); None for a keyring archive restored without its key."""
    archive = Archive(cfg.archive, storage_options=cfg.storage_options)
    if archive.exists():
        return archive_identity(archive.read_manifest(), cfg.key_file)
    if cfg.key_file:
        from .keys import identity_key_from

        return Identity(identity_key_from(cfg.key_file))
    return None


class ListIndexFiles(beam.DoFn):
    """The archive URL -> the names of its index files (on a worker)."""

    def __init__(self, cfg: RestoreConfig) -> None:
        self.cfg = cfg

    def process(self, _: Any) -> Iterator[str]:
        archive = Archive(self.cfg.archive, storage_options=self.cfg.storage_options)
        archive.fs.invalidate_cache()  # a long-lived worker must not list from a stale cache
        yield from archive.index_names()


class SelectRows(beam.DoFn):
    """One index file -> its selected rows, keyed by SOP key; a row that fails its MAC names a
    record it does not describe: reported ("report" output), never restored; an index file
    that cannot be read is reported too (or stops the run under fail_fast)."""

    def __init__(self, cfg: RestoreConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        self.archive = Archive(self.cfg.archive, storage_options=self.cfg.storage_options)
        self.identity = _resolve_identity(self.cfg)

    def process(self, name: str) -> Iterator[Any]:
        table, bad = self.archive.read_index_reporting([name])
        if bad and self.cfg.fail_fast:
            raise ArchiveError(f"index file {bad[0]['file']} is unreadable ({bad[0]['reason']})")
        for problem in bad:
            yield beam.pvalue.TaggedOutput("report", ("unreadable", problem))
        rows = table.to_pylist()
        rows = [r for r in rows if (self.cfg.study_key is None or r["study_key"] == self.cfg.study_key)
                and (self.cfg.series_key is None or r["series_key"] == self.cfg.series_key)
                and (self.cfg.sop_key is None or r["sop_key"] == self.cfg.sop_key)]
        if rows:
            yield beam.pvalue.TaggedOutput("report", ("selected", len(rows)))
        for r in rows:
            if self.identity is not None and self.identity.row_verifies(r) is False:
                yield beam.pvalue.TaggedOutput("report", ("failed", _forged(r)))
                continue
            yield r["sop_key"], r


def _mark_duplicates(element: tuple[str, Iterable[dict]]) -> Iterator[Any]:
    """The rows of one SOP key (from any index files) -> (shard, row), each row marked when
    the selection holds that SOP instance from several sources (their files must not
    overwrite each other); sealed rows counted for the report."""
    _, rows = element
    rows = list(rows)
    for r in rows:
        r["duplicate_sop"] = len(rows) > 1
        yield r["shard"], r
    sealed = sum(1 for r in rows if r["key_id"])
    if sealed:
        yield beam.pvalue.TaggedOutput("report", ("sealed", sealed))


class RestoreShard(beam.DoFn):
    """Records of one shard -> files; a record that fails is reported on the "failed" output
    (named by shard and SOP key, with the reason) and the others proceed."""

    def __init__(self, cfg: RestoreConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        import medcodec

        medcodec.allocator.tune()  # on every worker process (medcodec/allocator.py)
        self.medcodec = medcodec
        self.archive = Archive(self.cfg.archive, storage_options=self.cfg.storage_options)
        self.dst_fs, self.dst_root = open_fs(self.cfg.dst, self.cfg.dst_storage_options)
        self._made: set[str] = set()  # folders made (makedirs_once)
        self.keyring = load_keyring(self.cfg.key_file)
        # The A-LoRA adapters records name come from the archive's models/, handed to the codec.
        self.codec = medcodec.Codec(models=self.archive.model_store(), keyring=self.keyring)
        # With the originals (a key, or a record that is not sealed) the restored file's SOP
        # Instance UID must hash to the row's sop_key: an index row moved to another record
        # is caught. The identity key is resolved here, from the key file: never in the graph.
        self.identity = _resolve_identity(self.cfg)
        # To an object store each file is three round trips (its upload, then a copy and a
        # delete to move it into place): REMOTE_WRITE_THREADS write while the next records
        # decode, and at most that many decoded files wait to be written.
        self.writers = None
        if not is_local(self.cfg.dst):
            from concurrent.futures import ThreadPoolExecutor

            self.writers = ThreadPoolExecutor(REMOTE_WRITE_THREADS, thread_name_prefix="medarchive-restore-write")

    def teardown(self) -> None:
        if getattr(self, "writers", None) is not None:
            self.writers.shutdown(wait=True)

    def process(self, element: tuple[str, Iterable[dict]]) -> Iterator[Any]:
        shard, rows = element
        rows = sorted(rows, key=lambda r: r["offset"])
        yield beam.pvalue.TaggedOutput("report", ("shards", 1))
        try:  # read as the runs of records ask (record_runs), with no read-ahead of its own
            fh = self.archive.fs.open(self.archive.path(shard), "rb", cache_type="none")
        except Exception as exc:  # a missing or unreadable shard fails its rows, not the job
            for r in rows:
                yield self._failed(shard, r, f"shard unreadable ({type(exc).__name__})")
            return
        runs = record_runs(rows)
        held, span = None, b""
        writing: list = []  # (row, relative path, bytes, the write's future), oldest first
        try:
            with fh:
                for r, run in zip(rows, runs):
                    try:
                        if held != run:  # the next run of records: one read
                            held = None
                            fh.seek(run[0])
                            span, held = fh.read(run[1] - run[0]), run
                        blob = span[r["offset"] - run[0] : r["offset"] - run[0] + r["length"]]
                        data = self.codec.decompress_dicom(blob, keyring=self.keyring)  # verified inside
                        rel, path = self._checked_path(r, data)
                        if self.writers is None:
                            self._write(path, data)
                        else:
                            writing.append((r, rel, len(data), self.writers.submit(self._write, path, data)))
                    except Exception as exc:  # noqa: BLE001 - one bad record is reported, the rest proceed
                        yield from self._outcome(shard, r, None, 0, exc)
                        continue
                    if self.writers is None:
                        yield from self._outcome(shard, r, rel, len(data), None)
                    while len(writing) > REMOTE_WRITE_THREADS:
                        yield from self._written(shard, writing.pop(0))
            while writing:
                yield from self._written(shard, writing.pop(0))
        except BaseException:
            for _, _, _, future in writing:  # the shard stopped (fail_fast): no write left running
                future.cancel()
            for _, _, _, future in writing:
                if not future.cancelled():
                    future.exception()
            raise

    def _written(self, shard: str, pending: tuple) -> Iterator[Any]:
        r, rel, size, future = pending
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - reported as the write's record
            yield from self._outcome(shard, r, None, 0, exc)
            return
        yield from self._outcome(shard, r, rel, size, None)

    def _outcome(self, shard: str, r: dict, rel: str | None, size: int, exc: BaseException | None) -> Iterator[Any]:
        """The record restored to ``rel``, or failed with ``exc`` (raised with ``fail_fast``)."""
        if exc is not None:
            if self.cfg.fail_fast:
                raise exc
            yield self._failed(shard, r, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                               if isinstance(exc, (self.medcodec.MedcodecError, _WrongInstance))
                               else type(exc).__name__)
            return
        Metrics.counter("medarchive", "restored").inc()
        yield beam.pvalue.TaggedOutput("report", ("restored", 1))
        yield {"sop_key": r["sop_key"], "path": rel, "bytes": size, "mode": r["restore_mode"]}

    def _checked_path(self, r: dict, data: bytes) -> tuple[str, str]:
        """Check the file is the row's instance; (its relative path, its path under DST)."""
        import pydicom

        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
            study, series, sop = (str(ds.get(k, "") or "") for k in
                                  ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
        except Exception:
            study = series = sop = ""
        original = self.cfg.key_file is not None or not r["key_id"]
        if self.identity and original and sop and self.identity.hash("sop", sop) != r["sop_key"]:
            raise _WrongInstance("the record is not the instance its index row names (index altered or swapped)")
        # Two sources of one SOP instance (e.g. a file and its RLE copy) must not overwrite each other.
        suffix = f"-{r['source_key'][:8]}" if r.get("duplicate_sop") else ""
        rel = "/".join([_safe(study, r["study_key"]), _safe(series, r["series_key"]),
                        _safe(sop, r["sop_key"]) + suffix + ".dcm"])
        path = f"{self.dst_root.rstrip('/')}/{rel}"
        makedirs_once(self.dst_fs, path.rsplit("/", 1)[0], self._made)
        return rel, path

    def _write(self, path: str, data: bytes) -> None:
        """``data`` to ``path``, atomically: under a temporary name, then moved."""
        folder, name = path.rsplit("/", 1)
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex}-{name}"  # a reader never sees half a file
        with self.dst_fs.open(tmp, "wb") as out:
            out.write(data)
        move_file(self.dst_fs, tmp, path)

    @staticmethod
    def _failed(shard: str, r: dict, reason: str) -> beam.pvalue.TaggedOutput:
        Metrics.counter("medarchive", "restore_failed").inc()
        return beam.pvalue.TaggedOutput("report", ("failed", {"shard": shard, "sop_key": r["sop_key"], "reason": reason}))


# Records of one shard a restore reads together: those at most RUN_GAP apart, up to
# RUN_SPAN bytes in all (a larger record alone). Object stores' read-ahead (s3fs: 50
# MiB) fetched that much after every record a restore of one series or instance read.
RUN_GAP = 1 << 20
RUN_SPAN = 64 << 20


def record_runs(rows: list[dict]) -> list[tuple[int, int]]:
    """For rows sorted by offset: the (start, end) byte range of the run each row's record
    is read in, one read per run (the same range for the rows of one run)."""
    runs: list[tuple[int, int]] = []
    start = end = None
    count = 0  # rows in the run so far
    for r in rows:
        lo, hi = r["offset"], r["offset"] + r["length"]
        if count and lo - end <= RUN_GAP and max(end, hi) - start <= RUN_SPAN:
            end = max(end, hi)
        else:
            runs.extend([(start, end)] * count)
            start, end, count = lo, hi, 0
        count += 1
    runs.extend([(start, end)] * count)
    return runs


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


class RestoreReportFn(beam.CombineFn):
    """(kind, value) items -> the report: counts (selected, restored, shards, sealed), every
    failed record and unreadable index file (the report names each one)."""

    def create_accumulator(self) -> dict:
        return {"selected": 0, "restored": 0, "shards": 0, "sealed": 0, "failed": [], "unreadable": []}

    def add_input(self, acc: dict, item: tuple[str, Any]) -> dict:
        kind, value = item
        if kind in ("failed", "unreadable"):
            acc[kind].append(value)
        else:
            acc[kind] += value
        return acc

    def merge_accumulators(self, accs: Iterable[dict]) -> dict:
        out = self.create_accumulator()
        for acc in accs:
            for k, v in acc.items():
                out[k] = out[k] + v
        return out

    def extract_output(self, acc: dict) -> dict:
        return {**acc, "failed": sorted(acc["failed"], key=lambda f: (f["shard"], f["sop_key"])),
                "unreadable": sorted(acc["unreadable"], key=lambda p: p["file"])}


def _write_report(counts: dict, *, cfg: RestoreConfig) -> None:
    report = {"selected": counts["selected"], "restored": counts["restored"], "failed": counts["failed"],
              "unreadable_indexes": counts["unreadable"], "shards": counts["shards"],
              # sealed records restored without the key come back de-identified
              "deidentified": cfg.key_file is None and counts["sealed"] > 0}
    fs, root = open_fs(cfg.dst, cfg.dst_storage_options)
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root.rstrip('/')}/{cfg.report}", "wb") as fh:
        fh.write(json.dumps(report, indent=2).encode())


@dataclass
class Restore(beam.PTransform):
    """The whole restore as one transform: a PCollection holding the archive URL -> nothing
    (the report is written under dst)."""

    cfg: RestoreConfig

    def __post_init__(self) -> None:
        super().__init__()

    def expand(self, start):
        cfg = self.cfg
        selected = (
            start
            | "ListIndex" >> beam.ParDo(ListIndexFiles(cfg))
            | "SpreadIndex" >> beam.Reshuffle()
            | "Select" >> beam.ParDo(SelectRows(cfg)).with_outputs("report", main="rows")
        )
        by_sop = (
            selected.rows
            | "BySop" >> beam.GroupByKey()
            | "MarkDuplicates" >> beam.FlatMap(_mark_duplicates).with_outputs("report", main="rows")
        )
        restored = (
            gathered(by_sop.rows | "ByShard" >> beam.GroupByKey(), "Gather", cfg.local_threads)
            | "Restore" >> beam.ParDo(queued(RestoreShard(cfg), cfg.local_threads, weight=_shard_bytes))
            .with_outputs("report", main="restored")
        )
        return (
            (selected.report, by_sop.report, restored.report)
            | "AllReports" >> beam.Flatten()
            | "Report" >> beam.CombineGlobally(RestoreReportFn())
            | "WriteReport" >> beam.Map(_write_report, cfg=cfg)
        )


def _shard_bytes(element: tuple[str, Iterable[dict]]) -> int:
    """The bytes of a shard's selected records: what restoring it reads and decodes."""
    return sum(r["length"] or 0 for r in element[1])


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

    The launcher checks the archive and the key (and hashes the selection's UIDs); workers
    read the index.
    """
    import os

    quiet_beam_logs()
    archive_url, dst = (u if "://" in u else os.path.abspath(u) for u in (archive_url, dst))  # workers run elsewhere
    # Secrets never travel in the job graph (pipelines.storage): env:NAME references instead.
    local = runner in LOCAL_RUNNERS
    storage_options = worker_storage_options(storage_options, local=local)
    dst_storage_options = worker_storage_options(dst_storage_options, local=local)
    archive = Archive(archive_url, storage_options=storage_options)
    if archive.exists():
        identity = archive_identity(archive.read_manifest(), key_file)
    elif study or series or sop:
        raise ArchiveError("archive.json is missing: selecting by UID needs it (`medarchive repair --key-file`);"
                           " without a selection every record is restored")
    else:  # archive.json lost: the rows' MACs still tell whether the key file is the archive's
        from .keys import identity_key_from

        identity = Identity(identity_key_from(key_file)) if key_file else None  # a bad key file: one line, here
    if identity is None and (study or series or sop):
        raise ArchiveError("selecting by UID in this archive needs its key: pass --key-file")
    run_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    options = pipeline_options(runner, workers, beam_args)
    cfg = RestoreConfig(
        archive_url, dst, storage_options or {}, dst_storage_options or {}, key_file, fail_fast,
        f".medarchive-restore-{run_id}.json",
        study_key=identity.hash("study", study) if study else None,
        series_key=identity.hash("series", series) if series else None,
        sop_key=identity.hash("sop", sop) if sop else None,
        local_threads=local_threads(options, workers, local),
    )
    fs, root = open_fs(dst, dst_storage_options)
    existed = fs.exists(root)
    started = time.time()
    pipeline = beam.Pipeline(options=options)
    with worker_logs_captured(runner in LOCAL_RUNNERS), stopping.removes(pipeline.local_tempdir), pipeline as p:
        _ = p | "Archive" >> beam.Create([archive_url]) | "Restore" >> Restore(cfg)
    fs.invalidate_cache()  # written by workers
    report_path = f"{root.rstrip('/')}/{cfg.report}"
    with fs.open(report_path, "rb") as fh:
        report = json.loads(fh.read())
    kept = bool(report["failed"] or report["unreadable_indexes"])
    if not kept:
        fs.rm(report_path)  # kept only as the record of what failed
        if not existed and not report["restored"]:
            try:
                fs.rmdir(root)  # nothing selected: leave no empty folder behind
            except (OSError, NotImplementedError):
                pass
    return {**report, "wall_seconds": time.time() - started, "dst": dst, "report": cfg.report if kept else None}


def _forged(row: dict) -> dict:
    return {"shard": row["shard"], "sop_key": row["sop_key"],
            "reason": "index row fails its authentication code (edited, or moved to another record)"}
