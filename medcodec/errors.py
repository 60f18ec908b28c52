"""One error hierarchy for the codec: every failure a user can cause is a MedcodecError.

Messages say what was wrong, quote the bad value, and say what would be right.
They never contain pixel data, header values or key material.
"""

from __future__ import annotations

import functools
import re


class MedcodecError(Exception):
    """Base class of every error raised by medcodec on bad input or a bad record."""


class InvalidDicomError(MedcodecError):
    """The input is not a DICOM file, or is truncated / internally inconsistent."""


class UnsupportedError(MedcodecError):
    """The input is valid but uses something this version cannot handle (e.g. an unknown transfer syntax)."""


class LimitExceededError(MedcodecError):
    """The input claims dimensions or sizes beyond a configured limit."""


class CorruptRecordError(MedcodecError):
    """A record fails its checksums, is truncated, or decodes to data that does not match its digests."""


class UnsupportedVersionError(MedcodecError):
    """A record was written by a container major version this reader does not know."""


class ModelMismatchError(MedcodecError):
    """A record names a model (id + hash) that is not the one available for decoding."""


_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def shown(value: object) -> str:
    """A value read from a record, as an error message may show it.

    Short identifiers (the codec, model, preset, kind and mode names records carry:
    letters, digits and ``._+-``, at most 64) and numbers are quoted; any other value is
    described by its type and length only, so a message never carries arbitrary record
    content, control characters or a whole page of text."""
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**20 else f"(an integer of {len(str(abs(value)))} digits)"
    if isinstance(value, str):
        return repr(value) if _IDENTIFIER.fullmatch(value) else f"(a {len(value)}-character string)"
    return f"(a {type(value).__name__})"


def described(exc: BaseException) -> str:
    """An exception met while reading a record's fields, without its text (which quotes
    the field's value): its type, and for a KeyError the missing field."""
    if isinstance(exc, KeyError) and exc.args:
        return f"missing field {shown(exc.args[0])}"
    return type(exc).__name__


def record_errors(func):
    """Decorator for the functions that read records: a failure that is not already a
    MedcodecError (a crafted or damaged record reaching an assertion, a missing key or an
    index out of range inside a decoder) becomes one CorruptRecordError line naming the
    exception type, never a traceback; MemoryError becomes LimitExceededError. The
    exception's own text is left out: it could quote record contents."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MedcodecError:
            raise
        except MemoryError:
            raise LimitExceededError(f"{func.__name__}: out of memory decoding this record") from None
        except Exception as exc:  # noqa: BLE001 - the boundary where every failure becomes typed
            raise CorruptRecordError(
                f"record cannot be decoded: {type(exc).__name__} in {func.__name__} (damaged or crafted record)"
            ) from None

    return wrapper
