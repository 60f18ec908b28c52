"""Exact inverses of the modality decomposition for every sample format."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medcodec.errors import UnsupportedError
from medcodec.planes import (
    MAX_LOCAL_PLANES,
    SampleFormat,
    choose_k,
    merge_planes,
    split_planes,
    value_palette,
    values_and_seen,
    values_to_words,
    words_to_samples,
    words_to_values,
)


@st.composite
def formats_and_words(draw):
    bits_allocated = draw(st.sampled_from([8, 16]))
    bits_stored = draw(st.integers(1, bits_allocated))
    high_bit = draw(st.integers(bits_stored - 1, bits_allocated - 1))
    signed = draw(st.booleans())
    fmt = SampleFormat(bits_allocated=bits_allocated, bits_stored=bits_stored, high_bit=high_bit, signed=signed)
    shape = draw(st.tuples(st.integers(1, 5), st.integers(1, 7)))
    dtype = fmt.word_dtype
    raw = draw(st.binary(min_size=int(np.prod(shape)) * dtype.itemsize, max_size=int(np.prod(shape)) * dtype.itemsize))
    return fmt, np.frombuffer(raw, dtype=dtype).reshape(shape)


@given(formats_and_words())
def test_words_values_roundtrip_any_bits(case):
    fmt, words = case
    values, outside = words_to_values(words, fmt)
    assert values.min() >= 0 and values.max() < (1 << fmt.bits_stored)
    assert np.array_equal(values_to_words(values, outside, fmt), words)


@given(formats_and_words())
def test_words_split_as_the_format_defines(case):
    """The record format's definition, written out in int64 arithmetic: values are the
    stored bits (sign bit flipped when signed), the outside residual is the bits outside
    BitsStored XOR the sign extension a conforming writer stores (FORMAT.md, ``outside``);
    the conversions themselves work in the words' dtype."""
    fmt, words = case
    w = words.astype(np.int64)
    values = (w >> fmt.low_bit) & fmt.value_mask
    if fmt.signed:
        values ^= 1 << (fmt.bits_stored - 1)
    outside = (w & ~(fmt.value_mask << fmt.low_bit) & ((1 << fmt.bits_allocated) - 1)) ^ fmt.expected_outside(values)
    got_values, got_outside = words_to_values(words, fmt)
    assert got_values.dtype == got_outside.dtype == np.int64
    assert np.array_equal(got_values, values) and np.array_equal(got_outside, outside)
    conforming = values_to_words(values, None, fmt)
    assert conforming.dtype == fmt.word_dtype
    assert not words_to_values(conforming, fmt)[1].any()
    # the same split in the words' own dtype (what sealing and stego read), the
    # all-zero residual as None; back to the same words from either width
    narrow, narrow_outside = words_to_samples(words, fmt)
    assert narrow.dtype == fmt.word_dtype and np.array_equal(narrow, values)
    assert (narrow_outside is None) == (not outside.any())
    if narrow_outside is not None:
        assert narrow_outside.dtype == fmt.word_dtype and np.array_equal(narrow_outside, outside)
    assert np.array_equal(values_to_words(narrow, narrow_outside, fmt), words)
    # the encoder's fused pass (countkernel.stored_values): the same split and which
    # values occur, on conforming words too (whose residual is None)
    for ws, want_outside in ((words, outside), (conforming, None)):
        want_values = words_to_values(ws, fmt)[0]
        fused, fused_outside, seen = values_and_seen(ws, fmt)
        assert fused.dtype == np.int64 and np.array_equal(fused, want_values)
        want_seen = np.bincount(want_values.reshape(-1), minlength=1 << fmt.bits_stored) > 0
        assert seen.dtype == np.uint8 and np.array_equal(seen, want_seen.astype(np.uint8))
        if want_outside is None or not want_outside.any():
            assert fused_outside is None
        else:
            assert np.array_equal(fused_outside, want_outside)
        # sealing's call, at the words' width: the same; the words themselves where they
        # are their values (unsigned, from bit 0, no outside bit set: countkernel.seen_values)
        narrow_values, narrow_outside, narrow_seen = values_and_seen(ws, fmt, dtype=fmt.word_dtype)
        assert narrow_values.dtype == fmt.word_dtype and np.array_equal(narrow_values, want_values)
        assert np.array_equal(narrow_seen, seen)
        assert (narrow_outside is None) == (fused_outside is None)
        if narrow_outside is not None:
            assert np.array_equal(narrow_outside, fused_outside)
        identity = not fmt.low_bit and not fmt.signed and fused_outside is None
        assert np.shares_memory(narrow_values, ws) == identity


