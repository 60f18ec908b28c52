"""The entropy layer and residual tokens are exact inverses."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import pytest
from medcodec.entropy import CHUNK, AdaptiveTables, Decoder, Encoder, RowModel, geometric_prior
from medcodec.errors import CorruptRecordError
from medcodec.paths import detokenize, raw_bits_of, token_alphabet, token_lookup, tokenize, unzigzag, zigzag


@given(st.lists(st.integers(-((1 << 17) - 1), (1 << 17) - 1), min_size=1, max_size=200), st.sampled_from([1, 2, 3]))
def test_tokens_roundtrip(residuals, mantissa):
    e = np.array(residuals, dtype=np.int64)
    token, extra, nbits = tokenize(zigzag(e), mantissa)
    assert np.array_equal(raw_bits_of(token, mantissa), nbits)
    assert token.max() < token_alphabet(17, mantissa)
    assert np.array_equal(unzigzag(detokenize(token, extra, mantissa)), e)
    assert (extra < (np.int64(1) << nbits)).all()
    lowest, raw = token_lookup(17, mantissa)  # the decoders' two-lookup detokenize
    assert np.array_equal(raw[token], nbits) and np.array_equal(lowest[token] + extra, zigzag(e))


def test_tokens_and_zigzag_at_the_edges():
    # tokens cover z < 2**40 (values of up to 38 bits; DICOM has at most 16)
    z = np.array([0, 1, 15, 16, 17, 31, 32, 63, 64, 12345, (1 << 39) + 77, (1 << 40) - 1], dtype=np.int64)
    for mantissa in (1, 2, 3, 4):
        token, extra, nbits = tokenize(z, mantissa)
        assert np.array_equal(detokenize(token, extra, mantissa), z)
        assert np.array_equal(token[:4], [0, 1, 15, 16])
    e = np.array([0, 1, -1, 5, -5, (1 << 60) - 1, -(1 << 60)], dtype=np.int64)
    assert np.array_equal(zigzag(e), [0, 2, 1, 10, 9, (1 << 61) - 2, (1 << 61) - 1])
    assert np.array_equal(unzigzag(zigzag(e)), e)


@pytest.mark.parametrize("mantissa", [1, 2, 3])
def test_compiled_tokens_equal_numpy_tokens(mantissa, monkeypatch):
    import medcodec.paths as paths

    rng = np.random.default_rng(mantissa)
    z = np.concatenate([np.arange(1 << 12), rng.integers(0, 1 << 40, 5000), 1 << np.arange(1, 40),
                        (1 << np.arange(1, 41)) - 1])
    assert z.size >= paths._COMPILED_TOKENIZE
    compiled = tokenize(z, mantissa)
    monkeypatch.setattr(paths, "_COMPILED_TOKENIZE", z.size + 1)
    for got, want in zip(compiled, tokenize(z, mantissa)):
        assert got.dtype == want.dtype and np.array_equal(got, want)


@given(st.data())
def test_adaptive_and_windowed_streams_roundtrip(data):
    n = data.draw(st.integers(0, 5000))
    alphabet = data.draw(st.integers(2, 40))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    symbols = rng.integers(0, alphabet, n)
    ctx = rng.integers(0, 5, n)
    width = data.draw(st.sampled_from([2, 4, 8]))
    local = rng.integers(0, width, n)
    offsets = rng.integers(-30, 30, n)
    bits = rng.integers(0, 30, n)
    raw = rng.integers(0, 1 << 62, n) & ((np.int64(1) << bits) - 1)

    enc = Encoder()
    enc.adaptive(symbols, ctx, AdaptiveTables(5, alphabet))
    enc.windowed(local, ctx, offsets, width, RowModel(5, 20))
    enc.uniform(raw, bits)
    blob = enc.finish()

    dec = Decoder(blob)
    assert np.array_equal(dec.adaptive(ctx, AdaptiveTables(5, alphabet)), symbols)
    assert np.array_equal(dec.windowed(ctx, offsets, width, RowModel(5, 20)), local)
    assert np.array_equal(dec.uniform(bits), raw)


def test_adaptation_pays_off():
    rng = np.random.default_rng(0)
    skewed = (rng.random(20000) < 0.05).astype(np.int64)
    enc = Encoder()
    enc.adaptive(skewed, np.zeros_like(skewed), AdaptiveTables(1, 2))
    assert len(enc.finish()) * 8 < 0.4 * skewed.size  # entropy ~0.29 bits


def test_prior_is_integer_and_decreasing():
    lo = np.arange(10)
    prior = geometric_prior([3, 50], lo, lo + 1, total=1000)
    assert prior.dtype == np.int64
    assert (np.diff(prior[0]) <= 0).all() and prior.min() >= 1
    assert prior[0, 0] > prior[1, 0]  # narrower law puts more mass at zero


def test_table_probabilities_and_updates_match_the_plain_definition():
    """Per-distinct-context rows and sparse updates are speedups, not new arithmetic."""
    rng = np.random.default_rng(3)
    n_ctx, alphabet = 40, 23
    tables = AdaptiveTables(n_ctx, alphabet, init=rng.integers(1, 50, (n_ctx, alphabet)))
    fast, slow = tables.fast.copy(), tables.slow.copy()
    for _ in range(300):
        ctx = rng.integers(0, 6, 512) ** 2 % n_ctx  # few distinct contexts, many repeats
        sym = np.minimum(rng.geometric(0.3, 512) - 1, alphabet - 1)
        f, s = fast[ctx], slow[ctx]
        mixed = f * s.sum(1, keepdims=True) + s * f.sum(1, keepdims=True)
        expect = mixed / mixed.sum(1, keepdims=True)
        assert np.array_equal(tables.probabilities(ctx), expect)  # bit for bit
        tables.update(ctx, sym)
        hits = np.bincount(ctx * alphabet + sym, minlength=n_ctx * alphabet).reshape(n_ctx, alphabet)
        for table, (inc, limit) in ((fast, AdaptiveTables.FAST), (slow, AdaptiveTables.SLOW)):
            table += hits * inc
            over = np.unique(ctx)[table[np.unique(ctx)].sum(1) > limit]
            table[over] = (table[over] + 1) >> 1
        assert np.array_equal(tables.fast, fast) and np.array_equal(tables.slow, slow)


def test_batched_encoder_calls_write_the_same_stream(monkeypatch):
    """Handing the coder several chunks per call is a speedup: the bytes must not change."""
    import medcodec.entropy as entropy

    rng = np.random.default_rng(5)
    n, alphabet = 40_000, 30
    ctx = rng.integers(0, 300, n) % 7
    symbols = np.minimum(rng.geometric(0.3, n) - 1, alphabet - 1)
    streams = []
    for batch in (1, 3, entropy.BATCH):
        monkeypatch.setattr(entropy, "BATCH", batch)
        enc = Encoder()
        enc.adaptive(symbols, ctx, AdaptiveTables(7, alphabet))
        streams.append(enc.finish())
    assert streams[0] == streams[1] == streams[2]
    assert np.array_equal(Decoder(streams[0]).adaptive(ctx, AdaptiveTables(7, alphabet)), symbols)


def test_piece_decoder_reads_an_adaptive_call_in_any_pieces():
    from medcodec.entropy import PieceDecoder

    rng = np.random.default_rng(12)
    n, contexts, alphabet = 3 * CHUNK + 77, 5, 9
    ctx = rng.integers(0, contexts, n)
    symbols = np.minimum(rng.geometric(0.3, n) - 1 + ctx, alphabet - 1)
    enc = Encoder()
    enc.adaptive(symbols, ctx, AdaptiveTables(contexts, alphabet))
    data = enc.finish()
    for cuts in ([], [1, 2, 3], [CHUNK - 1, CHUNK, CHUNK + 1], list(rng.integers(0, n, 40))):
        edges = [0, *sorted(int(c) for c in cuts), n]
        pieces = PieceDecoder(Decoder(data), AdaptiveTables(contexts, alphabet))
        got = np.concatenate([pieces.decode(ctx[a:b]) for a, b in zip(edges[:-1], edges[1:])])
        assert np.array_equal(got, symbols)


def test_packed_raw_bits_round_trip_in_pieces():
    from medcodec.entropy import BitReader, pack_bits

    rng = np.random.default_rng(13)
    bits = rng.integers(0, 17, 1000)
    values = rng.integers(0, 1 << 16, 1000) & ((1 << bits) - 1)
    data = pack_bits(values, bits)
    assert len(data) == (int(bits.sum()) + 7) // 8
    reader = BitReader(data)
    got = np.concatenate([reader.read(bits[a : a + 97]) for a in range(0, 1000, 97)])
    assert np.array_equal(got, values)
    assert pack_bits(values[:3], np.zeros(3, dtype=np.int64)) == b""
    with pytest.raises(CorruptRecordError, match="raw bits"):
        reader.read(np.array([8]))
    # fields up to the reader's 56-bit window, at every offset within a byte
    wide = rng.integers(0, 57, 500)
    values = rng.integers(0, 1 << 62, 500) & ((np.int64(1) << wide) - 1)
    reader = BitReader(pack_bits(values, wide))
    got = np.concatenate([reader.read(wide[a : a + 61]) for a in range(0, 500, 61)])
    assert np.array_equal(got, values)
    with pytest.raises(CorruptRecordError, match="57 bits"):
        BitReader(bytes(16)).read(np.array([57]))


def test_adaptive_tables_refuse_contexts_and_symbols_out_of_range():
    # The table rules are compiled without bounds checks: they check their indices first.
    tables = AdaptiveTables(3, 4)
    before = tables.fast.copy()
    for ctx, sym in (([0, 3], [0, 0]), ([-1], [0]), ([1], [4]), ([2], [-1])):
        with pytest.raises(IndexError):
            tables.update(np.array(ctx), np.array(sym))
    with pytest.raises(IndexError):
        tables.probabilities(np.array([0, 5]))
    assert np.array_equal(tables.fast, before)
    tables.update(np.array([2, 2]), np.array([3, 1]))
    assert tables.fast[2, 3] == before[2, 3] + AdaptiveTables.FAST[0]
