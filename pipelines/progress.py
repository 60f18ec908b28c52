"""Live progress for the local runner: workers append ticks to per-process files, the driver renders.

Beam's metrics are only readable when a job ends on the in-process runner, so each
worker process appends one small line per instance to its own file in a local
folder; the launching process sums them twice a second into one status line
(instances, MB, rate, MB/s, ETA). On a terminal the line is redrawn in place; anywhere
else (a scheduler's log, a pipe) a full line is written every ``log_interval`` seconds
(30 by default, MEDARCHIVE_PROGRESS_SECONDS to change it) while the counts move, and at
the end. Remote runners use Beam metrics instead.

The figures: "MB in" and "MB/s read" count every input read, skipped ones too (what the
run got through); the ratio is input bytes / record bytes, as `inspect` defines it, over
the instances this run encoded (a skipped or failed input wrote nothing), and says so
(the run summary adds input / shard bytes, the tar files). Before anything is read, and at
the end of a run that archived nothing new, the line says so instead of a zero rate.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path


class ProgressReporter:
    """Worker side: cheap appends, one file per process (no locking needed)."""

    def __init__(self, folder: str | None) -> None:
        self.folder = folder
        self._fh = None

    def tick(self, bytes_in: int, bytes_out: int, *, skipped: bool = False, failed: bool = False) -> None:
        if not self.folder:
            return
        if self._fh is None:
            self._fh = open(Path(self.folder) / f"worker-{os.getpid()}-{threading.get_ident()}.log", "a", buffering=1)
        self._fh.write(f"{bytes_in} {bytes_out} {int(skipped)} {int(failed)}\n")


def status_line(c: dict[str, int], elapsed: float, total: int | None = None, *, final: bool = False) -> str:
    """One progress line from :meth:`ProgressMonitor.counts` after ``elapsed`` seconds."""
    n = c["instances"]
    shown_total = f"/{total}" if total else ""
    bar = ""
    if total:
        done = int(24 * min(n, total) / total)
        bar = "[" + "#" * done + "." * (24 - done) + "] "
    ratio = (f" {c['archived_in'] / c['archived_out']:.2f}x (input / record bytes)"
             if c["archived"] and c["archived_out"] else "")
    line = (f"{bar}{n}{shown_total} instances, {c['bytes_in'] / 1e6:.1f} MB in{ratio}, "
            f"{c['skipped']} skipped, {c['failed']} failed")
    if not n:
        return line + (": nothing read" if final else "")
    rate = n / elapsed
    eta = f" ETA {int((total - n) / rate)}s" if total and n < total else ""
    line += f", {rate:.1f} instances/s, {c['bytes_in'] / 1e6 / elapsed:.2f} MB/s read{eta}"
    if final and not c["archived"]:
        line += "; nothing new archived"
    return line


class ProgressMonitor:
    """Driver side: renders a status line while the pipeline runs."""

    def __init__(self, folder: str, total: int | None, *, stream=sys.stderr, interval: float = 0.5,
                 log_interval: float | None = None) -> None:
        self.folder = Path(folder)
        self.total = total
        self.stream = stream
        self.interval = interval
        if log_interval is None:
            log_interval = float(os.environ.get("MEDARCHIVE_PROGRESS_SECONDS", "30"))
        self.log_interval = log_interval
        self._logged_at = time.time()
        self._logged_count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.time()

    def __enter__(self) -> "ProgressMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._render(final=True)

    def counts(self) -> dict[str, int]:
        """Sums over every worker's ticks: instances seen, bytes read, and for the instances
        archived (neither skipped nor failed) their input and record bytes."""
        c = dict.fromkeys(("instances", "bytes_in", "archived", "archived_in", "archived_out", "skipped", "failed"), 0)
        for f in self.folder.glob("worker-*.log"):
            for line in f.read_text().splitlines():
                parts = line.split()
                if len(parts) != 4:
                    continue  # a line being written
                bytes_in, bytes_out, skipped, failed = map(int, parts)
                c["instances"] += 1
                c["bytes_in"] += bytes_in
                c["skipped"] += skipped
                c["failed"] += failed
                if not skipped and not failed:
                    c["archived"] += 1
                    c["archived_in"] += bytes_in
                    c["archived_out"] += bytes_out
        return c

    def totals(self) -> tuple[int, int, int, int, int]:
        """(instances, bytes read, record bytes written, skipped, failed)."""
        c = self.counts()
        return c["instances"], c["bytes_in"], c["archived_out"], c["skipped"], c["failed"]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._render()

    def _render(self, final: bool = False) -> None:
        c = self.counts()
        n = c["instances"]
        line = status_line(c, max(time.time() - self.started, 1e-6), self.total, final=final)
        now = time.time()
        if getattr(self.stream, "isatty", lambda: False)():
            self.stream.write("\r" + line.ljust(100) + ("\n" if final else ""))
        elif final or (now - self._logged_at >= self.log_interval and n != self._logged_count):
            self.stream.write(f"progress: {line}\n")
            self._logged_at, self._logged_count = now, n
        self.stream.flush()


class MetricsProgress:
    """Progress for remote runners (Dataflow, Flink, Spark, a portable worker pool): the
    migrate job's Beam counters (namespace "medarchive"), polled from the runner while the
    job runs, as the same status lines: one when the counts moved, at most every
    MEDARCHIVE_PROGRESS_SECONDS, and a final one from the finished job's counters. Some
    runners report counters only when a job ends (Beam's embedded portable job service
    does; Dataflow reports them live); a runner without metrics gets one line saying so."""

    def __init__(self, result, *, stream=sys.stderr, interval: float | None = None) -> None:
        self.result = result
        self.stream = stream
        self.interval = float(os.environ.get("MEDARCHIVE_PROGRESS_SECONDS", "30")) if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.time()
        self._last: tuple | None = None
        self._said_none = False

    def __enter__(self) -> "MetricsProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            self._render(final=True)

    def counts(self) -> tuple[dict[str, int], int] | None:
        """(status_line counts, inputs listed so far) from the runner's counters (attempted:
        live; committed once the job ended); None when the runner does not answer."""
        from apache_beam.metrics.metric import MetricsFilter

        try:
            found = self.result.metrics().query(MetricsFilter().with_namespace("medarchive"))["counters"]
        except Exception:  # noqa: BLE001 - a runner without metrics
            return None
        if not found:  # none reported (yet, or by this runner at all)
            return None
        v: dict[str, int] = {}
        for counter in found:
            value = counter.attempted if counter.attempted is not None else counter.committed
            v[counter.key.metric.name] = v.get(counter.key.metric.name, 0) + int(value or 0)
        archived, skipped, failed = v.get("archived", 0), v.get("skipped", 0), v.get("deadlettered", 0)
        c = {"instances": archived + skipped + failed, "bytes_in": v.get("bytes_in", 0), "archived": archived,
             "archived_in": v.get("bytes_in", 0), "archived_out": v.get("bytes_out", 0), "skipped": skipped,
             "failed": failed}
        return c, v.get("inputs", 0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._render()

    def _render(self, final: bool = False) -> None:
        got = self.counts()
        if got is None:
            if final and not self._said_none:
                self.stream.write("progress: this runner reported no metrics while the job ran;"
                                  " the summary follows\n")
                self.stream.flush()
                self._said_none = True
            return
        c, listed = got
        key = tuple(sorted(c.items()))
        if not final and (key == self._last or not c["instances"]):
            return
        self._last = key
        line = status_line(c, max(time.time() - self.started, 1e-6), listed or None, final=final)
        self.stream.write(f"progress: {line} (runner metrics; MB in: archived inputs)\n")
        self.stream.flush()
