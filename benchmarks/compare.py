"""Our codec side by side with the standard lossless codecs: JPEG-LS, JPEG 2000, HTJ2K, JPEG-XL.

    python -m benchmarks.compare DIR [DIR ...] [--runs N] [--preset max|fast] [--json OUT.json] [--limit N]
    medarchive bench DIR ...            (the CLI calls main(argv))

DIR is a folder (searched recursively for DICOM files, by content, and ``.npy`` arrays),
a single file, or the literal ``pydicom``: the pydicom-data test files whose modality is
an imaging one (CT, MR, CR, DX, US, MG, XA, RF, OT).

The accounting is the same for every codec:

* every codec gets the same values: the stored bits of each word (BitsStored bits ending
  at HighBit), signed samples mapped to offset binary, as uint8 (<= 8 bits) or uint16;
* every decode is compared with its input; a mismatch is reported as FAIL, an exception
  as ERR, for that image and codec (never skipped silently);
* our size is the whole record ``compress_pixels`` returns (header, config, trailer);
  the standard codecs' sizes are their codestreams, frame by frame, summed;
* bits per sample = 8 * bytes / samples; MB/s counts raw input bytes (1 byte per sample
  up to 8 bits, 2 above); timings are the median of ``--runs`` runs, single-threaded
  where the library lets us choose.

Duplicate pixel data (pydicom-data holds the same image in several transfer syntaxes)
is benchmarked once; the duplicates are listed as skipped.  Images with more than
``--max-frames`` frames (default 8) are cut to their first frames, and the table says so.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Protocol, Sequence

import numpy as np

PYDICOM_SOURCE = "pydicom"
IMAGING_MODALITIES = ("CT", "MR", "CR", "DX", "US", "MG", "XA", "RF", "OT")
DEFAULT_FRAME_CAP = 8
STANDARD_CODECS = ("jpegls", "jpeg2k", "htj2k", "jpegxl")
ALL_CODECS = ("ours", *STANDARD_CODECS)
# Columns run only when asked for (--codecs): libjxl's strongest lossless effort, on the
# held-out images about 10x slower to encode than effort 7 and 3% smaller in total.
OPTIONAL_CODECS = ("jpegxl-e10",)
KNOWN_CODECS = ALL_CODECS + OPTIONAL_CODECS
_NPY_MAGIC = b"\x93NUMPY"

STATUS_OK = "ok"
STATUS_FAIL = "FAIL"  # decoded, but not equal to the input
STATUS_ERROR = "ERR"  # the encoder or decoder raised


# --- images --------------------------------------------------------------------------------


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


# --- codecs --------------------------------------------------------------------------------


class Codec(Protocol):
    """A lossless codec under test: image -> streams -> (frames, samples, rows, cols)."""

    name: str
    label: str

    def encode(self, image: BenchImage) -> list[bytes]: ...

    def decode(self, blobs: list[bytes], image: BenchImage) -> np.ndarray: ...


@dataclass(frozen=True)
class OurCodec:
    """medcodec.compress_pixels: all frames (and samples) in one record."""

    preset: str = "max"
    name: ClassVar[str] = "ours"
    # (direction, {"global": s, "local": s, "local_tokens": n}) per call, drained by measure()
    path_timings: list = field(default_factory=list, compare=False)

    @property
    def label(self) -> str:
        return f"medcodec compress_pixels(preset={self.preset!r}): whole record, all frames in one record"

    def encode(self, image: BenchImage) -> list[bytes]:
        import medcodec

        v = image.values
        if image.samples > 1:
            array = np.moveaxis(v, 1, 3)  # (frames, rows, cols, samples)
        elif image.frames > 1:
            array = v[:, 0]
        else:
            array = v[0, 0]
        timings: dict = {}
        blob = medcodec.compress_pixels(
            np.ascontiguousarray(array), bits_stored=image.bits, signed=False, preset=self.preset, timings=timings
        )
        self.path_timings.append(("encode", timings))
        return [blob]

    def decode(self, blobs: list[bytes], image: BenchImage) -> np.ndarray:
        import medcodec

        timings: dict = {}
        out = medcodec.decompress_pixels(blobs[0], timings=timings)
        self.path_timings.append(("decode", timings))
        if out.ndim == 4:
            return np.moveaxis(out, 3, 1)
        if out.ndim == 3:
            return out[:, None]
        return out[None, None]


@dataclass(frozen=True)
class FrameCodec:
    """A standard codec applied frame by frame; sizes are summed over frames."""

    name: str
    label: str
    encode_frame: Callable[[np.ndarray, int], bytes]
    decode_frame: Callable[[bytes], np.ndarray]

    def encode(self, image: BenchImage) -> list[bytes]:
        return [bytes(self.encode_frame(image.frame(f), image.bits)) for f in range(image.frames)]

    def decode(self, blobs: list[bytes], image: BenchImage) -> np.ndarray:
        frames = []
        for blob in blobs:
            out = np.asarray(self.decode_frame(blob))
            want = (image.rows, image.cols) if image.samples == 1 else (image.rows, image.cols, image.samples)
            if out.shape != want and out.size == image.rows * image.cols * image.samples:
                out = out.reshape(want)  # e.g. a trailing singleton axis; wrong layouts still fail below
            if out.shape != want:
                raise ValueError(f"decoded frame has shape {out.shape}, expected {want}")
            frames.append(out if image.samples == 1 else np.moveaxis(out, 2, 0))
        return np.stack(frames)[:, None] if image.samples == 1 else np.stack(frames)


def _jpegls_codec() -> FrameCodec:
    import imagecodecs

    # pyjpegls lets us declare P = BitsStored (as DICOM JPEG-LS does); imagecodecs always
    # writes P = 8 or 16, which costs up to ~1 bpp on small 12-bit images.
    try:
        import jpeg_ls
        from importlib.metadata import version

        wrapper = f"pyjpegls {version('pyjpegls')}"
    except Exception:  # pyjpegls missing: fall back to imagecodecs (P = container bits)
        jpeg_ls, wrapper = None, None

    def encode(frame: np.ndarray, bits: int) -> bytes:
        if jpeg_ls is None:
            return imagecodecs.jpegls_encode(frame)
        samples = 1 if frame.ndim == 2 else frame.shape[2]
        src = np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<")).tobytes()
        try:
            # interleave_mode 1 (line) with pixel-ordered input: CharLS reorders internally.
            return bytes(jpeg_ls.encode_buffer(src, frame.shape[0], frame.shape[1], samples, bits, interleave_mode=1))
        except RuntimeError as exc:
            # pyjpegls sizes its output at 2x the raw bytes, too small for tiny images.
            if "too small" in str(exc) and len(src) < 4096:
                return imagecodecs.jpegls_encode(frame)
            raise

    if wrapper:
        label = (
            f"JPEG-LS lossless, CharLS via {wrapper} (P = BitsStored, line interleave); {imagecodecs.jpegls_version()}"
            " decodes (and encodes frames under 4 KiB, where pyjpegls's output buffer is too small)"
        )
    else:
        label = f"JPEG-LS lossless, {imagecodecs.jpegls_version()} via imagecodecs (P = 8/16: container bits)"
    return FrameCodec("jpegls", label, encode, imagecodecs.jpegls_decode)


def _jpeg2k_codec() -> FrameCodec:
    import imagecodecs

    def encode(frame: np.ndarray, bits: int) -> bytes:
        return imagecodecs.jpeg2k_encode(
            frame,
            codecformat="J2K",  # bare codestream, as DICOM stores it (no JP2 boxes)
            reversible=True,
            bitspersample=bits,
            planar=False if frame.ndim == 3 else None,
            numthreads=1,
        )

    label = f"JPEG 2000 lossless, {imagecodecs.jpeg2k_version()}: J2K, reversible 5/3, RCT for colour, default 5 levels"
    return FrameCodec("jpeg2k", label, encode, lambda b: imagecodecs.jpeg2k_decode(b, numthreads=1))


def _htj2k_codec() -> FrameCodec:
    import imagecodecs

    def encode(frame: np.ndarray, bits: int) -> bytes:
        return imagecodecs.htj2k_encode(frame, reversible=True, planar=False if frame.ndim == 3 else None)

    label = (
        f"HTJ2K lossless, {imagecodecs.htj2k_version()}: reversible 5/3, RCT for colour, default 5 levels"
        " (precision = 8/16 container bits: imagecodecs has no bit-depth option)"
    )
    return FrameCodec("htj2k", label, encode, imagecodecs.htj2k_decode)


def _jpegxl_codec(effort: int = 7) -> FrameCodec:
    import imagecodecs

    def encode(frame: np.ndarray, bits: int) -> bytes:
        return imagecodecs.jpegxl_encode(frame, lossless=True, effort=effort, bitspersample=bits, numthreads=1)

    name, which = ("jpegxl", "effort 7 (libjxl default)") if effort == 7 else (f"jpegxl-e{effort}", f"effort {effort}")
    label = f"JPEG-XL lossless, {imagecodecs.jpegxl_version()}: {which}, bit depth = BitsStored"
    return FrameCodec(name, label, encode, lambda b: imagecodecs.jpegxl_decode(b, numthreads=1))


_STANDARD_FACTORIES: dict[str, tuple[str, Callable[[], FrameCodec]]] = {
    "jpegls": ("JPEGLS", _jpegls_codec),
    "jpeg2k": ("JPEG2K", _jpeg2k_codec),
    "htj2k": ("HTJ2K", _htj2k_codec),
    "jpegxl": ("JPEGXL", _jpegxl_codec),
    "jpegxl-e10": ("JPEGXL", lambda: _jpegxl_codec(10)),
}


@dataclass(frozen=True)
class CodecInfo:
    """A codec column: its label, or why it could not run."""

    name: str
    label: str
    unavailable: str | None = None


def build_codecs(names: Sequence[str] | None, *, preset: str) -> tuple[list[Codec], list[CodecInfo]]:
    """The codecs to run, and one info per requested name (unavailable ones say why)."""
    names = list(ALL_CODECS if names is None else names)
    unknown = [n for n in names if n not in KNOWN_CODECS]
    if unknown:
        raise ValueError(f"unknown codec(s) {unknown}; choose from {', '.join(KNOWN_CODECS)}")
    codecs: list[Codec] = []
    infos: list[CodecInfo] = []
    for name in names:
        if name == "ours":
            codec = OurCodec(preset)
            codecs.append(codec)
            infos.append(CodecInfo(name, codec.label))
            continue
        flag, factory = _STANDARD_FACTORIES[name]
        try:
            import imagecodecs

            if not getattr(imagecodecs, flag).available:
                raise RuntimeError(f"imagecodecs {imagecodecs.__version__} was built without {flag}")
            std = factory()
        except Exception as exc:
            infos.append(CodecInfo(name, name, unavailable=f"{type(exc).__name__}: {exc}"))
            continue
        codecs.append(std)
        infos.append(CodecInfo(name, std.label))
    return codecs, infos


# --- measuring -----------------------------------------------------------------------------


@dataclass
class CodecResult:
    """One codec on one image."""

    status: str
    nbytes: int | None = None
    bpp: float | None = None
    encode_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    encode_mbps: float | None = None
    decode_mbps: float | None = None
    error: str | None = None
    # ours only: median seconds per path and direction, and the local-path token count
    paths: dict[str, float] | None = None


def _path_medians(calls: list) -> dict[str, float] | None:
    if not calls:
        return None
    out: dict[str, float] = {}
    for direction in ("encode", "decode"):
        runs = [t for d, t in calls if d == direction]
        for key in ("global", "local"):
            if runs:
                out[f"{direction}_{key}_s"] = statistics.median(t.get(key, 0.0) for t in runs)
        if runs:
            out["local_tokens"] = float(runs[0].get("local_tokens", 0))
    return out


@dataclass
class ImageRow:
    """One benchmarked image and every codec's result on it."""

    name: str
    source: str
    modality: str
    rows: int
    cols: int
    frames: int
    frames_total: int
    samples: int
    bits: int
    photometric: str
    origin: str
    n_samples: int
    raw_bytes: int
    results: dict[str, CodecResult] = field(default_factory=dict)


