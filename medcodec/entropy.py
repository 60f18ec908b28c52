"""Entropy coding: the only module that imports constriction.

Models hand this module integer count tables and per-symbol context ids; this
module turns counts into probabilities with one exactly-rounded float64 division
(identical on every IEEE-754 machine) and lets constriction's range coder code
them. Adaptation happens between chunks: the probabilities for a chunk depend
only on symbols of earlier chunks, so the decoder can rebuild them before it
decodes the chunk.
"""

from __future__ import annotations

import numpy as np
from constriction import stream

from . import contextkernel as ck
from .contextkernel import CHUNK
from .errors import CorruptRecordError

# Chunks whose probabilities the encoder hands to the range coder in one call (speed only).
BATCH = 32

_FAMILY = stream.model.Categorical(perfect=False)
_UNIFORM = stream.model.Uniform()  # a size per symbol


def counts_to_probabilities(counts: np.ndarray) -> np.ndarray:
    """Rows of positive integer counts -> float64 probabilities, by one exactly rounded division."""
    counts = np.asarray(counts, dtype=np.int64)
    return counts / counts.sum(axis=-1, keepdims=True)


class AdaptiveTables:
    """Integer frequency tables, one row per context, at two adaptation speeds.

    Each row exists twice: a fast table (large increment, halved often: follows local
    statistics) and a slow one (small increment, halved rarely: stable on noise). A
    symbol's probability is the average of the two rows' frequencies, computed as the
    integer ``fast * total_slow + slow * total_fast`` normalized once, so it is exact.
    Counts start at ``init``; a row whose total exceeds its limit is halved (rounding
    up, so no count reaches zero). Row totals are kept alongside the rows (integers, so
    always equal to the row sums). The rules run compiled (``contextkernel``).
    """

    FAST = ck.FAST  # (increment, limit)
    SLOW = ck.SLOW

    def __init__(self, contexts: int, alphabet: int, *, init: np.ndarray | None = None) -> None:
        if init is None:
            init = np.ones((contexts, alphabet), dtype=np.int64)
        self.fast = np.array(np.broadcast_to(init, (contexts, alphabet)), dtype=np.int64)
        self.slow = self.fast.copy()
        self._fast_total = self.fast.sum(axis=1)
        self._slow_total = self._fast_total.copy()
        self._seen = np.zeros(contexts, dtype=np.bool_)  # the update's scratch: all False between calls

    @property
    def alphabet(self) -> int:
        return self.fast.shape[1]

    def mixed_counts(self, ctx: np.ndarray) -> np.ndarray:
        return self.fast[ctx] * self._slow_total[ctx, None] + self.slow[ctx] * self._fast_total[ctx, None]

    def probabilities(self, ctx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The probability row of each symbol's context (into ``out`` (ctx.size, alphabet)
        if given): each row by itself, the same floats however many are computed together."""
        ctx = np.ascontiguousarray(ctx, dtype=np.int64)
        if out is None:
            out = np.empty((ctx.size, self.alphabet), dtype=np.float64)
        ck.table_probabilities(self.fast, self.slow, self._fast_total, self._slow_total, ctx, out)
        return out

    def update(self, ctx: np.ndarray, symbols: np.ndarray) -> None:
        """Count one chunk's symbols, then halve the rows it touched that passed their limit."""
        ck.table_update(self.fast, self.slow, self._fast_total, self._slow_total,
                        np.ascontiguousarray(ctx, dtype=np.int64), np.ascontiguousarray(symbols, dtype=np.int64),
                        self._seen)

    def code_chunks(self, ctx: np.ndarray, symbols: np.ndarray, out: np.ndarray) -> None:
        """The probability rows of known symbols coded in chunks of ``CHUNK`` from the
        first, the tables updated after each chunk (the encoder's side of ``Decoder.adaptive``)."""
        ck.table_chunks(self.fast, self.slow, self._fast_total, self._slow_total,
                        np.ascontiguousarray(ctx, dtype=np.int64), np.ascontiguousarray(symbols, dtype=np.int64),
                        self._seen, out)


