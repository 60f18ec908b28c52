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


def smooth_image(rows, cols, bits, seed=0, noise=3.0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:rows, :cols]
    top = (1 << bits) - 1
    img = top / 2 + top / 3 * np.sin(x / 17.0) * np.cos(y / 23.0) + rng.normal(0, noise, (rows, cols))
    return np.clip(img, 0, top)


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
    blob = medcodec.compress_pixels(img, bits_stored=16, signed=False)
    info = medcodec.inspect_record(blob)
    assert info["k"] > 0 and info["bps"]["local"] > 0
    assert np.array_equal(medcodec.decompress_pixels(blob), img)


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
