"""Audit and restore at archive scale: nothing proportional to the archive in the job graph,
no key material in it, audit rows written in parallel (one part file per shard stem),
superseded vs unindexed shard files, and a SOP instance held in two index files.

Fast: each test migrates one or two pydicom-data files with the fast preset; the index
rows that make the archive "large" are synthetic (no tar behind them).
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import shutil
import uuid

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from conftest import pydicom_bytes

from benchmarks.graph_sizes import synthetic_index_file
from pipelines.archive import Archive
from pipelines.audit import AuditConfig, read_audit_rows, run_audit, shard_stem
from pipelines.restore import RestoreConfig, run_restore
from pipelines.runner import run_migrate


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def graphs(monkeypatch):
    """The serialized job graph (runner API proto) of every pipeline run while the test runs."""
    recorded: list[bytes] = []
    run = beam.Pipeline.run

    def recording_run(self, *args, **kwargs):
        recorded.append(self.to_runner_api().SerializeToString())
        return run(self, *args, **kwargs)

    monkeypatch.setattr(beam.Pipeline, "run", recording_run)
    return recorded


@pytest.fixture
def small(tmp_path):
    """A keyless archive of one CT (one shard, one index file)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "ct.dcm").write_bytes(pydicom_bytes("CT_small.dcm"))
    assert run_migrate(str(src), str(dst), preset="fast", progress=False, phi_in_clear=True)["archived"] == 1
    return dst


def test_audit_and_restore_graphs_do_not_grow_with_the_index(small, graphs, tmp_path):
    audit = run_audit(str(small))
    assert audit["failures"] == 0 and audit["records_indexed"] == 1
    assert run_restore(str(small), str(tmp_path / "out1"))["restored"] == 1
    small_graphs = [len(g) for g in graphs[-2:]]
    n_files, per_file = 4, 2_500  # 10,000 more rows (the pipeline graph used to hold every one)
    for i in range(n_files):
        synthetic_index_file(small, f"synthetic-{i:02d}", per_file, i)
    graphs.clear()
    audit = run_audit(str(small))
    assert audit["records_indexed"] == 1 + n_files * per_file
    # every synthetic row is missing its shard; the summary names only the first 10
    assert audit["failures_by_check"] == {"missing": n_files * per_file} and len(audit["first_failures"]) == 10
    restore = run_restore(str(small), str(tmp_path / "out2"))
    assert (restore["selected"], restore["restored"], len(restore["failed"])) == (
        1 + n_files * per_file, 1, n_files * per_file)
    big_graphs = [len(g) for g in graphs]
    # measured: audit 75.8 kB / restore 43.5 kB with 1 row and with 10,001 rows alike (the graph used to
    # grow by about 0.2 MB per 1,000 rows)
    for before, after in zip(small_graphs, big_graphs):
        assert after < 256 * 1024 and after <= before + 1024, (small_graphs, big_graphs)


