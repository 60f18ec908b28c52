"""How the compiled kernels are compiled.

``kernel`` is numba's ``njit`` with its cache on (``cache=True``: compiled once per
machine, kept beside the module), the GIL released while it runs (``nogil``), and without
numba's reference counting (``_nrt=False``). With it on, a kernel passes every array it
hands to an inlined helper (or copies a row of) through an atomic increment and decrement
of the array's count, and the refcount pruning pass leaves several such ``lock``
instructions per pixel wherever the helpers branch. perf put 40% of ``raster-wp-v4``'s
decode samples there (``coders.wp4kernel``: its per-pixel model hands 14 arrays to
inlined helpers), 34% of its encode's and 32% of ``interlaced-tree-v2``'s encode's.
Without them, the same bytes and planes out, one thread:

* ``raster-wp-v4`` decode, 7 train and held-out planes (6.1 M samples): 1,384 -> 708 ms;
* ``raster-wp-v4`` encode, the 117 train planes: 21.7-22.9 s -> 18.7-20.0 s;
* ``interlaced-tree-v2``, the first two planes of 5 images: encode 4.9-5.4 s -> 4.3-4.5 s,
  decode 2.7-3.1 s -> 2.2 s.

Kernels that keep their state in scalars gain nothing and keep numba's default
(``coders.wpkernel``, ``coders.bandkernel``: ``raster-wpc-v3`` and ``wavelet53-v2``
measured the same). A kernel compiled this way cannot make arrays (numba refuses to
compile one that does, and a row assignment makes one): its caller makes them and
passes them in. The arithmetic, and so every byte, is the same.
"""

from __future__ import annotations

from numba import njit

kernel = njit(cache=True, nogil=True, _nrt=False)
