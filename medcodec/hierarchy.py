"""Pass geometry of the interlaced (multi-resolution) scan shared by both coding paths.

The image is coded coarse to fine. Pixel (0, 0) comes first; then, for spacing
h = 2**(L-1), ..., 2, 1 (with s = 2h, the grid of multiples of s already known):

* ``D`` pass: points (s*m + h, s*n + h), centres of grid squares; 4 diagonal neighbours known;
* ``A1`` pass: points (s*m, s*n + h); 4 axial neighbours known (grid left/right, D above/below);
* ``A2`` pass: points (s*m + h, s*n); 4 axial neighbours plus 4 diagonal A1 neighbours known.

Every pixel of a pass depends only on pixels of earlier passes, so a whole pass (or a
chunk of it) is predicted, modelled and coded as one vectorized step, and the decoder
sees exactly the same neighbourhoods. Neighbours beyond the border are reflected; a
reflected neighbour that is still not known falls back to the first known inner one.
"""

from __future__ import annotations

import functools
from typing import Iterator

import numpy as np

from . import passkernel as pk

D, A1, A2 = 0, 1, 2
PASS_KINDS = 3

# Neighbour offsets in units of h. "inner" are the closest known neighbours (activity
# and default prediction use them); "outer" add context for the least-squares predictor.
_INNER = {
    D: [(-1, -1), (-1, 1), (1, -1), (1, 1)],
    A1: [(0, -1), (0, 1), (-1, 0), (1, 0)],
    A2: [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)],
}
_OUTER = {
    D: [(-1, -3), (-1, 3), (1, -3), (1, 3), (-3, -1), (-3, 1), (3, -1), (3, 1)],
    A1: [(0, -3), (0, 3), (-3, 0), (3, 0), (-2, -1), (-2, 1), (2, -1), (2, 1), (-1, -2), (-1, 2), (1, -2), (1, 2)],
    A2: [(-3, 0), (3, 0), (0, -3), (0, 3)],
}
# How many inner neighbours are axial / nearest (used for activity ranges).
N_NEAREST = 4
# Immediate (distance-1) neighbourhood used by the local path's visual prompt.
UNIT_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


class Pass:
    """One step of the scan: which pixels it codes and where their neighbours are.

    ``outer`` is computed on first use (the `fast` preset and the local path's tables
    never read it); ``subset`` keeps that laziness.
    """

    def __init__(self, *, kind: int, h: int, pos: np.ndarray, inner: np.ndarray, outer=None) -> None:
        self.kind = kind
        self.h = h
        self.pos = pos  # (N,) flat indices of the pixels coded in this pass, scan order
        # Neighbour j of every pixel is row j (contiguous): reductions over neighbours then
        # run as elementwise operations across a few long rows.
        self.inner = inner  # (n_inner, N) flat indices of known neighbours
        self._outer = outer  # (n_outer, N), or a function that returns it

    @property
    def outer(self) -> np.ndarray:
        if callable(self._outer):
            self._outer = self._outer()
        return self._outer

    @property
    def size(self) -> int:
        return int(self.pos.size)

    def subset(self, sel) -> "Pass":
        """The pass restricted to the pixels ``sel`` selects (a slice or index array)."""
        return Pass(kind=self.kind, h=self.h, pos=self.pos[sel], inner=self.inner[:, sel], outer=lambda: self.outer[:, sel])


def levels(rows: int, cols: int) -> int:
    """Number of halvings L such that 2**L >= max(rows, cols)."""
    n = max(rows, cols)
    return max(0, int(n - 1).bit_length())


def _neighbours(
    ys: np.ndarray, xs: np.ndarray, offsets: list[tuple[int, int]], h: int, rows: int, cols: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat indices (len(offsets), len(ys), len(xs)) of the neighbours of the grid ys x xs,
    -1 where none exists, and which grid rows / columns have a missing one.

    Each coordinate is reflected at the border (p + d outside: p - d) and checked on its
    own axis; one compiled pass (``passkernel.grid_neighbours``). Every in-range neighbour
    at these offsets is already known: the offsets keep a pixel's class (grid, D, A1)
    under reflection, and earlier passes coded every pixel of those classes. So only the
    border decides, separately for rows and columns.
    """
    out = np.empty((len(offsets), ys.size, xs.size), dtype=np.int64)
    bad_y = np.zeros(ys.size, dtype=bool)
    bad_x = np.zeros(xs.size, dtype=bool)
    dys, dxs = (np.array(v, dtype=np.int64) for v in zip(*offsets))
    pk.grid_neighbours(np.ascontiguousarray(ys, dtype=np.int64), np.ascontiguousarray(xs, dtype=np.int64),
                       dys, dxs, h, rows, cols, out, bad_y, bad_x)
    return out, np.flatnonzero(bad_y), np.flatnonzero(bad_x)


def _fill_missing(table: np.ndarray, inner: np.ndarray, bad_y: np.ndarray, bad_x: np.ndarray) -> None:
    """Replace missing (-1) neighbours in ``table`` (K, ny, nx) by the pixel's first nearest
    inner neighbour that exists (0 if none does); only rows ``bad_y`` and columns ``bad_x``
    can hold one. One of the two nearest along the pass's own axis always exists after
    reflection."""
    for sel in ((slice(None), bad_y, slice(None)), (slice(None), slice(None), bad_x)):
        block, near = table[sel], inner[sel]
        first = np.full(near.shape[1:], -1, dtype=np.int64)
        for j in range(N_NEAREST - 1, -1, -1):
            first = np.where(near[j] >= 0, near[j], first)
        first = np.where(first < 0, 0, first)
        table[sel] = np.where(block < 0, first[None], block)


def _outer(ys, xs, kind, h, rows, cols, inner3) -> np.ndarray:
    outer, bad_y, bad_x = _neighbours(ys, xs, _OUTER[kind], h, rows, cols)
    if bad_y.size or bad_x.size:
        _fill_missing(outer, inner3, bad_y, bad_x)
    return outer.reshape(outer.shape[0], -1)


def iter_passes(rows: int, cols: int) -> Iterator[Pass]:
    """Yield the passes after the first pixel, coarse to fine, in coding order."""
    for level in range(levels(rows, cols) - 1, -1, -1):
        h = 1 << level
        s = 2 * h
        for kind in (D, A1, A2):
            ys = np.arange(h if kind in (D, A2) else 0, rows, s)
            xs = np.arange(h if kind in (D, A1) else 0, cols, s)
            if ys.size == 0 or xs.size == 0:
                continue
            inner3, bad_y, bad_x = _neighbours(ys, xs, _INNER[kind], h, rows, cols)
            if bad_y.size or bad_x.size:
                # Filling leaves each pixel's first existing nearest neighbour as it was,
                # so the outer table may take its fallback from the filled inner table.
                _fill_missing(inner3, inner3, bad_y, bad_x)
            outer = functools.partial(_outer, ys, xs, kind, h, rows, cols, inner3)
            pos = ((ys * cols)[:, None] + xs[None, :]).ravel()
            yield Pass(kind=kind, h=h, pos=pos, inner=inner3.reshape(inner3.shape[0], -1), outer=outer)


def unit_neighbours(pos: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Flat indices (8, N) of the immediate neighbours, clamped at the border."""
    py, px = pos // cols, pos % cols
    out = np.empty((len(UNIT_OFFSETS), pos.size), dtype=np.int64)
    for j, (dy, dx) in enumerate(UNIT_OFFSETS):
        y = np.clip(py + dy, 0, rows - 1)
        x = np.clip(px + dx, 0, cols - 1)
        out[j] = y * cols + x
    return out
