"""The 5/3 wavelet global path: exact transform, band coding, choice, corruption."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import medcodec
from medcodec.errors import CorruptRecordError
from medcodec.paths import PlaneInfo, TreeGlobalPathCoder
from medcodec.coders.selectors import PER_PLANE_V4, PER_PLANE_V7
from medcodec.wavelet import WaveletGlobalPathCoder, band_shapes, forward, inverse, levels_for

from conftest import pydicom_file


def _plain_53(x):
    """JPEG 2000 Annex F reversible 5/3 analysis of one signal, written from the standard:
    periodic-symmetric extension of x, then the two lifting steps, one sample at a time."""
    n = len(x)
    if n == 1:
        return list(x), []

    def ext(i):
        while not 0 <= i < n:
            i = -i if i < 0 else 2 * (n - 1) - i
        return x[i]

    y = {}
    for i in range(-3, n + 3):
        if i % 2:
            y[i] = ext(i) - (ext(i - 1) + ext(i + 1)) // 2
    low = [ext(i) + (y[i - 1] + y[i + 1] + 2) // 4 for i in range(0, n, 2)]
    high = [y[i] for i in range(1, n, 2)]
    return low, high


@given(st.lists(st.integers(-(1 << 16), 1 << 16), min_size=1, max_size=40))
def test_lifting_matches_the_standard_one_signal_at_a_time(values):
    x = np.array(values, dtype=np.int64)[:, None]
    bands = forward(np.repeat(x, 2, axis=1).T, 1)  # rows of the 2 x n plane are the signal
    low, high = _plain_53(values)
    # forward filters columns then rows: with 2 identical rows, the row step sees x itself.
    assert np.array_equal(bands[0][0], low) and np.array_equal(bands[1][0], high)
    assert not bands[2].any() and not bands[3].any()  # vertical detail of equal rows is 0


@settings(max_examples=60)
@given(st.integers(1, 70), st.integers(1, 70), st.integers(0, 2**32 - 1))
def test_transform_is_exactly_invertible(rows, cols, seed):
    a = np.random.default_rng(seed).integers(0, 1 << 16, (rows, cols))
    lv = levels_for(rows, cols)
    bands = forward(a, lv)
    assert [b.shape for b in bands] == band_shapes(rows, cols, lv)
    assert np.array_equal(inverse(bands), a)


def _decoded_lossy_j2k(rows=96, cols=128, seed=0):
    """A plane that is the inverse transform of sparse, quantized coefficients (what a lossy
    JPEG 2000 image stored decoded looks like), offset into 12 bits."""
    rng = np.random.default_rng(seed)
    lv = levels_for(rows, cols)
    bands = []
    for i, shape in enumerate(band_shapes(rows, cols, lv)):
        step = 1 if i == 0 else 32
        dense = rng.integers(200, 300, shape) if i == 0 else rng.integers(-20, 21, shape) * step
        keep = np.ones(shape, bool) if i == 0 else rng.random(shape) < 0.04
        bands.append(np.where(keep, dense, 0))
    plane = inverse(bands)
    return plane - plane.min() + 7


def test_sparse_coefficient_images_take_the_wavelet_path():
    plane = _decoded_lossy_j2k()
    info = PlaneInfo(rows=plane.shape[0], cols=plane.shape[1], bits=12, k=0, preset="max")
    data = WaveletGlobalPathCoder().encode(plane, info)
    assert np.array_equal(WaveletGlobalPathCoder().decode(data, info), plane)
    assert len(data) * 3 < len(TreeGlobalPathCoder().encode(plane, info))
    chosen = PER_PLANE_V4.encode(plane, info)
    assert PER_PLANE_V4.chosen_model(chosen) == "wavelet53-v1"
    assert np.array_equal(PER_PLANE_V4.decode(chosen, info), plane)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (2, 3), (17, 33), (64, 64)])
def test_wavelet_coder_roundtrips_any_shape(shape):
    rng = np.random.default_rng(sum(shape))
    for plane in (rng.integers(0, 1 << 10, shape), np.full(shape, 5), np.zeros(shape, dtype=np.int64)):
        info = PlaneInfo(rows=shape[0], cols=shape[1], bits=10, k=0, preset="max")
        data = WaveletGlobalPathCoder().encode(plane, info)
        assert np.array_equal(WaveletGlobalPathCoder().decode(data, info), plane)


def test_a_decoded_lossy_jpeg2000_ct_image_costs_a_tenth_of_a_bit():
    import pydicom

    ds = pydicom.dcmread(pydicom_file("693_UNCI.dcm"))
    assert ds.PixelRepresentation == 1 and ds.BitsStored == 14
    plane = ds.pixel_array.astype(np.int64) + (1 << 13)  # offset binary, as the codec sees it
    info = PlaneInfo(rows=plane.shape[0], cols=plane.shape[1], bits=14, k=0, preset="max")
    data = WaveletGlobalPathCoder().encode(plane, info)
    assert np.array_equal(WaveletGlobalPathCoder().decode(data, info), plane)
    # measured 2,117 bytes (0.065 bits per sample; JPEG 2000 lossless 1,959); the
    # interlaced tree path: 20.7 kB
    assert 8 * len(data) / plane.size < 0.08


def test_corrupt_wavelet_streams_fail_cleanly():
    plane = _decoded_lossy_j2k(40, 48)
    info = PlaneInfo(rows=40, cols=48, bits=12, k=0, preset="max")
    data = WaveletGlobalPathCoder().encode(plane, info)
    for bad in (data[:5], data[:-7], b"\x09" + data[1:], data[:1] + b"\x07" + data[2:]):
        with pytest.raises(CorruptRecordError):
            out = WaveletGlobalPathCoder().decode(bad, info)
            assert not np.array_equal(out, plane)  # a decodable damage must not pass silently
            raise CorruptRecordError("decoded something else")
    rng = np.random.default_rng(1)
    for _ in range(30):
        flipped = bytearray(data)
        flipped[rng.integers(0, len(data))] ^= 1 << int(rng.integers(0, 8))
        try:
            out = WaveletGlobalPathCoder().decode(bytes(flipped), info)
        except CorruptRecordError:
            continue
        assert out.shape == plane.shape and out.min() >= 0 and out.max() < (1 << 12)


def test_max_records_name_their_per_plane_selector_and_decode():
    plane = _decoded_lossy_j2k(64, 80, seed=3).astype(np.uint16)
    blob = medcodec.compress_pixels(plane, bits_stored=12, signed=False, preset="max", local_model="classical-v1")
    info = medcodec.inspect_record(blob)
    assert info["models"]["global"] == "per-plane-v8" and info["global_planes"] == {"wavelet53-v2": 1}
    assert np.array_equal(medcodec.decompress_pixels(blob), plane)
    # per-plane-v7 (`max` before v8) took wavelet53-v1 there; its streams still decode.
    pinfo = PlaneInfo(rows=64, cols=80, bits=12, k=0, preset="max")
    data = PER_PLANE_V7.encode(plane.astype(np.int64), pinfo)
    assert PER_PLANE_V7.chosen_model(data) == "wavelet53-v1"
    assert np.array_equal(PER_PLANE_V7.decode(data, pinfo), plane)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_fast_picks_difference_wavelet_or_plain_per_plane_and_roundtrips(version):
    from medcodec.coders.selectors import FAST_V1, FAST_V2

    fast = FAST_V1 if version == "v1" else FAST_V2
    plain = "interlaced-ls-v1" if version == "v1" else "raster-ls-v1"

    rng = np.random.default_rng(2)
    sparse = _decoded_lossy_j2k(64, 96, seed=5)
    natural = np.clip(sparse + rng.normal(0, 6, sparse.shape), 0, 4095).astype(np.int64)
    near = natural.copy()
    near[:8, :8] += 1  # equal to `natural` almost everywhere
    info = PlaneInfo(rows=64, cols=96, bits=12, k=0, preset="fast")
    for plane, prev, expect in (
        (sparse, None, "wavelet53-v1"),
        (natural, None, plain),
        (near, natural, "interlaced-ls-diff-v1"),
        (natural, sparse, "interlaced-ls-v1"),  # follows its previous plane (v2: _follows)
        (4095 - natural, natural, "interlaced-ls-v1"),
        (natural, rng.integers(0, 4096, natural.shape), plain),  # an unrelated previous plane
    ):
        data = fast.encode(plane, info, prev)
        assert fast.chosen_model(data) == expect
        assert np.array_equal(fast.decode(data, info, prev), plane)


def test_wavelet_probe_separates_decoded_lossy_jpeg2000_from_acquired_images():
    import pydicom

    from medcodec.coders.selectors import WAVELET_PROBE_MIN, wavelet_probe

    def plane(name):
        ds = pydicom.dcmread(pydicom_file(name))
        return ds.pixel_array.astype(np.int64) + (ds.PixelRepresentation << (ds.BitsStored - 1))

    assert wavelet_probe(plane("693_UNCI.dcm")) > 0.4  # measured 0.495
    for name in ("CT_small.dcm", "MR_small.dcm"):
        assert wavelet_probe(plane(name)) < WAVELET_PROBE_MIN, name
    flat = np.zeros((300, 300), dtype=np.int64)
    flat[100:140, 100:140] = 9  # mostly flat: zero coefficients, but zero Laplacians too
    assert wavelet_probe(flat) < WAVELET_PROBE_MIN


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (3, 700), (257, 255), (300, 301)])
def test_zero_laplacian_kernel_is_the_array_formula(shape):
    """The probe's compiled count gives the fraction the array formula gave (the probe
    picks `fast`'s coder, so it decides bytes), on smooth and on noisy planes."""
    from medcodec.countkernel import zero_laplacian_count

    rng = np.random.default_rng(shape[0] * shape[1])
    for plane in (rng.integers(0, 3, shape).cumsum(axis=1), rng.integers(0, 1 << 16, shape),
                  np.full(shape, 7, dtype=np.uint16)):
        p = plane.astype(np.int64)
        lap = 4 * p[1:-1, 1:-1] - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]
        assert zero_laplacian_count(plane) == int((lap == 0).sum())


