"""One error hierarchy for the codec: every failure a user can cause is a MedcodecError.

Messages say what was wrong, quote the bad value, and say what would be right.
They never contain pixel data, header values or key material.
"""

from __future__ import annotations


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
