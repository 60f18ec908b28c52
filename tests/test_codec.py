"""The pixel codec: exact round trips, determinism, presets, corrupt records."""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import medcodec
from medcodec.errors import CorruptRecordError, UnsupportedError
from conftest import smooth_image


@st.composite
def arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(["uint8", "int8", "uint16", "int16"])))
    ndim = draw(st.sampled_from([2, 3, 4]))
    shape = [draw(st.integers(1, 3))] if ndim >= 3 else []
    shape += [draw(st.integers(1, 20)), draw(st.integers(1, 20))]
    if ndim == 4:
        shape.append(draw(st.sampled_from([1, 3])))
    bits_stored = draw(st.integers(1, dtype.itemsize * 8))
    n = int(np.prod(shape)) * dtype.itemsize
    raw = draw(st.binary(min_size=n, max_size=n))
    return np.frombuffer(raw, dtype=dtype).reshape(shape), bits_stored


@given(arrays(), st.sampled_from(medcodec.PRESETS))
def test_any_array_roundtrips_exactly(case, preset):
    array, bits_stored = case
    blob = medcodec.compress_pixels(array, bits_stored=bits_stored, signed=array.dtype.kind == "i", preset=preset)
    back = medcodec.decompress_pixels(blob)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert np.array_equal(back, array)


@pytest.mark.parametrize("bits", [8, 10, 12, 16])
@pytest.mark.parametrize("preset", medcodec.PRESETS)
def test_smooth_images_compress_and_roundtrip(bits, preset):
    img = smooth_image(96, 130, bits).astype(np.uint8 if bits == 8 else np.uint16)
    blob = medcodec.compress_pixels(img, bits_stored=bits, signed=False, preset=preset)
    assert np.array_equal(medcodec.decompress_pixels(blob), img)
    assert len(blob) < img.nbytes * 0.75


def test_signed_multiframe_rgb_roundtrip():
    rgb = np.stack([smooth_image(40, 50, 8, seed=s) for s in range(3)], axis=-1).astype(np.uint8)
    frames = np.stack([rgb, rgb[::-1], rgb[:, ::-1]])
    blob = medcodec.compress_pixels(frames, bits_stored=8, signed=False)
    assert np.array_equal(medcodec.decompress_pixels(blob), frames)
    ct = (smooth_image(64, 64, 12) - 2048).astype(np.int16)
    blob = medcodec.compress_pixels(ct, bits_stored=12, signed=True)
    assert np.array_equal(medcodec.decompress_pixels(blob), ct)


def test_large_multiplane_image_uses_local_path_and_roundtrips():
    img = smooth_image(200, 180, 16, noise=900).astype(np.uint16)  # noise floor ~2**9 -> k > 0
    # (the model named: by default `max` would also try `fast`'s record, which has no local planes)
    blob = medcodec.compress_pixels(img, bits_stored=16, signed=False, local_model="classical-v1")
    info = medcodec.inspect_record(blob)
    assert info["k"] > 0 and info["bps"]["local"] > 0
    assert np.array_equal(medcodec.decompress_pixels(blob), img)


@pytest.mark.slow
def test_same_bytes_every_time_and_in_other_processes():
    img = smooth_image(150, 170, 12, seed=5).astype(np.uint16)
    blob = medcodec.compress_pixels(img, bits_stored=12, signed=False)
    assert medcodec.compress_pixels(img, bits_stored=12, signed=False) == blob
    script = (
        "import sys, numpy as np, medcodec;"
        "img = np.frombuffer(sys.stdin.buffer.read(), dtype=np.uint16).reshape(150, 170);"
        "sys.stdout.buffer.write(medcodec.compress_pixels(img, bits_stored=12, signed=False))"
    )
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        out = subprocess.run([sys.executable, "-c", script], input=img.tobytes(), capture_output=True, env=env, check=True)
        assert out.stdout == blob
    decode = (
        "import sys, medcodec;"
        "sys.stdout.buffer.write(medcodec.decompress_pixels(sys.stdin.buffer.read()).tobytes())"
    )
    out = subprocess.run([sys.executable, "-c", decode], input=blob, capture_output=True, check=True)
    assert out.stdout == img.tobytes()