class RowModel:
    """Adaptive model over a residual alphabet, read through a per-symbol window.

    Used where each symbol may only take ``width`` values that map into a shared
    residual axis at a per-symbol offset (the local path: the global modality fixes the
    interval a value lies in). Table columns beyond the axis are clipped to the edges.
    """

    def __init__(self, contexts: int, span: int, *, init: np.ndarray | None = None) -> None:
        self.tables = AdaptiveTables(contexts, 2 * span + 1, init=init)
        self.span = span

    def columns(self, offsets: np.ndarray, width: int) -> np.ndarray:
        # offsets[i] = residual of candidate 0 for symbol i; candidate j has offsets[i] + j.
        cols = offsets[:, None] + np.arange(width, dtype=np.int64)[None, :]
        return np.clip(cols, -self.span, self.span) + self.span

    def probabilities(self, ctx: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
        cols = self.columns(offsets, width)
        return counts_to_probabilities(np.take_along_axis(self.tables.mixed_counts(ctx), cols, axis=1))

    def update(self, ctx: np.ndarray, offsets: np.ndarray, symbols: np.ndarray) -> None:
        residual = np.clip(offsets + symbols, -self.span, self.span) + self.span
        self.tables.update(ctx, residual)


class Encoder:
    """Collects symbols into one range-coded stream."""

    def __init__(self) -> None:
        self._coder = stream.queue.RangeEncoder()

    def categorical(self, symbols: np.ndarray, probabilities: np.ndarray) -> None:
        if symbols.size:
            self._coder.encode(
                np.ascontiguousarray(symbols, dtype=np.int32), _FAMILY, np.ascontiguousarray(probabilities)
            )

    def uniform(self, values: np.ndarray, bits: np.ndarray) -> None:
        """Code ``values[i]`` uniformly in ``[0, 2**bits[i])``; zero-bit entries cost nothing."""
        _uniform_pieces(values, bits, self._encode_uniform_piece)

    def _encode_uniform_piece(self, values: np.ndarray, sizes: np.ndarray) -> None:
        self._coder.encode(values.astype(np.int32), _UNIFORM, sizes.astype(np.int32))

    def sized(self, values: np.ndarray, sizes: np.ndarray) -> None:
        """``values[i]`` uniformly in ``[0, sizes[i])``, int32 sizes up to ``2**UNIFORM_PIECE``
        in the order given: one round of ``uniform`` whose order the caller made."""
        if sizes.size:
            self._coder.encode(values, _UNIFORM, sizes)

    def adaptive(self, symbols: np.ndarray, ctx: np.ndarray, tables: AdaptiveTables) -> None:
        # The coder sees the same symbols and probability rows in the same order however
        # they are batched; up to BATCH chunks go to it in one call.
        # One probability buffer for all batches (the coder is done with it when
        # ``categorical`` returns): large planes would otherwise fault in fresh pages.
        buffer = np.empty((min(symbols.size, BATCH * CHUNK), tables.alphabet), dtype=np.float64)
        for start in range(0, symbols.size, BATCH * CHUNK):
            stop = min(symbols.size, start + BATCH * CHUNK)
            probs = buffer[: stop - start]
            tables.code_chunks(ctx[start:stop], symbols[start:stop], probs)
            self.categorical(symbols[start:stop], probs)

    def windowed(self, symbols: np.ndarray, ctx: np.ndarray, offsets: np.ndarray, width: int, model: RowModel) -> None:
        for lo in range(0, symbols.size, CHUNK):
            s, c, o = symbols[lo : lo + CHUNK], ctx[lo : lo + CHUNK], offsets[lo : lo + CHUNK]
            self.categorical(s, model.probabilities(c, o, width))
            model.update(c, o, s)

    def finish(self) -> bytes:
        return self._coder.get_compressed().astype("<u4").tobytes()


class Decoder:
    """Reads symbols back in exactly the order an Encoder wrote them."""

    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise CorruptRecordError(f"entropy stream length {len(data)} is not a multiple of 4")
        self._coder = stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))

    def _decode(self, family, params: np.ndarray) -> np.ndarray:
        try:
            return self._coder.decode(family, params).astype(np.int64)
        except AssertionError:  # constriction's answer to bits no symbol of the model codes
            raise CorruptRecordError("entropy-coded stream is not valid for its model (damaged or crafted)") from None

    def categorical(self, probabilities: np.ndarray) -> np.ndarray:
        if probabilities.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        return self._decode(_FAMILY, np.ascontiguousarray(probabilities))

    def uniform(self, bits: np.ndarray) -> np.ndarray:
        out = np.zeros(bits.shape, dtype=np.int64)

        def piece(positions: np.ndarray, sizes: np.ndarray) -> np.ndarray:
            return self._decode(_UNIFORM, sizes.astype(np.int32))

        return _uniform_pieces(out, bits, piece, decode=True)

    def sized(self, sizes: np.ndarray) -> np.ndarray:
        """What ``Encoder.sized`` coded with these int32 sizes."""
        return self._decode(_UNIFORM, sizes) if sizes.size else np.zeros(0, dtype=np.int64)

    def adaptive(self, ctx: np.ndarray, tables: AdaptiveTables) -> np.ndarray:
        out = np.empty(ctx.size, dtype=np.int64)
        probs = np.empty((min(ctx.size, CHUNK), tables.alphabet), dtype=np.float64)
        for lo in range(0, ctx.size, CHUNK):
            c = ctx[lo : lo + CHUNK]
            s = self.categorical(tables.probabilities(c, probs[: c.size]))
            tables.update(c, s)
            out[lo : lo + CHUNK] = s
        return out

    def windowed(self, ctx: np.ndarray, offsets: np.ndarray, width: int, model: RowModel) -> np.ndarray:
        out = np.empty(ctx.size, dtype=np.int64)
        for lo in range(0, ctx.size, CHUNK):
            c, o = ctx[lo : lo + CHUNK], offsets[lo : lo + CHUNK]
            s = self.categorical(model.probabilities(c, o, width))
            model.update(c, o, s)
            out[lo : lo + CHUNK] = s
        return out


