"""Structure-aware mutators for the fuzz harnesses.

libFuzzer's byte mutations alone mostly hit a record's SHA-256 trailer and section CRC32Cs,
the lzma checks inside sections and the GCM tags of sealed sections, and rarely land on the
few bytes of a DICOM header that describe the image. These mutators edit *inside* those
checks and fields, then make the checks valid again:

* records: parsed leniently, then a config value (JSON, whether the record holds it plain
  or deflated), a section payload (raw, or its lzma-compressed content, or a sealed
  section's plaintext re-sealed with the key and the record's binding), or the section list
  is edited, and the record re-serialised with ``medcodec.container.write_record`` (valid
  CRC32C and trailer);
* DICOM files: an Image Pixel attribute (US, IS, CS), the transfer syntax UID, or bytes
  inside the PixelData value are set, keeping element lengths consistent.

Each also falls back to libFuzzer's own mutation (``atheris.Mutate``) part of the time, so
the checksums and the container's own parser are fuzzed as well.
"""

from __future__ import annotations

import copy
import hashlib
import json
import lzma
import random
import struct

import atheris

from _common import medcodec

ct = medcodec.container

INTERESTING_INTS = (0, 1, 2, 3, 4, 7, 8, 9, 12, 15, 16, 17, 24, 31, 32, 33, 63, 64, 255, 256, 1023, 4095, 32767,
                    32768, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**63 - 1, 2**63, 2**64,
                    -1, -2, -(2**31), -(2**63), 10**30)


def _inflated(payload: bytes, limit: int = 16 << 20) -> bytes | None:
    """The lzma content of a payload, or None (not lzma, or more than ``limit`` bytes: a
    mutant may hold an lzma bomb, which the readers must refuse and the mutator skip)."""
    decompressor = lzma.LZMADecompressor(memlimit=128 << 20)
    try:
        out = decompressor.decompress(payload, max_length=limit + 1)
    except lzma.LZMAError:
        return None
    return out if decompressor.eof and len(out) <= limit else None


def _bounded(out: bytes, data: bytes, max_size: int) -> bytes:
    return out if len(out) <= max_size else atheris.Mutate(data, max_size)


# --------------------------------------------------------------------------------------
# Records


def split_record(data: bytes):
    """((config section type, its payload), [(type, flags, payload)]) of a record, checksums
    not checked; None when its section table does not parse or starts with no config."""
    head, sec = struct.Struct("<8sHHII"), struct.Struct("<HHIQ")
    if len(data) < head.size + 32:
        return None
    _magic, _major, _minor, _flags, count = head.unpack_from(data, 0)
    body = data[:-32]
    at, sections = head.size, []
    for _ in range(min(count, 256)):
        if at + sec.size > len(body):
            return None
        stype, sflags, _crc, length = sec.unpack_from(body, at)
        at += sec.size
        if at + length > len(body):
            return None
        sections.append((stype, sflags, body[at : at + length]))
        at += length
    if not sections or sections[0][0] not in ct.CONFIG_SECTIONS:
        return None
    return (sections[0][0], sections[0][2]), sections[1:]


def config_json(config_type: int, payload: bytes) -> bytes | None:
    """The JSON bytes of a config section of either form; None when a deflated one does not inflate."""
    if config_type == ct.SECTION_CONFIG:
        return payload
    try:
        return ct.inflate_config(payload)
    except medcodec.MedcodecError:
        return None


