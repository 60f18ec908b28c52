"""Global path in the reversible 5/3 wavelet domain (JPEG 2000's lossless transform).

PACS exports often hold images that were once compressed lossily with JPEG 2000 and
stored decoded. Such an image is the inverse wavelet transform of quantized
coefficients: in the wavelet domain most of its detail coefficients are exactly zero
(held-out 693_UNCI.dcm: 1,438 non-zero of 261,888), which no pixel-domain predictor
sees. This coder transforms the plane with the integer 5/3 lifting of JPEG 2000
(ISO/IEC 15444-1 Annex F: whole-sample symmetric extension; each level filters columns,
then rows; up to ``LEVELS`` levels) and codes each subband on its own, coarsest first:

* mode 0: every coefficient equal (one varint);
* mode 1: the band, offset to be non-negative, as a plane of the interlaced tree path
  (``paths.TreeGlobalPathCoder``);
* mode 2: sparse: the number of non-zero coefficients, then for each in raster order
  the run of zeros before it and its value, as residual tokens with adaptive tables
  (values in a context of the run's length class) and raw low bits;
* mode 3: as mode 1 with ``paths.GlobalPathCoder`` (fixed contexts: `fast`);
* mode 4 (detail bands): row by row, each coefficient in a context of the magnitudes of
  the two rows above and of its parent in the next coarser band (see below).

Bands are coded under the record's preset (modes 1 and 3 fit their predictors as it says).

Modes 1-4 first divide the band by the greatest common divisor of its coefficients
(written before the band): quantized bands are multiples of their step (693_UNCI's of
32 to 256). The encoder tries the modes ``_band`` lists and keeps the smallest.
Everything is integer arithmetic (shifts and adds), so every machine decodes the same
plane.
"""

from __future__ import annotations

import numpy as np

from .coders import register
from .entropy import AdaptiveTables, Decoder, Encoder
from .errors import CorruptRecordError
from .paths import (
    GlobalPathCoder,
    IntReader,
    IntWriter,
    PlaneInfo,
    TreeGlobalPathCoder,
    _token_scale_rows,
    activity_bucket,
    detokenize,
    raw_bits_of,
    token_alphabet,
    tokenize,
    unzigzag,
    zigzag,
)

LEVELS = 5  # JPEG 2000's default decomposition depth
MAX_BAND_BITS = 30  # coefficients of 16-bit planes need at most about 22
# Mode 2 is tried on bands with at most this fraction of non-zero coefficients.
SPARSE_MAX_DENSITY = 0.5
_RUN_CLASSES = 8
_MANTISSA = 2


# --- the transform ------------------------------------------------------------------------


def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One 5/3 analysis step along axis 0: (low ceil(n/2), high floor(n/2))."""
    n = x.shape[0]
    even, odd = x[0::2], x[1::2]
    if n < 2:
        return even.copy(), odd.copy()
    right = even[1:] if n % 2 else np.concatenate([even[1:], even[-1:]])  # x[n] mirrors x[n-2]
    high = odd - ((even[: odd.shape[0]] + right[: odd.shape[0]]) >> 1)
    low = even + ((_before(high, even.shape[0]) + _after(high, even.shape[0]) + 2) >> 2)
    return low, high


def _merge(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Exact inverse of :func:`_split`."""
    n = low.shape[0] + high.shape[0]
    if high.shape[0] == 0:
        return low.copy()
    even = low - ((_before(high, low.shape[0]) + _after(high, low.shape[0]) + 2) >> 2)
    right = even[1:] if n % 2 else np.concatenate([even[1:], even[-1:]])
    odd = high + ((even[: high.shape[0]] + right[: high.shape[0]]) >> 1)
    out = np.empty((n,) + low.shape[1:], dtype=np.int64)
    out[0::2], out[1::2] = even, odd
    return out


def _before(high: np.ndarray, n_even: int) -> np.ndarray:
    """high[i - 1] for each even sample i (high[-1] mirrors high[0])."""
    return np.concatenate([high[:1], high])[:n_even]


def _after(high: np.ndarray, n_even: int) -> np.ndarray:
    """high[i] for each even sample i (past the end it mirrors the last one)."""
    return high if high.shape[0] == n_even else np.concatenate([high, high[-1:]])


def levels_for(rows: int, cols: int) -> int:
    """Decomposition depth: LEVELS, fewer where a side would drop below 2 samples."""
    n, lv = min(rows, cols), 0
    while lv < LEVELS and n >= 2:
        n, lv = (n + 1) // 2, lv + 1
    return lv


