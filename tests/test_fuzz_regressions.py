"""Regression tests for what the fuzz harnesses (tests/fuzz/) found, one construction each.

Every failure a user can cause is a MedcodecError with one line that quotes no record
content, header value or key material; see tests/test_fuzz.py for the harnesses' pass.
"""

import io
import json
import lzma
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

import medcodec
from medcodec import container as ct
from medcodec import crypto, sealing
from medcodec.entropy import Decoder

from conftest import pydicom_bytes, pydicom_file

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
PLANT = "ZEBRA^FISH Q"  # not an identifier: never to be quoted


def _ring():
    return crypto.Keyring.load(GOLDEN / "test-keyring.json", check_permissions=False)


@pytest.fixture(scope="module")
def pixels_blob():
    return medcodec.compress_pixels((np.arange(64, dtype=np.uint8) * 3).reshape(8, 8), bits_stored=8, signed=False,
                                    preset="fast")


@pytest.fixture(scope="module")
def dicom_blob():
    return medcodec.compress_dicom(pydicom_bytes("MR_small.dcm"), preset="fast")


@pytest.fixture(scope="module")
def keyed_blob():
    return (GOLDEN / "v1.0_dicom_keyed_CT_small.mdc").read_bytes()


def _edited(blob: bytes, edit) -> bytes:
    """The record with ``edit(config)`` applied, re-serialised with valid checksums."""
    record = ct.read_record(blob)
    config = json.loads(json.dumps(record.config))
    edit(config)
    return ct.write_record(ct.Record(config=config, sections=record.sections))