def _mismatch(out: np.ndarray, want: np.ndarray) -> str | None:
    if out.shape != want.shape:
        return f"decoded shape {out.shape} != input shape {want.shape}"
    diff = out.astype(np.int64) != want.astype(np.int64)
    if diff.any():
        worst = int(np.abs(out.astype(np.int64) - want.astype(np.int64)).max())
        return f"{int(diff.sum())} of {want.size} samples differ (max |error| {worst})"
    return None


def measure(codec: Codec, image: BenchImage, *, runs: int) -> CodecResult:
    """Encode and decode ``runs`` times; verify every decode; median timings."""
    result = CodecResult(status=STATUS_OK)
    timings = getattr(codec, "path_timings", None)
    if timings is not None:
        timings.clear()
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            blobs = codec.encode(image)
            t1 = time.perf_counter()
            out = codec.decode(blobs, image)
            t2 = time.perf_counter()
            problem = _mismatch(np.asarray(out), image.values)
            if problem:
                return CodecResult(status=STATUS_FAIL, error=problem)
            nbytes = sum(len(b) for b in blobs)
            if result.nbytes is not None and nbytes != result.nbytes:
                result.error = f"size not deterministic: {result.nbytes} then {nbytes} bytes"
            result.nbytes = nbytes
            result.encode_s.append(t1 - t0)
            result.decode_s.append(t2 - t1)
    except Exception as exc:
        return CodecResult(status=STATUS_ERROR, error=f"{type(exc).__name__}: {exc}")
    mb = image.raw_bytes / 1e6
    result.paths = _path_medians(timings) if timings is not None else None
    result.bpp = 8.0 * result.nbytes / image.n_samples
    result.encode_mbps = mb / max(statistics.median(result.encode_s), 1e-9)
    result.decode_mbps = mb / max(statistics.median(result.decode_s), 1e-9)
    return result


