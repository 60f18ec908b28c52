"""Compiled encoder-side learning: growing a context tree (``ctxtree.learn``).

Nothing here is part of the bitstream: the encoder writes the tree it grew, and a
decoder reads the integers back. The rules are those ``ctxtree.learn`` documents; float
sums here run in a different order than numpy's, so a near-tie between two splits may
resolve the other way (a different, equally good tree).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros

from .jit import kernel


@kernel
def _histogram(bins, tokens, lo, hi, out):
    """Token counts per (property, bin) of the samples ``lo:hi`` into ``out`` (P, B, A)."""
    flat = out.reshape(-1)
    for j in range(flat.size):
        flat[j] = 0
    for i in range(lo, hi):
        t = tokens[i]
        for p in range(bins.shape[1]):
            out[p, bins[i, p], t] += 1


@njit(cache=True, nogil=True, inline="always")
def _price(bits_sum, total, used, nlogn, weight):
    """Code length of a count row (``nlogn[total] - bits_sum``) plus its MDL term."""
    return nlogn[total] - bits_sum + 0.5 * used * np.log2(max(total * weight, 2.0)) / weight


@kernel
def _best_split(h, valid, nlogn, weight, split_cost, left, whole, present):
    """(gain, property, bin) of the best split of a node with histogram ``h`` (P, B, A);
    property -1 where no split separates its samples. ``left``, ``whole``, ``present``:
    scratch rows (A,).

    Only the tokens the node holds (``present``, in increasing order) are visited: a
    token it lacks adds nothing on either side, and the sums over the others are the
    same sums in the same order (``nlogn`` is 0 at 0 and 1, so adding it unconditionally
    adds +0.0 where a count is 0 or 1). On a 145,200-sample tree of the pipeline
    benchmark's files 29 of 52 tokens were present at the root, fewer below."""
    n_props, n_bins, alphabet = h.shape
    m = 0
    bits = 0.0
    used = 0
    n_present = 0
    for a in range(alphabet):
        c = 0
        for b in range(n_bins):
            c += h[0, b, a]
        m += c
        if c > 0:
            bits += nlogn[c]
            used += 1
            whole[n_present] = c
            present[n_present] = a
            n_present += 1
    base = _price(bits, m, used, nlogn, weight)
    best, best_p, best_b = -np.inf, -1, -1
    for p in range(n_props):
        for j in range(n_present):
            left[j] = 0
        n_left = 0
        for b in range(n_bins - 1):
            for j in range(n_present):
                c = h[p, b, present[j]]
                left[j] += c
                n_left += c
            if not valid[p, b] or n_left <= 0 or n_left >= m:
                continue
            bits_l = 0.0
            bits_r = 0.0
            used_l = 0
            used_r = 0
            for j in range(n_present):
                cl = left[j]
                cr = whole[j] - cl
                bits_l += nlogn[cl]
                bits_r += nlogn[cr]
                used_l += cl > 0
                used_r += cr > 0
            gain = (base - _price(bits_l, n_left, used_l, nlogn, weight)
                    - _price(bits_r, m - n_left, used_r, nlogn, weight)) * weight - split_cost
            if gain > best:
                best, best_p, best_b = gain, p, b
    return best, best_p, best_b


