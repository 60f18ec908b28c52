"""Tiered PHI messages: the full sealed PHI where it fits, else the essential message, never truncated."""

import subprocess
import sys

import numpy as np
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st

import medcodec
from medcodec import container as ct
from medcodec import crypto, deid, essential, sealing
from medcodec.dicom import parse_dicom
from medcodec.planes import SampleFormat, words_to_values

from conftest import pydicom_bytes, pydicom_file

LINK = bytes(range(16))


def _removed(**elements):
    return {"format": deid.REMOVED_FORMAT, "version": deid.REMOVED_VERSION, "elements": elements}


# --------------------------------------------------------------------------------------
# The essential message format

uid_text = st.from_regex(r"[0-9]{1,8}(\.[0-9]{1,8}){0,7}", fullmatch=True)
entry = st.one_of(
    st.builds(lambda v: {"vr": "PN", "value": v}, st.text(max_size=70)),
    st.builds(lambda v: {"vr": "UN", "value": v}, st.text(max_size=10)),
    st.just({"absent": True}),
    st.builds(lambda v: {"vr": "PN", "value": v}, st.lists(st.text(max_size=8), max_size=3)),
)


@given(name=entry, uid=uid_text, odd_uid=st.text(max_size=64), sex=st.sampled_from(["M", "F", "O", ""]))
def test_essential_message_round_trip(name, uid, odd_uid, sex):
    removed = _removed(**{
        "00100010": name, "00100040": {"vr": "CS", "value": sex}, "0020000D": {"vr": "UI", "value": uid},
        "00080018": {"vr": "UI", "value": odd_uid}, "00181000": {"vr": "LO", "value": "not essential"},
    })
    data = essential.encode_essential(removed, LINK)
    back = essential.decode_essential(data)
    expected = {k: v for k, v in removed["elements"].items() if k != "00181000"}
    assert back["elements"] == expected and back["tier"] == "essential" and back["full_link"] == LINK.hex()
    deid.removed_from_bytes(deid.removed_to_bytes(back))  # a valid removed-values record


def test_essential_message_is_compact():
    uid = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    removed = _removed(**{p: {"vr": vr, "value": uid if vr == "UI" else "DOE^JANE"} for p, vr in essential.ESSENTIAL_TAGS})
    data = essential.encode_essential(removed, LINK)
    # 3 UIDs at 4 bits a character, 5 short strings, the link and 2 bytes a field.
    assert len(data) == 2 + 16 + 3 * (2 + 24) + 5 * (2 + 1 + 8)


def test_essential_message_rejects_damage():
    data = essential.encode_essential(_removed(**{"00100010": {"vr": "PN", "value": "DOE^JANE"},
                                                  "0020000D": {"vr": "UI", "value": "1.2.3"}}), LINK)
    for bad in (b"", b"X" + data[1:], data[:1] + b"\x09" + data[2:], data[:-1], data[:20] + b"\x2a\x00",
                data[:18] + b"\x00\x07", data + b"\x05"):
        with pytest.raises(essential.EssentialError):
            essential.decode_essential(bad)


# --------------------------------------------------------------------------------------
# Sealing picks the largest tier that fits


def _keyed(name: str, keyring, **kw):
    data = _more_phi() if name == MORE_PHI else pydicom_bytes(name)
    blob = medcodec.compress_dicom(data, keyring=keyring, preset="fast", local_model="classical-v1", **kw)
    return data, blob, ct.read_record(blob).config["sealed"]["stego"]


# MR_small (64 x 64) with addresses added: its own full PHI (480 B sealed since format
# 1.2 packs it with a dictionary; 654 B before) fits its capacity of about 490 B; with
# these 300 characters of removed attributes it does not, and the essential message does.
MORE_PHI = "MR_small.dcm with addresses"


def _more_phi() -> bytes:
    import io
    import random

    rng = random.Random(7)
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(60)]
    ds.PatientAddress = " ".join(words[:30]).title()[:150]
    ds.InstitutionAddress = " ".join(words[30:]).title()[:150]
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_full_tier_where_the_whole_phi_fits(keyring):
    data, blob, report = _keyed("CT_small.dcm", keyring)
    assert report["tier"] == "full" and report["embedded"] and "reason" not in report
    assert report["message_bytes"] == report["tier_bytes"]["full"] > report["tier_bytes"]["essential"]
    phi = sealing.reveal(medcodec.decompress_dicom(blob), keyring)
    assert phi["tier"] == "full" and phi["elements"]["00100010"]["value"] == "CompressedSamples^CT1"
    assert len(phi["elements"]) > 2 * len(essential.ESSENTIAL_TAGS)
    with pytest.raises(sealing.SealingError, match="essential"):
        sealing.follow_link(phi, blob, keyring)


