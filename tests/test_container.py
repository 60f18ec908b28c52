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
    """The dictionary is cut to the input's size: the stream is exactly as long as with
    the preset's own 8 MiB (a match reaches every earlier byte either way) and still
    plain xz. (Preset 6 stops extending matches at ``_LZMA_NICE_LEN`` bytes; above
    ``_LZMA_HASH_CHAIN_ABOVE`` bytes a hash chain finds them.)"""
    import lzma

    import numpy as np

    from medcodec.container import _LZMA_HASH_CHAIN_ABOVE, _LZMA_NICE_LEN, lzma_pack

    rng = np.random.default_rng(0)
    for raw in (b"", b"x", bytes(range(256)) * 12, rng.integers(0, 4, 300_000, dtype=np.uint8).tobytes()):
        for extreme in (False, True):
            packed = lzma_pack(raw, extreme=extreme)
            full = {"id": lzma.FILTER_LZMA2, "preset": 6 | (lzma.PRESET_EXTREME if extreme else 0)}
            if not extreme:
                full["nice_len"] = _LZMA_NICE_LEN
                if len(raw) > _LZMA_HASH_CHAIN_ABOVE:
                    full.update(mf=lzma.MF_HC4, nice_len=16, depth=8)
            preset = lzma.compress(raw, format=lzma.FORMAT_XZ, filters=[full])
            assert lzma.decompress(packed) == raw and len(packed) == len(preset)


# --------------------------------------------------------------------------------------
# The compressed config (format 1.1): a config-deflate section in place of the JSON one.

DICTIONARY_1_SHA256 = "5477172e8d2017f4281617a92374fffaf142d5bd8a71c72c3b97745f780010cd"


def _first_section(blob: bytes) -> tuple[int, bytes]:
    stype, _flags, _crc, length = struct.unpack_from("<HHIQ", blob, 20)
    return stype, blob[36 : 36 + length]


def _raw_record(first: tuple[int, bytes], *rest: tuple[int, bytes], minor: int = ct.FORMAT_MINOR) -> bytes:
    """A record around any sections (valid CRC32Cs and trailer), the first one included as is."""
    import google_crc32c

    body = struct.pack("<8sHHII", ct.MAGIC, ct.FORMAT_MAJOR, minor, 0, 1 + len(rest))
    for stype, payload in (first, *rest):
        body += struct.pack("<HHIQ", stype, ct.FLAG_CRITICAL, google_crc32c.value(payload), len(payload)) + payload
    return _resealed(body)


def _raw_deflate(raw: bytes, zdict: bytes | None = None) -> bytes:
    import zlib

    coder = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zdict=zdict) if zdict else zlib.compressobj(9, zlib.DEFLATED, -15)
    return coder.compress(raw) + coder.flush()


@pytest.fixture(scope="module")
def small_record():
    import numpy as np

    import medcodec

    return medcodec.compress_pixels(np.zeros((64, 64), np.uint16), bits_stored=12, signed=False, preset="fast")


def test_a_pixels_record_carries_its_config_deflated_and_reads_back(small_record):
    stype, payload = _first_section(small_record)
    record = ct.read_record(small_record)
    assert stype == ct.SECTION_CONFIG_DEFLATE and payload[0] == ct.CONFIG_DICTIONARY_ID
    assert ct.inflate_config(payload) == ct.encode_config(record.config)
    assert record.config["kind"] == "pixels" and (record.major, record.minor) == (1, ct.FORMAT_MINOR)
    assert ct.write_record(record) == small_record


def test_the_64x64_record_sheds_at_least_250_bytes_of_config(small_record):
    """The same record with its config as plain JSON (what 1.0 wrote) against the record now."""
    stype, payload = _first_section(small_record)
    plain = _raw_record((ct.SECTION_CONFIG, ct.encode_config(ct.read_record(small_record).config)),
                        *[(s.type, s.payload) for s in ct.read_record(small_record).sections], minor=0)
    assert ct.read_record(plain).config == ct.read_record(small_record).config
    assert len(plain) - len(small_record) >= 250, (len(plain), len(small_record))