@given(formats_and_words(), st.integers(0, 15))
def test_split_merge_roundtrip(case, k):
    fmt, words = case
    values, _ = words_to_values(words, fmt)
    k = min(k, fmt.bits_stored - 1)
    g, loc = split_planes(values, k)
    assert loc.max(initial=0) < (1 << k) or k == 0
    assert np.array_equal(merge_planes(g, loc, k), values)


def test_conforming_signed_words_have_no_outside_bits():
    fmt = SampleFormat(bits_allocated=16, bits_stored=12, high_bit=11, signed=True)
    samples = np.array([-2048, -1, 0, 1, 2047], dtype=np.int16)  # sign-extended, as writers store them
    values, outside = words_to_values(samples.view(np.uint16), fmt)
    assert not outside.any()
    assert list(values) == [0, 2047, 2048, 2049, 4095]  # offset binary keeps order


def test_garbage_above_bits_stored_is_kept():
    fmt = SampleFormat(bits_allocated=16, bits_stored=12, high_bit=11, signed=False)
    words = np.array([0xF123, 0x0123, 0xA000], dtype=np.uint16)
    values, outside = words_to_values(words, fmt)
    assert list(values) == [0x123, 0x123, 0]
    assert np.array_equal(values_to_words(values, outside, fmt), words)


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        (dict(bits_allocated=32, bits_stored=12, high_bit=11, signed=False), "BitsAllocated 8 or 16, got 32"),
        (dict(bits_allocated=16, bits_stored=17, high_bit=16, signed=False), "BitsStored 17 outside"),
        (dict(bits_allocated=16, bits_stored=12, high_bit=16, signed=False), "HighBit 16 inconsistent"),
        (dict(bits_allocated=8, bits_stored=0, high_bit=0, signed=False), "BitsStored 0 outside"),
    ],
)
def test_bad_formats_are_refused_with_the_value(kwargs, said):
    """The same rules, and words, as a DICOM header's (spec.word_layout_problem)."""
    from medcodec.spec import PixelSpec

    with pytest.raises(UnsupportedError, match=said):
        SampleFormat(**kwargs)
    spec = PixelSpec(rows=1, cols=1, bits_allocated=kwargs["bits_allocated"], bits_stored=kwargs["bits_stored"],
                     high_bit=kwargs["high_bit"])
    with pytest.raises(UnsupportedError, match=said):
        spec.validate_for_coding()


def test_choose_k_follows_the_noise_floor():
    rng = np.random.default_rng(1)
    smooth = np.tile(np.arange(256, dtype=np.int64) * 16, (256, 1))
    assert choose_k(smooth, 12)[0] == 0
    noisy = smooth + rng.integers(0, 1 << 10, size=smooth.shape)  # ~8 noisy planes
    k, stats = choose_k(noisy, 16)
    assert 1 <= k <= MAX_LOCAL_PLANES
    assert stats["noise"] > 32


@given(st.lists(st.integers(0, 4095), min_size=1, max_size=300))
def test_palette_pack_roundtrip(vals):
    from medcodec.planes import pack_values, palette_bits, unpack_values, value_palette

    values = np.array(vals, dtype=np.int64)
    palette = value_palette(values, 12)
    if palette is None:
        return
    packed = pack_values(values, palette)
    assert packed.max() < (1 << palette_bits(palette))
    assert np.array_equal(unpack_values(packed, palette), values)


@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 8, 12, 16]), st.sampled_from([np.uint8, np.uint16, np.int64]),
       st.integers(0, 3000))