@dataclass
class BenchResult:
    """Everything one benchmark run measured."""

    rows: list[ImageRow]
    codecs: list[CodecInfo]
    skipped: list[Skipped]
    filtered: int
    summary: dict[str, Any]
    meta: dict[str, Any]

    @property
    def codec_names(self) -> list[str]:
        return [c.name for c in self.codecs if c.unavailable is None]

    def to_json(self) -> dict[str, Any]:
        def row(r: ImageRow) -> dict[str, Any]:
            d = {k: v for k, v in vars(r).items() if k != "results"}
            d["results"] = {name: vars(res) for name, res in r.results.items()}
            return d

        return {
            "meta": self.meta,
            "codecs": [vars(c) for c in self.codecs],
            "images": [row(r) for r in self.rows],
            "skipped": [vars(s) for s in self.skipped],
            "filtered": self.filtered,
            "summary": self.summary,
        }


def summarize(rows: Sequence[ImageRow], codec_names: Sequence[str]) -> dict[str, Any]:
    """Means, medians and ratios over the images on which every codec round-tripped."""
    common = [r for r in rows if all(r.results[c].status == STATUS_OK for c in codec_names)]
    per_codec: dict[str, Any] = {}
    for name in codec_names:
        res = [r.results[name] for r in common]
        n_samples = sum(r.n_samples for r in common)
        per_codec[name] = {
            "images_ok": sum(r.results[name].status == STATUS_OK for r in rows),
            "images_failed": sum(r.results[name].status != STATUS_OK for r in rows),
            "weighted_bpp": 8.0 * sum(x.nbytes for x in res) / n_samples if common else None,
            "mean_bpp": statistics.fmean(x.bpp for x in res) if common else None,
            "median_encode_mbps": statistics.median(x.encode_mbps for x in res) if common else None,
            "median_decode_mbps": statistics.median(x.decode_mbps for x in res) if common else None,
            "total_bytes": sum(x.nbytes for x in res),
        }
    ratios: dict[str, float | None] = {}
    if "ours" in per_codec:
        ours = per_codec["ours"]["weighted_bpp"]
        for name in codec_names:
            theirs = per_codec[name]["weighted_bpp"]
            if name != "ours":
                ratios[name] = ours / theirs if ours is not None and theirs else None
    paths = None
    ours_res = [r.results["ours"] for r in common if "ours" in r.results and r.results["ours"].paths]
    if ours_res:
        raw_mb = sum(r.raw_bytes for r in common if "ours" in r.results and r.results["ours"].paths) / 1e6
        tot = {k: sum(x.paths.get(k, 0.0) for x in ours_res) for k in ours_res[0].paths}
        tokens = tot.get("local_tokens", 0.0)
        paths = {
            "seconds": tot,
            "global_encode_mbps": raw_mb / tot["encode_global_s"] if tot.get("encode_global_s") else None,
            "global_decode_mbps": raw_mb / tot["decode_global_s"] if tot.get("decode_global_s") else None,
            "local_encode_tokens_per_s": tokens / tot["encode_local_s"] if tot.get("encode_local_s") else None,
            "local_decode_tokens_per_s": tokens / tot["decode_local_s"] if tot.get("decode_local_s") else None,
            "local_tokens": tokens,
        }
    return {
        "paths": paths,
        "images": len(rows),
        "images_in_summary": len(common),
        "samples_in_summary": sum(r.n_samples for r in common),
        "raw_bytes_in_summary": sum(r.raw_bytes for r in common),
        "codecs": per_codec,
        "ours_over": ratios,
    }


