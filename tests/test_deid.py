"""Tests for medcodec.deid: Basic Profile over every readable pydicom test file with planted PHI."""

from __future__ import annotations

import collections
import copy
import io
import json
import os
import re
import sys
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from medcodec import deid as deid_module
from medcodec import deid_table
from medcodec.deid import (
    BASIC_PROFILE_ACTIONS,
    DEID_METHOD,
    DeidError,
    deidentify,
    new_uid,
    reidentify,
    removed_from_bytes,
    removed_to_bytes,
)

from conftest import pydicom_file, pydicom_files

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import make_deid_table  # noqa: E402  (tests/fixtures/make_deid_table.py, the table's generator)

# Malformed reference files make pydicom warn when the tests read them (deidentify itself is silent).
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")

UID_KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

# Planted PHI: distinctive strings that occur in no pydicom test file.
PHI_FAMILY = "Qzorbwick"
PHI_GIVEN = "Fennimorex"
PHI = {
    "name": f"{PHI_FAMILY}^{PHI_GIVEN}",
    "id": "PIDQX77120",
    "birth": "18870915",
    "institution": "Qzorb Memorial Hospital",
    "referring": "Vexlander^Doctqzina",
    "accession": "ACCQZ99881",
    "address": "17 Plantedstreet Zorbtown",
    "phone": "5550199231",
    "study_desc": "QZORB STUDY DESCR",
    "comments": "patient Qzorbwick said hello",
    "other_id": "OTHIDQX4411",
    "request_id": "REQQZ55501",
    "private": "PRIVQZ-TOPLEVEL",
    "private_nested": "PRIVQZ-NESTEDSEQ",
    "nested_name": "Nestqorb^Personqz",
    "deep_name": "Deepqorb^Physiqz",
    "deep_private": "PRIVQZ-DEEPITEM",
    "operator": "Opqzorb^Operaqz",
}


def _readable_files() -> list[tuple[str, str]]:
    paths = sorted(p for p in pydicom_files() if os.path.isfile(p))
    counts = collections.Counter(os.path.basename(p) for p in paths)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            try:
                pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            name = os.path.basename(path)
            if counts[name] > 1:
                name = f"{os.path.basename(os.path.dirname(path))}/{name}"
            out.append((name, path))
    return out


READABLE = _readable_files()


