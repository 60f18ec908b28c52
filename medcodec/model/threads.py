"""Torch's CPU thread count for the transformer path, chosen before torch is loaded.

A host sets it once per process (``medcodec.set_model_threads``); torch gets it when it
is there already or when ``registry`` loads it, so a process that never codes with a
transformer (`fast` jobs) never imports torch for it: about a second and 180 MB per
worker process. The bitstream does not depend on the thread count.
"""

from __future__ import annotations

import sys

_wanted: int | None = None


def set_threads(n: int) -> None:
    """Use ``n`` torch CPU threads (at least 1), now if torch is loaded, else once it is."""
    global _wanted
    _wanted = max(1, int(n))
    torch = sys.modules.get("torch")
    if torch is not None:
        apply(torch)


def apply(torch) -> None:
    """Give ``torch`` the thread count set here, if one was."""
    if _wanted is not None:
        torch.set_num_threads(_wanted)