def test_no_key_material_or_credentials_in_the_audit_or_restore_graph(tmp_path, job_graphs, monkeypatch):
    from medcodec.crypto import Keyring, key_source
    from pipelines.keys import identity_key_from

    ring_path = tmp_path / "ring.json"
    Keyring.create(ring_path)
    text = ring_path.read_text()
    secrets = [v for k, v in json.loads(text).items() if k == "identity_secret"]
    secrets += [k["material"] for k in json.loads(text)["keys"]]
    monkeypatch.setenv("MEDARCHIVE_SCALE_RING", text)
    spec = "env:MEDARCHIVE_SCALE_RING"
    uid_key = identity_key_from(spec)
    assert Keyring.from_source(key_source(spec)).uid_key() == uid_key
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "ct.dcm").write_bytes(pydicom_bytes("CT_small.dcm"))
    assert run_migrate(str(src), str(dst), preset="fast", key_file=spec, progress=False)["archived"] == 1
    job_graphs.clear()
    credential = "s3cr3t-" + uuid.uuid4().hex  # a literal secret in the storage options (unused by file://)
    options = {"secret": credential}
    audit = run_audit(str(dst), deep=True, key_file=spec, storage_options=options)
    assert audit["failures"] == 0 and audit["rows_authenticated"] == 1
    restored = run_restore(str(dst), str(tmp_path / "out"), key_file=spec, storage_options=options,
                           dst_storage_options=options)
    assert restored["restored"] == 1 and not restored["deidentified"]
    assert [sha(p.read_bytes()) for p in (tmp_path / "out").rglob("*.dcm")] == [sha(pydicom_bytes("CT_small.dcm"))]
    assert len(job_graphs) == 2
    needles = [uid_key, uid_key.hex().encode(), credential.encode()]
    for secret in secrets:
        needles += [secret.encode(), base64.b64decode(secret)]
    for graph in job_graphs:  # the graphs with Beam's pickled payloads opened (conftest.graph_plaintext)
        assert str(dst).encode() in graph and spec.encode() in graph  # the configs are in what is searched
        for needle in needles:
            assert needle not in graph
    # the configs themselves: the key file's spec, never what it holds
    assert not hasattr(RestoreConfig, "identity_key")
    for cfg in (AuditConfig(str(dst), "x", key_file=spec), RestoreConfig(str(dst), "out", key_file=spec)):
        blob = pickle.dumps(cfg)
        assert all(needle not in blob for needle in needles)


def test_audit_rows_are_written_per_shard_stem_and_read_back_whole(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):  # two studies: two shards, two index files
        (src / name).write_bytes(pydicom_bytes(name))
    assert run_migrate(str(src), str(dst), preset="fast", progress=False, phi_in_clear=True)["archived"] == 2
    audit = run_audit(str(dst), deep=True)
    assert audit["failures"] == 0 and audit["shards"] == 2
    stems = sorted(p.stem for p in (dst / "index").glob("*.parquet"))
    parts = sorted(p.name for p in (dst / "audit" / audit["audit_id"]).glob("*.parquet"))
    assert [p for p in parts if p.startswith("part-shard-")] == [f"part-shard-{s}.parquet" for s in stems]
    assert len([p for p in parts if p.startswith("part-model-")]) == 1  # one model names every record
    assert not (dst / "audit" / f"{audit['audit_id']}.parquet").exists()  # no single gathered file
    rows = read_audit_rows(str(dst), audit["audit_id"])
    assert len(rows) == audit["checks"] and {r["audit_id"] for r in rows} == {audit["audit_id"]}
    for stem in stems:  # each part holds exactly its stem's rows
        part = pq.read_table(dst / "audit" / audit["audit_id"] / f"part-shard-{stem}.parquet").to_pylist()
        assert part and {shard_stem(r["shard"]) for r in part} == {stem}
    assert json.loads((dst / "audit" / f"{audit['audit_id']}.json").read_text()) == audit


def test_a_superseded_shard_is_ok_and_a_shard_without_index_is_extra(small):
    (index,) = (small / "index").glob("*.parquet")
    stem = index.stem
    (named,) = {r["shard"] for r in pq.read_table(index).to_pylist()}
    assert shard_stem(named) == stem
    # a lost race: another file of the same stem that the index does not name
    shutil.copy(small / named, small / "shards" / f"{stem}.0123456789abcdef.tar")
    # a shard of a stem that has no index file at all
    shutil.copy(small / named, small / "shards" / "feedfacefeedface-0000000000000000.tar")
    audit = run_audit(str(small))
    rows = read_audit_rows(str(small), audit["audit_id"])
    (superseded,) = [r for r in rows if r["check"] == "superseded"]
    assert superseded["shard"] == f"shards/{stem}.0123456789abcdef.tar" and superseded["status"] == "ok"
    assert "not referenced" in superseded["detail"] and "cleanup" in superseded["detail"]
    assert audit["failures_by_check"] == {"extra": 1} and audit["superseded"] == 1
    (extra,) = audit["first_failures"]
    assert (extra["shard"], extra["detail"]) == ("shards/feedfacefeedface-0000000000000000.tar",
                                                  "shard has no index (uncommitted)")
    # without its index file, no file of the stem is superseded: each is unindexed
    index.unlink()
    audit = run_audit(str(small))
    extra = sorted(f["shard"] for f in audit["first_failures"] if f["check"] == "extra")
    assert len(extra) == 3 and f"shards/{stem}.0123456789abcdef.tar" in extra and audit["superseded"] == 0


