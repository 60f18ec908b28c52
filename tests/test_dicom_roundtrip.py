"""Every DICOM file in pydicom's test data through the whole codec (no key):
byte-exact for uncompressed sources, pixel-exact for lossless-compressed, verbatim for lossy."""

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

import medcodec
from medcodec.dicom import parse_dicom

from conftest import pydicom_files


def _files():
    out = []
    for f in sorted(pydicom_files()):
        p = Path(f)
        if not p.is_file():
            continue
        try:
            pydicom.dcmread(f, force=True)
        except Exception:
            continue
        out.append(f)
    return out


FILES = _files()
MODES: Counter = Counter()


def test_every_readable_file_is_enumerated():
    assert len(FILES) > 200


@pytest.mark.parametrize("path", FILES, ids=lambda p: Path(p).name)
def test_codec_roundtrip(path):
    data = Path(path).read_bytes()
    try:
        parsed = parse_dicom(data)
    except medcodec.MedcodecError as exc:
        # pydicom reads it (leniently) but it is not a complete DICOM file: a clear error, not a crash.
        with pytest.raises(medcodec.MedcodecError):
            medcodec.compress_dicom(data)
        pytest.skip(f"rejected with a clear error: {type(exc).__name__}")
    # Suite time budget: the transformer path on files up to 150 kB (max up to 40 kB, fast
    # above), the transformer-free v1.0 path and `fast`'s global path on larger ones
    # (tests/test_model.py covers the transformer on every layout; exactness does not depend
    # on the image size; the benchmark codes the big real images with `max` and verifies
    # every decode; tests/test_wavefront.py covers raster-wp-v3's strided sample of large planes).
    if len(data) > 150_000:
        blob = medcodec.compress_dicom(data, local_model="classical-v1", preset="fast", verify=False)
    else:
        blob = medcodec.compress_dicom(data, preset="max" if len(data) < 40_000 else "fast", verify=False)
    restored = medcodec.decompress_dicom(blob)
    mode = medcodec.inspect_record(blob)["restore_mode"]
    # A lossless-compressed source is kept verbatim when our record would not be smaller.
    assert mode == parsed.restore_mode or (parsed.restore_mode == "pixel-exact" and mode == "verbatim")
    if mode == "pixel-exact":
        assert np.array_equal(parse_dicom(restored).frames, parsed.frames)
    else:
        assert hashlib.sha256(restored).digest() == hashlib.sha256(data).digest()
    if mode == "verbatim":
        assert medcodec.inspect_record(blob)["sections"].get("verbatim") == len(data)
    if parsed.restore_mode == "byte-exact":
        assert len(blob) < len(data) + 2048  # coded (small files pay a fixed record overhead)
    if parsed.restore_mode == "pixel-exact":
        assert len(blob) < len(data) + 1024  # never much bigger than keeping the codestream
