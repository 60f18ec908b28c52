"""Container format v1: magic, version, typed sections with lengths and CRC32C, SHA-256 trailer.

The byte layout is specified in schemas/FORMAT.md; this module is its reference
implementation. All integers little-endian.

    record   = magic(8) major(u16) minor(u16) flags(u32) count(u32) section* sha256(32)
    section  = type(u16) flags(u16) crc32c(u32) length(u64) payload(length)

A section with the CRITICAL flag must be understood by the reader; unknown
non-critical sections are skipped (room for minor-version additions). The trailer
is the SHA-256 of every byte before it.

The first section is the record's config: canonical JSON (``config``), or since 1.1 that
JSON deflated with a frozen preset dictionary (``config-deflate``), whichever is smaller.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import google_crc32c

from .errors import CorruptRecordError, MedcodecError, UnsupportedVersionError

MAGIC = b"\x89MDC\r\n\x1a\n"
FORMAT_MAJOR = 1
FORMAT_MINOR = 2  # 1.1: the config-deflate section; 1.2: the sealed-original-delta section

FLAG_CRITICAL = 0x0001

# Stable section type ids: never reuse a number for another meaning.
SECTION_CONFIG = 1  # JSON codec config and record description
SECTION_HEADER = 2  # DICOM non-pixel bytes (prefix, suffix, extra), lzma
SECTION_VERBATIM = 3  # the original file, kept as is
SECTION_CONFIG_DEFLATE = 4  # the config JSON, raw deflate with a preset dictionary (since 1.1)
SECTION_GLOBAL = 16  # global path stream of one plane (frame-major, then sample)
SECTION_LOCAL = 17  # local path stream of one plane
SECTION_OUTSIDE = 18  # bits outside BitsStored that differ from the expected pattern, lzma
SECTION_PALETTE = 19  # sorted table of the values used, when values are coded as indices into it
SECTION_COLOURS = 20  # table of the colours used (n x samples, <u2, lzma), when pixels are coded as indices into it
SECTION_SEALED_ORIGINAL = 32  # sealed box: the original's non-pixel bytes and rebuild info (or whole file)
SECTION_SEALED_DISPLACED = 33  # sealed box: the bits the embedded message displaced
SECTION_SEALED_PHI = 34  # sealed box: the removed PHI (also embedded in the pixels)
SECTION_SEALED_ORIGINAL_DELTA = 35  # (since 1.2) section 32's content, packed against the de-identified file
SECTION_NAMES = {
    SECTION_CONFIG: "config",
    SECTION_HEADER: "header",
    SECTION_VERBATIM: "verbatim",
    SECTION_CONFIG_DEFLATE: "config-deflate",
    SECTION_GLOBAL: "global",
    SECTION_LOCAL: "local",
    SECTION_OUTSIDE: "outside",
    SECTION_PALETTE: "palette",
    SECTION_COLOURS: "colours",
    SECTION_SEALED_ORIGINAL: "sealed-original",
    SECTION_SEALED_DISPLACED: "sealed-displaced",
    SECTION_SEALED_PHI: "sealed-phi",
    SECTION_SEALED_ORIGINAL_DELTA: "sealed-original-delta",
}
KNOWN_SECTIONS = frozenset(SECTION_NAMES)
CONFIG_SECTIONS = frozenset({SECTION_CONFIG, SECTION_CONFIG_DEFLATE})

_HEAD = struct.Struct("<8sHHII")
_SECTION = struct.Struct("<HHIQ")
_TRAILER = 32


@dataclass(frozen=True)
class Section:
    type: int
    payload: bytes
    flags: int = FLAG_CRITICAL

    @property
    def name(self) -> str:
        return SECTION_NAMES.get(self.type, f"unknown-{self.type}")


@dataclass
class Record:
    """A parsed record: its JSON config and its sections in file order."""

    config: dict[str, Any]
    sections: list[Section] = field(default_factory=list)
    major: int = FORMAT_MAJOR
    minor: int = FORMAT_MINOR
    # The type of the config section it was read with (SECTION_CONFIG or
    # SECTION_CONFIG_DEFLATE); None for a new record. write_record writes that form again.
    config_form: int | None = None

    def of_type(self, section_type: int) -> list[Section]:
        return [s for s in self.sections if s.type == section_type]

    def one(self, section_type: int) -> Section:
        found = self.of_type(section_type)
        if len(found) != 1:
            raise CorruptRecordError(
                f"record has {len(found)} '{SECTION_NAMES.get(section_type, section_type)}' sections, expected 1"
            )
        return found[0]


def encode_config(config: dict[str, Any]) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, so equal configs give equal bytes."""
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode("utf-8")


