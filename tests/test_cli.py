"""The medarchive CLI: real files in and out, one-line errors, never a traceback."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from jobs.cli import main

from conftest import pydicom_bytes, pydicom_file


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "jobs.cli", *map(str, args)], capture_output=True, text=True)


def test_compress_inspect_decompress_dicom(tmp_path, capsys):
    src = Path(pydicom_file("CT_small.dcm"))
    rec, out = tmp_path / "ct.mdc", tmp_path / "ct.dcm"
    assert main(["compress", str(src), str(rec)]) == 0
    assert main(["inspect", str(rec)]) == 0
    text = capsys.readouterr().out
    for word in ("format version", "split plane k", "bits/sample", "per-plane-v8", "local", "byte-exact"):
        assert word in text
    assert main(["decompress", str(rec), str(out)]) == 0
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    assert rec.stat().st_size < src.stat().st_size


def test_inspect_json(tmp_path, capsys):
    import json

    rec = tmp_path / "mr.mdc"
    assert main(["compress", "--preset", "fast", pydicom_file("MR_small.dcm"), str(rec)]) == 0
    capsys.readouterr()
    assert main(["inspect", "--json", str(rec)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preset"] == "fast" and info["format_version"] == "1.2"  # the version new records are written in


def test_keep_codestream_restores_compressed_source_byte_exact(tmp_path):
    src = Path(pydicom_file("MR_small_RLE.dcm"))
    rec, out = tmp_path / "r.mdc", tmp_path / "r.dcm"
    assert main(["compress", "--keep-codestream", str(src), str(rec)]) == 0
    assert main(["decompress", str(rec), str(out)]) == 0
    assert out.read_bytes() == src.read_bytes()


def test_npy_roundtrip(tmp_path):
    arr = (np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 7) % 4096
    np.save(tmp_path / "a.npy", arr)
    assert main(["compress", "--bits-stored", "12", str(tmp_path / "a.npy"), str(tmp_path / "a.mdc")]) == 0
    assert main(["decompress", str(tmp_path / "a.mdc"), str(tmp_path / "b.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "b.npy"), arr)


def _header_claims_more_pixels(path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.Rows = ds.Rows * 2
    ds.save_as(path)


def _huge_dimensions(path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 60000
    ds.NumberOfFrames = 50000
    ds.save_as(path)


def _unsupported_syntax(path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6"
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda p: p.write_bytes(b"hello, not an image" * 20), "not a DICOM"),
        (lambda p: p.write_bytes(pydicom_bytes("CT_small.dcm")[:20000]), "truncated|claims"),
        (_header_claims_more_pixels, "truncated|claims"),
        (_huge_dimensions, "limit|exceed"),
        (_unsupported_syntax, "1.2.3.4.5.6"),
    ],
    ids=["not-dicom", "truncated", "claims-more-pixels", "huge-dimensions", "unsupported-syntax"],
)
def test_bad_input_is_one_clear_line(tmp_path, make, expect):
    import re

    bad = tmp_path / "bad.dcm"
    make(bad)
    res = run_cli("compress", bad, tmp_path / "out.mdc")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert re.search(expect, res.stderr, re.IGNORECASE), res.stderr
    assert not (tmp_path / "out.mdc").exists()


def test_dimension_limit_is_configurable(tmp_path):
    res = run_cli("compress", "--max-samples", "1000", pydicom_file("CT_small.dcm"), tmp_path / "o.mdc")
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_corrupt_record_and_missing_file(tmp_path):
    src = pydicom_file("MR_small.dcm")
    rec = tmp_path / "m.mdc"
    assert main(["compress", src, str(rec)]) == 0
    data = bytearray(rec.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rec.write_bytes(bytes(data))
    for args in (("decompress", rec, tmp_path / "x.dcm"), ("inspect", rec), ("decompress", tmp_path / "nope.mdc", tmp_path / "y")):
        res = run_cli(*args)
        assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.count("\n") == 1, res.stderr


def test_console_script_is_installed():
    exe = shutil.which("medarchive", path=str(Path(sys.executable).parent))
    assert exe, "the medarchive console script is not installed in the environment"
    res = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "compress" in res.stdout
