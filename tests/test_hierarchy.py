"""The interlaced scan geometry is part of the bitstream: pin it against its plain definition."""

import numpy as np
import pytest

from medcodec import hierarchy


def _plain_passes(rows, cols):
    """The geometry as first written: every neighbour checked against a 'known' mask."""
    known = np.zeros(rows * cols, dtype=bool)
    known[0] = True

    def reflect(p, d, n):
        out = p + d
        return np.where((out < 0) | (out >= n), p - d, out)

    def neighbours(py, px, offsets, h):
        out = np.empty((py.size, len(offsets)), dtype=np.int64)
        for j, (dy, dx) in enumerate(offsets):
            y, x = reflect(py, dy * h, rows), reflect(px, dx * h, cols)
            ok = (y >= 0) & (y < rows) & (x >= 0) & (x < cols)
            idx = np.where(ok, y * cols + x, 0)
            ok &= known[idx]
            out[:, j] = np.where(ok, idx, -1)
        return out

    for level in range(hierarchy.levels(rows, cols) - 1, -1, -1):
        h, s = 1 << level, 2 << level
        for kind in (hierarchy.D, hierarchy.A1, hierarchy.A2):
            ys = np.arange(h if kind in (hierarchy.D, hierarchy.A2) else 0, rows, s)
            xs = np.arange(h if kind in (hierarchy.D, hierarchy.A1) else 0, cols, s)
            if ys.size == 0 or xs.size == 0:
                continue
            py, px = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
            inner = neighbours(py, px, hierarchy._INNER[kind], h)
            first = np.full(py.size, -1, dtype=np.int64)
            for j in range(hierarchy.N_NEAREST - 1, -1, -1):
                first = np.where(inner[:, j] >= 0, inner[:, j], first)
            first = np.where(first < 0, 0, first)
            inner = np.where(inner < 0, first[:, None], inner)
            outer = neighbours(py, px, hierarchy._OUTER[kind], h)
            outer = np.where(outer < 0, first[:, None], outer)
            pos = py * cols + px
            known[pos] = True
            yield kind, h, pos, inner, outer


@pytest.mark.parametrize(
    "rows, cols",
    [(1, 1), (1, 2), (2, 1), (1, 7), (7, 1), (2, 2), (3, 3), (3, 5), (5, 3), (4, 4), (8, 8), (9, 9), (17, 33),
     (33, 17), (31, 64), (100, 3), (3, 100), (65, 129), (257, 255)],
)
def test_scan_geometry_matches_its_plain_definition(rows, cols):
    fast = list(hierarchy.iter_passes(rows, cols))
    plain = list(_plain_passes(rows, cols))
    assert len(fast) == len(plain)
    covered = np.zeros(rows * cols, dtype=bool)
    covered[0] = True
    for p, (kind, h, pos, inner, outer) in zip(fast, plain):
        assert (p.kind, p.h) == (kind, h)
        assert np.array_equal(p.pos, pos)
        assert np.array_equal(p.inner, inner.T) and np.array_equal(p.outer, outer.T)
        assert covered[p.inner].all() and covered[p.outer].all()  # only known pixels
        covered[p.pos] = True
    assert covered.all()


def test_outer_neighbours_are_computed_only_when_read_and_subsets_agree():
    p = list(hierarchy.iter_passes(65, 129))[-1]
    assert callable(p._outer)  # not computed yet: `fast` never reads it
    sub = p.subset(slice(1, None, 7))
    assert np.array_equal(sub.outer, p.outer[:, 1::7])
    assert np.array_equal(sub.inner, p.inner[:, 1::7]) and np.array_equal(sub.pos, p.pos[1::7])
