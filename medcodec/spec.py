"""The pixel specification shared by the DICOM layer and the pixel codec."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

from .errors import CorruptRecordError, UnsupportedError


def word_layout_problem(bits_allocated: int, bits_stored: int, high_bit: int) -> str | None:
    """Why samples laid out this way are not integer words the pixel codec codes (None:
    they are). The one statement of these rules: PixelSpec.validate_for_coding (a DICOM
    header) and planes.SampleFormat (an array, or a record's pixel config) both ask here."""
    if bits_allocated not in (8, 16):
        return f"pixel codec needs BitsAllocated 8 or 16, got {bits_allocated}"
    if not 1 <= bits_stored <= bits_allocated:
        return f"BitsStored {bits_stored} outside 1..BitsAllocated ({bits_allocated})"
    if not bits_stored - 1 <= high_bit < bits_allocated:
        return f"HighBit {high_bit} inconsistent with BitsStored {bits_stored} and BitsAllocated {bits_allocated}"
    return None


@dataclass(frozen=True, kw_only=True)
class PixelSpec:
    """Geometry and sample format of the pixel data of one image (all frames).

    ``bits_allocated`` is the width of one stored word; the image's values occupy
    ``bits_stored`` bits ending at ``high_bit``; the other bits of each word are kept
    exactly as stored (they form their own stream).  ``pixel_representation`` is 1 for
    two's complement samples.
    """

    rows: int
    cols: int
    frames: int = 1
    samples: int = 1
    bits_allocated: int
    bits_stored: int
    high_bit: int
    pixel_representation: int = 0
    photometric: str = "MONOCHROME2"
    planar_configuration: int = 0
    transfer_syntax: str = "1.2.840.10008.1.2.1"
    big_endian: bool = False

    @property
    def signed(self) -> bool:
        return self.pixel_representation == 1

    @property
    def low_bit(self) -> int:
        """Index of the lowest stored bit inside a word."""
        return self.high_bit + 1 - self.bits_stored

    @property
    def bytes_per_sample(self) -> int:
        return (self.bits_allocated + 7) // 8

    @property
    def samples_per_frame(self) -> int:
        return self.rows * self.cols * self.samples

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "PixelSpec":
        """The spec a record carries; CorruptRecordError unless it has this class's fields
        (those without a default at least), each of its type."""
        types = {f.name: {"int": int, "str": str, "bool": bool}[f.type] for f in fields(cls)}  # annotations are text
        required = {f.name for f in fields(cls) if f.default is MISSING}
        if not isinstance(obj, dict) or not required <= obj.keys() <= types.keys() or not all(
                type(value) is types[name] for name, value in obj.items()):
            raise CorruptRecordError("pixel spec malformed: expected integer sizes, string names and a byte-order flag")
        return cls(**obj)

    def validate_for_coding(self) -> None:
        """Raise UnsupportedError unless the pixel codec can code this layout as integer words."""
        problem = word_layout_problem(self.bits_allocated, self.bits_stored, self.high_bit)
        if problem:
            raise UnsupportedError(problem)
