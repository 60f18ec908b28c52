"""Real migrate / audit / restore pipelines on small pydicom-data files.

Local paths (nested folders, names without extension, a zip and a tar.gz of studies),
memory://, bad inputs through the CLI, DuckDB over the index, audits of damaged
archives and `inspect --html`. s3:// is in test_pipelines_s3.py, SIGKILL + resume in
test_kill_resume.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import shutil
import subprocess
import sys
import tarfile
import uuid
import zipfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import duckdb
import fsspec
import pyarrow.parquet as pq
import pydicom
import pytest
from conftest import pydicom_bytes, pydicom_file, tar_bytes, zip_bytes
from pydicom.uid import UID

from benchmarks.graph_sizes import synthetic_index_file
from pipelines.archive import TMP_PREFIX, Archive, ArchiveError
from pipelines.audit import read_audit_rows, run_audit, sampled, shard_stem
from pipelines.restore import run_restore
from pipelines.runner import format_summary, run_migrate
from pipelines.sources import SourceRef

REPO = Path(__file__).resolve().parents[1]
EXACT_MODES = ("byte-exact", "verbatim")  # restore gives the original file's bytes


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "jobs.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


# One CT study as a zip, one secondary-capture study (3 instances) as a tar.gz; the rest plain files.
ZIP_STUDY = {"ct693/series1/img1.dcm": "693_UNCR.dcm", "ct693/series1/img2.dcm": "693_J2KI.dcm"}
TGZ_STUDY = {"sc/a.dcm": "SC_rgb_dcmtk_ebcr_dcmd.dcm", "sc/b.dcm": "SC_rgb_dcmtk_ebcyn1_dcmd.dcm",
             "sc/c": "SC_rgb_small_odd.dcm"}
PLAIN = {
    "a/b/c/CT_small.dcm": "CT_small.dcm",
    "mr/MR_small": "MR_small.dcm",  # no extension
    "mr/rle/deeper/MR_small_RLE.dcm": "MR_small_RLE.dcm",  # RLE: pixel-exact; same SOP UID as MR_small
    "nm/JPEG-lossy.dcm": "JPEG-lossy.dcm",  # lossy JPEG: kept verbatim
    "emri/IMG0001": "emri_small.dcm",  # 10 frames
    "emri/IMG0002": "emri_small_jpeg_ls_lossless.dcm",  # JPEG-LS
    "us/US1_UNCR.dcm": "US1_UNCR.dcm",  # 0.9 MB, once
}
MODALITIES = {"CT": 3, "MR": 4, "NM": 1, "US": 1, "OT": 3}
SC_STUDY_UID = "1.2.826.0.1.3680043.8.498.12406831542731051035295345080039845114"


def build_local_source(src: Path) -> dict[str, bytes]:
    """Writes the source tree; returns {relative source identity: bytes} of every DICOM input."""
    inputs = {}
    for rel, name in PLAIN.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(pydicom_bytes(name))
        inputs[rel] = pydicom_bytes(name)
    (src / "studies").mkdir(parents=True)
    (src / "studies" / "ct693.zip").write_bytes(zip_bytes({m: pydicom_bytes(n) for m, n in ZIP_STUDY.items()}))
    (src / "studies" / "sc.tar.gz").write_bytes(tar_bytes({m: pydicom_bytes(n) for m, n in TGZ_STUDY.items()}, "w:gz"))
    inputs.update({f"studies/ct693.zip::{m}": pydicom_bytes(n) for m, n in ZIP_STUDY.items()})
    inputs.update({f"studies/sc.tar.gz::{m}": pydicom_bytes(n) for m, n in TGZ_STUDY.items()})
    (src / "notes.txt").write_bytes(b"scanner export log, not a DICOM file\n" * 20)  # -> one dead letter
    return inputs


def local_ref(src: Path, rel: str) -> SourceRef:
    path, _, member = rel.partition("::")
    return SourceRef(f"file://{src / path}", member or None)


def identity_of(dst: str, storage_options: dict | None = None):
    return Archive(dst, storage_options=storage_options).open_or_create(key=None, key_mode="keyring")


def dead_rows(archive: Archive, run_id: str | None = None) -> list[dict]:
    rows = [r for t in archive.read_tables("deadletter") for r in t.to_pylist()]
    return [r for r in rows if run_id is None or r["run_id"] == run_id]


def assert_each_input_once(archive: Archive, expected_keys: set[str], summary: dict) -> None:
    """Every input is exactly one index row or exactly one dead-letter row of this run."""
    index_keys = archive.read_index().column("source_key").to_pylist()
    dead_keys = [r["source_key"] for r in dead_rows(archive, summary["run_id"])]
    assert len(index_keys) == len(set(index_keys)), "an input was archived twice"
    assert len(dead_keys) == len(set(dead_keys)), "an input was dead-lettered twice"
    assert not set(index_keys) & set(dead_keys)
    assert set(index_keys) | set(dead_keys) == expected_keys
    assert summary["inputs"] == len(expected_keys) == summary["archived"] + summary["deadlettered"] + summary["skipped"]


def files_under(fs, root: str) -> dict[str, bytes]:
    return {p: fs.cat_file(p) for p in fs.find(root)}


# --- local paths -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """One migrated local archive, shared read-only (tests that damage it work on a copy)."""
    root = tmp_path_factory.mktemp("local")
    src, dst = root / "src", root / "dst"
    inputs = build_local_source(src)
    summary = run_migrate(str(src), str(dst), preset="fast", local_model="classical-v1", progress=False, phi_in_clear=True)
    return SimpleNamespace(src=src, dst=dst, inputs=inputs, first=summary)


def test_local_every_input_is_one_index_or_deadletter_row(local):
    archive = Archive(str(local.dst))
    identity = identity_of(str(local.dst))
    keys = {identity.hash("source", local_ref(local.src, rel).identity) for rel in [*local.inputs, "notes.txt"]}
    assert len(keys) == len(local.inputs) + 1 == 13
    assert local.first["archived"] == len(local.inputs) and local.first["deadlettered"] == 1
    assert_each_input_once(archive, keys, local.first)
    (dead,) = dead_rows(archive)
    assert dead["source_key"] == identity.hash("source", local_ref(local.src, "notes.txt").identity)
    assert (dead["stage"], dead["error_type"]) == ("parse", "InvalidDicomError") and "not a DICOM file" in dead["message"]
    # A study stays together: the tar.gz study is one shard, its index holds exactly its rows.
    index = archive.read_index().to_pylist()
    sc = [r for r in index if r["study_key"] == identity.hash("study", SC_STUDY_UID)]
    assert len(sc) == 3 and len({r["shard"] for r in sc}) == 1
    assert {r["source_sha256"] for r in index} == {sha(b) for b in local.inputs.values()}
    assert not [p for p in local.dst.rglob("*") if p.name.startswith(TMP_PREFIX)]


def test_local_deep_audit_passes(local):
    summary = run_audit(str(local.dst), deep=True)
    assert summary["failures"] == 0, summary["first_failures"]
    assert summary["records_checked"] == summary["records_indexed"] == len(local.inputs)
    checks = Counter(r["check"] for r in read_audit_rows(str(local.dst), summary["audit_id"]))
    # pixel digests of every pixel-coded record, file SHA-256 of every byte-exact / verbatim one
    modes = Counter(Archive(str(local.dst)).read_index().column("restore_mode").to_pylist())
    assert checks["record"] == len(local.inputs)
    assert checks["file"] == modes["byte-exact"] + modes["verbatim"]
    assert checks["pixels"] == len(local.inputs)


def test_local_restore_all_is_byte_exact(local, tmp_path):
    out = tmp_path / "restored"
    result = run_restore(str(local.dst), str(out))
    index = Archive(str(local.dst)).read_index().to_pylist()
    restored = [p for p in out.rglob("*") if p.is_file()]
    # MR_small and MR_small_RLE share a SOP UID: both must come back, neither overwrites the other.
    assert result["selected"] == len(restored) == len(index) == len(local.inputs)
    restored_shas = Counter(sha(p.read_bytes()) for p in restored)
    exact = [r for r in index if r["restore_mode"] in EXACT_MODES]
    assert len(exact) == 10
    for r in exact:
        assert restored_shas[r["source_sha256"]] == 1
    originals = {sha(b) for b in local.inputs.values()}
    assert {r["source_sha256"] for r in exact} <= originals
    for p in restored:  # pixel-exact ones (RLE, JPEG-LS) come back as valid DICOM with the same UIDs
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        assert p.stem.split("-")[0] == ds.SOPInstanceUID


def test_two_worker_threads_do_what_one_worker_does(local, tmp_path, monkeypatch):
    """``--workers 2`` on the local runner: two worker threads of one process (the compiled
    coders release the GIL). The same inputs give the same records; audit and restore,
    with two workers too, pass and are byte-exact. The two threads take the inputs from
    one queue (``pipelines.threadqueue``): each input is coded once, and both threads code."""
    import threading

    from pipelines import migrate

    dealt: dict[int, list[str]] = {}
    encode = migrate.EncodeInstance.process

    def counting(self, element):
        assert threading.current_thread().name.startswith("medarchive-queue")  # threadqueue's threads
        dealt.setdefault(threading.get_ident(), []).append(element[0].identity)
        yield from encode(self, element)

    monkeypatch.setattr(migrate.EncodeInstance, "process", counting)
    dst = tmp_path / "dst"
    summary = run_migrate(str(local.src), str(dst), preset="fast", local_model="classical-v1", progress=False,
                          phi_in_clear=True, workers=2)
    monkeypatch.undo()
    assert (summary["archived"], summary["deadlettered"], summary["workers"]) == (local.first["archived"], 1, 2)
    coded = [identity for got in dealt.values() for identity in got]
    assert len(coded) == len(set(coded)) == len(local.inputs) + 1  # the inputs and notes.txt, once each
    assert len(dealt) == 2 and all(dealt.values())

    def records(archive_dir):
        return sorted((r["source_sha256"], r["record_sha256"]) for r in Archive(str(archive_dir)).read_index().to_pylist())

    assert records(dst) == records(local.dst)
    audit = run_audit(str(dst), deep=True, workers=2)
    assert audit["failures"] == 0 and audit["records_checked"] == len(local.inputs)

    def restored(archive_dir, out, workers):
        assert run_restore(str(archive_dir), str(out), workers=workers)["selected"] == len(local.inputs)
        return sorted(sha(p.read_bytes()) for p in out.rglob("*") if p.is_file())

    assert restored(dst, tmp_path / "two", 2) == restored(local.dst, tmp_path / "one", 1)


def test_listing_gives_each_input_its_size(local):
    """Plain files, zip and tar members: the size an input reads as (members uncompressed)."""
    from pipelines.sources import list_sources

    listed = {ref.identity: ref.size for ref in list_sources(str(local.src)) if isinstance(ref, SourceRef)}
    for rel, data in local.inputs.items():
        assert listed[local_ref(local.src, rel).identity] == len(data), rel


@pytest.mark.parametrize("ways", [1, 2, 3])
def test_inputs_are_dealt_out_evenly_by_size(ways):
    """balanced_order (local runs with worker processes): the same items, the largest
    first; the takers' shares (every ``ways``-th item, as the local runner deals them)
    differ by no more than the largest item (for two takers always; here for three too)."""
    from pipelines.migrate import balanced_order

    sizes = [7200, 6200, 6200, 2100, 2100, 900, 900, 900, 500, 300, 40, 40, 10] + [5] * 20
    items = [f"input{i}" for i in range(len(sizes))]
    order = balanced_order(items, sizes, ways)
    assert sorted(order) == sorted(items)
    size_of = dict(zip(items, sizes))
    assert size_of[order[0]] == max(sizes)
    shares = [sum(size_of[x] for x in order[k::ways]) for k in range(ways)]
    assert max(shares) - min(shares) <= max(sizes)
    # Dealt in arrival order instead, one taker of two would get 1.6x the other's bytes.
    if ways == 2:
        assert sum(sizes[0::2]) > 1.6 * sum(sizes[1::2])


def test_local_rerun_adds_nothing_then_only_the_new_file(local, tmp_path):
    # Work on a copy of the archive (same salt, same source URLs): the shared one stays as it was.
    dst = tmp_path / "dst"
    shutil.copytree(local.dst, dst)
    listing = lambda folder: sorted(p.name for p in (dst / folder).iterdir())  # noqa: E731
    shards, indexes = listing("shards"), listing("index")

    second = run_migrate(str(local.src), str(dst), preset="fast", local_model="classical-v1", progress=False, phi_in_clear=True)
    assert (second["archived"], second["skipped"], second["deadlettered"]) == (0, local.first["archived"], 1)
    assert second["shards"] == 0 and (listing("shards"), listing("index")) == (shards, indexes)

    new = local.src / "mr" / "later" / "rtdose"  # shared source: removed again below
    new.parent.mkdir()
    new.write_bytes(pydicom_bytes("rtdose_1frame.dcm"))
    try:
        third = run_migrate(str(local.src), str(dst), preset="fast", local_model="classical-v1", progress=False, phi_in_clear=True)
    finally:
        shutil.rmtree(new.parent)
    assert (third["archived"], third["skipped"], third["deadlettered"]) == (1, local.first["archived"], 1)
    assert len(listing("index")) == len(indexes) + 1 and len(listing("shards")) == len(shards) + 1
    archive = Archive(str(dst))
    index = archive.read_index().to_pylist()
    (added,) = [r for r in index if r["run_id"] == third["run_id"]]
    identity = identity_of(str(dst))
    assert added["source_key"] == identity.hash("source", SourceRef(f"file://{new}").identity)
    assert added["source_sha256"] == sha(pydicom_bytes("rtdose_1frame.dcm")) and added["modality"] == "RTDOSE"
    assert len({r["source_key"] for r in index}) == len(index) == len(local.inputs) + 1
    assert run_audit(str(dst))["failures"] == 0
    # The one bad input failed three times for the same reason: one dead-letter row in all.
    assert second["deadlettered_before"] == third["deadlettered_before"] == 1
    assert sum(t.num_rows for t in archive.read_tables("deadletter")) == 1 == len(archive.read_deadletters())


def test_duckdb_reads_the_index(local):
    index_glob = f"{local.dst}/index/*.parquet"
    rows = duckdb.sql(
        f"select modality, count(*), sum(length) from read_parquet('{index_glob}') group by 1 order by 1"
    ).fetchall()
    assert {m: n for m, n, _ in rows} == MODALITIES
    # lengths are the records' sizes: they add up to the tar members' sizes
    member_bytes = 0
    for shard in (local.dst / "shards").glob("*.tar"):
        with tarfile.open(shard) as tf:
            member_bytes += sum(m.size for m in tf.getmembers())
    assert sum(total for _, _, total in rows) == member_bytes
    (n, unique), = duckdb.sql(f"select count(*), count(distinct source_key) from read_parquet('{index_glob}')").fetchall()
    assert n == unique == len(local.inputs)


# --- audits of damaged archives ----------------------------------------------------------------


@pytest.fixture
def damaged(local, tmp_path):
    dst = tmp_path / "dst"
    shutil.copytree(local.dst, dst)
    return dst


def failures(summary: dict, audit_dir: Path) -> list[dict]:
    rows = read_audit_rows(str(audit_dir), summary["audit_id"])
    return [r for r in rows if r["status"] == "fail"]


def test_audit_detects_a_flipped_byte(damaged):
    row = max(Archive(str(damaged)).read_index().to_pylist(), key=lambda r: r["length"])
    shard = damaged / row["shard"]
    blob = bytearray(shard.read_bytes())
    blob[row["offset"] + row["length"] // 2] ^= 0x01
    shard.write_bytes(bytes(blob))
    summary = run_audit(str(damaged))
    assert [(f["check"], f["sop_key"]) for f in failures(summary, damaged)] == [("record", row["sop_key"])]
    proc = run_cli("audit", damaged)
    assert proc.returncode == 1, proc.stderr
    assert "FAILED" in proc.stdout and "record SHA-256 differs" in proc.stdout and "Traceback" not in proc.stderr


def test_deep_audit_checks_restores_against_the_index_source_hash(damaged):
    """What a restore must give back is the index's source SHA-256: a row that names
    another hash fails the deep audit's file check, though its record reads and decodes.
    Edited, the row fails the fast audit's MAC check; signed (a writer's bug, or whoever
    holds the archive's MAC key), only the deep audit, which restores, can see it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    identity = identity_of(str(damaged))
    index = Archive(str(damaged)).read_index().to_pylist()
    keys = Counter(r["sop_key"] for r in index)  # a SOP instance in two syntaxes: two rows, one key
    victim = next(r for r in index if r["restore_mode"] == "byte-exact" and not r["key_id"] and keys[r["sop_key"]] == 1)
    index_file = damaged / "index" / f"{Path(victim['shard']).name.split('.')[0]}.parquet"
    table = pq.read_table(index_file)
    rows = table.to_pylist()
    at = next(i for i, r in enumerate(rows) if (r["shard"], r["offset"]) == (victim["shard"], victim["offset"]))
    edited = dict(rows[at], source_sha256="0" * 64)
    signed = dict(edited, row_mac=identity.row_mac(edited))

    def write(row: dict) -> None:
        pq.write_table(pa.Table.from_pylist(rows[:at] + [row] + rows[at + 1 :], schema=table.schema), index_file)

    write(edited)
    assert [(f["check"], f["sop_key"]) for f in failures(run_audit(str(damaged)), damaged)] == [
        ("index", victim["sop_key"])]  # the row's old MAC: forged
    write(signed)
    assert not failures(run_audit(str(damaged)), damaged)  # signed: the fast audit has nothing to see
    summary = run_audit(str(damaged), deep=True)
    assert [(f["check"], f["sop_key"], f["detail"]) for f in failures(summary, damaged)] == [
        ("file", victim["sop_key"], "restored file SHA-256 differs")]


