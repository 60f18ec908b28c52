"""Process-wide allocator settings for medarchive's own processes (CLI, Beam workers, benchmarks).

The coders allocate many short-lived arrays of a few MB per plane. glibc serves those with
fresh ``mmap`` pages (or trims the heap after freeing them), so every encode pays page
faults on memory it just released: on the held-out 512 x 512 CT plane, raster-ls-v1's
encoder spent 127 ms with the defaults and 107 ms with the settings below (OBXXXX1A:
163 -> 130 ms), in CPU time, same bytes. Keeping up to ``TRIM`` of freed memory per
arena and serving requests of up to ``MMAP`` from it trades resident memory for those
faults.

A library does not change its host's allocator on import: ``tune()`` is called by
medarchive's entry points (``jobs.cli``, the pipelines' DoFn set-up, ``benchmarks``),
and ``MEDARCHIVE_MALLOC=default`` turns it off. It does nothing off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc malloc.h) and the values set.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP = 32 << 20  # glibc's ceiling for the mmap threshold on 64-bit
TRIM = 512 << 20
TOP_PAD = 64 << 20

_done: dict | None = None


def tune() -> dict:
    """Apply the settings once per process; returns what was set (empty when nothing was)."""
    global _done
    if _done is not None:
        return _done
    _done = {}
    if os.environ.get("MEDARCHIVE_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return _done
    for name, param, value in (("mmap_threshold", M_MMAP_THRESHOLD, MMAP), ("trim_threshold", M_TRIM_THRESHOLD, TRIM),
                               ("top_pad", M_TOP_PAD, TOP_PAD)):
        if mallopt(param, value) == 1:
            _done[name] = value
    return _done
