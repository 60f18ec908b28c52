"""Pipeline options and job launching shared by migrate, audit and restore.

The default runner is Beam's in-process FnApiRunner: fully offline (Prism, the
DirectRunner's first choice, downloads a binary). ``--workers N`` runs N worker
threads in this process over the stages that cost (``pipeline_options``;
``--direct_running_mode=multi_processing`` among the Beam options: N processes). Any
other Beam runner (Dataflow, Flink, Spark) is reached with standard Beam options passed
through unchanged (see jobs/configs/).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from .archive import Archive, ArchiveError
from .storage import (REMOTE_WRITE_THREADS, StorageTimeouts, is_local, open_fs, storage_errors, with_timeouts,
                      worker_storage_options)
from .migrate import Migrate, MigrateConfig
from .progress import MetricsProgress, ProgressMonitor
from . import stopping
from .threadqueue import local_threads

LOCAL_RUNNERS = {"FnApiRunner", "DirectRunner", "BundleBasedDirectRunner"}


def pipeline_options(runner: str, workers: int, extra: list[str] | None = None) -> PipelineOptions:
    args = [f"--runner={runner}"]
    if runner in LOCAL_RUNNERS:
        # Beam's in-memory worker, one thread, whatever N (memory:// URLs stay visible):
        # N workers are N threads of this process that take the stages which cost (migrate's
        # coding and shard writing, a deep audit's and a restore's shards) from one queue
        # (threadqueue.local_threads). The compiled coders release the GIL, so on 2 cores 2
        # threads migrated the 64-file benchmark in ~7 s where 2 processes took ~13 s (each
        # starts Beam, imports the codec and loads its kernels). Beam's own threads
        # (multi_threading) ran every stage through an in-process gRPC data plane, its input
        # split between them: a one-file migrate took 0.71-0.87 s instead of 0.52-0.54 s, and
        # the pipeline benchmark's 2-worker `max` migrate 14.92 s instead of 14.13 s (medians
        # of four alternated pairs, 2026-12-07). ``--direct_running_mode`` in the extra
        # options (they come last and win) still gives Beam's N processes or threads.
        chosen = PipelineOptions(list(extra or [])).get_all_options().get("direct_running_mode")
        beams_own = chosen in ("multi_processing", "multi_threading")
        args += [f"--direct_num_workers={workers if beams_own else 1}", "--direct_running_mode=in_memory"]
        sample_states_every(LOCAL_SAMPLING_MS)
    return PipelineOptions(args + list(extra or []))


# Beam's SDK worker samples which step a bundle is in (its per-step msecs) on a thread of
# its own, which sleeps 2 ms at first and 20% longer each time up to 200 ms; a bundle's
# end joins that thread, and waits out its sleep. A bundle that runs a second or more (a
# local run's coding) ended 0.02-0.18 s after its last element (five keyed `fast`
# migrates of the pipeline benchmark, 2026-12-07); sampling every 10 ms at most, it ends
# within 10 ms. Local runs only: a remote worker is Beam's own process.
LOCAL_SAMPLING_MS = 10


def sample_states_every(ms: int) -> None:
    """The longest sleep of the state sampling thread of the bundles this process runs
    (Beam's default 200 ms; its first sleep is 1% of it, 1 ms at least)."""
    from apache_beam.runners.worker import statesampler

    statesampler.StateSampler.__init__.__defaults__ = (ms,)


@contextlib.contextmanager
def worker_logs_captured(enabled: bool = True):
    """Send everything written to file descriptor 2 (Beam's worker processes inherit it and
    log at INFO) to a temporary log; yield a stream on the real stderr for progress. If the
    job fails, the log's last lines are printed, so nothing is hidden from the user."""
    if not enabled:
        yield sys.stderr
        return
    sys.stderr.flush()
    saved = os.dup(2)
    log = tempfile.NamedTemporaryFile(prefix="medarchive-workers-", suffix=".log", delete=False)
    real = os.fdopen(os.dup(saved), "w", buffering=1)
    os.dup2(log.fileno(), 2)
    failed = False

    def stopped() -> None:  # stopping.finish: stderr back (its last line goes there), the log gone
        os.dup2(saved, 2)
        os.unlink(log.name)

    try:
        with stopping.on_stop(stopped):
            yield real
    except BaseException:
        failed = True
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        log.close()
        if failed:
            tail = Path(log.name).read_text(errors="replace").splitlines()[-40:]
            if tail:
                print("worker log (last lines):\n" + "\n".join(tail), file=sys.stderr)
        os.unlink(log.name)
        real.close()


def quiet_beam_logs() -> None:
    for name in ("apache_beam", "root"):
        logging.getLogger(name).setLevel(logging.WARNING)


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def run_migrate(
    src: str,
    dst: str,
    *,
    preset: str = "max",
    local_model: str | None = None,
    adapters: dict | None = None,
    keep_codestream: bool = False,
    key_file: str | None = None,
    runner: str = "FnApiRunner",
    workers: int = 1,
    beam_args: list[str] | None = None,
    storage_options: dict | None = None,
    progress: bool = True,
    memory_budget: int | None = None,
    max_pixel_ratio: int | None = 10_000,
    max_input_bytes: int = 2 << 30,
    max_seconds: float | None = 600.0,
    phi_in_clear: bool = False,
    timeouts: StorageTimeouts = StorageTimeouts(),
    announce=None,
) -> dict:
    """Run one migrate job to completion; returns the run summary (also in DST/runs/<id>.json).

    ``announce(run_id)``, when given, is called once the run holds its lease, before any
    input is read (the CLI prints the run id there, so a log has it from the start).

    Without ``key_file`` the records keep the headers (PHI) in clear: refused unless
    ``phi_in_clear``. ``memory_budget`` (bytes per input; None: 60% of each worker's physical memory) and
    ``max_pixel_ratio`` bound what one input may claim before it is decoded; an input over
    either is a dead letter (medcodec.DicomLimits), as is an input larger than
    ``max_input_bytes`` or a .gz / archive member that inflates past its ratio limit
    (pipelines.sources.ReadLimits). ``max_seconds`` (None: no limit) bounds the time coding
    one input may take; it is checked between planes, candidates and before verification,
    and an input past it is a dead letter too.

    ``timeouts`` bound every object-storage call (pipelines.storage): a stalled or
    unreachable SRC or DST ends the run with StorageUnavailableError; what was committed
    stays, and a re-run resumes. A missing or empty SRC is an ArchiveError.

    ``adapters`` ({modality group: SHA-256}, files under DST/models/) codes those
    modalities with A-LoRA adapters (see pipelines/adapt.py, ``migrate --adapt N``).
    """
    if key_file is None and not phi_in_clear:
        raise ArchiveError(
            "no key file: the records would keep every DICOM header (PHI) in clear; pass --key-file (create one"
            " with `medarchive keys new`), or --phi-in-clear to store PHI in clear on purpose")
    quiet_beam_logs()
    src, dst = _absolute(src), _absolute(dst)  # workers run in other directories
    # Secrets never travel in the job graph: moved to this process's environment (local
    # runners' workers inherit it) or refused for a remote runner (pipelines.storage).
    storage_options = worker_storage_options(with_timeouts(storage_options, timeouts), local=runner in LOCAL_RUNNERS)
    with storage_errors(src, storage_options):
        _check_source(src, storage_options)
    key = None
    if key_file:
        from .keys import identity_key_from

        key = identity_key_from(key_file)
    with storage_errors(dst, storage_options):
        archive = Archive(dst, storage_options=storage_options)
        archive.fs.invalidate_cache()  # a long-lived process must not plan from stale listings
        archive.open_or_create(key=key, key_mode="keyring")
        run_id = new_run_id()
        archive.hold_lease(run_id)  # before cleaning: a second run started now keeps our files
    if announce is not None:
        announce(run_id)
    with lease_held(archive, run_id), storage_errors(dst, storage_options), storage_errors(src, storage_options):
        cleaned = archive.clean_uncommitted()
        index_files = tuple(archive.index_names())  # names only: workers read the rows
        archive.check_index_files(list(index_files))  # a junk file stops the run here, in one line
        summary = _run_migrate_pipeline(
            archive, run_id, index_files, src=src, dst=dst, preset=preset, memory_budget=memory_budget,
            max_pixel_ratio=max_pixel_ratio, max_input_bytes=max_input_bytes, max_seconds=max_seconds,
            local_model=local_model,
            adapters=adapters, keep_codestream=keep_codestream, key_file=key_file, storage_options=storage_options,
            progress=progress, runner=runner, workers=workers, beam_args=beam_args)
        # Superseded shards of runs that ended meanwhile (e.g. a killed run whose inputs this
        # run committed again) go now, not one run later.
        after = archive.clean_uncommitted()
    summary["cleaned"] = {"temporary": cleaned["temporary"] + after["temporary"],
                          "superseded": cleaned["superseded"] + after["superseded"],
                          "unindexed_shards": after["unindexed_shards"]}
    return summary


def _absolute(url: str) -> str:
    """A local path made absolute (a relative SRC on a worker pool would name nothing)."""
    return url if "://" in url else os.path.abspath(url)


def _check_source(src: str, storage_options: dict) -> None:
    """A SRC that does not exist or holds nothing is an error, not a run of 0 inputs."""
    fs, root = open_fs(src, storage_options)
    if not fs.exists(root):
        raise ArchiveError(f"SRC {src} does not exist")
    if not fs.isfile(root) and not fs.ls(root, detail=False):
        raise ArchiveError(f"SRC {src} holds no files")


@contextlib.contextmanager
def lease_held(archive: Archive, run_id: str):
    """Refresh the run's lease every HEARTBEAT_SECONDS while the block runs; release it after."""
    from .archive import HEARTBEAT_SECONDS

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                archive.hold_lease(run_id)
            except Exception:  # noqa: BLE001 - a missed heartbeat only shortens the lease
                pass

    def stopped() -> None:  # stopping.finish: the run is over, its files are for the next run to clean
        stop.set()
        thread.join(timeout=5)  # a heartbeat under way would write the lease again
        archive.release_lease(run_id)

    thread = threading.Thread(target=beat, name=f"lease-{run_id}", daemon=True)
    thread.start()
    try:
        with stopping.on_stop(stopped):
            yield
    finally:
        stop.set()
        thread.join(timeout=5)
        archive.release_lease(run_id)


def _run_migrate_pipeline(archive: Archive, run_id: str, index_files: tuple[str, ...], *, src, dst, preset, memory_budget,
                          max_pixel_ratio, max_input_bytes, max_seconds, local_model, adapters, keep_codestream, key_file,
                          storage_options, progress, runner, workers, beam_args) -> dict:
    local = runner in LOCAL_RUNNERS
    options = pipeline_options(runner, workers, beam_args)
    with tempfile.TemporaryDirectory(prefix="medarchive-progress-") as progress_dir, stopping.removes(progress_dir):
        cfg = MigrateConfig(
            src=src,
            dst=dst,
            run_id=run_id,
            preset=preset,
            memory_budget=memory_budget,
            max_pixel_ratio=max_pixel_ratio,
            max_input_bytes=max_input_bytes,
            max_seconds=max_seconds,
            local_model=local_model,
            adapters=dict(adapters or {}),
            keep_codestream=keep_codestream,
            key_file=key_file,
            storage_options=storage_options,
            progress_dir=progress_dir if (progress and local) else None,
            model_threads=max(1, (os.cpu_count() or 1) // workers) if local else None,
            local_workers=workers if local and workers > 1 else None,
            # one worker reading from an object store reads ahead too (a queue of one thread)
            local_threads=local_threads(options, workers, local, reads_ahead=not is_local(src)),
            write_threads=local_threads(options, workers if is_local(dst) else max(workers, REMOTE_WRITE_THREADS),
                                        local, reads_ahead=not is_local(src)),
            spread=not (local and options.get_all_options().get("direct_running_mode") == "in_memory"),
        )
        started = time.time()
        pipeline = beam.Pipeline(options=options)
        with stopping.removes(pipeline.local_tempdir):  # run() removes it, once it runs
            _ = pipeline | "Source" >> beam.Create([src]) | "Migrate" >> Migrate(cfg, index_files, started)
            with worker_logs_captured(local) as console:
                if cfg.progress_dir:
                    with ProgressMonitor(progress_dir, total=None, stream=console):
                        pipeline.run().wait_until_finish()
                elif progress and not local:
                    result = pipeline.run()
                    with MetricsProgress(result, stream=console):
                        result.wait_until_finish()
                else:
                    pipeline.run().wait_until_finish()
    # Workers (other processes, or other machines) wrote under DST: drop this process's
    # cached listings (s3fs, gcsfs) or the run summary they wrote is "not found".
    archive.fs.invalidate_cache()
    try:
        with archive.fs.open(archive.path("runs", f"{run_id}.json"), "rb") as fh:
            summary = json.loads(fh.read())
    except FileNotFoundError:
        raise ArchiveError(
            f"the job ended but its summary is not at {dst}/runs/{run_id}.json as this machine sees it"
            + ("" if local else ": with a remote runner DST must be storage that the workers and this machine"
               " both reach (s3://, gs://, a shared mount), not a path on this machine's disk")) from None
    summary["wall_seconds"] = time.time() - started
    summary["runner"] = runner
    summary["workers"] = workers
    return summary


def format_summary(summary: dict) -> str:
    """The run summary for people. Every figure is labelled with its definition: input bytes
    are the archived inputs' sizes; shard bytes the tar files written (``bytes_out``); record
    bytes (``record_bytes``; absent from older run files) the records in them, as `inspect`
    and the progress line count them; bits/sample is over pixel-coded images, weighted by samples.
    A run that archived nothing new says so, with no ratio, bits/sample or rate."""
    bytes_in, bytes_out = summary["bytes_in"], summary["bytes_out"]
    records = summary.get("record_bytes")
    wall = summary.get("wall_seconds") or (summary["finished"] - summary["started"])
    stages = summary["stage_seconds"]
    archived = summary["archived"]
    lines = [
        f"run {summary['run_id']}  ({summary.get('runner', '?')}"
        + (f", {summary.get('workers', '?')} worker(s))" if summary.get("runner") in LOCAL_RUNNERS else ")"),
        f"  inputs          {summary['inputs']}",
        f"  archived        {archived}  in {summary['shards']} shard(s)",
        f"  skipped         {summary['skipped']}  (already archived)",
        f"  dead-lettered   {summary['deadlettered']}"
        + (f"  {summary['deadletter_reasons']}" if summary["deadletter_reasons"] else "")
        + (f"  ({summary['deadlettered_before']} with the same reason as before: not recorded again)"
           if summary.get("deadlettered_before") else ""),
    ]
    if archived:
        width = len(f"{max(bytes_in, bytes_out, records or 0):,}")
        lines.append(f"  input bytes     {bytes_in:>{width},}  (the inputs archived by this run)")
        if records:
            lines.append(f"  record bytes    {records:>{width},}  ratio {bytes_in / records:.2f}x (input / record bytes)")
        lines.append(f"  shard bytes     {bytes_out:>{width},}"
                     + (f"  ratio {bytes_in / bytes_out:.2f}x (input / shard bytes: tar files)" if bytes_out else ""))
        lines.append("  bits/sample     " + (f"{summary['coded_bits'] / summary['samples']:.3f}"
                                                  " (whole records, pixel-coded images, weighted by samples)"
                                                  if summary["samples"] else "- (no pixel-coded images)"))
        rates = f"{archived / wall:.2f} instances/s, {bytes_in / 1e6 / wall:.2f} MB/s archived; " if wall > 0 else ""
    else:
        lines.append("  nothing new archived"
                     + (f" ({summary['skipped']} input(s) already in the archive)" if summary["skipped"] else ""))
        rates = ""
    lines.append(f"  time            {wall:.1f} s wall, " + rates
                 + f"stages (cpu-s): read {stages['read']:.1f}, encode {stages['encode']:.1f}, write {stages['write']:.1f}")
    cleaned = summary.get("cleaned") or {}
    if cleaned.get("temporary"):
        lines.append(f"  cleaned         {cleaned['temporary']} temporary file(s) of runs that are no longer live")
    if cleaned.get("unindexed_shards"):
        lines.append(f"  warning         {cleaned['unindexed_shards']} published shard(s) without an index: kept"
                     " (re-running their inputs commits them; `audit` names them)")
    return "\n".join(lines)


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