def test_records_with_a_plain_config_still_read_exactly_as_before():
    config = {"kind": "pixels", "note": "written by 1.0", "n": [1, 2, 3]}
    old = _raw_record((ct.SECTION_CONFIG, ct.encode_config(config)), (ct.SECTION_GLOBAL, b"g"), minor=0)
    back = ct.read_record(old)
    assert back.config == config and (back.major, back.minor) == (1, 0)
    assert [(s.type, s.payload) for s in back.sections] == [(ct.SECTION_GLOBAL, b"g")]
    # Not canonical JSON either: 1.0 readers took any JSON object, so does this one.
    assert ct.read_record(_raw_record((ct.SECTION_CONFIG, b'{ "b": 1, "a": 2 }'))).config == {"a": 2, "b": 1}


@given(configs)
def test_the_deflated_form_is_chosen_only_when_smaller(config):
    raw = ct.encode_config(config)
    stype, payload = _first_section(ct.write_record(ct.Record(config=config)))
    if len(ct.deflate_config(raw)) < len(raw):
        assert stype == ct.SECTION_CONFIG_DEFLATE and ct.inflate_config(payload) == raw
    else:
        assert stype == ct.SECTION_CONFIG and payload == raw


def test_tiny_configs_stay_plain_and_real_ones_shrink(small_record):
    for config in ({}, {"a": 1}):
        assert _first_section(ct.write_record(ct.Record(config=config)))[0] == ct.SECTION_CONFIG
    raw = ct.encode_config(ct.read_record(small_record).config)
    assert len(ct.deflate_config(raw)) * 4 < len(raw)  # the dictionary is what makes it pay: see FORMAT.md


def test_writer_output_is_deterministic(small_record):
    record = ct.read_record(small_record)
    assert ct.write_record(record) == ct.write_record(ct.read_record(small_record)) == small_record
    raw = ct.encode_config(record.config)
    assert ct.deflate_config(raw) == ct.deflate_config(bytes(raw))


def test_the_dictionary_is_frozen():
    """Dictionary 1 is part of the format: these bytes, forever (FORMAT.md gives the digest)."""
    import hashlib

    assert set(ct.CONFIG_DICTIONARIES) == {1} and ct.CONFIG_DICTIONARY_ID == 1
    assert len(ct.CONFIG_DICTIONARIES[1]) == 3994
    assert hashlib.sha256(ct.CONFIG_DICTIONARIES[1]).hexdigest() == DICTIONARY_1_SHA256 == ct.CONFIG_DICTIONARY_SHA256[1]
    # A stream another deflate encoder wrote (no strategy search, default memLevel) reads too.
    raw = b'{"kind":"pixels","pixels":{"codec_id":"medcodec.dualpath","preset":"fast"}}'
    assert ct.inflate_config(b"\x01" + _raw_deflate(raw, ct.CONFIG_DICTIONARIES[1])) == raw


def _with_config_payload(payload: bytes) -> bytes:
    return _raw_record((ct.SECTION_CONFIG_DEFLATE, payload), (ct.SECTION_GLOBAL, b"g"))


D1 = ct.CONFIG_DICTIONARIES[1]


@pytest.mark.parametrize("dict_id", [0, 2, 255])
def test_an_unknown_dictionary_is_an_unsupported_version(dict_id):
    payload = bytes([dict_id]) + _raw_deflate(b'{"a":1}')
    with pytest.raises(UnsupportedVersionError, match=f"preset dictionary {dict_id}, unknown") as info:
        ct.read_record(_with_config_payload(payload))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("payload, reason", [
    (b"", "empty"),
    (b"\x01\xff\xff\xff\xff", "does not inflate"),
    (b"\x01" + _raw_deflate(b'{"a":1}', D1)[:-2], "truncated"),
    (b"\x01" + _raw_deflate(b'{"a":1}', D1) + b"tail", "4 bytes after its deflate stream"),
    (b"\x01" + _raw_deflate(b"{not json", D1), "not valid JSON"),
    (b"\x01" + _raw_deflate(b"[1, 2]", D1), "not an object"),
    (b"\x01" + _raw_deflate(b'{"a":"\xff"}', D1), "not valid JSON"),  # not UTF-8
])
def test_a_damaged_config_deflate_section_is_a_corrupt_record(payload, reason):
    with pytest.raises(CorruptRecordError, match=reason) as info:
        ct.read_record(_with_config_payload(payload))
    assert "\n" not in str(info.value)


