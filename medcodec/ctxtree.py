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

from .errors import CorruptRecordError

# Limits a decoder enforces on a tree read from a record (a crafted record must not make
# it loop or allocate without bound).
MAX_NODES = 2047
MAX_DEPTH = 24
# Encoder knobs (not part of the format: a different encoder may grow other trees).
MAX_LEAVES = 256
LEARN_ROWS = 1 << 17
BINS = 32
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

    def contexts(self, props: np.ndarray) -> np.ndarray:
        """Leaf id of every row of ``props`` (N, P): exact integer comparisons only."""
        n = props.shape[0]
        flat_t = np.ascontiguousarray(props.T).ravel()  # column p of row r at p * n + r
        node = np.zeros(n, dtype=np.int64)
        active = np.arange(n)
        for _ in range(MAX_DEPTH + 1):
            cur = node[active]
            p = self.prop[cur]
            inner = p >= 0
            if not inner.all():
                active, cur, p = active[inner], cur[inner], p[inner]
            if active.size == 0:
                break
            v = flat_t[p * n + active]
            node[active] = np.where(v > self.thr[cur], self.right[cur], cur + 1)
        return self.leaf[node]

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
    depth = np.zeros(n, dtype=np.int64)
    for i in range(n):
        if prop[i] >= 0:
            depth[i + 1] = depth[right[i]] = depth[i] + 1
            if depth[i] + 1 > MAX_DEPTH:
                raise CorruptRecordError(f"context tree deeper than {MAX_DEPTH}")
    return right


def single_leaf(scale: int) -> Tree:
    return Tree(
        prop=np.array([-1]), thr=np.zeros(1, dtype=np.int64), right=np.array([-1]), leaf=np.array([0]),
        scales=np.array([scale], dtype=np.int64),
    )


# --- learning (encoder only) ------------------------------------------------------------


def _cost(h: np.ndarray) -> np.ndarray:
    """Empirical code length (bits) of the counts in each row: sum n log2(N / n)."""
    h = h.astype(np.float64)
    n = h.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inner = np.where(h > 0, h * np.log2(np.where(h > 0, h, 1)), 0.0).sum(-1)
        total = np.where(n > 0, n * np.log2(np.where(n > 0, n, 1)), 0.0)
    return total - inner


def _adapt_penalty(h: np.ndarray, scale: float) -> np.ndarray:
    """Approximate price of learning a table: half a log2(n) per used symbol (MDL)."""
    used = (h > 0).sum(-1)
    n = h.sum(-1) * scale
    return 0.5 * used * np.log2(np.maximum(n, 2.0))


def learn(props: np.ndarray, tokens: np.ndarray, alphabet: int, prior_rows: np.ndarray, *, weight: float = 1.0) -> Tree:
    """Grow a tree on sample rows ``props`` (n, P) with ``tokens`` (n,).

    ``weight`` is how many coded symbols one sample row stands for (the sampling
    stride), so gains and penalties are in bits of the whole plane. ``prior_rows``
    (S, alphabet) are the candidate initial tables; each leaf gets the one that codes
    its tokens best.
    """
    n, n_props = props.shape
    tokens = tokens.astype(np.int64)
    thresholds = []
    binned = np.empty((n, n_props), dtype=np.int64)
    for j in range(n_props):
        qs = np.unique(np.quantile(props[:, j], np.linspace(0, 1, BINS + 1)[1:-1], method="lower").astype(np.int64))
        thresholds.append(qs)
        binned[:, j] = np.searchsorted(qs, props[:, j], side="left")  # bin b: value <= qs[b] (b < len)

    def best_split(idx: np.ndarray):
        t = tokens[idx]
        whole = np.bincount(t, minlength=alphabet)[None]
        base = _cost(whole)[0] + _adapt_penalty(whole, weight)[0] / weight
        best = None
        for j in range(n_props):
            qs = thresholds[j]
            if qs.size == 0:
                continue
            nb = qs.size + 1
            h = np.bincount(binned[idx, j] * alphabet + t, minlength=nb * alphabet).reshape(nb, alphabet)
            left = np.cumsum(h, axis=0)[:-1]
            right = whole - left
            ok = (left.sum(1) > 0) & (right.sum(1) > 0)
            if not ok.any():
                continue
            cost = _cost(left) + _cost(right) + (_adapt_penalty(left, weight) + _adapt_penalty(right, weight)) / weight
            gain = (base - cost) * weight - SPLIT_COST_BITS
            gain = np.where(ok, gain, -np.inf)
            b = int(np.argmax(gain))
            if best is None or gain[b] > best[0]:
                best = (float(gain[b]), j, int(qs[b]), b)
        return best

    # Grow best-first; remember the structure as a dict tree.
    root = {"idx": np.arange(n), "depth": 0}
    frontier = [root]
    root["split"] = best_split(root["idx"])
    leaves = 1
    while leaves < MAX_LEAVES:
        cand = [nd for nd in frontier if nd["split"] is not None and nd["split"][0] > 0 and nd["depth"] < MAX_DEPTH]
        if not cand:
            break
        nd = max(cand, key=lambda x: x["split"][0])
        _, j, thr, b = nd["split"]
        idx = nd["idx"]
        go = binned[idx, j] > b
        nd["prop"], nd["thr"] = j, thr
        nd["kids"] = [{"idx": idx[~go], "depth": nd["depth"] + 1}, {"idx": idx[go], "depth": nd["depth"] + 1}]
        frontier.remove(nd)
        for kid in nd["kids"]:
            kid["split"] = best_split(kid["idx"])
            frontier.append(kid)
        leaves += 1

    prop, thr, scales = [], [], []
    log_prior = np.log2(prior_rows / prior_rows.sum(1, keepdims=True))

    def emit(nd) -> None:
        if "kids" in nd:
            prop.append(nd["prop"])
            thr.append(nd["thr"])
            emit(nd["kids"][0])
            emit(nd["kids"][1])
        else:
            h = np.bincount(tokens[nd["idx"]], minlength=alphabet)
            prop.append(-1)
            thr.append(0)
            scales.append(int(np.argmax(log_prior @ h)))

    emit(root)
    prop_a = np.array(prop, dtype=np.int64)
    leaf = np.full(prop_a.size, -1, dtype=np.int64)
    leaf[prop_a < 0] = np.arange(int((prop_a < 0).sum()))
    return Tree(
        prop=prop_a, thr=np.array(thr, dtype=np.int64), right=_right_children(prop_a), leaf=leaf,
        scales=np.array(scales, dtype=np.int64),
    )