def test_audit_detects_a_missing_shard(damaged):
    index = Archive(str(damaged)).read_index().to_pylist()
    shard = Counter(r["shard"] for r in index).most_common(1)[0][0]
    (damaged / shard).unlink()
    summary = run_audit(str(damaged))
    found = failures(summary, damaged)
    assert {f["check"] for f in found} == {"missing"} and summary["failures_by_check"] == {"missing": len(found)}
    assert sorted(f["sop_key"] for f in found) == sorted(r["sop_key"] for r in index if r["shard"] == shard)


def test_audit_detects_extra_members_and_unindexed_shards(damaged):
    shard = sorted((damaged / "shards").glob("*.tar"))[0]
    with tarfile.open(shard, "a") as tf:  # appends after the last member, before the end marker
        info = tarfile.TarInfo("smuggled.mdc")
        info.size = 100
        tf.addfile(info, io.BytesIO(b"x" * 100))
    shutil.copy(shard, damaged / "shards" / "0000000000000000-ffffffffffffffff.tar")
    summary = run_audit(str(damaged))
    found = failures(summary, damaged)
    assert {f["check"] for f in found} == {"extra"}
    details = sorted(f["detail"] for f in found)
    assert details == ["shard has no index (uncommitted)", "tar member smuggled.mdc not in the index"]
    assert summary["records_checked"] == summary["records_indexed"]  # every indexed record still verified