def _one_line_error(call, *args, planted: str = PLANT, **kwargs) -> medcodec.MedcodecError:
    with pytest.raises(medcodec.MedcodecError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 500, message
    assert planted not in message and "\\x" not in message, message
    return info.value


def _set(path, value):
    def edit(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


# --------------------------------------------------------------------------------------
# fuzz_records: a record's config values were quoted into messages as they were (repr), so a
# crafted record put any text (control characters, a name) into a user's log line.


@pytest.mark.parametrize("path, value, error", [
    (("pixels", "codec_id"), f"medcodec.{PLANT}", medcodec.UnsupportedError),
    (("pixels", "global_model"), PLANT, medcodec.ModelMismatchError),
    (("pixels", "local_model"), "native Implicit VR Little Endian " + PLANT, medcodec.ModelMismatchError),
    (("pixels", "preset"), "m!\x1e" + PLANT, medcodec.UnsupportedError),
    (("pixels", "format", PLANT), 1, medcodec.CorruptRecordError),  # SampleFormat's unexpected keyword
    (("pixels", "format", "bits_allocated"), PLANT, medcodec.CorruptRecordError),
    (("array", "dtype"), "u\x12" + PLANT, medcodec.CorruptRecordError),
    (("kind",), "pixels\x00\x02" + PLANT, medcodec.UnsupportedError),
])
def test_pixel_record_config_values_are_not_quoted(pixels_blob, path, value, error):
    crafted = _edited(pixels_blob, _set(path, value))
    exc = _one_line_error(medcodec.decompress_pixels, crafted)
    assert isinstance(exc, error), exc


@pytest.mark.parametrize("path, value", [
    (("restore_mode",), "native Implicit VR Little Endian " + PLANT),
    (("reencode",), PLANT),
    (("spec", "rows"), PLANT),
    (("spec", "photometric"), 7),
    (("kind",), PLANT),
])
def test_dicom_record_config_values_are_not_quoted(dicom_blob, path, value):
    def edit(config):
        _set(path, value)(config)
        if path == ("reencode",):  # a pixel-exact record naming an unknown re-encoding
            config["restore_mode"] = "pixel-exact"
    _one_line_error(medcodec.decompress_dicom, _edited(dicom_blob, edit))


def test_identifier_shaped_values_are_still_named(pixels_blob):
    """A record from a newer writer still says which model it needs."""
    crafted = _edited(pixels_blob, _set(("pixels", "global_model"), "per-plane-v77"))
    with pytest.raises(medcodec.ModelMismatchError, match="'per-plane-v77'"):
        medcodec.decompress_pixels(crafted)


# fuzz_records: a transformer model id was quoted by the model registry ('llm-~ase-v1'), and
# any id under "llm-" became a path to look for weights at.


def test_unknown_transformer_model_id_is_not_quoted_nor_a_path(pixels_blob):
    crafted = _edited(pixels_blob, _set(("pixels", "local_model"), "llm-~ase-v1 " + PLANT))
    exc = _one_line_error(medcodec.decompress_pixels, crafted)
    assert isinstance(exc, medcodec.ModelMismatchError) and "llm-base-v1" in str(exc)
    from medcodec.model.registry import load_model

    with pytest.raises(medcodec.ModelMismatchError, match="shipped models"):
        load_model("llm-base-v1/../llm-base-v1")


# The same pattern, found by reading the code after the two above: a sealed box's key id
# that is not hex was quoted (up to 255 characters of the section).


def test_sealed_box_key_id_is_not_quoted():
    box = crypto.SealedBox(key_id="ab" * 8, wrap_nonce=bytes(12), wrapped_key=bytes(48), nonce=bytes(12),
                           ciphertext=bytes(16)).to_bytes()
    planted = box.replace(b"ab" * 8, b"ZEBRAFISH^Q12345")
    _one_line_error(crypto.SealedBox.from_bytes, planted, planted="ZEBRAFISH")


# --------------------------------------------------------------------------------------
# fuzz_dicom: compress_dicom with a key let pydicom's lazy value conversion fail inside
# de-identification: NotImplementedError (an unknown VR) and BytesLengthException (a value
# whose length is no multiple of its size) escaped untyped.


def _patched(name: str, tag: bytes, vr: bytes, new_vr: bytes | None = None, grow: int = 0) -> bytes:
    """``name`` with the explicit VR LE element ``tag`` given another VR, or its value
    ``grow`` bytes longer (its 2-byte length updated)."""
    data = bytearray(pydicom_bytes(name))
    at = data.index(tag + vr)
    if new_vr is not None:
        data[at + 4 : at + 6] = new_vr
    if grow:
        (length,) = struct.unpack_from("<H", data, at + 6)
        struct.pack_into("<H", data, at + 6, length + grow)
        data[at + 8 + length : at + 8 + length] = b"\x00" * grow
    return bytes(data)


@pytest.mark.parametrize("data", [
    pytest.param(lambda: _patched("CT_small.dcm", b"\x08\x00\x30\x10", b"LO", new_vr=b"ZZ"), id="unknown-VR"),
    pytest.param(lambda: _patched("CT_small.dcm", b"\x28\x00\x20\x01", b"SS", grow=1), id="odd-length-SS"),
])
def test_keyed_compress_of_values_pydicom_cannot_convert(data, tmp_path):
    data = data()
    medcodec.dicom.parse_dicom(data)  # the image itself parses: only the keyed path reads every value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exc = _one_line_error(medcodec.compress_dicom, data, preset="fast", keyring=_ring())
    assert isinstance(exc, sealing.SealingError), exc


# --------------------------------------------------------------------------------------
# fuzz_dicom: the fast preset's plane chooser (selectors._follows) took the extremes of an
# empty sample when a plane has one pixel: ValueError for a 1 x 1 image with two frames or
# three samples (compress_dicom of a DICOM file claiming that, compress_pixels).


@pytest.mark.parametrize("shape", [(2, 1, 1), (1, 1, 1, 3), (2, 1, 1, 3)])
def test_one_pixel_planes_code_with_fast(shape):
    array = (np.arange(int(np.prod(shape)), dtype=np.uint8) * 37).reshape(shape)
    blob = medcodec.compress_pixels(array, bits_stored=8, signed=False, preset="fast")
    assert np.array_equal(medcodec.decompress_pixels(blob), array)


def test_one_pixel_two_frame_dicom_compresses():
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    ds.Rows = ds.Columns = 1
    ds.NumberOfFrames = 2
    ds.PixelData = struct.pack("<hh", 7, -3)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    blob = medcodec.compress_dicom(buf.getvalue(), preset="fast")
    assert medcodec.decompress_dicom(blob) == buf.getvalue()


# --------------------------------------------------------------------------------------
# fuzz_records (the long campaign): lzma sections were inflated without a bound. The
# campaign's own mutator ran out of address space inflating a mutant's section (a stream
# libFuzzer had copied over and over); the readers did the same: a few hundred kB of
# concatenated xz streams made decompress_* allocate gigabytes (MemoryError, or the memory
# itself). Each section is now refused as soon as it inflates past what it can hold.


@pytest.fixture(scope="module")
def lzma_bomb():
    """2 GiB of zeros in 317 kB: 32 concatenated xz streams of 64 MiB each."""
    return lzma.compress(bytes(64 << 20), preset=0) * 32


def _with_section(blob: bytes, section_type: int, payload: bytes) -> bytes:
    record = ct.read_record(blob)
    sections = [ct.Section(s.type, payload if s.type == section_type else s.payload, s.flags) for s in record.sections]
    assert any(s.type == section_type for s in record.sections)
    return ct.write_record(ct.Record(config=record.config, sections=sections))


def _outside_record() -> bytes:
    array = np.random.default_rng(0).integers(0, 4096, (16, 16), dtype=np.uint16)
    array[::3, ::5] |= 0x8000  # bits above BitsStored: an outside-bits section
    return medcodec.compress_pixels(array, bits_stored=12, signed=False, preset="fast")


@pytest.mark.parametrize("source, section_type, reader", [
    (lambda: medcodec.compress_dicom(pydicom_bytes("MR_small.dcm"), preset="fast"),
     ct.SECTION_HEADER, medcodec.decompress_dicom),
    (lambda: (GOLDEN / "v1.0_dicom_sparse_palette.mdc").read_bytes(), ct.SECTION_PALETTE, medcodec.decompress_dicom),
    (lambda: (GOLDEN / "v1.0_pixels_us_rgb_colour_table.mdc").read_bytes(), ct.SECTION_COLOURS,
     medcodec.decompress_pixels),
    (_outside_record, ct.SECTION_OUTSIDE, medcodec.decompress_pixels),
], ids=["header", "palette", "colours", "outside"])
def test_lzma_bomb_in_a_section_is_refused_before_it_inflates(lzma_bomb, source, section_type, reader):
    crafted = _with_section(source(), section_type, lzma_bomb)
    started = time.perf_counter()
    with pytest.raises(medcodec.CorruptRecordError, match=r"inflates past the \d+ bytes it can hold"):
        reader(crafted)
    assert time.perf_counter() - started < 3  # inflating 2 GiB alone takes longer


def test_lzma_stream_asking_for_a_huge_dictionary_is_refused(dicom_blob):
    """An xz header may ask the decoder for a 1.5 GiB dictionary; records need 65 MiB."""
    greedy = lzma.compress(b"x" * 64, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1536 << 20}])
    with pytest.raises(medcodec.CorruptRecordError, match="header section does not decompress"):
        medcodec.decompress_dicom(_with_section(dicom_blob, ct.SECTION_HEADER, greedy))


