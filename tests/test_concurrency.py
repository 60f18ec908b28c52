"""Retries and concurrency: what a distributed runner does to a migrate job.

A runner may execute a bundle twice (a retry, or a zombie attempt still running), and a
scheduler may start a second run while the first still runs. Sealed records differ on
every attempt (fresh nonce and data key), so an index must never be paired with another
attempt's tar; two runs must never delete each other's files; every input must end in
exactly one index row or dead-letter row.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest
from conftest import pydicom_bytes

from benchmarks.shard_memory import SyntheticStudy
from pipelines.archive import Archive, shard_stem
from pipelines.audit import run_audit
from pipelines.migrate import EncodeInstance, MigrateConfig, ShardWriter, WriteShards, shard_chunks
from pipelines.migrate import shard_stem as stem_of
from pipelines.restore import run_restore
from pipelines.runner import run_migrate
from pipelines.sources import expand_file

REPO = Path(__file__).resolve().parents[1]
FILES = ("CT_small.dcm", "MR_small.dcm")


def _cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A keyed archive of two studies, its SRC and keyring."""
    root = tmp_path_factory.mktemp("keyed")
    src, dst, ring = root / "src", root / "dst", root / "ring.json"
    src.mkdir()
    for name in FILES:
        (src / name).write_bytes(pydicom_bytes(name))
    assert _cli("keys", "new", ring).returncode == 0
    summary = run_migrate(str(src), str(dst), preset="fast", key_file=str(ring), progress=False)
    assert summary["archived"] == 2
    return src, dst, ring


def _attempt(src: Path, dst: Path, ring: Path, run_id: str, name: str) -> tuple[str, list[dict]]:
    """One attempt of the encode step for one input, through the job's own DoFn: (study_key, instances)."""
    encode = EncodeInstance(MigrateConfig(src=str(src), dst=str(dst), run_id=run_id, preset="fast",
                                          key_file=str(ring)))
    encode.setup()
    [ref] = expand_file(str(src / name))  # as the job lists it
    [(study_key, inst)] = list(encode.process((ref, frozenset())))
    return study_key, [inst]


@pytest.mark.parametrize("order", ["A-publish B-publish B-commit A-commit", "A-publish B-publish A-commit B-commit"])
def test_a_retried_bundle_never_pairs_an_index_with_another_attempts_tar(keyed, tmp_path, order):
    """Two attempts of one bundle in the same run (same instances, different sealed bytes)
    interleaved: whichever commits last, its index names its own tar, which holds exactly
    the bytes its rows describe; the other tar is superseded and cleanup removes it once the
    run is over. Before content names, both attempts moved their tar to the same name."""
    src, original, ring = keyed
    dst = tmp_path / "dst"
    shutil.copytree(original, dst)
    archive = Archive(str(dst), owner="20261204T000000Z-retry001")
    identity = WriteShards(MigrateConfig(src=str(src), dst=str(dst), run_id="20261204T000000Z-retry001",
                                         key_file=str(ring)))
    identity.setup()
    attempts = {}
    for who in "AB":
        study_key, instances = _attempt(src, dst, ring, "20261204T000000Z-retry001", "CT_small.dcm")
        [chunk] = shard_chunks(instances)
        writer = ShardWriter(archive, identity.identity, stem_of(study_key, chunk))
        for inst in instances:
            writer.add(inst["row"], inst["record"])
        attempts[who] = writer
    a, b = attempts["A"], attempts["B"]
    assert a.stem == b.stem and a.rows[0]["record_sha256"] != b.rows[0]["record_sha256"]  # fresh nonce, data key
    for step in order.split():
        who, action = step.split("-")
        getattr(attempts[who], action)()
    winner = attempts[order.split()[-1][0]]
    assert a.shard != b.shard and (dst / a.shard).exists() and (dst / b.shard).exists()
    [row] = Archive(str(dst)).read_index([winner.stem]).to_pylist()
    assert row["shard"] == winner.shard
    with open(dst / row["shard"], "rb") as fh:
        fh.seek(row["offset"])
        assert hashlib.sha256(fh.read(row["length"])).hexdigest() == row["record_sha256"]

    loser = b if winner is a else a
    archive.hold_lease("20261204T000000Z-retry001")  # the run is live: its loser may still be in flight
    assert Archive(str(dst)).clean_uncommitted()["superseded"] == 1  # only the first run's (ended) CT shard
    assert (dst / loser.shard).exists()
    archive.release_lease("20261204T000000Z-retry001")
    assert Archive(str(dst)).clean_uncommitted()["superseded"] == 1
    assert not (dst / loser.shard).exists() and (dst / winner.shard).exists()
    audit = run_audit(str(dst), deep=True, key_file=str(ring))
    assert audit["failures"] == 0 and audit["records_checked"] == 2, audit["first_failures"]
    out = tmp_path / "out"
    assert run_restore(str(dst), str(out), key_file=str(ring))["restored"] == 2
    assert sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*.dcm")) == sorted(
        hashlib.sha256(pydicom_bytes(n)).hexdigest() for n in FILES)


