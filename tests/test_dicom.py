"""Tests for medcodec.dicom: every pydicom reference file, cross-syntax agreement,
synthetic edge cases, and the errors a user can cause."""

from __future__ import annotations

import collections
import hashlib
import io
import os

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from medcodec.dicom import (
    RESTORE_BYTE_EXACT,
    RESTORE_PIXEL_EXACT,
    RESTORE_VERBATIM,
    DicomLimits,
    ParsedDicom,
    is_dicom,
    parse_dicom,
    rebuild_dicom,
)
from medcodec.errors import InvalidDicomError, LimitExceededError, MedcodecError, UnsupportedError

from conftest import pydicom_file, pydicom_files

PATIENT_NAME = "Secret^Patient"
PATIENT_ID = "PID-0042-SECRET"


# --------------------------------------------------------------------------------------
# Helpers


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _testdata() -> list[tuple[str, str]]:
    """(test id, path) for every regular file pydicom-data ships; ids are basenames,
    qualified by the parent folder where two files share a basename."""
    paths = sorted(p for p in pydicom_files() if os.path.isfile(p))
    counts = collections.Counter(os.path.basename(p) for p in paths)
    out = []
    for path in paths:
        name = os.path.basename(path)
        if counts[name] > 1:
            name = f"{os.path.basename(os.path.dirname(path))}/{name}"
        out.append((name, path))
    assert len({name for name, _ in out}) == len(out)
    return out


TESTDATA = _testdata()


def _read(name: str) -> bytes:
    with open(pydicom_file(name), "rb") as fh:
        return fh.read()