class PieceDecoder:
    """Decodes one ``Encoder.adaptive`` call's symbols in pieces of any length.

    The encoder fixes a chunk's probabilities before coding it and updates the tables
    after it; a reader that learns each piece's contexts only after decoding the
    previous piece (a raster scan, one anti-diagonal at a time) decodes a piece with the
    tables as they were at the start of its chunk, and updates them when a chunk is
    complete: the same probabilities, so the same symbols, whatever the pieces.
    """

    def __init__(self, dec: Decoder, tables: AdaptiveTables) -> None:
        self.dec, self.tables = dec, tables
        self._ctx: list[np.ndarray] = []
        self._sym: list[np.ndarray] = []
        self._filled = 0
        self._rows = None  # every context's probability row, for the current chunk

    def decode(self, ctx: np.ndarray) -> np.ndarray:
        out, at = [], 0
        while at < ctx.size:
            if self._filled == CHUNK:
                # Only the rows of the chunk's contexts change: recompute those.
                ctx_chunk = np.concatenate(self._ctx)
                self.tables.update(ctx_chunk, np.concatenate(self._sym))
                rows = np.unique(ctx_chunk)
                self._rows[rows] = self.tables.probabilities(rows)
                self._ctx, self._sym, self._filled = [], [], 0
            if self._rows is None:
                # Each row is computed as ``probabilities`` computes it (the same integers,
                # one division): the same floats, kept for every context and piece.
                self._rows = self.tables.probabilities(np.arange(self.tables.fast.shape[0]))
            take = min(CHUNK - self._filled, ctx.size - at)
            c = ctx[at : at + take]
            s = self.dec.categorical(self._rows[c])
            self._ctx.append(c)
            self._sym.append(s)
            self._filled += take
            out.append(s)
            at += take
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def pack_bits(values: np.ndarray, bits: np.ndarray) -> bytes:
    """The low ``bits[i]`` bits of each ``values[i]``, most significant first, packed into
    bytes (zero-padded at the end). Raw bits cost the same here as coded uniformly."""
    bits = np.asarray(bits, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    pieces = []
    for lo in range(0, bits.size, _PACK_BLOCK):  # bounded temporaries on large planes
        b, v = bits[lo : lo + _PACK_BLOCK], values[lo : lo + _PACK_BLOCK]
        owner = np.repeat(np.arange(b.size), b)
        shift = np.cumsum(b)[owner] - 1 - np.arange(owner.size)
        pieces.append(((v[owner] >> shift) & 1).astype(np.uint8))
    return np.packbits(np.concatenate(pieces)).tobytes() if pieces else b""


_PACK_BLOCK = 1 << 18


class BitReader:
    """Reads back what ``pack_bits`` wrote, in pieces.

    Each value of up to WINDOW_BITS bits is cut out of the 64-bit big-endian word that
    starts at its first byte (all such words are built once): a gather and a shift per
    value, not an operation per bit.
    """

    WINDOW_BITS = 56  # 64 bits less the largest offset of a value's first bit in its byte

    def __init__(self, data: bytes) -> None:
        raw = np.frombuffer(data, dtype=np.uint8)
        self._size = 8 * raw.size
        padded = np.zeros(raw.size + 8, dtype=np.uint64)
        padded[: raw.size] = raw
        self._words = np.zeros(raw.size + 1, dtype=np.uint64)
        for k in range(8):
            self._words |= padded[k : k + raw.size + 1] << np.uint64(56 - 8 * k)
        self._at = 0

    def read(self, bits: np.ndarray) -> np.ndarray:
        bits = np.asarray(bits, dtype=np.int64)
        if not bits.size:
            return np.zeros(0, dtype=np.int64)
        if int(bits.max()) > self.WINDOW_BITS or int(bits.min()) < 0:
            raise CorruptRecordError(f"a raw field of {int(bits.max())} bits (at most {self.WINDOW_BITS})")
        end = np.cumsum(bits) + self._at
        if int(end[-1]) > self._size:
            raise CorruptRecordError("raw bits end early")
        start = (end - bits).astype(np.uint64)
        self._at = int(end[-1])
        ubits = bits.astype(np.uint64)
        word = self._words[start >> np.uint64(3)]
        # shift 64 - offset - bits may be 64 for zero-bit fields: the mask is 0 there.
        field = word >> (np.uint64(64) - (start & np.uint64(7)) - ubits)
        return (field & ((np.uint64(1) << ubits) - np.uint64(1))).astype(np.int64)


_ONE = 1 << 30


def _fixed_pow(r: int, n: int) -> int:
    """r**n in 2**-30 fixed point, truncating after every product (exact integer steps)."""
    out, base = _ONE, r
    while n:
        if n & 1:
            out = (out * base) >> 30
        base = (base * base) >> 30
        n >>= 1
    return out


def geometric_prior(scales: list[int], lo: np.ndarray, hi: np.ndarray, *, total: int) -> np.ndarray:
    """Integer prior counts; row i gives column j the mass of a geometric law of mean about
    ``scales[i]`` over the integers [lo[j], hi[j]), rows scaled to sum to about ``total``.

    Pure integer arithmetic, so every machine builds the same table.
    """
    rows = []
    for s in scales:
        r = _ONE - _ONE // max(int(s), 2)
        w = np.array([_fixed_pow(r, int(a)) - _fixed_pow(r, int(b)) for a, b in zip(lo, hi)], dtype=np.int64)
        rows.append(np.maximum(1, (w * total) // max(int(w.sum()), 1)))
    return np.stack(rows)


# Uniform sizes are limited to < 2**24 by constriction: wide values go in 12-bit pieces.
UNIFORM_PIECE = _PIECE = 12


def _uniform_pieces(values: np.ndarray, bits: np.ndarray, op, *, decode: bool = False) -> np.ndarray:
    """Split each value into <=12-bit pieces (low piece first); code the pieces of one round
    grouped by width (increasing, in index order within a width), one size per piece.

    On encode ``op(piece_values, sizes)`` codes; on decode ``op(positions, sizes)`` returns
    the pieces, which are reassembled into ``values`` (modified in place and returned).
    (The grouping is the order in which v1 coded one call per width: the same symbols with
    the same sizes in the same order, so the same bytes.)
    """
    bits = np.asarray(bits, dtype=np.int64)
    if not bits.size or bits.max() <= _PIECE:
        # One round (the loop below would take the same steps): the usual case.
        active = np.flatnonzero(bits > 0)
        if active.size:
            order = active[np.argsort(bits[active], kind="stable")]
            sizes = np.int64(1) << bits[order]
            if decode:
                values[order] |= op(order, sizes)
            else:
                op(values[order] & (sizes - 1), sizes)
        return values
    remaining = bits.copy()
    shift = np.zeros_like(bits)
    while True:
        active = np.flatnonzero(remaining > 0)
        if not active.size:
            return values
        width = np.minimum(remaining[active], _PIECE)
        order = active[np.argsort(width, kind="stable")]
        sizes = np.int64(1) << np.minimum(remaining[order], _PIECE)
        if decode:
            values[order] |= op(order, sizes) << shift[order]
        else:
            op((values[order] >> shift[order]) & (sizes - 1), sizes)
        shift[active] += width
        remaining[active] -= width
