"""Unsigned LEB128 numbers: 7 bits a byte, low first, the high bit set on all but the last.

The essential PHI message's field lengths and the displaced information's direction
exceptions (``medcodec.stego``) are written this way; each reader raises its own error.
"""

from __future__ import annotations


def encode(n: int) -> bytes:
    """``n`` (>= 0) as unsigned LEB128."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode(data: bytes, at: int, max_bits: int) -> tuple[int, int] | None:
    """(the number at ``at``, the offset after it); None where ``data`` ends inside it or
    it runs past ``max_bits`` bits (damage: no writer's number is that wide)."""
    n = shift = 0
    while at < len(data) and shift < max_bits:
        byte = data[at]
        at += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, at
    return None
