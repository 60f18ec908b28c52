"""Keyed records: de-identification, sealed metadata, message steganography, key rotation.

With a keyring, ``compress_dicom`` stores:

* in clear: the de-identified file — its header (PS3.15 Basic Profile, keyed UIDs) and
  its pixels, which are the *stego image*: the sealed PHI message embedded in the lowest
  plane (medcodec.stego). Decoding without a key gives exactly this file.
* sealed (AES-256-GCM envelope, medcodec.crypto), each bound by associated data to the
  format version, the de-identified UIDs and the digest of the pixels that embedding does
  not touch:
    - section 35 (section 32 in records before format 1.2): the original's non-pixel
      bytes and how to rebuild it (or the whole original file, for sources kept
      verbatim), packed against the de-identified file's own bytes,
    - section 33: the displaced bits that undo the embedding,
    - section 34: the PHI message (the same one that is embedded), so key rotation can
      re-wrap it without touching pixels.

A key holder restores the original byte for byte (its SHA-256 is sealed too). `reveal`
reads the message back out of an exported stego DICOM with the keyring alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataelem import DataElement

from . import container as ct
from . import bytedelta, crypto, deid, essential, stego
from .codec import _inflate, _pack_header
from .dicom import (
    NO_DEADLINE,
    RESTORE_VERBATIM,
    Deadline,
    DicomLimits,
    ParsedDicom,
    default_memory_budget,
    parse_dicom,
    parse_written,
    quiet_pydicom,
    rebuild_dicom,
)
from .dicom.syntaxes import EXPLICIT_VR_LE
from .dicom.writing import write_part10_explicit_le
from .errors import CorruptRecordError, LimitExceededError, MedcodecError, UnsupportedError, record_errors, shown
from .planes import SampleFormat, palette_of, values_and_seen, values_to_words, words_to_samples
from .spec import PixelSpec

PURPOSE_ORIGINAL = "original"  # section 32 (records before format 1.2: read, never written)
PURPOSE_ORIGINAL_DELTA = "original-delta"  # section 35
PURPOSE_DISPLACED = "displaced"
PURPOSE_PHI = "phi"
PURPOSE_PHI_ESSENTIAL = "phi-essential"  # only ever embedded, never a section
# The "format_version" of a sealed box's binding (part of its associated data): which
# pixel digest it holds. It does not follow the container's minor version. "1.0": the
# outside values as int64 (stego.outside_digest without bits_stored); "1.1", what writers
# use: every value at its sample width, the embedded ones as 0 (a quarter of the bytes to
# hash for 16-bit images). reveal() rebuilds the binding from a stego file alone, with
# no record to read the version from: it tries each version (the newest first), and the
# associated data, which names the version, lets only the right one open.
BINDING_FORMAT_VERSION = "1.1"
BINDING_FORMAT_VERSIONS = ("1.1", "1.0")
TIER_FULL, TIER_ESSENTIAL, TIER_NONE = "full", "essential", "none"
SEALED_SECTIONS = {
    PURPOSE_ORIGINAL: ct.SECTION_SEALED_ORIGINAL,
    PURPOSE_ORIGINAL_DELTA: ct.SECTION_SEALED_ORIGINAL_DELTA,
    PURPOSE_DISPLACED: ct.SECTION_SEALED_DISPLACED,
    PURPOSE_PHI: ct.SECTION_SEALED_PHI,
}


# The PHI message (section 34's plaintext, and what the pixels carry in the full tier):
# since format 1.2 a dictionary id byte then a raw deflate stream of the removed-values
# JSON with that preset dictionary; before, an xz stream (first byte 0xFD), still read.
# Dictionary 1 is a removed-values record with every value empty: the attributes of the
# Patient, General Study and SOP Common modules that the Basic Profile removes or
# replaces and that every image IOD has (Type 1 or 2), the three de-identification
# attributes that are recorded absent, and the file meta's two (FORMAT.md "PHI message").
# Normative: written out, never computed from live code; a better one gets a new id.
# On the 177 distinct removed-values records of pydicom-data (2026-12-06): xz 124,624 B,
# deflate 118,358 B, deflate with dictionary 1 95,441 B (-23%; records under 1.5 kB of
# JSON: 32,324 -> 16,187 B), 13x as fast to pack.
_PHI_DICTIONARY_1 = (
    b'{"elements":{"00080018":{"value":"","vr":"UI"},"00080020":{"value":"","vr":"DA"},'
    b'"00080030":{"value":"","vr":"TM"},"00080050":{"value":"","vr":"SH"},"00080090":{"value":"","vr":"PN"},'
    b'"00100010":{"value":"","vr":"PN"},"00100020":{"value":"","vr":"LO"},"00100030":{"value":"","vr":"DA"},'
    b'"00100040":{"value":"","vr":"CS"},"00120062":{"absent":true},"00120063":{"absent":true},'
    b'"00120064":{"absent":true},"0020000D":{"value":"","vr":"UI"},"0020000E":{"value":"","vr":"UI"},'
    b'"00200010":{"value":"","vr":"SH"},"meta/00020003":{"value":"","vr":"UI"},'
    b'"meta/00020016":{"value":"","vr":"AE"}},"format":"medarchive-deid-removed","version":1}'
)
PHI_DICTIONARIES = {1: _PHI_DICTIONARY_1}
PHI_DICTIONARY_ID = 1
PHI_DICTIONARY_SHA256 = {1: "c16db0e64d12d57d3ca8df22717e7963c1b13e6623f0254a4c4f4e413c8b934b"}
_XZ_FIRST_BYTE = 0xFD


def _pack_phi(removed_json: bytes) -> bytes:
    """The PHI message of a removed-values record (its compact JSON): dictionary 1's id
    byte and the JSON deflated after it."""
    return bytes([PHI_DICTIONARY_ID]) + ct.deflate_raw(removed_json, PHI_DICTIONARIES[PHI_DICTIONARY_ID])


def _unpack_phi(phi: bytes, what: str, limits: DicomLimits | None) -> bytes:
    """The removed-values JSON of a PHI message, either form, inflated to at most the
    memory budget (plus 1 MiB)."""
    if phi[:1] == bytes([_XZ_FIRST_BYTE]):
        return _inflate_sealed(phi, what, limits)
    zdict = PHI_DICTIONARIES.get(phi[0]) if phi else None
    if zdict is None:
        raise UnsupportedError(f"{what} packed with dictionary {shown(phi[0]) if phi else 'none'}, unknown to this "
                               f"reader (it knows {sorted(PHI_DICTIONARIES)} and xz)")
    limit, hint = _sealed_limit(limits)
    return ct.inflate_raw(phi[1:], zdict, limit, what, over=LimitExceededError, hint=hint)


class SealingError(MedcodecError):
    """A keyed operation cannot be carried out (e.g. the de-identified file cannot be written)."""


def _pixel_digest(version: str, values: np.ndarray, mask: np.ndarray, bits_stored: int) -> str:
    """The binding's digest of the pixels that embedding does not touch, as ``version``
    (one of BINDING_FORMAT_VERSIONS: ``_sealed`` refuses others) defines it."""
    return stego.outside_digest(values, mask, bits_stored=None if version == "1.0" else bits_stored)


def _binding_ad(binding: dict[str, Any], purpose: str) -> bytes:
    return crypto.associated_data(
        format_version=binding["format_version"], uids=binding["uids"], pixel_digest=binding["pixel_digest"],
        purpose=purpose,
    )


def _original_plaintext(parsed: ParsedDicom, data: bytes, sha256: str) -> bytes:
    """Everything a key holder needs, besides the pixels, to rebuild the original file
    (``data``, whose SHA-256 in hex is ``sha256``): section 32's plaintext before lzma,
    the ``raw`` of section 35's."""
    meta = {
        "restore_mode": parsed.restore_mode,
        "reencode": parsed.reencode,
        "note": parsed.note,
        "spec": None if parsed.spec is None else parsed.spec.to_json(),
        "sha256": sha256,
        "size": len(data),
    }
    if parsed.restore_mode == RESTORE_VERBATIM:
        parts = [data, b"", b""]
    else:
        parts = [parsed.prefix, parsed.suffix, parsed.extra]
    head = json.dumps(meta, sort_keys=True).encode()
    return struct.pack("<IQQQ", len(head), *(len(p) for p in parts)) + head + b"".join(parts)