def test_flipped_byte_in_a_stream_never_decodes_wrong():
    img = smooth_image(64, 64, 12).astype(np.uint16)
    blob = bytearray(medcodec.compress_pixels(img, bits_stored=12, signed=False))
    for i in range(0, len(blob), max(1, len(blob) // 40)):
        bad = bytearray(blob)
        bad[i] ^= 0x10
        with pytest.raises(medcodec.MedcodecError):
            medcodec.decompress_pixels(bytes(bad))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(array=np.zeros((4, 4), np.float32), bits_stored=8, signed=False), "dtype"),
        (dict(array=np.zeros((4, 4), np.uint8), bits_stored=9, signed=False), "bits_stored"),
        (dict(array=np.zeros((4, 4), np.uint8), bits_stored=8, signed=False, preset="best"), "preset"),
        (dict(array=np.zeros((0, 4), np.uint8), bits_stored=8, signed=False), "empty"),
        (dict(array=np.zeros((1, 2, 3, 4, 5), np.uint8), bits_stored=8, signed=False), "array must be"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    array = kwargs.pop("array")
    with pytest.raises(UnsupportedError, match=match):
        medcodec.compress_pixels(array, **kwargs)


def test_pixels_and_dicom_records_are_not_confused():
    blob = medcodec.compress_pixels(np.zeros((8, 8), np.uint8), bits_stored=8, signed=False)
    with pytest.raises(UnsupportedError, match="decompress_pixels"):
        medcodec.decompress_dicom(blob)


def test_record_claiming_a_huge_shape_is_refused():
    from medcodec import container as ct

    blob = medcodec.compress_pixels(np.zeros((8, 8), np.uint8), bits_stored=8, signed=False)
    record = ct.read_record(blob)
    record.config["pixels"]["shape"] = [1, 1, 1 << 20, 1 << 20]
    with pytest.raises(CorruptRecordError, match="shape"):
        medcodec.decompress_pixels(ct.write_record(record))


def test_sparse_histogram_is_coded_through_a_palette():
    levels = np.arange(0, 65536, 1024, dtype=np.uint16)
    img = levels[(smooth_image(80, 90, 6) // 1).astype(np.int64) % levels.size]
    blob = medcodec.compress_pixels(img, bits_stored=16, signed=False)
    from medcodec import container as ct

    record = ct.read_record(blob)
    assert record.config["pixels"]["palette"] is True and record.of_type(ct.SECTION_PALETTE)
    assert np.array_equal(medcodec.decompress_pixels(blob), img)
    dense = smooth_image(80, 90, 12).astype(np.uint16)
    assert ct.read_record(medcodec.compress_pixels(dense, bits_stored=12, signed=False)).config["pixels"]["palette"] is False


def _few_colour_rgb(rows=96, cols=128, seed=0):
    """Grey ultrasound-like frame with a small coloured overlay (few distinct colours)."""
    grey = (smooth_image(rows, cols, 8, seed=seed, noise=1.0) // 4 * 4).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[10:30, 20:50] = [[200, 30, 30], [30, 200, 30]][seed % 2]
    rgb[40:44, 60:90, 2] = 255
    return rgb


@pytest.mark.parametrize("preset", ["fast", "max"])
def test_few_colour_rgb_is_coded_as_one_plane_of_colour_indices(preset):
    from medcodec import container as ct
    from medcodec.codec import _coded_bytes, _encode_with, local_model_for
    from medcodec.planes import SampleFormat

    rgb = _few_colour_rgb()[None]  # (frames, rows, cols, samples)
    blob = medcodec.compress_pixels(rgb, bits_stored=8, signed=False, preset=preset, local_model="classical-v1")
    assert np.array_equal(medcodec.decompress_pixels(blob), rgb)
    fmt = SampleFormat(bits_allocated=8, bits_stored=8, high_bit=7, signed=False)
    words, model = np.moveaxis(rgb, 3, 1), local_model_for("classical-v1")
    indexed = _encode_with(words, fmt, preset, model, None, colours=True)
    planes = _encode_with(words, fmt, preset, model, None, colours=False)
    n = int(np.unique(rgb.reshape(-1, 3), axis=0).shape[0])
    assert indexed[0]["colour_palette"] == n and "colour_palette" not in planes[0]
    kinds = [sec.type for sec in indexed[1]]
    assert kinds.count(ct.SECTION_COLOURS) == 1 and kinds.count(ct.SECTION_GLOBAL) == 1  # one plane of indices
    record = ct.read_record(blob)
    if preset == "fast":  # uses the table wherever it applies
        assert record.config["pixels"]["colour_palette"] == n == medcodec.inspect_record(blob)["colour_palette"]
    else:  # keeps the smaller of the two (here the planes: G and B code as differences almost for free)
        assert _coded_bytes((record.config["pixels"], record.sections)) == min(map(_coded_bytes, (indexed, planes)))


def test_max_codes_a_screened_image_only_the_colour_way_its_crop_codes_smaller():
    from medcodec.codec import (
        SCREEN_GLOBAL_MODEL,
        SCREEN_MIN_SAMPLES,
        _coded_bytes,
        _encode_with,
        _screen_crop,
        local_model_for,
        screen_colours,
    )
    from medcodec.planes import SampleFormat

    fmt = SampleFormat(bits_allocated=8, bits_stored=8, high_bit=7, signed=False)
    model = local_model_for("classical-v1")
    rng = np.random.default_rng(3)
    levels = np.clip(smooth_image(256, 256, 8, seed=3, noise=0.0).astype(np.int64) * 30 // 256, 0, 29)
    painted = rng.integers(0, 256, (30, 3)).astype(np.uint8)[levels]  # 30 unrelated colours: the table wins
    choices = []
    for rgb in (_few_colour_rgb(256, 256), painted):  # grey with an overlay: the planes win
        words = np.ascontiguousarray(np.moveaxis(rgb, 2, 0)[None])  # (1, 3, 256, 256)
        assert words.size >= SCREEN_MIN_SAMPLES
        crop = _screen_crop(words)
        sizes = {c: _coded_bytes(_encode_with(crop, fmt, "max", model, None, colours=c, global_id=SCREEN_GLOBAL_MODEL))
                 for c in (True, False)}
        assert sizes[True] != sizes[False]
        choice = screen_colours(words, fmt, "max", model)
        assert choice == (sizes[True] < sizes[False],)
        choices.append(choice)
        blob = medcodec.compress_pixels(rgb[None], bits_stored=8, signed=False, local_model="classical-v1")
        assert np.array_equal(medcodec.decompress_pixels(blob), rgb[None])
        assert ("colour_palette" in medcodec.inspect_record(blob)) == choice[0]
    assert choices == [(False,), (True,)]
    small = words[:, :, :96, :96]  # under SCREEN_MIN_SAMPLES: both ways, the smaller record kept
    assert small.size < SCREEN_MIN_SAMPLES and screen_colours(small, fmt, "max", model) == (True, False)


def test_max_codes_a_screened_image_with_fast_only_where_fast_codes_its_crop_close(monkeypatch):
    from medcodec import codec
    from medcodec import container as ct
    from medcodec.planes import SampleFormat

    fmt = SampleFormat(bits_allocated=8, bits_stored=8, high_bit=7, signed=False)
    classical = codec.local_model_for("classical-v1")
    calls = []
    encode_with = codec._encode_with

    def counted(words, fmt, preset, model, timings, **kw):
        calls.append((preset, words.shape, kw.get("global_id")))
        return encode_with(words, fmt, preset, model, timings, **kw)

    monkeypatch.setattr(codec, "_encode_with", counted)
    flat = np.full((256, 256), 100, np.uint8)  # `fast` codes it (and its crop) smaller
    textured = smooth_image(256, 256, 8, seed=1, noise=1.0).astype(np.uint8)  # `max` codes the crop 10% smaller
    for img, tried in ((flat, True), (textured, False)):
        words = img[None, None]
        assert words.size >= codec.SCREEN_MIN_SAMPLES
        crop = codec._screen_crop(words)
        screened = min(codec._coded_bytes(encode_with(crop, fmt, "max", m, None, global_id=codec.SCREEN_GLOBAL_MODEL))
                       for m in map(codec.local_model_for, codec.PRESET_LOCAL_MODELS["max"]))
        fast_crop = codec._coded_bytes(encode_with(crop, fmt, "fast", classical, None))
        assert (fast_crop <= screened * (1 + codec.FAST_TRIAL_MARGIN)) == tried
        calls.clear()
        blob = medcodec.compress_pixels(img, bits_stored=8, signed=False, preset="max")
        assert ("fast", crop.shape, None) in calls  # the crop, coded by `fast`
        assert (("fast", words.shape, None) in calls) == tried  # the whole image
        full = {p: codec._coded_bytes(encode_with(words, fmt, p, classical, None)) for p in ("max", "fast")}
        assert np.array_equal(medcodec.decompress_pixels(blob), img)
        preset = ct.read_record(blob).config["pixels"]["preset"]
        if tried:
            assert full["fast"] < full["max"] and preset == "fast"
        else:
            assert full["fast"] > full["max"] and preset == "max"


def test_colour_table_damage_is_refused():
    from medcodec import container as ct

    rgb = np.stack([_few_colour_rgb(seed=0), _few_colour_rgb(seed=1)])
    blob = medcodec.compress_pixels(rgb, bits_stored=8, signed=False, preset="fast")
    assert np.array_equal(medcodec.decompress_pixels(blob), rgb)
    record = ct.read_record(blob)
    n = record.config["pixels"]["colour_palette"]
    for claim, match in ((n + 1, "colours"), (0, "digest|SHA-256|streams"), (1 << 20, "colour table")):
        bad = ct.read_record(blob)
        bad.config["pixels"]["colour_palette"] = claim
        with pytest.raises(CorruptRecordError, match=match):
            medcodec.decompress_pixels(ct.write_record(bad))
    bad = ct.read_record(blob)
    i = next(j for j, s in enumerate(bad.sections) if s.type == ct.SECTION_COLOURS)
    bad.sections[i] = ct.Section(ct.SECTION_COLOURS, bad.sections[i].payload[:-3])
    with pytest.raises(CorruptRecordError, match="colour table"):
        medcodec.decompress_pixels(ct.write_record(bad))