# ---- the compressed config (1.1)
#
# A config-deflate payload is one byte, the dictionary id, then a raw deflate stream
# (RFC 1951, no zlib header) of the canonical JSON, coded with that id's preset dictionary.
# A dictionary is part of the format forever: its bytes are written out here, never derived
# from live code (computed, it would change with a new config key or default, and records
# written before would no longer inflate). A better dictionary gets a new id; the old ones
# stay. Dictionary 1 (3994 bytes) is 8 canonical configs as medcodec wrote them under
# format 1.0, with their digests, UIDs and key ids emptied ("2.25." kept), chosen greedily
# from 95 configs (pixels records fast and max, 8/10/12/16-bit, signed, multi-frame, RGB,
# palette, outside bits, transformer local models; DICOM records of 23 pydicom test files,
# fast and max, keyless and keyed): each step the config, put first or last, that shrank
# the sum of the 95 deflated configs most. On 36 configs outside that set (other pydicom
# files, random arrays) the payloads came to 21% of the JSON (5,860 of 27,928 bytes);
# deflate without a dictionary, 61%. FORMAT.md "Compressed config" has the details.
CONFIG_DICTIONARY_ID = 1  # the dictionary writers use
CONFIG_INFLATE_LIMIT = 1 << 20  # a config that inflates past this is refused, not inflated
_CONFIG_DICTIONARY_1 = (
    b'{"kind":"dicom","note":"lossy or unsupported compression JPEG Baseline (Process 1) kept verbatim","p'
    b'ixels":null,"reencode":null,"restore_mode":"verbatim","source":{"sha256":"","size":224902},"spec":{"'
    b'big_endian":false,"bits_allocated":8,"bits_stored":8,"cols":320,"frames":30,"high_bit":7,"photometri'
    b'c":"YBR_FULL_422","pixel_representation":0,"planar_configuration":0,"rows":240,"samples":3,"transfer'
    b'_syntax":"1.2.840.10008.1.2.4.50"}}{"kind":"dicom","note":"de-identified (PS3.15 Basic Profile); ori'
    b'ginal sealed","pixels":null,"reencode":null,"restore_mode":"verbatim","sealed":{"binding":{"format_v'
    b'ersion":"1.0","pixel_digest":"file:","uids":{"SOPInstanceUID":"","SeriesInstanceUID":"","StudyInstan'
    b'ceUID":""}},"key_id":"","original_restore_mode":"verbatim","stego":{"embedded":false,"message_bytes"'
    b':0,"reason":"source kept verbatim: no pixels to embed in","tier":"none"}},"source":{"sha256":"","siz'
    b'e":534},"spec":null}{"kind":"dicom","note":"JPEG 2000 Image Compression (Lossless Only) decoded; res'
    b'tore original-syntax (re-encoding verified to give the same words)","pixels":{"codec_id":"medcodec.d'
    b'ualpath","digest":"","format":{"bits_allocated":16,"bits_stored":12,"high_bit":11,"signed":false},"g'
    b'lobal_model":"per-plane-v6","k":0,"local_model":"classical-v1","outside":"none","palette":false,"pla'
    b'ne_stats":{"noise":11.0},"preset":"max","shape":[10,1,64,64]},"reencode":"original-syntax","restore_'
    b'mode":"pixel-exact","source":{"sha256":"","size":40324},"spec":{"big_endian":false,"bits_allocated":'
    b'16,"bits_stored":12,"cols":64,"frames":10,"high_bit":11,"photometric":"MONOCHROME2","pixel_represent'
    b'ation":0,"planar_configuration":0,"rows":64,"samples":1,"transfer_syntax":"1.2.840.10008.1.2.4.90"}}'
    b'{"kind":"dicom","note":"native Explicit VR Little Endian","pixels":{"codec_id":"medcodec.dualpath","'
    b'colour_palette":10,"digest":"","format":{"bits_allocated":8,"bits_stored":8,"high_bit":7,"signed":fa'
    b'lse},"global_model":"per-plane-v6","k":0,"local_model":"classical-v1","outside":"none","palette":tru'
    b'e,"plane_stats":{"noise":0.0},"preset":"max","shape":[1,3,100,100]},"reencode":null,"restore_mode":"'
    b'byte-exact","source":{"sha256":"","size":31300},"spec":{"big_endian":false,"bits_allocated":8,"bits_'
    b'stored":8,"cols":100,"frames":1,"high_bit":7,"photometric":"RGB","pixel_representation":0,"planar_co'
    b'nfiguration":0,"rows":100,"samples":3,"transfer_syntax":"1.2.840.10008.1.2.1"}}{"kind":"dicom","note'
    b'":"de-identified (PS3.15 Basic Profile); original sealed","pixels":{"codec_id":"medcodec.dualpath","'
    b'digest":"","format":{"bits_allocated":16,"bits_stored":16,"high_bit":15,"signed":true},"global_model'
    b'":"per-plane-fast-v3","k":0,"local_model":"classical-v1","outside":"none","palette":false,"plane_sta'
    b'ts":{},"preset":"fast","shape":[1,1,64,64]},"reencode":null,"restore_mode":"byte-exact","sealed":{"b'
    b'inding":{"format_version":"1.0","pixel_digest":"","uids":{"SOPInstanceUID":"2.25.","SeriesInstanceUI'
    b'D":"2.25.","StudyInstanceUID":"2.25."}},"key_id":"","original_restore_mode":"pixel-exact","stego":{"'
    b'capacity_bits":3936,"changed":1066,"embedded":true,"max_error":1,"message_bytes":252,"psnr":102.1754'
    b'9350807721,"reason":"full message (654 B sealed) does not fit: message needs 5232 bits (654 bytes) p'
    b'lus a 32-bit header, but the image has room for 3936 message bits (492 bytes) in 124 textured runs o'
    b'f 32 values","tier":"essential","tier_bytes":{"essential":252,"full":654}}},"source":{"sha256":"","s'
    b'ize":9694},"spec":{"big_endian":false,"bits_allocated":16,"bits_stored":16,"cols":64,"frames":1,"hig'
    b'h_bit":15,"photometric":"MONOCHROME2","pixel_representation":1,"planar_configuration":0,"rows":64,"s'
    b'amples":1,"transfer_syntax":"1.2.840.10008.1.2.1"}}{"array":{"dtype":"u2","shape":[32,40]},"kind":"p'
    b'ixels","pixels":{"codec_id":"medcodec.dualpath","digest":"","format":{"bits_allocated":16,"bits_stor'
    b'ed":12,"high_bit":11,"signed":false},"global_model":"per-plane-fast-v3","k":0,"local_model":"classic'
    b'al-v1","outside":"none","palette":false,"plane_stats":{},"preset":"fast","shape":[1,1,32,40]}}'
)
CONFIG_DICTIONARIES = {1: _CONFIG_DICTIONARY_1}
CONFIG_DICTIONARY_SHA256 = {1: "5477172e8d2017f4281617a92374fffaf142d5bd8a71c72c3b97745f780010cd"}
# zlib strategies the writer tries (level 9, 32 KiB window, memLevel 9), keeping the
# smallest output, the first on a tie: the reader does not care, and each wins on some configs.
_DEFLATE_STRATEGIES = (zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED, zlib.Z_FIXED)