# Section 35's packings of its head (FORMAT.md "Sealed original, packed against the
# de-identified file"): raw deflate after the reference's last 32 KiB, or xz of copies
# from the reference and the literals between them (``bytedelta``).
DELTA_DEFLATE, DELTA_COPIES = 1, 2
# packing, bytes shared with the end of the reference, the reference's SHA-256: the clear
# part of a record is not authenticated, and a pixel-exact original has no sealed hash of
# its own to catch a reference altered after sealing.
_DELTA_HEAD = struct.Struct("<BQ32s")
# The writer deflates heads up to this size and packs larger ones as copies: deflate's
# dictionary is the reference's last 32 KiB, so for a large header most of the original
# lies beyond its reach. On 66 pydicom-data files restored byte-exact (the pipeline
# benchmark's 64 and two JPEG ones) and 8 lossy JPEG ones kept verbatim, 2026-12-06 (the
# packed bytes alone): section 32's lzma 129,172 and 3,630,948 B; deflate 116,826 and
# 10,235 B; xz of the head alone 126,136 and 12,240 B. Deflate won on all but the two with
# 259 kB headers (25,678 against 16,784 B by xz, 984 B as copies) and lost by at most 16 B
# under 64 KiB; an ECG kept verbatim (waveform_ecg, 291 kB): xz 76,136 B, copies 1,616 B.
DELTA_DEFLATE_MAX = 1 << 16


