"""The codec's CPU thread count: torch's for the transformer path, chosen before torch
is loaded, and numpy's BLAS (the encoder's least-squares fits and matrix products).

A host sets it once per process (``medcodec.set_model_threads``); torch gets it when it
is there already or when ``registry`` loads it, so a process that never codes with a
transformer (`fast` jobs) never imports torch for it: about a second and 180 MB per
worker process. BLAS gets it at once (``threadpoolctl``). OpenBLAS otherwise starts a
thread per core and its threads spin while they wait: on 2 cores raster-wp-v4's
encoder took 2.5x the CPU time with 2 BLAS threads as with 1 (50.8 against 20.5 s on 35
train planes), and two workers each running 2 BLAS threads oversubscribe the machine. The bitstream
does not depend on the thread count.
"""

from __future__ import annotations

import sys

_wanted: int | None = None


def set_threads(n: int) -> None:
    """Use ``n`` CPU threads (at least 1): BLAS now, torch now if it is loaded, else once it is."""
    global _wanted
    _wanted = max(1, int(n))
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=_wanted, user_api="blas")
    torch = sys.modules.get("torch")
    if torch is not None:
        apply(torch)


def apply(torch) -> None:
    """Give ``torch`` the thread count set here, if one was."""
    if _wanted is not None:
        torch.set_num_threads(_wanted)