def _make_dicom(
    pixel: bytes | None,
    *,
    ts: str = ExplicitVRLittleEndian,
    pixel_vr: str | None = None,
    implicit_vr: bool | None = None,
    little_endian: bool | None = None,
    **attrs,
) -> bytes:
    """A small Secondary Capture file written by pydicom with a real file meta."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ts
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    if pixel is not None:
        ds.PixelData = pixel
        ds["PixelData"].VR = pixel_vr or ("OB" if attrs.get("BitsAllocated", 16) == 8 else "OW")
    buf = io.BytesIO()
    kwargs = {}
    if implicit_vr is not None:
        kwargs = {"implicit_vr": implicit_vr, "little_endian": little_endian}
    ds.save_as(buf, enforce_file_format=True, **kwargs)
    return buf.getvalue()


def _image_attrs(rows, cols, *, frames=None, samples=1, bits_allocated=16, bits_stored=None,
                 high_bit=None, signed=0, photometric=None, planar=None) -> dict:
    bits_stored = bits_stored or bits_allocated
    attrs = dict(
        Rows=rows,
        Columns=cols,
        SamplesPerPixel=samples,
        BitsAllocated=bits_allocated,
        BitsStored=bits_stored,
        HighBit=bits_stored - 1 if high_bit is None else high_bit,
        PixelRepresentation=signed,
        PhotometricInterpretation=photometric or ("MONOCHROME2" if samples == 1 else "RGB"),
    )
    if frames is not None:
        attrs["NumberOfFrames"] = frames
    if samples > 1:
        attrs["PlanarConfiguration"] = planar or 0
    return attrs


def _assert_consistent(parsed: ParsedDicom) -> None:
    """Invariants every ParsedDicom must satisfy."""
    assert parsed.restore_mode in (RESTORE_BYTE_EXACT, RESTORE_PIXEL_EXACT, RESTORE_VERBATIM)
    assert parsed.note
    if parsed.restore_mode == RESTORE_VERBATIM:
        assert parsed.original is not None and parsed.frames is None and parsed.reencode is None
        return
    spec = parsed.spec
    assert spec is not None and parsed.original is None
    spec.validate_for_coding()
    assert parsed.frames.shape == (spec.frames, spec.samples, spec.rows, spec.cols)
    assert parsed.frames.dtype == (np.uint8 if spec.bits_allocated == 8 else np.uint16)
    assert parsed.frames.dtype.isnative
    if parsed.restore_mode == RESTORE_BYTE_EXACT:
        assert parsed.reencode is None
    else:
        assert parsed.reencode in ("original-syntax", "explicit-vr-le")
        assert parsed.extra == b"" and not spec.big_endian


def _check_pixel_exact_restore(parsed: ParsedDicom, original: bytes) -> bytes:
    rebuilt = rebuild_dicom(parsed)
    ds = pydicom.dcmread(io.BytesIO(rebuilt))
    if parsed.reencode == "original-syntax":
        assert ds.file_meta.TransferSyntaxUID == parsed.spec.transfer_syntax
        assert rebuilt.startswith(parsed.prefix) and rebuilt.endswith(parsed.suffix)
    else:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    again = parse_dicom(rebuilt)
    assert again.restore_mode in (RESTORE_PIXEL_EXACT, RESTORE_BYTE_EXACT)
    assert again.frames.shape == parsed.frames.shape
    assert np.array_equal(again.frames, parsed.frames)
    for field in ("rows", "cols", "frames", "samples", "bits_allocated", "bits_stored",
                  "high_bit", "pixel_representation"):
        assert getattr(again.spec, field) == getattr(parsed.spec, field), field
    if parsed.reencode == "explicit-vr-le":
        assert again.restore_mode == RESTORE_BYTE_EXACT
        assert again.spec.photometric == parsed.spec.photometric
    return rebuilt


# --------------------------------------------------------------------------------------
# Every reference file

# What the reference files must give (the rest only need to satisfy the generic checks).
EXPECTED = {
    "MR_small.dcm": RESTORE_BYTE_EXACT,
    "MR_small_implicit.dcm": RESTORE_BYTE_EXACT,
    "MR_small_bigendian.dcm": RESTORE_BYTE_EXACT,
    "MR_small_padded.dcm": RESTORE_BYTE_EXACT,
    "emri_small_big_endian.dcm": RESTORE_BYTE_EXACT,
    "OT-PAL-8-face.dcm": RESTORE_BYTE_EXACT,  # headerless implicit VR LE
    "SC_rgb_small_odd.dcm": RESTORE_BYTE_EXACT,
    "SC_rgb_small_odd_big_endian.dcm": RESTORE_BYTE_EXACT,
    "color-pl.dcm": RESTORE_BYTE_EXACT,
    "MR_small_RLE.dcm": (RESTORE_PIXEL_EXACT, "original-syntax"),
    "emri_small_RLE.dcm": (RESTORE_PIXEL_EXACT, "original-syntax"),
    "MR_small_jpeg_ls_lossless.dcm": (RESTORE_PIXEL_EXACT, "original-syntax"),
    "emri_small_jpeg_ls_lossless.dcm": (RESTORE_PIXEL_EXACT, "original-syntax"),
    "MR_small_jp2klossless.dcm": (RESTORE_PIXEL_EXACT, "original-syntax"),
    "US1_J2KR.dcm": (RESTORE_PIXEL_EXACT, "original-syntax"),
    "JPEG-LL.dcm": (RESTORE_PIXEL_EXACT, "explicit-vr-le"),
    "SC_rgb_jpeg_gdcm.dcm": (RESTORE_PIXEL_EXACT, "explicit-vr-le"),
    "SC_rgb_jpeg_dcmtk.dcm": RESTORE_VERBATIM,  # lossy JPEG baseline
    "JPEG2000.dcm": RESTORE_VERBATIM,  # .91 may be lossy
    "JPEGLSNearLossless_08.dcm": RESTORE_VERBATIM,
    "JPGExtended.dcm": RESTORE_VERBATIM,
    "image_dfl.dcm": RESTORE_VERBATIM,  # deflated
    "liver.dcm": RESTORE_VERBATIM,  # 1-bit packed
    "rtdose.dcm": RESTORE_VERBATIM,  # 32-bit
    "SC_rgb_rle_32bit.dcm": RESTORE_VERBATIM,
    "SC_ybr_full_422_uncompressed.dcm": RESTORE_VERBATIM,
    "rtplan.dcm": RESTORE_VERBATIM,  # no PixelData
    "waveform_ecg.dcm": RESTORE_VERBATIM,
    "MR_truncated.dcm": InvalidDicomError,
    "rtplan_truncated.dcm": InvalidDicomError,
    "emri_small_jpeg_2k_lossless_too_short.dcm": InvalidDicomError,
    "no_meta.dcm": InvalidDicomError,  # a stray leading byte: not a dataset
    "zipMR.gz": InvalidDicomError,
    "crayons.icc": InvalidDicomError,
    "test1.json": InvalidDicomError,
}


@pytest.mark.parametrize("path", [p for _, p in TESTDATA], ids=[n for n, _ in TESTDATA])
def test_reference_file_restores(path):
    with open(path, "rb") as fh:
        data = fh.read()
    expected = EXPECTED.get(os.path.basename(path))
    try:
        parsed = parse_dicom(data)
    except MedcodecError as exc:
        assert expected is None or expected is type(exc), f"unexpected {type(exc).__name__}: {exc}"
        assert "\n" not in str(exc)
        return
    assert not (isinstance(expected, type) and issubclass(expected, Exception)), parsed.note
    _assert_consistent(parsed)
    if isinstance(expected, tuple):
        assert (parsed.restore_mode, parsed.reencode) == expected, parsed.note
    elif expected is not None:
        assert parsed.restore_mode == expected, parsed.note
    if parsed.restore_mode == RESTORE_PIXEL_EXACT:
        _check_pixel_exact_restore(parsed, data)
    else:
        assert _sha256(rebuild_dicom(parsed)) == _sha256(data)
    assert is_dicom(data)


def test_reference_corpus_summary():
    """At least 100 reference files are taken apart; print the split by mode and syntax."""
    modes: collections.Counter[str] = collections.Counter()
    syntaxes: collections.Counter[tuple[str, str]] = collections.Counter()
    for _, path in TESTDATA:
        with open(path, "rb") as fh:
            data = fh.read()
        try:
            parsed = parse_dicom(data)
        except MedcodecError as exc:
            modes[type(exc).__name__] += 1
            continue
        modes[parsed.restore_mode] += 1
        ts = parsed.spec.transfer_syntax if parsed.spec else "-"
        syntaxes[(parsed.restore_mode, ts)] += 1
    print("\nrestore modes:", dict(modes))
    for (mode, ts), count in sorted(syntaxes.items()):
        print(f"  {mode:12s} {ts:26s} {count}")
    exercised = modes[RESTORE_BYTE_EXACT] + modes[RESTORE_PIXEL_EXACT] + modes[RESTORE_VERBATIM]
    assert exercised > 100
    assert modes[RESTORE_BYTE_EXACT] >= 80
    assert modes[RESTORE_PIXEL_EXACT] >= 20
    assert set(modes) <= {RESTORE_BYTE_EXACT, RESTORE_PIXEL_EXACT, RESTORE_VERBATIM,
                          "InvalidDicomError", "UnsupportedError", "LimitExceededError"}


# --------------------------------------------------------------------------------------
# The same image in several syntaxes decodes to the same words

CROSS_SYNTAX = [
    ("MR_small.dcm", "MR_small_RLE.dcm"),
    ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
    ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
    ("MR_small.dcm", "MR_small_bigendian.dcm"),
    ("MR_small.dcm", "MR_small_expb.dcm"),
    ("MR_small.dcm", "MR_small_implicit.dcm"),
    ("MR_small.dcm", "MR_small_padded.dcm"),
    ("emri_small.dcm", "emri_small_RLE.dcm"),
    ("emri_small.dcm", "emri_small_big_endian.dcm"),
    ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm"),
    ("emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm"),
    ("SC_rgb.dcm", "SC_rgb_rle.dcm"),
    ("SC_rgb.dcm", "SC_rgb_expb.dcm"),
    ("SC_rgb.dcm", "SC_rgb_jpeg_gdcm.dcm"),
    ("SC_rgb.dcm", "SC_rgb_gdcm2k_uncompressed.dcm"),
    ("SC_rgb_2frame.dcm", "SC_rgb_rle_2frame.dcm"),
    ("SC_rgb_2frame.dcm", "SC_rgb_expb_2frame.dcm"),
    ("SC_rgb_16bit.dcm", "SC_rgb_rle_16bit.dcm"),
    ("SC_rgb_16bit.dcm", "SC_rgb_expb_16bit.dcm"),
    ("SC_rgb_16bit_2frame.dcm", "SC_rgb_rle_16bit_2frame.dcm"),
    ("SC_rgb_16bit_2frame.dcm", "SC_rgb_expb_16bit_2frame.dcm"),
    ("SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm"),
    ("US1_UNCR.dcm", "US1_J2KR.dcm"),  # YBR_RCT decodes to RGB
    ("US1_UNCR.dcm", "examples_jpeg2k.dcm"),
    ("RG1_UNCR.dcm", "RG1_J2KR.dcm"),
    ("RG3_UNCR.dcm", "RG3_J2KR.dcm"),
    ("MR2_UNCR.dcm", "MR2_J2KR.dcm"),
    ("693_UNCR.dcm", "693_J2KR.dcm"),  # signed 14-bit
    ("OBXXXX1A.dcm", "OBXXXX1A_rle.dcm"),
    ("OBXXXX1A.dcm", "OBXXXX1A_expb.dcm"),
    ("OBXXXX1A_2frame.dcm", "OBXXXX1A_rle_2frame.dcm"),
    ("OBXXXX1A_2frame.dcm", "OBXXXX1A_expb_2frame.dcm"),
    ("gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm"),
    ("color-px.dcm", "color-pl.dcm"),  # planar configuration 0 vs 1
]


@pytest.mark.parametrize("native,other", CROSS_SYNTAX, ids=[o for _, o in CROSS_SYNTAX])
def test_same_image_in_other_syntax_gives_same_words(native, other):
    ref = parse_dicom(_read(native))
    got = parse_dicom(_read(other))
    assert ref.restore_mode == RESTORE_BYTE_EXACT
    assert got.restore_mode in (RESTORE_BYTE_EXACT, RESTORE_PIXEL_EXACT)
    assert got.frames.shape == ref.frames.shape
    # Only the stored bits carry the image: native files may hold anything above them.
    mask = (1 << ref.spec.bits_stored) - 1
    assert np.array_equal(got.frames & mask, ref.frames & mask)


@pytest.mark.parametrize(
    "name", ["MR_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"]
)
def test_jpeg_ls_plugins_agree_with_parse(name):
    """Both JPEG-LS decoders (libjpeg and CharLS/pyjpegls) give the parsed words."""
    data = _read(name)
    parsed = parse_dicom(data)
    ds = pydicom.dcmread(io.BytesIO(data))
    for plugin in ("pylibjpeg", "pyjpegls"):
        frames = [
            arr for arr, _ in get_decoder(JPEGLSLossless).iter_array(
                ds, raw=True, decoding_plugin=plugin
            )
        ]
        words = np.stack(frames).astype(np.int64) & ((1 << parsed.spec.bits_allocated) - 1)
        assert np.array_equal(words.reshape(parsed.frames.shape), parsed.frames), plugin


# --------------------------------------------------------------------------------------
# Native syntaxes: synthetic edge cases


def test_odd_length_8bit_keeps_pad_byte():
    pixels = bytes(range(1, 10))  # 3x3, odd: pydicom pads with one byte
    data = _make_dicom(pixels, **_image_attrs(3, 3, bits_allocated=8))
    parsed = parse_dicom(data)
    assert parsed.restore_mode == RESTORE_BYTE_EXACT
    assert parsed.frames.ravel().tolist() == list(range(1, 10))
    assert parsed.extra == b"\x00"
    assert rebuild_dicom(parsed) == data


def test_bits_above_bits_stored_are_kept():
    rng = np.random.default_rng(1)
    words = rng.integers(0, 2**16, size=(4, 5), dtype=np.uint16)  # garbage above bit 11
    data = _make_dicom(words.astype("<u2").tobytes(), **_image_attrs(4, 5, bits_stored=12))
    parsed = parse_dicom(data)
    assert np.array_equal(parsed.frames[0, 0], words)
    assert parsed.spec.bits_stored == 12 and parsed.spec.high_bit == 11
    assert rebuild_dicom(parsed) == data


def test_signed_12bit_is_the_unsigned_view_of_the_word():
    values = np.array([[-2048, -1, 0], [1, 2047, -300]], dtype=np.int16)
    attrs = _image_attrs(2, 3, bits_stored=12, signed=1)
    data = _make_dicom(values.astype("<i2").tobytes(), **attrs)
    parsed = parse_dicom(data)
    assert parsed.spec.signed
    assert np.array_equal(parsed.frames[0, 0], values.view(np.uint16))
    assert rebuild_dicom(parsed) == data


def test_big_endian_16bit_words_are_native_values():
    values = np.array([[1, 256, 0x1234], [0xFFFF, 2, 3]], dtype=np.uint16)
    data = _make_dicom(values.astype(">u2").tobytes(), ts=ExplicitVRBigEndian, **_image_attrs(2, 3))
    parsed = parse_dicom(data)
    assert parsed.spec.big_endian and parsed.spec.transfer_syntax == ExplicitVRBigEndian
    assert np.array_equal(parsed.frames[0, 0], values)
    assert rebuild_dicom(parsed) == data


def test_big_endian_8bit_ow_is_byte_swapped_in_pairs():
    # Pixels 1 2 3 (+pad 0) stored as OW big endian: 2 1 0 3
    data = _make_dicom(bytes([2, 1, 0, 3]), ts=ExplicitVRBigEndian, pixel_vr="OW",
                       **_image_attrs(1, 3, bits_allocated=8))
    parsed = parse_dicom(data)
    assert parsed.frames.ravel().tolist() == [1, 2, 3]
    assert parsed.extra == b"\x00"
    assert rebuild_dicom(parsed) == data


@pytest.mark.parametrize("planar", [0, 1])
def test_rgb_planar_configuration(planar):
    rng = np.random.default_rng(planar)
    rgb = rng.integers(0, 256, size=(2, 3, 4, 3), dtype=np.uint8)  # frames, rows, cols, samples
    stored = rgb if planar == 0 else rgb.transpose(0, 3, 1, 2)
    data = _make_dicom(np.ascontiguousarray(stored).tobytes(),
                       **_image_attrs(3, 4, frames=2, samples=3, bits_allocated=8, planar=planar))
    parsed = parse_dicom(data)
    assert parsed.frames.shape == (2, 3, 3, 4)
    assert np.array_equal(parsed.frames, rgb.transpose(0, 3, 1, 2))
    assert rebuild_dicom(parsed) == data


def test_multiframe_implicit_vr():
    frames = np.arange(3 * 4 * 4, dtype=np.uint16).reshape(3, 4, 4) * 7
    data = _make_dicom(frames.tobytes(), ts=ImplicitVRLittleEndian, **_image_attrs(4, 4, frames=3))
    parsed = parse_dicom(data)
    assert parsed.spec.transfer_syntax == ImplicitVRLittleEndian and parsed.spec.frames == 3
    assert np.array_equal(parsed.frames[:, 0], frames)
    assert rebuild_dicom(parsed) == data


def test_icon_image_pixel_data_is_not_the_top_level_one():
    icon = Dataset()
    icon.update(_image_attrs(2, 2, bits_allocated=8))
    icon.PixelData = b"\xee" * 4
    top = np.full((3, 3), 5, dtype=np.uint16)
    data = _make_dicom(top.tobytes(), IconImageSequence=[icon], **_image_attrs(3, 3))
    parsed = parse_dicom(data)
    assert np.array_equal(parsed.frames[0, 0], top)
    assert b"\xee" * 4 in parsed.prefix
    assert rebuild_dicom(parsed) == data


def test_trailing_elements_go_to_suffix():
    data = _make_dicom(bytes(8), **_image_attrs(2, 2))
    trailer = b"\xfc\xff\xfc\xffOB\x00\x00\x04\x00\x00\x00abcd"  # (FFFC,FFFC) padding
    parsed = parse_dicom(data + trailer)
    assert parsed.suffix == trailer
    assert rebuild_dicom(parsed) == data + trailer


def test_extra_bytes_beyond_declared_frames_are_kept():
    data = _make_dicom(bytes(range(12)), **_image_attrs(2, 2))  # needs 8, holds 12
    parsed = parse_dicom(data)
    assert parsed.extra == bytes(range(8, 12))
    assert rebuild_dicom(parsed) == data


def test_float_pixel_data_is_verbatim():
    data = _make_dicom(None, FloatPixelData=np.zeros(4, "<f4").tobytes(),
                       **_image_attrs(2, 2, bits_allocated=32))
    parsed = parse_dicom(data)
    assert parsed.restore_mode == RESTORE_VERBATIM and "Float" in parsed.note
    assert rebuild_dicom(parsed) == data


def test_keep_codestream_keeps_compressed_files_only():
    rle = _read("MR_small_RLE.dcm")
    parsed = parse_dicom(rle, keep_codestream=True)
    assert parsed.restore_mode == RESTORE_VERBATIM and "keep_codestream" in parsed.note
    assert rebuild_dicom(parsed) == rle
    native = _read("MR_small.dcm")
    assert parse_dicom(native, keep_codestream=True).restore_mode == RESTORE_BYTE_EXACT


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    frames=st.integers(1, 3),
    samples=st.sampled_from([1, 3]),
    bits_allocated=st.sampled_from([8, 16]),
    planar=st.sampled_from([0, 1]),
    ts=st.sampled_from([ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]),
    seed=st.integers(0, 2**32 - 1),
)
def test_native_round_trip_property(rows, cols, frames, samples, bits_allocated, planar, ts, seed):
    dtype = np.uint8 if bits_allocated == 8 else np.uint16
    words = np.random.default_rng(seed).integers(
        0, 2**bits_allocated, size=(frames, samples, rows, cols), dtype=dtype
    )
    stored = words.transpose(0, 2, 3, 1) if (samples > 1 and planar == 0) else words
    order = ">" if ts == ExplicitVRBigEndian else "<"
    raw = np.ascontiguousarray(stored).astype(np.dtype(dtype).newbyteorder(order)).tobytes()
    data = _make_dicom(raw, ts=ts, **_image_attrs(rows, cols, frames=frames, samples=samples,
                                                  bits_allocated=bits_allocated, planar=planar))
    parsed = parse_dicom(data)
    assert parsed.restore_mode == RESTORE_BYTE_EXACT
    assert np.array_equal(parsed.frames, words)
    assert rebuild_dicom(parsed) == data


# --------------------------------------------------------------------------------------
# Lossless compressed syntaxes: synthetic edge cases


def _compressed(uid: str, frames: np.ndarray, attrs: dict, *, plugin: str = "", **options) -> bytes:
    """Encode ``frames`` (pydicom array layout) with pydicom and return the file bytes."""
    encoder = get_encoder(uid)
    opts = dict(
        rows=attrs["Rows"], columns=attrs["Columns"], samples_per_pixel=attrs["SamplesPerPixel"],
        bits_allocated=attrs["BitsAllocated"], bits_stored=attrs["BitsStored"],
        pixel_representation=attrs["PixelRepresentation"],
        photometric_interpretation=attrs["PhotometricInterpretation"], number_of_frames=1,
    )
    opts.update(options)
    encoded = [encoder.encode(f, encoding_plugin=plugin, **opts) for f in frames]
    value = encapsulate(encoded, has_bot=len(encoded) > 1)
    return _make_dicom(value, ts=uid, pixel_vr="OB", **attrs)


@pytest.mark.parametrize("bits_allocated,bits_stored", [(16, 12), (16, 10), (8, 6), (16, 16)])
def test_jpeg_ls_signed_is_sign_extended_and_reencoded(bits_allocated, bits_stored):
    rng = np.random.default_rng(bits_stored)
    lo, hi = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1)
    signed = np.int8 if bits_allocated == 8 else np.int16
    values = rng.integers(lo, hi, size=(2, 16, 12)).astype(signed)
    values[0, 0, :2] = (lo, hi - 1)
    attrs = _image_attrs(16, 12, frames=2, bits_allocated=bits_allocated,
                         bits_stored=bits_stored, signed=1)
    data = _compressed(JPEGLSLossless, values, attrs, plugin="pyjpegls")
    parsed = parse_dicom(data)
    assert (parsed.restore_mode, parsed.reencode) == (RESTORE_PIXEL_EXACT, "original-syntax")
    unsigned = np.uint8 if bits_allocated == 8 else np.uint16
    assert np.array_equal(parsed.frames[:, 0], values.view(unsigned))
    _check_pixel_exact_restore(parsed, data)
    ds = pydicom.dcmread(io.BytesIO(data))
    for plugin in ("pylibjpeg", "pyjpegls"):
        decoded = np.stack([a for a, _ in get_decoder(JPEGLSLossless).iter_array(
            ds, raw=True, decoding_plugin=plugin)])
        assert np.array_equal(decoded, values), plugin


def test_rle_keeps_bits_above_bits_stored():
    rng = np.random.default_rng(7)
    words = rng.integers(0, 2**16, size=(2, 8, 8), dtype=np.uint16)
    attrs = _image_attrs(8, 8, frames=2, bits_stored=12)
    # RLE codes whole words: encode as 16 stored bits, declare 12 in the header.
    data = _compressed(RLELossless, words, {**attrs, "BitsStored": 16}, validate=False)
    bits_stored = b"\x28\x00\x01\x01US\x02\x00"  # (0028,0101) US, 2 bytes; HighBit is 11
    assert bits_stored + b"\x10\x00" in data
    data = data.replace(bits_stored + b"\x10\x00", bits_stored + b"\x0c\x00")
    parsed = parse_dicom(data)
    assert parsed.spec.bits_stored == 12
    assert (parsed.restore_mode, parsed.reencode) == (RESTORE_PIXEL_EXACT, "original-syntax")
    assert np.array_equal(parsed.frames[:, 0], words)
    _check_pixel_exact_restore(parsed, data)


def test_jpeg2000_ybr_rct_decodes_to_rgb():
    parsed = parse_dicom(_read("US1_J2KR.dcm"))
    assert parsed.spec.photometric == "RGB"
    rebuilt = rebuild_dicom(parsed)
    assert pydicom.dcmread(io.BytesIO(rebuilt)).PhotometricInterpretation == "YBR_RCT"


def test_jpeg_lossless_restores_as_explicit_vr_le():
    data = _read("JPEG-LL.dcm")
    parsed = parse_dicom(data)
    rebuilt = _check_pixel_exact_restore(parsed, data)
    ds = pydicom.dcmread(io.BytesIO(rebuilt))
    assert ds["PixelData"].VR == "OW" and len(ds.PixelData) == parsed.frames.nbytes


def test_extended_offset_table_forces_explicit_vr_le():
    words = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    attrs = _image_attrs(8, 8, frames=2)
    opts = dict(rows=8, columns=8, samples_per_pixel=1, bits_allocated=16, bits_stored=16,
                pixel_representation=0, photometric_interpretation="MONOCHROME2",
                number_of_frames=1)
    encoded = [get_encoder(RLELossless).encode(f, **opts) for f in words]
    value, offsets, lengths = encapsulate_extended(encoded)
    data = _make_dicom(value, ts=RLELossless, pixel_vr="OB", ExtendedOffsetTable=offsets,
                       ExtendedOffsetTableLengths=lengths, **attrs)
    parsed = parse_dicom(data)
    assert (parsed.restore_mode, parsed.reencode) == (RESTORE_PIXEL_EXACT, "explicit-vr-le")
    rebuilt = _check_pixel_exact_restore(parsed, data)
    ds = pydicom.dcmread(io.BytesIO(rebuilt))
    assert "ExtendedOffsetTable" not in ds and "ExtendedOffsetTableLengths" not in ds


def test_htj2k_lossless_is_decoded():
    imagecodecs = pytest.importorskip("imagecodecs")
    if not getattr(imagecodecs.HTJ2K, "available", False):
        pytest.skip("imagecodecs built without HTJ2K")
    words = np.random.default_rng(3).integers(0, 4096, size=(64, 48), dtype=np.uint16)
    codestream = imagecodecs.htj2k_encode(words, reversible=True)
    data = _make_dicom(encapsulate([codestream], has_bot=False), ts=HTJ2KLossless, pixel_vr="OB",
                       **_image_attrs(64, 48, bits_stored=12))
    parsed = parse_dicom(data)
    assert (parsed.restore_mode, parsed.reencode) == (RESTORE_PIXEL_EXACT, "explicit-vr-le")
    assert parsed.spec.transfer_syntax == HTJ2KLossless
    assert np.array_equal(parsed.frames[0, 0], words)
    _check_pixel_exact_restore(parsed, data)


def test_more_frames_claimed_than_encoded_is_invalid():
    words = np.zeros((1, 8, 8), dtype=np.uint16)
    data = _compressed(RLELossless, words, _image_attrs(8, 8, frames=3))
    with pytest.raises(InvalidDicomError, match="claims 3 frames"):
        parse_dicom(data)


def test_corrupt_codestream_is_kept_verbatim():
    data = bytearray(_read("MR_small_jp2klossless.dcm"))
    start = len(parse_dicom(bytes(data)).prefix)
    data[start + 60 : start + 400] = bytes(340)  # wipe the J2K main header past the image size
    parsed = parse_dicom(bytes(data))
    assert parsed.restore_mode == RESTORE_VERBATIM and "decoding failed" in parsed.note
    assert rebuild_dicom(parsed) == bytes(data)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm",
                                  "SC_rgb_jpeg_gdcm.dcm"])
def test_mangled_codestreams_never_escape(name):
    """Decoders (some written in Rust, which panic) never leak a non-medcodec error."""
    original = _read(name)
    start = len(parse_dicom(original).prefix)
    rng = np.random.default_rng(len(name))
    for _ in range(25):
        data = bytearray(original)
        for pos in rng.integers(start, len(data) - 8, size=3):
            data[pos] = int(rng.integers(0, 256))
        try:
            parsed = parse_dicom(bytes(data))
        except MedcodecError:
            continue
        rebuilt = rebuild_dicom(parsed)
        if parsed.restore_mode == RESTORE_PIXEL_EXACT:
            assert np.array_equal(parse_dicom(rebuilt).frames, parsed.frames)
        else:
            assert rebuilt == bytes(data)


def test_jpeg2000_lossless_is_reencoded_and_verified():
    parsed = parse_dicom(_read("MR_small_jp2klossless.dcm"))
    assert parsed.reencode == "original-syntax" and "verified" in parsed.note


_CONCURRENT_PARSES = """
import sys, threading, time
from medcodec.dicom import parse_dicom
data = open(sys.argv[1], "rb").read()
first = parse_dicom(data)
stop = time.monotonic() + float(sys.argv[2])
seen = []
def work():
    while time.monotonic() < stop:
        parsed = parse_dicom(data)
        seen.append((parsed.reencode, parsed.note, parsed.frames.tobytes() == first.frames.tobytes()))
