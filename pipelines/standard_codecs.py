"""Our codec and the standard lossless codecs behind one interface: image -> codestreams -> values.

``inspect --html`` (:mod:`pipelines.report`) sizes an archive's decoded pixels with the
standard codecs; ``benchmarks/compare.py`` measures all of them side by side. Every
codec is handed the same values (:class:`medcodec.images.BenchImage`) and must
give them back exactly; the standard codecs run frame by frame and their sizes are
their codestreams, summed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Protocol, Sequence

import numpy as np

from medcodec import images

BenchImage = images.BenchImage

STANDARD_CODECS = ("jpegls", "jpeg2k", "htj2k", "jpegxl")
ALL_CODECS = ("ours", *STANDARD_CODECS)
# Columns run only when asked for (--codecs): libjxl's strongest lossless effort, on the
# held-out images about 10x slower to encode than effort 7 and 3% smaller in total.
OPTIONAL_CODECS = ("jpegxl-e10",)
KNOWN_CODECS = ALL_CODECS + OPTIONAL_CODECS


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
