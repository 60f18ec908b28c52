"""The migrate job: SRC (any fsspec URL) -> a verified, indexed archive at DST.

    list sources -> read + encode (codec loaded once per worker) -> group by study
      -> write shards (tmp, verify, publish) + index (commit marker) -> finalize (dead letters, run summary)

Every input ends as exactly one indexed record, one dead-letter row, or a skip
(already indexed with the same source checksum by an earlier run: workers read DST's
index files and meet them with the listed inputs by source key).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas.tables import DEADLETTER_SCHEMA, INDEX_SCHEMA, table_of

from .archive import Archive, ArchiveError, Identity
from .keys import load_keyring
from .progress import ProgressReporter
from .sources import ReadLimits, SourceRef, list_sources, read_source
from .storage import StorageUnavailableError, is_unavailable

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
    # runners with N worker processes give each cores // N, so they do not oversubscribe.
    model_threads: int | None = None
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


class ListSources(beam.DoFn):
    """SRC URL -> one SourceRef per input (zip/tar members expanded); unlistable archives dead-lettered."""

    def __init__(self, cfg: MigrateConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        self.identity = _resolve_identity(self.cfg)

    def process(self, src: str) -> Iterator[Any]:
        for item in list_sources(src, storage_options=self.cfg.storage_options):
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


def header_identifiers(data: bytes) -> dict[str, str | None]:
    """Study / series / SOP / patient identifiers and modality from the header (no pixel data read)."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception:  # the codec has already accepted the file; identifiers are best effort
        return {}
    meta = getattr(ds, "file_meta", None)
    sop = ds.get("SOPInstanceUID") or (meta.get("MediaStorageSOPInstanceUID") if meta is not None else None)
    return {
        "study": str(ds.get("StudyInstanceUID", "") or "") or None,
        "series": str(ds.get("SeriesInstanceUID", "") or "") or None,
        "sop": str(sop) if sop else None,
        "patient": str(ds.get("PatientID", "") or "") or None,
        "modality": str(ds.get("Modality", "") or "") or None,
    }


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