threads = [threading.Thread(target=work) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(len(seen), set(seen) == {(first.reencode, first.note, True)})
"""


@pytest.mark.slow
def test_jpeg2000_files_parse_in_two_threads_at_once():
    """A local run's worker threads parse (and so re-encode) JPEG 2000 files at the same
    time. pylibjpeg-openjpeg's encoder crashed the process when two threads ran it at once
    (in 4 of 5 runs of this script without ``encapsulation._ENCODE_TURNS``, 2026-12-08);
    the process must live, and every parse agree with the first."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _CONCURRENT_PARSES, pydicom_file("693_J2KR.dcm"), "6"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    count, agree = result.stdout.split()
    assert int(count) >= 10 and agree == "True", result.stdout


# --------------------------------------------------------------------------------------
# Errors


def _assert_no_phi(exc: BaseException) -> None:
    message = str(exc)
    assert PATIENT_NAME not in message and "Secret" not in message and PATIENT_ID not in message
    assert "\n" not in message


def test_empty_input():
    with pytest.raises(InvalidDicomError, match="not a DICOM file"):
        parse_dicom(b"")


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(seed):
    data = np.random.default_rng(seed).integers(0, 256, size=2000, dtype=np.uint8).tobytes()
    with pytest.raises(InvalidDicomError, match="not a DICOM file"):
        parse_dicom(data)
    assert not is_dicom(data)


def test_random_bytes_that_start_like_a_dataset():
    data = b"\x08\x00\x05\x00CS\x0a\x00" + np.random.default_rng(9).integers(
        0, 256, size=500, dtype=np.uint8).tobytes()
    with pytest.raises(InvalidDicomError, match="not a DICOM file"):
        parse_dicom(data)


@pytest.mark.parametrize(
    "where", ["meta", "header-element", "pixel-header", "pixel-value", "last-byte"]
)
@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
                                  "MR_small_jp2klossless.dcm"])
