"""``wavelet53-v2``: the 5/3 wavelet path with compiled band coders (`fast`'s
``per-plane-fast-v4`` to ``v6`` and `max`'s ``per-plane-v8`` take it:
``medcodec.coders.selectors``).

The transform, the band order and the division of a band by the greatest common
divisor of its coefficients are ``wavelet53-v1``'s (:mod:`medcodec.wavelet`). What
changes is how a band is coded: v1 tried a sparse run coder, a row-wise context coder
and the interlaced path in Python, band by band; v2 codes

* the low band with the compiled raster coder (``raster-wpc-v1``, on the band less its
  minimum) when it spans at most ``RASTER_MAX_BITS`` bits, and
* every other band (and a wider low band) with one compiled raster pass of
  context-modelled binary decisions (:mod:`medcodec.coders.bandkernel`): each
  coefficient in the context of its causal neighbours, its parent in the next coarser
  band of the same orientation and the neighbours' magnitudes.

The stream says everything it was coded with: the number of levels, then per band its
mode and arguments, then the bands' payloads, coarsest first::

    levels, then per band: mode (0 constant | 5 band kernel | 6 raster),
        mode 0: value;  modes 5/6: scale, payload length
    payloads: mode 5: max_class (varint) + kernel bytes (first byte, always 0, left out)
              mode 6: lo, bits (varints) + a raster-wpc-v1 stream
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptRecordError
from ..paths import IntReader, IntWriter, PlaneInfo
from ..wavelet import MAX_BAND_BITS, _parent, decode_bands, encode_bands
from . import register
from .raster_wpc import RasterWPCGlobalPathCoder

MODE_CONSTANT, MODE_BAND, MODE_RASTER = 0, 5, 6
RASTER_MAX_BITS = 20  # the raster coder's residual classes stop at 2**24; keep a margin
_NO_PARENT = np.zeros((1, 1), dtype=np.int64)


def _band_encode(band: np.ndarray, parent, scale: int) -> bytes:
    from .bandkernel import code_band

    band = np.ascontiguousarray(band, dtype=np.int64)
    max_class = int(np.abs(band).max()).bit_length()
    ref = _NO_PARENT if parent is None or parent is False else np.ascontiguousarray(parent, dtype=np.int64)
    size = band.size * (max_class + 3) // 8 + 4096
    while True:
        buf = np.zeros(size, dtype=np.uint8)
        n = code_band(band, ref, ref is not _NO_PARENT, scale, max_class, False, buf)
        if n >= 0:
            break
        size *= 4
    head = IntWriter()
    head.put(max_class)
    return bytes(head.buf) + buf[1:n].tobytes()


def _band_decode(chunk: bytes, shape: tuple[int, int], parent, scale: int) -> np.ndarray:
    from .bandkernel import code_band

    reader = IntReader(chunk)
    max_class = reader.get()
    if not 0 <= max_class <= MAX_BAND_BITS + 1:
        raise CorruptRecordError(f"wavelet53-v2 band claims class {max_class}")
    buf = np.frombuffer(bytearray(b"\0" + chunk[reader.at:]), dtype=np.uint8)
    band = np.zeros(shape, dtype=np.int64)
    ref = _NO_PARENT if parent is None or parent is False else np.ascontiguousarray(parent, dtype=np.int64)
    if code_band(band, ref, ref is not _NO_PARENT, scale, max_class, True, buf) < 0:
        raise CorruptRecordError("wavelet53-v2 band stream decodes to a class above its header's")
    return band


@register
class WaveletV2GlobalPathCoder:
    """Global path coded as 5/3 wavelet subbands with compiled band coders (module doc)."""

    model_id = "wavelet53-v2"
    # Its stream does not depend on the preset: the band kernel reads none, nor does the
    # low band's raster-wpc-v1. `max`'s selector and `fast`'s share its streams of one
    # image (``coders._kept_stream``); tests/test_coders.py checks both presets give one stream.
    preset_free = True

    def encode(self, plane: np.ndarray, info: PlaneInfo, prev: np.ndarray | None = None) -> bytes:
        return encode_bands(plane, lambda i, band, bands: _code_band(i, band, bands, info.preset))

    def decode(self, data: bytes, info: PlaneInfo, prev: np.ndarray | None = None) -> np.ndarray:
        def band(i, mode, chunk, shape, scale, bands):
            if mode == MODE_BAND:
                return _band_decode(chunk, shape, _parent(bands, i), scale)
            head = IntReader(chunk)
            lo, bits = head.get(), head.get()
            if not 1 <= bits <= RASTER_MAX_BITS:
                raise CorruptRecordError(f"wavelet low band claims {bits} bits")
            sub = PlaneInfo(rows=shape[0], cols=shape[1], bits=bits, k=0, preset=info.preset)
            return RasterWPCGlobalPathCoder().decode(chunk[head.at:], sub) + lo

        # mode 6 (the raster coder) is for the low band only
        return decode_bands(data, info, lambda i, mode: mode in (MODE_CONSTANT, MODE_BAND) or (
            mode == MODE_RASTER and i == 0), band)


def _code_band(i: int, band: np.ndarray, bands: list[np.ndarray], preset: str) -> tuple[int, bytes, int]:
    """(mode, payload, scale) of band ``i``: constant, the raster coder (a low band of at most
    RASTER_MAX_BITS bits) or the band kernel."""
    if band.size == 0 or (band == band.flat[0]).all():
        return MODE_CONSTANT, b"", 0
    scale = int(np.gcd.reduce(band.ravel()))
    units = band // scale
    lo, hi = int(units.min()), int(units.max())
    bits = (hi - lo).bit_length()
    if bits > MAX_BAND_BITS:
        raise ValueError(f"wavelet band spans {bits} bits (at most {MAX_BAND_BITS})")
    if i == 0 and bits <= RASTER_MAX_BITS:
        head = IntWriter()
        head.put(lo)
        head.put(bits)
        sub = PlaneInfo(rows=band.shape[0], cols=band.shape[1], bits=bits, k=0, preset=preset)
        return MODE_RASTER, bytes(head.buf) + RasterWPCGlobalPathCoder().encode(units - lo, sub), scale
    return MODE_BAND, _band_encode(units, _parent(bands, i), scale), scale
