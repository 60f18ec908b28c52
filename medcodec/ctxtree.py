"""Learned context trees: the entropy contexts of the v2 global path.

The encoder sees the whole image, so before coding a plane it can compute every
pixel's prediction residual token and a vector of integer *properties* that the
decoder will also know when it reaches that pixel (pass kind and level, neighbour
spread, past residual sizes, intensity, gradients, ...). It then grows a binary
decision tree over those properties that greedily minimizes the empirical entropy of
the tokens, charging each split for the adaptation it costs (an MDL penalty), and
writes the tree into the stream. Each leaf is one adaptive frequency table. This is
the idea behind JPEG-XL's meta-adaptive (MA) trees, applied to the interlaced scan.

Only integers cross into the bitstream: properties are integers, thresholds are
integers, and "go right" means ``property > threshold``. Learning uses floating point
but runs in the encoder only; the decoder just reads the integers back, so a record
decodes identically everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import contextkernel as ck
from .errors import CorruptRecordError

# Limits a decoder enforces on a tree read from a record (a crafted record must not make
# it loop or allocate without bound).
MAX_NODES = 2047
MAX_DEPTH = 24
# Encoder knobs (not part of the format: a different encoder may grow other trees).
MAX_LEAVES = 256
LEARN_ROWS = 1 << 17
BINS = 32  # at most 256: a sample's bins are bytes
SPLIT_COST_BITS = 24.0


@dataclass(frozen=True)
class Tree:
    """Nodes in preorder. Internal node i: ``prop[i] >= 0``, goes to ``right[i]`` when the
    property value is greater than ``thr[i]``, else to ``i + 1``. Leaf i: ``prop[i] = -1``
    and ``leaf[i]`` is its context id (leaves numbered in preorder) with prior ``scale``."""

    prop: np.ndarray
    thr: np.ndarray
    right: np.ndarray
    leaf: np.ndarray
    scales: np.ndarray  # per leaf id

    @property
    def n_leaves(self) -> int:
        return int(self.scales.size)

    @property
    def used(self) -> frozenset[int]:
        """The properties some node splits on."""
        return frozenset(int(p) for p in self.prop[self.prop >= 0])

    def contexts(self, props: np.ndarray) -> np.ndarray:
        """Leaf id of every column of ``props`` (P, N): exact integer comparisons only."""
        if int(self.prop.max(initial=-1)) >= props.shape[0]:
            raise ValueError(f"the tree reads property {int(self.prop.max())} of {props.shape[0]}")
        out = np.empty(props.shape[1], dtype=np.int64)
        ck.leaves(self.prop, self.thr, self.right, self.leaf, np.ascontiguousarray(props, dtype=np.int64), out)
        return out

    # --- serialization (into the global stream's side information) ---------------------

    def write(self, side) -> None:
        side.put(int(self.prop.size))
        for i in range(self.prop.size):
            p = int(self.prop[i])
            side.put(p + 1)
            if p >= 0:
                side.put(int(self.thr[i]))
            else:
                side.put(int(self.scales[self.leaf[i]]))

    @classmethod
    def read(cls, side, n_props: int, n_scales: int) -> "Tree":
        n = side.get()
        if not 1 <= n <= MAX_NODES:
            raise CorruptRecordError(f"context tree claims {n} nodes (1..{MAX_NODES})")
        prop = np.empty(n, dtype=np.int64)
        thr = np.zeros(n, dtype=np.int64)
        scales: list[int] = []
        leaf = np.full(n, -1, dtype=np.int64)
        for i in range(n):
            p = side.get() - 1
            if not -1 <= p < n_props:
                raise CorruptRecordError(f"context tree node uses property {p} (0..{n_props - 1})")
            prop[i] = p
            if p >= 0:
                thr[i] = side.get()
            else:
                s = side.get()
                if not 0 <= s < n_scales:
                    raise CorruptRecordError(f"context tree leaf prior {s} outside 0..{n_scales - 1}")
                leaf[i] = len(scales)
                scales.append(s)
        right = _right_children(prop)
        return cls(prop=prop, thr=thr, right=right, leaf=leaf, scales=np.array(scales, dtype=np.int64))


def _right_children(prop: np.ndarray) -> np.ndarray:
    """Preorder layout -> index of each internal node's right child; checks the shape."""
    n = prop.size
    end = np.zeros(n + 1, dtype=np.int64)  # end[i]: one past the last node of i's subtree
    for i in range(n - 1, -1, -1):
        if prop[i] < 0:
            end[i] = i + 1
            continue
        if i + 1 >= n or end[i + 1] >= n:
            raise CorruptRecordError("context tree ends inside a node")
        end[i] = end[end[i + 1]]
    if n == 0 or end[0] != n:
        raise CorruptRecordError("context tree nodes do not form one tree")
    right = np.where(prop >= 0, end[np.minimum(np.arange(n) + 1, n)], -1)
    if _depths(prop, right).max(initial=0) > MAX_DEPTH:
        raise CorruptRecordError(f"context tree deeper than {MAX_DEPTH}")
    return right