def test_truncated_file(name, where):
    data = _read(name)
    value_start = len(parse_dicom(data).prefix)
    cut = {
        "meta": 140,
        "header-element": 400,
        "pixel-header": value_start - 3,
        "pixel-value": value_start + 11,
        "last-byte": len(data) - 1,
    }[where]
    with pytest.raises(InvalidDicomError, match="truncated|claims"):
        parse_dicom(data[:cut])


def test_rows_columns_claim_more_than_present():
    data = _make_dicom(bytes(100), **_image_attrs(10, 10))  # needs 200 bytes
    with pytest.raises(InvalidDicomError, match="claims") as info:
        parse_dicom(data)
    _assert_no_phi(info.value)


@pytest.mark.parametrize("attrs,match", [
    ({"Rows": 0}, "Rows"),
    ({"Columns": 0}, "Columns"),
    ({"NumberOfFrames": "0"}, "NumberOfFrames"),
    ({"NumberOfFrames": "x1"}, "NumberOfFrames"),
])
def test_bad_geometry(attrs, match):
    if attrs.get("NumberOfFrames") == "x1":  # pydicom refuses to write it: patch the bytes
        data = _make_dicom(bytes(8), **{**_image_attrs(2, 2), "NumberOfFrames": "11"})
        element = b"\x28\x00\x08\x00IS\x02\x0011"
        assert element in data
        data = data.replace(element, element[:-2] + b"x1")
    else:
        data = _make_dicom(bytes(8), **{**_image_attrs(2, 2), **attrs})
    with pytest.raises(InvalidDicomError, match=match) as info:
        parse_dicom(data)
    _assert_no_phi(info.value)


