"""Keeping pydicom and its native plugins quiet: the one way medcodec silences pydicom
(``quiet_pydicom``), and the guard for what native decoders write to stderr."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

_LOG = logging.getLogger(__name__)


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _pydicom_loggers() -> list[logging.Logger]:
    """pydicom's logger and those below it ("pydicom.pixels.encoders.base" ...): a filter
    on a parent does not see what its children log. Importing pydicom creates them all,
    and a module it imports later may add some.

    Listed anew only when logging's registry has changed: it only grows (a new name), or
    turns a placeholder (a name only known as some logger's parent) into a logger in
    place. Listing it took ~20 us with Beam's ~200 loggers, and a keyed archive of one
    file enters ``quiet_pydicom`` four times (a keyless one once)."""
    global _listed
    importlib.import_module("pydicom")
    registry = logging.root.manager.loggerDict
    listed = _listed
    if listed is not None and listed[0] == len(registry) and not any(
            isinstance(registry.get(name), logging.Logger) for name in listed[2]):
        return listed[1]
    entries = list(registry.items())
    loggers = [logging.getLogger("pydicom")] + [
        logger for name, logger in entries if name.startswith("pydicom.") and isinstance(logger, logging.Logger)
    ]
    placeholders = tuple(name for name, entry in entries
                         if name.startswith("pydicom.") and not isinstance(entry, logging.Logger))
    _listed = (len(registry), loggers, placeholders)
    return loggers


# (registry size, pydicom's loggers, the pydicom names that were placeholders) when listed
_listed: tuple[int, list[logging.Logger], tuple[str, ...]] | None = None


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and log records inside the block: its value-validation
    messages quote values (PHI, in a header), and it logs a traceback for every plugin that
    fails to encode, which a trial encode is allowed to do. A filter of this call's own on
    each logger, so that nested and concurrent blocks each remove only theirs."""
    drop = _DropAll()
    loggers = _pydicom_loggers()
    for logger in loggers:
        logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Keep what native code writes straight to file descriptor 2 off the user's stderr.

    The decoding plugins are native (the RLE plugin is Rust): on hostile input a panic
    prints its message, and with RUST_BACKTRACE set a backtrace of some 80 lines, to fd 2
    before it reaches Python as an exception that we report in one line. Output written
    inside this block goes to a temporary file and to this module's logger at DEBUG. It
    is process-wide: another thread's stderr output in the same moment is logged too.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (an embedded interpreter): nothing to guard
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(1 << 16)
            if text:
                _LOG.debug("a decoding plugin wrote %d bytes to stderr: %s", len(text),
                           text.decode("utf-8", "replace").splitlines()[0][:200])
