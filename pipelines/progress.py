"""Live progress for the local runner: workers append ticks to per-process files, the driver renders.

Beam's metrics are only readable when a job ends on the in-process runner, so each
worker process appends one small line per instance to its own file in a local
folder; the launching process sums them twice a second into one status line
(instances, MB, bits per sample, rate, ETA). Remote runners use Beam metrics instead.
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

    def __init__(self, folder: str, total: int | None, *, stream=sys.stderr, interval: float = 0.5) -> None:
        self.folder = Path(folder)
        self.total = total
        self.stream = stream
        self.interval = interval
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
            f"{skipped} skipped, {failed} failed, {rate:.1f}/s{eta}"
        )
        if getattr(self.stream, "isatty", lambda: False)():
            self.stream.write("\r" + line.ljust(100) + ("\n" if final else ""))
        elif final:
            self.stream.write(line + "\n")
        self.stream.flush()