def test_missing_rows_with_pixel_data():
    attrs = _image_attrs(2, 2)
    del attrs["Rows"]
    with pytest.raises(InvalidDicomError, match="Rows"):
        parse_dicom(_make_dicom(bytes(8), **attrs))


def test_number_of_frames_absent_means_one():
    parsed = parse_dicom(_make_dicom(bytes(8), **_image_attrs(2, 2)))
    assert parsed.spec.frames == 1


def test_huge_dimensions_hit_limits_before_anything_is_read():
    data = _make_dicom(bytes(8), **_image_attrs(60000, 60000, frames=100_000))
    with pytest.raises(LimitExceededError, match="max_samples") as info:
        parse_dicom(data)
    _assert_no_phi(info.value)
    data = _make_dicom(bytes(8), **_image_attrs(2, 2, frames=100_001))
    with pytest.raises(LimitExceededError, match="max_frames"):
        parse_dicom(data)


@pytest.mark.parametrize("limits,match", [
    (DicomLimits(max_rows=32), "max_rows"),
    (DicomLimits(max_cols=32), "max_cols"),
    (DicomLimits(max_samples=1000), "max_samples"),
])
@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_RLE.dcm"])
def test_configured_limits(name, limits, match):
    with pytest.raises(LimitExceededError, match=match):
        parse_dicom(_read(name), limits=limits)