def test_audit_sample_checks_a_deterministic_half(local):
    index = Archive(str(local.dst)).read_index().to_pylist()
    chosen = {r["sop_key"] for r in index if sampled(r["sop_key"], 0.5)}
    seen = []
    for _ in range(2):
        summary = run_audit(str(local.dst), sample=0.5)
        assert summary["failures"] == 0
        rows = read_audit_rows(str(local.dst), summary["audit_id"])
        seen.append(sorted(r["sop_key"] for r in rows if r["check"] == "record"))
    assert seen[0] == seen[1]
    assert set(seen[0]) == chosen
    per_record = sum(1 for r in index if r["sop_key"] in chosen)
    assert summary["records_checked"] == per_record and 0 < per_record < len(index)
    with pytest.raises(ValueError):
        run_audit(str(local.dst), sample=0.0)


# --- memory:// -------------------------------------------------------------------------------


def test_memory_source_and_destination():
    fs = fsspec.filesystem("memory")
    base = f"/medarchive-test-{uuid.uuid4().hex[:8]}"
    inputs = {
        "src/ct/CT_small.dcm": pydicom_bytes("CT_small.dcm"),
        "src/mr/IM1": pydicom_bytes("MR_small.dcm"),
        "src/nm/lossy.dcm": pydicom_bytes("JPEG-lossy.dcm"),
    }
    sc = {m: pydicom_bytes(n) for m, n in TGZ_STUDY.items()}
    try:
        for rel, payload in inputs.items():
            fs.pipe(f"{base}/{rel}", payload)
        fs.pipe(f"{base}/src/zips/sc.zip", zip_bytes(sc))
        src, dst = f"memory://{base}/src", f"memory://{base}/dst"
        # The one pipeline run through the transformer path (small images; the other
        # pipeline tests use the v1.0 local path to stay inside the suite's time budget).
        first = run_migrate(src, dst, preset="fast", progress=False, phi_in_clear=True, workers=1)
        assert (first["archived"], first["deadlettered"]) == (6, 0)
        identity = identity_of(dst)
        refs = [SourceRef(fs.unstrip_protocol(f"{base}/{rel}")) for rel in inputs]
        refs += [SourceRef(fs.unstrip_protocol(f"{base}/src/zips/sc.zip"), m) for m in sc]
        archive = Archive(dst)
        assert_each_input_once(archive, {identity.hash("source", r.identity) for r in refs}, first)

        audit = run_audit(dst, deep=True)
        assert audit["failures"] == 0 and audit["records_checked"] == 6

        run_restore(dst, f"memory://{base}/out")
        restored = files_under(fs, f"{base}/out")
        assert sorted(sha(b) for b in restored.values()) == sorted(sha(b) for b in [*inputs.values(), *sc.values()])

        before = sorted(fs.find(f"{base}/dst/shards")) + sorted(fs.find(f"{base}/dst/index"))
        second = run_migrate(src, dst, preset="fast", local_model="classical-v1", progress=False, phi_in_clear=True, workers=1)
        assert (second["archived"], second["skipped"], second["shards"]) == (0, 6, 0)
        assert sorted(fs.find(f"{base}/dst/shards")) + sorted(fs.find(f"{base}/dst/index")) == before
    finally:
        if fs.exists(base):
            fs.rm(base, recursive=True)