def deflate_config(raw: bytes, dictionary_id: int = CONFIG_DICTIONARY_ID, *,
                   stored: Sequence[tuple[int, int]] = ()) -> bytes:
    """The payload of a config-deflate section holding ``raw`` (canonical config JSON).
    ``stored``: byte spans of ``raw`` (sorted, disjoint) coded so that the payload's length
    does not depend on their content (see _deflate). Deterministic for a given zlib build:
    equal input, equal bytes."""
    zdict = CONFIG_DICTIONARIES[dictionary_id]
    best = None
    for strategy in _DEFLATE_STRATEGIES:
        out = _deflate(raw, zdict, strategy, stored)
        if best is None or len(out) < len(best):
            best = out
    return bytes([dictionary_id]) + best


_WINDOW = 1 << 15


def _deflate(raw: bytes, zdict: bytes, strategy: int, stored: Sequence[tuple[int, int]]) -> bytes:
    """Raw deflate of ``raw`` after the preset dictionary. Each span in ``stored`` is a
    stored block that no match refers to: the coder before it ends with a sync flush (whose
    empty stored block, byte-aligned, becomes the span's block), and the coder after it
    starts from the window with NULs in the span's place, which canonical JSON never holds,
    so no match reaches into it. The stream's length then depends on the spans' lengths
    only, not on their bytes."""
    out, window, at = [], zdict, 0
    for start, end in stored:
        coder = zlib.compressobj(9, zlib.DEFLATED, -15, 9, strategy, zdict=window[-_WINDOW:])
        head = coder.compress(raw[at:start]) + coder.flush(zlib.Z_SYNC_FLUSH)
        if not head.endswith(b"\x00\x00\xff\xff"):  # zlib's sync flush always ends so
            raise AssertionError("zlib sync flush did not end with an empty stored block")
        value = raw[start:end]
        out += [head[:-4], struct.pack("<HH", len(value), len(value) ^ 0xFFFF), value]
        window += raw[at:start] + b"\x00" * len(value)
        at = end
    coder = zlib.compressobj(9, zlib.DEFLATED, -15, 9, strategy, zdict=window[-_WINDOW:])
    out += [coder.compress(raw[at:]), coder.flush()]
    return b"".join(out)


