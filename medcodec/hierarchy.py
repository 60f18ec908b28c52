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

from dataclasses import dataclass
from typing import Iterator

import numpy as np

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


@dataclass(frozen=True)
class Pass:
    """One step of the scan: which pixels it codes and where their neighbours are."""

    kind: int
    h: int
    pos: np.ndarray  # (N,) flat indices of the pixels coded in this pass, scan order
    inner: np.ndarray  # (N, n_inner) flat indices of known neighbours
    outer: np.ndarray  # (N, n_outer)

    @property
    def size(self) -> int:
        return int(self.pos.size)


def levels(rows: int, cols: int) -> int:
    """Number of halvings L such that 2**L >= max(rows, cols)."""
    n = max(rows, cols)
    return max(0, int(n - 1).bit_length())


def _reflect(p: np.ndarray, d: int, n: int) -> np.ndarray:
    out = p + d
    return np.where((out < 0) | (out >= n), p - d, out)


def _neighbours(
    py: np.ndarray, px: np.ndarray, offsets: list[tuple[int, int]], h: int, rows: int, cols: int, known: np.ndarray
) -> np.ndarray:
    """Flat indices (N, len(offsets)) of known neighbours; -1 where none is known."""
    out = np.empty((py.size, len(offsets)), dtype=np.int64)
    for j, (dy, dx) in enumerate(offsets):
        y = _reflect(py, dy * h, rows)
        x = _reflect(px, dx * h, cols)
        ok = (y >= 0) & (y < rows) & (x >= 0) & (x < cols)
        idx = np.where(ok, y * cols + x, 0)
        ok &= known[idx]
        out[:, j] = np.where(ok, idx, -1)
    return out


def _fill_missing(neigh: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    return np.where(neigh < 0, fallback[:, None], neigh)


def iter_passes(rows: int, cols: int) -> Iterator[Pass]:
    """Yield the passes after the first pixel, coarse to fine, in coding order."""
    known = np.zeros(rows * cols, dtype=bool)
    known[0] = True
    for level in range(levels(rows, cols) - 1, -1, -1):
        h = 1 << level
        s = 2 * h
        for kind in (D, A1, A2):
            ys = np.arange(h if kind in (D, A2) else 0, rows, s)
            xs = np.arange(h if kind in (D, A1) else 0, cols, s)
            if ys.size == 0 or xs.size == 0:
                continue
            py, px = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
            inner = _neighbours(py, px, _INNER[kind], h, rows, cols, known)
            # The first nearest neighbour that is known serves wherever one is missing;
            # one of the two along the pass's own axis always exists after reflection.
            first = np.full(py.size, -1, dtype=np.int64)
            for j in range(N_NEAREST - 1, -1, -1):
                first = np.where(inner[:, j] >= 0, inner[:, j], first)
            first = np.where(first < 0, 0, first)
            inner = _fill_missing(inner, first)
            outer = _fill_missing(_neighbours(py, px, _OUTER[kind], h, rows, cols, known), first)
            pos = py * cols + px
            known[pos] = True
            yield Pass(kind=kind, h=h, pos=pos, inner=inner, outer=outer)


def unit_neighbours(pos: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Flat indices (N, 8) of the immediate neighbours, clamped at the border."""
    py, px = pos // cols, pos % cols
    out = np.empty((pos.size, len(UNIT_OFFSETS)), dtype=np.int64)
    for j, (dy, dx) in enumerate(UNIT_OFFSETS):
        y = np.clip(py + dy, 0, rows - 1)
        x = np.clip(px + dx, 0, cols - 1)
        out[:, j] = y * cols + x
    return out