def test_value_counts_are_bincount(seed, bits, dtype, n):
    """The compiled histogram behind ``value_palette`` counts as ``np.bincount`` does, in
    any integer dtype, and names the first value outside the range instead of writing
    past its table."""
    from medcodec.countkernel import value_counts

    if np.iinfo(dtype).max < (1 << bits) - 1:
        bits = 8
    rng = np.random.default_rng(seed)
    # sparse and dense histograms: a few levels spread over the range, or every value
    levels = rng.integers(0, 1 << bits, size=rng.integers(1, 40))
    flat = (rng.choice(levels, n) if seed % 2 else rng.integers(0, 1 << bits, n)).astype(dtype)
    counts, bad = value_counts(flat, 1 << bits)
    assert bad == -1 and np.array_equal(counts, np.bincount(flat.astype(np.int64), minlength=1 << bits))
    palette = value_palette(flat, bits)
    used = np.flatnonzero(counts)
    if palette is not None:
        assert np.array_equal(palette, used)
    if bits < 16 or dtype is np.int64:
        wide = flat.astype(np.int64)
        wide = np.append(wide, [1 << bits, 5])
        assert value_counts(wide, 1 << bits)[1] == n
        with pytest.raises(ValueError):
            value_palette(wide, bits)


def _reference_colour_table(values, bits):
    """planes.colour_table by sorting (np.unique), as it was written before its kernel:
    the table's order (greys by value, then colours by sum of samples, then key) and
    each pixel's index are the format's, so the kernel must give exactly these."""
    from medcodec.planes import COLOUR_PALETTE_MAX, COLOUR_PIXELS_PER_ENTRY

    n_frames, n_samples, rows, cols = values.shape
    if n_samples < 2 or n_samples * bits > 62:
        return None
    keys = np.zeros((n_frames, rows, cols), dtype=np.int64)
    for s in range(n_samples):
        keys = (keys << bits) | values[:, s]
    distinct, inverse = np.unique(keys, return_inverse=True)
    if distinct.size > COLOUR_PALETTE_MAX or distinct.size * COLOUR_PIXELS_PER_ENTRY > n_frames * rows * cols:
        return None
    shifts = bits * np.arange(n_samples - 1, -1, -1, dtype=np.int64)
    table = (distinct[:, None] >> shifts[None, :]) & ((1 << bits) - 1)
    grey = (table == table[:, :1]).all(axis=1)
    order = np.lexsort((distinct, table.sum(axis=1), ~grey))
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    return table[order], rank[inverse.reshape(keys.shape)][:, None]


@given(st.integers(0, 2**32 - 1), st.sampled_from([2, 3, 4]), st.sampled_from([8, 12, 16]))
def test_colour_table_roundtrip_and_order(seed, samples, bits):
    from medcodec.planes import colour_table, palette_bits, unpack_colours

    rng = np.random.default_rng(seed)
    levels = rng.integers(0, 1 << bits, 40)
    grey = levels[rng.integers(0, levels.size, (2, 1, 40, 50))]
    values = np.repeat(grey, samples, axis=1)
    values[:, :, :2, :3] = rng.integers(0, 1 << bits, (2, samples, 2, 3))  # a few colours
    found = colour_table(values, bits)
    if samples * bits > 62:  # one int64 key per colour: 4 x 16-bit samples do not fit
        assert found is None
        return
    assert found is not None
    table, idx = found
    assert table.shape[1] == samples
    assert idx.shape == (2, 1, 40, 50) and idx.max() < (1 << palette_bits(table[:, 0]))
    assert np.array_equal(unpack_colours(idx, table), values)
    grey_rows = (table == table[:, :1]).all(axis=1)
    n_grey = int(grey_rows.sum())
    assert grey_rows[:n_grey].all() and (np.diff(table[:n_grey, 0]) > 0).all()  # greys first, by value
    want_table, want_idx = _reference_colour_table(values, bits)
    assert np.array_equal(table, want_table) and np.array_equal(idx, want_idx)


