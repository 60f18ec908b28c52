"""Golden records written by earlier versions must decode, forever, to the same output."""

import json
import sys
from pathlib import Path

import pytest

import medcodec

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from make_golden import output_digest  # noqa: E402
from make_golden import test_keyring as golden_keyring  # noqa: E402  (not a test)

from medcodec import container as ct  # noqa: E402
from medcodec.sealing import follow_link, reveal  # noqa: E402
from medcodec.stego import MessageNotFoundError  # noqa: E402


def test_there_are_golden_records_of_every_kind():
    kinds = {entry["kind"] for entry in EXPECTED.values()}
    assert kinds == {"pixels", "dicom", "dicom-keyed"} and len(EXPECTED) >= 8
    keyed = [e for e in EXPECTED.values() if e["kind"] == "dicom-keyed"]
    assert {e.get("stego_version", 1) for e in keyed} == {1, 2, 3, None}  # None: kept verbatim, no pixels
    assert {e.get("tier", "full") for e in keyed} == {"full", "essential", "none"}


def test_golden_records_cover_both_config_forms():
    """1.0 records carry their config as plain JSON, 1.1 records as config-deflate with
    dictionary 1 (FORMAT.md "Compressed config"); the head's version matches the file name."""
    import struct

    from medcodec import container as ct

    forms: dict[str, set] = {}
    for name in EXPECTED:
        blob = (GOLDEN / name).read_bytes()
        record = ct.read_record(blob)
        version = name.split("_", 1)[0]
        assert version == f"v{record.major}.{record.minor}", name
        stype, _flags, _crc, length = struct.unpack_from("<HHIQ", blob, 20)
        forms.setdefault(version, set()).add(stype)
        if stype == ct.SECTION_CONFIG_DEFLATE:
            assert blob[36] == 1 and ct.inflate_config(blob[36 : 36 + length]) == ct.encode_config(record.config)
    assert forms["v1.0"] == {ct.SECTION_CONFIG}
    assert forms["v1.1"] == {ct.SECTION_CONFIG_DEFLATE}


def test_golden_keyed_records_cover_both_sealed_original_forms():
    """Before 1.2 the sealed original is section 32 (lzma); since, section 35, packed
    against the de-identified file: a header deflated against its own or as copies from
    it, and a lossy JPEG kept verbatim whose codestream is shared with the clear file."""
    import struct

    from medcodec import sealing

    forms = set()
    for name, entry in EXPECTED.items():
        if entry["kind"] != "dicom-keyed":
            continue
        record = ct.read_record((GOLDEN / name).read_bytes())
        if record.of_type(ct.SECTION_SEALED_ORIGINAL):
            forms.add(("lzma", record.config["restore_mode"]))
            continue
        plain = sealing._open(record, golden_keyring(), sealing.PURPOSE_ORIGINAL_DELTA)
        packing, shared, _ = struct.unpack_from("<BQ32s", plain)
        forms.add((packing, record.config["restore_mode"], shared > 1000))
    assert forms == {("lzma", "byte-exact"), (sealing.DELTA_DEFLATE, "byte-exact", False),
                     (sealing.DELTA_DEFLATE, "verbatim", True), (sealing.DELTA_COPIES, "byte-exact", False)}


def test_golden_keyed_records_cover_both_direction_forms():
    """Section 33: a bit per change's direction, or (0x80 set) only the exceptions."""
    from medcodec import sealing, stego

    forms = set()
    for name, entry in EXPECTED.items():
        record = ct.read_record((GOLDEN / name).read_bytes())
        if entry["kind"] == "dicom-keyed" and record.of_type(ct.SECTION_SEALED_DISPLACED):
            forms.add(bool(sealing._open(record, golden_keyring(), sealing.PURPOSE_DISPLACED)[3]
                           & stego.DIRECTION_EXCEPTIONS))
    assert forms == {False, True}