# Config values a rewriter changes in place to a value of the same length, keeping the
# record's length: a keyed record's key id, which sealing.rewrap_record sets on key rotation
# (pipelines/rewrap.py rewrites archive shards with every record at its offset). Each is
# coded as a stored span (deflate_config), so the config-deflate payload keeps its length.
REWRITTEN_IN_PLACE = (("sealed", "key_id"),)


def _rewritten_spans(config: dict[str, Any], raw: bytes) -> list[tuple[int, int]]:
    """The byte spans of ``raw`` (the canonical JSON of ``config``) holding the string
    values named in REWRITTEN_IN_PLACE (a value that is absent, not a string, or whose
    key-value text is not found exactly once is left out)."""
    spans = []
    for path in REWRITTEN_IN_PLACE:
        node: Any = config
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, str):
            continue
        value = json.dumps(node).encode()
        pair = json.dumps(path[-1]).encode() + b":" + value
        if raw.count(pair) != 1 or len(value) - 2 > 0xFFFF:
            continue
        end = raw.index(pair) + len(pair) - 1  # inside the closing quote
        spans.append((end - (len(value) - 2), end))
    return sorted(spans)


def inflate_config(payload: bytes, *, limit: int = CONFIG_INFLATE_LIMIT) -> bytes:
    """The config JSON bytes of a config-deflate payload; never more than ``limit`` bytes
    are inflated (CorruptRecordError beyond), so a deflate bomb costs nothing."""
    if not payload:
        raise CorruptRecordError("config-deflate section is empty (no dictionary id)")
    zdict = CONFIG_DICTIONARIES.get(payload[0])
    if zdict is None:
        raise UnsupportedVersionError(
            f"config section uses preset dictionary {payload[0]}, unknown to this reader"
            f" (it knows {sorted(CONFIG_DICTIONARIES)}); use a medarchive release that supports it"
        )
    return inflate_raw(payload[1:], zdict, limit, "config-deflate")


