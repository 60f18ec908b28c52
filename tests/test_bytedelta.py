"""medcodec.bytedelta: bytes as copies from a reference and literal runs."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcodec import bytedelta
from medcodec.errors import CorruptRecordError
from medcodec.paths import IntWriter

BLOCK = bytedelta.BLOCK


@st.composite
def _related(draw):
    """A reference and data made of its pieces (moved, repeated) and new bytes."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    reference = bytes(rng.getrandbits(8) for _ in range(draw(st.integers(0, 3000))))
    if draw(st.booleans()):
        reference += bytes(draw(st.integers(0, 500)))  # a run of zeros: hashes repeat
    parts = []
    for _ in range(draw(st.integers(0, 8))):
        if reference and draw(st.booleans()):
            start = draw(st.integers(0, len(reference) - 1))
            parts.append(reference[start : start + draw(st.integers(1, 400))])
        else:
            parts.append(bytes(rng.getrandbits(8) for _ in range(draw(st.integers(0, 200)))))
    return b"".join(parts), reference


@settings(max_examples=200, deadline=None)
@given(_related())
def test_a_delta_decodes_to_its_data(pair):
    data, reference = pair
    found = bytedelta.copies(data, reference)
    at = 0
    for i, r, n in found:  # disjoint, in order, long enough, equal
        assert i >= at and n >= BLOCK and data[i : i + n] == reference[r : r + n]
        at = i + n
    # none missed: no window between copies is one of the reference's aligned blocks
    blocks = {reference[k : k + BLOCK] for k in range(0, len(reference) - BLOCK + 1, BLOCK)}
    gaps, at = [], 0
    for i, _, n in [*found, (len(data), 0, 0)]:
        gaps.extend(range(at, min(i, len(data) - BLOCK + 1)))
        at = i + n
    assert not [g for g in gaps if data[g : g + BLOCK] in blocks]
    assert bytedelta.decode(bytedelta.encode(data, reference), reference, len(data)) == data


def test_moved_pieces_are_copied_and_changes_kept_as_literals():
    rng = random.Random(5)
    reference = bytes(rng.getrandbits(8) for _ in range(200_000))
    data = reference[150_000:180_000] + b"PATIENT^NAME" + reference[1_000:90_000] + b"\x00" * 3
    stream = bytedelta.encode(data, reference)
    assert len(stream) < 64 and bytedelta.decode(stream, reference, len(data)) == data
    assert [(i, r) for i, r, _ in bytedelta.copies(data, reference)] == [(0, 150_000), (30_012, 1_000)]


def _stream(*numbers_and_bytes) -> bytes:
    w = IntWriter()
    for x in numbers_and_bytes:
        if isinstance(x, bytes):
            w.buf += x
        else:
            w.put(x)
    return bytes(w.buf)


@pytest.mark.parametrize("stream, message", [
    (_stream(5, b"ab"), "literal of 5 bytes with 2 left"),
    (_stream(0, 10, 95), "outside a reference of 100"),
    (_stream(0, -3, 0), "outside a reference"),
    (_stream(-1), "literal of -1"),
    (_stream(2, b"ab"), "ends early"),
    (_stream(0, 60, 0, 0, 60, 0), "more than 100 bytes"),
])
def test_a_malformed_delta_is_refused(stream, message):
    with pytest.raises(CorruptRecordError, match=message):
        bytedelta.decode(stream, bytes(100), 100)