def test_a_config_that_inflates_past_the_bound_is_refused_without_inflating_it():
    """256 MiB of JSON whitespace deflates to ~260 kB; the reader stops at 1 MiB + 1 byte."""
    import time
    import zlib

    coder = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=D1)
    chunk = b" " * (1 << 20)
    bomb = b"".join([coder.compress(b"{")] + [coder.compress(chunk) for _ in range(256)]
                    + [coder.compress(b"}"), coder.flush()])
    assert len(bomb) < 1 << 20
    started = time.perf_counter()
    with pytest.raises(CorruptRecordError, match=f"inflates past {ct.CONFIG_INFLATE_LIMIT} bytes"):
        ct.read_record(_with_config_payload(b"\x01" + bomb))
    assert time.perf_counter() - started < 1
    # Just under the bound reads (the bound is on the JSON, not a guess about the stream).
    fits = b'{"a":"' + b"x" * (ct.CONFIG_INFLATE_LIMIT - 8) + b'"}'
    assert ct.read_record(_with_config_payload(ct.deflate_config(fits))).config["a"] == "x" * (ct.CONFIG_INFLATE_LIMIT - 8)


def test_the_config_section_is_first_and_only_once():
    good = ct.deflate_config(b'{"a":1}')
    with pytest.raises(CorruptRecordError, match="does not start with a config section"):
        ct.read_record(_raw_record((ct.SECTION_GLOBAL, b"g"), (ct.SECTION_CONFIG_DEFLATE, good)))
    for second in ((ct.SECTION_CONFIG_DEFLATE, good), (ct.SECTION_CONFIG, b'{"a":1}')):
        with pytest.raises(CorruptRecordError, match="more than one config section"):
            ct.read_record(_raw_record((ct.SECTION_CONFIG_DEFLATE, good), second))
    # The writer keeps a record's one config, whatever config sections its section list holds.
    blob = ct.write_record(ct.Record(config={"a": 1}, sections=[ct.Section(ct.SECTION_CONFIG_DEFLATE, good),
                                                                 ct.Section(ct.SECTION_GLOBAL, b"g")]))
    assert [s.type for s in ct.read_record(blob).sections] == [ct.SECTION_GLOBAL]


def test_a_1_0_reader_refuses_a_deflated_config_with_a_clear_error(small_record, monkeypatch):
    """What a reader of 1.0 (which knew sections 1-3 and 16-34) says about a 1.1 record."""
    monkeypatch.setattr(ct, "KNOWN_SECTIONS", ct.KNOWN_SECTIONS - {ct.SECTION_CONFIG_DEFLATE,
                                                                 ct.SECTION_SEALED_ORIGINAL_DELTA})
    with pytest.raises(UnsupportedVersionError, match=rf"section type 4 \(minor version {ct.FORMAT_MINOR}\), unknown"):
        ct.read_record(small_record)


def _keyed_config(key_id: str) -> dict:
    return {"kind": "dicom", "note": "de-identified (PS3.15 Basic Profile); original sealed",
            "sealed": {"binding": {"format_version": "1.0", "pixel_digest": "ab" * 32,
                                   "uids": {"SOPInstanceUID": "2.25.1234567890123456789"}},
                       "key_id": key_id, "stego": {"embedded": True, "tier": "full"}},
            "source": {"sha256": "cd" * 32, "size": 39206}}