def test_shard_writing_streams_one_record_at_a_time(tmp_path):
    """64 MiB of records into one shard: Python allocations peak at a few records, not the
    shard (the writer used to hold the whole tar, up to 1 GiB, twice)."""
    dst = tmp_path / "dst"
    Archive(str(dst)).open_or_create(key=None, key_mode="keyring")
    write = WriteShards(MigrateConfig(src=str(tmp_path), dst=str(dst), run_id="20261204T000000Z-stream01"))
    write.setup()
    study = SyntheticStudy(64, 1 << 20, run_id="20261204T000000Z-stream01")
    tracemalloc.start()
    try:
        [(_, stats)] = list(write.process(("s" * 32, study)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats["instances"] == 64 and stats["bytes_out"] > 64 << 20
    assert peak < 6 << 20, f"peak {peak / 2**20:.1f} MiB while writing a 64 MiB shard"
    [shard] = (dst / "shards").glob("*.tar")
    assert shard_stem(shard.name) == stats["shard"] and shard.stat().st_size == stats["bytes_out"]
    assert shard.name.split(".")[2] == hashlib.sha256(shard.read_bytes()).hexdigest()[:16]  # its content name
    rows = Archive(str(dst)).read_index([stats["shard"]]).to_pylist()
    assert len(rows) == 64 and all(r["shard"] == f"shards/{shard.name}" for r in rows)


@pytest.mark.slow
def test_two_runs_started_together_into_one_new_dst(tmp_path):
    """Two migrate processes of the same SRC into the same (new, keyless) DST, started at
    once: one archive.json identity, every input in exactly one index row or dead-letter
    row, no file of either run deleted by the other, a deep audit that passes."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i, name in enumerate(("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "MR2_J2KR.dcm")):
        (src / f"study{i % 2}").mkdir(parents=True, exist_ok=True)
        (src / f"study{i % 2}" / name).write_bytes(pydicom_bytes(name))
    (src / "junk.dcm").write_bytes(b"not dicom " * 50)
    env = {**os.environ, "MEDARCHIVE_PROGRESS_SECONDS": "3600"}
    cmd = [sys.executable, "-m", "jobs.cli", "migrate", str(src), str(dst), "--preset", "fast", "--phi-in-clear",
           "--no-progress", "--json"]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    archive = Archive(str(dst))
    keys = archive.read_index().column("source_key").to_pylist()
    dead = {r["source_key"] for r in archive.read_deadletters()}
    assert len(keys) == 4 and not [k for k, n in Counter(keys).items() if n > 1] and len(dead) == 1
    assert not dead & set(keys)
    cleaned = archive.clean_uncommitted()  # the tars that lost a race (kept while the other run was live)
    assert cleaned["temporary"] == 0 and cleaned["unindexed_shards"] == 0, cleaned
    assert sorted(shard_stem(n) for n in archive.shard_names()) == sorted(archive.index_names())
    audit = run_audit(str(dst), deep=True)
    assert audit["failures"] == 0 and audit["records_checked"] == 4, audit["first_failures"]


def test_a_read_ahead_holds_no_more_than_its_cap(tmp_path, monkeypatch):
    """EncodeInstance.prefetch reads an input ahead of its coding only up to
    PREFETCH_MAX_BYTES: one that grew past it since listing is left to ``process``,
    which reads it under the run's own limit and archives it."""
    from pipelines import migrate

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "ct.dcm").write_bytes(pydicom_bytes("CT_small.dcm"))
    [ref] = expand_file(str(src / "ct.dcm"))
    encode = EncodeInstance(MigrateConfig(src=str(src), dst=str(dst), run_id="20261207T000000Z-prefetch1",
                                          preset="fast"))
    assert len(encode.prefetch((ref, frozenset()))) == 3  # read ahead, as listed
    monkeypatch.setattr(migrate, "PREFETCH_MAX_BYTES", ref.size + 100)
    (src / "ct.dcm").write_bytes(pydicom_bytes("CT_small.dcm") + bytes(200))  # grown since listing
    assert encode.prefetch((ref, frozenset())) == (ref, frozenset())  # not held: read when coded
    Archive(str(dst)).open_or_create(key=None, key_mode="archive-salt")
    encode.setup()
    [(tag, out)] = [(getattr(o, "tag", "main"), o) for o in encode.process((ref, frozenset()))]
    assert tag == "main" and out[1]["row"]["original_size"] == ref.size + 200