def grow(bins, tokens, alphabet, valid, weight, split_cost, max_leaves, max_depth, node_prop, node_bin, node_left,
         node_lo, node_hi):
    """Grows a tree best-first over samples whose property bins are ``bins`` (n, P) and
    tokens ``tokens`` (n,); ``valid`` (P, B - 1): which bins may be split after. Both
    arrays are reordered in place so that every node's samples are contiguous.

    Node 0 is the root. For node i: ``node_prop[i]`` the property it splits on (-1 for a
    leaf) and ``node_bin[i]`` the last bin that goes left, ``node_left[i]`` its left
    child (the right one follows it), and ``node_lo[i]:node_hi[i]`` its samples.
    Arrays hold 2 * max_leaves - 1 nodes. Returns the number of nodes.

    At each step the leaf with the largest positive gain (the first such in the order
    leaves were made, ``ctxtree.learn``'s frontier order) splits; a node keeps its
    histogram until it splits, the smaller child is counted and the larger is the
    difference.
    """
    n, n_props = bins.shape
    capacity = node_prop.size
    # One histogram per leaf at most (a leaf's slot passes to its larger child); each is
    # cleared when first counted, so pages no leaf uses are never touched. The kernel keeps
    # its state in these arrays (it is compiled without reference counting: medcodec.jit).
    return _grow(bins, tokens, valid, weight, split_cost, max_leaves, max_depth, node_prop, node_bin, node_left,
                 node_lo, node_hi, np.zeros(n + 1, dtype=np.float64),
                 np.empty((max_leaves + 1, n_props, valid.shape[1] + 1, alphabet), dtype=np.int32),
                 np.arange(max_leaves + 1), np.zeros(alphabet, dtype=np.int64), np.zeros(alphabet, dtype=np.int64),
                 np.zeros(capacity, dtype=np.int64), np.zeros(capacity), np.zeros(capacity, dtype=np.int64),
                 np.zeros(capacity, dtype=np.int64), np.zeros(capacity, dtype=np.int64),
                 np.zeros(capacity, dtype=np.int64), np.empty((n, n_props), dtype=bins.dtype),
                 np.empty(n, dtype=tokens.dtype), np.zeros(alphabet, dtype=np.int64))


@kernel
def _grow(bins, tokens, valid, weight, split_cost, max_leaves, max_depth, node_prop, node_bin, node_left, node_lo,
          node_hi, nlogn, slots, free, left, whole, slot_of, gain, split_p, split_b, depth, frontier, buf, buf_tokens, present):
    """``grow``'s work: ``free`` a stack of free histogram slots (``free[1:n_free]``),
    ``frontier`` the leaf nodes in the order they were made."""
    n = bins.shape[0]
    for c in range(2, n + 1):
        nlogn[c] = c * np.log2(c)
    n_free = max_leaves + 1
    node_prop[0], node_lo[0], node_hi[0], node_left[0] = -1, 0, n, -1
    slot_of[0] = 0
    _histogram(bins, tokens, 0, n, slots[0])
    gain[0], split_p[0], split_b[0] = _best_split(slots[0], valid, nlogn, weight, split_cost, left, whole, present)
    frontier[0] = 0
    n_frontier, n_nodes, n_leaves = 1, 1, 1
    while n_leaves < max_leaves:
        pick, at = -1, -1
        for f in range(n_frontier):
            nd = frontier[f]
            if split_p[nd] >= 0 and gain[nd] > 0 and depth[nd] < max_depth and (pick < 0 or gain[nd] > gain[pick]):
                pick, at = nd, f
        if pick < 0:
            break
        p, b = split_p[pick], split_b[pick]
        lo, hi = node_lo[pick], node_hi[pick]
        # Stable partition of the node's samples: bin <= b to the left.
        # Rows are copied a value at a time: a row assignment makes a temporary array.
        k = lo
        r = 0
        n_props = bins.shape[1]
        for s in range(lo, hi):
            if bins[s, p] > b:
                for q in range(n_props):
                    buf[r, q] = bins[s, q]
                buf_tokens[r] = tokens[s]
                r += 1
            else:
                if k != s:
                    for q in range(n_props):
                        bins[k, q] = bins[s, q]
                    tokens[k] = tokens[s]
                k += 1
        for s in range(r):
            for q in range(n_props):
                bins[k + s, q] = buf[s, q]
            tokens[k + s] = buf_tokens[s]
        kid = n_nodes
        n_nodes += 2
        node_prop[pick], node_bin[pick], node_left[pick] = p, b, kid
        for c in range(2):
            node_prop[kid + c], node_left[kid + c] = -1, -1
            depth[kid + c] = depth[pick] + 1
        node_lo[kid], node_hi[kid] = lo, k
        node_lo[kid + 1], node_hi[kid + 1] = k, hi
        small = kid if k - lo <= hi - k else kid + 1
        big = kid + kid + 1 - small
        parent = slot_of[pick]
        n_free -= 1
        s_small = free[n_free]
        _histogram(bins, tokens, node_lo[small], node_hi[small], slots[s_small])
        whole_h = slots[parent].reshape(-1)
        small_h = slots[s_small].reshape(-1)
        for j in range(whole_h.size):
            whole_h[j] -= small_h[j]
        slot_of[small], slot_of[big] = s_small, parent
        # The frontier drops the node that split and gains its children, in order.
        for f in range(at, n_frontier - 1):
            frontier[f] = frontier[f + 1]
        frontier[n_frontier - 1] = kid
        frontier[n_frontier] = kid + 1
        n_frontier += 1
        for c in range(2):
            nd = kid + c
            gain[nd], split_p[nd], split_b[nd] = _best_split(slots[slot_of[nd]], valid, nlogn, weight, split_cost,
                                                             left, whole, present)
        n_leaves += 1
    return n_nodes


