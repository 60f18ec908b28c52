"""Container format v1: magic, version, typed sections with lengths and CRC32C, SHA-256 trailer.

The byte layout is specified in schemas/FORMAT.md; this module is its reference
implementation. All integers little-endian.

    record   = magic(8) major(u16) minor(u16) flags(u32) count(u32) section* sha256(32)
    section  = type(u16) flags(u16) crc32c(u32) length(u64) payload(length)

A section with the CRITICAL flag must be understood by the reader; unknown
non-critical sections are skipped (room for minor-version additions). The trailer
is the SHA-256 of every byte before it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import google_crc32c

from .errors import CorruptRecordError, UnsupportedVersionError

MAGIC = b"\x89MDC\r\n\x1a\n"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0

FLAG_CRITICAL = 0x0001

# Stable section type ids: never reuse a number for another meaning.
SECTION_CONFIG = 1  # JSON codec config and record description
SECTION_HEADER = 2  # DICOM non-pixel bytes (prefix, suffix, extra), lzma
SECTION_VERBATIM = 3  # the original file, kept as is
SECTION_GLOBAL = 16  # global path stream of one plane (frame-major, then sample)
SECTION_LOCAL = 17  # local path stream of one plane
SECTION_OUTSIDE = 18  # bits outside BitsStored that differ from the expected pattern, lzma
SECTION_PALETTE = 19  # sorted table of the values used, when values are coded as indices into it
SECTION_COLOURS = 20  # table of the colours used (n x samples, <u2, lzma), when pixels are coded as indices into it
SECTION_SEALED_ORIGINAL = 32  # sealed box: the original's non-pixel bytes and rebuild info (or whole file)
SECTION_SEALED_DISPLACED = 33  # sealed box: the bits the embedded message displaced
SECTION_SEALED_PHI = 34  # sealed box: the removed PHI (also embedded in the pixels)
SECTION_NAMES = {
    SECTION_CONFIG: "config",
    SECTION_HEADER: "header",
    SECTION_VERBATIM: "verbatim",
    SECTION_GLOBAL: "global",
    SECTION_LOCAL: "local",
    SECTION_OUTSIDE: "outside",
    SECTION_PALETTE: "palette",
    SECTION_COLOURS: "colours",
    SECTION_SEALED_ORIGINAL: "sealed-original",
    SECTION_SEALED_DISPLACED: "sealed-displaced",
    SECTION_SEALED_PHI: "sealed-phi",
}
KNOWN_SECTIONS = frozenset(SECTION_NAMES)

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


def write_record(record: Record) -> bytes:
    sections = [Section(SECTION_CONFIG, encode_config(record.config))] + [
        s for s in record.sections if s.type != SECTION_CONFIG
    ]
    parts = [_HEAD.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, 0, len(sections))]
    for s in sections:
        parts.append(_SECTION.pack(s.type, s.flags, google_crc32c.value(s.payload), len(s.payload)))
        parts.append(s.payload)
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


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
    body, trailer = data[:-_TRAILER], data[-_TRAILER:]
    if hashlib.sha256(body).digest() != trailer:
        raise CorruptRecordError("record SHA-256 trailer does not match its contents (corrupt or truncated)")
    at = _HEAD.size
    sections = []
    for i in range(count):
        if at + _SECTION.size > len(body):
            raise CorruptRecordError(f"section {i} header runs past the end of the record")
        stype, sflags, crc, length = _SECTION.unpack_from(body, at)
        at += _SECTION.size
        if at + length > len(body):
            raise CorruptRecordError(f"section {i} ({SECTION_NAMES.get(stype, stype)}) runs past the end")
        payload = body[at : at + length]
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
    if at != len(body):
        raise CorruptRecordError(f"{len(body) - at} unexpected bytes after the last section")
    if not sections or sections[0].type != SECTION_CONFIG:
        raise CorruptRecordError("record does not start with a config section")
    try:
        config = json.loads(sections[0].payload)
    except ValueError as exc:
        raise CorruptRecordError(f"config section is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CorruptRecordError(f"config section holds a JSON {type(config).__name__}, not an object")
    return Record(config=config, sections=sections[1:], major=1, minor=minor)


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
    preset |= lzma.PRESET_EXTREME if extreme else 0
    return lzma.compress(raw, format=lzma.FORMAT_XZ,
                         filters=[{"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": dict_size}])
