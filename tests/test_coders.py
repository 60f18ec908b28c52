"""The coder registry and the compiled raster coders (raster-wpc-v1, and v2 with its
run mode), `fast`'s global path.

The kernel's exactness is a format guarantee: every plane decodes to itself (property
tests over sizes, bit depths and content), the bytes do not depend on the process that
wrote them, damage fails cleanly, and the golden records (test_golden.py) pin the bytes.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import medcodec
from medcodec.coders import PlaneSelector, coder_for, register, registered
from medcodec.coders.raster_wpc import (
    RASTER_WPC_DIFF_V1,
    RASTER_WPC_DIFF_V2,
    RASTER_WPC_DIFF_V3,
    RasterWPCGlobalPathCoder,
    RasterWPCV2GlobalPathCoder,
    RasterWPCV3GlobalPathCoder,
)
from medcodec.coders.selectors import FAST_V3, FAST_V5, FAST_V6
from medcodec.errors import CorruptRecordError, ModelMismatchError
from medcodec.paths import PlaneInfo

WPC = RasterWPCGlobalPathCoder()
DIFF = RASTER_WPC_DIFF_V1
WPC2 = RasterWPCV2GlobalPathCoder()
WPC3 = RasterWPCV3GlobalPathCoder()


def _info(plane: np.ndarray, bits: int) -> PlaneInfo:
    return PlaneInfo(rows=plane.shape[0], cols=plane.shape[1], bits=bits, k=0, preset="fast")


def _plane(kind: str, rows: int, cols: int, bits: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    if kind == "noise":
        return rng.integers(0, top + 1, (rows, cols))
    if kind == "constant":
        return np.full((rows, cols), int(rng.integers(0, top + 1)))
    if kind == "extremes":
        return np.where(rng.random((rows, cols)) < 0.5, 0, top)
    if kind == "patches":  # flat blocks, a few stray pixels: raster-wpc-v2's run mode hits and misses
        blocks = rng.integers(0, top + 1, (rows // 4 + 1, cols // 4 + 1))
        plane = np.kron(blocks, np.ones((4, 4), dtype=np.int64))[:rows, :cols]
        stray = rng.random((rows, cols)) < 0.05
        return np.where(stray, rng.integers(0, top + 1, (rows, cols)), plane)
    y, x = np.mgrid[:rows, :cols]
    smooth = top / 2 + top / 3 * np.sin(x / 5.0 + seed) * np.cos(y / 7.0) + rng.normal(0, 1 + top / 200, (rows, cols))
    return np.clip(np.rint(smooth), 0, top).astype(np.int64)


# --- the registry -------------------------------------------------------------------------------------


def test_registry_knows_every_global_model_once_and_records_name_only_record_level_ones():
    every = registered()
    record_level = registered(record_level=True)
    assert {"per-plane-fast-v6", "per-plane-fast-v5", "per-plane-fast-v4", "per-plane-fast-v3", "per-plane-v6",
            "per-plane-v7", "per-plane-v8", "interlaced-ls-v1"} <= set(record_level)
    assert {"raster-wpc-v1", "raster-wpc-diff-v1", "raster-wpc-v2", "raster-wpc-diff-v2", "raster-wpc-v3",
            "raster-wpc-diff-v3", "raster-wp-v4", "raster-wp-diff-v4", "wavelet53-v1", "wavelet53-v2"} <= set(every) - set(record_level)
    for selector in (v for v in record_level.values() if isinstance(v, PlaneSelector)):
        assert all(c in every for c in selector.candidates)
    from medcodec.codec import GLOBAL_MODELS, PRESET_GLOBAL_MODEL

    assert set(PRESET_GLOBAL_MODEL.values()) <= set(GLOBAL_MODELS) == set(record_level)


def test_an_id_cannot_be_registered_twice_or_looked_up_unknown():
    with pytest.raises(ValueError, match="already registered"):
        register(PlaneSelector(model_id="raster-wpc-v1", candidates=("raster-wpc-v1",)))
    with pytest.raises(ModelMismatchError, match="no-such-coder"):
        coder_for("no-such-coder")


# --- raster-wpc-v1, v2 and v3: exactness ---------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["noise", "constant", "extremes", "smooth", "patches"]),
    rows=st.integers(1, 23),
    cols=st.integers(1, 23),
    bits=st.integers(1, 16),
    seed=st.integers(0, 2**16),
    with_prev=st.booleans(),
)
def test_every_plane_decodes_to_itself(kind, rows, cols, bits, seed, with_prev):
    plane = _plane(kind, rows, cols, bits, seed)
    prev = _plane("smooth", rows, cols, bits, seed + 1) if with_prev else None
    info = _info(plane, bits)
    for coder in (WPC, WPC2, WPC3):
        data = coder.encode(plane, info, prev)
        assert np.array_equal(coder.decode(data, info, prev), plane)
    if prev is not None:
        for coder in (DIFF, RASTER_WPC_DIFF_V2, RASTER_WPC_DIFF_V3):
            data = coder.encode(plane, info, prev)
            assert np.array_equal(coder.decode(data, info, prev), plane)


def test_every_per_plane_selector_lives_in_the_selectors_module_and_its_table():
    from medcodec.coders import selectors

    found = [v for v in registered().values() if isinstance(v, PlaneSelector)]
    assert {s.model_id for s in found} >= {"per-plane-v6", "per-plane-fast-v4", "per-plane-fast-v5"}
    defined = {id(v) for v in vars(selectors).values()}
    for selector in found:
        assert id(selector) in defined, selector.model_id
        assert f"``{selector.model_id}``" in selectors.__doc__, selector.model_id


def _difference_coders():
    from medcodec.coders.difference import DifferenceCoder

    return sorted((c for c in registered().values() if isinstance(c, DifferenceCoder)), key=lambda c: c.model_id)


def test_every_difference_coder_is_data_over_a_registered_base():
    coders = _difference_coders()
    assert {c.model_id for c in coders} == {"raster-wp-diff-v1", "raster-wp-diff-v2", "raster-wp-diff-v3", "raster-wp-diff-v4",
                                            "interlaced-ls-diff-v1", "raster-wpc-diff-v1", "raster-wpc-diff-v2",
                                            "raster-wpc-diff-v3"}
    assert all(c.base in registered() and c.base_coder().model_id == c.base for c in coders)


@pytest.mark.parametrize("coder", _difference_coders(), ids=lambda c: c.model_id)
def test_a_difference_coder_round_trips_the_extremes_and_needs_its_previous_plane(coder):
    bits = 8
    hi = np.full((9, 11), (1 << bits) - 1, dtype=np.int64)
    lo = np.zeros((9, 11), dtype=np.int64)
    info = _info(hi, bits)
    for plane, prev in ((hi, lo), (lo, hi), (hi, hi)):  # the differences -max, +max and 0
        data = coder.encode(plane, info, prev)
        assert np.array_equal(coder.decode(data, info, prev), plane)
    with pytest.raises(ValueError, match="previous plane"):
        coder.encode(hi, info, None)
    for wrong in (None, lo[:, :-1]):
        with pytest.raises(CorruptRecordError, match="previous plane"):
            coder.decode(data, info, wrong)


def test_real_planes_round_trip_and_beat_the_previous_fast_coder():
    from medcodec.wavefront import RasterLSGlobalPathCoder
    from tests.test_wavefront import _real_plane

    for name in ("CT_small.dcm", "MR_small.dcm", "OBXXXX1A.dcm"):
        plane, bits = _real_plane(name)
        info = _info(plane, bits)
        data = WPC.encode(plane, info)
        assert np.array_equal(WPC.decode(data, info), plane), name
        # per-plane-fast-v2 coded these planes with raster-ls-v1 (held-out OBXXXX1A is
        # where the compiled coder gained least over it: 0.325 -> 0.322 bits per sample)
        assert len(data) < len(RasterLSGlobalPathCoder().encode(plane, info)), name


def test_the_previous_plane_is_used_where_it_predicts():
    rng = np.random.default_rng(5)
    first = _plane("smooth", 64, 64, 12, 3)
    second = np.clip(first + rng.integers(-2, 3, first.shape), 0, 4095)
    info = _info(second, 12)
    alone, with_prev = WPC.encode(second, info), WPC.encode(second, info, first)
    assert with_prev[1] == 1 and alone[1] == 0  # the flags byte says which
    assert len(with_prev) < 0.8 * len(alone)
    with pytest.raises(CorruptRecordError, match="previous plane"):
        WPC.decode(with_prev, info, None)


def test_bytes_do_not_depend_on_the_process_that_wrote_them():
    # v1 on a smooth plane, v2 on one with flat patches (its run mode), v3 on both kinds
    cases = [("raster-wpc-v1", "smooth", 9), ("raster-wpc-v2", "patches", 4), ("raster-wpc-v3", "smooth", 9),
             ("raster-wpc-v3", "patches", 4)]
    here = ",".join(coder_for(m).encode(_plane(k, 40, 52, 14, s), _info(_plane(k, 40, 52, 14, s), 14)).hex()
                    for m, k, s in cases)
    code = (
        "import sys\n"
        "from medcodec.coders import coder_for\n"
        "from medcodec.paths import PlaneInfo\n"
        "from tests.test_coders import _plane\n"
        "info = PlaneInfo(rows=40, cols=52, bits=14, k=0, preset='fast')\n"
        f"cases = {cases!r}\n"
        "sys.stdout.write(','.join(coder_for(m).encode(_plane(k, 40, 52, 14, s), info).hex()"
        " for m, k, s in cases))\n"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert there.stdout == here


def test_the_stream_is_pinned():
    # The stream is part of the record format: a change to the kernel that moves one
    # prediction or probability shows up here (speed work must keep these; a new model
    # needs a new id). Real planes (the interior and edge paths), and one with a previous plane.
    from tests.test_wavefront import _real_plane

    digests = {}
    for coder in (WPC, WPC2, WPC3):
        for name in ("CT_small.dcm", "MR_small.dcm"):
            a, bits = _real_plane(name)
            digests.setdefault(coder.model_id, []).append(
                hashlib.sha256(coder.encode(a, _info(a, bits))).hexdigest()[:16])
        prev = np.clip(a + np.random.default_rng(3).integers(-3, 4, a.shape), 0, (1 << bits) - 1)
        digests[coder.model_id].append(hashlib.sha256(coder.encode(a, _info(a, bits), prev)).hexdigest()[:16])
    flat = _plane("patches", 40, 52, 10, 4)
    for coder in (WPC2, WPC3):
        digests[coder.model_id].append(hashlib.sha256(coder.encode(flat, _info(flat, 10))).hexdigest()[:16])
    assert digests == {
        "raster-wpc-v1": ["af3ab747fb54d2c3", "4fb0b7fe1a816585", "fdcfbcd171bfd4a4"],
        "raster-wpc-v2": ["ef9f5ffac08faf02", "67374fb0710f675f", "07f29b690206a83e", "18f58162f5d31d9b"],
        "raster-wpc-v3": ["98c449287a8c67a5", "a356ffab9b46f907", "f0d063cadc4074a4", "6f1f861afb6dbbdb"],
    }


def test_run_mode_codes_flat_areas_smaller_and_each_version_reads_only_its_own_streams():
    flat = _plane("patches", 64, 80, 12, 5)
    info = _info(flat, 12)
    v1, v2, v3 = WPC.encode(flat, info), WPC2.encode(flat, info), WPC3.encode(flat, info)
    assert (v1[0], v2[0], v3[0]) == (1, 2, 3)  # the version byte is the id's
    assert len(v2) < 0.9 * len(v1) and len(v3) < 0.9 * len(v1)
    assert np.array_equal(WPC2.decode(v2, info), flat) and np.array_equal(WPC3.decode(v3, info), flat)
    streams = {WPC: v1, WPC2: v2, WPC3: v3}
    for coder in streams:
        for other in (data for c, data in streams.items() if c is not coder):
            with pytest.raises(CorruptRecordError, match=coder.model_id):
                coder.decode(other, info)


def test_v3_round_trips_a_row_as_wide_as_dicom_allows():
    # v3 clamps its filter's weights every 4096 pixels (wpkernel): the widest row, 16-bit
    # noise and extremes (the largest steps), alone and as a difference (17-bit values).
    rng = np.random.default_rng(11)
    plane = np.vstack([rng.integers(0, 1 << 16, (2, 65535)), np.where(rng.random((1, 65535)) < 0.5, 0, 65535)])
    prev = np.where(rng.random(plane.shape) < 0.5, 65535 - plane, plane)
    info = _info(plane, 16)
    assert np.array_equal(WPC3.decode(WPC3.encode(plane, info), info), plane)
    assert np.array_equal(RASTER_WPC_DIFF_V3.decode(RASTER_WPC_DIFF_V3.encode(plane, info, prev), info, prev), plane)


# --- damage ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coder", [WPC, WPC2, WPC3], ids=lambda c: c.model_id)
def test_damaged_streams_fail_cleanly(coder):
    plane = _plane("patches" if coder.stream_version >= 2 else "smooth", 48, 40, 12, 2)
    info = _info(plane, 12)
    data = coder.encode(plane, info)
    for bad in (b"", data[:1], b"\x09" + data[1:], data[:1] + b"\x04" + data[2:]):  # no such version; an unknown flag
        with pytest.raises(CorruptRecordError, match=coder.model_id):
            coder.decode(bad, info)
    rng = np.random.default_rng(7)
    for trial in range(40):
        bad = bytearray(data)
        if trial % 2:
            bad[int(rng.integers(2, len(bad)))] ^= int(rng.integers(1, 256))
        else:
            bad = bad[: int(rng.integers(2, len(bad)))]
        try:
            out = coder.decode(bytes(bad), info)
        except CorruptRecordError:
            continue
        assert out.shape == plane.shape and out.min() >= 0 and out.max() <= 4095


def test_values_outside_the_plane_range_are_refused_when_encoding():
    with pytest.raises(ValueError, match="0..255"):
        WPC.encode(np.array([[0, 256]]), PlaneInfo(rows=1, cols=2, bits=8, k=0, preset="fast"))


# --- per-plane-fast-v3 (fast's global path before v4; v4 and v5 keep its rule for these planes) ---------


def test_fast_records_use_the_compiled_coder_without_local_planes():
    from tests.test_wavefront import _real_plane

    a, bits = _real_plane("CT_small.dcm")
    blob = medcodec.compress_pixels(a.astype(np.uint16), bits_stored=bits, signed=False, preset="fast")
    info = medcodec.inspect_record(blob)
    assert info["models"]["global"] == "per-plane-fast-v6" and info["global_planes"] == {"raster-wpc-v3": 1}
    assert info["k"] == 0 and "local" not in info["sections"]
    assert np.array_equal(medcodec.decompress_pixels(blob), a)


def test_fast_v3_codes_near_copies_of_the_previous_plane_as_the_difference_when_smaller():
    rng = np.random.default_rng(3)
    r = _plane("smooth", 48, 64, 8, 1)
    g = np.where(rng.random(r.shape) < 0.9, r, np.clip(r + rng.integers(-9, 10, r.shape), 0, 255))
    info = _info(r, 8)
    assert FAST_V3.choose(g, r) == (0, 2)  # both are tried
    data = FAST_V3.encode(g, info, r)
    assert np.array_equal(FAST_V3.decode(data, info, r), g)
    direct = len(WPC.encode(g, info, r)) + 1
    diff = len(DIFF.encode(g, info, r)) + 1
    assert len(data) == min(direct, diff)
    assert FAST_V3.choose(_plane("noise", 48, 64, 8, 4), r) == (0,)


@pytest.mark.parametrize("selector, raster, difference", [(FAST_V5, WPC2, RASTER_WPC_DIFF_V2),
                                                          (FAST_V6, WPC3, RASTER_WPC_DIFF_V3)],
                         ids=lambda x: getattr(x, "model_id", None))
def test_fast_v5_and_v6_keep_the_rule_with_the_run_mode_coders(selector, raster, difference):
    rng = np.random.default_rng(3)
    r = _plane("patches", 48, 64, 8, 1)
    g = np.where(rng.random(r.shape) < 0.9, r, np.clip(r + rng.integers(-9, 10, r.shape), 0, 255))
    info = _info(r, 8)
    assert selector.candidates == (raster.model_id, "wavelet53-v2", difference.model_id)
    assert selector.choose(g, r) == FAST_V3.choose(g, r) == (0, 2)
    data = selector.encode(g, info, r)
    assert np.array_equal(selector.decode(data, info, r), g)
    assert len(data) == 1 + min(len(raster.encode(g, info, r)), len(difference.encode(g, info, r)))


# The listener runs in a fresh process on the warmed cache: any kernel the warm-up missed
# compiles there, and numba reports it as a "numba:compile" event.
_COMPILES_AFTER_WARMUP = """
import sys
from numba.core import event
import medcodec
compiled = []
class Listener(event.Listener):
    def on_start(self, ev):
        compiled.append(ev.data["dispatcher"].py_func.__qualname__ if "dispatcher" in ev.data else "?")
    def on_end(self, ev):
        pass
