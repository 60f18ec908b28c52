"""``raster-wpc-v1``, ``raster-wpc-v2`` and ``raster-wpc-v3``: the compiled raster
coder, and their difference forms ``raster-wpc-diff-v1``, ``-v2`` and ``-v3``.

The per-pixel model and the range coder are in :mod:`medcodec.coders.wpkernel`. v2 is
v1 with a run mode (where W, N, NW and NE are equal, one decision asks whether the pixel
is too, and a pixel that is skips the predictor: flat backgrounds, padding, text and
graphics code faster and smaller) and fewer modelled decisions per residual (the sign
and the mantissa bits below the top one are equiprobable). v3 is v2 with a lighter
predictor and probability model (`fast` since per-plane-fast-v6).

A stream is one version byte (1, 2 or 3: the id's), one flags byte (bit 0: the previous
plane was used as a predictor) and the range coder's bytes (its first byte, always 0,
left out). The stream needs nothing from the record's preset: what it was coded with,
it says.
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptRecordError
from . import register
from .difference import DifferenceCoder

_FLAG_PREV = 1
_NO_PLANE = np.zeros((1, 1), dtype=np.int64)


def _check_range(plane: np.ndarray, maxv: int) -> None:
    if plane.size and (int(plane.min()) < 0 or int(plane.max()) > maxv):
        raise ValueError(f"plane values must lie in 0..{maxv}")


@register
class RasterWPCGlobalPathCoder:
    """Weighted predictor + bias cancellation + context-modelled binary range coding,
    one compiled raster pass per plane (``wpkernel.code_plane``)."""

    model_id = "raster-wpc-v1"
    stream_version = 1  # also the kernel's model: wpkernel.code_plane's version

    def encode(self, plane: np.ndarray, info, prev: np.ndarray | None = None) -> bytes:
        from .wpkernel import code_plane  # numba: imported (and its cache loaded) on first use

        plane = np.ascontiguousarray(plane, dtype=np.int64)
        maxv = (1 << info.bits) - 1
        _check_range(plane, maxv)
        use_prev = prev is not None and prev.shape == plane.shape
        ref = np.ascontiguousarray(prev, dtype=np.int64) if use_prev else _NO_PLANE
        # Room for every sample at its full width and a margin: residual codes longer
        # than that are possible only on adversarial planes, which get a larger buffer.
        size = plane.size * (info.bits + 2) // 8 + 4096
        while True:
            buf = np.empty(size, dtype=np.uint8)  # the kernel writes every byte it returns
            n = code_plane(plane, ref, use_prev, maxv, False, buf, self.stream_version)
            if n >= 0:
                break
            size *= 4
        head = bytes((self.stream_version, _FLAG_PREV if use_prev else 0))
        return head + buf[1:n].tobytes()

    def decode(self, data: bytes, info, prev: np.ndarray | None = None) -> np.ndarray:
        if len(data) < 2 or data[0] != self.stream_version or data[1] & ~_FLAG_PREV:
            raise CorruptRecordError(
                f"{self.model_id} stream header {data[:2].hex() or 'missing'}; "
                f"its version byte is {self.stream_version}")
        from .wpkernel import code_plane

        use_prev = bool(data[1] & _FLAG_PREV)
        if use_prev and (prev is None or prev.shape != (info.rows, info.cols)):
            raise CorruptRecordError(f"{self.model_id} stream was coded with a previous plane this plane does not have")
        ref = np.ascontiguousarray(prev, dtype=np.int64) if use_prev else _NO_PLANE
        buf = np.frombuffer(bytearray(b"\0" + data[2:]), dtype=np.uint8)  # writable: one kernel both ways
        plane = np.empty((info.rows, info.cols), dtype=np.int64)  # the kernel writes every pixel
        if code_plane(plane, ref, use_prev, (1 << info.bits) - 1, True, buf, self.stream_version) < 0:
            raise CorruptRecordError(f"{self.model_id} stream decodes to a value outside the plane's range")
        return plane


# raster-wpc-v1 on ``plane - prev + maxv`` (one bit wider): for planes that equal their
# previous plane at most pixels (colour samples of a nearly grey image), where the
# difference is mostly zero and its non-zero part is what is left to code.
RASTER_WPC_DIFF_V1 = register(DifferenceCoder("raster-wpc-diff-v1", RasterWPCGlobalPathCoder.model_id))


@register
class RasterWPCV2GlobalPathCoder(RasterWPCGlobalPathCoder):
    """raster-wpc-v1 with the kernel's run mode and leaner residual. Whole `fast` records,
    train split: as small as v1's (+0.03%), encoded 20% and decoded 18% faster; flat
    images smaller and about twice as fast (schemas/FORMAT.md 6r and "Why the presets")."""

    model_id = "raster-wpc-v2"
    stream_version = 2


RASTER_WPC_DIFF_V2 = register(DifferenceCoder("raster-wpc-diff-v2", RasterWPCV2GlobalPathCoder.model_id))


@register
class RasterWPCV3GlobalPathCoder(RasterWPCGlobalPathCoder):
    """raster-wpc-v2 with a lighter model (schemas/FORMAT.md 6u): no plain-mean
    sub-predictors, an 8-tap filter whose step multiplies by a reciprocal and whose weights
    are clamped every 4096 pixels, and one probability estimate per context slot. Whole `fast`
    records, train split: 0.20% larger than with v2, encoded 1.24x and decoded 1.27x as
    fast (schemas/FORMAT.md "Why the presets")."""

    model_id = "raster-wpc-v3"
    stream_version = 3


RASTER_WPC_DIFF_V3 = register(DifferenceCoder("raster-wpc-diff-v3", RasterWPCV3GlobalPathCoder.model_id))
