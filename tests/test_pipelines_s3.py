"""migrate / audit / restore over s3:// against a real S3 protocol endpoint on loopback.

moto's ThreadedMotoServer on 127.0.0.1 (an ephemeral port), reached by s3fs the way
s3fs's own tests do: dummy credentials and the region from the environment, the
endpoint in client_kwargs. The first migrate runs with two worker processes, so the
storage options travel to every DoFn and the launching process must see what the
workers wrote (its s3fs listings cache is stale otherwise).
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from pipelines.archive import TMP_PREFIX, Archive
from pipelines.audit import run_audit
from pipelines.restore import run_restore
from pipelines.runner import run_migrate
from pipelines.sources import SourceRef

from conftest import pydicom_bytes, tar_bytes, zip_bytes

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

PLAIN = {"in/ct/CT_small.dcm": "CT_small.dcm", "in/mr/IM0001": "MR_small.dcm", "in/nm/lossy": "JPEG-lossy.dcm"}
ZIPPED = {  # two studies in one zip
    "sc/1.dcm": "SC_rgb_dcmtk_ebcr_dcmd.dcm",
    "sc/2.dcm": "SC_rgb_small_odd.dcm",
    "emri/1.dcm": "emri_small.dcm",
}
TGZ = {"ot/face.dcm": "OT-PAL-8-face.dcm"}  # a study in a tar.gz


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 and the storage options that reach it."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(var, raising=False)
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            _, port = server.get_host_and_port()
            s3fs.S3FileSystem.clear_instance_cache()
            yield {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}, "anon": False}
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()


@pytest.mark.slow
def test_s3_migrate_audit_restore(s3, tmp_path):
    fs = s3fs.S3FileSystem(**s3)
    fs.mkdir("src-bucket")
    fs.mkdir("dst-bucket")
    for key, name in PLAIN.items():
        fs.pipe(f"src-bucket/{key}", pydicom_bytes(name))
    fs.pipe("src-bucket/in/zips/studies.zip", zip_bytes({m: pydicom_bytes(n) for m, n in ZIPPED.items()}))
    fs.pipe("src-bucket/in/tgz/export.tar.gz", tar_bytes({m: pydicom_bytes(n) for m, n in TGZ.items()}, "w:gz"))
    src, dst = "s3://src-bucket/in", "s3://dst-bucket/archives/one"

    first = run_migrate(src, dst, preset="fast", local_model="classical-v1", progress=False, phi_in_clear=True, storage_options=s3, workers=2,
                        beam_args=["--direct_running_mode=multi_processing"])
    assert (first["archived"], first["deadlettered"], first["skipped"]) == (7, 0, 0)
    assert first["shards"] == 6  # CT, MR, NM, SC (2 instances), emri and OT studies

    archive = Archive(dst, storage_options=s3)
    identity = archive.open_or_create(key=None, key_mode="keyring")
    refs = [SourceRef(f"s3://src-bucket/{key}") for key in PLAIN]
    refs += [SourceRef("s3://src-bucket/in/zips/studies.zip", member) for member in ZIPPED]
    refs += [SourceRef("s3://src-bucket/in/tgz/export.tar.gz", member) for member in TGZ]
    index = archive.read_index().to_pylist()
    keys = [r["source_key"] for r in index]
    assert sorted(keys) == sorted(identity.hash("source", r.identity) for r in refs)
    assert archive.read_tables("deadletter") == []
    assert not [p for p in fs.find("dst-bucket") if p.rsplit("/", 1)[-1].startswith(TMP_PREFIX)]

    audit = run_audit(dst, deep=True, storage_options=s3)
    assert audit["failures"] == 0, audit["first_failures"]
    assert audit["records_checked"] == 7

    out = tmp_path / "restored"
    restored = run_restore(dst, str(out), storage_options=s3)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert restored["selected"] == len(files) == 7
    assert sorted(sha(p.read_bytes()) for p in files) == sorted(
        sha(pydicom_bytes(n)) for n in [*PLAIN.values(), *ZIPPED.values(), *TGZ.values()]
    )

    shards_before = sorted(fs.find("dst-bucket/archives/one/shards"))
    second = run_migrate(src, dst, preset="fast", local_model="classical-v1", progress=False, phi_in_clear=True, storage_options=s3)
    assert (second["archived"], second["skipped"], second["shards"]) == (0, 7, 0)
    fs.invalidate_cache()
    assert sorted(fs.find("dst-bucket/archives/one/shards")) == shards_before
    assert len(fs.find("dst-bucket/archives/one/index")) == 6
    assert len(fs.find("dst-bucket/archives/one/runs")) == 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_portable_runner_with_an_external_worker_pool_over_s3(s3, tmp_path):
    """A real multi-process runner: Beam's PortableRunner with the job service embedded and
    an external worker pool (separate processes, their own working directory), SRC and DST
    on S3; migrate, deep audit and restore through the CLI, restored bytes compared."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time

    fs = s3fs.S3FileSystem(**s3)
    fs.mkdir("pool-src")
    fs.mkdir("pool-dst")
    originals = {name: pydicom_bytes(name) for name in ("CT_small.dcm", "MR_small.dcm")}
    for name, blob in originals.items():
        fs.pipe(f"pool-src/in/{name}", blob)
    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    pool = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                             f"--service_port={port}"], cwd=pool_dir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and pool.poll() is None, "worker pool did not start"
                time.sleep(0.2)
        beam_args = ["--runner", "PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
                     f"--environment_config=localhost:{port}"]
        options = ["--storage-options", json.dumps(s3)]
        dst = "s3://pool-dst/archive"

        def cli(*args):
            proc = subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True,
                                  cwd=Path(__file__).resolve().parents[1], env=env, timeout=600)
            assert proc.returncode == 0, proc.stderr[-3000:]
            return proc

        env["MEDARCHIVE_PROGRESS_SECONDS"] = "0.5"  # progress from the runner's metrics, twice a second
        migrated = cli("migrate", "s3://pool-src/in", dst, "--preset", "fast", "--phi-in-clear", "--json", *options,
                       *beam_args)
        summary = json.loads(migrated.stdout)
        assert (summary["archived"], summary["deadlettered"], summary["runner"]) == (2, 0, "PortableRunner")
        progress = [line for line in migrated.stderr.splitlines() if line.startswith("progress:")]
        # Beam's embedded job service reports no user counters (Dataflow does, live): said once, at the end
        assert progress == ["progress: this runner reported no metrics while the job ran; the summary follows"], (
            migrated.stderr[-2000:])
        print("\n".join(progress))
        audit = json.loads(cli("audit", dst, "--deep", "--json", *options, *beam_args).stdout)
        assert audit["failures"] == 0 and audit["records_checked"] == 2
        out = tmp_path / "out"
        cli("restore", dst, str(out), *options, *beam_args)
        restored = {sha(p.read_bytes()) for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}
        assert restored == {sha(b) for b in originals.values()}
    finally:
        pool.terminate()
        pool.wait(timeout=30)


