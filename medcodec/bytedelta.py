"""Bytes as copies from a reference and literal runs: the sealed original's delta for
large headers (FORMAT.md "Sealed original, packed against the de-identified file").

A de-identified header keeps most of its original's bytes (a palette LUT, a waveform, a
retained private block) at other offsets, or in another transfer syntax's element
framing. Deflate reaches only 32 KiB back, and xz takes no preset dictionary, so a large
header was packed with nothing to refer to (259 kB ultrasound headers: 16.8 kB; an ECG
kept verbatim: 76 kB). Here the writer finds the runs of at least ``BLOCK`` bytes that
occur in the reference and writes them as copies; the literals between them are what
de-identification changed, and what xz then packs.

Stream: until it ends, ``literal_len``, the literal bytes, ``copy_len`` and, when
``copy_len`` > 0, ``copy_from`` (an offset into the reference); every number a varint
as the codec's side information writes them (zigzag LEB128, ``paths.IntWriter``).
"""

from __future__ import annotations

import numpy as np

from .errors import CorruptRecordError
from .paths import IntReader, IntWriter

# Copies are found from runs of this many bytes that start at a multiple of it in the
# reference (every longer shared run holds one), hashed (a polynomial hash mod 2**64,
# every candidate then compared byte for byte) and extended both ways.
BLOCK = 64
# Of a reference longer than this many times the data plus 1 MiB, only that many first
# bytes are searched: headers come first, and a multi-frame codestream kept verbatim
# (the rest of the reference) is not hashed for a 100 kB header.
_SEARCH_FACTOR = 8
_P = 0x100000001B3  # odd: invertible mod 2**64
_CHUNK = 1 << 20
_FILTER_BITS = 16


def _powers(n: int, base: int) -> np.ndarray:
    out = np.empty(n, dtype=np.uint64)
    out[0] = 1
    out[1:] = np.uint64(base)
    with np.errstate(over="ignore"):
        return np.cumprod(out, dtype=np.uint64)


def _block_hashes(ref: np.ndarray) -> np.ndarray:
    """The hash of each aligned ``BLOCK`` of ``ref``: sum of byte k times P**k (mod 2**64)."""
    powers = _powers(BLOCK, _P)
    n = ref.size // BLOCK
    out = np.empty(n, dtype=np.uint64)
    rows = _CHUNK // BLOCK
    with np.errstate(over="ignore"):
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            out[lo:hi] = (ref[lo * BLOCK : hi * BLOCK].reshape(-1, BLOCK).astype(np.uint64) * powers).sum(
                axis=1, dtype=np.uint64)
    return out


def _window_hashes(data: np.ndarray) -> np.ndarray:
    """The hash of ``data[i : i + BLOCK]`` for every i, as ``_block_hashes`` defines it,
    from prefix sums: (H[i + BLOCK] - H[i]) * P**-i."""
    n = data.size
    with np.errstate(over="ignore"):
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(data.astype(np.uint64) * _powers(n, _P), dtype=np.uint64, out=prefix[1:])
        inverse = _powers(n - BLOCK + 1, pow(_P, -1, 1 << 64))
        return (prefix[BLOCK:] - prefix[: n - BLOCK + 1]) * inverse


def copies(data: bytes, reference: bytes) -> list[tuple[int, int, int]]:
    """(offset in ``data``, offset in ``reference``, length) of the runs the writer copies:
    in increasing order, disjoint, each at least ``BLOCK`` bytes and equal in both."""
    search = reference[: _SEARCH_FACTOR * len(data) + _CHUNK]
    if len(data) < BLOCK or len(search) < BLOCK:
        return []
    a = np.frombuffer(data, dtype=np.uint8)
    b = np.frombuffer(search, dtype=np.uint8)
    ref_hashes = _block_hashes(b)
    order = np.argsort(ref_hashes, kind="stable")
    ranked = ref_hashes[order]
    hashes = _window_hashes(a)
    # Only windows whose top bits some block's hash has are searched for: a search of
    # every window took 13 of 21 ms on a 259 kB header, and most share no block.
    present = np.zeros(1 << _FILTER_BITS, dtype=bool)
    present[ranked >> np.uint64(64 - _FILTER_BITS)] = True
    candidates = np.flatnonzero(present[hashes >> np.uint64(64 - _FILTER_BITS)])
    slot = np.minimum(np.searchsorted(ranked, hashes[candidates]), ranked.size - 1)
    hit = ranked[slot] == hashes[candidates]
    found = candidates[hit]
    found_ref = order[slot[hit]] * BLOCK
    out: list[tuple[int, int, int]] = []
    at = k = 0
    while k < found.size:
        i, r = int(found[k]), int(found_ref[k])
        if data[i : i + BLOCK] != search[r : r + BLOCK]:  # a hash collision
            k += 1
            continue
        end, ref_end, step = i + BLOCK, r + BLOCK, BLOCK
        while end < a.size and ref_end < b.size:  # forward, in pieces that double
            m = min(step, a.size - end, b.size - ref_end)
            differ = np.flatnonzero(a[end : end + m] != b[ref_end : ref_end + m])
            if differ.size:
                end, ref_end = end + int(differ[0]), ref_end + int(differ[0])
                break
            end, ref_end, step = end + m, ref_end + m, min(2 * step, _CHUNK)
        while i > at and r > 0 and data[i - 1] == search[r - 1]:  # back to the last copy
            i, r = i - 1, r - 1
        out.append((i, r, end - i))
        at = end
        k = int(np.searchsorted(found, at))
    return out


def encode(data: bytes, reference: bytes) -> bytes:
    """``data`` as the stream of literals and copies from ``reference`` (module doc)."""
    side = IntWriter()
    at = 0
    for i, r, n in copies(data, reference):
        side.put(i - at)
        side.buf += data[at:i]
        side.put(n)
        side.put(r)
        at = i + n
    if at < len(data):
        side.put(len(data) - at)
        side.buf += data[at:]
        side.put(0)
    return bytes(side.buf)


def decode(stream: bytes, reference: bytes, limit: int) -> bytes:
    """The bytes ``stream`` stands for against ``reference``; CorruptRecordError for a
    stream that copies from outside the reference, ends inside an instruction or would
    make more than ``limit`` bytes."""
    reader = IntReader(stream)
    out = bytearray()
    while reader.at < len(stream):
        n = reader.get()
        if not 0 <= n <= len(stream) - reader.at:
            raise CorruptRecordError(f"delta literal of {n} bytes with {len(stream) - reader.at} left")
        out += stream[reader.at : reader.at + n]
        reader.at += n
        n = reader.get()
        if n:
            r = reader.get()
            if n < 0 or r < 0 or r + n > len(reference):
                raise CorruptRecordError(f"delta copy of {n} bytes from {r}, outside a reference of {len(reference)}")
            out += reference[r : r + n]
        elif n < 0:
            raise CorruptRecordError("delta copy of a negative length")
        if len(out) > limit:
            raise CorruptRecordError(f"delta makes more than {limit} bytes")
    return bytes(out)