def test_context_coded_detail_bands_roundtrip_and_beat_runs_on_dense_bands():
    from medcodec.wavelet import _context_decode, _context_encode, _parent, _sparse_encode

    import pydicom

    plane = pydicom.dcmread(pydicom_file("RG3_UNCI.dcm")).pixel_array[640:896, 640:896].astype(np.int64)
    bands = forward(plane, levels_for(*plane.shape))
    smaller = 0
    for i in range(1, len(bands)):
        parent = _parent(bands, i)
        data = _context_encode(bands[i], 1, parent)
        assert np.array_equal(_context_decode(data, bands[i].shape, 1, parent), bands[i])
        smaller += len(data) < len(_sparse_encode(bands[i]))
    assert smaller >= len(bands) // 2  # clustered magnitudes: contexts pay on most bands


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (2, 2), (17, 33)])
def test_band_contexts_equal_the_decoders_row_contexts(shape):
    from medcodec.wavelet import _band_contexts, _parent_rows, _row_contexts

    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    band = rng.integers(-300, 300, shape) * (rng.random(shape) < 0.5)
    parent = rng.integers(-500, 500, ((shape[0] + 1) // 2, (shape[1] + 1) // 2))
    zero = np.zeros(shape[1], dtype=np.int64)
    for prow in (None, _parent_rows(parent, 2, shape)):
        rows = [_row_contexts(band[r - 1] if r >= 1 else zero, band[r - 2] if r >= 2 else zero,
                              None if prow is None else prow[r]) for r in range(shape[0])]
        assert np.array_equal(np.stack(rows), _band_contexts(band, prow))