def _depths(prop: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Each node's depth (the root's is 0) in a preorder tree."""
    depth = np.zeros(prop.size, dtype=np.int64)
    for i in np.flatnonzero(prop >= 0):
        depth[i + 1] = depth[right[i]] = depth[i] + 1
    return depth


def single_leaf(scale: int) -> Tree:
    return Tree(
        prop=np.array([-1]), thr=np.zeros(1, dtype=np.int64), right=np.array([-1]), leaf=np.array([0]),
        scales=np.array([scale], dtype=np.int64),
    )


# --- learning (encoder only) ------------------------------------------------------------


@dataclass(frozen=True)
class Binned:
    """A sample's properties as ``learn`` bins them: each property's candidate thresholds
    (``counts`` of them, ``valid`` as the split search takes them) and every sample's
    bins (n, P). It depends on the properties alone, so one binning serves every tree
    grown on the same sample (``learn(..., binned=)``)."""

    thresholds: np.ndarray
    counts: np.ndarray
    valid: np.ndarray
    bins: np.ndarray


def bin_properties(props: np.ndarray) -> Binned:
    """``props`` (P, n), one row per property, binned at their quantiles: bin b holds values
    <= the b-th candidate threshold."""
    from . import learnkernel as lk  # numba: loaded on first use

    n_props, n = props.shape
    props = np.ascontiguousarray(props, dtype=np.int64)
    thresholds = np.zeros((n_props, BINS - 1), dtype=np.int64)
    counts = np.zeros(n_props, dtype=np.int64)
    if n:
        quantiles = np.empty((n_props, BINS - 1), dtype=np.int64)
        # np.quantile(..., method="lower")'s ranks, the order statistics found in the kernel.
        ranks = np.floor((n - 1) * np.linspace(0, 1, BINS + 1)[1:-1]).astype(np.int64)
        counted = np.empty(n_props, dtype=np.bool_)
        lk.order_statistics(props, ranks, quantiles, counted)
        for j in np.flatnonzero(~counted):  # a range too wide to count
            quantiles[j] = np.partition(props[j], ranks)[ranks]
        for j in range(n_props):
            qs = np.unique(quantiles[j])
            thresholds[j, : qs.size] = qs
            counts[j] = qs.size
    valid = np.arange(BINS - 1)[None, :] < counts[:, None]
    bins = np.empty((n, n_props), dtype=np.uint8)  # a sample's bins side by side
    lk.bin_codes(props, thresholds, counts, bins)
    return Binned(thresholds, counts, valid, bins)


def learn(props: np.ndarray | None, tokens: np.ndarray, alphabet: int, prior_rows: np.ndarray, *,
          weight: float = 1.0, binned: Binned | None = None) -> Tree:
    """Grow a tree on sample pixels: ``props`` (P, n), one row per property, and ``tokens`` (n,).

    ``weight`` is how many coded symbols one sample row stands for (the sampling
    stride), so gains and penalties are in bits of the whole plane. ``prior_rows``
    (S, alphabet) are the candidate initial tables; each leaf gets the one that codes
    its tokens best. A split's price is the empirical code length of its two halves
    (``sum n log2(N / n)``) plus half a log2(n) per used symbol for learning each table
    (MDL) plus SPLIT_COST_BITS. ``binned``: ``bin_properties(props)``, made before
    (``props`` is then not read).
    """
    from . import learnkernel as lk  # numba: loaded on first use

    tokens = np.ascontiguousarray(tokens, dtype=np.int64)
    if tokens.size and not 0 <= int(tokens.min()) <= int(tokens.max()) < alphabet:
        raise ValueError(f"tokens outside the alphabet of {alphabet}")
    binned = bin_properties(props) if binned is None else binned
    thresholds, valid = binned.thresholds, binned.valid
    if binned.bins.shape[0] != tokens.size:
        raise ValueError(f"{tokens.size} tokens for {binned.bins.shape[0]} binned samples")
    bins = binned.bins.copy()  # grow reorders it
    # Grown best-first in the kernel (``learnkernel.grow``), which sorts the samples by node.
    capacity = 2 * MAX_LEAVES - 1
    tokens = tokens.copy()
    node_prop, node_bin, node_left, node_lo, node_hi = (np.empty(capacity, dtype=np.int64) for _ in range(5))
    lk.grow(bins, tokens, alphabet, valid, float(weight), SPLIT_COST_BITS, MAX_LEAVES, MAX_DEPTH,
            node_prop, node_bin, node_left, node_lo, node_hi)

    prop, thr, scales = [], [], []
    log_prior = np.log2(prior_rows / prior_rows.sum(1, keepdims=True))

    def emit(i: int) -> None:
        p = int(node_prop[i])
        prop.append(p)
        if p >= 0:
            thr.append(int(thresholds[p, node_bin[i]]))
            emit(int(node_left[i]))
            emit(int(node_left[i]) + 1)
        else:
            h = np.bincount(tokens[node_lo[i] : node_hi[i]], minlength=alphabet)
            thr.append(0)
            scales.append(int(np.argmax(log_prior @ h)))

    emit(0)
    prop_a = np.array(prop, dtype=np.int64)
    leaf = np.full(prop_a.size, -1, dtype=np.int64)
    leaf[prop_a < 0] = np.arange(int((prop_a < 0).sum()))
    return Tree(
        prop=prop_a, thr=np.array(thr, dtype=np.int64), right=_right_children(prop_a), leaf=leaf,
        scales=np.array(scales, dtype=np.int64),
    )