def forward(plane: np.ndarray, levels: int) -> list[np.ndarray]:
    """Subbands coarsest first: [LL, (HL, LH, HH) of the coarsest level, ..., of the finest]."""
    from .liftkernel import split_cols, split_rows  # numba: loaded on first use

    ll = np.ascontiguousarray(plane, dtype=np.int64)
    details = []
    for _ in range(levels):
        low, high = split_rows(ll)  # columns (vertical filtering) first: _split along axis 0
        ll, hl = split_cols(low)  # then rows: _split along axis 1
        lh, hh = split_cols(high)
        details.append((hl, lh, hh))
    return [ll] + [b for trio in reversed(details) for b in trio]


def inverse(bands: list[np.ndarray]) -> np.ndarray:
    from .liftkernel import merge_cols, merge_rows

    def c(band):
        return np.ascontiguousarray(band, dtype=np.int64)

    ll = c(bands[0])
    for i in range(1, len(bands), 3):
        hl, lh, hh = bands[i : i + 3]
        low = merge_cols(ll, c(hl))  # _merge along axis 1
        high = merge_cols(c(lh), c(hh))
        ll = merge_rows(low, high)
    return ll


def band_shapes(rows: int, cols: int, levels: int) -> list[tuple[int, int]]:
    """The shapes :func:`forward` produces, without transforming anything."""
    shapes, r, c = [], rows, cols
    for _ in range(levels):
        lr, hr, lc, hc = (r + 1) // 2, r // 2, (c + 1) // 2, c // 2
        shapes.append(((lr, hc), (hr, lc), (hr, hc)))
        r, c = lr, lc
    return [(r, c)] + [s for trio in reversed(shapes) for s in trio]


# --- sparse bands ---------------------------------------------------------------------------


def _run_class(runs: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(np.array([1, 2, 4, 8, 16, 64, 256]), runs, side="right"), _RUN_CLASSES - 1)


def _sparse_encode(band: np.ndarray) -> bytes:
    flat = band.ravel()
    where = np.flatnonzero(flat)
    runs = np.diff(where, prepend=-1) - 1
    head = IntWriter()
    head.put(int(where.size))
    enc = Encoder()
    if where.size:
        bits = int(flat.size).bit_length() + 1
        t_run, x_run, n_run = tokenize(runs, _MANTISSA)
        enc.adaptive(t_run, np.zeros_like(t_run), AdaptiveTables(1, token_alphabet(bits, _MANTISSA)))
        enc.uniform(x_run, n_run)
        values = zigzag(flat[where]) - 1  # never zero
        t_val, x_val, n_val = tokenize(values, _MANTISSA)
        enc.adaptive(t_val, _run_class(runs), AdaptiveTables(_RUN_CLASSES, token_alphabet(MAX_BAND_BITS, _MANTISSA)))
        enc.uniform(x_val, n_val)
    return bytes(head.buf) + enc.finish()