def code_version() -> str:
    """Git commit of the codec under test, marked dirty when medcodec/ has uncommitted edits."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "medcodec"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{head}{' + uncommitted medcodec/ edits' if dirty else ''}"


def _machine() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    versions = {"numpy": np.__version__}
    for mod in ("imagecodecs", "pydicom"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = "missing"
    from medcodec import allocator

    return {
        "allocator": allocator.tune() or "default",
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _warm_up(codecs: Sequence[Codec]) -> None:
    """One untimed round trip per codec, so that imports and first-call setup stay out of the
    first image's timings."""
    ramp = np.add.outer(np.arange(16), np.arange(16)).astype(np.uint8)
    image = BenchImage(
        name="warm-up", source="", modality="-", values=ramp[None, None], bits=8,
        frames_total=1, photometric="-", origin="npy",
    )
    for codec in codecs:
        try:
            codec.decode(codec.encode(image), image)
        except Exception:  # a real failure shows up (and is reported) on the real images
            pass


def run_benchmark(
    paths: Iterable[str | os.PathLike],
    *,
    runs: int = 3,
    preset: str = "max",
    codecs: Sequence[str] | None = None,
    limit: int | None = None,
    frame_cap: int = DEFAULT_FRAME_CAP,
    dedupe: bool = True,
    split: str = "all",
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Benchmark every image under ``paths`` (folders, files, or ``"pydicom"``) with ``codecs``.

    ``codecs`` names columns from :data:`KNOWN_CODECS` (default: :data:`ALL_CODECS`). Returns the per-image
    rows, the skipped inputs with reasons, and the summary; never raises for a bad input.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if frame_cap < 1:
        raise ValueError(f"frame_cap must be >= 1, got {frame_cap}")
    paths = [str(p) for p in paths]
    from medcodec import allocator

    allocator.tune()  # as medarchive's jobs run (every codec shares the process and its allocator)
    start = time.perf_counter()
    active, infos = build_codecs(codecs, preset=preset)
    _warm_up(active)
    report = InputReport()
    rows: list[ImageRow] = []
    for image in iter_images(paths, frame_cap=frame_cap, dedupe=dedupe, limit=limit, report=report):
        if split != "all" and _split_of(image.name) != split:
            report.skipped.append(Skipped(image.name, f"not in the {split} split"))
            continue
        t0 = time.perf_counter()
        row = ImageRow(
            name=image.name,
            source=image.source,
            modality=image.modality,
            rows=image.rows,
            cols=image.cols,
            frames=image.frames,
            frames_total=image.frames_total,
            samples=image.samples,
            bits=image.bits,
            photometric=image.photometric,
            origin=image.origin,
            n_samples=image.n_samples,
            raw_bytes=image.raw_bytes,
        )
        for codec in active:
            row.results[codec.name] = measure(codec, image, runs=runs)
        rows.append(row)
        if progress:
            states = " ".join(f"{n}={r.status}" for n, r in row.results.items())
            progress(f"[{len(rows)}] {image.name} {image.rows}x{image.cols}x{image.frames}: "
                     f"{time.perf_counter() - t0:.1f}s {states}")
    names = [c.name for c in active]
    meta = {
        "sources": paths,
        "split": split,
        "models": _model_sizes(preset) if "ours" in names else {},
        "runs": runs,
        "preset": preset,
        "frame_cap": frame_cap,
        "dedupe": dedupe,
        "limit": limit,
        "code_version": code_version(),
        "wall_s": round(time.perf_counter() - start, 2),
        **_machine(),
    }
    return BenchResult(
        rows=rows, codecs=infos, skipped=report.skipped, filtered=report.filtered,
        summary=summarize(rows, names), meta=meta,
    )


def _split_of(name: str) -> str:
    """'held-out' for the images the shipped models were never trained on, else 'train'."""
    from medcodec.model.train import held_out

    return "held-out" if held_out(name) else "train"


def _model_sizes(preset: str) -> dict[str, int]:
    """Bytes of the model(s) a record of this preset needs (shipped, or stored once per archive)."""
    from medcodec.codec import PRESET_LOCAL_MODELS
    from medcodec.model.registry import WEIGHTS_DIR

    paths = {m: WEIGHTS_DIR / f"{m}.safetensors" for m in PRESET_LOCAL_MODELS[preset]}
    return {m: p.stat().st_size for m, p in paths.items() if p.is_file()}


# --- reporting -----------------------------------------------------------------------------


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cell(res: CodecResult | None) -> str:
    if res is None:
        return "-"
    if res.status != STATUS_OK:
        return res.status
    return f"{res.bpp:.3f}"


def _align(table: list[list[str]], left: int) -> list[str]:
    """Text columns (the first ``left``) left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    out = []
    for row in table:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        out.append("  ".join(cells).rstrip())
    return out


def format_table(result: BenchResult) -> str:
    """The plain-text report: setup, one row per image, summary rows, notes and skips."""
    meta, summary = result.meta, result.summary
    names = result.codec_names
    lines = [
        "Lossless benchmark: bits per sample (lower is better); every decode verified against its input",
        f"command: {meta.get('command', '(run_benchmark)')}",
        f"machine: {meta['cpu_count']} CPUs ({meta['cpus_usable']} usable), {meta['platform']}, "
        f"Python {meta['python']}, numpy {meta['versions']['numpy']}, imagecodecs {meta['versions']['imagecodecs']}",
        f"code: {meta.get('code_version', 'unknown')}",
        f"runs: {meta['runs']} (timings: median; sizes are deterministic); preset: {meta['preset']}; "
        f"images: {meta.get('split', 'all')}; "
        f"wall time {meta['wall_s']:.1f}s",
        "codecs:",
    ]
    for c in result.codecs:
        lines.append(f"  {c.name:<7} {c.label if c.unavailable is None else 'UNAVAILABLE: ' + c.unavailable}")
    lines.append("")

    header = ["image", "mod", "rows x cols", "frames", "spp", "bits", *names]
    table = [header]
    capped = False
    for r in result.rows:
        frames = str(r.frames)
        if r.frames < r.frames_total:
            frames, capped = f"{r.frames} of {r.frames_total}*", True
        table.append(
            [r.name, r.modality, f"{r.rows}x{r.cols}", frames, str(r.samples), str(r.bits),
             *(_cell(r.results.get(n)) for n in names)]
        )
    per = summary["codecs"]
    blank = [""] * 5
    summary_rows = [
        ["weighted mean bpp", *blank, *(_fmt(per[n]["weighted_bpp"], 3) for n in names)],
        ["unweighted mean bpp", *blank, *(_fmt(per[n]["mean_bpp"], 3) for n in names)],
        ["median encode MB/s", *blank, *(_fmt(per[n]["median_encode_mbps"], 2) for n in names)],
        ["median decode MB/s", *blank, *(_fmt(per[n]["median_decode_mbps"], 2) for n in names)],
    ]
    if "ours" in names:
        summary_rows.append(
            ["ours / codec (weighted bpp)", *blank,
             *("-" if n == "ours" else _fmt(summary["ours_over"].get(n), 3) for n in names)]
        )
    aligned = _align(table + summary_rows, left=2)
    width = max(len(s) for s in aligned)
    lines += aligned[: len(table)]
    lines.append("-" * width)
    lines.append(
        f"summary over {summary['images_in_summary']} of {summary['images']} images on which every codec "
        f"round-tripped ({summary['samples_in_summary']} samples, {summary['raw_bytes_in_summary'] / 1e6:.1f} MB raw):"
    )
    lines += aligned[len(table):]
    paths = summary.get("paths")
    if paths:
        sec = paths["seconds"]
        lines.append(
            f"ours per path (summed over the summary images, medians of runs): global path "
            f"{_fmt(paths['global_encode_mbps'], 2)} MB/s encode, {_fmt(paths['global_decode_mbps'], 2)} MB/s decode; "
            f"local path (transformer) {paths['local_tokens'] / 1e6:.2f} M tokens, "
            f"{_fmt(paths['local_encode_tokens_per_s'], 0)} tokens/s encode, "
            f"{_fmt(paths['local_decode_tokens_per_s'], 0)} tokens/s decode; seconds: "
            + ", ".join(f"{k} {v:.1f}" for k, v in sec.items() if k.endswith("_s"))
        )
    models = meta.get("models") or {}
    if models and "ours" in names and per["ours"]["weighted_bpp"] is not None:
        model_bytes = sum(models.values())
        n_img = max(summary["images_in_summary"], 1)
        mean_samples = summary["samples_in_summary"] / n_img
        amort = ", ".join(
            f"{n:,} images +{8.0 * model_bytes / (n * mean_samples):.4f} bpp" for n in (1_000, 10_000, 100_000)
        )
        lines.append(
            f"model bytes: {', '.join(f'{k} {v:,} B' for k, v in models.items())} (shipped with the package; "
            f"stored once per archive if archived): weighted bpp with the model counted once over these "
            f"{n_img} images {8.0 * (per['ours']['total_bytes'] + model_bytes) / summary['samples_in_summary']:.3f}; "
            f"amortized over {amort} (images of this mean size)"
        )
    lines.append("")

    notes = []
    if capped:
        notes.append(f"* only the first {meta['frame_cap']} frames benchmarked (keeps the run short)")
    notes.append("bpp = 8 x compressed bytes / samples; MB = raw input bytes (1 per sample <= 8 bits, else 2)")
    notes.append("ours: whole record (header, config, trailer); standard codecs: codestream per frame, summed")
    for r in result.rows:
        for n in names:
            res = r.results[n]
            if res.status != STATUS_OK or res.error:
                notes.append(f"{res.status} {n} on {r.name}: {res.error}")
    lines += ["notes:", *("  " + n for n in notes)]
    if result.skipped or result.filtered:
        lines.append(f"skipped ({len(result.skipped)}):")
        lines += [f"  {s.name}: {s.reason}" for s in result.skipped]
        if result.filtered:
            lines.append(
                f"  (+{result.filtered} pydicom-data files not considered: modality outside "
                f"{', '.join(IMAGING_MODALITIES)}, or not DICOM)"
            )
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description="Compare our lossless codec with JPEG-LS, JPEG 2000, HTJ2K and JPEG-XL.",
    )
    parser.add_argument("sources", nargs="+", metavar="DIR",
                        help="folder (recursive), file, or 'pydicom' for the pydicom-data test files")
    parser.add_argument("--runs", type=int, default=3, help="timing runs per image and codec (median; default 3)")
    parser.add_argument("--preset", choices=("max", "fast"), default="max", help="our codec's preset")
    parser.add_argument("--json", metavar="OUT.json", help="also write every measurement as JSON")
    parser.add_argument("--limit", type=int, help="benchmark at most N images")
    parser.add_argument("--codecs", default=",".join(ALL_CODECS),
                        help=f"comma-separated subset of {','.join(KNOWN_CODECS)} "
                             f"(default: {','.join(ALL_CODECS)}; {','.join(OPTIONAL_CODECS)} only when named)")
    parser.add_argument("--max-frames", type=int, default=DEFAULT_FRAME_CAP,
                        help=f"benchmark at most the first N frames of an image (default {DEFAULT_FRAME_CAP})")
    parser.add_argument("--keep-duplicates", action="store_true",
                        help="benchmark images whose pixels equal an earlier image's too")
    parser.add_argument("--split", choices=("all", "held-out", "train"), default="all",
                        help="pydicom images the shipped models never saw (held-out), trained on, or all")
    parser.add_argument("--quiet", action="store_true", help="no per-image progress on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table. Exit status: 0 ok; 1 our codec failed to
    round-trip (or raised) on some image; 2 bad arguments or no image found."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return int(exc.code or 0)
    if args.runs < 1 or (args.limit is not None and args.limit < 1) or args.max_frames < 1:
        print("error: --runs, --limit and --max-frames must be >= 1", file=sys.stderr)
        return 2
    codec_names = [c.strip() for c in args.codecs.split(",") if c.strip()]
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        result = run_benchmark(
            args.sources, runs=args.runs, preset=args.preset, codecs=codec_names, limit=args.limit,
            frame_cap=args.max_frames, dedupe=not args.keep_duplicates, split=args.split, progress=progress,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result.meta["command"] = shlex.join(["python", "-m", "benchmarks.compare", *argv])
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_json(), indent=1, default=str) + "\n")
    if not result.rows:
        print("error: no benchmarkable image found", file=sys.stderr)
        return 2
    ours_bad = [r.name for r in result.rows if "ours" in r.results and r.results["ours"].status != STATUS_OK]
    return 1 if ours_bad else 0


if __name__ == "__main__":
    sys.exit(main())