def test_unknown_transfer_syntax():
    data = _make_dicom(bytes(8), ts="1.2.3.4.5.6", implicit_vr=False, little_endian=True,
                       **_image_attrs(2, 2))
    with pytest.raises(UnsupportedError, match=r"1\.2\.3\.4\.5\.6") as info:
        parse_dicom(data)
    _assert_no_phi(info.value)


def test_errors_are_medcodec_errors_for_mangled_headers():
    data = _read("MR_small.dcm")
    rng = np.random.default_rng(11)
    for _ in range(40):
        mangled = bytearray(data)
        for pos in rng.integers(132, 1500, size=4):
            mangled[pos] = int(rng.integers(0, 256))
        try:
            parsed = parse_dicom(bytes(mangled))
        except MedcodecError as exc:
            _assert_no_phi(exc)
            continue
        assert rebuild_dicom(parsed) == bytes(mangled) or parsed.restore_mode == RESTORE_PIXEL_EXACT


# --------------------------------------------------------------------------------------
# is_dicom


def test_is_dicom():
    assert is_dicom(_read("MR_small.dcm"))
    assert is_dicom(_read("OT-PAL-8-face.dcm"))  # headerless
    assert not is_dicom(b"")
    assert not is_dicom(_read("test1.json"))
    assert not is_dicom(_read("zipMR.gz"))
    assert not is_dicom(b"\x00" * 200)