@pytest.mark.parametrize("colours", [1, 2, 255, 256, 257, 4095, 4096, 4097])
@pytest.mark.parametrize("pixels", [64 * 64, 256 * 256 + 3])
def test_colour_table_kernel_is_the_sorting_reference(colours, pixels):
    """Exactly the sorting reference around the limits (4096 colours, 16 pixels per
    colour), with runs of one colour (the kernel's shortcut) and colours that collide
    in its table; every colour is present."""
    from medcodec.planes import colour_table

    rng = np.random.default_rng(colours * 7 + pixels)
    palette = rng.integers(0, 256, (colours, 3))
    palette[: colours // 3] = palette[: colours // 3, :1]  # some greys
    which = np.concatenate([np.arange(colours), rng.integers(0, colours, max(0, pixels - colours))])
    which = np.repeat(which, rng.integers(1, 4, which.size))[:pixels]  # runs
    which[: min(colours, pixels)] = np.arange(min(colours, pixels))
    values = palette[rng.permutation(which) if colours % 2 else which].T.reshape(1, 3, 1, pixels)
    want = _reference_colour_table(values, 8)
    got = colour_table(values, 8)
    assert (got is None) == (want is None)
    if want is not None:
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    wide = (values.astype(np.int64) << 4) | 5  # 12-bit colours, 36-bit keys
    want, got = _reference_colour_table(wide, 12), colour_table(wide, 12)
    assert (got is None) == (want is None)
    if want is not None:
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_colour_table_only_where_it_pays():
    from medcodec.planes import COLOUR_PALETTE_MAX, colour_table

    rng = np.random.default_rng(0)
    assert colour_table(rng.integers(0, 4, (1, 1, 64, 64)), 8) is None  # one sample
    many = rng.integers(0, 256, (1, 3, 128, 128))  # ~16k colours
    assert colour_table(many, 8) is None
    few = rng.integers(0, 16, (1, 3, 128, 128))  # 4096 colours, 4 pixels each: too dear
    assert colour_table(few, 8) is None and np.unique(few.reshape(3, -1), axis=1).shape[1] <= COLOUR_PALETTE_MAX


def test_values_that_are_their_words_are_not_copied_and_others_are_left_unchanged():
    """``values_to_words`` returns words that are the values themselves (unsigned, from bit
    0, nothing outside, already the words' dtype) as they are; any other case works on a
    copy, so the values it was given stay as they were."""
    values = np.arange(4096, dtype=np.uint16).reshape(1, 1, 64, 64)
    plain = SampleFormat(bits_allocated=16, bits_stored=12, high_bit=11, signed=False)
    assert values_to_words(values, None, plain) is values
    kept = values.copy()
    for fmt, outside in ((SampleFormat(bits_allocated=16, bits_stored=12, high_bit=11, signed=True), None),
                         (SampleFormat(bits_allocated=16, bits_stored=12, high_bit=13, signed=False), None),
                         (plain, np.full(values.shape, 1 << 12, dtype=np.uint16))):
        words = values_to_words(values, outside, fmt)
        assert not np.shares_memory(words, values) and np.array_equal(values, kept)
        assert np.array_equal(words_to_values(words, fmt)[0], values)


def test_noise_level_is_numpys_median_of_the_laplacian_residuals():
    # The compiled histogram's median (countkernel.laplacian_median2) against the array
    # formula it replaced: odd and even counts (the two middle values averaged), ties,
    # flat planes, signed and 8/16-bit samples, a plane with a leading frame axis.
    from medcodec.planes import NOISE_HISTOGRAM_MAX, noise_level

    def formula(values):
        v = (values if values.ndim == 2 else values.reshape(-1, values.shape[-1])).astype(np.int64)
        res = 4 * v[1:-1, 1:-1] - v[:-2, 1:-1] - v[2:, 1:-1] - v[1:-1, :-2] - v[1:-1, 2:]
        return float(np.median(np.abs(res))) / 4.0

    rng = np.random.default_rng(5)
    cases = [np.zeros((3, 3), dtype=np.uint8), np.full((5, 8), 7, dtype=np.uint16)]
    for dtype, lo, hi in ((np.uint8, 0, 256), (np.uint16, 0, 1 << 16), (np.int16, -(1 << 15), 1 << 15),
                          (np.int64, -(1 << 20), 1 << 20)):
        for rows, cols in ((3, 4), (4, 4), (7, 9), (33, 40)):
            cases.append(rng.integers(lo, hi, (rows, cols)).astype(dtype))
            cases.append((rng.integers(0, 3, (rows, cols)) * 5).astype(dtype))  # many ties
    cases.append(rng.integers(0, 4096, (1, 30, 31)).astype(np.uint16))
    for values in cases:
        assert noise_level(values) == formula(values)
    assert noise_level(np.zeros((2, 9), dtype=np.uint8)) == 0.0  # no interior
    # Residuals beyond NOISE_HISTOGRAM_MAX: numpy's formula, not a histogram that large.
    wide = rng.integers(-(1 << 40), 1 << 40, (20, 21))
    assert noise_level(wide) == formula(wide) > NOISE_HISTOGRAM_MAX / 4