# --------------------------------------------------------------------------------------
# Typed where the bad value enters, not only by a catch-all (the harnesses' strict mode:
# foreign exceptions that errors.record_errors turned into "record cannot be decoded").


def test_entropy_stream_its_model_cannot_produce_is_a_corrupt_record():
    """constriction answers such bits with an AssertionError (gone under python -O)."""
    probabilities = np.tile(np.array([[1.0, 0.0]]), (64, 1))  # symbol 1 has no probability
    decoder = Decoder(b"\xff" * 16)
    with pytest.raises(medcodec.CorruptRecordError, match="not valid for its model"):
        decoder.categorical(probabilities)


@pytest.mark.parametrize("deflated", [False, True], ids=["plain", "config-deflate"])
@pytest.mark.parametrize("config_json", [b"[1, 2]", b'"pixels"', b"7"])
def test_config_that_is_not_a_json_object(config_json, deflated):
    import google_crc32c

    stype, payload = ((ct.SECTION_CONFIG_DEFLATE, ct.deflate_config(config_json)) if deflated
                      else (ct.SECTION_CONFIG, config_json))
    body = struct.pack("<8sHHII", ct.MAGIC, 1, int(deflated), 0, 1) + struct.pack(
        "<HHIQ", stype, ct.FLAG_CRITICAL, google_crc32c.value(payload), len(payload)) + payload
    blob = body + __import__("hashlib").sha256(body).digest()
    with pytest.raises(medcodec.CorruptRecordError, match="not an object"):
        ct.read_record(blob)
    for reader in (medcodec.decompress_pixels, medcodec.decompress_dicom, medcodec.inspect_record):
        _one_line_error(reader, blob)