def shared_tail(a: bytes, b: bytes) -> int:
    """How many bytes ``a`` and ``b`` end with in common."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.frombuffer(a, dtype=np.uint8, count=n, offset=len(a) - n)
    y = np.frombuffer(b, dtype=np.uint8, count=n, offset=len(b) - n)
    differ = np.flatnonzero(x != y)
    return n if differ.size == 0 else n - 1 - int(differ[-1])


def _pack_original_delta(raw: bytes, reference: bytes, digest: bytes) -> bytes:
    """Section 35's plaintext: ``raw`` (``_original_plaintext``) as the bytes it shares
    with the end of ``reference`` (the de-identified file's bytes other than its pixel
    samples, ``_reference``; ``digest`` its SHA-256) and the rest packed against the
    reference: deflated after it, or as copies from it."""
    shared = shared_tail(raw, reference)
    head = raw[: len(raw) - shared]
    rest = reference[: len(reference) - shared]
    if len(head) <= DELTA_DEFLATE_MAX:
        return _DELTA_HEAD.pack(DELTA_DEFLATE, shared, digest) + ct.deflate_raw(head, rest)
    return _DELTA_HEAD.pack(DELTA_COPIES, shared, digest) + ct.lzma_pack(bytedelta.encode(head, rest))


def _reference(public: bytes, header: tuple[bytes, bytes, bytes] | None) -> bytes:
    """What section 35 is packed against: the de-identified file's non-pixel bytes as its
    header section holds them (prefix, suffix, extra: ``header``), or the whole file
    (``public``) for a record that keeps it verbatim (``header`` None)."""
    return public if header is None else b"".join(header)


def _reference_digest(reference: bytes, header: tuple[bytes, bytes, bytes] | None,
                      public_sha256: str | None) -> bytes:
    """The SHA-256 of ``_reference(public, header)`` (``reference``): for a record kept
    verbatim, the de-identified file's, when its hex is known (``public_sha256``), else
    hashed."""
    if header is None and public_sha256 is not None:
        return bytes.fromhex(public_sha256)
    return hashlib.sha256(reference).digest()


# What a sealed section may inflate to. Its plaintext is the original's non-pixel bytes (the
# whole original for sources kept verbatim) with a short description, or the PHI removed
# from the original's header: never more than the original file, which a restore holds in
# memory, so the memory budget bounds it (codec._inflate stops the lzma stream there). The
# sections are authenticated, so only a key holder can make one that inflates past it.
_SEALED_DESCRIPTION_BYTES = 1 << 20


def _sealed_limit(limits: DicomLimits | None) -> tuple[int, str]:
    """(the most a sealed section may inflate to, the hint that ends the error past it)."""
    budget = (limits or DicomLimits()).memory_bytes
    budget = default_memory_budget() if budget is None else budget
    return (budget + _SEALED_DESCRIPTION_BYTES,
            f" under the memory budget of {budget / 2**30:.1f} GiB (raise it with --memory-budget)")


def _inflate_sealed(payload: bytes, what: str, limits: DicomLimits | None) -> bytes:
    limit, hint = _sealed_limit(limits)
    return _inflate(payload, limit, what, over=LimitExceededError, hint=hint)


def _unpack_original(blob: bytes, limits: DicomLimits | None = None) -> tuple[dict, bytes, bytes, bytes]:
    """Section 32's plaintext (lzma of ``_original_plaintext``), read."""
    return _parse_original(_inflate_sealed(blob, "sealed original", limits))


def _unpack_original_delta(blob: bytes, reference: bytes, limits: DicomLimits | None = None, *,
                           reference_digest: bytes | None = None) -> tuple[dict, bytes, bytes, bytes]:
    """Section 35's plaintext, packed against ``reference`` (``_reference``; its SHA-256
    ``reference_digest`` when known, else hashed here), read."""
    if len(blob) < _DELTA_HEAD.size:
        raise CorruptRecordError("sealed original section is shorter than its packing header")
    packing, shared, digest = _DELTA_HEAD.unpack_from(blob, 0)
    if (reference_digest or hashlib.sha256(reference).digest()) != digest:
        raise crypto.IntegrityError("de-identified file is not the one the sealed original was packed against "
                                    "(record altered)")
    if shared > len(reference):
        raise CorruptRecordError(f"sealed original shares {shown(shared)} bytes with a de-identified file of "
                                 f"{len(reference)}")
    payload = blob[_DELTA_HEAD.size :]
    if packing == DELTA_DEFLATE:
        limit, hint = _sealed_limit(limits)
        head = ct.inflate_raw(payload, reference[: len(reference) - shared], limit, "sealed original",
                              over=LimitExceededError, hint=hint)
    elif packing == DELTA_COPIES:
        limit, _ = _sealed_limit(limits)
        head = bytedelta.decode(_inflate_sealed(payload, "sealed original", limits), reference, limit)
    else:
        raise UnsupportedError(f"sealed original packed as {shown(packing)}, unknown to this reader (it knows "
                               f"{DELTA_DEFLATE} and {DELTA_COPIES})")
    return _parse_original(head + reference[len(reference) - shared :] if shared else head)


