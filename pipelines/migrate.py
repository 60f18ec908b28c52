"""The migrate job: SRC (any fsspec URL) -> a verified, indexed archive at DST.

    list (top level, then each folder and each file's head on its own worker)
      -> read + encode (codec loaded once per worker) -> group by study
      -> stream shards (tmp, verify, publish under a content name) + index (commit marker)
      -> dead letters (one file per bundle) -> run summary (a combiner: counts and sums)

Every input ends as exactly one indexed record, one dead-letter row, or a skip
(already indexed with the same source checksum by an earlier run: workers read DST's
index files and meet them with the listed inputs by source key).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas.tables import DEADLETTER_SCHEMA, INDEX_SCHEMA, table_of

from .archive import Archive, ArchiveError, Identity
from .keys import load_keyring
from .progress import ProgressReporter
from .sources import InputTooLargeError, ReadLimits, SourceRef, expand_file, find_files, list_top, read_source
from .storage import StorageUnavailableError, is_unavailable
from .threadqueue import gathered, queued

# A shard holds at most this many instances / bytes of records (a study may span shards).
MAX_SHARD_INSTANCES = 512
MAX_SHARD_BYTES = 1 << 30
NAMESPACE = "medarchive"


@dataclass(frozen=True)
class MigrateConfig:
    """Everything a migrate run needs; picklable (no key material: workers load keys themselves)."""

    src: str
    dst: str
    run_id: str
    preset: str = "max"
    # None: the preset's transformer; "classical-v1": the transformer-free v1.0 local path
    local_model: str | None = None
    keep_codestream: bool = False
    key_file: str | None = None
    storage_options: dict = field(default_factory=dict)
    progress_dir: str | None = None
    # Torch threads per worker for the transformer path (None: torch's default). Local
    # runners with N workers give each cores // N, so they do not oversubscribe (worker
    # threads set the same value for their one process).
    model_threads: int | None = None
    # Local runners with N > 1 workers: their number; None elsewhere. Worker threads (the
    # default; ``local_threads`` N) code the inputs and write the shards from one queue
    # (threadqueue); worker processes are each dealt their part once (_dealt_evenly). One
    # worker reading from an object store has ``local_threads`` 1: a queue of one
    # thread, for its reads ahead and listing threads.
    local_workers: int | None = None
    local_threads: int | None = None
    # The queue's threads for writing shards in a local run: ``local_threads``, or to an
    # object store at least storage.REMOTE_WRITE_THREADS (a shard is several round trips:
    # its upload, the read back that verifies it, the move, the index). Each thread holds
    # one shard's upload buffer (s3fs: up to 50 MiB).
    write_threads: int | None = None
    # Reshuffles between the listing stages and before the coding: False on a local
    # in-memory run (one Beam thread; with N workers, its threads take the inputs from
    # queues), where each was one more stage for nothing (~10-30 ms each, and its
    # transforms' construction).
    spread: bool = True
    # A-LoRA adapters by modality group ({"CT": sha256, ...}, files under DST/models/):
    # inputs of those modalities are coded with base + adapter (and the v1.0 local path,
    # the smaller record kept); other modalities with the preset's models.
    adapters: dict = field(default_factory=dict)
    # Resource bounds per input, checked from declared sizes before decoding (DicomLimits).
    memory_budget: int | None = None
    max_pixel_ratio: int | None = 10_000
    max_input_bytes: int = 2 << 30  # one input after decompression (ReadLimits)
    max_seconds: float | None = 600.0  # coding one input (DicomLimits.seconds; checked between planes)


def _resolve_identity(cfg: MigrateConfig) -> Identity:
    """The archive's identity key, resolved on the worker (never shipped in the job graph)."""
    from .keys import identity_key_from

    archive = Archive(cfg.dst, storage_options=cfg.storage_options)
    manifest = archive.read_manifest()["identity"]
    if manifest["mode"] == "archive-salt":
        return Identity(bytes.fromhex(manifest["salt"]))
    return Identity(identity_key_from(cfg.key_file))


# --- DoFns ---------------------------------------------------------------------------------