# --- bad inputs through the CLI ------------------------------------------------------------------


def _saved(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_bad_inputs_become_dead_letters(tmp_path, jpegls_dicom):
    src, dst = tmp_path / "Smith^Jane export", tmp_path / "archive"
    ct = pydicom_bytes("CT_small.dcm")
    huge = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    huge.Rows = huge.Columns = 60000
    huge.NumberOfFrames = 50000
    odd_syntax = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    odd_syntax.file_meta.TransferSyntaxUID = UID("1.2.3.4.5.6")
    crc_zip = bytearray(zip_bytes({"Roe^Richard/ct.dcm": ct}, compression=zipfile.ZIP_STORED))
    crc_zip[2000] ^= 0xFF  # inside the stored member: listing works, reading fails its CRC
    files = {
        "good/Doe^John_CT.dcm": ct,
        "random_Doe^John.bin": bytes(range(256)) * 8,
        "Doe^John/truncated.dcm": ct[: len(ct) // 2],
        "huge_dims.dcm": _saved(huge),
        "odd_syntax.dcm": _saved(odd_syntax),
        "broken_Doe^John.zip": zip_bytes({"a.dcm": ct})[:1000],
        "crc.zip": bytes(crc_zip),
        "tiny_claims_4000x4000.dcm": jpegls_dicom(4000, 4000),
        "bomb.dcm.gz": __import__("gzip").compress(bytes(100 << 20), compresslevel=1),
    }
    for rel, payload in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(payload)

    proc = run_cli("migrate", src, dst, "--preset", "fast", "--local-model", "classical-v1", "--no-progress", "--phi-in-clear")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "warning: 8 input(s) could not be archived" in proc.stderr

    archive = Archive(str(dst))
    identity = identity_of(str(dst))
    key = lambda rel, member=None: identity.hash("source", SourceRef(f"file://{src / rel}", member).identity)  # noqa: E731
    expected = {
        key("random_Doe^John.bin"): ("parse", "InvalidDicomError", "not a DICOM file"),
        key("Doe^John/truncated.dcm"): ("parse", "InvalidDicomError", "truncated"),
        key("huge_dims.dcm"): ("encode", "LimitExceededError", "exceeds the limit"),
        key("odd_syntax.dcm"): ("encode", "UnsupportedError", "1.2.3.4.5.6"),
        key("broken_Doe^John.zip"): ("list", "BadZipFile", "not a zip file"),
        key("crc.zip", "Roe^Richard/ct.dcm"): ("read", "BadZipFile", "Bad CRC-32"),
        key("tiny_claims_4000x4000.dcm"): ("encode", "LimitExceededError", "compressed pixel data claim"),
        key("bomb.dcm.gz"): ("read", "InputTooLargeError", "inflates past"),
    }
    dead = {r["source_key"]: r for r in dead_rows(archive)}
    assert set(dead) == set(expected)
    for k, (stage, error_type, words) in expected.items():
        assert (dead[k]["stage"], dead[k]["error_type"]) == (stage, error_type)
        assert words in dead[k]["message"] and dead[k]["message"]
    assert archive.read_index().column("source_key").to_pylist() == [key("good/Doe^John_CT.dcm")]

    strict = run_cli("migrate", src, dst, "--preset", "fast", "--local-model", "classical-v1", "--no-progress", "--phi-in-clear", "--strict")
    assert strict.returncode == 3 and "Traceback" not in strict.stderr  # completed, with dead letters
    assert "warning: 8 input(s)" in strict.stderr and "skipped         1" in strict.stdout

    # No source path or patient name in clear in the archive's tables and summaries. (Shards still
    # hold the DICOM headers inside their records, lzma-compressed, until sealing is on: not checked.)
    secrets = {str(src), src.name, "Smith^Jane", "Doe^John", "Roe^Richard", "truncated.dcm", "random_Doe",
               "huge_dims", "odd_syntax", "broken_Doe", "crc.zip"}
    for name in ("CT_small.dcm", "MR_small.dcm"):
        secrets.add(str(pydicom.dcmread(pydicom_file(name), stop_before_pixels=True).PatientName))
    run_audit(str(dst))  # the audit folder too
    checked = [dst / "archive.json"]
    checked += [p for d in ("index", "deadletter", "runs", "audit") for p in (dst / d).rglob("*") if p.is_file()]
    # archive.json, 1 index, 1 dead-letter file (the --strict re-run adds none: same failures), 2 runs, and the
    # audit: its summary (audit/<id>.json) and its rows, one part file per shard stem / model (audit/<id>/part-*)
    parts = [p for p in (dst / "audit").rglob("part-*.parquet")]
    assert len(list((dst / "audit").glob("*.json"))) == 1 and parts
    assert len(checked) == 1 + 1 + 1 + 2 + 1 + len(parts)
    for path in checked:
        raw = path.read_bytes()
        # Parquet pages are compressed: search the decoded values as well as the raw bytes.
        text = json.dumps(pq.read_table(path).to_pylist(), default=str) if path.suffix == ".parquet" else ""
        for secret in secrets:
            assert secret.encode() not in raw and secret not in text, (secret, path.relative_to(dst))


# --- inspect ---------------------------------------------------------------------------------------


def test_cli_inspect_with_html_report(local, tmp_path):
    report = tmp_path / "report.html"
    proc = run_cli("inspect", local.dst, "--html", report)
    assert proc.returncode == 0, proc.stderr
    assert f"instances        {len(local.inputs)} in" in proc.stdout
    assert "not archived     1 input(s)" in proc.stdout
    for modality, n in MODALITIES.items():
        assert f"  {modality:4} {n:6d} instances" in proc.stdout
    assert "report written" in proc.stdout
    html = report.read_text()
    assert html.count("<svg") >= 3 and "Bits per sample by modality" in html


def test_migrate_without_a_key_is_refused_unless_phi_in_clear_is_said(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "ct.dcm").write_bytes(pydicom_bytes("CT_small.dcm"))
    refused = run_cli("migrate", src, dst, "--preset", "fast", "--no-progress")
    assert refused.returncode == 2 and "--phi-in-clear" in refused.stderr and "Traceback" not in refused.stderr
    assert not dst.exists()
    with pytest.raises(ArchiveError, match="PHI"):
        run_migrate(str(src), str(dst), preset="fast", progress=False)
    allowed = run_cli("migrate", src, dst, "--preset", "fast", "--no-progress", "--phi-in-clear")
    assert allowed.returncode == 0 and "not pseudonyms" in allowed.stderr
    assert "not pseudonyms" in json.loads((dst / "archive.json").read_text())["identity"]["note"]


# --- restore and audit of damaged archives degrade gracefully -----------------------------------


def test_restore_skips_a_damaged_record_names_it_and_restores_the_rest(damaged, tmp_path):
    index = Archive(str(damaged)).read_index().to_pylist()
    row = max(index, key=lambda r: r["length"])
    shard = damaged / row["shard"]
    blob = bytearray(shard.read_bytes())
    blob[row["offset"] + row["length"] // 2] ^= 0x01
    shard.write_bytes(bytes(blob))
    out = tmp_path / "out"
    proc = run_cli("restore", damaged, out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"failed: {row['shard']} {row['sop_key']}: CorruptRecordError" in proc.stderr
    assert f"restored {len(index) - 1} of {len(index)}" in proc.stdout
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len([p for p in files if p.suffix == ".dcm"]) == len(index) - 1
    assert not [p for p in files if ".tmp-" in p.name]  # written under temporary names, then moved
    (report,) = [p for p in files if p.name.startswith(".medarchive-restore-")]
    assert json.loads(report.read_text())["failed"][0]["sop_key"] == row["sop_key"]
    with pytest.raises(Exception, match="CorruptRecordError|corrupt|SHA-256"):
        run_restore(str(damaged), str(tmp_path / "again"), fail_fast=True)


def test_junk_and_copied_index_files_are_named_and_skipped(damaged, tmp_path):
    names = sorted(p.name for p in (damaged / "index").glob("*.parquet"))
    (damaged / "index" / "0000000000000000-0000000000000000.parquet").write_bytes(b"junk!")
    copied = damaged / "index" / "ffffffffffffffff-ffffffffffffffff.parquet"
    shutil.copy(damaged / "index" / names[0], copied)
    archive = Archive(str(damaged))
    with pytest.raises(ArchiveError, match="index/0000000000000000-0000000000000000.parquet is unreadable"):
        archive.read_index()
    table, problems = archive.read_index_reporting()
    assert [p["file"] for p in problems] == ["index/0000000000000000-0000000000000000.parquet",
                                              "index/ffffffffffffffff-ffffffffffffffff.parquet"]
    assert "describes shards/" in problems[1]["reason"] and table.num_rows == len(local_rows := table.to_pylist())
    audit = run_cli("audit", damaged, "--deep")
    assert audit.returncode == 1 and "Traceback" not in audit.stderr
    assert "0000000000000000-0000000000000000.parquet" in audit.stdout and f"records indexed {len(local_rows)}" in audit.stdout
    out = tmp_path / "out"
    restore = run_cli("restore", damaged, out)
    assert restore.returncode == 1 and "0000000000000000-0000000000000000.parquet: unreadable" in restore.stderr
    assert len(list(out.rglob("*.dcm"))) == len(local_rows)  # every record once, the copy not twice


@pytest.mark.parametrize("with_mac", [True, False], ids=["authenticated", "rows-before-macs"])
def test_swapped_index_rows_are_caught(damaged, tmp_path, with_mac):
    """Two index rows with their places (shard, offset, length, record SHA-256) swapped: the
    rows' MACs fail (fast audit and restore); rows written before MACs existed are still caught
    by restore, which checks each original's SOP Instance UID against its row."""
    import pyarrow as pa

    name = sorted((damaged / "index").glob("*.parquet"), key=lambda p: -pq.read_metadata(p).num_rows)[0]
    table = pq.read_table(name)
    rows = table.to_pylist()
    assert len(rows) >= 2 and all(r["row_mac"] for r in rows)
    a, b = rows[0], rows[1]
    for k in ("offset", "length", "record_sha256"):
        a[k], b[k] = b[k], a[k]
    if not with_mac:
        for r in rows:
            r["row_mac"] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), name)
    audit = run_audit(str(damaged))
    found = failures(audit, damaged)
    if with_mac:
        assert sorted(f["sop_key"] for f in found) == sorted([a["sop_key"], b["sop_key"]])
        assert all(f["check"] == "index" and "authentication code" in f["detail"] for f in found)
    else:
        assert not found and audit["rows_without_mac"] == len(rows)
    summary = run_restore(str(damaged), str(tmp_path / "out"))
    assert sorted(f["sop_key"] for f in summary["failed"]) == sorted([a["sop_key"], b["sop_key"]])
    reason = "authentication code" if with_mac else "not the instance its index row names"
    assert all(reason in f["reason"] for f in summary["failed"])
    assert summary["restored"] == summary["selected"] - 2


def test_restore_without_a_key_gives_the_deidentified_files(tmp_path):
    src, dst, ring = tmp_path / "src", tmp_path / "dst", tmp_path / "ring.json"
    src.mkdir()
    (src / "ct.dcm").write_bytes(pydicom_bytes("CT_small.dcm"))
    assert run_cli("keys", "new", ring).returncode == 0
    assert run_cli("migrate", src, dst, "--preset", "fast", "--no-progress", "--key-file", ring).returncode == 0
    proc = run_cli("restore", dst, tmp_path / "out")
    assert proc.returncode == 0 and "de-identified files (no --key-file)" in proc.stdout, proc.stderr
    (restored,) = list((tmp_path / "out").rglob("*.dcm"))
    ds = pydicom.dcmread(restored)
    assert ds.PatientIdentityRemoved == "YES" and str(ds.PatientName) != "CompressedSamples^CT1"


# --- cleanup never deletes what a live run or a committed shard holds ------------------------------


def test_a_lost_index_file_never_costs_its_shard(damaged, tmp_path):
    """Deleting one index file used to make the next migrate (even of another SRC) delete the
    shard with its good records. Now the shard is kept, named by audit, and re-running its
    inputs commits it again."""
    name = sorted((damaged / "index").glob("*.parquet"))[0]
    [shard] = (damaged / "shards").glob(name.stem + ".*tar")  # shards/<stem>.<run>.<sha16>.tar
    before = shard.read_bytes()
    name.unlink()
    other = tmp_path / "other"
    other.mkdir()
    (other / "mr.dcm").write_bytes(pydicom_bytes("MR_small.dcm"))
    summary = run_migrate(str(other), str(damaged), preset="fast", local_model="classical-v1", progress=False,
                          phi_in_clear=True)
    assert summary["cleaned"]["unindexed_shards"] == 1 and shard.read_bytes() == before
    assert "without an index: kept" in format_summary(summary)
    audit = run_audit(str(damaged))
    assert sorted(f["shard"] for f in failures(audit, damaged) if f["check"] != "record") == [
        f"index/{name.name}", f"shards/{shard.name}"]  # the run's manifest misses the index; the shard has none


def test_cleanup_keeps_a_live_runs_temporary_files(damaged):
    archive = Archive(str(damaged), owner="20261203T000000Z-live0001")
    dead = Archive(str(damaged), owner="20261203T000000Z-dead0002")
    archive.hold_lease("20261203T000000Z-live0001")  # this process: alive
    dead.hold_lease("20261203T000000Z-dead0002")
    lease = damaged / "runs" / "20261203T000000Z-dead0002.live"
    lease.write_text(json.dumps({**json.loads(lease.read_text()), "pid": 2**22 + 12345}))  # no such process
    mine = damaged / "shards" / f"{archive.tmp_name()}-in-flight.tar"
    theirs = damaged / "shards" / f"{dead.tmp_name()}-abandoned.tar"
    old_style = damaged / "index" / f"{TMP_PREFIX}0123456789ab-x.parquet"
    in_audit = damaged / "audit" / "20261203T000000Z-audit001" / f"{dead.tmp_name()}-part-shard-x.parquet"
    in_audit.parent.mkdir(parents=True, exist_ok=True)
    for p in (mine, theirs, old_style, in_audit):
        p.write_bytes(b"partial")
    removed = Archive(str(damaged)).clean_uncommitted()
    assert mine.exists() and not theirs.exists() and not old_style.exists() and not in_audit.exists()
    assert removed["temporary"] == 3
    archive.release_lease("20261203T000000Z-live0001")
    assert Archive(str(damaged)).clean_uncommitted()["temporary"] == 1 and not mine.exists()


# --- object storage that does not answer ------------------------------------------------------------


@pytest.fixture
def stalled_endpoint():
    """A loopback TCP endpoint that accepts connections and never answers (a paused store)."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    held, stop = [], threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=2)
    for conn in held:
        conn.close()
    server.close()


def test_a_stalled_store_ends_the_run_with_one_line_in_bounded_time(stalled_endpoint, tmp_path):
    options = json.dumps({"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": stalled_endpoint}})
    local_src = tmp_path / "src"
    local_src.mkdir()
    (local_src / "ct.dcm").write_bytes(pydicom_bytes("CT_small.dcm"))
    for src, dst in (("s3://export/studies", tmp_path / "dst"), (local_src, "s3://archive/dst")):
        started = time.perf_counter()
        proc = run_cli("migrate", src, dst, "--preset", "fast", "--no-progress", "--phi-in-clear",
                       "--storage-options", options, "--io-timeout", "1", "--io-retries", "2")
        took = time.perf_counter() - started
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]  # a failed run
        errors = [line for line in proc.stderr.splitlines() if not line.startswith("warning: --phi-in-clear")]
        assert len(errors) == 1 and "did not answer" in errors[0]
        assert stalled_endpoint in proc.stderr and took < 60, (took, proc.stderr)


def test_json_summaries_and_the_run_id_first(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ct.dcm").write_bytes(pydicom_bytes("CT_small.dcm"))
    (src / "junk.dcm").write_bytes(b"DICM" * 10)
    dst = tmp_path / "dst"
    proc = run_cli("migrate", src, dst, "--preset", "fast", "--no-progress", "--phi-in-clear", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)  # stdout is the summary alone
    announced = [line for line in proc.stderr.splitlines() if line.startswith("medarchive migrate: run ")]
    assert announced == [f"medarchive migrate: run {summary['run_id']} started ({src} -> {dst})"]
    assert (summary["archived"], summary["deadlettered"]) == (1, 1)
    audit = run_cli("audit", dst, "--json")
    assert audit.returncode == 0 and json.loads(audit.stdout)["failures"] == 0
    restore = run_cli("restore", dst, tmp_path / "out", "--json")
    assert restore.returncode == 0 and json.loads(restore.stdout)["restored"] == 1
    strict = run_cli("migrate", src, dst, "--preset", "fast", "--no-progress", "--phi-in-clear", "--strict", "--json")
    assert strict.returncode == 3 and json.loads(strict.stdout)["skipped"] == 1


def test_missing_or_empty_src_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for src, words in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "empty", "holds no files")):
        proc = run_cli("migrate", src, tmp_path / "dst", "--preset", "fast", "--no-progress", "--phi-in-clear")
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "dst").exists()


def test_rewrap_after_rotation_keeps_every_index_row_authentic(tmp_path):
    src, dst, ring = tmp_path / "src", tmp_path / "dst", tmp_path / "ring.json"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        (src / name).write_bytes(pydicom_bytes(name))
    assert run_cli("keys", "new", ring).returncode == 0
    assert run_cli("migrate", src, dst, "--preset", "fast", "--no-progress", "--key-file", ring).returncode == 0
    assert run_cli("keys", "rotate", ring).returncode == 0
    proc = run_cli("rewrap", dst, "--key-file", ring, "--workers", "2")  # the shards from a queue over two threads
    assert proc.returncode == 0, proc.stderr
    assert not [p for p in dst.rglob("*") if p.name.startswith(TMP_PREFIX) or p.suffix == ".live"]
    audit = run_audit(str(dst), deep=True, key_file=str(ring))
    assert audit["failures"] == 0 and audit["rows_authenticated"] == audit["records_indexed"] == 2
    assert run_audit(str(dst))["rows_authenticated"] == 0  # without the key the rows cannot be checked
    out = tmp_path / "out"
    assert run_restore(str(dst), str(out), key_file=str(ring))["restored"] == 2
    assert {sha(p.read_bytes()) for p in out.rglob("*.dcm")} == {sha(pydicom_bytes(n)) for n in ("CT_small.dcm", "MR_small.dcm")}


def test_audit_finds_a_lost_index_file_from_the_runs_manifests(damaged):
    name = sorted((damaged / "index").glob("*.parquet"))[0]
    name.unlink()
    for shard in (damaged / "shards").glob("*.tar"):  # shard gone too (any name of its stem): only the manifest remembers
        if shard_stem(shard.name) == name.stem:
            shard.unlink()
    found = failures(run_audit(str(damaged)), damaged)
    assert [(f["shard"], f["detail"]) for f in found] == [(f"index/{name.name}", "committed by a run (runs/*.json) but missing")]
    # A run summary whose list was edited is not trusted, and says so.
    run = sorted((damaged / "runs").glob("*.json"))[0]
    summary = json.loads(run.read_text())
    summary["index_files"] = summary["index_files"][1:]
    run.write_text(json.dumps(summary))
    details = [f["detail"] for f in failures(run_audit(str(damaged)), damaged)]
    assert "its list of index files fails its authentication code" in details


def test_a_lost_archive_json_is_rebuilt_with_the_key_never_silently(tmp_path):
    src, dst, ring, other = tmp_path / "src", tmp_path / "dst", tmp_path / "ring.json", tmp_path / "other.json"
    src.mkdir()
    (src / "ct.dcm").write_bytes(pydicom_bytes("CT_small.dcm"))
    for r in (ring, other):
        assert run_cli("keys", "new", r).returncode == 0
    assert run_cli("migrate", src, dst, "--preset", "fast", "--no-progress", "--key-file", ring).returncode == 0
    manifest = json.loads((dst / "archive.json").read_text())
    (dst / "archive.json").unlink()
    again = run_cli("migrate", src, dst, "--preset", "fast", "--no-progress", "--key-file", ring)
    assert again.returncode == 2 and "medarchive repair" in again.stderr and not (dst / "archive.json").exists()
    restored = run_cli("restore", dst, tmp_path / "out", "--key-file", ring)  # every record, without archive.json
    assert restored.returncode == 0 and [sha(p.read_bytes()) for p in (tmp_path / "out").rglob("*.dcm")] == [
        sha(pydicom_bytes("CT_small.dcm"))]
    wrong = run_cli("repair", dst, "--key-file", other)
    assert wrong.returncode == 2 and "does not belong" in wrong.stderr and not (dst / "archive.json").exists()
    keyless = run_cli("repair", dst)
    assert keyless.returncode == 2 and "salt" in keyless.stderr
    fixed = run_cli("repair", dst, "--key-file", ring)
    assert fixed.returncode == 0 and "MAC(s) verify" in fixed.stdout
    assert json.loads((dst / "archive.json").read_text())["identity"] == manifest["identity"]
    assert run_audit(str(dst), deep=True, key_file=str(ring))["failures"] == 0


def test_progress_lines_reach_a_log_that_is_not_a_terminal(tmp_path):
    from pipelines.progress import ProgressMonitor, ProgressReporter

    log = io.StringIO()  # what a scheduler captures: no TTY
    worker = ProgressReporter(str(tmp_path))
    with ProgressMonitor(str(tmp_path), total=None, stream=log, interval=0.01, log_interval=0.05):
        for _ in range(4):
            worker.tick(1_000_000, 250_000)
            time.sleep(0.12)
    lines = log.getvalue().splitlines()
    assert len(lines) >= 3 and all(line.startswith("progress: ") for line in lines)
    assert "4 instances, 4.0 MB in 4.00x" in lines[-1] and "MB/s" in lines[-1]
    quiet = io.StringIO()
    with ProgressMonitor(str(tmp_path / "none"), total=None, stream=quiet, interval=0.01, log_interval=0.02):
        time.sleep(0.1)  # nothing moved: one final line only
    assert len(quiet.getvalue().splitlines()) == 1


def test_keys_come_from_env_or_url_and_no_key_material_enters_the_job_graph(tmp_path, monkeypatch, job_graphs):
    from medcodec.crypto import EnvKeySource, FileKeySource, Keyring, KeyringError, UrlKeySource, key_source

    assert key_source("env:RING") == EnvKeySource("RING") and key_source("s3://b/ring.json") == UrlKeySource("s3://b/ring.json")
    assert key_source("file:///k/ring.json") == key_source("/k/ring.json") == FileKeySource("/k/ring.json")
    ring_path = tmp_path / "ring.json"
    ring = Keyring.create(ring_path)
    text = ring_path.read_text()
    secrets = [v for k, v in json.loads(text).items() if k == "identity_secret"]
    secrets += [k["material"] for k in json.loads(text)["keys"]]
    monkeypatch.setenv("MEDARCHIVE_TEST_RING", text)
    with fsspec.open("memory://secrets/ring.json", "w") as fh:
        fh.write(text)
    for spec in ("env:MEDARCHIVE_TEST_RING", "memory://secrets/ring.json"):
        assert Keyring.from_source(key_source(spec)).uid_key() == ring.uid_key()
    monkeypatch.setenv("MEDARCHIVE_EMPTY", "")
    for spec, words in (("env:MEDARCHIVE_EMPTY", "not set or empty"), ("memory://secrets/none.json", "cannot be read")):
        with pytest.raises(KeyringError, match=words):
            Keyring.from_source(key_source(spec))

    src = tmp_path / "src"
    src.mkdir()
    (src / "ct.dcm").write_bytes(pydicom_bytes("CT_small.dcm"))
    summary = run_migrate(str(src), str(tmp_path / "dst"), preset="fast", key_file="env:MEDARCHIVE_TEST_RING",
                          progress=False)
    assert summary["archived"] == 1 and job_graphs
    for graph in job_graphs:  # the pickled DoFns opened (conftest.graph_plaintext)
        assert b"env:MEDARCHIVE_TEST_RING" in graph  # the reference travels, so the search does see configs
        for secret in secrets:
            import base64

            assert secret.encode() not in graph and base64.b64decode(secret) not in graph
    assert run_restore(str(tmp_path / "dst"), str(tmp_path / "out"), key_file="env:MEDARCHIVE_TEST_RING")["restored"] == 1


def test_the_job_graph_does_not_grow_with_the_index(tmp_path, monkeypatch):
    import apache_beam as beam

    graphs = []
    run = beam.Pipeline.run

    def recording_run(self, *args, **kwargs):
        graphs.append(len(self.to_runner_api().SerializeToString()))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(beam.Pipeline, "run", recording_run)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "ct.dcm").write_bytes(pydicom_bytes("CT_small.dcm"))
    assert run_migrate(str(src), str(dst), preset="fast", progress=False, phi_in_clear=True)["archived"] == 1
    for i in range(10):  # 100,000 more rows in 10 index files (the issue measured 20.6 MB of graph at 100k)
        synthetic_index_file(dst, f"synthetic-{i:02d}", 10_000, i)
    (src / "mr.dcm").write_bytes(pydicom_bytes("MR_small.dcm"))
    again = run_migrate(str(src), str(dst), preset="fast", progress=False, phi_in_clear=True)
    assert (again["archived"], again["skipped"]) == (1, 1)  # the CT was met with its index row by a worker
    empty, full = graphs  # measured: 92.4 kB with an empty index, 101.5 kB with 100,001 rows (benchmarks.graph_sizes)
    assert full < (1 << 20) and full < 1.5 * empty, graphs


def test_a_local_run_reads_listed_files_first_bytes_in_more_threads_than_it_codes_with(tmp_path, monkeypatch):
    """Reading each listed file's first bytes (ExpandFile) waits on the store, not the
    CPU: a two-worker local run does it in LISTING_THREADS_PER_WORKER threads a worker
    (six files, each read held 0.3 s: all six at once, where two threads held two)."""
    import threading

    from pipelines import migrate

    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"{i}.dcm").write_bytes(b"not a DICOM file %d" % i)
    lock, state = threading.Lock(), {"now": 0, "most": 0}
    expand = migrate.expand_file

    def held(url, **kwargs):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.3)
        with lock:
            state["now"] -= 1
        yield from expand(url, **kwargs)

    monkeypatch.setattr(migrate, "expand_file", held)
    summary = run_migrate(str(src), str(tmp_path / "dst"), preset="fast", workers=2, progress=False, phi_in_clear=True)
    assert (summary["inputs"], summary["deadlettered"]) == (6, 6)
    assert migrate.LISTING_THREADS_PER_WORKER * 2 >= 6 and state["most"] == 6
