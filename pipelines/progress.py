"""Live progress for the local runner: workers append ticks to per-process files, the driver renders.

Beam's metrics are only readable when a job ends on the in-process runner, so each
worker process appends one small line per instance to its own file in a local
folder; the launching process sums them twice a second into one status line
(instances, MB, rate, MB/s, ETA). On a terminal the line is redrawn in place; anywhere
else (a scheduler's log, a pipe) a full line is written every ``log_interval`` seconds
(30 by default, MEDARCHIVE_PROGRESS_SECONDS to change it) while the counts move, and at
the end. Remote runners use Beam metrics instead.
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

    def totals(self) -> tuple[int, int, int, int, int]:
        n = bytes_in = bytes_out = skipped = failed = 0
        for f in self.folder.glob("worker-*.log"):
            for line in f.read_text().splitlines():
                parts = line.split()
                if len(parts) != 4:
                    continue
                n += 1
                bytes_in += int(parts[0])
                bytes_out += int(parts[1])
                skipped += int(parts[2])
                failed += int(parts[3])
        return n, bytes_in, bytes_out, skipped, failed

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._render()

    def _render(self, final: bool = False) -> None:
        n, bytes_in, bytes_out, skipped, failed = self.totals()
        elapsed = max(time.time() - self.started, 1e-6)
        rate = n / elapsed
        total = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and rate > 0 and n < self.total:
            eta = f" ETA {int((self.total - n) / rate)}s"
        ratio = f" {bytes_in / bytes_out:.2f}x" if bytes_out else ""
        bar = ""
        if self.total:
            done = int(24 * min(n, self.total) / self.total)
            bar = "[" + "#" * done + "." * (24 - done) + "] "
        line = (
            f"{bar}{n}{total} instances, {bytes_in / 1e6:.1f} MB in{ratio}, "
            f"{skipped} skipped, {failed} failed, {rate:.1f}/s, {bytes_in / 1e6 / elapsed:.2f} MB/s{eta}"
        )
        now = time.time()
        if getattr(self.stream, "isatty", lambda: False)():
            self.stream.write("\r" + line.ljust(100) + ("\n" if final else ""))
        elif final or (now - self._logged_at >= self.log_interval and n != self._logged_count):
            self.stream.write(f"progress: {line}\n")
            self._logged_at, self._logged_count = now, n
        self.stream.flush()
