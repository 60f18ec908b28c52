"""The images that training, adapter fitting and the benchmarks read, exactly as every codec sees them.

A source is a folder (searched recursively for DICOM files, by content, and ``.npy``
arrays), a single file, or the literal ``pydicom``: the pydicom-data test files whose
modality is an imaging one (CT, MR, CR, DX, US, MG, XA, RF, OT). Each image's values are
the stored bits of each word (BitsStored bits ending at HighBit), signed samples mapped
to offset binary, as uint8 (<= 8 bits) or uint16. Duplicate pixel data (pydicom-data
holds the same image in several transfer syntaxes) is yielded once; the duplicates, and
every input that could not be read, are reported with their reason, never dropped
silently.

Here, below both ``jobs`` (``train-base``) and ``benchmarks``, so that neither imports
the other; pure numpy, with pydicom and :mod:`medcodec.dicom` imported when a file is read.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

PYDICOM_SOURCE = "pydicom"
IMAGING_MODALITIES = ("CT", "MR", "CR", "DX", "US", "MG", "XA", "RF", "OT")
DEFAULT_FRAME_CAP = 8
_NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True, kw_only=True)
class BenchImage:
    """One image exactly as every codec sees it."""

    name: str
    source: str
    modality: str
    values: np.ndarray  # (frames, samples, rows, cols); uint8 if bits <= 8 else uint16
    bits: int
    frames_total: int
    photometric: str
    origin: str  # restore mode of the DICOM file, or "npy"

    @property
    def frames(self) -> int:
        return self.values.shape[0]

    @property
    def samples(self) -> int:
        return self.values.shape[1]

    @property
    def rows(self) -> int:
        return self.values.shape[2]

    @property
    def cols(self) -> int:
        return self.values.shape[3]

    @property
    def n_samples(self) -> int:
        return int(self.values.size)

    @property
    def raw_bytes(self) -> int:
        return int(self.values.size * self.values.itemsize)

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as the standard codecs take it: (rows, cols) or (rows, cols, samples)."""
        f = self.values[index]
        return np.ascontiguousarray(f[0] if self.samples == 1 else np.moveaxis(f, 0, 2))


@dataclass(frozen=True)
class Skipped:
    """An input that was not benchmarked, and why."""

    name: str
    reason: str


def stored_values(words: np.ndarray, *, bits_stored: int, high_bit: int, signed: bool) -> np.ndarray:
    """The BitsStored bits of each word as unsigned numbers (offset binary when signed).

    Returns uint8 for ``bits_stored <= 8``, else uint16, so that every codec is handed
    the same values in the smallest container.
    """
    low_bit = high_bit + 1 - bits_stored
    values = (words.astype(np.int64) >> low_bit) & ((1 << bits_stored) - 1)
    if signed:
        values ^= 1 << (bits_stored - 1)
    return values.astype(np.uint8 if bits_stored <= 8 else np.uint16)


@dataclass(frozen=True)
class _Candidate:
    name: str
    path: Path
    from_pydicom: bool


def _candidates(sources: Iterable[str | os.PathLike]) -> tuple[list[_Candidate], list[Skipped]]:
    found: list[_Candidate] = []
    missing: list[Skipped] = []
    for src in sources:
        if str(src) == PYDICOM_SOURCE:
            paths = sorted(pydicom_test_files(), key=lambda p: (p.name, str(p)))
            found += [_Candidate(p.name, p, True) for p in paths if p.is_file()]
            continue
        root = Path(src)
        if root.is_file():
            found.append(_Candidate(root.name, root, False))
        elif root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for fn in sorted(filenames):
                    p = Path(dirpath, fn)
                    found.append(_Candidate(str(p.relative_to(root)), p, False))
        else:
            missing.append(Skipped(str(src), "no such file or directory"))
    return found, missing


def pydicom_test_files() -> set[Path]:
    """The pydicom test files present on this machine (pydicom's own and pydicom-data's).

    ``get_testdata_files`` also tries to download the files it lacks, which costs ~15 s of
    network timeouts offline; we list only what is installed or already cached.
    """
    try:
        from pydicom.data import data_manager as dm

        files = set(Path(dm.DATA_ROOT, "test_files").glob("*"))
        for source in dm.external_data_sources().values():
            files.update(Path(p) for p in source.get_paths("*", 0))  # dtype 0: DICOM datasets
        cache = Path(dm.get_data_dir())
        if cache.is_dir():
            files.update(p for p in cache.glob("*.dcm"))
        return files
    except Exception:  # pydicom internals moved: the public call (may hit the network)
        from pydicom.data import get_testdata_files

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {Path(p) for p in get_testdata_files("*")}


def _modality(data: bytes) -> str:
    try:
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True, specific_tags=["Modality"])
        return str(ds.get("Modality", "") or "").strip()
    except Exception:  # any unreadable header: modality unknown
        return ""


def _is_dicom(data: bytes) -> bool:
    if data[128:132] == b"DICM":
        return True
    from medcodec.dicom import is_dicom

    return is_dicom(data)


