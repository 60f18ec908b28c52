"""The split of one DICOM file: how it is restored, the bytes around its pixel data, its words."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..spec import PixelSpec

RESTORE_BYTE_EXACT = "byte-exact"
RESTORE_PIXEL_EXACT = "pixel-exact"
RESTORE_VERBATIM = "verbatim"

REENCODE_ORIGINAL_SYNTAX = "original-syntax"
REENCODE_EXPLICIT_VR_LE = "explicit-vr-le"


@dataclass(frozen=True, kw_only=True)
class ParsedDicom:
    """A DICOM file split into the bytes around the pixel data and the pixel words.

    ``frames`` has shape (frames, samples, rows, cols), dtype uint8 or uint16 in
    native byte order, and holds the stored words untouched (no masking, no sign
    extension).  ``prefix + <pixel value> + suffix`` is the file.

    In pixel-exact mode the words are what the decoder yields (signed samples as the
    unsigned view of their two's complement word), ``spec.transfer_syntax`` is the
    original syntax and ``spec.photometric`` describes the decoded words: JPEG 2000
    YBR_RCT data decodes to RGB, so the spec says "RGB" while the header keeps YBR_RCT.
    """

    restore_mode: str
    spec: PixelSpec | None
    prefix: bytes
    suffix: bytes
    frames: np.ndarray | None
    extra: bytes
    original: bytes | None
    reencode: str | None
    note: str
    # The source's identifiers as its header states them (study, series, sop, patient,
    # modality, transfer_syntax; None where absent), read in the same parse: what an
    # archive indexes the file by. Empty for a file pydicom could not read as a dataset.
    identifiers: dict = field(default_factory=dict, compare=False)
    # pydicom's dataset from that parse (values of 64 KiB or more still unread in the
    # file), which de-identification uses instead of reading the file again: None where
    # the parse kept no dataset, or once ``take_dataset`` handed it over.
    dataset: Any = field(default=None, compare=False, repr=False)

    def take_dataset(self) -> Any:
        """The parse's dataset, handed over once: the taker may change it (sealing
        de-identifies it in place), so this parse forgets it (None from then on, and a
        second sealing of the same parse reads the file again)."""
        ds = self.dataset
        object.__setattr__(self, "dataset", None)  # frozen: the one field that may be let go
        return ds


def verbatim(data: bytes, spec: PixelSpec | None, note: str) -> ParsedDicom:
    return ParsedDicom(
        restore_mode=RESTORE_VERBATIM,
        spec=spec,
        prefix=b"",
        suffix=b"",
        frames=None,
        extra=b"",
        original=data,
        reencode=None,
        note=note,
    )
