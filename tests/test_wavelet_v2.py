"""wavelet53-v2 (the 5/3 wavelet path with compiled band coders) and per-plane-fast-v4/v5.

Exactness is a format guarantee: every plane decodes to itself (property tests over
sizes, bit depths and content, decoded-lossy planes among them), the bytes do not depend
on the process that wrote them, damage fails cleanly, and the golden records pin them.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcodec.coders import coder_for
from medcodec.coders.selectors import FAST_V4, FAST_V4_TRIAL_SAMPLES, FAST_V5, FAST_V6
from medcodec.coders.wavelet_v2 import WaveletV2GlobalPathCoder
from medcodec.errors import CorruptRecordError
from medcodec.paths import PlaneInfo
from medcodec.wavelet import forward, inverse, levels_for
from tests.test_coders import _plane

V2 = WaveletV2GlobalPathCoder()


def _info(plane: np.ndarray, bits: int) -> PlaneInfo:
    return PlaneInfo(rows=plane.shape[0], cols=plane.shape[1], bits=bits, k=0, preset="fast")


def _lossy(rows: int, cols: int, bits: int, seed: int, step: int) -> np.ndarray:
    """A plane as a lossy JPEG 2000 decoder leaves it: detail bands quantized to ``step``."""
    plane = _plane("smooth", rows, cols, bits, seed)
    bands = forward(plane, levels_for(rows, cols))
    bands = [bands[0]] + [(b // step) * step for b in bands[1:]]
    return np.clip(inverse(bands), 0, (1 << bits) - 1)


@settings(deadline=None)  # the first example loads the compiled kernels
@given(
    kind=st.sampled_from(["noise", "constant", "extremes", "smooth", "lossy"]),
    rows=st.integers(1, 40),
    cols=st.integers(1, 40),
    bits=st.integers(1, 16),
    seed=st.integers(0, 2**16),
)
def test_every_plane_decodes_to_itself(kind, rows, cols, bits, seed):
    if kind == "lossy":
        plane = _lossy(rows, cols, bits, seed, 1 + seed % 64)
    else:
        plane = _plane(kind, rows, cols, bits, seed)
    info = _info(plane, bits)
    assert np.array_equal(V2.decode(V2.encode(plane, info), info), plane)



@settings(max_examples=80, deadline=None)  # the first example loads the compiled kernels
@given(rows=st.integers(0, 19), cols=st.integers(0, 19), seed=st.integers(0, 2**16), bits=st.integers(1, 24))
def test_compiled_lifting_is_the_reference_transform(rows, cols, seed, bits):
    # medcodec.liftkernel against wavelet._split / _merge (numpy, the reference), along both
    # axes, at every parity and the degenerate lengths 0 and 1; signed input (detail bands).
    from medcodec.liftkernel import merge_cols, merge_rows, split_cols, split_rows
    from medcodec.wavelet import _merge, _split

    x = np.random.default_rng(seed).integers(-(1 << bits), 1 << bits, size=(rows, cols))
    low, high = split_rows(x)
    ref_low, ref_high = _split(x)
    assert low.shape == ref_low.shape and high.shape == ref_high.shape
    assert np.array_equal(low, ref_low) and np.array_equal(high, ref_high)
    assert np.array_equal(merge_rows(low, high), x) and np.array_equal(_merge(ref_low, ref_high), x)
    low, high = split_cols(x)
    ref_low, ref_high = (a.T for a in _split(x.T))
    assert low.shape == ref_low.shape and high.shape == ref_high.shape
    assert np.array_equal(low, ref_low) and np.array_equal(high, ref_high)
    assert np.array_equal(merge_cols(low, high), x)
    levels = levels_for(rows, cols) if rows and cols else 0
    assert np.array_equal(inverse(forward(x, levels)), x)

def test_a_low_band_wider_than_the_raster_coder_takes_is_coded_by_the_band_kernel():
    from medcodec.coders.wavelet_v2 import MODE_BAND, RASTER_MAX_BITS
    from medcodec.paths import IntReader

    plane = _plane("smooth", 40, 40, 16, 3) << 8  # 24-bit values: a low band of 24 bits
    info = _info(plane, 24)
    data = V2.encode(plane, info)
    reader = IntReader(data)
    reader.get()  # levels
    assert reader.get() == MODE_BAND and 24 > RASTER_MAX_BITS
    assert np.array_equal(V2.decode(data, info), plane)


def test_decoded_lossy_planes_are_smaller_than_with_wavelet53_v1():
    v1 = coder_for("wavelet53-v1")
    for seed, step in ((1, 8), (2, 32), (3, 128)):
        plane = _lossy(96, 128, 12, seed, step)
        info = _info(plane, 12)
        new, old = V2.encode(plane, info), v1.encode(plane, info)
        assert np.array_equal(V2.decode(new, info), plane)
        assert len(new) < len(old), (step, len(new), len(old))


def test_bytes_do_not_depend_on_the_process_that_wrote_them():
    plane = _lossy(70, 90, 14, 4, 16)
    here = V2.encode(plane, _info(plane, 14))
    code = (
        "import sys\n"
        "from medcodec.coders.wavelet_v2 import WaveletV2GlobalPathCoder\n"
        "from medcodec.paths import PlaneInfo\n"
        "from tests.test_wavelet_v2 import _lossy\n"
        "p = _lossy(70, 90, 14, 4, 16)\n"
        "sys.stdout.write(WaveletV2GlobalPathCoder().encode(p, PlaneInfo(rows=70, cols=90, bits=14, k=0, preset='fast')).hex())\n"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert bytes.fromhex(there.stdout) == here



def test_the_stream_is_pinned():
    # Part of the record format: a kernel change that moves one context or probability
    # shows up here (speed work must keep these; a new model needs a new id).
    digests = []
    for seed, step in ((1, 8), (3, 128)):
        plane = _lossy(96, 128, 12, seed, step)
        digests.append(hashlib.sha256(V2.encode(plane, _info(plane, 12))).hexdigest()[:16])
    assert digests == ["fe8645a0043d34cc", "5e1d30722a2a887d"]

def test_damaged_streams_fail_cleanly():
    plane = _lossy(64, 48, 12, 5, 16)
    info = _info(plane, 12)
    data = V2.encode(plane, info)
    rng = np.random.default_rng(11)
    for trial in range(60):
        bad = bytearray(data)
        if trial % 2:
            bad[int(rng.integers(0, len(bad)))] ^= int(rng.integers(1, 256))
        else:
            bad = bad[: int(rng.integers(0, len(bad)))]
        try:
            out = V2.decode(bytes(bad), info)
        except CorruptRecordError:
            continue
        assert out.shape == plane.shape and out.min() >= 0 and out.max() <= 4095


@pytest.mark.parametrize("selector", [FAST_V4, FAST_V5, FAST_V6], ids=lambda s: s.model_id)
def test_fast_tries_the_raster_coder_too_on_small_planes_the_probe_sends_to_the_wavelet_path(selector):
    plane = _lossy(128, 128, 12, 6, 64)
    assert plane.size <= FAST_V4_TRIAL_SAMPLES
    assert selector.choose(plane, None) == (0, 1)
    big = _lossy(320, 320, 12, 6, 64)
    assert selector.choose(big, None) == (1,)
    info = _info(plane, 12)
    data = selector.encode(plane, info)
    assert np.array_equal(selector.decode(data, info), plane)
    assert len(data) <= 1 + min(len(coder_for(c).encode(plane, info)) for c in selector.candidates[:2])


def _mr2(name: str) -> np.ndarray:
    import pydicom

    from conftest import pydicom_file

    return pydicom.dcmread(pydicom_file(name)).pixel_array.astype(np.int64)


def test_fast_codes_a_million_pixel_plane_the_probe_misses_by_the_wavelet_path_where_its_crop_is_smaller(monkeypatch):
    # MR2_UNCI: a decoded lossy JPEG 2000 MR (probe 0.16, under FAST_WAVELET_PROBE), whose
    # crop the wavelet path codes 11% smaller; MR2_J2KR, the same image acquired, stays raster.
    from medcodec.coders import selectors

    lossy, acquired = _mr2("MR2_UNCI.dcm"), _mr2("MR2_J2KR.dcm")
    assert lossy.size >= selectors.FAST_WAVELET_TRIAL_MIN
    assert selectors.wavelet_probe(lossy) < selectors.FAST_WAVELET_PROBE
    assert FAST_V6.choose(lossy, None) == (1,) and FAST_V6.choose(acquired, None) == (0,)
    raster, wavelet = selectors._crop_sizes(lossy, type(coder_for(FAST_V6.candidates[0])))
    assert wavelet * (1 + selectors.FAST_WAVELET_TRIAL_MARGIN) < raster
    monkeypatch.setattr(selectors, "FAST_WAVELET_TRIAL_MARGIN", raster / wavelet)  # a margin the crop does not clear
    assert FAST_V6.choose(lossy, None) == (0,)
    monkeypatch.setattr(selectors, "FAST_WAVELET_TRIAL_MARGIN", 0.05)
    monkeypatch.setattr(selectors, "FAST_WAVELET_TRIAL_MIN", lossy.size + 1)  # too small to be tried
    assert FAST_V6.choose(lossy, None) == (0,)
    monkeypatch.undo()
    info = _info(lossy, 12)
    data = FAST_V6.encode(lossy, info)
    assert FAST_V6.chosen_model(data) == "wavelet53-v2"
    assert np.array_equal(FAST_V6.decode(data, info), lossy)


def test_fast_records_name_per_plane_fast_v6():
    import medcodec

    plane = _lossy(80, 80, 12, 7, 32).astype(np.uint16)
    blob = medcodec.compress_pixels(plane, bits_stored=12, signed=False, preset="fast")
    info = medcodec.inspect_record(blob)
    assert info["models"]["global"] == "per-plane-fast-v6"
    assert set(info["global_planes"]) <= {"raster-wpc-v3", "wavelet53-v2"}
    assert np.array_equal(medcodec.decompress_pixels(blob), plane)