@njit(cache=True, nogil=True, inline="always")
def _range(row):
    """(smallest, largest) value of ``row``; (0, 0) when it is empty."""
    if row.size == 0:
        return np.int64(0), np.int64(0)
    lo, hi = row[0], row[0]
    for i in range(1, row.size):
        v = row[i]
        if v < lo:
            lo = v
        elif v > hi:
            hi = v
    return lo, hi


@njit(cache=True, nogil=True, inline="always")
def _countable(lo, hi, n):
    """Whether values from ``lo`` to ``hi`` are few enough to count (or tabulate) for n samples."""
    return hi - lo < 4 * n + 4096


@njit(cache=True, nogil=True)
def bin_codes(props, thresholds, counts, out):
    """``out[i, p]``: how many of property p's thresholds ``thresholds[p, :counts[p]]``
    (increasing) are below ``props[p, i]``. A property whose values span a narrow range
    (as ``order_statistics`` counts) reads the answer from a table of that range; others
    search the thresholds."""
    n = props.shape[1]
    for p in range(props.shape[0]):
        m = counts[p]
        row = props[p]
        lo, hi = _range(row)
        if _countable(lo, hi, n):
            table = np.empty(hi - lo + 1, dtype=np.int64)
            below = 0
            for v in range(lo, hi + 1):
                while below < m and thresholds[p, below] < v:
                    below += 1
                table[v - lo] = below
            for i in range(n):
                out[i, p] = table[row[i] - lo]
            continue
        for i in range(n):
            v = row[i]
            a, b = 0, m
            while a < b:
                mid = (a + b) >> 1
                if thresholds[p, mid] < v:
                    a = mid + 1
                else:
                    b = mid
            out[i, p] = a


@njit(cache=True, nogil=True)
def order_statistics(props, ranks, out, counted):
    """``out[p, j]``: the value of rank ``ranks[j]`` (increasing, 0 the smallest) among
    ``props[p]``: what ``np.quantile(props[p], q, method="lower")`` returns for ranks
    ``floor((n - 1) * q)``, counted. ``counted[p]`` says whether property p was: one
    whose range is too wide to count is left for the caller (a partial sort)."""
    n = props.shape[1]
    for p in range(props.shape[0]):
        row = props[p]
        lo, hi = _range(row)
        counted[p] = _countable(lo, hi, n)
        if counted[p]:
            counts = np.zeros(hi - lo + 1, dtype=np.int64)
            for i in range(n):
                counts[row[i] - lo] += 1
            seen = 0
            value = 0
            for j in range(ranks.size):
                while seen + counts[value] <= ranks[j]:
                    seen += counts[value]
                    value += 1
                out[p, j] = lo + value


@njit(cache=True, nogil=True, inline="always")
def _token(z, mantissa, direct):
    """``paths.tokenize`` of one non-negative int: (token, raw bits)."""
    if z < direct:
        return z, 0
    n = np.int64(63) - np.int64(leading_zeros(np.uint64(z)))  # floor(log2(z)), z >= direct > 0
    nb = n - mantissa
    return direct - (4 << mantissa) + (n << mantissa) + ((z >> nb) & ((1 << mantissa) - 1)), nb