def test_golden_keyed_records_cover_both_phi_message_forms():
    """The sealed PHI (section 34): xz before 1.2, dictionary 1's id and deflate since."""
    from medcodec import sealing

    firsts = {sealing._open(ct.read_record((GOLDEN / name).read_bytes()), golden_keyring(), sealing.PURPOSE_PHI)[0]
              for name, entry in EXPECTED.items() if entry["kind"] == "dicom-keyed"}
    assert firsts == {0xFD, sealing.PHI_DICTIONARY_ID}


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if e["kind"] == "dicom-keyed"))
def test_a_golden_keyed_record_rewrapped_keeps_its_length(name, tmp_path):
    """Key rotation rewrites archive shards in place (pipelines/rewrap.py): a re-wrapped
    record keeps its length, its config in the form it was written in (1.0: plain JSON,
    1.1: deflated, the key id a stored span)."""
    import shutil

    from medcodec import container as ct
    from medcodec.crypto import Keyring
    from medcodec.sealing import rewrap_record

    shutil.copy(GOLDEN / "test-keyring.json", tmp_path / "ring.json")
    ring = Keyring.load(tmp_path / "ring.json", check_permissions=False)
    old = (GOLDEN / name).read_bytes()
    ring.rotate()
    new = rewrap_record(old, ring)
    assert len(new) == len(old) and new != old
    before, after = ct.read_record(old), ct.read_record(new)
    assert after.config_form == before.config_form and after.config["sealed"]["key_id"] == ring.primary_key_id
    assert medcodec.decompress_dicom(new, keyring=ring) == medcodec.decompress_dicom(old, keyring=golden_keyring())


def test_golden_records_cover_the_local_path():
    ks = {name: medcodec.inspect_record((GOLDEN / name).read_bytes()).get("k", 0) for name in EXPECTED}
    assert any(k > 0 for k in ks.values()), ks


def _wavelet_band_modes(model_id: str, coder) -> set[int]:
    """The band modes of every golden plane that ``coder`` (a wavelet coder) coded."""
    from medcodec import container as ct
    from medcodec.codec import PER_PLANE_MODELS
    from medcodec.paths import IntReader

    modes = set()
    for name in EXPECTED:
        blob = (GOLDEN / name).read_bytes()
        info = medcodec.inspect_record(blob)
        if model_id not in info.get("global_planes", {}):
            continue
        model = info["models"]["global"]
        for sec in ct.read_record(blob).of_type(ct.SECTION_GLOBAL):
            r = IntReader(sec.payload)
            if PER_PLANE_MODELS[model].candidates[r.get()] != coder.model_id:
                continue
            for _ in range(3 * r.get() + 1):  # levels, then per band: mode, value | scale, length
                mode = r.get()
                modes.add(mode)
                r.get()
                if mode:
                    r.get()
    return modes


def test_golden_records_cover_every_wavelet_band_mode():
    from medcodec.wavelet import WaveletGlobalPathCoder

    assert _wavelet_band_modes("wavelet53-v1", WaveletGlobalPathCoder) == {0, 1, 2, 3, 4}


def test_golden_records_cover_every_wavelet53_v2_band_mode_in_use():
    # Modes 0 (constant band), 5 (band kernel) and 6 (low band by raster-wpc-v1); mode 5
    # on a low band needs one wider than 16-bit samples give (tests/test_wavelet_v2.py).
    from medcodec.coders.wavelet_v2 import WaveletV2GlobalPathCoder

    assert _wavelet_band_modes("wavelet53-v2", WaveletV2GlobalPathCoder) == {0, 5, 6}


def test_golden_records_cover_a_raster_leaf_table():
    from medcodec import container as ct
    from medcodec import ctxtree
    from medcodec.codec import PER_PLANE_MODELS
    from medcodec.paths import N_BUCKETS, IntReader, _split
    from medcodec.wavefront import RasterV2GlobalPathCoder

    entries = []
    for name in EXPECTED:
        blob = (GOLDEN / name).read_bytes()
        model = medcodec.inspect_record(blob).get("models", {}).get("global")
        if model not in PER_PLANE_MODELS:
            continue
        for sec in ct.read_record(blob).of_type(ct.SECTION_GLOBAL):
            r = IntReader(sec.payload)
            if PER_PLANE_MODELS[model].candidates[r.get()] != RasterV2GlobalPathCoder.model_id:
                continue
            side, _ = _split(sec.payload[r.at :])
            ctxtree.Tree.read(side, len(RasterV2GlobalPathCoder.PROPERTIES), N_BUCKETS)
            entries.append(side.get())
    assert entries and max(entries) > 0