def test_quiet_pydicom_silences_loggers_made_after_it_listed_them(caplog):
    """``quiet_pydicom`` lists pydicom's loggers once and again when logging's registry
    changes: a logger made since (a new name), and a name that was only a placeholder (a
    logger's parent) and has become a logger, are silenced too."""
    import logging

    from medcodec.dicom.quiet import quiet_pydicom

    with quiet_pydicom():
        pass  # pydicom's loggers listed
    leaf = logging.getLogger("pydicom.medarchive_quiet_test.parent.leaf")  # parents: placeholders
    with caplog.at_level(logging.WARNING):
        with quiet_pydicom():
            leaf.warning("leaf")
        parent = logging.getLogger("pydicom.medarchive_quiet_test.parent")  # a placeholder no more
        with quiet_pydicom():
            parent.warning("parent")
            leaf.warning("leaf again")
        parent.warning("outside")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("pydicom.medarchive_quiet_test")] == [
        "outside"]


# The frame the DICOM fuzzer found (2026-12-07): a JPEG-LS codestream whose frame header
# declares 0 lines, in a JPEG Lossless SV1 file of 45 x 10. pylibjpeg-libjpeg read it by
# allocating line after line (1.8 GB in 6 s, without end).
_ZERO_LINES_JPEG_LS = bytes.fromhex(
    "ffd8fff7000b08000000" "0a01011100" "ffda000801010002 0000".replace(" ", "")
    + "57fdff7f00000071ff7fe0b7ff7c1cff7f052ffbe097ff7fc117fdff40ffd9")