def _deflate_bomb() -> bytes:
    import zlib

    coder = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=ct.CONFIG_DICTIONARIES[1])
    return b"\x01" + b"".join([coder.compress(b"{")] + [coder.compress(b" " * (1 << 20)) for _ in range(64)]
                               + [coder.flush()])


@pytest.mark.parametrize("payload, error", [
    (b"", medcodec.CorruptRecordError),
    (b"\x01" + PLANT.encode(), medcodec.CorruptRecordError),  # not a deflate stream; never quoted
    (b"\x09" + PLANT.encode(), medcodec.UnsupportedVersionError),  # a dictionary this reader lacks
    ("bomb", medcodec.CorruptRecordError),
    ("planted json", medcodec.CorruptRecordError),
], ids=["empty", "not-deflate", "unknown-dictionary", "bomb", "invalid-json"])
def test_damaged_config_deflate_is_one_typed_line(pixels_blob, payload, error):
    """A config-deflate section (format 1.1) under valid checksums that does not give a
    config: every public reader says so in one line, quoting nothing, inflating <= 1 MiB."""
    import google_crc32c

    if payload == "bomb":
        payload = _deflate_bomb()
    elif payload == "planted json":
        payload = ct.deflate_config(b'{"kind":"' + PLANT.encode() + b'"')
    record = ct.read_record(pixels_blob)
    rest = b"".join(struct.pack("<HHIQ", s.type, s.flags, google_crc32c.value(s.payload), len(s.payload)) + s.payload
                    for s in record.sections)
    body = struct.pack("<8sHHII", ct.MAGIC, 1, 1, 0, 1 + len(record.sections)) + struct.pack(
        "<HHIQ", ct.SECTION_CONFIG_DEFLATE, ct.FLAG_CRITICAL, google_crc32c.value(payload), len(payload)) + payload + rest
    blob = body + __import__("hashlib").sha256(body).digest()
    for reader in (ct.read_record, medcodec.decompress_pixels, medcodec.decompress_dicom, medcodec.inspect_record):
        started = time.perf_counter()
        assert isinstance(_one_line_error(reader, blob), error)
        assert time.perf_counter() - started < 2


@pytest.mark.parametrize("dtype", ["(1,u1", "u1,", "u8", "f2", ["u1"]])  # (1,u1: SyntaxError in numpy
def test_array_dtype_outside_what_compress_pixels_writes(pixels_blob, dtype):
    crafted = _edited(pixels_blob, _set(("array", "dtype"), dtype))
    with pytest.raises(medcodec.CorruptRecordError, match="array description malformed"):
        medcodec.decompress_pixels(crafted)


@pytest.mark.parametrize("path, value", [
    (("pixels", "shape"), [1, 1, float("inf"), 8]),  # int(inf): OverflowError
    (("pixels", "k"), float("-inf")),
    (("array", "shape"), [float("inf"), 8]),
])
def test_infinite_numbers_in_a_config(pixels_blob, path, value):
    crafted = _edited(pixels_blob, _set(path, value))
    with pytest.raises(medcodec.CorruptRecordError, match="malformed \\(OverflowError\\)"):
        medcodec.decompress_pixels(crafted)
    if path == ("pixels", "shape"):  # inspect_record describes k as it is; it computes with the shape
        with pytest.raises(medcodec.CorruptRecordError, match="malformed \\(OverflowError\\)"):
            medcodec.inspect_record(crafted)


def test_side_information_integers_are_64_bit():
    """A context tree's threshold (ctxtree.Tree.read) went into an int64 array: a 70-bit
    varint raised OverflowError there."""
    from medcodec.paths import IntReader, IntWriter

    writer = IntWriter()
    for value in (0, -1, (1 << 63) - 1, -(1 << 63)):
        writer.put(value)
    reader = IntReader(bytes(writer.buf))
    assert [reader.get() for _ in range(4)] == [0, -1, (1 << 63) - 1, -(1 << 63)]
    with pytest.raises(medcodec.CorruptRecordError, match="exceeds 64 bits"):
        IntReader(b"\xff" * 9 + b"\x7f").get()