@pytest.mark.parametrize("model_id", ["raster-wp-v3", "raster-wp-v4"])
def test_golden_records_cover_fitted_raster_predictors(model_id):
    # raster-wp-v3 and v4 (v3's side information): a golden plane whose leaves pick a fitted predictor.
    from medcodec import container as ct
    from medcodec import ctxtree
    from medcodec.codec import PER_PLANE_MODELS
    from medcodec.paths import N_BUCKETS, IntReader, PlaneInfo, _split
    from medcodec.wavefront import LEAF_PREDICTORS, RasterV3GlobalPathCoder

    picks = []
    for name in EXPECTED:
        blob = (GOLDEN / name).read_bytes()
        info = medcodec.inspect_record(blob)
        if info.get("models", {}).get("global") not in PER_PLANE_MODELS:
            continue
        rows, cols = info["shape"][-2:]
        for sec in ct.read_record(blob).of_type(ct.SECTION_GLOBAL)[:1]:  # the first plane: no previous one
            r = IntReader(sec.payload)
            if PER_PLANE_MODELS[info["models"]["global"]].candidates[r.get()] != model_id:
                continue
            side, _ = _split(sec.payload[r.at :])
            ctxtree.Tree.read(side, len(RasterV3GlobalPathCoder.PROPERTIES), N_BUCKETS)
            models = RasterV3GlobalPathCoder()._read_models(side, PlaneInfo(rows=rows, cols=cols, bits=12, k=0, preset="max"), None)
            table = [(side.get(), side.get(), side.get()) for _ in range(side.get())]
            picks += [pick - len(LEAF_PREDICTORS) for _, pick, _ in table if pick >= len(LEAF_PREDICTORS) and len(models)]
    assert picks


def test_golden_records_cover_both_raster_ls_context_sets():
    from medcodec.wavefront import TEXTURE_MIN_PIXELS

    sizes = set()
    for name in EXPECTED:
        info = medcodec.inspect_record((GOLDEN / name).read_bytes())
        if "raster-ls-v1" in info.get("global_planes", {}):
            rows, cols = info["shape"][-2:]
            sizes.add(rows * cols >= TEXTURE_MIN_PIXELS)
    assert sizes == {False, True}


def test_golden_records_cover_the_colour_table():
    infos = [medcodec.inspect_record((GOLDEN / name).read_bytes()) for name in EXPECTED]
    assert any(info.get("colour_palette") for info in infos)


def test_golden_records_cover_every_model_a_reader_knows():
    # A coder added without a golden record could change its stream unnoticed.
    from medcodec.codec import GLOBAL_MODELS
    from medcodec.model.registry import WEIGHTS_DIR
    from medcodec.paths import ClassicalLocalPathCoder
    from medcodec.codec import PER_PLANE_MODELS

    seen = set()
    for name in EXPECTED:
        info = medcodec.inspect_record((GOLDEN / name).read_bytes())
        info = info.get("pixels", info)
        if "models" in info:  # a record kept verbatim codes no pixels
            seen |= {info["models"]["global"], info["models"]["local"], *info.get("global_planes", {})}
    shipped = {p.stem for p in WEIGHTS_DIR.glob("*.safetensors")}
    wanted = set(GLOBAL_MODELS) | {c for pp in PER_PLANE_MODELS.values() for c in pp.candidates}
    assert wanted | shipped | {ClassicalLocalPathCoder.model_id} <= seen


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_record_decodes(name):
    entry = EXPECTED[name]
    blob = (GOLDEN / name).read_bytes()
    if entry["kind"] == "pixels":
        out = medcodec.decompress_pixels(blob)
    elif entry["kind"] == "dicom-keyed":
        out = medcodec.decompress_dicom(blob, keyring=golden_keyring())
        public = medcodec.decompress_dicom(blob)
        assert output_digest(entry["kind"], public) == entry["public_sha256"]
        if entry.get("stego_version", 1) is None:  # kept verbatim: the PHI is sealed in the record only
            assert ct.read_record(blob).config["sealed"]["stego"]["tier"] == entry["tier"] == "none"
            with pytest.raises(MessageNotFoundError):
                reveal(public, golden_keyring())
            assert output_digest(entry["kind"], out) == entry["output_sha256"]
            return
        # The de-identified file's embedded PHI opens with the key, by the stego version it was written with.
        phi = reveal(public, golden_keyring())
        assert phi["elements"] and phi["stego_version"] == entry.get("stego_version", 1)
        assert phi["tier"] == entry.get("tier", "full")  # records written before tiers carry the full PHI
        if phi["tier"] == "essential":
            assert follow_link(phi, blob, golden_keyring())["tier"] == "full"
    else:
        out = medcodec.decompress_dicom(blob)
    assert output_digest(entry["kind"], out) == entry["output_sha256"]