event.register("numba:compile", Listener())
data = open(sys.argv[1], "rb").read()
for preset in ("max", "fast"):
    medcodec.Codec(preset=preset).archive_dicom(data)
print(",".join(compiled))
"""


@pytest.mark.slow
def test_after_the_warmup_a_first_image_compiles_no_kernel(tmp_path):
    """``make install``'s warm-up leaves nothing to compile for a real image with either
    preset (a 128 x 128 CT, which takes raster-wp-v4's fitted-predictor path): a fresh
    worker with the cache starts at full speed."""
    import os

    from conftest import pydicom_file  # here: other tests' subprocesses import this module without conftest

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    subprocess.run([sys.executable, "-m", "medcodec.warmup"], env=env, check=True, capture_output=True, timeout=900)
    done = subprocess.run([sys.executable, "-c", _COMPILES_AFTER_WARMUP, str(pydicom_file("CT_small.dcm"))], env=env,
                          check=True, capture_output=True, text=True, timeout=600)
    assert done.stdout.strip().splitlines()[-1:] in ([], [""]), done.stdout


def test_the_warmup_codes_every_share_and_both_presets_exactly():
    """``python -m medcodec.warmup`` (run by ``make install``) compiles the kernels by coding
    small planes both ways: each share and the preset pass check their own round trip."""
    from medcodec import warmup

    shared = [m for ids in warmup.SHARES.values() for m in ids]
    assert len(shared) == len(set(shared)) and all(coder_for(m) for m in shared)
    for name in warmup.SHARES:
        warmup._share(name)  # raises where a stream does not decode to its plane
    warmup._presets()


@pytest.mark.parametrize("kind,bits", [("smooth", 12), ("noise", 8), ("patches", 16)])
def test_wavelet53_v2_streams_do_not_depend_on_the_preset(kind, bits):
    """``preset_free``: the one coder `max`'s selector and `fast`'s share streams of
    (``coders._kept_stream``) codes a plane to the same bytes under either preset."""
    from medcodec.coders.wavelet_v2 import WaveletV2GlobalPathCoder

    coder = WaveletV2GlobalPathCoder()
    assert coder.preset_free
    plane = _plane(kind, 96, 80, bits, seed=3)
    streams = {p: coder.encode(plane, PlaneInfo(rows=96, cols=80, bits=bits, k=0, preset=p)) for p in ("max", "fast")}
    assert streams["max"] == streams["fast"]


def _counted_wavelet(monkeypatch) -> list:
    """The planes wavelet53-v2 codes from now on (their shapes), as a list."""
    from medcodec.coders.wavelet_v2 import WaveletV2GlobalPathCoder

    coded: list = []
    encode = WaveletV2GlobalPathCoder.encode

    def counted(self, plane, info, prev=None):
        coded.append(plane.shape)
        return encode(self, plane, info, prev)

    monkeypatch.setattr(WaveletV2GlobalPathCoder, "encode", counted)
    return coded


def test_a_selector_takes_a_preset_free_stream_of_the_same_plane_from_streams(monkeypatch):
    """With ``streams``, a preset-free candidate's stream of a plane is coded once: a second
    selector (another preset) coding the same plane takes it. Another plane, another
    previous plane or other bits code again; without ``streams``, or for a coder that
    reads its preset, every call codes."""
    from medcodec.coders.wavelet_v2 import WaveletV2GlobalPathCoder

    coded = _counted_wavelet(monkeypatch)
    raster: list = []  # raster-wpc-v3 reads no preset either, but does not say so: never kept
    encode_raster = RasterWPCV3GlobalPathCoder.encode
    monkeypatch.setattr(RasterWPCV3GlobalPathCoder, "encode",
                        lambda self, *args: raster.append(1) or encode_raster(self, *args))
    first = PlaneSelector(model_id="test-wavelet-first", candidates=(WaveletV2GlobalPathCoder.model_id,))
    second = PlaneSelector(model_id="test-wavelet-second", candidates=(WPC3.model_id, WaveletV2GlobalPathCoder.model_id))
    plane = _plane("smooth", 64, 48, 10, seed=5)
    info = {p: PlaneInfo(rows=64, cols=48, bits=10, k=0, preset=p) for p in ("max", "fast")}
    streams: dict = {}
    a = first.encode(plane, info["max"], streams=streams)
    b = second.encode(plane.copy(), info["fast"], streams=streams)  # equal content, another array
    second.encode(plane, info["fast"], streams=streams)  # again: raster-wpc-v3 codes again
    assert len(coded) == 1
    assert a == first.encode(plane, info["max"]) and b == second.encode(plane, info["fast"])  # as without streams
    other = plane.copy()
    other[10, 10] ^= 1
    second.encode(other, info["fast"], streams=streams)
    second.encode(plane, info["fast"], plane, streams=streams)
    second.encode(plane, PlaneInfo(rows=64, cols=48, bits=11, k=0, preset="fast"), streams=streams)
    assert len(coded) == 6  # the two above without streams, and these three
    assert len(raster) == 6  # every call of the second selector
    first.encode(plane, info["max"])
    assert len(coded) == 7


def test_max_codes_a_plane_fast_also_takes_by_wavelet53_v2_once(monkeypatch):
    """`max` codes 693_UNCI (a decoded lossy JPEG 2000 CT) by wavelet53-v2 and, comparing
    with `fast`, whose selector also takes it: the plane is coded once in full, and the
    record is the same bytes as when it was coded twice."""
    from conftest import pydicom_bytes

    from medcodec.coders.wavelet_v2 import WaveletV2GlobalPathCoder
    from medcodec.dicom import parse_dicom

    parsed = parse_dicom(pydicom_bytes("693_UNCI.dcm"))
    plane, spec = parsed.frames[0, 0], parsed.spec

    def coded_with(preset_free: bool) -> tuple[bytes, int]:
        coded = _counted_wavelet(monkeypatch)
        monkeypatch.setattr(WaveletV2GlobalPathCoder, "preset_free", preset_free)
        blob = medcodec.compress_pixels(plane, bits_stored=spec.bits_stored, signed=spec.signed,
                                        high_bit=spec.high_bit, preset="max")
        return blob, coded.count(plane.shape)

    shared, once = coded_with(True)
    apart, twice = coded_with(False)
    assert (once, twice) == (1, 2)
    assert shared == apart
    assert np.array_equal(medcodec.decompress_pixels(shared), plane)
