"""How the compiled kernels are compiled.

``kernel`` is numba's ``njit`` with its cache on (``cache=True``: compiled once per
machine, kept beside the module), the GIL released while it runs (``nogil``), and without
numba's reference counting (``_nrt=False``). A kernel with it on passes every array it
hands to an inlined helper through an atomic increment and decrement of the array's
count, and the refcount pruning pass leaves several such ``lock`` instructions per
pixel where the helpers branch. In ``raster-wp-v4``'s decoder (``coders.wp4kernel``, whose
per-pixel model passes 14 arrays through inlined helpers) they took 40% of the samples
(perf, MR2_J2KR); without them the decoder runs twice as fast (7 planes of the train and
held-out splits, 6.1 M samples: 1,384 ms -> 708 ms, the same planes out). Kernels that
keep their state in scalars gain nothing (``raster-wpc-v3``, ``wavelet53-v2``, and
``wavekernel``'s encoder passes measured the same). A kernel compiled this way cannot make
arrays (numba refuses to compile one that does): its caller makes them and passes them
in. The arithmetic, and so every byte, is the same.
"""

from __future__ import annotations

from numba import njit

kernel = njit(cache=True, nogil=True, _nrt=False)