def deflate_raw(raw: bytes, zdict: bytes = b"") -> bytes:
    """Raw deflate (RFC 1951) of ``raw`` after the preset dictionary ``zdict`` (its last
    32 KiB: the window before the first byte), zlib level 9, memLevel 9."""
    coder = zlib.compressobj(9, zlib.DEFLATED, -15, 9, **({"zdict": zdict[-_WINDOW:]} if zdict else {}))
    return coder.compress(raw) + coder.flush()


def inflate_raw(payload: bytes, zdict: bytes, limit: int, what: str, *,
                over: type[MedcodecError] = CorruptRecordError, hint: str = "") -> bytes:
    """``payload``, a raw deflate stream after the preset dictionary ``zdict`` (its last
    32 KiB), inflated; never more than ``limit`` bytes (``over`` beyond, its message ending
    with ``hint``), so a deflate bomb costs nothing. CorruptRecordError for a stream that
    does not inflate, ends early or is followed by other bytes."""
    inflater = zlib.decompressobj(-15, **({"zdict": zdict[-_WINDOW:]} if zdict else {}))
    try:
        out = inflater.decompress(payload, limit + 1)
    except zlib.error as exc:
        raise CorruptRecordError(f"{what} section does not inflate ({exc})") from None
    if len(out) > limit:
        raise over(f"{what} section inflates past {limit} bytes{hint}")
    if not inflater.eof:
        raise CorruptRecordError(f"{what} section's deflate stream is truncated")
    if inflater.unused_data:
        raise CorruptRecordError(f"{what} section has {len(inflater.unused_data)} bytes after its deflate stream")
    return out


def config_section(config: dict[str, Any], form: int | None = None) -> Section:
    """The first section of a record with this config: deflated when that is smaller than
    the canonical JSON, else the JSON itself (a record is never larger than in 1.0); or in
    ``form`` when given (SECTION_CONFIG or SECTION_CONFIG_DEFLATE)."""
    raw = encode_config(config)
    if form == SECTION_CONFIG:
        return Section(SECTION_CONFIG, raw)
    packed = deflate_config(raw, stored=_rewritten_spans(config, raw))
    if form == SECTION_CONFIG_DEFLATE or len(packed) < len(raw):
        return Section(SECTION_CONFIG_DEFLATE, packed)
    return Section(SECTION_CONFIG, raw)


def write_record(record: Record) -> bytes:
    """The bytes of a record. Its config section takes the smaller form, or for a record
    that was read (``config_form`` set) the form it was read with: a record re-written with
    values of the same length (a new key id) keeps its length, as pipelines/rewrap.py needs,
    whether it was written under 1.0 (plain JSON) or 1.1."""
    first = config_section(record.config, record.config_form)
    sections = [first] + [s for s in record.sections if s.type not in CONFIG_SECTIONS]
    parts = [_HEAD.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, 0, len(sections))]
    for s in sections:
        parts.append(_SECTION.pack(s.type, s.flags, google_crc32c.value(s.payload), len(s.payload)))
        parts.append(s.payload)
    digest = hashlib.sha256()
    for part in parts:  # the trailer hashed from the parts: the record is joined once
        digest.update(part)
    parts.append(digest.digest())
    return b"".join(parts)


def read_record(data: bytes) -> Record:
    """Parse and verify a record; raises a precise MedcodecError on any problem."""
    if len(data) < _HEAD.size + _TRAILER:
        raise CorruptRecordError(f"record too short ({len(data)} bytes) to be a medcodec record")
    magic, major, minor, _flags, count = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise CorruptRecordError("not a medcodec record (bad magic)")
    reader = _READERS.get(major)
    if reader is None:
        raise UnsupportedVersionError(
            f"record format major version {major} is not supported by this reader"
            f" (it reads {sorted(_READERS)}); use a medarchive release that supports it"
        )
    return reader(data, minor, count)