def serialise_raw(config: bytes, sections, *, major: int = ct.FORMAT_MAJOR, minor: int = ct.FORMAT_MINOR,
                  config_type: int = ct.SECTION_CONFIG) -> bytes:
    """A record with valid CRC32Cs and trailer around whatever config section payload (of
    ``config_type``: plain JSON, or a config-deflate payload) and sections."""
    import google_crc32c

    parts = [struct.pack("<8sHHII", ct.MAGIC, major, minor, 0, len(sections) + 1)]
    for stype, sflags, payload in [(config_type, ct.FLAG_CRITICAL, config), *sections]:
        parts.append(struct.pack("<HHIQ", stype, sflags, google_crc32c.value(payload), len(payload)))
        parts.append(payload)
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def _nodes(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield path + (k,), v
            yield from _nodes(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield path + (i,), v
            yield from _nodes(v, path + (i,))


def _strings(obj, out: set) -> None:
    for _, v in _nodes(obj):
        if isinstance(v, str) and len(v) <= 80:
            out.add(v)


class RecordMutator:
    """``custom_mutator(data, max_size, seed)`` for atheris, for records."""

    def __init__(self, seeds: dict[str, bytes], keyring) -> None:
        self.keyring = keyring
        self.parsed = []
        strings: set[str] = set()
        for blob in seeds.values():
            record = ct.read_record(blob)
            self.parsed.append(record)
            _strings(record.config, strings)
        self.strings = sorted(strings)

    # ---- values

    def new_value(self, value, rng: random.Random):
        r = rng.random()
        if isinstance(value, bool) or value is None:
            return rng.choice([True, False, None, 0, 1, "", [], {}, "x"])
        if isinstance(value, int):
            if r < 0.4:
                return value + rng.choice([-2, -1, 1, 2])
            if r < 0.5:
                return rng.choice([value * 2, value // 2, -value, value * 1000 + 1])
            if r < 0.85:
                return rng.choice(INTERESTING_INTS)
            return rng.choice([str(value), float(value) + 0.5, [value], None, True])
        if isinstance(value, float):
            return rng.choice([0.0, -1.0, 1e308, float("nan"), float("inf"), 7, str(value)])
        if isinstance(value, str):
            if r < 0.35:
                return rng.choice(self.strings)
            if r < 0.7:
                raw = atheris.Mutate(value.encode("utf-8"), len(value) + 16)
                return raw.decode("utf-8", "replace")
            return rng.choice(["", value * 2, value[: len(value) // 2], value.upper(), 0, None, [value]])
        if isinstance(value, list):
            v = list(value)
            if r < 0.3 and v:
                del v[rng.randrange(len(v))]
            elif r < 0.5 and v:
                v.insert(rng.randrange(len(v) + 1), copy.deepcopy(rng.choice(v)))
            elif r < 0.65:
                rng.shuffle(v)
            elif r < 0.8:
                v = []
            else:
                return rng.choice([{}, "", 0, None])
            return v
        if isinstance(value, dict):
            return rng.choice([{}, [], "", 0, None])
        return None

    def mutate_config(self, config: dict, rng: random.Random) -> dict:
        config = copy.deepcopy(config)
        nodes = list(_nodes(config))
        if not nodes:
            return {"kind": rng.choice(["dicom", "pixels"])}
        path, value = rng.choice(nodes)
        parent = config
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        r = rng.random()
        if r < 0.12:
            del parent[last]
        elif r < 0.17 and isinstance(parent, dict):
            parent[rng.choice(self.strings)] = self.new_value(value, rng)
        elif r < 0.22:  # a value from the same place in another seed's config
            other = rng.choice(self.parsed).config
            try:
                for key in path:
                    other = other[key]
                parent[last] = copy.deepcopy(other)
            except (KeyError, IndexError, TypeError):
                parent[last] = self.new_value(value, rng)
        else:
            parent[last] = self.new_value(value, rng)
        return config

    # ---- payloads

    def mutate_payload(self, stype: int, payload: bytes, config: dict, rng: random.Random) -> bytes:
        r = rng.random()
        if stype in (ct.SECTION_SEALED_ORIGINAL, ct.SECTION_SEALED_ORIGINAL_DELTA, ct.SECTION_SEALED_DISPLACED,
                     ct.SECTION_SEALED_PHI) and r < 0.6:
            resealed = self._reseal(stype, payload, config, rng)
            if resealed is not None:
                return resealed
        if r < 0.45:
            inner = _inflated(payload)
            if inner is not None:
                return lzma.compress(self._mutate_inner(inner, rng), preset=0)
        if r < 0.55:
            return payload[: rng.randrange(len(payload) + 1)]
        if r < 0.62:  # the same section of another seed record
            others = [s.payload for rec in self.parsed for s in rec.sections if s.type == stype]
            if others:
                return rng.choice(others)
        return atheris.Mutate(payload, max(64, 2 * len(payload)))

    def _mutate_inner(self, inner: bytes, rng: random.Random) -> bytes:
        """Mutate decompressed section content; lengths in a leading <QQQ / <IQQQ table too."""
        if len(inner) >= 24 and rng.random() < 0.3:
            fields = len(inner) >= 28 and rng.random() < 0.5
            fmt = "<IQQQ" if fields else "<QQQ"
            values = list(struct.unpack_from(fmt, inner, 0))
            i = rng.randrange(len(values))
            values[i] = rng.choice([values[i] + rng.choice([-1, 1, 8]), 0, 2**63, len(inner), values[i] // 2])
            try:
                return struct.pack(fmt, *values) + inner[struct.calcsize(fmt) :]
            except struct.error:
                return inner
        return atheris.Mutate(inner, max(64, 2 * len(inner)))

    def _reseal(self, stype: int, payload: bytes, config: dict, rng: random.Random) -> bytes | None:
        """Open a sealed section with the key, mutate its plaintext, seal it again under the
        record's own binding: what only a key holder could write, the deepest decode paths."""
        crypto, sealing = medcodec.crypto, medcodec.sealing
        purpose = {v: k for k, v in sealing.SEALED_SECTIONS.items()}[stype]
        try:
            binding = config["sealed"]["binding"]
            ad = sealing._binding_ad(binding, purpose)
            plain = crypto.open_sealed(self.keyring, crypto.SealedBox.from_bytes(payload), associated=ad)
        except Exception:  # noqa: BLE001 - not sealable as is: mutate the bytes instead
            return None
        if stype == ct.SECTION_SEALED_ORIGINAL_DELTA and len(plain) >= 41:
            plain = self._mutate_original_delta(plain, rng)
            return crypto.seal(self.keyring, plain, associated=ad).to_bytes()
        inner = _inflated(plain)
        if inner is None:
            plain = self._mutate_inner(plain, rng)
        else:
            if stype == ct.SECTION_SEALED_ORIGINAL and len(inner) >= 28 and rng.random() < 0.5:
                inner = self._mutate_original_meta(inner, rng)
            else:
                inner = self._mutate_inner(inner, rng)
            plain = lzma.compress(inner, preset=0)
        return crypto.seal(self.keyring, plain, associated=ad).to_bytes()

    def _mutate_original_delta(self, plain: bytes, rng: random.Random) -> bytes:
        """Section 35's plaintext: its packing header (packing, shared bytes, the reference's
        SHA-256), or what it packs (packing 2's stream of copies and literals inflated here;
        the deflate one needs the record's reference, so its bytes are mutated)."""
        packing, shared, digest = struct.unpack_from("<BQ32s", plain, 0)
        if rng.random() < 0.3:
            packing = rng.choice([packing, 0, 1, 2, 3, 255])
            shared = rng.choice([shared, shared + 1, max(shared - 1, 0), 0, 2**63, 2**64 - 1])
            digest = digest if rng.random() < 0.8 else bytes(32)
            return struct.pack("<BQ32s", packing, shared, digest) + plain[41:]
        inner = _inflated(plain[41:]) if packing == 2 else None
        if inner is None:
            return plain[:41] + atheris.Mutate(plain[41:], max(64, 2 * len(plain)))
        return plain[:41] + lzma.compress(self._mutate_inner(inner, rng), preset=0)

    def _mutate_original_meta(self, inner: bytes, rng: random.Random) -> bytes:
        n_head, a, b, c = struct.unpack_from("<IQQQ", inner, 0)
        at = struct.calcsize("<IQQQ")
        try:
            meta = json.loads(inner[at : at + n_head])
        except ValueError:
            return inner
        meta = self.mutate_config(meta, rng) if isinstance(meta, dict) else meta
        head = json.dumps(meta, sort_keys=True).encode()
        return struct.pack("<IQQQ", len(head), a, b, c) + head + inner[at + n_head :]

    # ---- the mutator

    def __call__(self, data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        r = rng.random()
        parts = split_record(data)
        if r < 0.12 or parts is None:
            return atheris.Mutate(data, max_size)
        (config_type, config_payload), sections = parts
        config_bytes = config_json(config_type, config_payload)
        try:
            config = json.loads(config_bytes) if config_bytes is not None else None
        except ValueError:
            config = None
        if r < 0.17 or not isinstance(config, dict):  # bytes edited under valid checksums
            if rng.random() < 0.5 or not sections:
                if config_type == ct.SECTION_CONFIG_DEFLATE and config_bytes is not None and rng.random() < 0.5:
                    # the JSON inside, deflated again: what a reader inflates is edited
                    config_payload = ct.deflate_config(atheris.Mutate(config_bytes, len(config_bytes) + 64))
                else:  # the section's own bytes: plain JSON, or dictionary id and deflate stream
                    config_payload = atheris.Mutate(config_payload, len(config_payload) + 64)
            else:
                i = rng.randrange(len(sections))
                stype, sflags, payload = sections[i]
                sections[i] = (stype, sflags, atheris.Mutate(payload, max(64, 2 * len(payload))))
            return _bounded(serialise_raw(config_payload, sections, config_type=config_type), data, max_size)
        if r < 0.27:  # the section list itself, the config in either form
            sections = self._mutate_sections(sections, rng)
            major = ct.FORMAT_MAJOR if rng.random() < 0.9 else rng.choice([0, 2, 65535])
            first = ct.config_section(config) if rng.random() < 0.8 else ct.Section(ct.SECTION_CONFIG, ct.encode_config(config))
            return _bounded(serialise_raw(first.payload, sections, major=major, config_type=first.type), data, max_size)
        if r < 0.6 or not sections:
            for _ in range(1 + (rng.random() < 0.25)):
                config = self.mutate_config(config, rng)
        else:
            i = rng.randrange(len(sections))
            stype, sflags, payload = sections[i]
            sections[i] = (stype, sflags, self.mutate_payload(stype, payload, config, rng))
        record = ct.Record(config=config, sections=[ct.Section(t, p, f) for t, f, p in sections])
        try:
            out = ct.write_record(record)
        except (TypeError, ValueError, OverflowError):  # a value JSON cannot carry
            return atheris.Mutate(data, max_size)
        return _bounded(out, data, max_size)

    def _mutate_sections(self, sections: list, rng: random.Random) -> list:
        sections = list(sections)
        r = rng.random()
        if r < 0.25 and sections:
            del sections[rng.randrange(len(sections))]
        elif r < 0.45 and sections:
            sections.insert(rng.randrange(len(sections) + 1), rng.choice(sections))
        elif r < 0.6 and len(sections) > 1:
            i, j = rng.randrange(len(sections)), rng.randrange(len(sections))
            sections[i], sections[j] = sections[j], sections[i]
        elif r < 0.8 and sections:
            i = rng.randrange(len(sections))
            stype, sflags, payload = sections[i]
            sections[i] = (rng.choice(sorted(ct.KNOWN_SECTIONS) + [5, 99, 65535]), sflags, payload)
        elif sections:
            i = rng.randrange(len(sections))
            stype, sflags, payload = sections[i]
            sections[i] = (stype, sflags ^ ct.FLAG_CRITICAL, payload)
        return sections


# --------------------------------------------------------------------------------------
# DICOM files

US_TAGS = (0x00280010, 0x00280011, 0x00280100, 0x00280101, 0x00280102, 0x00280103, 0x00280002, 0x00280006)
NUMBER_OF_FRAMES = 0x00280008
PHOTOMETRIC = 0x00280004
TRANSFER_SYNTAX = 0x00020010
PIXEL_DATA = 0x7FE00010
PHOTOMETRICS = (b"MONOCHROME1", b"MONOCHROME2", b"RGB", b"YBR_FULL", b"YBR_FULL_422", b"YBR_RCT", b"YBR_ICT",
                b"PALETTE COLOR", b"", b"XYZ")
TRANSFER_SYNTAXES = tuple(s.encode() for s in (
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203", "1.2.3.4", "",
))
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UR", b"UT", b"UN", b"SV", b"UV"}


def _find_elements(data: bytes, tag: int):
    """(value offset, length offset, length size, little) of every place ``tag``'s header
    could start, explicit or implicit, either byte order."""
    group, elem = tag >> 16, tag & 0xFFFF
    found = []
    for little in (True, False):
        pattern = struct.pack("<HH" if little else ">HH", group, elem)
        start = data.find(pattern)
        while start != -1:
            vr = data[start + 4 : start + 6]
            if vr.isalpha() and vr.isupper():
                if vr in _LONG_VRS:
                    found.append((start + 12, start + 8, 4, little))
                else:
                    found.append((start + 8, start + 6, 2, little))
            else:
                found.append((start + 8, start + 4, 4, little))
            start = data.find(pattern, start + 1)
    return [f for f in found if f[0] <= len(data)]


def _set_value(data: bytes, place, value: bytes) -> bytes:
    """Replace the element's value, its length field updated (UNDEFINED lengths: in place)."""
    at, length_at, size, little = place
    fmt = ("<" if little else ">") + ("H" if size == 2 else "I")
    if length_at + size > len(data):
        return data
    (length,) = struct.unpack_from(fmt, data, length_at)
    if length == 0xFFFFFFFF:
        return data[:at] + value + data[at + len(value) :]
    if len(value) % 2:
        value += b" " if value[-1:].isalnum() or not value else b"\0"
    if len(value) >= 1 << (8 * size):
        return data
    return data[:length_at] + struct.pack(fmt, len(value)) + data[length_at + size : at] + value + data[at + length :]


class DicomMutator:
    """``custom_mutator(data, max_size, seed)`` for atheris, for DICOM files."""

    def __init__(self, *, pixel_bits: bool = False) -> None:
        self.pixel_bits = pixel_bits  # also flip low bits inside PixelData (stego files)

    def __call__(self, data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        r = rng.random()
        if r < 0.55:
            return atheris.Mutate(data, max_size)
        if r < 0.72:
            places = [p for tag in US_TAGS for p in _find_elements(data, tag)]
            if places:
                place = rng.choice(places)
                at, little = place[0], place[3]
                old = data[at : at + 2]
                if len(old) == 2:
                    (was,) = struct.unpack("<H" if little else ">H", old)
                    value = rng.choice([v for v in INTERESTING_INTS if 0 <= v < 65536] + [(was + 1) & 0xFFFF, (was - 1) & 0xFFFF])
                    return data[:at] + struct.pack("<H" if little else ">H", value) + data[at + 2 :]
        elif r < 0.8:
            tag = rng.choice([NUMBER_OF_FRAMES, PHOTOMETRIC])
            places = _find_elements(data, tag)
            if tag == NUMBER_OF_FRAMES:
                value = rng.choice([b"0", b"1", b"2", b"3", b"-1", b"10", b"1000", b"99999999", b"2.5", b"", b"x"])
            else:
                value = rng.choice(PHOTOMETRICS)
            if places:
                return _bounded(_set_value(data, rng.choice(places), value), data, max_size)
        elif r < 0.87:
            places = _find_elements(data, TRANSFER_SYNTAX)
            if places:
                return _bounded(_set_value(data, places[0], rng.choice(TRANSFER_SYNTAXES)), data, max_size)
        else:
            places = _find_elements(data, PIXEL_DATA)
            if places:
                at = places[-1][0]
                value = bytearray(data[at:])
                if value:
                    if self.pixel_bits or rng.random() < 0.3:
                        for _ in range(rng.choice([1, 1, 2, 3, 8])):
                            value[rng.randrange(len(value))] ^= 1 << rng.choice([0, 0, 0, 1, 7])
                    else:
                        cut = rng.randrange(len(value))
                        value = value[:cut] + atheris.Mutate(bytes(value[cut:cut + 256]), 512) + value[cut + 256:]
                    return _bounded(data[:at] + bytes(value), data, max_size)
        return atheris.Mutate(data, max_size)