def _parse_original(raw: bytes) -> tuple[dict, bytes, bytes, bytes]:
    try:
        n_head, a, b, c = struct.unpack_from("<IQQQ", raw, 0)
    except struct.error as exc:
        raise CorruptRecordError(f"sealed original section is malformed: {exc}") from None
    at = struct.calcsize("<IQQQ")
    try:
        meta = json.loads(raw[at : at + n_head])
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("restore_mode"), str) or not isinstance(
            meta.get("spec"), (dict, type(None))) or not isinstance(meta.get("sha256"), str):
        raise CorruptRecordError("sealed original section's description is malformed")
    at += n_head
    return meta, raw[at : at + a], raw[at + a : at + a + b], raw[at + a + b : at + a + b + c]


# Bytes per item of the VRs whose values pydicom reads as a sequence of fixed-size numbers
# (a value of another length does not convert: BytesLengthException).
_ITEM_BYTES = {"AT": 4, "FD": 8, "FL": 4, "OD": 8, "OF": 4, "OL": 4, "OV": 8, "OW": 2, "SL": 4, "SS": 2,
               "SV": 8, "UL": 4, "US": 2, "UV": 8}
_KNOWN_VRS = frozenset("AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR "
                       "US UT UV".split())  # PS3.5 6.2 (pydicom.valuerep.VR, less its ambiguous entries)


def _convert_values(dataset) -> None:
    """Convert the values of ``dataset`` (recursively) that de-identification or the
    writer will convert; an element that stays as read (``deid.kept_as_read``) is checked
    to be one pydicom could convert: a known VR, in Explicit VR Little Endian (what the
    de-identified file is written in, so the writer copies it), of even length, a whole
    number of items."""
    for tag, held in list(dataset._dict.items()):
        raw = deid.item_as_read(dataset, tag, held)
        if (deid.kept_as_read(raw) and not raw.is_implicit_VR and raw.is_little_endian and raw.VR in _KNOWN_VRS
                and raw.length % 2 == 0 and raw.length % _ITEM_BYTES.get(raw.VR, 1) == 0):
            continue
        elem = raw if isinstance(raw, DataElement) else deid.stored_item(dataset, tag, raw)
        if elem.VR == "SQ":
            for item in elem.value or ():
                _convert_values(item)