def _read_v1(data: bytes, minor: int, count: int) -> Record:
    end = len(data) - _TRAILER  # the body: everything before the trailer, read in place (not copied)
    if hashlib.sha256(memoryview(data)[:end]).digest() != data[end:]:
        raise CorruptRecordError("record SHA-256 trailer does not match its contents (corrupt or truncated)")
    at = _HEAD.size
    sections = []
    for i in range(count):
        if at + _SECTION.size > end:
            raise CorruptRecordError(f"section {i} header runs past the end of the record")
        stype, sflags, crc, length = _SECTION.unpack_from(data, at)
        at += _SECTION.size
        if at + length > end:
            raise CorruptRecordError(f"section {i} ({SECTION_NAMES.get(stype, stype)}) runs past the end")
        payload = data[at : at + length]
        at += length
        if google_crc32c.value(payload) != crc:
            raise CorruptRecordError(f"section {i} ({SECTION_NAMES.get(stype, stype)}) fails its CRC32C")
        if stype not in KNOWN_SECTIONS:
            if sflags & FLAG_CRITICAL:
                raise UnsupportedVersionError(
                    f"record needs section type {stype} (minor version {minor}), unknown to this reader"
                )
            continue
        sections.append(Section(stype, payload, sflags))
    if at != end:
        raise CorruptRecordError(f"{end - at} unexpected bytes after the last section")
    if not sections or sections[0].type not in CONFIG_SECTIONS:
        raise CorruptRecordError("record does not start with a config section")
    if any(s.type in CONFIG_SECTIONS for s in sections[1:]):
        raise CorruptRecordError("record has more than one config section")
    first = sections[0]
    raw = first.payload if first.type == SECTION_CONFIG else inflate_config(first.payload)
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise CorruptRecordError(f"config section is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CorruptRecordError(f"config section holds a JSON {type(config).__name__}, not an object")
    return Record(config=config, sections=sections[1:], major=1, minor=minor, config_form=first.type)


_READERS = {1: _read_v1}


# lzma presets 7-9 differ from 6 only in dictionary size (16-64 MiB against 8 MiB), which
# matters for inputs over 8 MiB, but initializing that dictionary costs ~30 ms per call:
# 15x the whole compression of a DICOM header, three times per keyed record.
_LZMA_BIG = 8 << 20


def lzma_pack(raw: bytes, *, extreme: bool = False) -> bytes:
    """``lzma.compress`` (xz) at the strongest preset that pays for itself at this size,
    with a dictionary no larger than the input needs: a match can reach any earlier byte
    either way, so the stream is as small, but the coder does not set up the preset's
    8-64 MiB dictionary for a 2 KB header (0.5 ms instead of 1.4 ms), and the decoder
    allocates as little."""
    import lzma

    preset = 9 if len(raw) > _LZMA_BIG else 6
    dict_size = min(64 << 20 if preset == 9 else 8 << 20, max(1 << 16, 1 << max(len(raw) - 1, 1).bit_length()))
    lzma2 = {"id": lzma.FILTER_LZMA2, "preset": preset | (lzma.PRESET_EXTREME if extreme else 0), "dict_size": dict_size}
    if preset == 6 and not extreme:
        lzma2["nice_len"] = _LZMA_NICE_LEN
        if len(raw) > _LZMA_HASH_CHAIN_ABOVE:
            lzma2.update(mf=lzma.MF_HC4, nice_len=16, depth=8)
    return lzma.compress(raw, format=lzma.FORMAT_XZ, filters=[lzma2])


# Preset 6 stops extending a match at 64 bytes; at 32 the headers, sealed originals and
# removed-PHI records of the 64 pipeline benchmark files (benchmarks.pipeline_throughput)
# pack in 107 ms instead of 135 ms, 140 B larger in all (276,484 against 276,344 B:
# 2 B per record). A keyed record packs three such sections.
_LZMA_NICE_LEN = 32
# Above this size (headers with large private or overlay data) a hash-chain match finder
# with short matches packs twice as fast, 0.5% larger: the two pipeline benchmark files
# with 259 kB headers pack their four sections in 26 ms instead of 55 ms, 66,708 B against
# 66,364 B. Under it the binary tree's smaller output costs little time.
_LZMA_HASH_CHAIN_ABOVE = 64 << 10