class EncodeInstance(beam.DoFn):
    """Read, checksum, skip if already archived, compress (verified) -> (study_key, instance)."""

    def __init__(self, cfg: MigrateConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        import medcodec
        from medcodec import allocator

        allocator.tune()  # on every worker process (medcodec/allocator.py)

        if self.cfg.model_threads:
            from medcodec.model.registry import set_threads

            set_threads(self.cfg.model_threads)
        self.codec = medcodec
        self.identity = _resolve_identity(self.cfg)
        self.progress = ProgressReporter(self.cfg.progress_dir)
        self.keyring = load_keyring(self.cfg.key_file)
        self.adapted = self._adapted_coders()

    def _adapted_coders(self) -> dict:
        """{modality group: transformer coder with that group's adapter} (read from DST/models/)."""
        if not self.cfg.adapters:
            return {}
        from medcodec.model.adapt import read_adapter
        from medcodec.model.coder import TransformerLocalPathCoder
        from medcodec.model.registry import load_adapted, register_adapter

        archive = Archive(self.cfg.dst, storage_options=self.cfg.storage_options)
        coders = {}
        for group, sha in sorted(self.cfg.adapters.items()):
            blob = archive.read_model(sha)
            _, meta = read_adapter(blob)
            register_adapter(blob)
            model = load_adapted(meta["base_model"], sha256=meta["base_sha256"], adapter_sha256=sha)
            coders[group] = TransformerLocalPathCoder(model)
        return coders

    def _local_model(self, modality: str | None):
        if not self.adapted:
            return self.cfg.local_model
        from medcodec.model.adapt import modality_group

        coder = self.adapted.get(modality_group(modality))
        if coder is None or self.cfg.preset != "max":
            return self.cfg.local_model
        if self.cfg.local_model == coder.model_id:  # the adapted transformer only
            return coder
        if self.cfg.local_model is not None:
            return self.cfg.local_model
        return (coder, "classical-v1")

    def process(self, element: tuple[SourceRef, frozenset]) -> Iterator[Any]:
        ref, indexed = element  # indexed: the checksums this source is archived with already
        ident, cfg = self.identity, self.cfg
        source_key = ident.hash("source", ref.identity)
        t0 = time.perf_counter()
        try:
            data = read_source(ref, storage_options=cfg.storage_options,
                               limits=ReadLimits(max_bytes=cfg.max_input_bytes))
        except Exception as exc:
            if is_unavailable(exc):  # the store, not this input: stop the run (a re-run resumes)
                raise StorageUnavailableError(f"SRC storage did not answer reading an input ({type(exc).__name__})"
                                              ) from exc
            Metrics.counter(NAMESPACE, "deadlettered").inc()
            yield beam.pvalue.TaggedOutput("dead", _dead_row(ident, ref, "read", exc, cfg.run_id))
            self.progress.tick(0, 0, failed=True)
            return
        read_s = time.perf_counter() - t0
        sha = hashlib.sha256(data).hexdigest()
        if sha in indexed:
            Metrics.counter(NAMESPACE, "skipped").inc()
            yield beam.pvalue.TaggedOutput("skipped", source_key)
            self.progress.tick(len(data), 0, skipped=True)
            return
        t1 = time.perf_counter()
        uids = header_identifiers(data)
        try:
            record = self.codec.compress_dicom(
                data, preset=cfg.preset, keep_codestream=cfg.keep_codestream, keyring=self.keyring,
                local_model=self._local_model(uids.get("modality")),
                limits=self.codec.DicomLimits(memory_bytes=cfg.memory_budget, max_pixel_ratio=cfg.max_pixel_ratio,
                                              seconds=cfg.max_seconds),
            )
            info = self.codec.inspect_record(record)
        except (self.codec.MedcodecError, MemoryError) as exc:  # out of memory: this input, not the job
            Metrics.counter(NAMESPACE, "deadlettered").inc()
            stage = "parse" if isinstance(exc, (self.codec.InvalidDicomError,)) else "encode"
            yield beam.pvalue.TaggedOutput(
                "dead", _dead_row(ident, ref, stage, exc, cfg.run_id, source_sha256=sha, size=len(data))
            )
            self.progress.tick(len(data), 0, failed=True)
            return
        encode_s = time.perf_counter() - t1
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
            "transfer_syntax": spec.get("transfer_syntax"),
            # For keyed records: how the *original* restores (the clear part is always byte-exact).
            "restore_mode": (info.get("sealed") or {}).get("original_restore_mode") or info["restore_mode"],
            "pixel_sha256": _pixel_digest(record),
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


def _pixel_digest(record: bytes) -> str | None:
    from medcodec import container

    pixels = container.read_record(record).config.get("pixels")
    return pixels["digest"] if pixels else None


def shard_chunks(instances: list[dict]) -> Iterator[list[dict]]:
    """Deterministic split of one study's instances into shards."""
    chunk: list[dict] = []
    size = 0
    for inst in sorted(instances, key=lambda i: (i["row"]["sop_key"], i["row"]["source_key"])):
        if chunk and (len(chunk) >= MAX_SHARD_INSTANCES or size + len(inst["record"]) > MAX_SHARD_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(inst)
        size += len(inst["record"])
    if chunk:
        yield chunk


def shard_name(study_key: str, chunk: list[dict]) -> str:
    """Same instances -> same name, so a retried bundle rewrites its own shard, never a second one."""
    content = hashlib.sha256()
    for inst in chunk:
        content.update(f"{inst['row']['source_key']}:{inst['row']['source_sha256']}\n".encode())
    return f"{study_key[:16]}-{content.hexdigest()[:16]}"


class WriteShards(beam.DoFn):
    """(study_key, instances) -> shards/<name>.tar + index/<name>.parquet, committed in that order."""

    def __init__(self, cfg: MigrateConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        self.archive = Archive(self.cfg.dst, storage_options=self.cfg.storage_options, owner=self.cfg.run_id)
        self.identity = _resolve_identity(self.cfg)

    def process(self, element: tuple[str, Iterable[dict]]) -> Iterator[dict]:
        study_key, instances = element
        for chunk in shard_chunks(list(instances)):
            yield self._write(shard_name(study_key, chunk), chunk)

    def _write(self, name: str, chunk: list[dict]) -> dict:
        archive = self.archive
        t0 = time.perf_counter()
        rows = []
        with tempfile.SpooledTemporaryFile(max_size=64 << 20) as spool:
            with tarfile.open(fileobj=spool, mode="w", format=tarfile.USTAR_FORMAT) as tf:
                for inst in chunk:
                    row = dict(inst["row"])
                    info = tarfile.TarInfo(f"{row['sop_key']}-{row['source_key'][:8]}.mdc")
                    info.size, info.mtime, info.mode = len(inst["record"]), 0, 0o644
                    header = len(info.tobuf(tf.format, tf.encoding, tf.errors))
                    row.update(shard=f"shards/{name}.tar", offset=tf.offset + header, length=info.size)
                    row["row_mac"] = self.identity.row_mac(row)
                    tf.addfile(info, io.BytesIO(inst["record"]))
                    rows.append(row)
            spool.seek(0)
            tar_bytes = spool.read()
        tmp = archive.path("shards", f"{archive.tmp_name()}-{name}.tar")
        archive.fs.makedirs(archive.path("shards"), exist_ok=True)
        with archive.fs.open(tmp, "wb") as fh:
            fh.write(tar_bytes)
        self._verify(tmp, rows)
        archive.fs.mv(tmp, archive.path("shards", f"{name}.tar"))
        archive.write_table(f"index/{name}.parquet", table_of(rows, INDEX_SCHEMA))  # commit marker
        Metrics.counter(NAMESPACE, "shards").inc()
        return {
            "shard": name,
            "instances": len(rows),
            "bytes_in": sum(r["original_size"] for r in rows),
            "bytes_out": len(tar_bytes),
            "samples": sum((r["rows"] or 0) * (r["cols"] or 0) * (r["frames"] or 0) * (r["samples"] or 0) for r in rows),
            "coded_bits": sum(
                (r["bpp_record"] or 0) * (r["rows"] or 0) * (r["cols"] or 0) * (r["frames"] or 0) * (r["samples"] or 0)
                for r in rows
            ),
            "read_seconds": sum(r["read_seconds"] for r in rows),
            "encode_seconds": sum(r["encode_seconds"] for r in rows),
            "write_seconds": time.perf_counter() - t0,
            "modalities": sorted({r["modality"] or "?" for r in rows}),
        }

    def _verify(self, path: str, rows: list[dict]) -> None:
        with self.archive.fs.open(path, "rb") as fh:
            for row in rows:
                fh.seek(row["offset"])
                if hashlib.sha256(fh.read(row["length"])).hexdigest() != row["record_sha256"]:
                    raise IOError(f"shard verification failed for a record in {path}")


class Finalize(beam.DoFn):
    """All shard stats, dead letters and skips -> deadletter/<run>.parquet and runs/<run>.json."""

    def __init__(self, cfg: MigrateConfig, started: float) -> None:
        self.cfg = cfg
        self.started = started

    def process(self, items: list[tuple[str, Any]]) -> Iterator[dict]:
        archive = Archive(self.cfg.dst, storage_options=self.cfg.storage_options, owner=self.cfg.run_id)
        shards = [v for k, v in items if k == "shard"]
        dead = [v for k, v in items if k == "dead"]
        skipped = sum(1 for k, _ in items if k == "skip")
        # An input that fails again for the same reason is not written again: the
        # deadletter files hold one row per input and reason, read_deadletters one per input.
        known = {_failure(r) for r in archive.read_deadletters()} if dead else set()
        new = [d for d in dead if _failure(d) not in known]
        if new:
            archive.write_table(f"deadletter/{self.cfg.run_id}.parquet", table_of(new, DEADLETTER_SCHEMA))
        archived = sum(s["instances"] for s in shards)
        summary = {
            "run_id": self.cfg.run_id,
            "src_hash": hashlib.sha256(self.cfg.src.encode()).hexdigest()[:16],
            "preset": self.cfg.preset,
            "inputs": archived + len(dead) + skipped,
            "archived": archived,
            "skipped": skipped,
            "deadlettered": len(dead),
            "deadlettered_before": len(dead) - len(new),
            "deadletter_reasons": _count(d["error_type"] for d in dead),
            "shards": len(shards),
            "bytes_in": sum(s["bytes_in"] for s in shards),
            "bytes_out": sum(s["bytes_out"] for s in shards),
            "samples": sum(s["samples"] for s in shards),
            "coded_bits": sum(s["coded_bits"] for s in shards),
            "stage_seconds": {
                "read": sum(s["read_seconds"] for s in shards),
                "encode": sum(s["encode_seconds"] for s in shards),
                "write": sum(s["write_seconds"] for s in shards),
            },
            "started": self.started,
            "finished": time.time(),
        }
        # The index files this run committed, authenticated: audit finds one that went missing.
        summary["index_files"] = sorted(s["shard"] for s in shards)
        summary["index_files_mac"] = _resolve_identity(self.cfg).manifest_mac(self.cfg.run_id, summary["index_files"])
        archive.write_atomic(f"runs/{self.cfg.run_id}.json", json.dumps(summary, indent=2, sort_keys=True).encode())
        yield summary


def _failure(row: dict) -> tuple:
    """What makes two dead-letter rows the same failure of the same input."""
    return row["source_key"], row.get("source_sha256"), row["stage"], row["error_type"], row["message"]


def _count(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


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
        listed = srcs | "List" >> beam.ParDo(ListSources(cfg)).with_outputs("dead", main="refs")
        indexed = (
            srcs.pipeline
            | "IndexFiles" >> beam.Create(list(self.index_files))
            | "SpreadIndexFiles" >> beam.Reshuffle()
            | "ReadIndex" >> beam.ParDo(ReadIndexKeys(cfg))
        )
        keyed = listed.refs | "KeySources" >> beam.ParDo(KeySources(cfg))
        encoded = (
            {"listed": keyed, "indexed": indexed}
            | "MeetIndex" >> beam.CoGroupByKey()
            | "WithIndexed" >> beam.FlatMap(_with_indexed)
            | "Reshuffle" >> beam.Reshuffle()
            | "Encode" >> beam.ParDo(EncodeInstance(cfg)).with_outputs("dead", "skipped", main="instances")
        )
        shards = encoded.instances | "ByStudy" >> beam.GroupByKey() | "WriteShards" >> beam.ParDo(WriteShards(cfg))
        tagged = (
            (shards | "TagShards" >> beam.Map(lambda s: ("shard", s)),
             listed.dead | "TagListDead" >> beam.Map(lambda d: ("dead", d)),
             encoded.dead | "TagDead" >> beam.Map(lambda d: ("dead", d)),
             encoded.skipped | "TagSkip" >> beam.Map(lambda s: ("skip", s)))
            | "All" >> beam.Flatten()
            | "Collect" >> beam.combiners.ToList()
        )
        return tagged | "Finalize" >> beam.ParDo(Finalize(cfg, self.started))