def test_original_size_over_the_memory_budget_is_refused_before_inflating(dicom_blob):
    """The header section may inflate up to the original's size, which the config gives."""
    crafted = _edited(dicom_blob, _set(("source", "size"), 1 << 40))
    with pytest.raises(medcodec.LimitExceededError, match="original of 1099511627776 bytes, over the memory budget"):
        medcodec.decompress_dicom(crafted, limits=medcodec.DicomLimits(memory_bytes=256 << 20))


def test_dicom_record_without_the_original_size_or_digest(dicom_blob):
    verbatim = medcodec.compress_dicom(pydicom_bytes("rtplan.dcm"), preset="fast")
    assert ct.read_record(verbatim).config["restore_mode"] == "verbatim"
    for source in (None, {"size": 3}, {"sha256": 5}, "x"):
        with pytest.raises(medcodec.CorruptRecordError, match="original's SHA-256"):
            medcodec.decompress_dicom(_edited(verbatim, _set(("source",), source)))
    # A coded record's header section is bounded by the original's size: it must be given.
    for source in (None, {"sha256": "0" * 64}, {"size": "9830"}, {"size": 0}):
        with pytest.raises(medcodec.CorruptRecordError, match="original's size"):
            medcodec.decompress_dicom(_edited(dicom_blob, _set(("source",), source)))
    with pytest.raises(medcodec.CorruptRecordError, match="header section inflates past the 27 bytes"):
        medcodec.decompress_dicom(_edited(dicom_blob, _set(("source", "size"), 3)))


@pytest.mark.parametrize("path, value", [
    (("pixels", "shape"), [1, 1, 0, 8]),  # was ZeroDivisionError
    (("pixels", "shape"), [1, "x", 8, 8]),
    (("pixels", "plane_stats"), None),
])
def test_inspect_record_checks_the_fields_it_describes(pixels_blob, path, value):
    def edit(config):
        _set(path, value)(config)
        if value is None:
            del config["pixels"]["plane_stats"]
    with pytest.raises(medcodec.CorruptRecordError, match="pixel shape|pixel config"):
        medcodec.inspect_record(_edited(pixels_blob, edit))


@pytest.mark.parametrize("edit", [
    lambda c: c["sealed"].pop("binding"),
    lambda c: c["sealed"]["binding"].__setitem__("uids", ["x"]),
    lambda c: c["sealed"]["binding"].__setitem__("pixel_digest", 5),
    lambda c: c["sealed"].__setitem__("stego", None),
])
def test_keyed_record_with_a_malformed_sealed_config(keyed_blob, edit):
    crafted = _edited(keyed_blob, edit)
    ring = _ring()
    with pytest.raises(medcodec.CorruptRecordError, match="'sealed' config is malformed"):
        medcodec.decompress_dicom(crafted, keyring=ring)
    with pytest.raises(medcodec.CorruptRecordError, match="'sealed' config is malformed"):
        sealing.rewrap_record(crafted, ring)


def test_sealed_original_with_a_malformed_description(keyed_blob):
    """What only a key holder can write: the sealed original's JSON description broken."""
    ring = _ring()
    record = ct.read_record(keyed_blob)
    binding = record.config["sealed"]["binding"]
    ad = sealing._binding_ad(binding, sealing.PURPOSE_ORIGINAL)
    i = next(j for j, s in enumerate(record.sections) if s.type == ct.SECTION_SEALED_ORIGINAL)
    raw = lzma.decompress(crypto.open_sealed(ring, crypto.SealedBox.from_bytes(record.sections[i].payload),
                                             associated=ad))
    n_head = struct.unpack_from("<I", raw)[0]
    at = struct.calcsize("<IQQQ")
    for head in (b"{not json", b'["a list"]', json.dumps({"restore_mode": 1}).encode()):
        inner = struct.pack("<I", len(head)) + raw[4:at] + head + raw[at + n_head :]
        box = crypto.seal(ring, lzma.compress(inner), associated=ad).to_bytes()
        sections = list(record.sections)
        sections[i] = ct.Section(ct.SECTION_SEALED_ORIGINAL, box, sections[i].flags)
        crafted = ct.write_record(ct.Record(config=record.config, sections=sections))
        with pytest.raises(medcodec.CorruptRecordError, match="sealed original section's description"):
            medcodec.decompress_dicom(crafted, keyring=ring)
