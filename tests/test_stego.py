"""Tests for medcodec.stego (exact round trips, capacity, keys, tampering) and the steganalysis detectors."""

from __future__ import annotations

import hashlib
import struct
import math
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.steganalysis import (
    _chi2_sf,
    auc_standard_error,
    chi_square_attack,
    roc_auc,
    spa_payload,
    windowed_view,
    ws_payload,
)
from medcodec import stego
from medcodec.errors import MedcodecError
from medcodec.stego import (
    HEADER_BITS,
    LENGTH_BITS,
    SEGMENT_BITS,
    TAG_BITS,
    CapacityError,
    MessageNotFoundError,
    RestoreError,
    StegoError,
    capacity_bits,
    embed,
    extract,
    extract_versioned,
    outside_digest,
    plan_embedding,
    psnr,
    restore,
)

from conftest import pydicom_bytes

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))


def noisy(shape, bits, *, seed=0, mean=None, sigma=None) -> np.ndarray:
    """Textured test values: a smooth pattern plus Gaussian noise, clipped to the stored range."""
    rng = np.random.default_rng(seed)
    maxval = (1 << bits) - 1
    mean = maxval / 2 if mean is None else mean
    sigma = max(2.0, maxval / 60) if sigma is None else sigma
    cols = shape[-1]
    pattern = 0.15 * maxval * np.sin(np.arange(cols) / 9.0)
    return np.clip(np.rint(mean + pattern + rng.normal(0, sigma, shape)), 0, maxval).astype(np.int64)