@kernel
def leaf_token_counts(preds, flat, ctx, mantissa, direct, hist, top):
    """For each candidate k's predictions ``preds[k]`` (K, n) of ``flat`` (n,): the
    residual tokens (``paths.tokenize`` of their zigzag) counted per context leaf
    ``ctx`` into ``hist[k, leaf, token]``, and the largest token into ``top[k]``.
    ``hist`` must hold every token (an alphabet of ``paths.token_alphabet``); it is
    cleared first. A token's raw bits are fixed (``paths.token_lookup``), so their sum per
    leaf is ``hist @ raw_bits``: summed here a second scattered count per residual, that
    took 1.11x the time (25 x 262,144 residuals of a 256-leaf 12-bit plane)."""
    hist[:] = 0
    for k in range(preds.shape[0]):
        row = preds[k]
        t_max = 0
        for i in range(flat.size):
            e = np.int64(flat[i]) - np.int64(row[i])
            z = (e << 1) ^ (e >> 63)
            t, nb = _token(z, mantissa, direct)
            if t >= hist.shape[2] or not 0 <= ctx[i] < hist.shape[1]:  # no bounds checks in compiled code
                raise IndexError("residual token or leaf outside the count table")
            hist[k, ctx[i], t] += 1
            if t > t_max:
                t_max = t
        top[k] = t_max


@kernel
def tokenize_into(z, mantissa, direct, token, extra, nbits):
    """``paths.tokenize`` of every element of ``z`` (non-negative int64) into the three
    output arrays."""
    for i in range(z.size):
        v = z[i]
        t, nb = _token(v, mantissa, direct)
        token[i] = t
        nbits[i] = nb
        extra[i] = v - ((v >> nb) << nb)


@kernel
def _leaf_medians(residual, ctx, counts, fill, scratch, out):
    """``leaf_medians``' work: the residuals gathered by leaf into ``scratch`` (``fill``:
    each leaf's first slot), then each leaf's lower median selected in place."""
    for i in range(residual.size):
        c = ctx[i]
        scratch[fill[c]] = residual[i]
        fill[c] += 1
    for leaf in range(counts.size):
        n = counts[leaf]
        if n == 0:
            out[leaf] = 0
            continue
        lo = fill[leaf] - n
        hi = fill[leaf] - 1
        k = lo + (n - 1) // 2
        # Hoare's selection with a median-of-three pivot: afterwards scratch[k] is the
        # leaf's k-th smallest residual, the value a sort would put there.
        while lo < hi:
            mid = (lo + hi) >> 1
            a, b, c = scratch[lo], scratch[mid], scratch[hi]
            pivot = max(min(a, b), min(max(a, b), c))
            i, j = lo, hi
            while i <= j:
                while scratch[i] < pivot:
                    i += 1
                while scratch[j] > pivot:
                    j -= 1
                if i <= j:
                    t = scratch[i]
                    scratch[i] = scratch[j]
                    scratch[j] = t
                    i += 1
                    j -= 1
            if k <= j:
                hi = j
            elif k >= i:
                lo = i
            else:
                break
        out[leaf] = scratch[k]


def leaf_medians(residual: np.ndarray, ctx: np.ndarray, leaves: int) -> np.ndarray:
    """Each leaf's lower median residual (0 for a leaf without pixels): of the residuals
    of the pixels whose context ``ctx`` (each below ``leaves``) is the leaf, sorted, the
    one at ``(count - 1) // 2``. Linear time (a selection per leaf), not a sort."""
    residual = np.ascontiguousarray(residual, dtype=np.int64)
    ctx = np.ascontiguousarray(ctx, dtype=np.int64)
    counts = np.bincount(ctx, minlength=leaves).astype(np.int64)
    fill = np.zeros(counts.size, dtype=np.int64)
    np.cumsum(counts[:-1], out=fill[1:])
    out = np.empty(counts.size, dtype=np.int64)
    _leaf_medians(residual, ctx, counts, fill, np.empty(residual.size, dtype=np.int64), out)
    return out
