"""``raster-wp-v4``: raster-wp-v3's model with its coding inside the compiled kernel, and
its difference form ``raster-wp-diff-v4``.

v3 codes its tokens with constriction, one anti-diagonal per call (adaptive count tables
updated every 512 symbols): the decoder returns to Python 2 rows + cols times per plane,
and the range coder's per-symbol work on a 50-70 token row was a quarter of the decode
(MR2_J2KR, 1 M pixels: 0.08 s of 0.31 s, with 0.11 s in the model). v4 keeps v3's
encoder and side information unchanged (the same tree, fitted predictors and leaf table
choices) and codes the same tokens in raster order with a binary range coder in the
kernel (``wp4kernel``): each token down a binary tree of per-leaf adaptive
probabilities, its raw bits equiprobable.

Stream: v3's side information (tree, fitted predictors, leaf table), then the range
coder's bytes (its first byte, always 0, left out).
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptRecordError
from ..paths import IntWriter, PlaneInfo, _join, _token_scale_rows, token_lookup, tokenize, zigzag
from ..wavefront import MANTISSA, RasterV3GlobalPathCoder, Wavefront, leaf_table_arrays
from . import register
from .difference import DifferenceCoder

_PROB_ONE = 1 << 16
_PROB_MIN = 1 << 6  # a node's prior probability is kept within [_PROB_MIN, 2**16 - _PROB_MIN]


def node_priors(tree, bits: int) -> tuple[np.ndarray, int]:
    """(initial probabilities (leaves * 2**depth, 2) of every node's 0 branch, depth):
    for each leaf, its prior row's share of the left subtree's tokens, 16 bits."""
    rows = _token_scale_rows(bits, MANTISSA)[tree.scales]
    leaves, alphabet = rows.shape
    depth = max(1, (alphabet - 1).bit_length())
    counts = np.zeros((leaves, 1 << depth), dtype=np.int64)
    counts[:, :alphabet] = rows
    probs = np.full((leaves, 1 << depth), _PROB_ONE >> 1, dtype=np.int64)
    for j in range(depth):
        halves = counts.reshape(leaves, 1 << j, 2, 1 << (depth - j - 1)).sum(axis=3)
        total = halves.sum(axis=2)
        share = (halves[:, :, 0] * _PROB_ONE) // np.maximum(total, 1)
        probs[:, (1 << j) : (2 << j)] = np.where(total > 0, np.clip(share, _PROB_MIN, _PROB_ONE - _PROB_MIN),
                                                 _PROB_ONE >> 1)
    return np.repeat(probs.reshape(-1, 1), 2, axis=1), depth


_NONE = np.zeros(0, dtype=np.int64)


@register
class RasterV4GlobalPathCoder(RasterV3GlobalPathCoder):
    """raster-wp-v3's model, coded in one compiled raster pass (module docstring)."""

    model_id = "raster-wp-v4"

    def _payload(self, side: IntWriter, tree, info: PlaneInfo, wf: Wavefront, ctx: np.ndarray,
                 residual: np.ndarray) -> bytes:
        from .wp4kernel import code_plane

        token, extra, _ = tokenize(zigzag(residual), MANTISSA)
        lowest, raw_bits = token_lookup(info.bits, MANTISSA)
        size = residual.size * (info.bits + 4) // 8 + 4096
        while True:
            probs, depth = node_priors(tree, info.bits)
            buf = np.empty(size, dtype=np.uint8)  # the kernel writes every byte it returns
            n = code_plane(info.rows, info.cols, wf.value, wf.true_err, wf.sub_err, wf.prev_shift, wf.has_prev,
                           (1 << info.bits) - 1, tree.prop, tree.thr, tree.right, tree.leaf, False,
                           *leaf_table_arrays(None, wf.has_prev), probs, depth, lowest.size, lowest, raw_bits, token, extra,
                           np.ascontiguousarray(ctx, dtype=np.int64), False, buf)
            if n >= 0:
                break
            size *= 4
        return _join(side, buf[1:n].tobytes())

    def decode(self, data: bytes, info: PlaneInfo, prev: np.ndarray | None = None) -> np.ndarray:
        from .wp4kernel import code_plane

        plane = self.parse(data, info, prev)
        wf = Wavefront(info.rows, info.cols, plane.prev)
        tree = plane.tree
        choice, offset, model, weights = leaf_table_arrays(plane.table, wf.has_prev)
        probs, depth = node_priors(tree, info.bits)
        lowest, raw_bits = token_lookup(info.bits, MANTISSA)
        buf = np.frombuffer(bytearray(b"\0" + plane.payload), dtype=np.uint8)
        if code_plane(info.rows, info.cols, wf.value, wf.true_err, wf.sub_err, wf.prev_shift, wf.has_prev,
                      (1 << info.bits) - 1, tree.prop, tree.thr, tree.right, tree.leaf, plane.table is not None,
                      choice, offset, model, weights, probs, depth, lowest.size, lowest, raw_bits, _NONE, _NONE,
                      _NONE, True, buf) < 0:
            raise CorruptRecordError(f"{self.model_id} stream decodes to a value outside the plane's range")
        return wf.value[: info.rows * info.cols].reshape(info.rows, info.cols)


RASTER_WP_DIFF_V4 = register(DifferenceCoder("raster-wp-diff-v4", RasterV4GlobalPathCoder.model_id))