class ListTop(beam.DoFn):
    """SRC URL -> (URL, is a folder) of each entry directly under it (one listing call)."""

    def __init__(self, cfg: MigrateConfig) -> None:
        self.cfg = cfg

    def process(self, src: str) -> Iterator[tuple[str, bool]]:
        yield from list_top(src, storage_options=self.cfg.storage_options)


class FindFiles(beam.DoFn):
    """(URL, is a folder) -> (URL, what the listing said of it, or None) of every file
    under it: each top-level folder walked on its own worker."""

    def __init__(self, cfg: MigrateConfig) -> None:
        self.cfg = cfg

    def process(self, entry: tuple[str, bool]) -> Iterator[tuple[str, dict | None]]:
        url, is_dir = entry
        yield from (find_files(url, storage_options=self.cfg.storage_options) if is_dir else [(url, None)])


class ExpandFile(beam.DoFn):
    """A file URL -> one SourceRef per input (zip/tar members expanded); unlistable archives dead-lettered.

    Reading each object's first bytes is the slow part of listing a PACS export: it runs
    here, on every worker (after a Reshuffle; a local run's threads take the files from
    one queue)."""

    def __init__(self, cfg: MigrateConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        self.identity = _resolve_identity(self.cfg)

    def process(self, listed: tuple[str, dict | None]) -> Iterator[Any]:
        url, info = listed
        for item in expand_file(url, storage_options=self.cfg.storage_options, info=info):
            if isinstance(item, tuple):
                ref, exc = item
                Metrics.counter(NAMESPACE, "deadlettered").inc()
                yield beam.pvalue.TaggedOutput("dead", _dead_row(self.identity, ref, "list", exc, self.cfg.run_id))
            else:
                Metrics.counter(NAMESPACE, "inputs").inc()
                yield item


def _dead_row(identity: Identity, ref: SourceRef, stage: str, exc: BaseException, run_id: str, **extra) -> dict:
    return {
        "source_key": identity.hash("source", ref.identity),
        "source_hint": ref.hint,
        "stage": stage,
        "error_type": type(exc).__name__,
        # Our own errors never quote header values; others are cut to one line.
        "message": _redact(str(exc).splitlines()[0][:500], ref) if str(exc) else type(exc).__name__,
        "run_id": run_id,
        **extra,
    }


def _redact(message: str, ref: SourceRef) -> str:
    """Remove the source's URL, path and member name from an error message: they may hold names.

    zipfile ("Bad CRC-32 for file 'Doe^John/1.dcm'") and OS errors quote them.
    """
    path = ref.url.split("://", 1)[-1]
    names = {ref.url, path, path.rsplit("/", 1)[-1]}
    if ref.member:
        names |= {ref.member, ref.member.rsplit("/", 1)[-1]}
    for name in sorted((n for n in names if len(n) >= 3), key=len, reverse=True):  # "1" would eat digits
        message = message.replace(name, "<source>")
    return message


class ReadIndexKeys(beam.DoFn):
    """One committed index file -> (source_key, source_sha256) of each of its rows.

    Workers read the index files (in parallel, one element per file) to decide what to
    skip, so nothing proportional to the archive enters the job graph: it carries only
    the index files' names. A file that cannot be trusted stops the run, as before: its
    inputs would otherwise be archived twice."""

    def __init__(self, cfg: MigrateConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        self.archive = Archive(self.cfg.dst, storage_options=self.cfg.storage_options)

    def process(self, name: str) -> Iterator[tuple[str, str]]:
        table, bad = self.archive.read_index_reporting([name])
        if bad:
            raise ArchiveError(f"index file {bad[0]['file']} is {bad[0]['reason']}; run `medarchive audit` on DST")
        yield from zip(table.column("source_key").to_pylist(), table.column("source_sha256").to_pylist())


class KeySources(beam.DoFn):
    """A listed input -> (source_key, ref), to meet its index rows (if any) by key."""

    def __init__(self, cfg: MigrateConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        self.identity = _resolve_identity(self.cfg)

    def process(self, ref: SourceRef) -> Iterator[tuple[str, SourceRef]]:
        yield self.identity.hash("source", ref.identity), ref


def _with_indexed(keyed: tuple[str, dict]) -> Iterator[tuple[SourceRef, frozenset]]:
    """(ref, checksums its source key is indexed with) for each listed input of one key."""
    _, groups = keyed
    known = frozenset(groups["indexed"])
    for ref in groups["listed"]:
        yield ref, known


def balanced_order(items: list, sizes: list[int], ways: int) -> list:
    """``items`` in an order that deals them out evenly by size to ``ways`` takers who each
    take every ``ways``-th item: the largest first, in rounds of ``ways`` whose direction
    alternates (a snake draft), so no taker gets the largest item of every round (two
    takers' shares then differ by at most the largest item)."""
    ranked = [item for _, _, item in sorted(zip((-s for s in sizes), range(len(items)), items))]
    out = []
    for start in range(0, len(ranked), ways):
        round_ = ranked[start : start + ways]
        out.extend(round_ if (start // ways) % 2 == 0 else round_[::-1])
    return out


def _input_size(pair: tuple[SourceRef, frozenset]) -> int:
    return pair[0].size or 0


def _dealt_evenly(pairs: list[tuple[SourceRef, frozenset]], ways: int) -> list[tuple[SourceRef, frozenset]]:
    """Every listed input of a local run with ``ways`` worker processes, in
    ``balanced_order`` by size.

    Beam's local runner splits the encode stage's input into one part per worker,
    dealing the elements out in the order they arrived, and never rebalances: with a few
    large files among many small ones, one worker got about three times the other's work
    (benchmarks.pipeline_throughput --workers 2; the notes of issue 22). Local runs hold
    every element in memory anyway, so the list of inputs is gathered and ordered here.
    Worker threads (the default) take the inputs from one queue instead (threadqueue),
    and distributed runners balance work themselves."""
    return balanced_order(pairs, [ref.size or 0 for ref, _ in pairs], ways)


# A local run reads each listed file's first bytes (ExpandFile) in this many threads a
# worker: one request each, that waits on the store and not on the CPU.
LISTING_THREADS_PER_WORKER = 8

# A local run reads inputs ahead of the threads that code them (``EncodeInstance.prefetch``),
# up to PREFETCH_AHEAD inputs a thread; inputs listed larger than PREFETCH_MAX_BYTES are
# read when coded, and a read ahead stops there (an input grown since listing is read
# again when coded), so what is held read ahead stays under 256 MiB with two threads.
PREFETCH_AHEAD = 4
PREFETCH_MAX_BYTES = 32 << 20


class _Read(NamedTuple):
    """One input's bytes, or the error reading it gave, and the seconds it took."""

    data: bytes | None
    error: BaseException | None
    seconds: float


class EncodeInstance(beam.DoFn):
    """Read, checksum, skip if already archived, compress (verified) -> (study_key, instance)."""

    def __init__(self, cfg: MigrateConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        import medcodec

        medcodec.allocator.tune()  # on every worker process (medcodec/allocator.py)
        if self.cfg.model_threads:
            medcodec.set_model_threads(self.cfg.model_threads)
        self.medcodec = medcodec
        self.identity = _resolve_identity(self.cfg)
        self.progress = ProgressReporter(self.cfg.progress_dir)
        cfg = self.cfg
        # The adapters the run codes with, read from DST/models/ (by SHA-256) into this
        # worker's model store: passed to the codec, never registered process-wide.
        archive = Archive(cfg.dst, storage_options=cfg.storage_options)
        models = medcodec.ModelStore(archive.read_model(sha) for sha in sorted(set(cfg.adapters.values())))
        self.codec = medcodec.Codec(
            preset=cfg.preset, models=models, adapters=dict(cfg.adapters), local_model=cfg.local_model,
            keyring=load_keyring(cfg.key_file), keep_codestream=cfg.keep_codestream,
            limits=medcodec.DicomLimits(memory_bytes=cfg.memory_budget, max_pixel_ratio=cfg.max_pixel_ratio,
                                        seconds=cfg.max_seconds))

    def prefetch(self, element: tuple[SourceRef, frozenset]) -> tuple:
        """``element`` with its input read (``_Read``), for ``process``: run ahead of the
        coding threads in a local run (``threadqueue``), from other threads, so it uses
        only the config. Inputs listed over PREFETCH_MAX_BYTES, or of no listed size,
        are read by ``process`` (at most ``ahead`` inputs are held read ahead)."""
        ref, indexed = element
        if ref.size is None or ref.size > PREFETCH_MAX_BYTES:
            return element
        cap = min(self.cfg.max_input_bytes, PREFETCH_MAX_BYTES)
        read = self._read(ref, max_bytes=cap)
        if isinstance(read.error, InputTooLargeError) and cap < self.cfg.max_input_bytes:
            return element  # larger than listed (changed since): read when coded, under the run's limit
        return ref, indexed, read

    def _read(self, ref: SourceRef, *, max_bytes: int | None = None) -> _Read:
        t0 = time.perf_counter()
        try:
            data = read_source(ref, storage_options=self.cfg.storage_options,
                               limits=ReadLimits(max_bytes=max_bytes or self.cfg.max_input_bytes))
        except Exception as exc:
            return _Read(None, exc, time.perf_counter() - t0)
        return _Read(data, None, time.perf_counter() - t0)

    def process(self, element: tuple) -> Iterator[Any]:
        # indexed: the checksums this source is archived with already; read: where prefetch read it
        ref, indexed, *read = element
        ident, cfg = self.identity, self.cfg
        source_key = ident.hash("source", ref.identity)
        data, exc, read_s = read[0] if read else self._read(ref)
        if exc is not None:
            if is_unavailable(exc):  # the store, not this input: stop the run (a re-run resumes)
                raise StorageUnavailableError(f"SRC storage did not answer reading an input ({type(exc).__name__})"
                                              ) from exc
            Metrics.counter(NAMESPACE, "deadlettered").inc()
            yield beam.pvalue.TaggedOutput("dead", _dead_row(ident, ref, "read", exc, cfg.run_id))
            self.progress.tick(0, 0, failed=True)
            return
        sha = hashlib.sha256(data).hexdigest()
        if sha in indexed:
            Metrics.counter(NAMESPACE, "skipped").inc()
            yield beam.pvalue.TaggedOutput("skipped", source_key)
            self.progress.tick(len(data), 0, skipped=True)
            return
        t1 = time.perf_counter()
        try:
            # one parse and one read back: the record, the header's identifiers, the record's description
            record, uids, info = self.codec.archive_dicom(data, sha256=sha)
        except (self.medcodec.MedcodecError, MemoryError) as exc:  # out of memory: this input, not the job
            Metrics.counter(NAMESPACE, "deadlettered").inc()
            stage = "parse" if isinstance(exc, (self.medcodec.InvalidDicomError,)) else "encode"
            yield beam.pvalue.TaggedOutput(
                "dead", _dead_row(ident, ref, stage, exc, cfg.run_id, source_sha256=sha, size=len(data))
            )
            self.progress.tick(len(data), 0, failed=True)
            return
        encode_s = time.perf_counter() - t1
        if not uids:  # the codec read no dataset (e.g. kept verbatim before pydicom looked): best effort here
            uids = self.medcodec.dicom_identifiers(data)
        models = info.get("models") or {}
        spec = info.get("spec") or {}
        bps = info.get("bps", {})
        row = {
            "sop_key": ident.hash("sop", uids.get("sop") or f"source:{ref.identity}"),
            "series_key": ident.hash("series", uids.get("series") or ""),
            "study_key": ident.hash("study", uids.get("study") or ""),
            "patient_key": ident.hash("patient", uids.get("patient") or ""),
            "source_key": source_key,
            "source_sha256": sha,
            "original_size": len(data),
            "record_sha256": hashlib.sha256(record).hexdigest(),
            "modality": uids.get("modality"),
            "rows": spec.get("rows"),
            "cols": spec.get("cols"),
            "frames": spec.get("frames"),
            "samples": spec.get("samples"),
            "bits_allocated": spec.get("bits_allocated"),
            "bits_stored": spec.get("bits_stored"),
            # The source's, as its file meta states it (spec's is the de-identified copy's).
            "transfer_syntax": uids.get("transfer_syntax") or spec.get("transfer_syntax"),
            # For keyed records: how the *original* restores (the clear part is always byte-exact).
            "restore_mode": (info.get("sealed") or {}).get("original_restore_mode") or info["restore_mode"],
            "pixel_sha256": info.get("pixel_sha256"),
            "k": info.get("k"),
            "bpp_global": bps.get("global"),
            "bpp_local": bps.get("local"),
            "bpp_record": bps.get("record"),
            "preset": info.get("preset"),
            "codec_id": info.get("codec_id"),
            "model_id": models.get("local"),
            "model_hash": models.get("local_sha256"),
            "adapter_sha256": models.get("adapter_sha256"),
            "key_id": (info.get("sealed") or {}).get("key_id"),
            "format_version": info["format_version"],
            "run_id": cfg.run_id,
            "encode_seconds": encode_s,
            "read_seconds": read_s,
        }
        Metrics.counter(NAMESPACE, "archived").inc()
        Metrics.counter(NAMESPACE, "bytes_in").inc(len(data))
        Metrics.counter(NAMESPACE, "bytes_out").inc(len(record))
        self.progress.tick(len(data), len(record))
        yield row["study_key"], {"row": row, "record": record}


def shard_chunks(instances: Iterable[dict]) -> list[list[tuple]]:
    """Deterministic split of one study's instances into shards, from their rows and sizes
    only: a list of chunks, each a list of (sop_key, source_key, source_sha256) sorted. The
    records themselves are not held (a study can be larger than a worker's memory)."""
    keys = sorted((i["row"]["sop_key"], i["row"]["source_key"], i["row"]["source_sha256"], len(i["record"]))
                  for i in instances)
    chunks: list[list[tuple]] = []
    chunk: list[tuple] = []
    size = 0
    for *key, length in keys:
        if chunk and (len(chunk) >= MAX_SHARD_INSTANCES or size + length > MAX_SHARD_BYTES):
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(tuple(key))
        size += length
    if chunk:
        chunks.append(chunk)
    return chunks


def shard_stem(study_key: str, chunk: list[tuple]) -> str:
    """Same inputs -> same stem, so every attempt at them commits the same index file."""
    content = hashlib.sha256()
    for _, source_key, source_sha256 in chunk:
        content.update(f"{source_key}:{source_sha256}\n".encode())
    return f"{study_key[:16]}-{content.hexdigest()[:16]}"


_TAR_WRITE_BYTES = 1 << 24


class _Sha256Writer:
    """A write-only file wrapper that hashes what passes through and counts its offset."""

    def __init__(self, fh) -> None:
        self.fh, self.sha, self.offset = fh, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.fh.write(data)
        self.sha.update(data)
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        pass


class ShardWriter:
    """One shard, streamed: records go to a temporary tar as they arrive (nothing but the
    current record is held), then ``publish`` verifies it and moves it to its content name
    shards/<stem>.<run>.<sha16>.tar, and ``commit`` writes index/<stem>.parquet naming it.

    Two attempts at the same stem (a retried bundle, a zombie worker, a second run) each
    publish their own tar; whichever commits last wins, and its index names its own tar,
    so an index never describes another attempt's bytes."""

    def __init__(self, archive: Archive, identity: Identity, stem: str) -> None:
        self.archive, self.identity, self.stem = archive, identity, stem
        self.rows: list[dict] = []
        archive.makedirs(archive.path("shards"))
        self.tmp = archive.path("shards", f"{archive.tmp_name()}-{stem}.tar")
        self._fh = archive.fs.open(self.tmp, "wb")
        self._out = _Sha256Writer(self._fh)
        # a record goes to the tar in one write up to _TAR_WRITE_BYTES (tarfile's own copy
        # takes 16 KiB at a time, each through the hash and the file's wrapper)
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.USTAR_FORMAT,
                                 copybufsize=_TAR_WRITE_BYTES)
        self.shard: str | None = None
        self.size = 0

    def add(self, row: dict, record: bytes) -> None:
        row = dict(row)
        info = tarfile.TarInfo(f"{row['sop_key']}-{row['source_key'][:8]}.mdc")
        info.size, info.mtime, info.mode = len(record), 0, 0o644
        header = len(info.tobuf(self._tar.format, self._tar.encoding, self._tar.errors))
        row.update(offset=self._tar.offset + header, length=info.size)
        self._tar.addfile(info, io.BytesIO(record))
        self.rows.append(row)

    def publish(self) -> str:
        """Close, verify every record against its SHA-256, move to the content name."""
        self._tar.close()
        self._fh.close()
        self.size = self._out.offset
        run = self.archive.owner or "anonymous"
        self.shard = f"shards/{self.stem}.{run}.{self._out.sha.hexdigest()[:16]}.tar"
        for row in self.rows:
            row["shard"] = self.shard
            row["row_mac"] = self.identity.row_mac(row)
        _verify(self.archive, self.tmp, self.rows)
        self.archive.move(self.tmp, self.archive.path(self.shard))
        return self.shard

    def commit(self) -> None:
        """index/<stem>.parquet, written atomically: the shard's commit marker."""
        self.archive.write_table(f"index/{self.stem}.parquet", table_of(self.rows, INDEX_SCHEMA))

    def abandon(self) -> None:
        try:
            self._tar.close()
            self._fh.close()
            self.archive.fs.rm(self.tmp)
        except Exception:  # noqa: BLE001 - a temporary file of a dead attempt; cleanup removes it later
            pass


def _verify(archive: Archive, path: str, rows: list[dict]) -> None:
    with archive.fs.open(path, "rb") as fh:
        for row in rows:
            fh.seek(row["offset"])
            if hashlib.sha256(fh.read(row["length"])).hexdigest() != row["record_sha256"]:
                raise IOError(f"shard verification failed for a record in {path}")


class WriteShards(beam.DoFn):
    """(study_key, instances) -> shards/<stem>.<run>.<sha16>.tar + index/<stem>.parquet, committed in that order.

    The instances are iterated twice (Beam's grouped values are re-iterable): once for
    their keys and sizes, to plan the shards, once to stream each record into its shard."""

    def __init__(self, cfg: MigrateConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        self.archive = Archive(self.cfg.dst, storage_options=self.cfg.storage_options, owner=self.cfg.run_id)
        self.identity = _resolve_identity(self.cfg)

    def process(self, element: tuple[str, Iterable[dict]]) -> Iterator[tuple[str, dict]]:
        study_key, instances = element
        t0 = time.perf_counter()
        chunks = shard_chunks(instances)
        which = {key: i for i, chunk in enumerate(chunks) for key in chunk}
        writers: dict[int, ShardWriter] = {}
        try:
            for inst in instances:
                row = inst["row"]
                i = which[(row["sop_key"], row["source_key"], row["source_sha256"])]
                if i not in writers:
                    writers[i] = ShardWriter(self.archive, self.identity, shard_stem(study_key, chunks[i]))
                writers[i].add(row, inst["record"])
            for i in sorted(writers):
                writers[i].publish()
                writers[i].commit()
                Metrics.counter(NAMESPACE, "shards").inc()
        except BaseException:
            for writer in writers.values():
                if writer.shard is None:
                    writer.abandon()
            raise
        seconds = (time.perf_counter() - t0) / max(len(writers), 1)
        for i in sorted(writers):
            yield "shard", _shard_stats(writers[i], seconds)


def _study_bytes(element: tuple[str, Iterable[dict]]) -> int:
    return sum(len(inst["record"]) for inst in element[1])


def _shard_stats(writer: ShardWriter, write_seconds: float) -> dict:
    rows = writer.rows

    def samples(r: dict) -> int:
        return (r["rows"] or 0) * (r["cols"] or 0) * (r["frames"] or 0) * (r["samples"] or 0)

    return {
        "shard": writer.stem,
        "instances": len(rows),
        "bytes_in": sum(r["original_size"] for r in rows),
        "bytes_out": writer.size,
        "record_bytes": sum(r["length"] for r in rows),
        "samples": sum(samples(r) for r in rows if r["bpp_record"] is not None),  # pixel-coded records only
        "coded_bits": sum((r["bpp_record"] or 0) * samples(r) for r in rows),
        "read_seconds": sum(r["read_seconds"] for r in rows),
        "encode_seconds": sum(r["encode_seconds"] for r in rows),
        "write_seconds": write_seconds,
        "modalities": sorted({r["modality"] or "?" for r in rows}),
    }


class WriteDeadLetters(beam.DoFn):
    """Dead-letter rows -> deadletter/<run>-<part>.parquet, one file per bundle, on every
    worker (never gathered on one): the part is named by its rows' source keys, so a
    retried bundle rewrites its own file. An input that fails again for the same reason
    as in an earlier run is not written again (the deadletter files hold one row per input
    and reason; read_deadletters gives one per input). Emits ("dead", reason, new) per row
    for the run summary."""

    FLUSH_ROWS = 10_000

    def __init__(self, cfg: MigrateConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        self.archive = Archive(self.cfg.dst, storage_options=self.cfg.storage_options, owner=self.cfg.run_id)
        self.known = {_failure(r) for t in self.archive.read_tables("deadletter") for r in t.to_pylist()
                      if r["run_id"] != self.cfg.run_id}

    def start_bundle(self) -> None:
        self.pending: list[dict] = []

    def process(self, row: dict) -> Iterator[tuple[str, dict]]:
        new = _failure(row) not in self.known
        if new:
            self.pending.append(row)
            if len(self.pending) >= self.FLUSH_ROWS:
                self._flush()
        yield "dead", {"error_type": row["error_type"], "new": new}

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        part = hashlib.sha256("\n".join(sorted(r["source_key"] for r in self.pending)).encode()).hexdigest()[:16]
        self.archive.write_table(f"deadletter/{self.cfg.run_id}-{part}.parquet",
                                 table_of(self.pending, DEADLETTER_SCHEMA))
        self.pending = []


class SummarizeRun(beam.CombineFn):
    """("shard", stats) / ("dead", {error_type, new}) / ("skip", key) -> the run's totals.

    Bounded state: counts and sums, plus the committed stems (names only, for the run's
    authenticated list of index files)."""

    SUMS = ("instances", "bytes_in", "bytes_out", "record_bytes", "samples", "coded_bits",
            "read_seconds", "encode_seconds", "write_seconds")

    def create_accumulator(self) -> dict:
        return {"shards": [], "dead": 0, "dead_before": 0, "reasons": {}, "skipped": 0,
                **{k: 0 for k in self.SUMS}}

    def add_input(self, acc: dict, item: tuple[str, Any]) -> dict:
        kind, value = item
        if kind == "shard":
            acc["shards"].append(value["shard"])
            for k in self.SUMS:
                acc[k] += value[k]
        elif kind == "dead":
            acc["dead"] += 1
            acc["dead_before"] += 0 if value["new"] else 1
            acc["reasons"][value["error_type"]] = acc["reasons"].get(value["error_type"], 0) + 1
        else:
            acc["skipped"] += 1
        return acc

    def merge_accumulators(self, accs: Iterable[dict]) -> dict:
        out = self.create_accumulator()
        for acc in accs:
            out["shards"].extend(acc["shards"])
            for k in (*self.SUMS, "dead", "dead_before", "skipped"):
                out[k] += acc[k]
            for reason, n in acc["reasons"].items():
                out["reasons"][reason] = out["reasons"].get(reason, 0) + n
        return out

    def extract_output(self, acc: dict) -> dict:
        return acc


class Finalize(beam.DoFn):
    """The run's totals -> runs/<run>.json (with the authenticated list of index files it committed)."""

    def __init__(self, cfg: MigrateConfig, started: float) -> None:
        self.cfg = cfg
        self.started = started

    def process(self, acc: dict) -> Iterator[dict]:
        archive = Archive(self.cfg.dst, storage_options=self.cfg.storage_options, owner=self.cfg.run_id)
        archived = acc["instances"]
        summary = {
            "run_id": self.cfg.run_id,
            "src_hash": hashlib.sha256(self.cfg.src.encode()).hexdigest()[:16],
            "preset": self.cfg.preset,
            "inputs": archived + acc["dead"] + acc["skipped"],
            "archived": archived,
            "skipped": acc["skipped"],
            "deadlettered": acc["dead"],
            "deadlettered_before": acc["dead_before"],
            "deadletter_reasons": dict(sorted(acc["reasons"].items())),
            "shards": len(acc["shards"]),
            "bytes_in": acc["bytes_in"],
            "bytes_out": acc["bytes_out"],
            "record_bytes": acc["record_bytes"],
            "samples": acc["samples"],
            "coded_bits": acc["coded_bits"],
            "stage_seconds": {
                "read": acc["read_seconds"],
                "encode": acc["encode_seconds"],
                "write": acc["write_seconds"],
            },
            "started": self.started,
            "finished": time.time(),
        }
        # The index files this run committed, authenticated: audit finds one that went missing.
        summary["index_files"] = sorted(acc["shards"])
        summary["index_files_mac"] = _resolve_identity(self.cfg).manifest_mac(self.cfg.run_id, summary["index_files"])
        archive.write_atomic(f"runs/{self.cfg.run_id}.json", json.dumps(summary, indent=2, sort_keys=True).encode())
        yield summary


def _failure(row: dict) -> tuple:
    """What makes two dead-letter rows the same failure of the same input."""
    return row["source_key"], row.get("source_sha256"), row["stage"], row["error_type"], row["message"]


@dataclass
class Migrate(beam.PTransform):
    """The whole job as one transform: a PCollection of SRC URLs -> the run summary."""

    cfg: MigrateConfig
    index_files: tuple[str, ...]  # names of DST's index files: the graph carries no index rows
    started: float

    def __post_init__(self) -> None:
        super().__init__()

    def expand(self, srcs):
        cfg = self.cfg

        def spread(pcoll, label: str):
            # Several workers: spread the elements over them. A local in-memory run has one
            # Beam thread, and its own threads take the costly stages from queues.
            return pcoll | label >> beam.Reshuffle() if cfg.spread else pcoll

        folders = spread(srcs | "ListTop" >> beam.ParDo(ListTop(cfg)), "SpreadFolders")
        files = spread(folders | "FindFiles" >> beam.ParDo(FindFiles(cfg)), "SpreadFiles")
        # Reading each object's first bytes (ExpandFile) is a round trip per object: a
        # local run's threads take the files from one queue.
        listing_threads = cfg.local_threads and cfg.local_threads * LISTING_THREADS_PER_WORKER
        listed = (gathered(files, "GatherFiles", listing_threads)
                  | "ExpandFiles" >> beam.ParDo(queued(ExpandFile(cfg), listing_threads)).with_outputs("dead", main="refs"))
        indexed = (
            spread(srcs.pipeline | "IndexFiles" >> beam.Create(list(self.index_files)), "SpreadIndexFiles")
            | "ReadIndex" >> beam.ParDo(ReadIndexKeys(cfg))
        )
        keyed = listed.refs | "KeySources" >> beam.ParDo(KeySources(cfg))
        inputs = (
            {"listed": keyed, "indexed": indexed}
            | "MeetIndex" >> beam.CoGroupByKey()
            | "WithIndexed" >> beam.FlatMap(_with_indexed)
        )
        if cfg.local_threads:  # one list, coded from one queue by N threads, the largest first
            inputs = gathered(inputs, "Gather", cfg.local_threads)
        else:
            if cfg.local_workers:  # N processes, each given its part once: dealt out evenly by size
                inputs = (inputs | "Gather" >> beam.combiners.ToList()
                          | "DealEvenly" >> beam.FlatMap(_dealt_evenly, cfg.local_workers))
            inputs = spread(inputs, "Reshuffle")
        encode = queued(EncodeInstance(cfg), cfg.local_threads, weight=_input_size, ahead=PREFETCH_AHEAD * (cfg.local_threads or 0))
        encoded = inputs | "Encode" >> beam.ParDo(encode).with_outputs("dead", "skipped", main="instances")
        # A local run's threads write the studies' shards from one queue too (to object
        # storage each shard is several round trips), the largest study first.
        studies = gathered(encoded.instances | "ByStudy" >> beam.GroupByKey(), "GatherStudies", cfg.write_threads)
        shards = studies | "WriteShards" >> beam.ParDo(queued(WriteShards(cfg), cfg.write_threads, weight=_study_bytes))
        dead = ((listed.dead, encoded.dead) | "AllDead" >> beam.Flatten()
                | "WriteDeadLetters" >> beam.ParDo(WriteDeadLetters(cfg)))
        return (
            (shards, dead, encoded.skipped | "TagSkip" >> beam.Map(lambda s: ("skip", s)))
            | "All" >> beam.Flatten()
            | "Summarize" >> beam.CombineGlobally(SummarizeRun())
            | "Finalize" >> beam.ParDo(Finalize(cfg, self.started))
        )
