"""Split a DICOM file into (header bytes, raw pixel words, trailer bytes) and back.

Three restore modes (see ``ParsedDicom.restore_mode``):

* ``byte-exact``: native syntaxes (Implicit VR LE, Explicit VR LE / BE, and
  headerless datasets).  The frames are the raw PixelData words exactly as
  stored, and ``rebuild_dicom`` gives back the original bytes.
* ``pixel-exact``: lossless compressed syntaxes (RLE, JPEG Lossless, JPEG-LS
  Lossless, JPEG 2000 Lossless, HTJ2K Lossless).  The frames are the decoded
  words; restore re-encodes them (same syntax when an encoder exists and was
  verified to give the same words back, else Explicit VR Little Endian).
* ``verbatim``: everything else (lossy or unknown-to-us compression, layouts
  the integer pixel codec cannot code): the original file is kept as-is.

The exact byte offset of the top-level PixelData value is found by our own
element walker (pydicom stops silently at a truncated element, we must not),
and cross-checked against the offset pydicom recorded while reading.

Modules, along pydicom's own lines: ``reading`` (parse_dicom, is_dicom; pydicom's
filereader), ``writing`` (rebuild_dicom; filewriter), ``encapsulation`` (compressed frames;
encaps and pixels' decoders / encoders), ``pixel_words`` (native PixelData values),
``geometry`` (the header's pixel attributes as a PixelSpec, and their rules), ``elements``
(our own element walk), ``syntaxes``, ``limits``, ``parsed`` (ParsedDicom) and ``quiet``
(the one way to silence pydicom).
"""

from .limits import NO_DEADLINE, Deadline, DicomLimits, default_memory_budget
from .parsed import RESTORE_BYTE_EXACT, RESTORE_PIXEL_EXACT, RESTORE_VERBATIM, ParsedDicom
from .quiet import native_stderr_captured, quiet_pydicom
from .reading import is_dicom, parse_dicom, parse_written
from .writing import rebuild_dicom

__all__ = [
    "NO_DEADLINE",
    "RESTORE_BYTE_EXACT",
    "RESTORE_PIXEL_EXACT",
    "RESTORE_VERBATIM",
    "Deadline",
    "DicomLimits",
    "ParsedDicom",
    "default_memory_budget",
    "is_dicom",
    "native_stderr_captured",
    "parse_dicom",
    "parse_written",
    "quiet_pydicom",
    "rebuild_dicom",
]