@pytest.fixture
def fetched(monkeypatch):
    """The byte ranges s3fs's file objects and ``cat_file`` fetch (lengths), and the S3
    requests made (``fetched.requests``: operation name -> count), from the test's start."""

    class Fetched(list):
        requests: Counter

    out = Fetched()
    out.requests = Counter()
    fetch, cat, call = s3fs.core.S3File._fetch_range, s3fs.S3FileSystem._cat_file, s3fs.S3FileSystem._call_s3
    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range",
                        lambda self, start, end: out.append(end - start) or fetch(self, start, end))

    async def cat_file(self, path, version_id=None, start=None, end=None, **kwargs):
        data = await cat(self, path, version_id=version_id, start=start, end=end, **kwargs)
        out.append(len(data))
        return data

    async def call_s3(self, method, *args, **kwargs):
        out.requests[method] += 1
        return await call(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_cat_file", cat_file)
    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", call_s3)
    return out


def test_listing_and_reading_fetch_what_they_need(s3, fetched):
    """s3fs reads ahead 50 MiB: listing's sniff of a file's first bytes fetched the whole
    object, and reading one zip member the whole zip. Listing now fetches the head it
    reads; a zip member read fetches the zip's directory and that member, with at most
    64 KiB around it."""
    from pipelines.sources import ARCHIVE_BLOCK, HEAD_BYTES, expand_file, read_source

    fs = s3fs.S3FileSystem(**s3)
    fs.mkdir("fetch-bucket")
    ct = pydicom_bytes("CT_small.dcm")
    filler = bytes(range(256)) * (6 << 12)  # 6 MiB
    fs.pipe("fetch-bucket/ct.dcm", ct + b"\0" * len(filler))  # a DICOM file padded to 6 MiB
    fs.pipe("fetch-bucket/study.zip", zip_bytes({"big.bin": filler, "ct.dcm": ct}, compression=zipfile.ZIP_STORED))

    fetched.clear()
    fetched.requests.clear()

    [ref] = expand_file("s3://fetch-bucket/ct.dcm", storage_options=s3)
    assert sum(fetched) <= HEAD_BYTES and ref.size == len(ct) + len(filler)

    fetched.clear()
    refs = list(expand_file("s3://fetch-bucket/study.zip", storage_options=s3))
    assert [r.member for r in refs] == ["big.bin", "ct.dcm"]
    assert sum(fetched) <= HEAD_BYTES + 2 * ARCHIVE_BLOCK  # the sniff and the central directory
    fetched.clear()
    assert read_source(refs[1], storage_options=s3) == ct
    assert sum(fetched) <= len(ct) + (96 << 10)
    fetched.clear()
    assert read_source(refs[0], storage_options=s3) == filler
    assert sum(fetched) <= len(filler) + (96 << 10)


def test_a_tar_member_is_read_where_listing_found_it(s3, fetched):
    """Found by reading every header before it, a tar member cost a read-ahead block per
    header: the whole tar for each member. Listing records where each member's headers
    begin; reading fetches that member's headers and data. A member whose offset names
    another member (the tar changed since listing) is still found by name."""
    from pipelines.sources import expand_file, read_source

    fs = s3fs.S3FileSystem(**s3)
    fs.mkdir("tar-bucket")
    ct = pydicom_bytes("CT_small.dcm")
    fillers = {f"series/{i}.bin": bytes([i]) * (64 << 10) for i in range(40)}
    tar = tar_bytes({**fillers, "series/a-name-longer-than-one-hundred-bytes-" + "x" * 80 + ".dcm": ct})
    fs.pipe("tar-bucket/study.tar", tar)

    fetched.clear()
    fetched.requests.clear()
    refs = list(expand_file("s3://tar-bucket/study.tar", storage_options=s3))
    assert [r.member for r in refs][:-1] == list(fillers) and all(r.offset is not None for r in refs)
    fetched.clear()
    assert read_source(refs[-1], storage_options=s3) == ct  # a long (GNU / pax) name: extra header blocks
    assert sum(fetched) <= len(ct) + (4 << 10) and len(fetched) <= 8  # not one request per header before it
    fetched.clear()
    assert read_source(refs[3], storage_options=s3) == fillers["series/3.bin"]
    assert sum(fetched) <= (64 << 10) + (4 << 10)
    moved = SourceRef(refs[-1].url, refs[-1].member, offset=refs[2].offset)
    assert read_source(moved, storage_options=s3) == ct
    assert read_source(SourceRef(refs[-1].url, refs[-1].member, offset=len(tar) + 7), storage_options=s3) == ct


def test_tar_gz_members_fetch_the_archive_about_once(s3, fetched):
    """Read by name through tarfile's gzip reader, every tar.gz member fetched and
    inflated the archive up to its end: N members, N archives. Read in listing order
    they now fetch it about once, and in reverse order (each read going back) a block
    or two a member."""
    import gzip

    from pipelines.sources import ARCHIVE_BLOCK, expand_file, read_source

    fs = s3fs.S3FileSystem(**s3)
    fs.mkdir("tgz-bucket")
    members = {f"series/{i:02d}.dcm": hashlib.sha512(bytes([i])).digest() * (1 << 10) for i in range(40)}
    blob = gzip.compress(tar_bytes(members), compresslevel=0)  # stored: 2.6 MB, as big as the tar
    fs.pipe("tgz-bucket/export.tar.gz", blob)
    refs = list(expand_file("s3://tgz-bucket/export.tar.gz", storage_options=s3))
    fetched.clear()
    fetched.requests.clear()
    assert [read_source(r, storage_options=s3) for r in refs] == list(members.values())
    assert sum(fetched) <= len(blob) + ARCHIVE_BLOCK + 40 * 512  # not 40 archives (~50 MB)
    fetched.clear()
    assert [read_source(r, storage_options=s3) for r in refs[::-1]] == list(members.values())[::-1]
    assert sum(fetched) <= 40 * (2 * ARCHIVE_BLOCK + 512)


def test_a_zip_directory_is_read_once_for_its_members(s3, fetched):
    """Reading each member read the zip's directory again (twice): for N members, N
    directories. The directory is read once while the zip is unchanged; a zip replaced
    under the same name (another ETag) is read anew."""
    from pipelines.sources import HEAD_BYTES, expand_file, read_source

    fs = s3fs.S3FileSystem(**s3)
    fs.mkdir("zip-bucket")
    members = {f"export/{'study-' * 20}{i:03d}.dcm": bytes([i]) * 4000 for i in range(60)}

    blob = zip_bytes(members, compression=zipfile.ZIP_STORED)
    fs.pipe("zip-bucket/export.zip", blob)
    refs = list(expand_file("s3://zip-bucket/export.zip", storage_options=s3))
    fetched.clear()
    fetched.requests.clear()
    assert [read_source(r, storage_options=s3) for r in refs] == list(members.values())
    directory = len(blob) - sum(30 + len(name) + len(data) for name, data in members.items())
    assert directory > 8000  # each member's name, twice, and the end record
    assert sum(fetched) < len(blob) + 2 * directory + 60 * HEAD_BYTES  # not 60 directories

    changed = {name: data[::-1] + b"!" for name, data in members.items()}
    fs.pipe("zip-bucket/export.zip", zip_bytes(changed, compression=zipfile.ZIP_STORED))
    fs.invalidate_cache()
    assert read_source(refs[5], storage_options=s3) == changed[refs[5].member]


def test_a_member_read_is_one_request_or_two(s3, fetched):
    """Each request is a round trip a worker thread waits out. A plain file was read with
    three (its size, the size again on opening, the data), a zip or tar member with six
    (the archive's first bytes to know its kind, and the member's headers and data read
    as zipfile and tarfile ask for them), then with two (a plain file's size and ETag, an
    archive's version for its kept directory or inflater, before the bytes). Now one, as
    listing gave the version (``SourceRef.version``): a plain file's data; a zip
    member's headers and data in one range; a tar member's one range; a tar.gz member's
    compressed bytes as its inflater goes on. A ref made without its kind reads the
    archive's first bytes as before, one without its version asks for it; a zip whose
    member header is longer than the directory's is read as zipfile asks."""
    from pipelines.sources import expand_file, list_sources, read_source

    fs = s3fs.S3FileSystem(**s3)
    fs.mkdir("req-bucket")
    members = {f"export/{i:02d}.dcm": hashlib.sha512(bytes([i])).digest() * (40 + i) for i in range(12)}
    fs.pipe("req-bucket/export.zip", zip_bytes(members))
    fs.pipe("req-bucket/export.tar", tar_bytes(members))
    fs.pipe("req-bucket/export.tar.gz", tar_bytes(members, "w:gz"))
    fs.pipe("req-bucket/plain.dcm", members["export/00.dcm"])

    def requests_per_read(refs) -> dict:
        fetched.requests.clear()
        assert [read_source(r, storage_options=s3) for r in refs] == [members.get(r.member or "export/00.dcm")
                                                                        for r in refs]
        return {k: v / len(refs) for k, v in fetched.requests.items()}

    for name, most in [("plain.dcm", {"get_object": 1}),
                       ("export.zip", {"get_object": 1 + 2 / 12}),  # + the directory, once
                       ("export.tar", {"get_object": 1}),
                       ("export.tar.gz", {"get_object": 1 / 12})]:
        refs = list(expand_file(f"s3://req-bucket/{name}", storage_options=s3))
        requests_per_read(refs[:1])  # a kept directory or inflater
        got = requests_per_read(refs)
        assert got.keys() <= most.keys() and all(got[k] <= most[k] for k in got), (name, got)
        # made without the version listing saw: the store is asked for it first, as before
        # (a tar member's one ranged request needs none)
        unversioned = [SourceRef(r.url, r.member, r.size, r.offset, r.kind) for r in refs]
        assert requests_per_read(unversioned) == (got if name == "export.tar" else {**got, "head_object": 1}), name
        if name != "plain.dcm":
            unkinded = [SourceRef(r.url, r.member, r.size, r.offset) for r in refs]
            assert requests_per_read(unkinded)["get_object"] >= got["get_object"] + 1  # the first bytes, read again

    # a local header with a longer extra field than the directory's (zipalign pads it so)
    blob = bytearray(zip_bytes(members, compression=zipfile.ZIP_STORED))
    first = blob.index(b"PK\x03\x04")
    name_len, pad = int.from_bytes(blob[first + 26 : first + 28], "little"), 1000
    blob[first + 28 : first + 30] = pad.to_bytes(2, "little")
    blob[first + 30 + name_len : first + 30 + name_len] = bytes(pad)
    # every later local header and the directory move by the padding
    directory = blob.rindex(b"PK\x05\x06")
    cd_offset = int.from_bytes(blob[directory + 16 : directory + 20], "little")
    blob[directory + 16 : directory + 20] = (cd_offset + pad).to_bytes(4, "little")
    at = cd_offset + pad
    while blob[at : at + 4] == b"PK\x01\x02":
        offset = int.from_bytes(blob[at + 42 : at + 46], "little")
        if offset > first:
            blob[at + 42 : at + 46] = (offset + pad).to_bytes(4, "little")
        at += 46 + sum(int.from_bytes(blob[at + k : at + k + 2], "little") for k in (28, 30, 32))
    assert zipfile.ZipFile(io.BytesIO(bytes(blob))).read("export/00.dcm") == members["export/00.dcm"]
    fs.pipe("req-bucket/padded.zip", bytes(blob))
    refs = list(expand_file("s3://req-bucket/padded.zip", storage_options=s3))
    assert [read_source(r, storage_options=s3) for r in refs] == list(members.values())

    # listing a folder: one request for each file's first bytes (its size and ETag from
    # the folder's listing), none to ask for them again
    fetched.requests.clear()
    listed = list(list_sources("s3://req-bucket/", storage_options=s3))
    assert len(listed) == 1 + 4 * 12 and all(isinstance(r, SourceRef) for r in listed)
    assert fetched.requests["head_object"] == 0, fetched.requests
    assert fetched.requests["get_object"] <= 5 + 4 * 2  # the five heads, and the archives' listings
    assert read_source(listed[-1], storage_options=s3) == members["export/00.dcm"]


def test_shards_to_an_object_store_are_written_in_several_threads(s3, tmp_path, monkeypatch):
    """A local run wrote its shards in its coding threads (one worker: in Beam's own, one
    at a time), each shard several round trips to an object store. To one it now writes
    them from a queue of at least REMOTE_WRITE_THREADS threads; to local files as
    before."""
    import threading

    from pipelines.migrate import WriteShards
    from pipelines.storage import REMOTE_WRITE_THREADS

    writers = []
    process = WriteShards.process

    def recording(self, element):
        writers.append(threading.current_thread().name)
        return process(self, element)

    monkeypatch.setattr(WriteShards, "process", recording)
    fs = s3fs.S3FileSystem(**s3)
    fs.mkdir("shards-bucket")
    src = tmp_path / "src"
    for key, name in PLAIN.items():  # three studies: three shards
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(pydicom_bytes(name))
    assert REMOTE_WRITE_THREADS >= 2
    for dst, queued in [("s3://shards-bucket/archive", True), (str(tmp_path / "dst"), False)]:
        writers.clear()
        summary = run_migrate(str(src / "in"), dst, preset="fast", local_model="classical-v1", progress=False,
                              phi_in_clear=True, storage_options=s3, workers=1)
        assert (summary["archived"], summary["shards"]) == (3, 3)
        assert len(writers) == 3 and all(name.startswith("medarchive-queue") == queued for name in writers), (dst, writers)


def test_a_restore_to_an_object_store_writes_files_while_it_decodes(s3, tmp_path, monkeypatch):
    """A restore wrote each file (an upload, then a copy and a delete to move it into
    place) before decoding the next record: a study of 100 instances to S3 at 20 ms a
    request took 11 s. To an object store it now writes in REMOTE_WRITE_THREADS threads
    while it decodes, every file as before; a write that fails is that record's failure
    (the others restored), or the restore's with ``fail_fast``."""
    import threading

    from pipelines.restore import RestoreShard
    from pipelines.storage import REMOTE_WRITE_THREADS

    src = tmp_path / "src"
    sources = {}
    for key, name in PLAIN.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(sources.setdefault(name, pydicom_bytes(name)))
    archive = str(tmp_path / "archive")
    assert run_migrate(str(src / "in"), archive, preset="fast", local_model="classical-v1", progress=False,
                       phi_in_clear=True)["archived"] == 3
    writers, write = [], RestoreShard._write

    def recording(self, path, data):
        writers.append(threading.current_thread().name)
        if "fail" in self.cfg.dst and data == sources["MR_small.dcm"]:
            raise OSError("the store refused the upload")
        return write(self, path, data)

    monkeypatch.setattr(RestoreShard, "_write", recording)
    fs = s3fs.S3FileSystem(**s3)
    fs.mkdir("restore-bucket")
    out = run_restore(archive, "s3://restore-bucket/all", dst_storage_options=s3)
    assert (out["restored"], out["failed"]) == (3, [])
    assert len(writers) == 3 and all(name.startswith("medarchive-restore-write") for name in writers), writers
    fs.invalidate_cache()
    restored = sorted(fs.cat(p) for p in fs.find("restore-bucket/all"))
    assert restored == sorted(sources.values())
    assert REMOTE_WRITE_THREADS >= 2

    out = run_restore(archive, "s3://restore-bucket/fail", dst_storage_options=s3)
    assert out["restored"] == 2 and [f["reason"] for f in out["failed"]] == ["OSError"]
    with pytest.raises(Exception, match="refused the upload"):
        run_restore(archive, "s3://restore-bucket/fail-fast", dst_storage_options=s3, fail_fast=True)

    writers.clear()
    assert run_restore(archive, str(tmp_path / "local"))["restored"] == 3
    assert len(writers) == 3 and not any(name.startswith("medarchive-restore-write") for name in writers)


def test_a_read_asks_for_the_version_listing_saw(s3, fetched, tmp_path):
    """A ref listed on S3 carries the file's size and ETag: a read asks for that version
    (If-Match) without a request to learn it. Where the file was replaced since (same
    name and size, other bytes), the conditional request fails and the read takes the
    file as it is now, its kept zip directory or tar.gz inflater not reused: never one
    version's directory or inflater state over another's bytes (what a reader holds of
    the listed version already, a tar.gz inflater's last block, reads as that version).
    On local files refs carry no version (a stat costs no round trip)."""
    import gzip

    from pipelines.sources import expand_file, list_sources, read_source

    fs = s3fs.S3FileSystem(**s3)
    fs.mkdir("ver-bucket")
    # over ARCHIVE_BLOCK in all: the tar.gz's last member is not in the block its first was read with
    members = {f"export/{i:02d}.dcm": hashlib.sha512(bytes([i])).digest() * (4000 + i) for i in range(6)}
    changed = {name: data[::-1] for name, data in members.items()}  # the same sizes
    builds = {"plain.dcm": lambda m: m["export/02.dcm"],
              "export.zip": lambda m: zip_bytes(m, compression=zipfile.ZIP_STORED),
              "export.tar": tar_bytes,
              "export.tar.gz": lambda m: gzip.compress(tar_bytes(m), compresslevel=0, mtime=0)}
    for name, build in builds.items():
        key = f"ver-bucket/{name}/{name}"
        fs.pipe(key, build(members))
        # listed as a run lists: the folder's listing, cached by the process that reads
        refs = list(list_sources(f"s3://ver-bucket/{name}", storage_options=s3))
        assert {r.version for r in refs} == {(fs.size(key), fs.info(key)["ETag"])}, name
        first, second = refs[0], refs[-1]
        wanted = (lambda m, r: m[r.member or "export/02.dcm"])
        assert read_source(first, storage_options=s3) == wanted(members, first)  # keeps a directory or inflater
        fs.pipe(key, build(changed))
        assert fs.size(key) == refs[0].version[0] and fs.info(key)["ETag"] != refs[0].version[1], name
        fetched.requests.clear()
        assert read_source(second, storage_options=s3) == wanted(changed, second), name
        # the conditional request, refused; then the current version's size and ETag (a tar
        # member's one ranged request needs none), and its bytes
        heads = 0 if name == "export.tar" else 1
        assert fetched.requests["head_object"] == heads and fetched.requests["get_object"] >= 2, (name, fetched.requests)
        assert read_source(first, storage_options=s3) == wanted(changed, first), name
    (tmp_path / "local.dcm").write_bytes(members["export/00.dcm"])
    assert [r.version for r in expand_file(str(tmp_path / "local.dcm"))] == [None]


def test_an_archive_replaced_after_the_folder_listing_is_expanded_as_it_is_now(s3, fetched, monkeypatch):
    """ExpandFile reads each listed file with what the folder's listing said of it (no
    request to ask again, an archive's directory read as that version too). A file
    replaced between the folder's listing and its expansion is expanded as it is now:
    its members and version, not a dead letter, and a tar.gz never taken for one plain
    file because its read was refused."""
    from pipelines.sources import expand_file, find_files

    fs = s3fs.S3FileSystem(**s3)
    fs.mkdir("relist-bucket")
    old = {f"a/{i}.dcm": bytes([i]) * 3000 for i in range(3)}
    new = {f"b/{i}.dcm": bytes([i + 7]) * 2000 for i in range(5)}
    for name, build in [("x.zip", zip_bytes), ("x.tar.gz", lambda m: tar_bytes(m, "w:gz")), ("x.tar", tar_bytes)]:
        key = f"relist-bucket/{name}/{name}"
        fs.pipe(key, build(old))
        [(url, info)] = find_files(f"s3://relist-bucket/{name}", storage_options=s3)
        s3fs.S3FileSystem.clear_instance_cache()  # a worker that did not list the folder
        fetched.requests.clear()
        refs = list(expand_file(url, storage_options=s3, info=info))
        assert [r.member for r in refs] == list(old) and fetched.requests["head_object"] == 0, (name, fetched.requests)
        fs.pipe(key, build(new))
        refs = list(expand_file(url, storage_options=s3, info=info))
        assert all(isinstance(r, SourceRef) for r in refs), (name, refs)
        assert [r.member for r in refs] == list(new), name
        assert {r.version for r in refs} == {(fs.size(key), fs.info(key)["ETag"])}, name

    # replaced between reading the first bytes and the members: listed as it is now
    from pipelines import sources

    key = "relist-bucket/x.tar.gz/x.tar.gz"
    [(url, info)] = find_files("s3://relist-bucket/x.tar.gz", storage_options=s3)
    kind_of = sources._archive_kind

    def replacing(head):
        fs.pipe(key, tar_bytes(old, "w:gz"))
        return kind_of(head)

    monkeypatch.setattr(sources, "_archive_kind", replacing)
    refs = list(expand_file(url, storage_options=s3, info=info))
    assert [r.member for r in refs] == list(old) and refs[0].version[1] == fs.info(key)["ETag"] != info["ETag"]


def test_an_atomic_write_asks_no_listing(s3, fetched):
    """An index file or a shard is written under a temporary name and moved into place.
    s3fs's makedirs asked whether the bucket exists each time, and its mv listed the
    target (is it a folder?) before copying and deleting: with the other requests ~18 a
    shard, each a round trip. Now a folder is made once per Archive, and a move is one
    copy and one delete."""
    fs = s3fs.S3FileSystem(**s3)
    fs.mkdir("atomic-bucket")
    archive = Archive("s3://atomic-bucket/archive", storage_options=s3, owner="20261207T000000Z-requests")
    fetched.requests.clear()
    for i in range(3):
        archive.write_atomic(f"index/{i}.parquet", b"x" * (i + 1))
    assert fetched.requests["list_objects_v2"] == 0 and fetched.requests["head_bucket"] <= 1, fetched.requests
    assert fetched.requests["copy_object"] == 3 and fetched.requests["delete_object"] == 3
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.find("atomic-bucket/archive")) == ["0.parquet", "1.parquet", "2.parquet"]
    assert fs.cat("atomic-bucket/archive/index/2.parquet") == b"xxx"