def test_the_phi_message_is_deflated_with_dictionary_1(keyring):
    """Since format 1.2 the PHI message is dictionary 1's id and the removed-values JSON
    deflated after it (1.1 wrote xz, still read: the golden records); MR_small's full
    PHI then fits its pixels, where 1.1's did not."""
    import hashlib
    import lzma

    data, blob, report = _keyed("MR_small.dcm", keyring)
    assert report["tier"] == "full" and report["tier_bytes"]["full"] <= report["capacity_bits"] // 8
    phi = sealing._open(ct.read_record(blob), keyring, sealing.PURPOSE_PHI)
    assert phi[0] == sealing.PHI_DICTIONARY_ID == 1
    removed = sealing._unpack_phi(phi, "sealed PHI", None)
    assert sealing.reveal(medcodec.decompress_dicom(blob), keyring)["elements"] == deid.removed_from_bytes(removed)["elements"]
    assert len(phi) < 0.85 * len(lzma.compress(removed))
    assert sealing._unpack_phi(lzma.compress(removed), "sealed PHI", None) == removed  # 1.1's form
    assert hashlib.sha256(sealing.PHI_DICTIONARIES[1]).hexdigest() == sealing.PHI_DICTIONARY_SHA256[1] == (
        "c16db0e64d12d57d3ca8df22717e7963c1b13e6623f0254a4c4f4e413c8b934b")  # normative: never changes
    with pytest.raises(medcodec.UnsupportedError, match="dictionary 2, unknown"):
        sealing._unpack_phi(b"\x02" + phi[1:], "sealed PHI", None)
    with pytest.raises(medcodec.CorruptRecordError, match="after its deflate stream"):
        sealing._unpack_phi(phi + b"\0", "sealed PHI", None)


def test_essential_tier_where_the_full_phi_does_not_fit(keyring):
    """MR_small with addresses (``MORE_PHI``): its sealed PHI is larger than its capacity
    (~490 B): before tiers it carried nothing. Now it carries the essential message,
    linked to the sealed record."""
    data, blob, report = _keyed(MORE_PHI, keyring)
    assert report["tier"] == "essential" and report["embedded"]
    assert report["message_bytes"] == report["tier_bytes"]["essential"] < 8 * report["capacity_bits"]
    assert report["tier_bytes"]["full"] > report["capacity_bits"] // 8 and "full message" in report["reason"]
    public = medcodec.decompress_dicom(blob)
    phi = sealing.reveal(public, keyring)
    original = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    assert phi["tier"] == "essential"
    assert phi["elements"]["00100010"]["value"] == str(original.PatientName)
    assert phi["elements"]["00100020"]["value"] == original.PatientID
    assert phi["elements"]["00080018"]["value"] == original.SOPInstanceUID
    assert phi["elements"]["0020000D"]["value"] == original.StudyInstanceUID
    full = sealing.follow_link(phi, blob, keyring)
    assert full["tier"] == "full" and len(full["elements"]) > len(phi["elements"])
    assert full["elements"]["00100010"] == phi["elements"]["00100010"]
    # The original is restored exactly whatever tier the pixels carry.
    assert medcodec.decompress_dicom(blob, keyring=keyring) == data
    # Another image's record is not the one the link names.
    _, other, _ = _keyed("CT_small.dcm", keyring)
    with pytest.raises(crypto.IntegrityError):
        sealing.follow_link(phi, other, keyring)


def test_no_tier_says_why_for_each(keyring, tmp_path):
    """A tiny image has room for neither message: the record says why, and keeps the PHI sealed."""
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    ds.PixelData = ds.pixel_array[:4, :16].astype(ds.pixel_array.dtype).tobytes()
    ds.Rows, ds.Columns = 4, 16
    path = tmp_path / "tiny.dcm"
    ds.save_as(path)
    data = path.read_bytes()
    blob = medcodec.compress_dicom(data, keyring=keyring)
    report = ct.read_record(blob).config["sealed"]["stego"]
    assert report["tier"] == "none" and not report["embedded"] and report["message_bytes"] == 0
    assert "full message" in report["reason"] and "essential message" in report["reason"]
    assert medcodec.decompress_dicom(blob, keyring=keyring) == data
    assert sealing._open(ct.read_record(blob), keyring, sealing.PURPOSE_PHI)


def test_colour_record_keeps_grey_pixels_grey(keyring):
    """US1_UNCI (near-grey RGB ultrasound): the de-identified copy's grey pixels are the
    original's, count and positions."""
    data, blob, report = _keyed("US1_UNCI.dcm", keyring)
    assert report["embedded"] and report["changed"] > 0

    def grey(dicom_bytes):
        parsed = parse_dicom(dicom_bytes)
        values, _ = words_to_values(parsed.frames, SampleFormat.of(parsed.spec))
        return (values[:, 0] == values[:, 1]) & (values[:, 1] == values[:, 2])

    public = medcodec.decompress_dicom(blob)
    assert np.array_equal(grey(public), grey(data))
    assert sealing.reveal(public, keyring)["stego_version"] == 3


def test_cli_reveal_says_the_tier_and_follows_the_link(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "jobs.cli", *map(str, args)], capture_output=True, text=True)

    ring = tmp_path / "ring.json"
    assert cli("keys", "new", ring).returncode == 0
    src = tmp_path / "mr_small_more_phi.dcm"
    src.write_bytes(_more_phi())
    assert cli("compress", "--preset", "fast", "--key-file", ring, src, tmp_path / "r.mdc").returncode == 0
    assert cli("decompress", tmp_path / "r.mdc", tmp_path / "deid.dcm").returncode == 0
    shown = cli("inspect", tmp_path / "r.mdc").stdout
    assert "embedded PHI     tier essential" in shown and "full message" in shown
    res = cli("reveal", "--key-file", ring, tmp_path / "deid.dcm")
    assert res.returncode == 0, res.stderr
    assert "message tier: essential" in res.stdout and "PatientName" in res.stdout
    assert "InstitutionName" not in res.stdout
    res = cli("reveal", "--key-file", ring, "--record", tmp_path / "r.mdc", tmp_path / "deid.dcm")
    assert res.returncode == 0 and "link" in res.stdout and "verified" in res.stdout
    assert "PatientName" in res.stdout and len(res.stdout.splitlines()) > 20