def test_restore_tells_apart_one_sop_instance_from_two_index_files(tmp_path):
    """MR_small and its RLE copy share a SOP Instance UID; archived by two runs they sit in
    two index files, and still both come back, under distinct names."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "a").mkdir(parents=True)
    (src / "a" / "mr.dcm").write_bytes(pydicom_bytes("MR_small.dcm"))
    assert run_migrate(str(src), str(dst), preset="fast", progress=False, phi_in_clear=True)["archived"] == 1
    (src / "b").mkdir()
    (src / "b" / "mr_rle.dcm").write_bytes(pydicom_bytes("MR_small_RLE.dcm"))
    assert run_migrate(str(src), str(dst), preset="fast", progress=False, phi_in_clear=True)["archived"] == 1
    index_files = list((dst / "index").glob("*.parquet"))
    rows = Archive(str(dst)).read_index().to_pylist()
    assert len(index_files) == 2 and len(rows) == 2 and len({r["sop_key"] for r in rows}) == 1
    out = tmp_path / "out"
    summary = run_restore(str(dst), str(out))
    assert (summary["selected"], summary["restored"], summary["failed"]) == (2, 2, [])
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 2 and len({p.name for p in files}) == 2
    assert {p.stem.rsplit("-", 1)[1] for p in files} == {r["source_key"][:8] for r in rows}
    byte_exact = {r["source_sha256"] for r in rows if r["restore_mode"] in ("byte-exact", "verbatim")}
    assert byte_exact and byte_exact <= {sha(p.read_bytes()) for p in files}


def test_restore_reports_an_unreadable_index_file_and_fail_fast_stops_on_it(small, tmp_path):
    (small / "index" / "0000000000000000-0000000000000000.parquet").write_bytes(b"junk!")
    summary = run_restore(str(small), str(tmp_path / "out"))
    assert summary["restored"] == 1 and summary["report"]
    assert [p["file"] for p in summary["unreadable_indexes"]] == ["index/0000000000000000-0000000000000000.parquet"]
    with pytest.raises(Exception, match="0000000000000000-0000000000000000.parquet is unreadable"):
        run_restore(str(small), str(tmp_path / "again"), fail_fast=True)


def test_records_of_a_shard_are_read_in_runs():
    """record_runs: records at most RUN_GAP apart are read together, up to RUN_SPAN in all
    (a larger record alone); every row's record lies in its run."""
    from pipelines.restore import RUN_GAP, RUN_SPAN, record_runs

    layout = [(0, 100), (100, 50), (150 + RUN_GAP, 10), (RUN_GAP * 3, RUN_SPAN + 1), (RUN_GAP * 3 + RUN_SPAN + 1, 5),
              (RUN_SPAN * 4, 20), (RUN_SPAN * 4 + 20, RUN_SPAN - 30), (RUN_SPAN * 5, 1)]
    rows = [{"offset": o, "length": n} for o, n in layout]
    runs = record_runs(rows)
    assert runs == [(0, 160 + RUN_GAP)] * 3 + [(RUN_GAP * 3, RUN_GAP * 3 + RUN_SPAN + 1)] + [
        (RUN_GAP * 3 + RUN_SPAN + 1, RUN_GAP * 3 + RUN_SPAN + 6)] + [(RUN_SPAN * 4, RUN_SPAN * 5 - 10)] * 2 + [
        (RUN_SPAN * 5, RUN_SPAN * 5 + 1)]
    for r, (start, end) in zip(rows, runs):
        assert start <= r["offset"] and r["offset"] + r["length"] <= end
    assert record_runs([]) == []
