"""Difference coders: a registered coder run on ``plane - prev``.

Colour images stored as RGB are mostly grey (R = G = B) in medical practice
(ultrasound, screen captures), and the frames of a cine often repeat: there the
difference to the previous plane is 0 and smooth where it is not, which a raster coder
codes almost for free. The difference, offset by ``2**bits - 1``, is coded by the base
coder with ``bits + 1`` bits and no previous plane; decoding needs the previous plane.

A difference coder is data (its id and its base coder's id)::

    RASTER_WP_DIFF_V1 = register(DifferenceCoder("raster-wp-diff-v1", "raster-wp-v1"))
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import CorruptRecordError
from . import coder_for


@dataclass(frozen=True)
class DifferenceCoder:
    """The coder ``base`` (a registered id) on ``plane - prev + 2**bits - 1``."""

    model_id: str
    base: str

    def base_coder(self):
        return coder_for(self.base)

    @staticmethod
    def wide(info):
        """The base coder's plane info: one bit wider."""
        return replace(info, bits=info.bits + 1)

    def encode(self, plane: np.ndarray, info, prev: np.ndarray | None = None) -> bytes:
        if prev is None or np.shape(prev) != np.shape(plane):
            raise ValueError("the difference coder needs a previous plane of the same shape")
        offset = (1 << info.bits) - 1
        diff = np.asarray(plane, dtype=np.int64) - np.asarray(prev, dtype=np.int64) + offset
        return self.base_coder().encode(diff, self.wide(info), None)

    def decode(self, data: bytes, info, prev: np.ndarray | None = None) -> np.ndarray:
        if prev is None or np.shape(prev) != (info.rows, info.cols):
            raise CorruptRecordError("a difference-coded plane has no previous plane")
        return self.finish(self.base_coder().decode(data, self.wide(info), None), prev, info)

    @staticmethod
    def finish(diff: np.ndarray, prev: np.ndarray, info) -> np.ndarray:
        """The plane from its decoded difference to ``prev``."""
        offset = (1 << info.bits) - 1
        out = diff + np.asarray(prev, dtype=np.int64) - offset
        if out.min(initial=0) < 0 or out.max(initial=0) > offset:
            raise CorruptRecordError("a difference-coded plane decoded a value outside the stored range")
        return out
