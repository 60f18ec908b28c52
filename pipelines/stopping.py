"""Stopping a local job on SIGTERM or Ctrl-C: what the run holds is let go.

A scheduler stops a job with SIGTERM (Kubernetes, Airflow, systemd, a preempted VM), a
person with Ctrl-C. Before this module (2026-12-08, `medarchive migrate`, local runs):

* SIGTERM ended Python at once. The run's lease on the archive stayed (runs/<run>.live,
  which keeps the run's temporary files from other runs' cleanup until its heartbeat is
  15 minutes old, where the archive is reached from another host), and so did its worker
  log, its progress folder and Beam's temporary folder in the temporary directory.
* Ctrl-C raised KeyboardInterrupt, which Beam hands on as a RuntimeError: exit status 1
  and a traceback. (Two-worker runs of JPEG 2000 files also crashed then, in 2-4 of 10:
  the interrupt made the garbage collector find the heap that pylibjpeg-openjpeg's
  encoder had corrupted, ``medcodec.dicom.encapsulation._ENCODE_TURNS``.)

Now a local job's command blocks SIGTERM and SIGINT before the process starts any thread
(``block_stop_signals``: every thread started later, OpenBLAS's at the first numpy import
included, inherits the mask), and one thread takes them with ``sigwait``
(``await_stop_signals``). No Python signal handler runs, so nothing is interrupted at an
arbitrary point of the main thread (which may hold a lock a cleanup needs). On the first
signal the thread runs the cleanups the run registered (``on_stop``: newest first, each
best-effort, for at most CLEANUP_SECONDS), says so on stderr and ends the process with
128 + the signal's number (143 SIGTERM, 130 Ctrl-C), unwinding nothing; a second signal
ends it at once. Nothing an archive needs is lost: a stopped run's shards and index files
are each moved into place whole, and the next run cleans its temporary files and skips
what it committed. A stop in the run's first instants, before the lease's cleanup is
registered, may leave the lease: a local re-run frees it at once (its process is gone).

A blocked mask is inherited across ``exec``: a child process would ignore SIGTERM. Local
runs (Beam's in-process runners) start no child process; a job on another runner (whose
launcher may start job servers) unblocks the signals again (``unblock_stop_signals``) and
keeps Python's defaults.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from typing import Callable, Iterator, NoReturn

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CLEANUP_SECONDS = 20.0  # a cleanup that hangs (an object store not answering) does not hold the stop
_cleanups: list[Callable[[], None]] = []  # what ``finish`` runs, oldest first


def block_stop_signals() -> None:
    """Block SIGTERM and SIGINT in this thread (the main one, before any other starts)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def unblock_stop_signals() -> None:
    """Undo ``block_stop_signals`` (a job that is not local: Python's defaults apply)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def await_stop_signals() -> None:
    """Start the thread that takes the stop signals (after ``block_stop_signals``)."""
    threading.Thread(target=_await, name="medarchive-stop", daemon=True).start()


def _await() -> None:
    signum = signal.sigwait(STOP_SIGNALS)
    threading.Thread(target=_await_second, name="medarchive-stop-now", daemon=True).start()
    finish(signum)


def _await_second() -> None:
    signum = signal.sigwait(STOP_SIGNALS)
    os._exit(128 + signum)


@contextlib.contextmanager
def on_stop(cleanup: Callable[[], None]) -> Iterator[None]:
    """Run ``cleanup`` if the process is stopped (``finish``) while the block runs."""
    _cleanups.append(cleanup)
    try:
        yield
    finally:
        _cleanups.remove(cleanup)


def removes(path: str) -> contextlib.AbstractContextManager:
    """``on_stop`` for a temporary file or folder that the block would have removed."""

    def remove() -> None:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)

    return on_stop(remove)


def finish(signum: int) -> NoReturn:
    """End the process for stop signal ``signum``: the cleanups, newest first (one that
    fails does not keep the others from running, and all of them get CLEANUP_SECONDS), a
    line on stderr, exit 128 + the signal's number."""

    def run_cleanups() -> None:
        for cleanup in reversed(list(_cleanups)):
            try:
                cleanup()
            except BaseException:  # noqa: BLE001 - best-effort: the process ends either way
                pass

    worker = threading.Thread(target=run_cleanups, name="medarchive-stop-cleanup", daemon=True)
    worker.start()
    worker.join(CLEANUP_SECONDS)
    name = signal.Signals(signum).name
    os.write(2, f"medarchive: stopped by {name}\n".encode())
    os._exit(128 + signum)