def _frames_layout(array: np.ndarray) -> np.ndarray | None:
    """A .npy array -> (frames, samples, rows, cols), or None for a layout we do not guess."""
    if array.ndim == 2:
        return array[None, None]
    if array.ndim == 3:
        if array.shape[2] in (3, 4) and array.shape[0] > 4:  # (rows, cols, samples)
            return np.moveaxis(array, 2, 0)[None]
        return array[:, None]
    if array.ndim == 4:
        return np.moveaxis(array, 3, 1)
    return None


def _load_npy(cand: _Candidate, data: bytes, frame_cap: int) -> BenchImage | Skipped:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        return Skipped(cand.name, f"not a readable .npy array ({type(exc).__name__}: {exc})")
    if array.dtype not in (np.uint8, np.uint16, np.int8, np.int16):
        return Skipped(cand.name, f".npy dtype {array.dtype} unsupported (need uint8, uint16, int8 or int16)")
    if array.size == 0:
        return Skipped(cand.name, f".npy array is empty (shape {array.shape})")
    frames = _frames_layout(array)
    if frames is None:
        return Skipped(cand.name, f".npy array is {array.ndim}-D; need 2-D, 3-D or 4-D (frames, rows, cols, samples)")
    frames_total = frames.shape[0]
    frames = frames[:frame_cap]
    if array.dtype.kind == "i":
        # Two's complement -> offset binary over the full word.
        bits = array.dtype.itemsize * 8
        unsigned = frames.view(np.uint8 if bits == 8 else np.uint16)
        values = stored_values(unsigned, bits_stored=bits, high_bit=bits - 1, signed=True)
    else:
        # Unsigned: the bit depth is what the values need (>= 2, JPEG-LS's minimum).
        bits = max(2, int(array.max()).bit_length())
        values = stored_values(frames, bits_stored=bits, high_bit=bits - 1, signed=False)
    return BenchImage(
        name=cand.name,
        source=str(cand.path),
        modality="-",
        values=np.ascontiguousarray(values),
        bits=bits,
        frames_total=frames_total,
        photometric="-",
        origin="npy",
    )


def _load_dicom(cand: _Candidate, data: bytes, modality: str, frame_cap: int) -> BenchImage | Skipped:
    from medcodec.dicom import RESTORE_VERBATIM, parse_dicom

    parsed = parse_dicom(data)
    if parsed.restore_mode == RESTORE_VERBATIM or parsed.spec is None or parsed.frames is None:
        return Skipped(cand.name, f"kept verbatim, not pixel-coded ({parsed.note})")
    spec = parsed.spec
    values = stored_values(
        parsed.frames[:frame_cap], bits_stored=spec.bits_stored, high_bit=spec.high_bit, signed=spec.signed
    )
    return BenchImage(
        name=cand.name,
        source=str(cand.path),
        modality=modality or "?",
        values=np.ascontiguousarray(values),
        bits=spec.bits_stored,
        frames_total=spec.frames,
        photometric=spec.photometric,
        origin=parsed.restore_mode,
    )


def _load(cand: _Candidate, frame_cap: int) -> BenchImage | Skipped | None:
    """One candidate file -> an image, a skip with its reason, or None (not an imaging modality)."""
    try:
        data = cand.path.read_bytes()
    except OSError as exc:
        return Skipped(cand.name, f"unreadable ({exc.strerror or exc})")
    try:
        if cand.path.suffix.lower() == ".npy" or data.startswith(_NPY_MAGIC):
            return _load_npy(cand, data, frame_cap)
        if not _is_dicom(data):
            return None if cand.from_pydicom else Skipped(cand.name, "neither a DICOM file nor a .npy array")
        modality = _modality(data)
        if cand.from_pydicom and modality not in IMAGING_MODALITIES:
            return None
        return _load_dicom(cand, data, modality, frame_cap)
    except Exception as exc:  # one bad input never stops the benchmark
        return Skipped(cand.name, f"{type(exc).__name__}: {exc}")


@dataclass
class InputReport:
    """What the input scan found besides the images."""

    skipped: list[Skipped] = field(default_factory=list)
    filtered: int = 0  # pydicom-data files of a non-imaging modality (or not DICOM at all)


def iter_images(
    sources: Iterable[str | os.PathLike],
    *,
    frame_cap: int = DEFAULT_FRAME_CAP,
    dedupe: bool = True,
    limit: int | None = None,
    report: InputReport | None = None,
) -> Iterator[BenchImage]:
    """Yield the benchmark images under ``sources``, one at a time; skips go to ``report``."""
    report = report if report is not None else InputReport()
    cands, missing = _candidates(sources)
    report.skipped += missing
    seen: dict[str, str] = {}
    yielded = 0
    for cand in cands:
        if limit is not None and yielded >= limit:
            return
        item = _load(cand, frame_cap)
        if item is None:
            report.filtered += 1
            continue
        if isinstance(item, Skipped):
            report.skipped.append(item)
            continue
        if dedupe:
            digest = hashlib.sha256(
                repr((item.values.shape, item.values.dtype.str, item.bits)).encode() + item.values.tobytes()
            ).hexdigest()
            if digest in seen:
                report.skipped.append(Skipped(item.name, f"same pixels as {seen[digest]}"))
                continue
            seen[digest] = item.name
        yielded += 1
        yield item