def test_frame_headers_are_read_as_the_standards_lay_them_out():
    from medcodec.dicom.encapsulation import j2k_frame_geometry, jpeg_frame_geometry

    assert jpeg_frame_geometry(_ZERO_LINES_JPEG_LS) == (0, 10, 1)
    words = np.arange(6 * 5, dtype=np.uint16).reshape(6, 5) * 7
    attrs = _image_attrs(6, 5, bits_stored=12)
    ls = get_encoder(JPEGLSLossless).encode(
        words, rows=6, columns=5, samples_per_pixel=1, bits_allocated=16, bits_stored=12, pixel_representation=0,
        photometric_interpretation=attrs["PhotometricInterpretation"], number_of_frames=1)
    assert jpeg_frame_geometry(ls) == (6, 5, 1)
    assert jpeg_frame_geometry(ls[:2] + b"\xff\xff" + ls[2:]) == (6, 5, 1)  # fill bytes before a marker
    assert jpeg_frame_geometry(ls[:2] + b"\xff\xfe\x00\x05abc" + ls[2:]) == (6, 5, 1)  # a comment segment first
    at = ls.index(b"\xff\xf7")
    assert jpeg_frame_geometry(ls[: at + 6]) is None  # cut inside the frame header
    assert jpeg_frame_geometry(ls[2:]) is None  # no SOI
    assert jpeg_frame_geometry(b"\xff\xd8" + ls[ls.index(b"\xff\xda"):]) is None  # a scan before any frame header
    assert jpeg_frame_geometry(b"\xff\xd8\xff\xfe\x00\x01") is None  # a segment length under 2

    data = _read("MR_small_jp2klossless.dcm")
    parsed = parse_dicom(data)
    codestream = data[len(parsed.prefix):]
    codestream = codestream[codestream.index(b"\xff\x4f\xff\x51"):]
    assert j2k_frame_geometry(codestream) == (64, 64, 1)
    jp2 = (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x14ftypjp2 \x00\x00\x00\x00jp2 "
           + (8 + len(codestream)).to_bytes(4, "big") + b"jp2c" + codestream)
    assert j2k_frame_geometry(jp2) == (64, 64, 1)
    assert j2k_frame_geometry(codestream[2:]) is None and j2k_frame_geometry(codestream[:30]) is None


def _never_decoded(monkeypatch):
    from medcodec.dicom import encapsulation

    def refuse(*args, **kwargs):
        pytest.fail("a frame declaring other dimensions than the header was handed to a decoder")
    monkeypatch.setattr(encapsulation, "_decode_with", refuse)


def test_a_frame_declaring_no_lines_is_kept_verbatim_undecoded(monkeypatch):
    data = _make_dicom(encapsulate([_ZERO_LINES_JPEG_LS], has_bot=False), ts="1.2.840.10008.1.2.4.70", pixel_vr="OB",
                       **_image_attrs(45, 10, bits_allocated=8, bits_stored=7))
    _never_decoded(monkeypatch)
    parsed = parse_dicom(data)
    assert parsed.restore_mode == RESTORE_VERBATIM
    assert "declares 0 x 10 x 1 (rows x columns x samples), the header 45 x 10 x 1" in parsed.note
    assert rebuild_dicom(parsed) == data


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "JPEG-LL.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_gdcm.dcm"])
def test_a_frame_declaring_other_dimensions_is_kept_verbatim_undecoded(name, monkeypatch):
    ds = pydicom.dcmread(pydicom_file(name))
    ds.Rows = ds.Rows - 1  # the codestream still says Rows
    buf = io.BytesIO()
    ds.save_as(buf)
    data = buf.getvalue()
    _never_decoded(monkeypatch)
    parsed = parse_dicom(data)
    assert parsed.restore_mode == RESTORE_VERBATIM and "codestream declares" in parsed.note
    assert rebuild_dicom(parsed) == data