def test_a_key_id_rewritten_in_place_keeps_the_config_length():
    """sealing.rewrap_record gives a keyed record a new key id of the same length, and the
    rewrap job (pipelines/rewrap.py) needs the record to keep its length: the key id is a
    stored span of the deflate stream, which the rest of the stream never refers to."""
    import random

    rng = random.Random(0)
    sizes, payloads = set(), set()
    for key_id in ["0" * 16, "f" * 16, "ab" * 8, "cd" * 8] + [f"{rng.getrandbits(64):016x}" for _ in range(60)]:
        config = _keyed_config(key_id)
        stype, payload = _first_section(ct.write_record(ct.Record(config=config)))
        assert stype == ct.SECTION_CONFIG_DEFLATE and key_id.encode() in payload  # stored as is
        assert ct.inflate_config(payload) == ct.encode_config(config)
        sizes.add(len(payload))
        payloads.add(payload)
    assert len(sizes) == 1 and len(payloads) == 64
    # Without the stored span, the length follows the key id's bytes.
    raw = [ct.encode_config(_keyed_config(k)) for k in ("0" * 16, "f" * 16, "ab" * 8, "9e" * 8, "1234abcd" * 2)]
    assert len({len(ct.deflate_config(r)) for r in raw}) > 1


def test_stored_spans_cost_little_and_inflate_with_any_inflater():
    import zlib

    config = _keyed_config("0123456789abcdef")
    raw = ct.encode_config(config)
    spanned = ct.config_section(config).payload
    assert len(spanned) <= len(ct.deflate_config(raw)) + 48 < len(raw) // 2
    inflater = zlib.decompressobj(-15, zdict=ct.CONFIG_DICTIONARIES[1])  # plain zlib, no medcodec
    assert inflater.decompress(spanned[1:]) == raw and inflater.eof and not inflater.unused_data
    # Any spans, adjacent or at the ends, give a stream that inflates to the same JSON.
    for spans in ([(0, 1)], [(len(raw) - 1, len(raw))], [(3, 10), (10, 12)], [(0, len(raw))], []):
        assert ct.inflate_config(ct.deflate_config(raw, stored=spans)) == raw


def test_a_record_written_again_keeps_the_form_it_was_read_with(small_record):
    config = ct.read_record(small_record).config
    old = _raw_record((ct.SECTION_CONFIG, ct.encode_config(config)),
                      *[(s.type, s.payload) for s in ct.read_record(small_record).sections], minor=0)
    again = ct.write_record(ct.read_record(old))
    assert _first_section(again)[0] == ct.SECTION_CONFIG and len(again) == len(old)
    assert ct.read_record(again).config == config
    # A new record (no form read) takes the smaller one; a read record can be told either.
    fresh = ct.Record(config=config, sections=ct.read_record(old).sections)
    assert ct.write_record(fresh) == small_record
    told = ct.Record(config=config, config_form=ct.SECTION_CONFIG_DEFLATE)
    assert _first_section(ct.write_record(told))[0] == ct.SECTION_CONFIG_DEFLATE


def test_sections_must_fill_the_body_exactly_up_to_the_trailer():
    """A record whose trailer matches but whose section lengths overrun the body, or leave
    bytes after the last section, is refused: the reader's bounds are the body's, never the
    trailer's bytes."""
    good = ct.write_record(ct.Record(config={"a": 1}, sections=[ct.Section(ct.SECTION_GLOBAL, b"gg")]))
    body = good[:-32]
    with pytest.raises(CorruptRecordError, match="unexpected bytes after the last section"):
        ct.read_record(_resealed(body + b"x"))
    # the last section's length one byte longer: it would reach into the trailer
    last = len(body) - 2 - 16
    stype, flags, crc, length = struct.unpack_from("<HHIQ", body, last)
    longer = body[:last] + struct.pack("<HHIQ", stype, flags, crc, length + 1) + body[last + 16 :]
    with pytest.raises(CorruptRecordError, match="runs past the end"):
        ct.read_record(_resealed(longer))
    # one section more than the body holds: its header would be read from the trailer
    count = struct.unpack_from("<I", body, 16)[0]
    more = body[:16] + struct.pack("<I", count + 1) + body[20:]
    with pytest.raises(CorruptRecordError, match="header runs past the end"):
        ct.read_record(_resealed(more))
    assert ct.read_record(good).sections[0].payload == b"gg"