def _read(path: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _plant(ds: Dataset) -> Dataset:
    """Plant PHI at top level, in removed sequences, in kept sequences (nested) and in private tags."""
    ds.PatientName = PHI["name"]
    ds.PatientID = PHI["id"]
    ds.PatientBirthDate = PHI["birth"]
    ds.InstitutionName = PHI["institution"]
    ds.ReferringPhysicianName = PHI["referring"]
    ds.AccessionNumber = PHI["accession"]
    ds.PatientAddress = PHI["address"]
    ds.PatientTelephoneNumbers = PHI["phone"]
    ds.StudyDescription = PHI["study_desc"]
    ds.ImageComments = PHI["comments"]
    ds.OperatorsName = PHI["operator"]
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = "1.2.3.4.5.6.7.8.1"
    if "SeriesInstanceUID" not in ds:
        ds.SeriesInstanceUID = "1.2.3.4.5.6.7.8.2"
    if "SOPInstanceUID" not in ds:
        ds.SOPInstanceUID = "1.2.3.4.5.6.7.8.3"

    other = Dataset()
    other.PatientID = PHI["other_id"]
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])

    request = Dataset()
    request.RequestedProcedureID = PHI["request_id"]
    request.ScheduledProcedureStepID = PHI["request_id"]
    ds.RequestAttributesSequence = Sequence([request])

    # A kept sequence (U: UIDs replaced inside) holding PHI two levels deep and a private tag.
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = str(ds.SOPInstanceUID)
    ref.PatientName = PHI["nested_name"]
    deep = Dataset()
    deep.CodeValue = "121320"
    deep.CodingSchemeDesignator = "DCM"
    deep.CodeMeaning = "Uncompressed predecessor"
    deep.PerformingPhysicianName = PHI["deep_name"]
    deep.private_block(0x0029, "QZ PLANT DEEP", create=True).add_new(0x01, "LO", PHI["deep_private"])
    ref.PurposeOfReferenceCodeSequence = Sequence([deep])
    ds.ReferencedImageSequence = Sequence([ref])

    block = ds.private_block(0x0011, "QZ PLANT", create=True)
    block.add_new(0x01, "LO", PHI["private"])
    inner = Dataset()
    inner.add_new(0x00100010, "PN", PHI["private_nested"])
    block.add_new(0x02, "SQ", Sequence([inner]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in ds.iterall():  # convert raw elements now (pydicom does it on first access)
            pass
    return ds


def _write(ds: Dataset) -> bytes:
    """The bytes pydicom writes, uncompressed (a deflated dataset is written inflated so the
    search sees every value)."""
    ds = copy.deepcopy(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    return buf.getvalue()


def _needles(text: str) -> list[bytes]:
    out = []
    variants = {text, text.upper(), text.lower()}
    for part in text.split("^"):  # name components on their own (all distinctive)
        if len(part) >= 6:
            variants |= {part, part.upper(), part.lower()}
    for v in variants:
        for enc in ("ascii", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
            out.append(v.encode(enc))
    return out


def _assert_same(a: Dataset, b: Dataset, where: str = "") -> None:
    assert set(a.keys()) == set(b.keys()), f"{where}: tags differ: {sorted(set(a.keys()) ^ set(b.keys()))}"
    for tag in a.keys():
        ea, eb = a[tag], b[tag]
        here = f"{where}/{int(tag):08X}"
        assert ea.VR == eb.VR, here
        if ea.VR == "SQ":
            assert len(ea.value) == len(eb.value), here
            for i, (ia, ib) in enumerate(zip(ea.value, eb.value)):
                _assert_same(ia, ib, f"{here}/{i}")
        else:
            assert ea.value == eb.value, here


# --------------------------------------------------------------------------------------


def test_there_are_many_readable_files():
    assert len(READABLE) >= 150


@pytest.mark.parametrize("path", [p for _, p in READABLE], ids=[n for n, _ in READABLE])
def test_planted_phi_never_survives(path):
    original = _plant(_read(path))
    orig_uids = {
        str(original.get(k))
        for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
        if original.get(k)
    }
    before = _write(original)
    result = deidentify(original, uid_key=UID_KEY)

    # The input is not mutated.
    assert _write(original) == before

    out = _write(result.dataset)
    # In place (sealing's way: the dataset is its own) is the same de-identification.
    own = _plant(_read(path))
    in_place = deidentify(own, uid_key=UID_KEY, in_place=True)
    assert in_place.dataset is own
    assert _write(own) == out and in_place.removed == result.removed and in_place.uid_map == result.uid_map
    for text in PHI.values():
        for needle in _needles(text):
            assert needle not in out, f"planted PHI {needle!r} survived"
    for uid in orig_uids:
        assert uid.encode("ascii") not in out, "an original instance UID survived"
    # ... nor in what a reader sees after re-reading the file.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reread = pydicom.dcmread(io.BytesIO(out), force=True)
    assert reread.PatientIdentityRemoved == "YES"
    assert reread.DeidentificationMethod == DEID_METHOD
    code = reread.DeidentificationMethodCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
    assert not any(elem.tag.is_private for elem in reread.iterall())

    # The removed values are JSON and restore every original value.
    removed = removed_from_bytes(removed_to_bytes(result.removed))
    restored = reidentify(result.dataset, removed)
    _assert_same(restored, original)
    if getattr(original, "file_meta", None) is not None:
        _assert_same(restored.file_meta, original.file_meta, "meta")


def _charset_files() -> list[tuple[str, str]]:
    from pydicom.data import get_charset_files

    return [(f"charset/{os.path.basename(p)}", p) for p in sorted(get_charset_files())]


@pytest.mark.parametrize("path", [p for _, p in READABLE + _charset_files()],
                         ids=[n for n, _ in READABLE + _charset_files()])
def test_elements_are_read_as_pydicom_reads_them(path, monkeypatch):
    """De-identification reads a dataset's elements from its dict (``item_as_read``,
    ``converted_item``, ``stored_item``), not through pydicom's accessors: the same
    de-identified dataset, removed values and UID map as through them, on files as read
    (their elements raw, the larger ones deferred), in every character set of pydicom's
    test files."""

    def read() -> Dataset:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, force=True, defer_size=256)

    ours = deidentify(read(), uid_key=UID_KEY, in_place=True)
    monkeypatch.setattr(deid_module, "item_as_read", lambda ds, tag, held: ds.get_item(tag))
    monkeypatch.setattr(deid_module, "converted_item", lambda ds, tag, held: ds[tag])
    monkeypatch.setattr(deid_module, "stored_item", lambda ds, tag, held: ds[tag])
    theirs = deidentify(read(), uid_key=UID_KEY, in_place=True)
    assert removed_to_bytes(ours.removed) == removed_to_bytes(theirs.removed)
    assert ours.uid_map == theirs.uid_map
    assert _write(ours.dataset) == _write(theirs.dataset)


def test_uids_are_consistent_across_files_of_a_study():
    a = _plant(_read(pydicom_file("CT_small.dcm")))
    b = _plant(_read(pydicom_file("MR_small.dcm")))
    study = "1.2.826.0.1.3680043.8.498.1"
    a.StudyInstanceUID = b.StudyInstanceUID = study
    ra = deidentify(a, uid_key=UID_KEY)
    rb = deidentify(b, uid_key=UID_KEY)
    assert ra.dataset.StudyInstanceUID == rb.dataset.StudyInstanceUID == new_uid(study, UID_KEY)
    assert ra.uid_map[study] == ra.dataset.StudyInstanceUID
    assert ra.dataset.SOPInstanceUID != rb.dataset.SOPInstanceUID
    # Same input, same key -> same output; another key -> other pseudonyms.
    assert deidentify(a, uid_key=UID_KEY).dataset.SOPInstanceUID == ra.dataset.SOPInstanceUID
    assert deidentify(a, uid_key=OTHER_KEY).dataset.StudyInstanceUID != ra.dataset.StudyInstanceUID


def test_references_and_file_meta_follow_the_instance_uid():
    ds = _plant(_read(pydicom_file("CT_small.dcm")))
    sop = str(ds.SOPInstanceUID)
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    # A reference in an attribute the table does not list is caught by the second pass.
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = sop
    series = Dataset()
    series.SeriesInstanceUID = str(ds.SeriesInstanceUID)
    series.ReferencedInstanceSequence = Sequence([item])
    ds.ReferencedSeriesSequence = Sequence([series])
    ds.add_new(0x00209161, "UI", "1.2.3.999")  # ConcatenationUID (U)
    out = deidentify(ds, uid_key=UID_KEY).dataset
    new = new_uid(sop, UID_KEY)
    assert out.SOPInstanceUID == new
    assert out.file_meta.MediaStorageSOPInstanceUID == new
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == new
    assert out.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == new
    assert out.ReferencedSeriesSequence[0].SeriesInstanceUID == out.SeriesInstanceUID
    assert out.ConcatenationUID == new_uid("1.2.3.999", UID_KEY)
    # Class and syntax UIDs are never replaced.
    assert out.SOPClassUID == ds.SOPClassUID
    assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert out.file_meta.MediaStorageSOPClassUID == ds.file_meta.MediaStorageSOPClassUID
    assert out.ReferencedImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"


def test_basic_profile_actions():
    ds = _plant(_read(pydicom_file("CT_small.dcm")))
    ds.ContentDate = "20240101"  # Z/D -> Z
    ds.SeriesDate = "20240101"  # X/D -> X
    ds.add_new(0x00400551, "LO", "SPECIMEN-42")  # SpecimenIdentifier, D
    ds.add_new(0x60003000, "OW", b"\x01\x02" * 8)  # overlay data: X
    ds.add_new(0x60004000, "LT", "overlay comment")  # overlay comments: X
    ds.add_new(0x50000010, "US", 3)  # curve data (retired): X
    out = deidentify(ds, uid_key=UID_KEY).dataset
    assert out.PatientName == "" and out.PatientID == "" and out.AccessionNumber == ""
    assert out.StudyDate == "" and out.ContentDate == ""
    assert "SeriesDate" not in out and "StudyDescription" not in out and "ImageComments" not in out
    assert "OtherPatientIDsSequence" not in out and "RequestAttributesSequence" not in out
    assert "InstitutionName" in out and out.InstitutionName == ""
    assert out.SpecimenIdentifier == "ANONYMIZED"
    assert 0x60003000 not in out and 0x60004000 not in out and 0x50000010 not in out
    # In a kept sequence the table still applies (PatientName Z) and private tags go.
    item = out.ReferencedImageSequence[0]
    assert item.PatientName == ""
    deep = item.PurposeOfReferenceCodeSequence[0]
    assert "PerformingPhysicianName" not in deep and deep.CodeValue == "121320"
    assert not any(e.tag.is_private for e in out.iterall())
    # Non-identifying attributes are kept.
    assert out.Rows == ds.Rows and out.Modality == ds.Modality and out.PixelData == ds.PixelData


def test_table_covers_the_usual_identifiers():
    keywords = {
        0x00100010: "Z", 0x00100020: "Z", 0x00100030: "Z", 0x00080050: "Z", 0x00080090: "Z",
        0x00080080: "Z", 0x00081070: "Z", 0x00081010: "Z", 0x00181000: "Z", 0x00101000: "X",
        0x00101002: "X", 0x00400275: "X", 0x00101040: "X", 0x00102154: "X", 0x00081030: "X",
        0x00204000: "X", 0x0020000D: "U", 0x0020000E: "U", 0x00080018: "U", 0x00200052: "U",
        0x00081155: "U", 0x00020003: "U", 0x00081140: "U", 0x00080020: "Z", 0x00080021: "X",
    }
    for tag, action in keywords.items():
        assert BASIC_PROFILE_ACTIONS[tag] == action, f"{tag:08X}"
    assert len(BASIC_PROFILE_ACTIONS) >= 600


def test_new_uid_is_a_valid_deterministic_uid():
    uid = new_uid("1.2.3", UID_KEY)
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid) and len(uid) <= 64
    assert uid == new_uid("1.2.3", UID_KEY) == new_uid("1.2.3\x00", UID_KEY)
    assert uid != new_uid("1.2.4", UID_KEY) and uid != new_uid("1.2.3", OTHER_KEY)


def test_removed_record_is_json_and_checked():
    ds = _plant(_read(pydicom_file("MR_small.dcm")))
    result = deidentify(ds, uid_key=UID_KEY)
    blob = result.removed_bytes()
    assert json.loads(blob)["elements"]["00100010"] == {"vr": "PN", "value": PHI["name"]}
    with pytest.raises(DeidError, match="format"):
        reidentify(result.dataset, {"elements": {}})
    with pytest.raises(DeidError, match="not UTF-8 JSON"):
        removed_from_bytes(b"\xff\x00")
    with pytest.raises(DeidError, match="does not exist"):
        reidentify(result.dataset, {**result.removed, "elements": {"00081140/7/00100010": {"vr": "PN", "value": "x"}}})


def test_bad_uid_key_is_refused():
    with pytest.raises(DeidError, match="at least 16 bytes"):
        deidentify(Dataset(), uid_key=b"short")


def test_dataset_without_file_meta():
    ds = Dataset()
    ds.PatientName = PHI["name"]
    ds.SOPInstanceUID = "1.2.3.4"
    result = deidentify(ds, uid_key=UID_KEY)
    assert result.dataset.PatientName == ""
    assert result.dataset.SOPInstanceUID == new_uid("1.2.3.4", UID_KEY)
    _assert_same(reidentify(result.dataset, result.removed), ds)


def test_no_phi_in_logs_or_warnings(caplog, recwarn, tmp_path):
    # Invalid values make pydicom's validation warn (and log) with the value quoted.
    ds = _plant(_read(pydicom_file("CT_small.dcm")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.add_new(0x00209161, "UI", "1.2.QZPHIUID")  # ConcatenationUID, not a valid UID
        ds.StudyID = "QZPHI-STUDYID-TOO-LONG-FOR-SH"
        ds.save_as(tmp_path / "x.dcm")
    reread = _read(str(tmp_path / "x.dcm"))  # raw elements: converted (and validated) inside deidentify
    caplog.set_level("DEBUG")
    caplog.clear()
    recwarn.clear()
    result = deidentify(reread, uid_key=UID_KEY)
    reidentify(result.dataset, result.removed)
    text = caplog.text + " ".join(str(w.message) for w in recwarn.list)
    assert "QZPHI" not in text
    for value in PHI.values():
        assert value not in text


# --------------------------------------------------------------------------------------
# The table: medcodec/deid_table.py, generated from NEMA's PS3.15 DocBook by
# tests/fixtures/make_deid_table.py, checked against an independent maintained copy.

_RESOLVED = {"D": "D", "Z": "Z", "X": "X", "U": "U", "X/Z": "Z", "X/D": "X", "Z/D": "Z", "X/Z/D": "Z", "X/Z/U*": "U"}


def _table_rows() -> list[tuple[str, str, str]]:
    return [tuple(line.split()) for line in deid_table.BASIC_PROFILE_TABLE.strip().splitlines()]


def test_deid_uses_the_generated_table():
    rows = _table_rows()
    assert all(len(row) == 3 for row in rows)
    tags = [row[0] for row in rows]
    assert tags == sorted(tags) and len(set(tags)) == len(tags)
    assert all(re.fullmatch(r"[0-9A-F]{4},[0-9A-F]{4}", t) for t in tags)
    assert {row[1] for row in rows} <= set(_RESOLVED)
    assert re.fullmatch(r"\d{4}[a-z]", deid_table.EDITION) and re.fullmatch(r"[0-9a-f]{64}", deid_table.SOURCE_SHA256)
    # The de-identifier acts on exactly this table (plus its file-meta extras), and says which edition.
    expected = {int(t.replace(",", ""), 16): _RESOLVED[code] for t, code, _ in rows}
    extras = {tag: action for tag, action in BASIC_PROFILE_ACTIONS.items() if tag not in expected}
    assert {tag: BASIC_PROFILE_ACTIONS[tag] for tag in expected} == expected
    assert set(extras) == {0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102}
    assert deid_module.BASIC_PROFILE_TABLE is deid_table.BASIC_PROFILE_TABLE
    assert deid_module.BASIC_PROFILE_EDITION == deid_table.EDITION
    assert f"the {deid_table.EDITION} edition" in deid_module.__doc__
    # Rows the 2023 edition did not have.
    for tag, action in {
        0x00100012: "X", 0x00100016: "X", 0x00120041: "X", 0x00181010: "X", 0x3006002D: "X",
        0x300A0054: "U", 0x0040B020: "X", 0x00700006: "D", 0x00102162: "X",
    }.items():
        assert BASIC_PROFILE_ACTIONS[tag] == action, f"{tag:08X}"


def test_rows_of_the_current_edition_are_applied():
    ds = _plant(_read(pydicom_file("CT_small.dcm")))
    ds.add_new(0x00100012, "LO", PHI_GIVEN)  # Name to Use (X)
    ds.add_new(0x00100016, "LO", f"pronoun of {PHI_FAMILY}")  # Pronoun Comment (X)
    ds.add_new(0x00181010, "LO", "SCDEVQZ-1")  # Secondary Capture Device ID (X)
    ds.add_new(0x3006002D, "DT", "20240101101010")  # ROI DateTime (X)
    ds.add_new(0x300A0054, "UI", "1.2.3.4.5.99")  # Table Top Position Alignment UID (U)
    out = deidentify(ds, uid_key=UID_KEY).dataset
    for tag in (0x00100012, 0x00100016, 0x00181010, 0x3006002D):
        assert tag not in out, f"{tag:08X}"
    assert out[0x300A0054].value == new_uid("1.2.3.4.5.99", UID_KEY)


def _mask_examples() -> dict[str, list[int]]:
    """Concrete tags for each family row of the table."""
    return {
        "50xx,xxxx": [0x50000010, 0x50023000, 0x501E0005],
        "60xx,3000": [0x60003000, 0x60023000, 0x601E3000],
        "60xx,4000": [0x60004000, 0x60024000, 0x601E4000],
        "gggg,eeee where gggg is odd": [0x00090010, 0x00111001, 0x00291010, 0x7FE11010],
    }


def test_every_family_row_is_applied():
    examples = _mask_examples()
    masks = {mask: code for mask, code, _ in deid_table.BASIC_PROFILE_MASKS}
    assert set(masks) == set(examples), "a family row of the table is not handled (medcodec.deid._action)"
    for mask, code in masks.items():
        for tag in examples[mask]:
            assert deid_module._action(BaseTag(tag), in_meta=False) == _RESOLVED[code], f"{mask}: {tag:08X}"


# Independent copy: KitwareMedical's dicom-anonymizer keeps its own parse of Table E.1-1 per
# edition (dicomanonymizer/dicom_anonymization_databases/dicomfields_<edition>.py, lists of
# tags per Basic Profile code). Every difference from ours must be listed here, with why.
THEIR_DIFFERENCES_ALLOWED = {
    ("only ours", "gggg,eeee where gggg is odd", "X"): (
        "dicom-anonymizer's table has no row for private attributes: its anonymize() removes "
        "them through its own delete_private_tags switch, not through a table entry"
    ),
}


def _their_key(tag: tuple[int, ...]) -> str:
    if len(tag) == 2:
        return f"{tag[0]:04X},{tag[1]:04X}"
    group, elem, group_mask, elem_mask = tag  # a repeating-group row: value and bit mask

    def nibbles(value: int, mask: int) -> str:
        out = ""
        for shift in (12, 8, 4, 0):
            m = (mask >> shift) & 0xF
            assert m in (0x0, 0xF), f"mask {mask:04X} is not made of whole hex digits"
            out += f"{(value >> shift) & 0xF:X}" if m else "x"
        return out

    return f"{nibbles(group, group_mask)},{nibbles(elem, elem_mask)}"


def table_differences(ours: dict[str, str], theirs: dict[str, str]) -> list[tuple[str, ...]]:
    """Every difference between two tables (key -> Basic Profile code), sorted."""
    out: list[tuple[str, ...]] = []
    for key in sorted(set(ours) | set(theirs)):
        if key not in theirs:
            out.append(("only ours", key, ours[key]))
        elif key not in ours:
            out.append(("only theirs", key, theirs[key]))
        elif ours[key] != theirs[key]:
            out.append(("different code", key, f"ours {ours[key]}, theirs {theirs[key]}"))
    return out


def test_table_matches_an_independent_copy():
    pytest.importorskip("dicomanonymizer")
    import importlib

    module_name = f"dicomanonymizer.dicom_anonymization_databases.dicomfields_{deid_table.EDITION}"
    try:
        theirs_module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        pytest.fail(f"the installed dicom-anonymizer has no table for edition {deid_table.EDITION} "
                    f"({module_name}): pin a release that has it, or compare with an older one "
                    "and list the edition's changes in THEIR_DIFFERENCES_ALLOWED")
    categories = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D",
                  "X_Z_TAGS": "X/Z", "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}
    theirs: dict[str, str] = {}
    for attribute, code in categories.items():
        for tag in getattr(theirs_module, attribute):
            key = _their_key(tuple(tag))
            assert key not in theirs, f"{key} is in two of dicom-anonymizer's lists"
            theirs[key] = code
    assert len(theirs_module.ALL_TAGS) == len(theirs)  # no list of theirs was left out
    ours = {tag: code for tag, code, _ in _table_rows()}
    ours.update({mask: code for mask, code, _ in deid_table.BASIC_PROFILE_MASKS})

    differences = table_differences(ours, theirs)
    listing = "\n".join(
        f"  {' '.join(d)}: " + THEIR_DIFFERENCES_ALLOWED.get(d, "NOT EXPLAINED") for d in differences
    )
    print(f"PS3.15 {deid_table.EDITION} Table E.1-1: ours {len(ours)} rows, dicom-anonymizer's {len(theirs)}; "
          f"{len(differences)} difference(s):\n{listing}")
    unexplained = [d for d in differences if d not in THEIR_DIFFERENCES_ALLOWED]
    stale = [d for d in THEIR_DIFFERENCES_ALLOWED if d not in differences]
    assert not unexplained, f"unexplained differences from dicom-anonymizer's table:\n{listing}"
    assert not stale, f"allowed differences that no longer occur (remove them): {stale}"


def test_table_differences_lists_everything():
    ours = {"0010,0010": "Z", "0010,0020": "Z", "50xx,xxxx": "X"}
    theirs = {"0010,0010": "Z", "0010,0020": "X", "0010,1000": "X"}
    assert table_differences(ours, theirs) == [
        ("different code", "0010,0020", "ours Z, theirs X"),
        ("only theirs", "0010,1000", "X"),
        ("only ours", "50xx,xxxx", "X"),
    ]
    assert _their_key((0x5000, 0x0000, 0xFF00, 0x0000)) == "50xx,xxxx"
    assert _their_key((0x6000, 0x3000, 0xFF00, 0xFFFF)) == "60xx,3000"


# The generator, on a small DocBook document shaped like NEMA's.

_DB = "http://docbook.org/ns/docbook"
_HEADER = ["Attribute Name", "Tag", "Retd. (from PS3.6)", "In Std. Comp. IOD (from PS3.3)", "Basic Prof.",
           "Rtn. Safe Priv. Opt.", "Rtn. UIDs Opt.", "Rtn. Dev. Id. Opt.", "Rtn. Inst. Id. Opt.",
           "Rtn. Pat. Chars. Opt.", "Rtn. Long. Full Dates Opt.", "Rtn. Long. Modif. Dates Opt.",
           "Clean Desc. Opt.", "Clean Struct. Cont. Opt.", "Clean Graph. Opt."]


def _docbook(rows: list[tuple[str, str, str]], header: list[str] = _HEADER, edition: str = "2099z") -> bytes:
    def cell(kind: str, text: str) -> str:
        return f"<{kind}><para>{text}</para></{kind}>" if text else f"<{kind}/>"

    head = "<tr>" + "".join(cell("th", h) for h in header) + "</tr>"
    body = "".join(
        "<tr>" + cell("td", name) + cell("td", tag) + cell("td", "N") + cell("td", "Y") + cell("td", code)
        + "".join(cell("td", "") for _ in range(10)) + "</tr>"
        for name, tag, code in rows
    )
    return (f'<book xmlns="{_DB}" xmlns:xml="http://www.w3.org/XML/1998/namespace"><info><subtitle>DICOM PS3.15 '
            f"{edition} - Security and System Management Profiles</subtitle></info><chapter>"
            f'<table xml:id="table_E.1-1"><caption>Application Level Confidentiality Profile Attributes</caption>'
            f"<thead>{head}</thead><tbody>{body}</tbody></table></chapter></book>").encode()


def _synthetic_rows() -> list[tuple[str, str, str]]:
    rows = [(f"Attribute {i}", f"(7777,{i:04X})", "X") for i in range(610)]  # unknown to pydicom
    rows += [
        ("Patient&apos;s Name", "(0010,0010)", "Z"),
        ("Patient ID", "(0010,0020)", "Z/D"),
        ("Name to Use", "(0010,\u200b0012)", "X"),
        ("Source Image Sequence", "(0008,2112)", "X/Z/U*"),
        ("Curve Data", "(50xx,xxxx)", "X"),
        ("Private Attributes", "(gggg,eeee) where gggg is odd", "X"),
    ]
    return rows


def test_generator_reads_a_docbook_table():
    xml = _docbook(_synthetic_rows())
    edition, rows, masks = make_deid_table.parse_part15(xml)
    assert edition == "2099z" and len(rows) == 614
    assert ("0010,0010", "Z", "Patient's Name") in rows and ("0010,0012", "X", "Name to Use") in rows
    assert masks == [("50xx,xxxx", "X", "Curve Data"), ("gggg,eeee where gggg is odd", "X", "Private Attributes")]
    # The module it writes is Python that medcodec.deid's parser reads back.
    namespace: dict = {}
    exec(compile(make_deid_table.render(xml), "deid_table.py", "exec"), namespace)
    assert namespace["EDITION"] == "2099z"
    actions = deid_module._parse_table(namespace["BASIC_PROFILE_TABLE"])
    assert actions[0x00100010] == "Z" and actions[0x00100020] == "Z" and actions[0x00082112] == "U"
    lines = namespace["BASIC_PROFILE_TABLE"].strip().splitlines()
    assert "0010,0010  Z      PatientName" in lines  # pydicom's keyword
    assert "0010,0012  X      NameToUse" in lines and "7777,0001  X      Attribute1" in lines  # derived
    assert namespace["BASIC_PROFILE_MASKS"][0] == ("50xx,xxxx", "X", "CurveData")


@pytest.mark.parametrize(
    "change",
    ["unknown code", "duplicate tag", "odd tag cell", "moved column", "too few rows", "not PS3.15", "missing cell"],
)
def test_generator_refuses_a_table_of_another_shape(change):
    rows, header, edition = _synthetic_rows(), list(_HEADER), "2099z"
    if change == "unknown code":
        rows[3] = ("Attribute 3", "(7777,0003)", "K")
    elif change == "duplicate tag":
        rows[3] = ("Attribute 3", "(7777,0004)", "X")
    elif change == "odd tag cell":
        rows[3] = ("Attribute 3", "(7777,00xx)", "X")
    elif change == "moved column":
        header[4], header[5] = header[5], header[4]
    elif change == "too few rows":
        rows = rows[:590]
    elif change == "not PS3.15":
        edition = ""
    xml = _docbook(rows, header, edition)
    if change == "missing cell":
        xml = xml.replace(b"<td><para>N</para></td>", b"", 1)
    with pytest.raises(make_deid_table.TableError):
        make_deid_table.parse_part15(xml)