def _sparse_decode(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    reader = IntReader(data)
    count = reader.get()
    size = shape[0] * shape[1]
    if not 0 <= count <= size:
        raise CorruptRecordError(f"sparse band claims {count} non-zero coefficients of {size}")
    flat = np.zeros(size, dtype=np.int64)
    if count:
        dec = Decoder(data[reader.at :])
        bits = int(size).bit_length() + 1
        t_run = dec.adaptive(np.zeros(count, dtype=np.int64), AdaptiveTables(1, token_alphabet(bits, _MANTISSA)))
        runs = detokenize(t_run, dec.uniform(raw_bits_of(t_run, _MANTISSA)), _MANTISSA)
        where = np.cumsum(runs + 1) - 1
        if where[-1] >= size:
            raise CorruptRecordError("sparse band runs past its end")
        t_val = dec.adaptive(_run_class(runs), AdaptiveTables(_RUN_CLASSES, token_alphabet(MAX_BAND_BITS, _MANTISSA)))
        flat[where] = unzigzag(detokenize(t_val, dec.uniform(raw_bits_of(t_val, _MANTISSA)), _MANTISSA) + 1)
    return flat.reshape(shape)


# --- detail bands by neighbour magnitude ------------------------------------------------
# Mode 4 codes a detail band row by row: each coefficient's token (zigzag, two mantissa
# bits, raw low bits) in a context of the magnitudes already known around it, those of
# the row above (N + (NW + NE) / 2 + NN / 2) as an activity bucket and that of its parent
# (same orientation, next coarser level, at (r // 2, c // 2)) in 6 classes: wavelet
# coefficients cluster in space and across scales. A row's contexts depend only on
# earlier rows and coarser bands, so the decoder decodes a row in one step.
_PARENT_CLASSES = 6


def _parent(bands: list, i: int):
    """The coarser band of the same orientation (None for the coarsest details; False for LL)."""
    if i == 0:
        return False
    return bands[i - 3] if i >= 4 else None


def _row_contexts(above: np.ndarray, above2: np.ndarray, parent_row: np.ndarray | None) -> np.ndarray:
    """Contexts of one row (or, with 2-D arguments, of many rows: columns on the last axis)."""
    a = np.abs(above)
    act = a.copy()
    act[..., 1:] += a[..., :-1] >> 1
    act[..., :-1] += a[..., 1:] >> 1
    act += np.abs(above2) >> 1
    bucket = activity_bucket(act)
    if parent_row is None:
        return bucket * _PARENT_CLASSES
    pc = np.searchsorted(np.array([1, 2, 4, 8, 16]), parent_row, side="right")
    return bucket * _PARENT_CLASSES + pc


def _band_contexts(band: np.ndarray, prow: np.ndarray | None) -> np.ndarray:
    """``_row_contexts`` of every row of ``band`` at once (encoder: it knows every row)."""
    padded = np.zeros((band.shape[0] + 2, band.shape[1]), dtype=np.int64)  # band two rows down
    padded[2:] = band
    return _row_contexts(padded[1:-1], padded[:-2], prow)


def _parent_rows(parent, scale: int, shape: tuple[int, int]):
    """Per row of the band: its parent's magnitudes in this band's units (or None)."""
    if parent is None:
        return None
    rows = np.minimum(np.arange(shape[0]) // 2, parent.shape[0] - 1)
    cols = np.minimum(np.arange(shape[1]) // 2, parent.shape[1] - 1)
    return np.abs(parent[rows][:, cols]) // scale


def _context_tables(bits: int) -> AdaptiveTables:
    prior = _token_scale_rows(bits, _MANTISSA)
    return AdaptiveTables(
        prior.shape[0] * _PARENT_CLASSES, prior.shape[1], init=np.repeat(prior, _PARENT_CLASSES, axis=0)
    )


def _context_encode(band: np.ndarray, scale: int, parent) -> bytes:
    z = zigzag(band)
    bits = max(1, int(z.max()).bit_length())
    head = IntWriter()
    head.put(bits)
    tables, enc = _context_tables(bits), Encoder()
    ctx = _band_contexts(band, _parent_rows(parent, scale, band.shape))
    token, extra, nbits = tokenize(z, _MANTISSA)
    for r in range(band.shape[0]):  # one adaptive call per row, as the decoder reads them
        enc.adaptive(token[r], ctx[r], tables)
        enc.uniform(extra[r], nbits[r])
    return bytes(head.buf) + enc.finish()


def _context_decode(data: bytes, shape: tuple[int, int], scale: int, parent) -> np.ndarray:
    reader = IntReader(data)
    bits = reader.get()
    if not 1 <= bits <= MAX_BAND_BITS + 1:
        raise CorruptRecordError(f"context-coded band claims {bits} bits")
    dec = Decoder(data[reader.at :])
    tables = _context_tables(bits)
    prow = _parent_rows(parent, scale, shape)
    band = np.zeros(shape, dtype=np.int64)
    zero = np.zeros(shape[1], dtype=np.int64)
    for r in range(shape[0]):
        above = band[r - 1] if r >= 1 else zero
        above2 = band[r - 2] if r >= 2 else zero
        token = dec.adaptive(_row_contexts(above, above2, None if prow is None else prow[r]), tables)
        band[r] = unzigzag(detokenize(token, dec.uniform(raw_bits_of(token, _MANTISSA)), _MANTISSA))
    return band


# --- the coder --------------------------------------------------------------------------------


def encode_bands(plane: np.ndarray, band_coder) -> bytes:
    """A wavelet stream: the levels, each band's mode and arguments, then the payloads.

    ``band_coder(i, band, bands) -> (mode, payload, scale)`` codes band ``i`` (mode 0:
    every coefficient equal, no payload); the header gives a coded band's scale (the gcd
    of its coefficients, which the coder has computed) and its payload's length. Shared by
    every wavelet coder."""
    levels = levels_for(*plane.shape)
    out = IntWriter()
    out.put(levels)
    chunks = []
    bands = forward(plane, levels)
    for i, band in enumerate(bands):
        mode, payload, scale = band_coder(i, band, bands)
        out.put(mode)
        if mode == 0:
            out.put(int(band.flat[0]) if band.size else 0)
        else:
            out.put(scale)
            out.put(len(payload))
            chunks.append(payload)
    return bytes(out.buf) + b"".join(chunks)


def decode_bands(data: bytes, info: PlaneInfo, modes, band_decoder) -> np.ndarray:
    """Inverse of :func:`encode_bands`: ``modes(i, mode)`` says whether band ``i`` may
    have ``mode``; ``band_decoder(i, mode, chunk, shape, scale, bands)`` decodes a coded
    band's payload in units of its scale, ``bands`` holding the bands before it (in
    coefficients). Damage of any kind is a CorruptRecordError."""
    reader = IntReader(data)
    levels = reader.get()
    if levels != levels_for(info.rows, info.cols):
        raise CorruptRecordError(f"wavelet stream claims {levels} levels for a {info.rows}x{info.cols} plane")
    heads = []
    for i, shape in enumerate(band_shapes(info.rows, info.cols, levels)):
        mode = reader.get()
        if not modes(i, mode):
            raise CorruptRecordError(f"wavelet band {i} names mode {mode}, unknown to its coder")
        if mode == 0:
            heads.append((shape, mode, reader.get(), 0))
            continue
        scale = reader.get()
        if not 1 <= scale < (1 << MAX_BAND_BITS):
            raise CorruptRecordError(f"wavelet band claims scale {scale}")
        heads.append((shape, mode, scale, reader.get()))
    at = reader.at
    bands: list[np.ndarray] = []
    for i, (shape, mode, arg, size) in enumerate(heads):
        if mode == 0:
            bands.append(np.full(shape, arg, dtype=np.int64))
            continue
        if size < 0 or at + size > len(data):
            raise CorruptRecordError("wavelet band stream runs past the plane's stream")
        chunk, at = data[at : at + size], at + size
        bands.append(band_decoder(i, mode, chunk, shape, arg, bands) * arg)
    plane = inverse(bands)
    if plane.min(initial=0) < 0 or plane.max(initial=0) >= (1 << info.bits):
        raise CorruptRecordError("wavelet path decoded a value outside the stored range")
    return plane


@register
class WaveletGlobalPathCoder:
    """Global path coded as 5/3 wavelet subbands (see module doc). No previous plane."""

    model_id = "wavelet53-v1"

    def encode(self, plane: np.ndarray, info: PlaneInfo, prev: np.ndarray | None = None) -> bytes:
        return encode_bands(plane, lambda i, band, bands: self._band(band, info.preset, _parent(bands, i)))

    def decode(self, data: bytes, info: PlaneInfo, prev: np.ndarray | None = None) -> np.ndarray:
        def band(i, mode, chunk, shape, scale, bands):
            if mode == 2:
                return _sparse_decode(chunk, shape)
            if mode == 4:
                return _context_decode(chunk, shape, scale, _parent(bands, i))
            return self._dense_decode(chunk, shape, mode, info.preset)

        # mode 4 (context-coded) is for detail bands only
        return decode_bands(data, info, lambda i, mode: mode in (0, 1, 2, 3) or (mode == 4 and i > 0), band)

    @staticmethod
    def _band(band: np.ndarray, preset: str, parent) -> tuple[int, bytes, int]:
        """(mode, stream, scale) of the smallest coding tried: `max` tries the tree path, sparse
        runs and (detail bands) the context coder; `fast` codes the low band with
        ``interlaced-ls-v1`` and detail bands with the cheaper two only."""
        if band.size == 0 or (band == band.flat[0]).all():
            return 0, b"", 0
        scale = int(np.gcd.reduce(band.ravel()))
        band = band // scale
        lo, hi = int(band.min()), int(band.max())
        bits = (hi - lo).bit_length()
        if bits > MAX_BAND_BITS:
            raise ValueError(f"wavelet band spans {bits} bits (at most {MAX_BAND_BITS})")
        tries = []
        if preset != "fast" or parent is False:
            head = IntWriter()
            head.put(lo)
            head.put(bits)
            info = PlaneInfo(rows=band.shape[0], cols=band.shape[1], bits=bits, k=0, preset=preset)
            mode = 3 if preset == "fast" else 1
            tries.append((mode, bytes(head.buf) + _DENSE[mode]().encode(band - lo, info)))
        if np.count_nonzero(band) <= SPARSE_MAX_DENSITY * band.size:
            tries.append((2, _sparse_encode(band)))
        if parent is not False:  # a detail band
            tries.append((4, _context_encode(band, scale, parent)))
        mode, stream = min(tries, key=lambda t: len(t[1]))
        return mode, stream, scale

    @staticmethod
    def _dense_decode(chunk: bytes, shape: tuple[int, int], mode: int, preset: str) -> np.ndarray:
        reader = IntReader(chunk)
        lo, bits = reader.get(), reader.get()
        if not 1 <= bits <= MAX_BAND_BITS:
            raise CorruptRecordError(f"wavelet band claims {bits} bits")
        info = PlaneInfo(rows=shape[0], cols=shape[1], bits=bits, k=0, preset=preset)
        return _DENSE[mode]().decode(chunk[reader.at :], info) + lo


_DENSE = {1: TreeGlobalPathCoder, 3: GlobalPathCoder}
