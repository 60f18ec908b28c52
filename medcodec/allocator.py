"""Process-wide allocator settings for medarchive's own processes (CLI, Beam workers, benchmarks).

The coders allocate many short-lived arrays of a few MB per plane. glibc serves those with
fresh ``mmap`` pages (or trims the heap after freeing them), so every encode pays page
faults on memory it just released: on the held-out 512 x 512 CT plane, raster-ls-v1's
encoder spent 127 ms with the defaults and 107 ms with the settings below (OBXXXX1A:
163 -> 130 ms), in CPU time, same bytes. Keeping up to ``TRIM`` of freed memory per
arena and serving requests of up to ``MMAP`` from it trades resident memory for those
faults.

NumPy also asks the kernel for transparent huge pages (``madvise``) on every array of
4 MB or more. Each such fault zeroes 2 MB, and on these machines one cost up to 25 ms of
system time, varying with the memory's state: ``max`` encoding held-out RG3_J2KR (3.1 M
pixels) took 1.6 to 8.2 s over three runs in one process (system time 0.07 to 6.5 s)
with them, 1.7 to 1.8 s without (0.08 to 0.21 s). ``tune()`` turns that request off
unless ``NUMPY_MADVISE_HUGEPAGE`` is set (numpy's own switch, which it then follows):
held-out ``max`` encode 18.7-19.3 -> 14.7-15.1 s, separate processes, the same bytes;
`fast` and decoding, which hold no arrays that large for long, are unchanged.

Worker threads allocate from the main arena too (``ARENAS``). glibc gives each new thread
an arena of its own, built of 64 MB heaps that are mapped as the thread's working set
grows and unmapped (or given back with ``MADV_DONTNEED``) as it shrinks: the thresholds
above keep memory only in the main arena, so a local migrate's worker threads faulted
their arrays in again and again. `migrate --preset max` with 2 workers (threads) on the
pipeline benchmark, fresh processes, four alternated pairs (2026-12-07): 1.05-1.08 M page
faults and 2.55-2.80 s of system time with an arena per thread, 339-385 k and 1.23-1.33 s
with one; 15.9-19.8 s wall against 15.1-15.7 s, faster in every pair. After a codec pass
in the same process, as the benchmark runs it, three pairs: 2.25-2.41 s of system time
and 1.04-1.05 M faults against 0.96-1.49 s and 299-336 k, with as many context switches
(no waiting on the arena's lock). The benchmark's own command
(``benchmarks.pipeline_throughput --workers 2 --preset max``, six alternated pairs, a
machine whose speed wandered by 20%): 2.52-2.89 MB/s (median 2.70) against 2.33-2.99
(2.89), faster in four. One worker (the main
thread) and `fast` are unchanged (35 k faults). A thread gets its arena at its first
allocation: ``tune()`` covers the threads started after it (a local run's workers, the
queue's threads), not those a host started before. The arena's lock is shared; glibc's
per-thread cache serves small blocks without it, and two threads' user time did not grow
(fresh processes: 25.1-26.4 s against 25.4-30.3 s).

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
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8
# glibc's ceiling for its own dynamic mmap threshold on 64-bit. glibc 2.36 accepts more (256 MB),
# but held-out `max` encoded no faster with it (16.05-16.32 s against 16.27-16.39 s).
MMAP = 32 << 20
TRIM = 512 << 20
TOP_PAD = 64 << 20
ARENAS = 1

_done: dict | None = None


def tune() -> dict:
    """Apply the settings once per process; returns what was set (empty when nothing was)."""
    global _done
    if _done is not None:
        return _done
    _done = {}
    if os.environ.get("MEDARCHIVE_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return _done
    if "NUMPY_MADVISE_HUGEPAGE" not in os.environ and _numpy_huge_pages(False) is not None:
        _done["numpy_hugepage"] = False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return _done
    for name, param, value in (("mmap_threshold", M_MMAP_THRESHOLD, MMAP), ("trim_threshold", M_TRIM_THRESHOLD, TRIM),
                               ("top_pad", M_TOP_PAD, TOP_PAD), ("arena_max", M_ARENA_MAX, ARENAS)):
        if mallopt(param, value) == 1:
            _done[name] = value
    return _done


def _numpy_huge_pages(enabled: bool) -> bool | None:
    """Set whether numpy madvises its large arrays for huge pages; the previous setting,
    or None where this numpy has no such switch."""
    import numpy as np

    core = getattr(np, "_core", None) or getattr(np, "core", None)
    switch = getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)
    return None if switch is None else bool(switch(enabled))
