"""Killing `medarchive migrate` with SIGKILL at random points, then re-running, ends complete.

One uninterrupted run is timed first; each of 10 trials starts the CLI on a fresh
archive, kills it, and re-runs the same job to completion. The archive must then hold
every input exactly once, verify in a deep audit (no missing, no extra records) and
keep no temporary files.

Where the kill lands: half the trials wait a seeded random delay spread over the whole
measured duration. Most of that time is interpreter and Beam start-up and encoding;
the shard/index commits take a few tens of milliseconds, which a delay almost never
hits. So the other half watch DST and kill as soon as a seeded random number of files
(temporary or final shards and indexes) exist: those land inside the commit sequence.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from pipelines.archive import shard_stem, TMP_PREFIX, Archive
from pipelines.audit import run_audit
from pipelines.runner import run_migrate

from conftest import pydicom_bytes

REPO = Path(__file__).resolve().parents[1]
TRIALS = 10
SEED = 20240605

# 10 small instances in 7 studies: nested folders, names without extension, a zip of a study.
PLAIN = {
    "ct/CT_small.dcm": "CT_small.dcm",
    "mr/1/IM0001": "MR_small.dcm",
    "mr/1/IM0002": "MR_small_bigendian.dcm",  # same study (and SOP) as MR_small
    "emri/emri": "emri_small.dcm",
    "nm/JPEG-lossy.dcm": "JPEG-lossy.dcm",
    "rt/dose.dcm": "rtdose_1frame.dcm",
    "ct693/J2KI.dcm": "693_J2KI.dcm",
}
ZIPPED = {"sc/1.dcm": "SC_rgb_dcmtk_ebcr_dcmd.dcm", "sc/2.dcm": "SC_rgb_dcmtk_ebcyn1_dcmd.dcm",
          "sc/3.dcm": "SC_rgb_small_odd.dcm"}
N_INPUTS = len(PLAIN) + len(ZIPPED)
SHARDS = 7  # one per study


def _wait_for_files(proc: subprocess.Popen, dst: Path, n: int, *, timeout: float) -> None:
    """Poll until ``n`` files exist under shards/ and index/ (or the job ends)."""
    deadline = time.perf_counter() + timeout
    while proc.poll() is None and time.perf_counter() < deadline:
        found = 0
        for folder in ("shards", "index"):
            try:
                found += sum(1 for _ in os.scandir(dst / folder))
            except FileNotFoundError:
                pass
        if found >= n:
            return
        time.sleep(0.0005)


def _build_source(src: Path) -> None:
    for rel, name in PLAIN.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(pydicom_bytes(name))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for member, name in ZIPPED.items():
            zf.writestr(member, pydicom_bytes(name))
    (src / "sc.zip").write_bytes(buf.getvalue())


def _migrate_cmd(src: Path, dst: Path) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", "migrate", str(src), str(dst), "--preset", "fast", "--local-model", "classical-v1", "--no-progress", "--phi-in-clear"]


def _state(dst: Path) -> str:
    """What a killed run left behind, for the trial log."""
    if not (dst / "archive.json").exists():
        return "nothing"

    def final(folder: str) -> int:
        path = dst / folder
        return sum(1 for p in path.iterdir() if not p.name.startswith(TMP_PREFIX)) if path.exists() else 0

    tmp = sum(1 for p in dst.rglob("*") if p.name.startswith(TMP_PREFIX))
    return f"{final('index')} index, {final('shards')} shards, {tmp} tmp, {final('runs')} runs"


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(tmp_path):
    src = tmp_path / "src"
    _build_source(src)

    started = time.perf_counter()
    baseline = subprocess.run(_migrate_cmd(src, tmp_path / "baseline"), cwd=REPO, capture_output=True, text=True)
    duration = time.perf_counter() - started
    assert baseline.returncode == 0, baseline.stderr
    assert f"archived        {N_INPUTS}" in baseline.stdout

    rng = random.Random(SEED)
    log = []
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    for trial in range(TRIALS):
        dst = tmp_path / f"trial{trial}"
        # A killed run cannot remove its worker log, progress folder and Beam's temporary
        # folder: they go to this test's own temporary directory, not the machine's.
        proc = subprocess.Popen(_migrate_cmd(src, dst), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "TMPDIR": str(scratch)})
        if trial % 2 == 0:
            when = rng.uniform(0.05, 1.0) * duration
            how = f"after {when:.2f}s of {duration:.2f}s"
            time.sleep(when)
        else:
            files = rng.randint(1, 2 * SHARDS - 1)
            how = f"at {files} shard/index file(s)"
            _wait_for_files(proc, dst, files, timeout=3 * duration)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = _state(dst)

        summary = run_migrate(str(src), str(dst), preset="fast", local_model="classical-v1", progress=False, phi_in_clear=True)
        log.append(f"trial {trial}: {how}, "
                   f"{'killed' if killed else 'finished'} leaving [{left}]; "
                   f"re-run archived {summary['archived']}, skipped {summary['skipped']}, cleaned {summary['cleaned']}")

        assert summary["deadlettered"] == 0 and summary["archived"] + summary["skipped"] == N_INPUTS, log[-1]
        archive = Archive(str(dst))
        keys = archive.read_index().column("source_key").to_pylist()
        duplicated = [k for k, n in Counter(keys).items() if n > 1]
        assert not duplicated and len(keys) == N_INPUTS, log[-1]
        assert not [p for p in dst.rglob("*") if p.name.startswith(TMP_PREFIX)], log[-1]
        # one shard per index file: a killed run's superseded tar was removed at the end of the re-run
        assert sorted(shard_stem(n) for n in archive.shard_names()) == sorted(archive.index_names()), log[-1]
        audit = run_audit(str(dst), deep=True)  # every record vs the index, no missing / extra, pixels, files
        assert audit["failures"] == 0, (log[-1], audit["first_failures"])
        assert audit["records_checked"] == N_INPUTS

    print("\n".join(log))
    assert sum(" killed " in line for line in log) >= TRIALS // 2, "\n".join(log)
    # at least one kill landed between two shard commits: the re-run both skipped and archived
    assert any("skipped 0," not in line and "archived 0," not in line for line in log), "\n".join(log)