def smooth_image(rows, cols, bits, *, seed=0, noise=1.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    maxval = (1 << bits) - 1
    base = maxval * (0.3 + 0.2 * np.sin(x / 37.0) + 0.2 * np.cos(y / 23.0))
    return np.clip(np.rint(base + rng.normal(0, noise * maxval / 255, (rows, cols))), 0, maxval).astype(np.int64)


def _check_round_trip(values, message, bits, key=KEY):
    stego_values, displaced = embed(values, message, key=key, bits_stored=bits)
    assert stego_values.shape == values.shape and stego_values.dtype == np.int64
    got, mask = extract(stego_values, key=key, bits_stored=bits)
    assert got == message
    assert np.array_equal(restore(stego_values, displaced, key=key, bits_stored=bits), values)
    delta = stego_values - values
    assert np.abs(delta).max(initial=0) <= 1
    assert not np.any(delta[~mask]), "a value changed outside the reported positions"
    assert stego_values.min(initial=0) >= 0 and stego_values.max(initial=0) <= (1 << bits) - 1
    plan = plan_embedding(values, len(message), key=key, bits_stored=bits)
    assert np.array_equal(plan.mask, mask) and plan.n_bits == HEADER_BITS + 8 * len(message)
    assert outside_digest(values, mask) == outside_digest(stego_values, mask)
    assert outside_digest(values, mask, bits_stored=bits) == outside_digest(stego_values, mask, bits_stored=bits)
    # Deterministic: same inputs, same outputs.
    again, displaced_again = embed(values, message, key=key, bits_stored=bits)
    assert np.array_equal(again, stego_values) and displaced_again == displaced
    return stego_values, displaced, mask


# --------------------------------------------------------------------------------------
# Round trips


@given(
    frames=st.integers(1, 2),
    samples=st.integers(1, 3),
    rows=st.integers(1, 24),
    cols=st.integers(8, 72),
    bits=st.integers(3, 16),
    fill=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_random_shapes(frames, samples, rows, cols, bits, fill, seed):
    values = noisy((frames, samples, rows, cols), bits, seed=seed)
    cap = capacity_bits(values, bits, key=KEY)
    if cap == 0:
        # Not even room for a message beyond the header: only an empty message may fit.
        try:
            _check_round_trip(values, b"", bits)
        except CapacityError as exc:
            assert "room for 0 message bits" in str(exc)
        return
    message = np.random.default_rng(seed).bytes(int(fill * (cap // 8)))
    _check_round_trip(values, message, bits)


@given(
    bits=st.integers(4, 6),
    ceiling=st.integers(3, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_near_the_range_ends(bits, ceiling, seed):
    """Low-depth data crowded at the bottom and top of the range: forced directions and the
    range-preserving fallback are exercised; 0 and the maximum are never touched."""
    rng = np.random.default_rng(seed)
    maxval = (1 << bits) - 1
    values = rng.integers(0, maxval + 1, (1, 1, 16, 64))
    values = np.where(rng.random(values.shape) < 0.5, np.minimum(values, ceiling), values)
    cap = capacity_bits(values, bits, key=KEY)
    if cap < 8:
        return
    message = rng.bytes(cap // 8)
    stego_values, _, _ = _check_round_trip(values, message, bits)
    assert np.all(stego_values[values == 0] == 0) and np.all(stego_values[values == maxval] == maxval)
    assert not np.any((stego_values == 0) & (values != 0))
    assert not np.any((stego_values == maxval) & (values != maxval))


def test_fallback_directions_are_exercised():
    """Counts runs where keyed random directions alone would break eligibility (the
    fallback path), so the round-trip property above really covers it."""
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(60):
        bits = 4
        values = rng.integers(2, 8, (1, 1, 16, 64))
        cap = capacity_bits(values, bits, key=KEY)
        if cap < 8:
            continue
        message = rng.bytes(cap // 8)
        flat = values.reshape(-1).astype(np.int64)
        _, order, _ = stego._layout(flat, KEY, bits, SEGMENT_BITS)
        bits_stream = stego._stream_bits(KEY, message)
        positions = stego._positions(order, bits_stream.size, SEGMENT_BITS, cap, LENGTH_BITS)
        cover = flat[positions]
        d = stego._directions(cover, stego._keyed_bits(KEY, b"v2/direction", bits_stream.size), 15)
        naive = flat.copy()
        naive[positions] = cover + ((cover & 1) != bits_stream) * d
        starts = positions[::SEGMENT_BITS] // SEGMENT_BITS
        runs = naive[starts[:, None] * SEGMENT_BITS + np.arange(SEGMENT_BITS)]
        if not stego._eligible(runs, bits).all():
            hits += 1
            _check_round_trip(values, message, bits)
    assert hits >= 3


def test_real_image_round_trip_and_psnr():
    from medcodec.dicom import parse_dicom
    from medcodec.planes import SampleFormat, words_to_values

    parsed = parse_dicom(pydicom_bytes("CT_small.dcm"))
    spec = parsed.spec
    fmt = SampleFormat(
        bits_allocated=spec.bits_allocated, bits_stored=spec.bits_stored, high_bit=spec.high_bit, signed=spec.signed
    )
    values, _ = words_to_values(parsed.frames, fmt)
    cap = capacity_bits(values, spec.bits_stored, key=KEY)
    assert cap > 8 * 1024  # a 128x128 CT slice holds > 1 KiB
    message = os.urandom(1024)
    stego_values, _, _ = _check_round_trip(values, message, spec.bits_stored)
    value = psnr(values, stego_values, spec.bits_stored)
    assert 80 < value < math.inf
    assert psnr(values, values, spec.bits_stored) == math.inf


def test_psnr_value():
    a = np.zeros((10, 10), dtype=np.int64)
    b = a.copy()
    b[0, 0] = 1
    assert psnr(a, b, 8) == pytest.approx(10 * math.log10(255**2 / 0.01))
    with pytest.raises(StegoError):
        psnr(a, b[:5], 8)


# --------------------------------------------------------------------------------------
# Capacity


def test_capacity_error_is_clear_and_nothing_is_truncated():
    values = noisy((1, 1, 32, 64), 12, seed=3)
    cap = capacity_bits(values, 12, key=KEY)
    assert cap == 32 * 64 - HEADER_BITS  # every run is textured
    exact = os.urandom(cap // 8)
    _check_round_trip(values, exact, 12)
    too_big = exact + b"x"
    with pytest.raises(CapacityError) as info:
        embed(values, too_big, key=KEY, bits_stored=12)
    text = str(info.value)
    assert f"needs {8 * len(too_big)} bits" in text and f"room for {cap} message bits" in text
    with pytest.raises(CapacityError):
        plan_embedding(values, len(too_big), key=KEY, bits_stored=12)


def test_capacity_is_the_plans_under_each_key():
    values = noisy((2, 1, 20, 50), 10, seed=4)
    for key in (KEY, OTHER_KEY):
        cap = capacity_bits(values, 10, key=key)
        assert plan_embedding(values, 1, key=key, bits_stored=10).capacity_bits == cap
        _check_round_trip(values, os.urandom(cap // 8), 10, key=key)
    # Where every run is robust the tag takes the first runs and nothing is skipped.
    textured = noisy((1, 1, 32, 64), 12, seed=3)
    assert capacity_bits(textured, 12, key=KEY) == capacity_bits(textured, 12, key=OTHER_KEY) == 32 * 64 - HEADER_BITS


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_data_below_four_bits_has_no_capacity(bits):
    values = np.random.default_rng(0).integers(0, 1 << bits, (1, 1, 64, 64))
    assert capacity_bits(values, bits, key=KEY) == 0
    with pytest.raises(CapacityError):
        embed(values, b"x", key=KEY, bits_stored=bits)


def test_flat_and_saturated_regions_never_carry():
    values = noisy((1, 1, 64, 64), 12, seed=5)
    values[:, :, :20] = 1000  # flat padding
    values[:, :, 20:30] = 4095  # saturated
    values[:, :, 30:40, ::2] = 0  # half-saturated texture (0 and noise)
    cap = capacity_bits(values, 12, key=KEY)
    message = os.urandom(cap // 8)
    stego_values, _, mask = _check_round_trip(values, message, 12)
    assert not mask[:, :, :40].any()
    assert np.array_equal(stego_values[:, :, :40], values[:, :, :40])
    assert capacity_bits(np.full((1, 1, 64, 64), 7), 12, key=KEY) == 0


# --------------------------------------------------------------------------------------
# Keys, tampering, formats


def test_wrong_key_fails_cleanly():
    values = noisy((1, 1, 64, 64), 12, seed=6)
    stego_values, displaced = embed(values, b"sealed phi", key=KEY, bits_stored=12)
    with pytest.raises(MessageNotFoundError):
        extract(stego_values, key=OTHER_KEY, bits_stored=12)
    with pytest.raises(RestoreError):
        restore(stego_values, displaced, key=OTHER_KEY, bits_stored=12)
    with pytest.raises(MessageNotFoundError):
        extract(values, key=KEY, bits_stored=12)  # a cover carries nothing


def test_altered_pixels_are_detected():
    """The image tag covers every value: any bit of any pixel, carrying or not, tag or
    message, is caught by the key holder with the stego image alone."""
    values = noisy((1, 1, 64, 64), 12, seed=7)
    stego_values, displaced = embed(values, os.urandom(200), key=KEY, bits_stored=12)
    plan = plan_embedding(values, 200, key=KEY, bits_stored=12)
    assert extract_versioned(stego_values, key=KEY, bits_stored=12)[2] == 2  # one sample: version 2 bytes
    assert plan.tag_positions.size == TAG_BITS and not np.isin(plan.tag_positions, plan.positions).any()
    rng = np.random.default_rng(0)
    outside = np.flatnonzero(~plan.mask.reshape(-1))
    message = plan.positions
    cases = [(int(i), 0x001) for i in plan.tag_positions]
    for where in (message, outside, plan.tag_positions):
        for i in rng.choice(where, 24, replace=False):
            cases += [(int(i), flip) for flip in (0x001, 0x002, 0x004, 0x200)]
    for index, flip in cases:
        bad = stego_values.copy().reshape(-1)
        bad[index] ^= flip
        bad = bad.reshape(values.shape)
        with pytest.raises(MessageNotFoundError):
            extract(bad, key=KEY, bits_stored=12)
        if index in set(message.tolist()) | set(plan.tag_positions.tolist()) and flip > 1:
            with pytest.raises(RestoreError):
                restore(bad, displaced, key=KEY, bits_stored=12)


def test_displaced_bytes_are_checked():
    values = noisy((1, 1, 32, 64), 12, seed=8)
    stego_values, displaced = embed(values, b"abc", key=KEY, bits_stored=12)
    for bad in (displaced[:-1], displaced + b"\x00", b"XXX" + displaced[3:], displaced[:3] + b"\x09" + displaced[4:]):
        with pytest.raises(RestoreError):
            restore(stego_values, bad, key=KEY, bits_stored=12)
    for i in range(len(displaced)):
        bad = bytearray(displaced)
        bad[i] ^= 0x10
        with pytest.raises(StegoError):
            restore(stego_values, bytes(bad), key=KEY, bits_stored=12)
    # Compact: ~1.5 bits per carried bit plus 40 bytes.
    n_bits = HEADER_BITS + 8 * 3
    assert len(displaced) <= 40 + n_bits // 8 + 1 + n_bits // 8 + 1


def test_invalid_inputs_are_typed_errors():
    values = noisy((1, 1, 8, 64), 8)
    for call in (
        lambda: embed(values, b"x", key=b"short", bits_stored=8),
        lambda: embed(values.astype(float), b"x", key=KEY, bits_stored=8),
        lambda: embed(values + 300, b"x", key=KEY, bits_stored=8),
        lambda: embed(values, b"x", key=KEY, bits_stored=17),
        lambda: capacity_bits(values, 8, key=KEY, segment_bits=12),
        lambda: outside_digest(values, np.zeros(3, dtype=bool)),
        lambda: outside_digest(values + 256, np.zeros(values.shape, dtype=bool), bits_stored=8),
        lambda: outside_digest(np.where(values == values.flat[0], -1, values), np.zeros(values.shape, dtype=bool),
                               bits_stored=8),
        lambda: outside_digest(values, np.zeros(values.shape, dtype=bool), bits_stored=17),
    ):
        with pytest.raises(StegoError) as info:
            call()
        assert isinstance(info.value, MedcodecError)


GOLDEN_VALUES = ((np.arange(64 * 64, dtype=np.int64) * 2654435761) % 4001 + 40).reshape(1, 1, 64, 64)  # no RNG


def test_version_1_positions_are_stable():
    """Golden check of the version 1 keyed run order (AES-CTR keystream, little-endian u64
    sort keys, stable argsort), which extraction of every version 1 image depends on."""
    flat = GOLDEN_VALUES.reshape(-1)
    order = stego._eligible_order(flat, KEY, 12, SEGMENT_BITS)
    positions = stego._positions(order, HEADER_BITS + 8 * 64, SEGMENT_BITS, 64 * 64 - HEADER_BITS, HEADER_BITS)
    assert positions[:4].tolist() == [4000, 4001, 4002, 4003]
    assert hashlib.sha256(positions.astype("<i8").tobytes()).hexdigest() == (
        "869540dac3ce41638c6ff707076e7be354a7eacad9303bc6aa67e9427439d2a2")


def _golden_colour_values() -> np.ndarray:
    """A colour image without RNG: even rows grey, every fourth row G = B != R (never
    carries), the rest colour."""
    golden = ((np.arange(3 * 64 * 64, dtype=np.int64) * 2654435761) % 4001 + 40).reshape(1, 3, 64, 64)
    golden[:, 1:, ::2] = golden[:, :1, ::2]
    golden[:, 2, 1::4] = golden[:, 1, 1::4]
    return golden


def _with_direction_bits(displaced: bytes, key: bytes) -> bytes:
    """Displaced information whose directions are exceptions, in the form with a bit per
    change (what embedding wrote before the exceptions form)."""
    n_bits = struct.unpack_from("<I", displaced, 4)[0]
    at = stego._DISPLACED_FIXED + stego.TAG_BITS // 8
    changed = np.unpackbits(np.frombuffer(displaced, np.uint8, (n_bits + 7) // 8, at))[:n_bits].astype(bool)
    at += (n_bits + 7) // 8
    flipped, end = stego._read_leb128_gaps(displaced, at, int(changed.sum()))
    assert end == len(displaced)
    up = stego._keyed_bits(key, b"v2/direction", n_bits).astype(bool)[changed]
    up[flipped] = ~up[flipped]
    return (displaced[:3] + bytes([displaced[3] & ~stego.DIRECTION_EXCEPTIONS]) + displaced[4:at]
            + np.packbits(up).tobytes())


@pytest.mark.parametrize("values, capacity, digests", [
    (GOLDEN_VALUES, 64 * 64 - HEADER_BITS,
     ("4ac947793223dc4f1357610fdc2e110fc0671213e921ff6b0cb9d82441d9afef",
      "6b0f4e5e1c3e8732442fb340b4c341901f308354c50e39e41d98be3f2fd9397f",
      "b7dab5118fb9635cf77eb61f65aa343c0692c5a25241b747710d1b9122ec0517",
      "1bf1e0ff303d1ab4cfed65eba7ab69aaeb50446302e8d511333de64324219201")),
    (_golden_colour_values(), 2912,
     ("87c33c7b41d0702e242495ecbec776b187e4970105ecdbed92e7e867667460e5",
      "382e7ca577c6605e29d83686268c08d3fd3c1051a7df324991452edc0a514067",
      "26bf3d400184296978eb1f5d6b446e0e21f87317111fea43a2542484fb25e57a",
      "2f945577b76735db90eb1245035e45d023deb4fa1f4c67664f19694ab7f27fb4")),
], ids=["version-2", "version-3-colour"])
def test_layout_and_stego_image_are_stable(values, capacity, digests):
    """Golden check of what versions 2 and 3 write: tag and message positions, and the
    stego values themselves (tag, whitening, directions). A change here breaks extraction
    of every image of that version. The displaced information is written with its
    directions as exceptions (since 2026-12-06); with a bit per change, as before, it is
    the bytes it was."""
    assert capacity_bits(values, 12, key=KEY) == capacity
    plan = plan_embedding(values, 64, key=KEY, bits_stored=12)
    layout = np.concatenate([plan.tag_positions, plan.positions]).astype("<i8").tobytes()
    stego_values, displaced = embed(values, bytes(range(64)), key=KEY, bits_stored=12)
    assert displaced[3] & stego.DIRECTION_EXCEPTIONS
    assert (hashlib.sha256(layout).hexdigest(), hashlib.sha256(stego_values.astype("<u2").tobytes()).hexdigest(),
            hashlib.sha256(_with_direction_bits(displaced, KEY)).hexdigest(),
            hashlib.sha256(displaced).hexdigest()) == digests
    old = _with_direction_bits(displaced, KEY)
    assert len(displaced) < len(old)
    for form in (displaced, old):  # both forms restore
        assert np.array_equal(restore(stego_values, form, key=KEY, bits_stored=12), values)


@pytest.mark.parametrize("ties", [False, True])
def test_keyed_order_is_the_stable_argsort_of_its_sort_keys(monkeypatch, ties):
    """The run order is defined as the stable argsort of the keystream's 64-bit sort keys;
    the bucket sort must give exactly that order, with tied keys (which a keystream almost
    never gives) in index order."""
    n = 5000
    if ties:  # keys with many ties, as a keystream almost never gives
        keys = (np.random.default_rng(3).integers(0, 50, n)).astype("<u8")
        monkeypatch.setattr(stego, "_keystream", lambda key, label, nbytes: keys.tobytes())
    else:
        keys = np.frombuffer(stego._keystream(KEY, b"v2/order", 8 * n), dtype="<u8")
    assert np.array_equal(stego._keyed_order(KEY, b"v2/order", n), np.argsort(keys, kind="stable"))


def test_stable_argsort_uniform_is_numpys_stable_argsort():
    """The bucket sort behind the run order, on sizes around its bucket arithmetic and on
    keys that are not uniform (one bucket holds them all: merge sort), or tie."""
    from medcodec.stegokernel import stable_argsort_uniform

    rng = np.random.default_rng(11)
    cases = [rng.integers(0, 2**64, n, dtype=np.uint64) for n in (0, 1, 2, 3, 4, 5, 31, 33, 1000, 70_001)]
    cases += [rng.integers(0, 2**20, 3000, dtype=np.uint64),  # all in the first bucket
              rng.integers(0, 40, 3000, dtype=np.uint64) << np.uint64(58)]  # 40 values: long tied buckets
    tied = rng.integers(0, 2**64, 3000, dtype=np.uint64)
    tied[::3] = tied[1]
    cases.append(tied)
    for keys in cases:
        assert np.array_equal(stable_argsort_uniform(keys), np.argsort(keys, kind="stable"))


@pytest.mark.parametrize("values", [noisy((2, 1, 40, 72), 12, seed=7), "colour"], ids=["grey", "colour"])
def test_sealing_width_values_give_the_same_stego_image_without_copies(values):
    """Sealing hands stego its samples in the words' uint16: the cover reads them in place
    (a read-only view, no copy), and the stego image and the recovered values are uint16,
    equal to what int64 values give (a quarter of the memory per copy of the image)."""
    if isinstance(values, str):
        values = near_grey_rgb(1, 40, 72, 12, seed=3)
    narrow = values.astype(np.uint16)
    cover = stego.Cover(narrow, key=KEY, bits_stored=12)
    assert np.shares_memory(cover.flat, narrow) and not cover.flat.flags.writeable
    message = bytes(i % 251 for i in range(cover.capacity_bits // 8))
    stego_values, displaced = cover.embed(message)
    wide_values, wide_displaced = stego.Cover(values, key=KEY, bits_stored=12).embed(message)
    assert stego_values.dtype == wide_values.dtype == np.uint16
    assert np.array_equal(stego_values, wide_values) and displaced == wide_displaced
    assert np.array_equal(narrow, values), "embedding changed the cover"
    restored, mask = stego.recover(stego_values, displaced, key=KEY, bits_stored=12)
    assert restored.dtype == np.uint16 and np.array_equal(restored, values)
    assert np.array_equal(mask, cover.plan(len(message)).mask)
    assert np.array_equal(stego.restore(stego_values, displaced, key=KEY, bits_stored=12), values)
    assert stego.restore(stego_values, displaced, key=KEY, bits_stored=12).dtype == np.int64  # public contract


def test_embedding_and_recovery_hold_no_int64_copy_of_the_image():
    """Peak memory per sample of sealing's stego work on a 1 M-sample uint16 image: an
    int64 copy alone is 8 bytes per sample (the int64 working copies took 19 on embedding
    and 10 on recovery); uint16 copies keep both under 6."""
    import tracemalloc

    values = noisy((1, 1, 1024, 1024), 12, seed=5).astype(np.uint16)
    message = bytes(i % 251 for i in range(4000))
    stego.Cover(values, key=KEY, bits_stored=12).embed(message)  # compiled kernels loaded outside the count
    tracemalloc.start()
    try:
        stego_values, displaced = stego.Cover(values, key=KEY, bits_stored=12).embed(message)
        embed_peak = tracemalloc.get_traced_memory()[1] / values.size
        tracemalloc.reset_peak()
        restored, _ = stego.recover(stego_values, displaced, key=KEY, bits_stored=12)
        recover_peak = (tracemalloc.get_traced_memory()[1] - stego_values.nbytes) / values.size
    finally:
        tracemalloc.stop()
    assert np.array_equal(restored, values)
    assert embed_peak < 6 and recover_peak < 6, (embed_peak, recover_peak)


@pytest.mark.parametrize("values", [noisy((2, 1, 40, 72), 12, seed=7), "colour"], ids=["grey", "colour"])
def test_one_cover_serves_capacity_plans_and_embedding(values):
    """Sealing asks one ``Cover`` for the capacity, a plan per message tier and the
    embedding: each answer is the one-call function's, and ``changes`` (computed on the
    plan's values only) is what comparing the whole images gives."""
    if isinstance(values, str):
        values = near_grey_rgb(1, 40, 72, 12, seed=3)
    cover = stego.Cover(values, key=KEY, bits_stored=12)
    assert cover.capacity_bits == capacity_bits(values, 12, key=KEY) > 0
    for nbytes in (1, cover.capacity_bits // 16, cover.capacity_bits // 8):
        plan, one_call = cover.plan(nbytes), plan_embedding(values, nbytes, key=KEY, bits_stored=12)
        assert np.array_equal(plan.mask, one_call.mask) and plan.n_bits == one_call.n_bits
    with pytest.raises(CapacityError):
        cover.plan(cover.capacity_bits // 8 + 1)
    message = bytes(range(256)) * (cover.capacity_bits // 2048 + 1)
    message = message[: cover.capacity_bits // 8]
    stego_values, displaced = cover.embed(message)
    one_call_values, one_call_displaced = embed(values, message, key=KEY, bits_stored=12)
    assert stego_values.dtype == np.uint16 and one_call_values.dtype == np.int64  # working width / public contract
    assert np.array_equal(stego_values, one_call_values) and displaced == one_call_displaced
    assert np.array_equal(cover.flat.reshape(values.shape), values), "embedding changed the cover"
    changes = cover.changes(stego_values, cover.plan(len(message)))
    assert changes == {"changed": int((stego_values != values).sum()),
                       "max_error": int(np.abs(stego_values - values).max()),
                       "psnr": psnr(values, stego_values, 12)}
    assert changes["changed"] > 0


@pytest.mark.parametrize("version", [2, 3])
def test_recover_is_extract_and_restore_in_one_pass(version):
    """``recover`` (what verifying a keyed record calls) gives ``restore``'s values and
    ``extract``'s mask, and fails as they do: a wrong key or an altered pixel is refused."""
    values = noisy((1, 1, 48, 64), 12, seed=11) if version == 2 else near_grey_rgb(1, 48, 64, 12, seed=5)
    message = bytes(range(40))
    stego_values, displaced = embed(values, message, key=KEY, bits_stored=12)
    got, mask = stego.recover(stego_values, displaced, key=KEY, bits_stored=12)
    assert np.array_equal(got, values) and got.shape == values.shape
    assert np.array_equal(mask, extract(stego_values, key=KEY, bits_stored=12)[1])
    assert np.array_equal(stego_values, embed(values, message, key=KEY, bits_stored=12)[0]), "recover changed its input"
    with pytest.raises(MessageNotFoundError):
        stego.recover(stego_values, displaced, key=OTHER_KEY, bits_stored=12)
    altered = stego_values.copy()
    altered.reshape(-1)[np.flatnonzero(~mask.reshape(-1))[5]] ^= 2
    with pytest.raises(MessageNotFoundError):
        stego.recover(altered, displaced, key=KEY, bits_stored=12)
    with pytest.raises(RestoreError):
        stego.recover(stego_values, displaced[:-1], key=KEY, bits_stored=12)


@given(
    shape=st.sampled_from([(1, 1, 40, 64), (2, 1, 24, 48), (1, 3, 32, 40), (1, 2, 16, 64)]),
    bits=st.integers(4, 16),
    grey=st.floats(0.0, 1.0),
    sigma=st.sampled_from([0.4, 1.0, 3.0, 30.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_readers_layout_is_the_embedders(shape, bits, grey, sigma, seed):
    """What a reader finds in the keyed order as far as it reads (``_ReadLayout``) is
    ``_layout``'s: the same tag positions, the same message positions for every message
    length, and none for a message its message runs cannot hold (one bit past the
    capacity)."""
    rng = np.random.default_rng(seed)
    values = noisy(shape, bits, seed=seed, sigma=sigma)
    if shape[1] > 1:  # some grey pixels, for version 3's carriers
        values[:, 1:] = np.where(rng.random((shape[0], 1, *shape[2:])) < grey, values[:, :1], values[:, 1:])
    flat = values.astype(np.uint16).reshape(-1)
    for version in {2, stego._version_for(shape)}:
        carrier = stego._carrier(flat, shape, version)
        tag_positions, order, capacity = stego._layout(carrier.flat, KEY, bits, stego.SEGMENT_BITS, carrier.allowed)
        read = stego._ReadLayout(carrier.flat, carrier.allowed, KEY, bits, stego.SEGMENT_BITS)
        assert np.array_equal(read.tag_positions, tag_positions)
        # the tag runs by definition: the first robust (and allowed) runs in the keyed order
        runs = stego._all_runs(carrier.flat, stego.SEGMENT_BITS).astype(np.int64)
        keyed = stego._run_order(KEY, runs.shape[0])
        ok = _robust_reference(runs, bits)
        if carrier.allowed is not None:
            ok &= stego._all_runs(carrier.allowed, stego.SEGMENT_BITS).all(axis=1)
        n_tag = -(-stego.TAG_BITS // stego.SEGMENT_BITS)
        first = keyed[ok[keyed]][:n_tag]
        want_tag = (first[:, None] * stego.SEGMENT_BITS + np.arange(stego.SEGMENT_BITS)).reshape(-1)[:stego.TAG_BITS]
        assert np.array_equal(tag_positions, want_tag if first.size == n_tag else [])
        if not tag_positions.size:
            assert read.message_positions(stego.LENGTH_BITS) is None
            continue
        for n_bits in sorted({stego.LENGTH_BITS, stego.LENGTH_BITS + 8, capacity // 2, capacity + stego.LENGTH_BITS,
                              capacity + stego.LENGTH_BITS + 1}):
            got = read.message_positions(n_bits)
            if -(-n_bits // stego.SEGMENT_BITS) > order.size:
                assert got is None
            elif n_bits > 0:
                want = (order[:, None] * stego.SEGMENT_BITS
                        + np.arange(stego.SEGMENT_BITS)).reshape(-1)[:n_bits]
                assert got is not None and np.array_equal(got, want)


def test_a_stated_message_length_allocates_no_more_than_the_image_holds():
    """A length field asks a reader for as many message runs as it states: the scan
    allocates for the runs the image has (an unbounded request would fail to allocate),
    and the reader answers None."""
    from medcodec.stegokernel import next_runs

    flat = noisy((1, 1, 40, 64), 12, seed=3).astype(np.uint16).reshape(-1)
    read = stego._ReadLayout(flat, None, KEY, 12, stego.SEGMENT_BITS)
    assert read.tag_positions.size
    found = next_runs(read.runs, read.allowed, read.order, 0, 2**62, False, 4095, stego.GROUP, stego.MIN_GROUP_RANGE)
    assert 0 < found.size <= read.order.size
    assert read.message_positions(stego.LENGTH_BITS + 8 * (2**32 - 1)) is None
    assert read.message_positions(stego.LENGTH_BITS).size == stego.LENGTH_BITS


@pytest.mark.parametrize("version", [2, 3])
def test_recover_with_what_embedding_knew_computes_no_image_tag(version, monkeypatch):
    """Verifying the image embedding just made (``recover(..., known=)``) gives what a
    reader's ``recover`` gives, with the tag embedding computed instead of an HMAC over
    every value; a ``known`` that does not apply (another key, the tag found elsewhere)
    leaves recovery to compute it."""
    import dataclasses

    values = noisy((1, 1, 48, 64), 12, seed=11) if version == 2 else near_grey_rgb(1, 48, 64, 12, seed=5)
    message = bytes(range(40))
    stego_values, displaced, known = stego.Cover(values, key=KEY, bits_stored=12).embed_known(message)
    assert np.array_equal(stego_values, embed(values, message, key=KEY, bits_stored=12)[0])
    real_tag, tags = stego._image_tag, []
    monkeypatch.setattr(stego, "_image_tag", lambda *args: tags.append(1) or real_tag(*args))
    got, mask = stego.recover(stego_values, displaced, key=KEY, bits_stored=12, known=known)
    assert not tags
    ref_values, ref_mask = stego.recover(stego_values, displaced, key=KEY, bits_stored=12)
    assert len(tags) == 1
    assert np.array_equal(got, values) and np.array_equal(got, ref_values) and np.array_equal(mask, ref_mask)
    with pytest.raises(MessageNotFoundError):  # known under KEY: not used for another key
        stego.recover(stego_values, displaced, key=OTHER_KEY, bits_stored=12, known=known)
    elsewhere = dataclasses.replace(known, tag_positions=known.tag_positions + 1)
    tags.clear()
    assert np.array_equal(stego.recover(stego_values, displaced, key=KEY, bits_stored=12, known=elsewhere)[0], values)
    assert len(tags) == 1


def test_equal_outside_compares_only_unmasked_values():
    from medcodec.stegokernel import equal_outside

    a = np.arange(20, dtype=np.uint16)
    mask = np.zeros(20, dtype=bool)
    mask[[3, 7]] = True
    b = a.copy()
    b[3] += 1
    assert equal_outside(a, b, mask)
    b[4] += 1
    assert not equal_outside(a, b, mask)
    assert equal_outside(a, b ^ np.uint16(0x8000), np.ones(20, dtype=bool))  # all masked
    assert not equal_outside(a.astype(np.uint8), (a + 1).astype(np.uint8), mask)


# --------------------------------------------------------------------------------------
# Colour images (version 3): grey pixels stay grey


def near_grey_rgb(frames, rows, cols, bits, *, seed=0, grey_fraction=0.7, tint=2) -> np.ndarray:
    """A textured grey image whose pixels are exactly grey (R = G = B) with probability
    ``grey_fraction`` and otherwise carry independent colour differences up to ``tint``, plus a
    saturated colour block: the structure of near-grey ultrasound with an overlay."""
    rng = np.random.default_rng(seed)
    maxval = (1 << bits) - 1
    luma = noisy((frames, 1, rows, cols), bits, seed=seed)
    diff = rng.integers(-tint, tint + 1, (frames, 3, rows, cols))
    grey = rng.random((frames, 1, rows, cols)) < grey_fraction
    rgb = np.clip(luma + np.where(grey, 0, diff), 0, maxval)
    rgb[:, 0, : rows // 4, : cols // 4] = maxval // 2  # a flat coloured overlay
    return rgb.astype(np.int64)


def _grey(values: np.ndarray) -> np.ndarray:
    return (values[:, 0] == values[:, 1]) & (values[:, 1] == values[:, 2])


@given(
    frames=st.integers(1, 2),
    rows=st.integers(3, 40),
    cols=st.integers(8, 96),
    bits=st.integers(4, 16),
    grey_fraction=st.sampled_from([0.0, 0.02, 0.5, 1.0]),
    tint=st.sampled_from([1, 2, 40]),
    fill=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_colour_embedding_keeps_every_grey_pixel(frames, rows, cols, bits, grey_fraction, tint, fill, seed):
    values = near_grey_rgb(frames, rows, cols, bits, seed=seed, grey_fraction=grey_fraction, tint=tint)
    cap = capacity_bits(values, bits, key=KEY)
    try:
        stego_values, _, mask = _check_round_trip(
            values, np.random.default_rng(seed).bytes(int(fill * (cap // 8))), bits)
    except CapacityError:
        assert cap == 0
        return
    assert np.array_equal(_grey(stego_values), _grey(values)), "a pixel became grey or stopped being grey"
    grey = _grey(values)
    # The first sample carries; the others change only in grey pixels, and with it.
    assert np.array_equal(mask[:, 1], mask[:, 0] & grey) and np.array_equal(mask[:, 2], mask[:, 0] & grey)
    delta = stego_values - values
    assert np.array_equal(delta[:, 1][grey], delta[:, 0][grey])
    assert not (delta[:, 1:] * ~grey[:, None]).any()
    # A pixel whose other samples are equal but differ from the first (G = B != R) never changes.
    assert not mask[:, 0][(values[:, 1] == values[:, 2]) & ~grey].any()
    assert extract_versioned(stego_values, key=KEY, bits_stored=bits)[2] == 3


def test_colour_images_embedded_as_version_2_are_still_read():
    """Colour images written before version 3 (each plane on its own) extract and restore."""
    values = near_grey_rgb(1, 48, 64, 12, seed=3, grey_fraction=0.02, tint=40)
    message = os.urandom(80)
    old, displaced = stego._embed(values, message, key=KEY, bits_stored=12, segment_bits=SEGMENT_BITS, version=2)
    assert displaced[3] == 2 | stego.DIRECTION_EXCEPTIONS
    got, _, version = extract_versioned(old, key=KEY, bits_stored=12)
    assert (got, version) == (message, 2)
    assert np.array_equal(restore(old, displaced, key=KEY, bits_stored=12), values)
    new, displaced3 = embed(values, message, key=KEY, bits_stored=12)
    assert displaced3[3] == 3 | stego.DIRECTION_EXCEPTIONS and extract_versioned(new, key=KEY, bits_stored=12)[2] == 3
    with pytest.raises(RestoreError, match="colour"):  # version 3 displaced bytes on a one-sample image
        restore(new[:, :1], displaced3, key=KEY, bits_stored=12)


# --------------------------------------------------------------------------------------
# Steganalysis detectors really detect


@pytest.mark.parametrize("bits", [8, 12])
def test_detectors_flag_full_lsb_replacement(bits):
    cover = smooth_image(256, 256, bits)
    rng = np.random.default_rng(1)
    replaced = (cover & ~1) | rng.integers(0, 2, cover.shape)
    p_cover, _ = chi_square_attack(cover)
    p_stego, _ = chi_square_attack(replaced)
    assert p_cover < 0.01 and p_stego > 0.5
    assert spa_payload(cover) < 0.15 and spa_payload(replaced) > 0.85
    assert ws_payload(cover) < 0.1 and ws_payload(replaced) > 0.85


def test_detectors_estimate_half_payload_and_ignore_lsb_matching():
    cover = smooth_image(256, 256, 8)
    rng = np.random.default_rng(2)
    half = cover.copy()
    sel = rng.random(cover.shape) < 0.5
    half[sel] = (cover[sel] & ~1) | rng.integers(0, 2, int(sel.sum()))
    assert 0.35 < spa_payload(half) < 0.65 and 0.35 < ws_payload(half) < 0.65
    # Our embedding at full capacity is LSB matching: the detectors stay near 0.
    cap = capacity_bits(cover, 8, key=KEY)
    stego_values, _ = embed(cover, rng.bytes(cap // 8), key=KEY, bits_stored=8)
    assert spa_payload(stego_values) < 0.1 and ws_payload(stego_values) < 0.1
    assert chi_square_attack(stego_values)[0] < 0.01


def test_chi_square_survival_function():
    # Textbook 5% critical values, and exp(-x/2) for 2 degrees of freedom.
    for x, dof in ((3.841459, 1), (18.307038, 10), (124.342113, 100), (1074.679, 1000)):
        assert _chi2_sf(x, dof) == pytest.approx(0.05, abs=1e-5)
    assert _chi2_sf(2.0, 2) == pytest.approx(math.exp(-1.0))


def test_auc_and_window_helpers():
    assert roc_auc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert roc_auc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.5
    assert roc_auc(np.array([0.1, 0.4]), np.array([0.2, 0.3])) == 0.5
    assert 0 < auc_standard_error(0.7, 30, 30) < 0.1
    view = windowed_view(np.arange(1000).reshape(10, 100))
    assert view.dtype == np.uint8 and view.min() == 0 and view.max() == 255
    assert not windowed_view(np.full((4, 4), 9)).any()


# --- the compiled run tests agree with their numpy definitions ---------------------------------------


def _eligible_reference(runs: np.ndarray, bits_stored: int) -> np.ndarray:
    """stego._eligible as numpy expressions (its definition before the compiled loops)."""
    maxval = (1 << bits_stored) - 1
    if runs.shape[0] == 0 or maxval - 2 < 2:
        return np.zeros(runs.shape[0], dtype=bool)
    groups = np.clip(runs, 2, maxval - 2).reshape(runs.shape[0], -1, stego.GROUP)
    textured = (groups.max(axis=2) - groups.min(axis=2) >= stego.MIN_GROUP_RANGE).all(axis=1)
    unsaturated = ((runs != 0) & (runs != maxval)).all(axis=1)
    return textured & unsaturated


def _robust_reference(runs: np.ndarray, bits_stored: int) -> np.ndarray:
    maxval = (1 << bits_stored) - 1
    if runs.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    high = runs & ~1
    groups = high.reshape(runs.shape[0], -1, stego.GROUP)
    in_range = ((high >= 2) & (high <= maxval - 3)).all(axis=1)
    return in_range & (groups.max(axis=2) - groups.min(axis=2) >= stego.MIN_GROUP_RANGE + 1).all(axis=1)


@given(bits=st.integers(1, 16), spread=st.integers(0, 12), n=st.integers(0, 40), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([np.uint8, np.uint16, np.int64]))
def test_compiled_run_tests_match_their_numpy_definitions(bits, spread, n, seed, dtype):
    rng = np.random.default_rng(seed)
    maxval = (1 << bits) - 1
    if np.dtype(dtype).itemsize == 1 and bits > 8:
        bits, maxval = 8, 255
    # runs around a random level with a small spread, so every rule is met and missed
    level = rng.integers(0, maxval + 1, (n, 1))
    runs = np.clip(level + rng.integers(-spread, spread + 1, (n, stego.SEGMENT_BITS)), 0, maxval).astype(dtype)
    assert np.array_equal(stego._eligible(runs, bits), _eligible_reference(runs.astype(np.int64), bits))
    # a reader's scan (next_runs): the first runs that pass, in a keyed order, from a start
    from medcodec.stegokernel import next_runs

    order = rng.permutation(n).astype(np.int64)
    allowed = rng.random((n, stego.SEGMENT_BITS)) < 0.98
    start, need = int(rng.integers(0, n + 1)), int(rng.integers(0, n + 1))
    for robust, reference in ((True, _robust_reference), (False, _eligible_reference)):
        passes = reference(runs.astype(np.int64), bits)
        for rows, ok in ((np.zeros((0, stego.SEGMENT_BITS), dtype=bool), passes), (allowed, passes & allowed.all(axis=1))):
            found = next_runs(runs, rows, order, start, need, robust, maxval, stego.GROUP, stego.MIN_GROUP_RANGE)
            assert np.array_equal(found, [i for i in range(start, n) if ok[order[i]]][:need])


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_outside_digests_cover_exactly_the_values_outside_the_mask(bits):
    """Both pixel digests (binding 1.0: int64 outside values; 1.1: every value at its
    sample width, masked ones as 0) ignore the masked values and see every other value,
    the mask and the shape; the two differ from each other; 1.1 is the definition in
    FORMAT.md, recomputed here from it."""
    import hashlib
    import json

    values = noisy((2, 1, 16, 24), bits)
    mask = np.zeros(values.shape, dtype=bool)
    mask[0, 0, 3, 5:12] = mask[1, 0, 9, 0] = True
    for width in (None, bits):
        base = outside_digest(values, mask, bits_stored=width)
        masked = values.copy()
        masked[mask] = (masked[mask] + 1) % (1 << bits)
        assert outside_digest(masked, mask, bits_stored=width) == base
        changed = values.copy()
        changed[1, 0, 9, 1] ^= 1
        assert outside_digest(changed, mask, bits_stored=width) != base
        other_mask = mask.copy()
        other_mask[1, 0, 9, 1] = True
        assert outside_digest(values, other_mask, bits_stored=width) != base
        assert outside_digest(values.reshape(1, 2, 16, 24), mask.reshape(1, 2, 16, 24), bits_stored=width) != base
    assert outside_digest(values, mask) != outside_digest(values, mask, bits_stored=bits)
    samples = np.where(mask, 0, values).astype("<u1" if bits <= 8 else "<u2")
    spec = hashlib.sha256(b"medarchive/stego/v1/outside-samples\x00" + json.dumps(list(values.shape)).encode()
                          + np.packbits(mask.reshape(-1)).tobytes() + samples.tobytes())
    assert outside_digest(values, mask, bits_stored=bits) == spec.hexdigest()


def _digest_by_definition(values, mask, bits):
    import json

    samples = np.where(mask, 0, values).astype("<u1" if bits <= 8 else "<u2")
    return hashlib.sha256(b"medarchive/stego/v1/outside-samples\x00" + json.dumps(list(values.shape)).encode()
                          + np.packbits(mask.reshape(-1)).tobytes() + samples.tobytes()).hexdigest()


@pytest.mark.parametrize("bits, dtype", [(8, np.uint8), (12, np.uint16), (16, np.uint16), (6, np.uint16)])
def test_values_at_the_sample_width_are_digested_as_the_definition_says(monkeypatch, bits, dtype):
    """uint8 values (up to 8 bits) and uint16 ones (9 to 16) are hashed where they lie,
    between the masked spans; the digest is the definition's for masks with spans at the
    start, at the end, adjacent, of one value, none and all; with more spans than the
    in-place path takes, and for values of another width, the piecewise path gives the
    same; a value past the bit depth is refused on both paths."""
    values = noisy((2, 1, 16, 24), bits).astype(dtype)
    n = values.size
    masks = {"none": [], "all": list(range(n)), "edges": [0, 1, 2, n - 2, n - 1],
             "runs": [*range(40, 72), *range(72, 80), 100, *range(300, 332), 511]}
    for name, at in masks.items():
        mask = np.zeros(n, dtype=bool)
        mask[at] = True
        mask = mask.reshape(values.shape)
        want = _digest_by_definition(values, mask, bits)
        assert outside_digest(values, mask, bits_stored=bits) == want, name
        assert outside_digest(values.astype(np.int64), mask, bits_stored=bits) == want, name
        with monkeypatch.context() as m:
            m.setattr(stego, "_DIGEST_SPANS", 1)
            assert outside_digest(values, mask, bits_stored=bits) == want, name
    if 1 << bits <= np.iinfo(dtype).max:  # a value past the bit depth fits the dtype
        too_big = values.copy()
        too_big.flat[7] = 1 << bits
        with pytest.raises(StegoError, match="must lie in"):
            outside_digest(too_big, np.zeros(values.shape, dtype=bool), bits_stored=bits)


@given(st.lists(st.integers(0, 5000), max_size=60, unique=True))
def test_direction_exceptions_read_back(indices):
    indices = np.array(sorted(indices), dtype=np.int64)
    data = stego._leb128_gaps(indices) + b"rest"
    got, end = stego._read_leb128_gaps(data, 0, 5001)
    assert np.array_equal(got, indices) and data[end:] == b"rest"


def test_malformed_direction_exceptions_are_refused():
    values = GOLDEN_VALUES
    stego_values, displaced = embed(values, bytes(range(64)), key=KEY, bits_stored=12)
    n_bits = struct.unpack_from("<I", displaced, 4)[0]
    at = stego._DISPLACED_FIXED + stego.TAG_BITS // 8 + (n_bits + 7) // 8
    n_changed = int(np.unpackbits(np.frombuffer(displaced, np.uint8, (n_bits + 7) // 8, at - (n_bits + 7) // 8))[:n_bits].sum())
    for tail, message in ((b"\x80", "truncated or malformed"), (stego._leb128_gaps(np.arange(n_changed + 1)), "exceptions for"),
                          (b"\x01" + bytes([n_changed & 0x7F | 0x80, n_changed >> 7]), "direction exception"),
                          (displaced[at:] + b"\x00", "counts say")):
        with pytest.raises(RestoreError, match=message):
            restore(stego_values, displaced[:at] + tail, key=KEY, bits_stored=12)
    flipped = displaced[:at] + stego._leb128_gaps(np.array([0]))  # one direction wrong: the digest sees it
    with pytest.raises(RestoreError, match="digest"):
        restore(stego_values, flipped, key=KEY, bits_stored=12)
    with pytest.raises(RestoreError, match="version 129"):  # version 1 has no exceptions form
        restore(stego_values, displaced[:3] + bytes([0x81]) + displaced[4:], key=KEY, bits_stored=12)