def test_one_worker_reads_ahead_from_an_object_store_only(s3, tmp_path, monkeypatch):
    """A one-worker local run coded each input as it read it: on S3, each read's round
    trips (10-30 ms each) held the one coding thread idle. From an object store it now
    reads its inputs ahead, in the queue's fetch threads; from local files it reads them
    where it codes them, with no queue (whose gather stages every job would pay)."""
    import threading

    from pipelines.migrate import EncodeInstance

    readers = []
    read = EncodeInstance._read

    def recording(self, ref, **kwargs):
        readers.append(threading.current_thread().name)
        return read(self, ref, **kwargs)

    monkeypatch.setattr(EncodeInstance, "_read", recording)
    fs = s3fs.S3FileSystem(**s3)
    fs.mkdir("ahead-bucket")
    local = tmp_path / "src"
    for key, name in PLAIN.items():
        fs.pipe(f"ahead-bucket/{key}", pydicom_bytes(name))
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(pydicom_bytes(name))
    for src, fetch_threads in [("s3://ahead-bucket/in", 3), (str(local / "in"), 0)]:
        readers.clear()
        summary = run_migrate(src, str(tmp_path / f"dst-{fetch_threads}"), preset="fast", local_model="classical-v1",
                              progress=False, phi_in_clear=True, storage_options=s3, workers=1)
        assert (summary["archived"], summary["deadlettered"]) == (3, 0)
        assert len(readers) == 3
        assert sum(name.startswith("medarchive-fetch") for name in readers) == fetch_threads, (src, readers)


