"""How the compiled kernels are compiled.

``kernel`` is numba's ``njit`` with its cache on (``cache=True``: compiled once per
machine, kept beside the module), the GIL released while it runs (``nogil``), and without
numba's reference counting (``_nrt=False``). With it on, a kernel passes every array it
hands to an inlined helper (or copies a row of) through ``NRT_incref`` and
``NRT_decref``, atomic increments and decrements of the array's count, and the refcount
pruning pass leaves several per pixel wherever the helpers branch. perf put 40% of the
samples of a run decoding MR2_J2KR with ``raster-wp-v4`` in those two functions
(``coders.wp4kernel``: its per-pixel model hands 14 arrays to inlined helpers). Without
them, the same bytes and planes out (one thread; before and after run back to back):

* ``raster-wp-v4`` decode: MR2_J2KR 0.37 -> 0.20 s; 7 train and held-out planes (6.1 M
  samples) 1,384 -> 708 ms;
* ``raster-wp-v4`` encode, the 117 train planes: 21.7-22.9 s -> 18.7-20.0 s;
* ``interlaced-tree-v2`` on MR2_UNCI: encode 1.37 -> 1.03 s, decode 0.59 -> 0.49 s.

Kernels that keep their state in scalars gain nothing and keep numba's default
(``coders.wpkernel``, ``coders.bandkernel``: ``raster-wpc-v3`` and ``wavelet53-v2``
measured the same). A kernel compiled this way cannot make arrays (numba refuses to
compile one that does, and a row assignment makes one): its caller makes them and
passes them in. The arithmetic, and so every byte, is the same.
"""

from __future__ import annotations

from numba import njit

kernel = njit(cache=True, nogil=True, _nrt=False)
