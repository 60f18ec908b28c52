"""Seeds of the fuzz harnesses, made at start (nothing committed): a small, varied set of
pydicom's test files, the golden records, records written now from small files (plain and
keyed with the golden test keyring) and the stego files of the keyed ones. No atheris here:
tests/test_fuzz.py checks what the seeds cover.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import medcodec
import medcodec.container
import medcodec.crypto

from _contract import GOLDEN, KEYRING_PATH

# Small, varied pydicom test files (< 50 kB): native LE / BE / implicit, headerless,
# JPEG-LS, JPEG 2000, RLE, JPEG lossless and baseline, deflated, YBR 4:2:2, multi-frame,
# no pixels, truncated, malformed.
DICOM_SEED_FILES = (
    "MR_small.dcm", "CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
    "SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm", "rtdose_1frame.dcm", "rtdose_expb_1frame.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_08.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm",
    "SC_rgb_rle.dcm", "rtdose_rle_1frame.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_2frame.dcm", "MR_small_RLE.dcm",
    "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_small_odd_jpeg.dcm", "image_dfl.dcm", "ExplVR_LitEndNoMeta.dcm",
    "ExplVR_BigEndNoMeta.dcm", "no_meta_group_length.dcm", "meta_missing_tsyntax.dcm", "nested_priv_SQ.dcm",
    "SC_ybr_full_422_uncompressed.dcm", "rtplan.dcm", "badVR.dcm", "MR_truncated.dcm", "UN_sequence.dcm",
)
# Files made into records (plain and keyed) and stego files at start.
RECORD_SOURCES = ("MR_small.dcm", "SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm",
                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_rle.dcm",
                  "SC_rgb_jpeg_gdcm.dcm", "ExplVR_LitEndNoMeta.dcm", "rtplan.dcm")
KEYED_SOURCES = ("MR_small.dcm", "SC_rgb_rle.dcm", "SC_rgb_small_odd.dcm", "rtplan.dcm", "MR_small_RLE.dcm")


def keyring():
    return medcodec.crypto.Keyring.load(KEYRING_PATH, check_permissions=False)


def dicom_file(name: str) -> bytes:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"pydicom test file {name} is not installed")
    return Path(path).read_bytes()


def dicom_seeds() -> dict[str, bytes]:
    return {name: dicom_file(name) for name in DICOM_SEED_FILES}


def golden_records() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(GOLDEN.glob("*.mdc"))}


def made_records(ring) -> dict[str, bytes]:
    """Records written now with preset fast: plain, and keyed with the golden test keyring."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in RECORD_SOURCES:
            out[f"made_{name}.mdc"] = medcodec.compress_dicom(dicom_file(name), preset="fast")
        for name in KEYED_SOURCES:
            out[f"made_keyed_{name}.mdc"] = medcodec.compress_dicom(dicom_file(name), preset="fast", keyring=ring)
    return out


def stego_files(records: dict[str, bytes]) -> dict[str, bytes]:
    """The de-identified (stego) DICOM file of every keyed record with pixels."""
    out = {}
    for name, blob in records.items():
        config = medcodec.container.read_record(blob).config
        if config.get("sealed") and config.get("pixels"):
            out[name.replace(".mdc", ".dcm")] = medcodec.decompress_dicom(blob)
    return out
