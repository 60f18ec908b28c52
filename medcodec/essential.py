"""The essential PHI message: who the image belongs to, in as few bytes as possible.

When the whole sealed PHI (every removed attribute) does not fit in an image's
embedding capacity, ``medcodec.sealing`` embeds this smaller message instead, so that an
exported de-identified copy still identifies its patient for a key holder. It holds
the original values of ``ESSENTIAL_TAGS`` (patient name and ID, birth date, sex,
accession number, the original study / series / SOP instance UIDs) and a keyed link to
the full removed-values record that stays sealed in the archive's record (section 34).

Layout (``MAGIC``, version byte, then):

* link: 16 bytes, ``HMAC-SHA256(link key, LINK_LABEL || full message)[:16]`` where the
  full message is the sealed section's plaintext (the packed removed-values JSON:
  FORMAT.md "PHI message");
* fields, in ``ESSENTIAL_TAGS`` order, each: u8 index into ``ESSENTIAL_TAGS`` and a kind
  byte, then
    - kind 0, a UID (digits and dots only): 4-bit codes (0-9 digits, 10 '.') ending with
      code 15, packed two to a byte, high nibble first;
    - kind 1, a string with the tag's usual VR: varint length + UTF-8;
    - kind 2, anything else (another VR, several values, an absent marker): varint
      length + the compact JSON of the removed-values entry.

A decoded message is a removed-values record (``medcodec.deid`` format) with only these
elements, plus ``tier: "essential"`` and ``full_link`` (hex), so ``reidentify`` and
``reveal``'s printing take it as they take the full record.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from . import deid, leb128
from .errors import MedcodecError

__all__ = ["ESSENTIAL_TAGS", "LINK_BYTES", "EssentialError", "encode_essential", "decode_essential", "full_link"]

MAGIC = b"E"
VERSION = 1
LINK_BYTES = 16
LINK_LABEL = b"medarchive/phi-link/v1\x00"

# (path in the removed-values record, the VR a conforming file gives it)
ESSENTIAL_TAGS: tuple[tuple[str, str], ...] = (
    ("00100010", "PN"),  # PatientName
    ("00100020", "LO"),  # PatientID
    ("00100030", "DA"),  # PatientBirthDate
    ("00100040", "CS"),  # PatientSex
    ("00080050", "SH"),  # AccessionNumber
    ("0020000D", "UI"),  # StudyInstanceUID
    ("0020000E", "UI"),  # SeriesInstanceUID
    ("00080018", "UI"),  # SOPInstanceUID
)
_UID_CODES = "0123456789."
_KIND_UID, _KIND_TEXT, _KIND_JSON = 0, 1, 2


class EssentialError(MedcodecError):
    """Bytes that are not an essential PHI message of a version this reader knows."""


def full_link(link_key: bytes, full_message: bytes) -> bytes:
    """The keyed link from an essential message to its full sealed PHI message."""
    return hmac.new(link_key, LINK_LABEL + bytes(full_message), hashlib.sha256).digest()[:LINK_BYTES]


def encode_essential(removed: dict[str, Any], link: bytes) -> bytes:
    """The essential message of a removed-values record (the fields it has)."""
    if len(link) != LINK_BYTES:
        raise EssentialError(f"link must be {LINK_BYTES} bytes, got {len(link)}")
    elements = removed.get("elements", {})
    out = bytearray(MAGIC + bytes([VERSION]) + bytes(link))
    for index, (path, vr) in enumerate(ESSENTIAL_TAGS):
        if path not in elements:
            continue
        entry = elements[path]
        plain = isinstance(entry, dict) and set(entry) == {"vr", "value"} and entry["vr"] == vr
        value = entry["value"] if plain and isinstance(entry["value"], str) else None
        out.append(index)
        if value is not None and vr == "UI" and _is_uid(value):
            out.append(_KIND_UID)
            out += _pack_uid(value)
        elif value is not None:
            out.append(_KIND_TEXT)
            out += _field(value.encode("utf-8"))
        else:
            out.append(_KIND_JSON)
            out += _field(json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    return bytes(out)


def decode_essential(data: bytes) -> dict[str, Any]:
    """The removed-values record an essential message carries (see the module docstring)."""
    data = bytes(data)
    head = len(MAGIC) + 1 + LINK_BYTES
    if len(data) < head or data[: len(MAGIC)] != MAGIC:
        raise EssentialError("not an essential PHI message (bad magic)")
    if data[len(MAGIC)] != VERSION:
        raise EssentialError(f"essential PHI message version {data[len(MAGIC)]} is not supported; this reader knows {VERSION}")
    link = data[len(MAGIC) + 1 : head]
    at = head
    elements: dict[str, Any] = {}
    while at < len(data):
        if at + 2 > len(data):
            raise EssentialError("essential PHI message is truncated")
        index, kind = data[at], data[at + 1]
        at += 2
        if index >= len(ESSENTIAL_TAGS):
            raise EssentialError(f"essential PHI message names field {index}; this reader knows {len(ESSENTIAL_TAGS)}")
        path, vr = ESSENTIAL_TAGS[index]
        if kind == _KIND_UID:
            value, at = _unpack_uid(data, at)
            elements[path] = {"vr": vr, "value": value}
        elif kind in (_KIND_TEXT, _KIND_JSON):
            raw, at = _read_field(data, at)
            try:
                elements[path] = {"vr": vr, "value": raw.decode("utf-8")} if kind == _KIND_TEXT else json.loads(raw)
            except (UnicodeDecodeError, ValueError):
                raise EssentialError("essential PHI message holds a malformed value") from None
        else:
            raise EssentialError(f"essential PHI message has a field of unknown kind {kind}")
    return {"format": deid.REMOVED_FORMAT, "version": deid.REMOVED_VERSION, "elements": elements,
            "tier": "essential", "full_link": link.hex()}


def _is_uid(value: str) -> bool:
    return all(c in _UID_CODES for c in value)


def _pack_uid(value: str) -> bytes:
    codes = [_UID_CODES.index(c) for c in value] + [15]
    if len(codes) % 2:
        codes.append(15)
    return bytes((codes[i] << 4) | codes[i + 1] for i in range(0, len(codes), 2))


def _unpack_uid(data: bytes, at: int) -> tuple[str, int]:
    chars = []
    while at < len(data):
        byte = data[at]
        at += 1
        for code in (byte >> 4, byte & 15):
            if code == 15:
                return "".join(chars), at
            if code > 10:
                raise EssentialError(f"essential PHI message holds an invalid UID code {code}")
            chars.append(_UID_CODES[code])
    raise EssentialError("essential PHI message is truncated inside a UID")


def _field(raw: bytes) -> bytes:
    return leb128.encode(len(raw)) + raw  # an unsigned LEB128 length


def _read_field(data: bytes, at: int) -> tuple[bytes, int]:
    found = leb128.decode(data, at, 35)
    if found is None:
        raise EssentialError("essential PHI message has a malformed length")
    n, at = found
    if at + n > len(data):
        raise EssentialError("essential PHI message is truncated")
    return data[at : at + n], at + n