def _deidentified_file(result: deid.DeidResult, parsed: ParsedDicom, stego_words: np.ndarray | None) -> bytes:
    """Write the de-identified dataset; its pixel data are the stego words (Explicit VR LE)."""
    ds = result.dataset
    try:
        _complete_file_meta(ds)
        if stego_words is not None:
            spec = parsed.spec
            frames = stego_words
            if spec.samples > 1 and spec.planar_configuration == 0:
                frames = np.moveaxis(frames, 1, -1)
            raw = np.ascontiguousarray(frames, dtype=frames.dtype.newbyteorder("<")).tobytes()
            if len(raw) % 2:
                raw += b"\0"
            ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_LE
            ds.set_original_encoding(False, True)  # written as Explicit VR Little Endian
            ds.PhotometricInterpretation = spec.photometric
            ds.PixelData = raw
            ds["PixelData"].VR = "OW" if spec.bits_allocated > 8 else "OB"
            if "NumberOfFrames" in ds and spec.frames == 1:
                ds.NumberOfFrames = 1
            for tag in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
                if tag in ds:
                    del ds[tag]
        meta = ds.file_meta
        complete = all(meta.get(k) for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"))
        written = write_part10_explicit_le(ds) if complete else None  # save_as's bytes, sooner
        if written is not None:
            return written
        buf = io.BytesIO()
        # Objects without SOP identification cannot be Part 10 files; they are written as datasets.
        ds.save_as(buf, enforce_file_format=complete)
        return buf.getvalue()
    except MedcodecError:
        raise
    except Exception as exc:
        # pydicom's own text may quote a header value: name the failure only
        raise SealingError(f"could not write the de-identified file ({type(exc).__name__})") from None


def _complete_file_meta(ds) -> None:
    """Files without (complete) file meta get it from the dataset, so the output is a valid Part 10 file."""
    import pydicom

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = pydicom.dataset.FileMetaDataset()
    if not meta.get("TransferSyntaxUID"):
        meta.TransferSyntaxUID = EXPLICIT_VR_LE
        ds.set_original_encoding(False, True)
    if not meta.get("MediaStorageSOPClassUID") and ds.get("SOPClassUID"):
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if not meta.get("MediaStorageSOPInstanceUID") and ds.get("SOPInstanceUID"):
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


@dataclass(frozen=True)
class Written:
    """What a keyed record was made from, beyond its config: what verifying it compares with."""

    public: bytes  # the de-identified file (its clear part)
    stego_words: np.ndarray | None  # its pixels, as coded (None: kept verbatim)
    original_sha256: str  # of the original file, as sealed
    embedded: stego.Embedded | None = None  # what embedding knew of the stego image
    digested: tuple[np.ndarray, np.ndarray] | None = None  # (cover values, mask): what the binding's pixel digest covers

    def digest_known(self, stego_values: np.ndarray, mask: np.ndarray) -> bool:
        """Whether the binding's pixel digest of (``stego_values``, ``mask``), as
        ``unseal_dicom`` computes it, is the one sealed, known without hashing: sealing
        computed it over (cover values, mask) in ``digested``, and the digest covers
        the shape, the mask and the values outside it. So the two are equal exactly when
        the shape and mask are the same and the values agree outside the mask, which is
        compared here (one pass over the values, against an SHA-256 of them)."""
        from .stegokernel import equal_outside

        if self.digested is None:
            return False
        cover, sealed_mask = self.digested
        return (stego_values.shape == cover.shape and np.array_equal(mask, sealed_mask)
                and equal_outside(np.ascontiguousarray(stego_values).reshape(-1),
                                  np.ascontiguousarray(cover).reshape(-1), np.ascontiguousarray(mask).reshape(-1)))


def seal_dicom(data: bytes, parsed: ParsedDicom, keyring: crypto.Keyring, *, encode,
               deadline: Deadline = NO_DEADLINE, sha256: str | None = None,
               ) -> tuple[dict, list[ct.Section], dict, Written]:
    """The keyed record of one DICOM file.

    ``encode(words, fmt) -> (pixel_config, sections)`` codes pixels (the codec's encoder).
    ``deadline`` is checked between the message tiers tried and before the pixels are coded.
    ``sha256``: ``data``'s SHA-256 in hex, when the caller has it (not computed again).
    Returns (config additions, sections, report, written) where report has capacity / PSNR
    figures and ``written`` (``Written``) the de-identified file and its pixels.
    """
    import pydicom

    try:
        with quiet_pydicom():  # its validation messages quote header values (PHI)
            # The dataset parse_dicom read (one parse per input); a file it kept none for
            # (deflated, kept verbatim) is read here.
            ds = parsed.take_dataset()
            if ds is None:
                ds = pydicom.dcmread(io.BytesIO(data), force=True)
            # pydicom converts element values when first accessed: convert every one that
            # de-identification or the writer will (_convert_values) now, so a value it
            # cannot read (an unknown VR, a length that is no multiple of the value size)
            # fails here rather than inside de-identification.
            for dataset in (getattr(ds, "file_meta", None), ds):
                if dataset is not None:
                    _convert_values(dataset)
    except Exception as exc:
        raise SealingError(f"header cannot be read for de-identification: {type(exc).__name__}") from None
    # The dataset is this sealing's own (taken from the parse, or read just above):
    # de-identified in place, not copied.
    result = deid.deidentify(ds, uid_key=keyring.uid_key(), in_place=True)
    new = result.dataset
    uids = {k: str(new.get(k, "") or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    phi = _pack_phi(result.removed_bytes())
    original_sha256 = sha256 or hashlib.sha256(data).hexdigest()
    original = _original_plaintext(parsed, data, original_sha256)
    report: dict[str, Any] = {"message_bytes": 0, "embedded": False, "tier": TIER_NONE}
    public_parsed: ParsedDicom | None = None
    sections: list[ct.Section] = []
    stego_words = embedded = digested = None
    if parsed.restore_mode == RESTORE_VERBATIM:
        public = _deidentified_file(result, parsed, None)
        public_sha256 = hashlib.sha256(public).hexdigest()
        binding = {"format_version": BINDING_FORMAT_VERSION, "uids": uids, "pixel_digest": "file:" + public_sha256}
        sections.append(ct.Section(ct.SECTION_VERBATIM, public))
        pixel_config = None
        report["reason"] = "source kept verbatim: no pixels to embed in"
    else:
        fmt = SampleFormat.of(parsed.spec)
        # the values at the words' width, and which occur (for the sparse-histogram test), in one pass
        values, outside, seen = values_and_seen(parsed.frames, fmt, dtype=fmt.word_dtype)
        key = keyring.stego_key(uids["SOPInstanceUID"].encode())
        cover = stego.Cover(values, key=key, bits_stored=fmt.bits_stored)  # one layout: capacity, plans, embedding
        report["capacity_bits"] = cover.capacity_bits
        binding = {"format_version": BINDING_FORMAT_VERSION, "uids": uids}
        tiers = _message_tiers(result.removed, phi, keyring)
        report["tier_bytes"] = {tier: crypto.sealed_size(len(m), key_id=keyring.primary_key_id)
                                for tier, m, _ in tiers}
        plan, chosen = None, None
        if palette_of(seen, values.size) is not None:
            # +-1 changes would add values a sparse histogram never has: visible to any
            # histogram test and fatal to the codec's palette. Keep the PHI sealed only.
            report["reason"] = "sparse histogram: embedding would add new values; PHI kept sealed in the record"
        else:
            plan, chosen, reason = _largest_fitting(cover, tiers, report["tier_bytes"], deadline)
            if reason:
                report["reason"] = reason
        mask = plan.mask if plan is not None else np.zeros(values.shape, dtype=bool)
        binding["pixel_digest"] = _pixel_digest(BINDING_FORMAT_VERSION, values, mask, fmt.bits_stored)
        digested = values, mask
        if plan is not None:
            tier, message, purpose = chosen
            report.update(tier=tier, message_bytes=report["tier_bytes"][tier])
            box = crypto.seal(keyring, message, associated=_binding_ad(binding, purpose))
            stego_values, displaced, embedded = cover.embed_known(box.to_bytes())
            sections.append(ct.Section(ct.SECTION_SEALED_DISPLACED, crypto.seal(
                keyring, displaced, associated=_binding_ad(binding, PURPOSE_DISPLACED)).to_bytes()))
            report.update(embedded=True, **cover.changes(stego_values, plan))
        else:
            stego_values = values
        stego_words = values_to_words(stego_values, outside, fmt)
        public = _deidentified_file(result, parsed, stego_words)
        public_sha256 = hashlib.sha256(public).hexdigest()
        public_parsed = parse_written(public, result.dataset)
        if public_parsed.frames is None or not np.array_equal(public_parsed.frames, stego_words):
            raise SealingError("the de-identified file does not carry the stego pixels exactly")
        deadline.check("before coding the pixels")
        pixel_config, pixel_sections = encode(stego_words, fmt)
        sections.append(ct.Section(ct.SECTION_HEADER, _pack_header(public_parsed)))
        sections.extend(pixel_sections)
    header = None if public_parsed is None else (public_parsed.prefix, public_parsed.suffix, public_parsed.extra)
    reference = _reference(public, header)
    sections.append(ct.Section(ct.SECTION_SEALED_ORIGINAL_DELTA, crypto.seal(
        keyring, _pack_original_delta(original, reference, _reference_digest(reference, header, public_sha256)),
        associated=_binding_ad(binding, PURPOSE_ORIGINAL_DELTA)).to_bytes()))
    sections.append(ct.Section(ct.SECTION_SEALED_PHI, crypto.seal(
        keyring, phi, associated=_binding_ad(binding, PURPOSE_PHI)).to_bytes()))
    config = {
        "restore_mode": "byte-exact" if pixel_config is not None else RESTORE_VERBATIM,
        "reencode": None,
        "note": "de-identified (PS3.15 Basic Profile); original sealed",
        "source": {"size": len(public), "sha256": public_sha256},
        "spec": None if pixel_config is None else public_parsed.spec.to_json(),
        "pixels": pixel_config,
        "sealed": {
            "key_id": keyring.primary_key_id,
            "binding": binding,
            "stego": report,
            "original_restore_mode": parsed.restore_mode,
        },
    }
    return config, sections, report, Written(public=public, stego_words=stego_words, original_sha256=original_sha256,
                                             embedded=embedded, digested=digested)


def _message_tiers(removed: dict[str, Any], phi: bytes, keyring: crypto.Keyring) -> list[tuple[str, bytes, str]]:
    """(tier, plaintext, purpose) of each message an image may carry, largest first: the
    full PHI, then the essential message linked to it (``medcodec.essential``)."""
    link = essential.full_link(keyring.uid_key(), phi)
    return [(TIER_FULL, phi, PURPOSE_PHI),
            (TIER_ESSENTIAL, essential.encode_essential(removed, link), PURPOSE_PHI_ESSENTIAL)]


def _largest_fitting(cover: stego.Cover, tiers: list, sizes: dict[str, int], deadline: Deadline = NO_DEADLINE):
    """(plan, tier, reason): the first tier whose sealed message fits; reason says why each
    larger tier did not (None when the full message fits). Never truncates a message."""
    reasons = []
    for tier in tiers:
        deadline.check("between message tiers")
        try:
            plan = cover.plan(sizes[tier[0]])
        except stego.CapacityError as exc:
            reasons.append(f"{tier[0]} message ({sizes[tier[0]]} B sealed) does not fit: {exc}")
            continue
        return plan, tier, "; ".join(reasons) or None
    return None, None, "; ".join(reasons)


def _sealed(record: ct.Record) -> tuple[dict[str, Any], dict[str, Any]]:
    """A keyed record's ``sealed`` config and its binding, checked for the fields and types
    every keyed reader uses."""
    sealed = record.config.get("sealed")
    binding = sealed.get("binding") if isinstance(sealed, dict) else None
    if not (isinstance(binding, dict) and isinstance(sealed.get("stego"), dict)
            and all(isinstance(binding.get(k), str) for k in ("format_version", "pixel_digest"))
            and isinstance(binding.get("uids"), dict) and "SOPInstanceUID" in binding["uids"]
            and all(isinstance(k, str) and isinstance(v, str) for k, v in binding["uids"].items())):
        raise CorruptRecordError("keyed record's 'sealed' config is malformed (binding, UIDs or stego report)")
    if binding["format_version"] not in BINDING_FORMAT_VERSIONS:
        raise UnsupportedError(f"binding format version {shown(binding['format_version'])} unknown; this reader "
                               f"knows {', '.join(BINDING_FORMAT_VERSIONS)}")
    return sealed, binding


def _open(record: ct.Record, keyring: crypto.Keyring, purpose: str) -> bytes:
    _, binding = _sealed(record)
    box = crypto.SealedBox.from_bytes(record.one(SEALED_SECTIONS[purpose]).payload)
    return crypto.open_sealed(keyring, box, associated=_binding_ad(binding, purpose))


@record_errors
def unseal_dicom(record: ct.Record, keyring: crypto.Keyring, *, stego_words: np.ndarray | None, public: bytes,
                 header: tuple[bytes, bytes, bytes] | None = None, public_sha256: str | None = None,
                 limits: DicomLimits | None = None, expected: tuple[bytes, str] | None = None,
                 written: Written | None = None) -> bytes:
    """The original file of a keyed record.

    ``public`` is its verified de-identified file and ``stego_words`` the pixels already
    decoded for it (None for records without pixels), so nothing is decoded twice;
    ``header`` the (prefix, suffix, extra) its header section holds (None for a record
    that keeps it verbatim), which the sealed original is packed against;
    ``public_sha256`` the SHA-256 (hex) the caller checked ``public`` against, if it did.
    ``limits.memory_bytes`` bounds what the sealed original may inflate to. ``expected``:
    (the original, its SHA-256 as sealed) when verifying a record just sealed from it:
    compared with instead of hashed (``codec._Expected``). ``written``: what sealing that
    record knew (``Written``), when verifying it: ``stego_words`` are then its
    ``stego_words`` (the caller has compared them), and the image tag and the pixel
    digest are compared with what sealing computed instead of computed again.
    """
    sealed, binding = _sealed(record)
    if record.of_type(ct.SECTION_SEALED_ORIGINAL_DELTA):
        reference = _reference(public, header)
        meta, prefix, suffix, extra = _unpack_original_delta(
            _open(record, keyring, PURPOSE_ORIGINAL_DELTA), reference, limits,
            reference_digest=_reference_digest(reference, header, public_sha256))
    else:
        meta, prefix, suffix, extra = _unpack_original(_open(record, keyring, PURPOSE_ORIGINAL), limits)
    if meta["restore_mode"] == RESTORE_VERBATIM:
        if binding["pixel_digest"] != "file:" + (public_sha256 or hashlib.sha256(public).hexdigest()):
            raise crypto.IntegrityError("de-identified file does not match the sealed binding")
        out = prefix
    else:
        spec = PixelSpec.from_json(meta["spec"])
        fmt = SampleFormat.of(spec)
        if stego_words is None:
            raise CorruptRecordError("keyed record has no pixel data to restore from")
        stego_values, outside = words_to_samples(stego_words, fmt)
        report = sealed["stego"]
        if report.get("embedded"):
            key = keyring.stego_key(binding["uids"]["SOPInstanceUID"].encode())
            displaced = _open(record, keyring, PURPOSE_DISPLACED)
            values, mask = stego.recover(stego_values, displaced, key=key, bits_stored=fmt.bits_stored,
                                         known=None if written is None else written.embedded)
        else:
            mask = np.zeros(stego_values.shape, dtype=bool)
            values = stego_values
        if not (written is not None and written.digest_known(stego_values, mask)) and _pixel_digest(
                binding["format_version"], stego_values, mask, fmt.bits_stored) != binding["pixel_digest"]:
            raise crypto.IntegrityError("pixels do not match the sealed binding (record altered or transplanted)")
        words = values_to_words(values, outside, fmt)
        parsed = ParsedDicom(restore_mode=meta["restore_mode"], spec=spec, prefix=prefix, suffix=suffix,
                             frames=words, extra=extra, original=None, reencode=meta["reencode"], note=meta["note"])
        out = rebuild_dicom(parsed)
    known = expected is not None and meta["sha256"] == expected[1] and out == expected[0]
    if meta["restore_mode"] != "pixel-exact" and not known and hashlib.sha256(out).hexdigest() != meta["sha256"]:
        raise CorruptRecordError("restored original does not match its sealed SHA-256")
    return out


@record_errors
def rewrap_record(blob: bytes, keyring: crypto.Keyring) -> bytes:
    """Re-wrap every sealed section's data key under the keyring's primary; pixels untouched."""
    record = ct.read_record(blob)
    if not record.config.get("sealed"):
        return blob
    _, binding = _sealed(record)
    by_type = {v: k for k, v in SEALED_SECTIONS.items()}
    sections = []
    for s in record.sections:
        if s.type in by_type:
            box = crypto.rewrap(keyring, crypto.SealedBox.from_bytes(s.payload),
                                associated=_binding_ad(binding, by_type[s.type]))
            s = ct.Section(s.type, box.to_bytes(), s.flags)
        sections.append(s)
    record.config["sealed"]["key_id"] = keyring.primary_key_id
    # The config keeps its form (plain or deflated): the record keeps its length.
    return ct.write_record(ct.Record(config=record.config, sections=sections, config_form=record.config_form))


@record_errors
def reveal(stego_file: bytes, keyring: crypto.Keyring, *, limits: DicomLimits | None = None) -> dict[str, Any]:
    """Authenticate and return the PHI embedded in a de-identified (stego) DICOM file.

    The returned removed-values record carries ``tier``: ``"full"`` (every removed
    attribute) or ``"essential"`` (the fields of ``medcodec.essential`` and a
    ``full_link`` to the full record sealed in the archive: ``follow_link``), and
    ``stego_version``: 3 or 2 when the image tag authenticated every pixel value (3: a
    colour image embedded with grey pixels kept grey), 1 for an image embedded before
    version 2 (the message and the pixels outside it are authenticated, not the carrying
    pixels' upper bits). ``limits.memory_bytes`` bounds what the message may inflate to.
    """
    parsed = parse_dicom(stego_file)
    if parsed.frames is None:
        raise stego.MessageNotFoundError("file has no pixel data that could carry a message")
    fmt = SampleFormat.of(parsed.spec)
    values, _ = words_to_samples(parsed.frames, fmt)
    import pydicom

    with quiet_pydicom():
        ds = pydicom.dcmread(io.BytesIO(stego_file), stop_before_pixels=True, force=True)
    uids = {k: str(ds.get(k, "") or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    key = keyring.stego_key(uids["SOPInstanceUID"].encode())
    message, mask, version = stego.extract_versioned(values, key=key, bits_stored=fmt.bits_stored)
    box = crypto.SealedBox.from_bytes(message)
    first_error = None
    # The binding's version and the tier are both in the associated data: only one
    # (version, tier) opens the message.
    for binding_version in BINDING_FORMAT_VERSIONS:
        binding = {"format_version": binding_version, "uids": uids,
                   "pixel_digest": _pixel_digest(binding_version, values, mask, fmt.bits_stored)}
        try:
            phi = crypto.open_sealed(keyring, box, associated=_binding_ad(binding, PURPOSE_PHI))
        except crypto.IntegrityError as exc:
            first_error = first_error or exc
        else:
            return {**deid.removed_from_bytes(_unpack_phi(phi, "revealed message", limits)), "tier": TIER_FULL,
                    "stego_version": version}
        try:
            plain = crypto.open_sealed(keyring, box, associated=_binding_ad(binding, PURPOSE_PHI_ESSENTIAL))
        except crypto.IntegrityError:
            continue
        return {**essential.decode_essential(plain), "stego_version": version}
    raise first_error


@record_errors
def follow_link(revealed: dict[str, Any], record_blob: bytes, keyring: crypto.Keyring, *,
                limits: DicomLimits | None = None) -> dict[str, Any]:
    """The full removed-values record that an essential message links to.

    ``revealed`` is what ``reveal`` returned for an exported copy carrying the essential
    tier; ``record_blob`` the archive's record of that image (found by the copy's SOP
    Instance UID). Raises IntegrityError when the record's sealed PHI is not the one the
    message links to (another image's record, or an altered one).
    """
    if revealed.get("tier") != TIER_ESSENTIAL:
        raise SealingError(f"only an essential message links to a record; this one is {revealed.get('tier')!r}")
    record = ct.read_record(record_blob)
    if not record.config.get("sealed"):
        raise SealingError("record holds no sealed PHI (it was written without a key)")
    phi = _open(record, keyring, PURPOSE_PHI)
    if essential.full_link(keyring.uid_key(), phi).hex() != revealed.get("full_link"):
        raise crypto.IntegrityError("the record's sealed PHI is not the one this image's message links to")
    return {**deid.removed_from_bytes(_unpack_phi(phi, "sealed PHI", limits)), "tier": TIER_FULL}