def test_a_restore_of_one_instance_fetches_its_record(s3, tmp_path, monkeypatch):
    """A shard was read with s3fs's 50 MiB read-ahead: restoring one instance fetched the
    shard from its record on. The records a restore selects are read in runs of
    neighbours (pipelines.restore.record_runs): one instance, its record; a whole study,
    one read of the shard."""
    import pydicom

    fs = s3fs.S3FileSystem(**s3)
    fs.mkdir("one-src")
    fs.mkdir("one-dst")
    uids = []
    for i in range(3):  # three instances of one study: one shard
        ds = pydicom.dcmread(io.BytesIO(pydicom_bytes("CT_small.dcm")))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{ds.SOPInstanceUID}.{i + 1}"
        buf = io.BytesIO()
        ds.save_as(buf)
        fs.pipe(f"one-src/ct/{i}.dcm", buf.getvalue())
        uids.append(ds.SOPInstanceUID)
    dst = "s3://one-dst/archive"
    summary = run_migrate("s3://one-src/ct", dst, preset="fast", progress=False, phi_in_clear=True, storage_options=s3)
    assert (summary["archived"], summary["shards"]) == (3, 1)
    rows = sorted(Archive(dst, storage_options=s3).read_index().to_pylist(), key=lambda r: r["offset"])
    shard_size = fs.size(f"one-dst/archive/{rows[0]['shard']}")

    fetched = []
    fetch = s3fs.core.S3File._fetch_range
    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", lambda self, start, end: fetched.append(
        (self.path.rsplit("/", 1)[-1], end - start)) or fetch(self, start, end))
    sop = uids[0]
    assert run_restore(dst, str(tmp_path / "one"), sop=sop, storage_options=s3)["restored"] == 1
    from_shard = [n for name, n in fetched if name.endswith(".tar")]
    record = next(r for r in rows if r["sop_key"] == Archive(dst, storage_options=s3).open_or_create(
        key=None, key_mode="keyring").hash("sop", sop))
    assert from_shard == [record["length"]] and record["length"] < shard_size / 2

    fetched.clear()
    assert run_restore(dst, str(tmp_path / "all"), storage_options=s3)["restored"] == 3
    spans = [n for name, n in fetched if name.endswith(".tar")]
    assert len(spans) == 1 and spans[0] == rows[-1]["offset"] + rows[-1]["length"] - rows[0]["offset"]
