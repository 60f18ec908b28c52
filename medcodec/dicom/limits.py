"""What one input may cost (memory, size, time), and which failures are the input's fault."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ..errors import LimitExceededError


def default_memory_budget() -> int:
    """Bytes one input may use by default: 60% of this machine's physical memory."""
    try:
        return int(0.6 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # no sysconf: assume a small machine
        return 4 << 30


@dataclass(frozen=True, kw_only=True)
class DicomLimits:
    """Upper bounds on what a header (or a record) may claim, checked before anything is
    allocated.

    ``memory_bytes``: the budget for one input's working memory (None: 60% of physical
    memory, ``default_memory_budget``); an image is refused when its samples times
    ``bytes_per_sample`` (the measured peak of the work to be done on it, set by the
    caller: ``medcodec.codec.working_bytes_per_sample``) exceed it. ``max_pixel_ratio``:
    decoded pixel bytes per byte of compressed pixel data (a 2 kB file must not claim a
    4000 x 4000 image); None turns the check off. ``seconds``: how long coding one input may
    take (None: no limit; migrate and compress default to 600 s); a cooperative deadline
    (``deadline()``) checked at natural boundaries of the encoder, so it stops an input
    between planes, never inside one (one plane is bounded by the memory budget).
    """

    max_samples: int = 2**31
    max_rows: int = 65535
    max_cols: int = 65535
    max_frames: int = 100_000
    memory_bytes: int | None = None
    bytes_per_sample: int = 0
    max_pixel_ratio: int | None = 10_000
    seconds: float | None = None

    def deadline(self) -> "Deadline":
        """A deadline ``seconds`` from now, for one input's coding."""
        return Deadline(self.seconds)

    def check_memory(self, samples: int, what: str) -> None:
        """Raise LimitExceededError when ``samples`` would need more than the memory budget."""
        need = samples * self.bytes_per_sample
        budget = default_memory_budget() if self.memory_bytes is None else self.memory_bytes
        if need > budget:
            raise LimitExceededError(
                f"{what} of {samples} samples needs about {need / 2**30:.1f} GiB to code, over the memory budget of"
                f" {budget / 2**30:.1f} GiB (raise it with --memory-budget)"
            )


class Deadline:
    """When coding one input must stop (``DicomLimits.seconds``). Cooperative: the encoder
    calls ``check`` at its natural boundaries (between planes, between candidate models and
    colour choices, before verification), which raises LimitExceededError once the time is
    up. ``Deadline(None)`` never expires."""

    __slots__ = ("seconds", "at")

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.at = None if seconds is None else time.monotonic() + seconds

    def check(self, where: str) -> None:
        if self.at is not None and time.monotonic() > self.at:
            raise LimitExceededError(
                f"coding this input took longer than the time limit of {self.seconds:g} s (stopped {where};"
                " raise it with --max-seconds)"
            )


NO_DEADLINE = Deadline(None)


def caused_by_input(exc: BaseException) -> bool:
    """True for failures bad input can cause.  Codec extensions written in Rust (pyo3)
    raise PanicException, a BaseException, on malformed codestreams: those count too;
    interrupts, exits and running out of memory do not."""
    return not isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError))
