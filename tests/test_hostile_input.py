"""Hostile and damaged input: bounded before any allocation, and one typed line, never a traceback."""

import hashlib
import json
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.hardening_probes import PLANT
from benchmarks.hardening_probes import planted_inputs as _planted_inputs

import medcodec
from medcodec import container as ct
from medcodec import crypto
from medcodec.dicom import DicomLimits, parse_dicom

ROOT = Path(__file__).resolve().parents[1]


def run_bounded(code: str, *, address_space_gib: float = 2.0, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter whose address space is capped (RLIMIT_AS)."""
    prelude = textwrap.dedent(f"""
        import resource
        limit = int({address_space_gib} * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


# --------------------------------------------------------------------------------------
# DICOM files that claim more than they hold


def test_tiny_jpegls_claiming_a_large_image_is_refused_before_decoding(jpegls_dicom):
    """624 bytes of JPEG-LS for 4000 x 4000 zeros (32 MB, 51,000:1): refused by the pixel
    ratio, not decoded (this took 16 s and 1.95 GB before)."""
    data = jpegls_dicom(4000, 4000)
    assert len(data) < 4000
    with pytest.raises(medcodec.LimitExceededError, match="compressed pixel data claim"):
        medcodec.compress_dicom(data, preset="fast")
    # The same file codes when the user lifts the ratio limit on purpose.
    small = jpegls_dicom(400, 400)
    record = medcodec.compress_dicom(small, preset="fast", limits=DicomLimits(max_pixel_ratio=None))
    restored = parse_dicom(medcodec.decompress_dicom(record))  # pixel-exact: the same pixels
    assert np.array_equal(restored.frames, parse_dicom(small).frames)


def test_header_claiming_16000_squared_is_refused_under_a_small_address_space(jpegls_dicom):
    data = jpegls_dicom(64, 64, claim=(16000, 16000))
    proc = run_bounded(f"""
        import time, medcodec
        data = bytes.fromhex({data.hex()!r})
        t = time.perf_counter()
        for limits in (medcodec.DicomLimits(memory_bytes=1 << 50),
                       medcodec.DicomLimits(memory_bytes=4 << 30, max_pixel_ratio=None)):
            try:
                medcodec.compress_dicom(data, preset="fast", limits=limits)
            except medcodec.LimitExceededError as exc:
                print("refused:", exc)
        print("seconds", round(time.perf_counter() - t, 2))
    """)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "compressed pixel data claim" in lines[0]
    assert "memory budget of 4.0 GiB" in lines[1]  # 256 M samples x 128 B
    assert float(lines[2].split()[1]) < 10 and "MemoryError" not in proc.stderr


def test_memory_budget_is_checked_from_declared_sizes(testdata):
    data = testdata("CT_small.dcm")  # 128 x 128
    with pytest.raises(medcodec.LimitExceededError, match="memory budget of 0.0 GiB"):
        medcodec.compress_dicom(data, preset="fast", limits=DicomLimits(memory_bytes=1 << 20))
    assert medcodec.compress_dicom(data, preset="fast", limits=DicomLimits(memory_bytes=64 << 20))
    # max needs more per sample than fast: the same budget refuses it.
    with pytest.raises(medcodec.LimitExceededError):
        medcodec.compress_dicom(data, preset="max", limits=DicomLimits(memory_bytes=8 << 20))


# --------------------------------------------------------------------------------------
# Inputs that take too long: a cooperative deadline, checked between planes


class _CountingCoder:
    """The real global coder; ``on_plane(info)`` runs before each plane it encodes."""

    def __init__(self, inner, on_plane):
        self.inner, self.on_plane = inner, on_plane

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, g, info, prev):
        self.on_plane(info)
        return self.inner.encode(g, info, prev)


def _wrap_global_coder(monkeypatch, on_plane) -> None:
    from medcodec import codec

    real = codec.coder_for
    monkeypatch.setattr(codec, "coder_for", lambda model_id: _CountingCoder(real(model_id), on_plane))


def test_time_limit_stops_a_multi_frame_input_between_planes(monkeypatch, tmp_path, testdata):
    from medcodec.codec import encode_words
    from medcodec.dicom import Deadline
    from medcodec.planes import SampleFormat

    data = testdata("emri_small.dcm")  # 10 frames of 64 x 64
    started = time.perf_counter()
    with pytest.raises(medcodec.LimitExceededError, match=r"time limit of 1e-06 s .*raise it with --max-seconds"):
        medcodec.compress_dicom(data, preset="fast", limits=DicomLimits(seconds=1e-6))
    assert time.perf_counter() - started < 2
    # The deadline passes while the third plane codes: the fourth is never started.
    parsed = parse_dicom(data)
    deadline, coded = Deadline(600), []

    def on_plane(info):
        coded.append(info)
        if len(coded) == 3:
            deadline.at = time.monotonic() - 1

    _wrap_global_coder(monkeypatch, on_plane)
    with pytest.raises(medcodec.LimitExceededError, match="stopped between planes"):
        encode_words(parsed.frames, SampleFormat.of(parsed.spec), preset="fast", deadline=deadline)
    assert len(coded) == 3
    # No limit (the library's default) and a generous one code it as before.
    monkeypatch.undo()
    assert medcodec.compress_dicom(data, preset="fast", limits=DicomLimits(seconds=600))
    # The CLI: one line, exit 2.
    src = tmp_path / "emri.dcm"
    src.write_bytes(data)
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "compress", str(src), str(tmp_path / "out.mdc"),
                           "--preset", "fast", "--max-seconds", "0.000001"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "--max-seconds" in proc.stderr


def test_migrate_dead_letters_an_input_past_its_time_limit_and_archives_the_rest(monkeypatch, tmp_path, testdata):
    """The clock jumps 1000 s while each plane of the 10-frame MR codes (no sleeping): it
    passes the default 600 s limit, is a dead letter with the reason, and the job goes on."""
    from medcodec.dicom import limits as dicom  # Deadline reads its clock there
    from pipelines.archive import Archive
    from pipelines.runner import run_migrate

    class Clock:
        offset = 0.0

        @staticmethod
        def monotonic():
            return time.monotonic() + Clock.offset

    def on_plane(info):
        if (info.rows, info.cols) == (64, 64):  # emri_small's planes; CT_small's are 128 x 128
            Clock.offset += 1000

    monkeypatch.setattr(dicom, "time", Clock)
    _wrap_global_coder(monkeypatch, on_plane)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for name in ("emri_small.dcm", "CT_small.dcm"):
        (src / name).write_bytes(testdata(name))
    summary = run_migrate(str(src), str(dst), preset="fast", local_model="classical-v1", progress=False,
                          phi_in_clear=True)
    assert summary["deadlettered"] == 1 and summary["archived"] == 1, summary
    archive = Archive(str(dst))
    (dead,) = archive.read_deadletters()
    assert (dead["stage"], dead["error_type"]) == ("encode", "LimitExceededError")
    assert "time limit of 600 s" in dead["message"] and "--max-seconds" in dead["message"]
    assert archive.read_index().num_rows == 1


# --------------------------------------------------------------------------------------
# Crafted records with valid checksums


def _rewritten(blob: bytes, *, config=None, sections=None) -> bytes:
    record = ct.read_record(blob)
    return ct.write_record(ct.Record(config=record.config if config is None else config,
                                     sections=record.sections if sections is None else sections))


@pytest.fixture(scope="module")
def ct_record(testdata):
    return medcodec.compress_dicom(testdata("CT_small.dcm"), preset="fast")


def test_record_claiming_40000_squared_is_refused_before_allocation(ct_record):
    config = json.loads(json.dumps(ct.read_record(ct_record).config))
    config["pixels"]["shape"] = [1, 1, 40000, 40000]
    crafted = _rewritten(ct_record, config=config)
    proc = run_bounded(f"""
        import medcodec
        try:
            medcodec.decompress_dicom(bytes.fromhex({crafted.hex()!r}))
        except medcodec.LimitExceededError as exc:
            print("refused:", exc)
    """)
    assert proc.returncode == 0 and proc.stdout.startswith("refused:") and "memory budget" in proc.stdout, proc.stderr
    with pytest.raises(medcodec.LimitExceededError):
        medcodec.decompress_dicom(crafted, limits=DicomLimits(memory_bytes=1 << 30))


def test_records_with_edited_sections_give_one_typed_error(ct_record, tmp_path):
    record = ct.read_record(ct_record)
    cases = {}
    config = json.loads(json.dumps(record.config))
    del config["pixels"]
    cases["no pixels"] = _rewritten(ct_record, config=config)
    for i, section in enumerate(record.sections):
        for where in range(0, len(section.payload), max(1, len(section.payload) // 40)):
            payload = bytearray(section.payload)
            payload[where] ^= 0x5A
            sections = list(record.sections)
            sections[i] = ct.Section(section.type, bytes(payload), section.flags)
            cases[f"{section.name} byte {where}"] = _rewritten(ct_record, sections=sections)
        sections = list(record.sections)
        sections[i] = ct.Section(section.type, section.payload[: len(section.payload) // 3], section.flags)
        cases[f"{section.name} cut"] = _rewritten(ct_record, sections=sections)
    for name, blob in cases.items():
        with pytest.raises(medcodec.MedcodecError):
            medcodec.decompress_dicom(blob)
    # Through the CLI: one line on stderr, exit 2.
    bad = tmp_path / "bad.mdc"
    bad.write_bytes(cases["global byte 0"] if "global byte 0" in cases else next(iter(cases.values())))
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "decompress", str(bad), str(tmp_path / "out.dcm")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_keyed_record_without_its_stego_report_is_a_typed_error(fresh_keyring, testdata):
    ring = fresh_keyring
    blob = medcodec.compress_dicom(testdata("CT_small.dcm"), preset="fast", keyring=ring)
    config = json.loads(json.dumps(ct.read_record(blob).config))
    del config["sealed"]["stego"]
    with pytest.raises(medcodec.MedcodecError):
        medcodec.decompress_dicom(_rewritten(blob, config=config), keyring=ring)


def test_lzma_bomb_in_a_sealed_section_is_refused_before_it_inflates(fresh_keyring, testdata):
    """A sealed section is authenticated, so only a key holder can plant a bomb there; still,
    2 GiB of zeros in 317 kB of xz (or 128 MiB in 128 kB of deflate) is stopped at the
    memory budget, not inflated: in the sealed original as 1.2 packs it (deflate or xz
    against the de-identified file), as 1.1 did (section 32), and in the sealed PHI."""
    import lzma
    import zlib

    from medcodec import essential, sealing

    ring = fresh_keyring
    data = testdata("CT_small.dcm")
    blob = medcodec.compress_dicom(data, preset="fast", keyring=ring)
    assert medcodec.decompress_dicom(blob, keyring=ring, limits=DicomLimits(memory_bytes=64 << 20)) == data
    record = ct.read_record(blob)
    binding = record.config["sealed"]["binding"]
    bomb = lzma.compress(bytes(64 << 20), preset=0) * 32
    coder = zlib.compressobj(1, zlib.DEFLATED, -15)
    deflate_bomb = coder.compress(bytes(128 << 20)) + coder.flush()
    limits = DicomLimits(memory_bytes=64 << 20)
    original = ct.SECTION_SEALED_ORIGINAL_DELTA
    from medcodec.codec import _unpack_header

    digest = hashlib.sha256(b"".join(_unpack_header(record.one(ct.SECTION_HEADER).payload,
                                                       record.config["source"]["size"]))).digest()

    def with_sealed(purpose: str, plaintext: bytes, replaces: int | None = None) -> bytes:
        box = crypto.seal(ring, plaintext, associated=sealing._binding_ad(binding, purpose))
        kind = sealing.SEALED_SECTIONS[purpose]
        return _rewritten(blob, sections=[ct.Section(kind, box.to_bytes(), s.flags) if s.type == (replaces or kind)
                                          else s for s in record.sections])

    started = time.perf_counter()
    for crafted in (with_sealed(sealing.PURPOSE_ORIGINAL_DELTA, struct.pack("<BQ32s", sealing.DELTA_COPIES, 0, digest) + bomb),
                    with_sealed(sealing.PURPOSE_ORIGINAL_DELTA, struct.pack("<BQ32s", sealing.DELTA_DEFLATE, 0, digest) + deflate_bomb),
                    with_sealed(sealing.PURPOSE_ORIGINAL, bomb, replaces=original)):
        with pytest.raises(medcodec.LimitExceededError, match=r"sealed original section inflates past .*memory budget"
                                                              r" of 0\.1 GiB \(raise it with --memory-budget\)"):
            medcodec.decompress_dicom(crafted, keyring=ring, limits=limits)
    for phi in (bomb, bytes([sealing.PHI_DICTIONARY_ID]) + deflate_bomb):  # 1.1's packing and 1.2's
        revealed = {"tier": sealing.TIER_ESSENTIAL, "full_link": essential.full_link(ring.uid_key(), phi).hex()}
        with pytest.raises(medcodec.LimitExceededError, match="sealed PHI section inflates past"):
            sealing.follow_link(revealed, with_sealed(sealing.PURPOSE_PHI, phi), ring, limits=limits)
    assert time.perf_counter() - started < 5  # inflating 2 GiB alone takes longer


# --------------------------------------------------------------------------------------
# Inputs that inflate: bounded while they are read


def _gzip_zeros(n: int) -> bytes:
    import gzip

    return gzip.compress(bytes(n), compresslevel=1)


def test_gzip_bomb_stops_at_the_ratio_limit(tmp_path, testdata, testdata_path):
    from pipelines.sources import InputTooLargeError, ReadLimits, SourceRef, read_source

    bomb = tmp_path / "scan.dcm.gz"
    bomb.write_bytes(_gzip_zeros(300 << 20))  # 300 MiB of zeros in ~300 kB
    proc = run_bounded(f"""
        import time
        from pipelines.sources import InputTooLargeError, SourceRef, read_source
        t = time.perf_counter()
        try:
            read_source(SourceRef("file://{bomb}"))
        except InputTooLargeError as exc:
            print("refused:", exc)
        print("seconds", round(time.perf_counter() - t, 2))
    """, address_space_gib=1.5)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused: compressed input inflates past") and "200:1" in proc.stdout
    assert float(proc.stdout.split("seconds")[1]) < 10
    # A real gzip'd DICOM reads as before; a file over the size limit is refused before reading.
    ct = testdata("CT_small.dcm")
    good = tmp_path / "ct.dcm.gz"
    good.write_bytes(__import__("gzip").compress(ct))
    assert read_source(SourceRef(f"file://{good}")) == ct
    with pytest.raises(InputTooLargeError, match="over the limit of 1000 bytes"):
        read_source(SourceRef(f"file://{testdata_path('CT_small.dcm')}"), limits=ReadLimits(max_bytes=1000))


def test_archive_members_are_bounded_by_their_declared_and_actual_sizes(tmp_path, testdata, testdata_path):
    import tarfile
    import zipfile

    from pipelines.sources import InputTooLargeError, ReadLimits, SourceRef, read_source

    zpath = tmp_path / "study.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.dcm", bytes(200 << 20))
        zf.writestr("ct.dcm", testdata("CT_small.dcm"))
    with pytest.raises(InputTooLargeError, match="200:1"):
        read_source(SourceRef(f"file://{zpath}", "bomb.dcm"))
    assert read_source(SourceRef(f"file://{zpath}", "ct.dcm")) == testdata("CT_small.dcm")
    tpath = tmp_path / "study.tar"
    with tarfile.open(tpath, "w") as tf:
        tf.add(testdata_path("CT_small.dcm"), arcname="ct.dcm")
    with pytest.raises(InputTooLargeError):
        read_source(SourceRef(f"file://{tpath}", "ct.dcm"), limits=ReadLimits(max_bytes=1000))
    assert len(read_source(SourceRef(f"file://{tpath}", "ct.dcm"))) == Path(testdata_path("CT_small.dcm")).stat().st_size


# --------------------------------------------------------------------------------------
# Planted PHI never reaches a message


def test_planted_phi_is_in_no_message_table_or_log(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    files = _planted_inputs()
    for name, payload in files.items():
        (src / name).write_bytes(payload)
    ring = tmp_path / "ring.json"
    cli = [sys.executable, "-m", "jobs.cli"]
    assert subprocess.run([*cli, "keys", "new", str(ring)], capture_output=True, cwd=ROOT).returncode == 0
    outputs = []
    for keyed in (["--phi-in-clear"], ["--key-file", str(ring)]):
        proc = subprocess.run([*cli, "migrate", str(src), str(dst / keyed[0].strip("-")), "--preset",
                               "fast", "--no-progress", *keyed],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert f"warning: {len(files)} input(s) could not be archived" in proc.stderr
        outputs += [proc.stdout, proc.stderr]
    for name in files:
        proc = subprocess.run([*cli, "compress", str(src / name), str(tmp_path / "out.mdc")], capture_output=True,
                              text=True, cwd=ROOT)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (name, proc.stderr)
        outputs += [proc.stdout, proc.stderr]
    written = [p.read_bytes() for p in dst.rglob("*") if p.is_file()]
    assert len(written) >= 6  # per archive: archive.json, dead letters, run summary
    hits = [i for i, text in enumerate(outputs) if PLANT in text]
    hits += [i for i, blob in enumerate(written) if PLANT.encode() in blob or PLANT.encode().hex().encode() in blob]
    assert not hits


def test_native_stderr_of_decoding_plugins_stays_off_the_users_stderr():
    """What native code writes to fd 2 inside the guard (a Rust panic's backtrace) is not
    printed; stderr works as before after it."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, sys
        from medcodec.dicom import native_stderr_captured
        with native_stderr_captured():
            os.write(2, b"thread '<unnamed>' panicked at src/lib.rs\\n" * 80)
        try:
            with native_stderr_captured():
                os.write(2, b"panicked again\\n")
                raise ValueError("decoder failed")
        except ValueError:
            pass
        sys.stderr.write("after\\n")
    """)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stderr == "after\n"


@given(st.binary(max_size=64), st.integers(0, 70_000), st.binary(max_size=8), st.integers(0, 9_000))
def test_where_the_padding_starts_is_where_rstrip_says(head, zeros, middle, tail):
    """``padding_start`` finds the trailing zeros without rstrip's copy of the file."""
    from medcodec.dicom.elements import padding_start

    data = head + bytes(zeros) + middle + bytes(tail)
    assert padding_start(data) == len(data.rstrip(b"\0"))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_trailing_zero_padding_is_not_walked_element_by_element(name, testdata):
    """20 MB of zeros after the dataset read as 2.6 M empty elements (18 s); now the parse
    is proportional to the content, and the record restores every padding byte."""
    import time

    data = testdata(name) + bytes(20 << 20)
    started = time.perf_counter()
    parsed = parse_dicom(data)
    assert time.perf_counter() - started < 3
    restored = medcodec.decompress_dicom(medcodec.compress_dicom(data, preset="fast"))
    if parsed.restore_mode == "byte-exact":
        assert restored == data
    else:
        assert len(restored) == len(data) and np.array_equal(parse_dicom(restored).frames, parsed.frames)
