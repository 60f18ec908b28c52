"""A local job stopped by SIGTERM (a scheduler) or Ctrl-C lets go of what it holds.

`medarchive migrate` is stopped while its workers are coding. It must exit with 128 + the
signal's number and a line that says so, leave no lease on the archive and nothing in
the temporary directory (its worker log, its progress folder, Beam's folder). A re-run
of the same job must then archive every input once. Before ``pipelines.stopping``,
SIGTERM left all of those behind (exit -15), and Ctrl-C exited 1 with a traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pipelines.archive import Archive
from pipelines.runner import run_migrate
from jobs.cli import _beam_job

from conftest import pydicom_bytes

REPO = Path(__file__).resolve().parents[1]
# Large enough that `max` is still coding when the first input is done.
FILES = ("693_J2KR.dcm", "MR2_J2KR.dcm", "US1_J2KR.dcm", "OBXXXX1A.dcm", "693_UNCR.dcm", "CT_small.dcm")


def _coding(scratch: Path) -> bool:
    """Whether a worker has finished an input (its progress ticks exist)."""
    return any(p.is_file() for d in scratch.glob("medarchive-progress-*") for p in d.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("signum, workers", [(signal.SIGTERM, 2), (signal.SIGINT, 1)])
def test_a_stopped_local_migrate_lets_go_and_a_rerun_completes(tmp_path, signum, workers):
    src, dst, scratch = tmp_path / "src", tmp_path / "dst", tmp_path / "tmp"
    src.mkdir()
    scratch.mkdir()
    for name in FILES:
        (src / name).write_bytes(pydicom_bytes(name))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "migrate", str(src), str(dst), "--preset", "max", "--phi-in-clear",
         "--workers", str(workers)],
        cwd=REPO, env={**os.environ, "TMPDIR": str(scratch)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline and not _coding(scratch):
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err[-3000:]
    assert f"stopped by {name}" in err and "Traceback" not in err, err[-3000:]
    assert not list((dst / "runs").glob("*.live"))  # the lease is let go
    assert not list(scratch.iterdir())  # worker log, progress folder, Beam's folder

    summary = run_migrate(str(src), str(dst), preset="fast", local_model="classical-v1", progress=False,
                          phi_in_clear=True)
    assert summary["deadlettered"] == 0 and summary["archived"] + summary["skipped"] == len(FILES)
    keys = Archive(str(dst)).read_index().column("source_key").to_pylist()
    assert sorted(Counter(keys).values()) == [1] * len(FILES)


def test_only_the_beam_jobs_take_the_stop_signals():
    """The other commands keep Python's defaults (``jobs.cli.entry`` blocks nothing for them)."""
    assert _beam_job(["migrate", "SRC", "DST"]) and _beam_job(["restore", "A", "OUT"])
    assert _beam_job(["audit", "A", "--deep"]) and _beam_job(["rewrap", "A"])
    assert not _beam_job(["compress", "a.dcm", "out"]) and not _beam_job(["bench", "pydicom"])
    assert not _beam_job(["--help"]) and not _beam_job([])
