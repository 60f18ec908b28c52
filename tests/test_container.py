"""Container v1: exact round trip, every corruption detected, versions handled."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medcodec import container as ct
from medcodec.errors import CorruptRecordError, UnsupportedVersionError

configs = st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8), st.booleans()), max_size=5)
sections = st.lists(
    st.builds(ct.Section, st.sampled_from([ct.SECTION_HEADER, ct.SECTION_GLOBAL, ct.SECTION_LOCAL]), st.binary(max_size=64)),
    max_size=6,
)


@given(configs, sections)
def test_roundtrip(config, secs):
    blob = ct.write_record(ct.Record(config=config, sections=secs))
    back = ct.read_record(blob)
    assert back.config == config
    assert [(s.type, s.payload) for s in back.sections] == [(s.type, s.payload) for s in secs]
    assert ct.write_record(back) == blob  # canonical: equal content, equal bytes


@given(sections, st.data())
def test_any_flipped_byte_is_detected(secs, data):
    blob = bytearray(ct.write_record(ct.Record(config={"a": 1}, sections=secs)))
    i = data.draw(st.integers(0, len(blob) - 1))
    blob[i] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises((CorruptRecordError, UnsupportedVersionError)):
        ct.read_record(bytes(blob))


@given(st.integers(1, 200))
def test_truncation_is_detected(cut):
    blob = ct.write_record(ct.Record(config={"a": 1}, sections=[ct.Section(ct.SECTION_GLOBAL, b"x" * 100)]))
    with pytest.raises(CorruptRecordError):
        ct.read_record(blob[: max(0, len(blob) - cut)])


def _resealed(body: bytes) -> bytes:
    import hashlib

    return body + hashlib.sha256(body).digest()


def test_unknown_major_version_is_a_clear_error():
    blob = ct.write_record(ct.Record(config={}))
    body = bytearray(blob[:-32])
    struct.pack_into("<H", body, 8, 2)
    with pytest.raises(UnsupportedVersionError, match="major version 2"):
        ct.read_record(_resealed(bytes(body)))


def test_unknown_sections_critical_fails_optional_is_skipped():
    optional = ct.Section(200, b"future", flags=0)
    critical = ct.Section(201, b"future", flags=ct.FLAG_CRITICAL)
    known = ct.Section(ct.SECTION_GLOBAL, b"g")
    back = ct.read_record(ct.write_record(ct.Record(config={}, sections=[optional, known])))
    assert [s.type for s in back.sections] == [ct.SECTION_GLOBAL]
    with pytest.raises(UnsupportedVersionError, match="section type 201"):
        ct.read_record(ct.write_record(ct.Record(config={}, sections=[critical])))


def test_not_a_record():
    with pytest.raises(CorruptRecordError, match="not a medcodec record|too short"):
        ct.read_record(b"DICM" * 40)


def test_lzma_pack_sizes_its_dictionary_to_the_input_and_loses_nothing():
    """The dictionary is cut to the input's size: the stream is exactly as long as the
    preset's (a match reaches every earlier byte either way) and still plain xz."""
    import lzma

    import numpy as np

    from medcodec.container import lzma_pack

    rng = np.random.default_rng(0)
    for raw in (b"", b"x", bytes(range(256)) * 12, rng.integers(0, 4, 300_000, dtype=np.uint8).tobytes()):
        for extreme in (False, True):
            packed = lzma_pack(raw, extreme=extreme)
            preset = lzma.compress(raw, preset=6 | (lzma.PRESET_EXTREME if extreme else 0))
            assert lzma.decompress(packed) == raw and len(packed) == len(preset)
