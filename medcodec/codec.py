"""The dual-path codec: stored words <-> record sections, and the public compress/decompress API."""

from __future__ import annotations

import hashlib
import lzma
import math
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import container as ct
from .dicom import (
    NO_DEADLINE,
    Deadline,
    DicomLimits,
    ParsedDicom,
    RESTORE_VERBATIM,
    default_memory_budget,
    parse_dicom,
    rebuild_dicom,
)
from .errors import (
    CorruptRecordError,
    LimitExceededError,
    MedcodecError,
    ModelMismatchError,
    UnsupportedError,
    described,
    record_errors,
    shown,
)
from .coders import PlaneSelector, coder_for, registered
from .models import BASE_TRANSFORMER, CLASSICAL, TRANSFORMER_PREFIX, ModelStore
from .paths import LocalPathModel, PlaneInfo
from .planes import (
    COLOUR_PALETTE_MAX,
    SampleFormat,
    choose_k,
    choose_k_transformer,
    colour_table,
    merge_planes,
    pack_values,
    palette_bits,
    palette_of,
    split_planes,
    unpack_colours,
    unpack_values,
    values_and_seen,
    values_to_words,
)
from .spec import PixelSpec
from .coders.raster_wp_v4 import RasterV4GlobalPathCoder
from .coders.selectors import FAST_V6, PER_PLANE_V8

CODEC_ID = "medcodec.dualpath"
# Each preset uses the global model that gave it the smallest records at the speed it
# promises: `max` keeps, per plane, the smallest of the strongest coders; `fast` one
# compiled pass. Why each model id exists, and what it measured when it came in, is in
# schemas/FORMAT.md ("Why the presets code as they do").
# Every global model a record's config may name (medcodec.coders holds the registry).
GLOBAL_MODELS = registered(record_level=True)
PRESET_GLOBAL_MODEL = {"max": PER_PLANE_V8.model_id, "fast": FAST_V6.model_id}
# The record-level models that choose a candidate per plane (streams start with its index).
PER_PLANE_MODELS = {k: v for k, v in GLOBAL_MODELS.items() if isinstance(v, PlaneSelector)}
PRESETS = ("max", "fast")
# Decoding refuses records that claim more samples than this (a crafted record must not
# make the reader allocate unbounded memory).
MAX_DECODE_SAMPLES = 1 << 31
# Peak working memory per sample, with a margin, for the memory budget that is checked
# before any pixel is allocated (DicomLimits.memory_bytes). Measured on RG3_UNCI (3.1 M
# samples, CR) as the RSS above the imported library: encode fast 65, max 505 (raster-wp-v3's
# predictor fits), decode 49-71 bytes per sample.
ENCODE_BYTES_PER_SAMPLE = {"fast": 128, "max": 640}
DECODE_BYTES_PER_SAMPLE = 96


def working_bytes_per_sample(preset: str, *, decode_too: bool = True) -> int:
    """The memory budget's estimate of bytes per sample to encode with ``preset`` (and
    decode again, when the record is verified)."""
    _check_preset(preset)
    return max(ENCODE_BYTES_PER_SAMPLE[preset], DECODE_BYTES_PER_SAMPLE if decode_too else 0)

# The local models a preset tries, in order; the smallest record wins. Records name their
# model (id + SHA-256 of its weights), so older records keep decoding with theirs.
# The transformer path alone does not beat the classical one on every image (it wins on
# some CT and ultrasound, loses on MR and CR: schemas/FORMAT.md), so `max` codes both
# ways and keeps the smaller, and `fast` stays transformer-free. `llm-fast-v1` is
# available as an explicit local_model. Large images screen the candidates on a crop
# first (screen_local_models).
PRESET_LOCAL_MODELS = {"max": (BASE_TRANSFORMER, CLASSICAL), "fast": (CLASSICAL,)}
# Images too small to screen (under SCREEN_MIN_SAMPLES samples) are coded with the
# classical path alone: the transformer coded none of them smaller than the record `max`
# kept. Its records were 4.5% to 95% larger on the 44 such images of the train and
# held-out splits (CT_small, MR_small, emri_small the closest), 2.8% and more on the 40 of
# the pipeline benchmark (emri_small), while its trials were 3.3 s of `max`'s encode
# time on the splits and 1.2 s of the 24 s on the benchmark's 64 files.
SMALL_IMAGE_LOCAL_MODELS = {"max": (CLASSICAL,), "fast": (CLASSICAL,)}


def local_model_for(model_id: str, sha256: str | None = None, adapter_sha256: str | None = None,
                    models: ModelStore | None = None) -> LocalPathModel:
    """The local-path model a record names, from ``models`` (a ModelStore: base transformers
    by SHA-256, adapters by the files it holds; None: shipped models only)."""
    return (models or ModelStore()).local_model(model_id, sha256, adapter_sha256)


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def words_digest(words: np.ndarray) -> str:
    """SHA-256 of stored words in canonical order (frame, sample, row, col), little-endian."""
    return hashlib.sha256(np.ascontiguousarray(words, dtype=words.dtype.newbyteorder("<"))).hexdigest()


def _same_words(words: np.ndarray, expected: np.ndarray, expected_digest: str, digest: Any) -> bool:
    """Whether decoded ``words`` and the record's ``digest`` are those of the words a record
    was just coded from (``expected``, whose digest ``expected_digest`` it was written
    with): then ``words_digest(words) == digest`` without hashing them again. False
    where that is not shown (the caller hashes)."""
    return (digest == expected_digest and words.shape == expected.shape and words.dtype.kind == expected.dtype.kind
            and words.dtype.itemsize == expected.dtype.itemsize and np.array_equal(words, expected))


@dataclass(frozen=True)
class _Expected:
    """What a record just written must restore to: verification compares what it decodes
    with these in full (a memory compare), where a reader hashes it and compares with the
    record's digests. Each digest here is the one the record was written with, and the
    record's must equal it, so the two checks pass and fail together: sha256(x) == d
    with d == sha256(y) holds exactly when x == y."""

    words: np.ndarray | None  # the coded words (None: none coded), with their digest
    words_digest: str | None
    file: bytes  # the file the record restores to without a key, with its SHA-256 (hex)
    file_sha256: str
    original: bytes | None = None  # a keyed record's original file, with its SHA-256
    original_sha256: str | None = None
    written: Any = None  # a keyed record's sealing.Written: what its stego image is known to hold

    def same_file(self, out: bytes, digest: Any) -> bool:
        return digest == self.file_sha256 and out == self.file


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise UnsupportedError(f"preset {shown(preset)} unknown; choose one of {', '.join(PRESETS)}")


def _previous_plane(values: dict, f: int, c: int) -> np.ndarray | None:
    """The plane whose values serve as extra context: previous sample, else previous frame."""
    if c > 0:
        return values[(f, c - 1)]
    if f > 0:
        return values[(f - 1, c)]
    return None


def _decode_global(coder, streams: list[bytes], info: PlaneInfo, n_samples: int) -> list[np.ndarray]:
    """Every plane's global modality. A plane's previous plane (``_previous_plane``) splits
    into its global modality and its local bits, so the global modalities decode by
    themselves, all planes together where the coder can (``decode_planes``)."""
    prev_of = [i - 1 if i % n_samples else (i - n_samples if i >= n_samples else None) for i in range(len(streams))]
    if hasattr(coder, "decode_planes"):
        return coder.decode_planes(streams, info, prev_of)
    out: list[np.ndarray] = []
    for data, p in zip(streams, prev_of):
        out.append(coder.decode(data, info, None if p is None else out[p]))
    return out


def _add_time(timings: dict | None, key: str, since: float) -> float:
    now = time.perf_counter()
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + now - since
    return now


def encode_words(
    words: np.ndarray,
    fmt: SampleFormat,
    *,
    preset: str = "max",
    local_model: LocalPathModel | str | Sequence[LocalPathModel | str] | None = None,
    timings: dict | None = None,
    deadline: Deadline = NO_DEADLINE,
) -> tuple[dict[str, Any], list[ct.Section]]:
    """Code stored words shaped (frames, samples, rows, cols); returns (pixel config, sections).

    ``local_model`` overrides the preset's local models: an id such as "classical-v1" (the
    transformer-free v1.0 path), a model object (e.g. a transformer with an A-LoRA
    adapter), or a sequence of them; every candidate is tried and the smallest record
    kept. ``timings``, when given, accumulates seconds per path ("global", "local") and
    the number of local-path tokens ("local_tokens"). ``deadline`` (DicomLimits.deadline)
    is checked between planes, candidate models and colour choices, and before `max`'s
    comparison with `fast`: LimitExceededError once it has passed.
    """
    _check_preset(preset)
    if local_model is None:
        presets = SMALL_IMAGE_LOCAL_MODELS if words.size < SCREEN_MIN_SAMPLES else PRESET_LOCAL_MODELS
        candidates: Sequence = presets[preset]
    elif isinstance(local_model, (str, bytes)) or not isinstance(local_model, Sequence):
        candidates = (local_model,)
    else:
        candidates = tuple(local_model)
    models = [local_model_for(c) if isinstance(c, str) else c for c in candidates]
    if not models:
        raise ValueError("no local model to code with")
    # A colour table (planes.colour_table) is used where it applies; `max` also codes
    # the samples as planes and keeps the smaller record, or, on an image the screen
    # crops, codes it the way that codes the crop smaller (``screen_colours``): the same
    # files over the train images (decided there). Held-out US1_UNCR (RGB ultrasound,
    # 480x640; timed only) then codes in 1.8 s instead of 7.0 s: its planes are no longer
    # coded without the table too.
    colour_choices = (True, False) if preset == "max" else (True,)
    best = None
    crops: dict = {}  # the screen's crop records, by model
    streams: dict = {}  # the image's planes' preset-free streams (coders._kept_stream)
    for model in screen_local_models(words, fmt, preset, models, timings=timings, deadline=deadline, records=crops):
        choices = colour_choices
        if len(choices) > 1:
            choices = screen_colours(words, fmt, preset, model, timings=timings, deadline=deadline,
                                     with_table=crops.get(id(model)))
        for colours in choices:
            deadline.check("between candidate models")
            coded = _encode_with(words, fmt, preset, model, timings, colours=colours, deadline=deadline,
                                 streams=streams)
            if best is None or _coded_bytes(coded) < _coded_bytes(best):
                best = coded
            if coded[0].get("colour_palette") is None:
                break  # no table applies: both choices code the same record
    if preset == "max" and local_model is None:
        # `fast`'s compiled coder (k = 0) codes some images smaller than every `max`
        # candidate, for a fraction of their time: `max` keeps the smaller record (its
        # config then says preset "fast", which is how it decodes). On a screened image
        # only where `fast` codes the screen's crop nearly as small (``fast_worth_trying``).
        deadline.check("before the comparison with fast")
        fast_model = local_model_for(PRESET_LOCAL_MODELS["fast"][0])
        if fast_worth_trying(words, fmt, fast_model, crops, timings=timings, deadline=deadline):
            coded = _encode_with(words, fmt, "fast", fast_model, timings, deadline=deadline, streams=streams)
            if _coded_bytes(coded) < _coded_bytes(best):
                best = coded
    return best


# `max`'s trial of `fast` on a screened image (2026-12-06, late): `fast` codes the screen's crop
# too, and the whole image only where that crop record is within FAST_TRIAL_MARGIN of the
# smallest of the screen's crop records. Of the 34 screened images of the train and
# held-out splits and the pipeline benchmark's own files, `fast` coded three smaller in
# full (held-out 693_UNCI and RG3_UNCI, train RG1_UNCI, by 9-12 B: the same wavelet53-v2
# stream with a shorter config); their crop ratios (`fast` / the classical path's, the
# smallest crop record on every one of the 34 but OT-PAL-8-face, where `fast` was 1.55x)
# were 0.94, 0.91 and 1.013. Every other image's `fast` record was larger in full, by
# 0.7% (explicit_VR-UN) to 3.2x. The ratios of the images this margin spares a full
# `fast` coding were 1.032 (RG3_J2KR) and more; 0.02 would also have spared 693_J2KR and
# US1_J2KR (1.020 and 1.021; 6.2% and 10% larger in full), 0 RG1_UNCI (a win). The
# same files on all three sets.
FAST_TRIAL_MARGIN = 0.03


def fast_worth_trying(words: np.ndarray, fmt: SampleFormat, fast_model: LocalPathModel, crops: dict, *,
                      timings: dict | None = None, deadline: Deadline = NO_DEADLINE) -> bool:
    """Whether `max` codes ``words`` with `fast` in full too: always where the local-model
    screen coded no crop (``crops`` empty: an image under SCREEN_MIN_SAMPLES samples, or a
    single model); else where `fast`'s record of the same crop is at most
    1 + FAST_TRIAL_MARGIN times the smallest of ``crops``' records."""
    crop = _screen_crop(words)
    if not crops or crop is None:
        return True
    fast_crop = _coded_bytes(_encode_with(crop, fmt, "fast", fast_model, timings, deadline=deadline))
    return fast_crop <= min(_coded_bytes(c) for c in crops.values()) * (1 + FAST_TRIAL_MARGIN)


# With several local models to try, an image is first coded on a central crop with
# each, and only the models whose crop record is within SCREEN_MARGIN of the smallest
# code the whole image. Coding it in full once per model made the transformer trial 65%
# of `max`'s encode time on the held-out benchmark images, where it won on none.
# Encoder only: which model a record used is written in it, as before. The crop was
# 128x128: on the 12 train images the screen applied to when it was decided, it kept the
# same models as a 256x256 crop did (the transformer alone on OT-PAL-8-face, both on
# RG1_J2KR and RG1_UNCI at +0.2-0.6%, the classical path alone elsewhere, explicit_VR-UN
# at +2.6-2.7%); so did the 11 held-out images of the same run, outside the choice; it costs
# 0.4-0.9 s per image instead of 2-3.4 s (US1_UNCI 2.7 against 9.2 s).
# Images of at least 2**16 samples (four 128x128 crops) are screened, and only the crop's
# smallest model goes on (it was images of 2**18 samples, and models within 2%): over the
# 29 train images the files are the same bytes (8,780,818 B) and `max` encodes them in 51 s
# instead of 167 s. The transformer's full trials on RG1_J2KR and RG1_UNCI (within 2% on
# the crop, 0.4% and 1.1% larger in full) had been 207 s of the 347 s of the run that
# found it; images of 2**16 to 2**18 samples (MR-SIEMENS-DICOM-WithOverlays,
# SC_rgb_jpeg_dcmd, examples_rgb_color) were coded in full with both. The crops' high
# planes are coded with raster-wp-v4 alone, not with every candidate of `max`'s selector:
# the same choices and files, 48 s instead of 51 s.
# Since 2026-12-06 the crop is 96x96. Of the 31 screened images of the train and held-out
# splits and the 24 of the pipeline benchmark (some files in both), the transformer's
# crop record was the smaller on OT-PAL-8-face alone (0.634x the classical path's at 128,
# 0.626x at 96); the nearest others were RG1 (1.005-1.006x at 128, 1.008x at 96) and
# explicit_VR-UN (1.026x, 1.028x). Every file of the three sets is the same bytes (colour
# choices included), and the screens of the benchmark's 24 large images take 1.9-2.0 s
# instead of 3.1-3.3 s. A 64x64 crop would have dropped the transformer on OT-PAL-8-face
# (1.44x).
SCREEN_MIN_SAMPLES = 1 << 16
SCREEN_CROP = 96
SCREEN_MARGIN = 0.0
SCREEN_GLOBAL_MODEL = RasterV4GlobalPathCoder.model_id


def _screen_crop(words: np.ndarray) -> np.ndarray | None:
    """The screen's crop of ``words`` (frames, samples, rows, cols): a SCREEN_CROP square
    at the centre of the middle frame, all samples; None under SCREEN_MIN_SAMPLES samples."""
    if words.size < SCREEN_MIN_SAMPLES:
        return None
    n_frames, _, rows, cols = words.shape
    r, c = min(rows, SCREEN_CROP), min(cols, SCREEN_CROP)
    r0, c0, f = (rows - r) // 2, (cols - c) // 2, n_frames // 2
    return np.ascontiguousarray(words[f : f + 1, :, r0 : r0 + r, c0 : c0 + c])


def screen_local_models(
    words: np.ndarray, fmt: SampleFormat, preset: str, models: Sequence[LocalPathModel], *, timings: dict | None = None,
    deadline: Deadline = NO_DEADLINE, records: dict | None = None,
) -> list[LocalPathModel]:
    """The candidates worth coding ``words`` (frames, samples, rows, cols) with in full.

    Images under SCREEN_MIN_SAMPLES samples keep every candidate. Larger ones are coded
    on a SCREEN_CROP square at the centre of the middle frame (all samples) with each
    model, the high planes by SCREEN_GLOBAL_MODEL; those within SCREEN_MARGIN of the
    smallest crop record go on. ``records``, when given, receives each model's crop
    record by ``id(model)``.
    """
    crop = _screen_crop(words)
    if len(models) < 2 or crop is None:
        return list(models)
    coded = [_encode_with(crop, fmt, preset, m, timings, deadline=deadline, global_id=SCREEN_GLOBAL_MODEL)
             for m in models]
    if records is not None:
        records.update((id(m), c) for m, c in zip(models, coded))
    sizes = [_coded_bytes(c) for c in coded]
    limit = min(sizes) * (1 + SCREEN_MARGIN)
    return [m for m, size in zip(models, sizes) if size <= limit]


def screen_colours(
    words: np.ndarray, fmt: SampleFormat, preset: str, model: LocalPathModel, *, timings: dict | None = None,
    deadline: Deadline = NO_DEADLINE, with_table: tuple | None = None,
) -> tuple[bool, ...]:
    """The colour choices worth coding ``words`` with in full: for an image of
    SCREEN_MIN_SAMPLES samples or more whose crop (``_screen_crop``) takes a colour
    table, the choice whose crop record is smaller; else both. ``with_table``: the crop's
    record with the table, when the screen coded it already."""
    crop = _screen_crop(words)
    if crop is None:
        return (True, False)
    if with_table is None:
        with_table = _encode_with(crop, fmt, preset, model, timings, deadline=deadline, global_id=SCREEN_GLOBAL_MODEL)
    if with_table[0].get("colour_palette") is None:
        return (True, False)  # no table for the crop's few pixels: the image may take one
    without = _encode_with(crop, fmt, preset, model, timings, colours=False, deadline=deadline,
                           global_id=SCREEN_GLOBAL_MODEL)
    return (_coded_bytes(with_table) <= _coded_bytes(without),)


def coding_values(words: np.ndarray, fmt: SampleFormat) -> tuple[np.ndarray, np.ndarray | None, int, np.ndarray | None]:
    """(values the paths code, words outside BitsStored or None where all zero, coded
    bits, palette or None), from one compiled pass over the words
    (planes.values_and_seen)."""
    values, outside, seen = values_and_seen(words, fmt)
    palette = palette_of(seen, values.size)
    if palette is None:
        return values, outside, fmt.bits_stored, None
    return pack_values(values, palette), outside, palette_bits(palette), palette


def _coded_bytes(coded: tuple[dict[str, Any], list[ct.Section]]) -> int:
    """What the pixels cost in a record: their config entry and their sections, framed."""
    return len(ct.write_record(ct.Record(config={"pixels": coded[0]}, sections=coded[1])))


def _encode_with(
    words: np.ndarray,
    fmt: SampleFormat,
    preset: str,
    local_model: LocalPathModel,
    timings: dict | None,
    *,
    colours: bool = True,
    deadline: Deadline = NO_DEADLINE,
    global_id: str | None = None,
    streams: dict | None = None,
) -> tuple[dict[str, Any], list[ct.Section]]:
    """The pixel config and sections of ``words`` coded with ``preset`` and ``local_model``;
    ``global_id`` names another global path than the preset's (the screen's). ``streams``:
    the image's preset-free plane streams, shared by its codings (``encode_words``)."""
    n_frames, n_samples, rows, cols = words.shape
    values, outside, bits, palette = coding_values(words, fmt)
    sections: list[ct.Section] = []
    if palette is not None:
        sections.append(ct.Section(ct.SECTION_PALETTE, _pack_palette(palette)))
    found = colour_table(values, bits) if colours else None
    table = None
    if found is not None:
        table, values = found
        sections.append(ct.Section(ct.SECTION_COLOURS, ct.lzma_pack(table.astype("<u2").tobytes())))
        bits = palette_bits(table[:, 0])
    n_coded = values.shape[1]
    middle = values[n_frames // 2, 0]
    global_id = global_id or PRESET_GLOBAL_MODEL[preset]
    global_coder = coder_for(global_id)
    if getattr(global_coder, "codes_all_planes", False):
        k, plane_stats = 0, {}  # the global path models the noise floor itself
    elif getattr(local_model, "max_k", None) is None:
        k, plane_stats = choose_k(middle, bits)
    else:
        k, plane_stats = choose_k_transformer(middle, bits, max_k=local_model.max_k)
    planes: dict[tuple[int, int], np.ndarray] = {}
    for f in range(n_frames):
        for c in range(n_coded):
            deadline.check("between planes")  # one plane's coding is bounded by the memory budget
            v = values[f, c]
            planes[(f, c)] = v
            prev = _previous_plane(planes, f, c)
            g, loc = split_planes(v, k)
            info = PlaneInfo(rows=rows, cols=cols, bits=bits - k, k=k, preset=preset)
            t = time.perf_counter()
            g_prev = None if prev is None else prev >> k
            if streams is not None and isinstance(global_coder, PlaneSelector):
                gs = global_coder.encode(g, info, g_prev, streams=streams)
            else:
                gs = global_coder.encode(g, info, g_prev)
            t = _add_time(timings, "global", t)
            ls = local_model.encode(loc, g, info, prev)
            _add_time(timings, "local", t)
            if timings is not None and k:
                timings["local_tokens"] = timings.get("local_tokens", 0) + rows * cols
            sections.append(ct.Section(ct.SECTION_GLOBAL, gs))
            if k:
                sections.append(ct.Section(ct.SECTION_LOCAL, ls))
    outside_mode = "none"
    if outside is not None:
        outside_mode = "lzma"
        sections.append(ct.Section(ct.SECTION_OUTSIDE, lzma.compress(outside.astype(fmt.word_dtype).tobytes())))
    config = {
        "codec_id": CODEC_ID,
        "global_model": global_id,
        "local_model": local_model.model_id,
        **({"local_model_sha256": local_model.sha256} if getattr(local_model, "sha256", None) else {}),
        **({"local_adapter_sha256": local_model.adapter_sha256} if getattr(local_model, "adapter_sha256", None) else {}),
        "preset": preset,
        "format": {
            "bits_allocated": fmt.bits_allocated,
            "bits_stored": fmt.bits_stored,
            "high_bit": fmt.high_bit,
            "signed": fmt.signed,
        },
        "shape": [n_frames, n_samples, rows, cols],
        "k": k,
        "palette": palette is not None,
        **({"colour_palette": int(table.shape[0])} if table is not None else {}),
        "plane_stats": plane_stats,
        "outside": outside_mode,
        "digest": words_digest(words),
    }
    return config, sections


def decode_words(
    config: dict[str, Any], record: ct.Record, *, timings: dict | None = None, limits: DicomLimits | None = None,
    models: ModelStore | None = None, expected: tuple[np.ndarray, str] | None = None,
) -> np.ndarray:
    """Inverse of :func:`encode_words`; verifies the words' digest (``timings`` as there).

    ``limits.memory_bytes`` bounds what the record may make the decoder allocate.
    ``expected``: (the words, their digest) when verifying a record just coded from them
    (``_Expected``): the decoded words are compared with them instead of hashed."""
    try:
        if config["codec_id"] != CODEC_ID:
            raise UnsupportedError(f"pixel codec {shown(config['codec_id'])} unknown; this reader knows {CODEC_ID!r}")
        global_id = config["global_model"]
        if global_id not in GLOBAL_MODELS:
            raise ModelMismatchError(
                f"record needs global model {shown(global_id)}; this reader knows {', '.join(map(repr, GLOBAL_MODELS))}"
            )
        fields = config["format"]
        if not (isinstance(fields, dict) and isinstance(fields.get("signed"), bool) and all(
                type(fields.get(k)) is int for k in ("bits_allocated", "bits_stored", "high_bit"))):
            raise CorruptRecordError("pixel config's sample format is not three integers and a flag")
        fmt = SampleFormat(**fields)
        n_frames, n_samples, rows, cols = (int(x) for x in config["shape"])
        k, preset = int(config["k"]), config["preset"]
        local_id = config["local_model"]
        packed = bool(config.get("palette", False))
        n_colours = int(config.get("colour_palette", 0))
        hashes = (config.get("local_model_sha256"), config.get("local_adapter_sha256"))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise CorruptRecordError(f"pixel config incomplete or malformed ({described(exc)})") from None
    if not isinstance(local_id, str) or not all(h is None or _is_sha256(h) for h in hashes):
        raise CorruptRecordError("pixel config names its local model, or the model's SHA-256, in the wrong form")
    _check_preset(preset)
    if min(n_frames, n_samples, rows, cols) < 1 or n_frames * n_samples * rows * cols > MAX_DECODE_SAMPLES:
        claimed = ", ".join(shown(n) for n in (n_frames, n_samples, rows, cols))
        raise CorruptRecordError(f"record claims shape [{claimed}], outside the decodable range")
    replace(limits or DicomLimits(), bytes_per_sample=DECODE_BYTES_PER_SAMPLE).check_memory(
        n_frames * n_samples * rows * cols, "a record")
    palette = _unpack_palette(record.one(ct.SECTION_PALETTE).payload, fmt.bits_stored) if packed else None
    bits = fmt.bits_stored if palette is None else palette_bits(palette)
    table = None
    if n_colours:
        table = _unpack_colours(record.one(ct.SECTION_COLOURS).payload, n_colours, n_samples, bits)
        bits, n_samples = palette_bits(table[:, 0]), 1
    if not 0 <= k < bits:
        raise CorruptRecordError(f"record claims k={shown(k)} for {bits} coded bits")
    local_model = local_model_for(local_id, config.get("local_model_sha256"), config.get("local_adapter_sha256"), models)
    if local_id.startswith(TRANSFORMER_PREFIX) and not config.get("local_model_sha256"):
        raise CorruptRecordError(f"record names transformer model {shown(local_id)} without its SHA-256")
    global_streams = record.of_type(ct.SECTION_GLOBAL)
    local_streams = record.of_type(ct.SECTION_LOCAL)
    n_planes = n_frames * n_samples
    if len(global_streams) != n_planes or len(local_streams) != (n_planes if k else 0):
        raise CorruptRecordError(
            f"record holds {len(global_streams)} global / {len(local_streams)} local streams for {n_planes} planes"
        )
    global_coder = coder_for(global_id)
    values = np.empty((n_frames, n_samples, rows, cols), dtype=np.int64)  # n_samples: coded planes
    info = PlaneInfo(rows=rows, cols=cols, bits=bits - k, k=k, preset=preset)
    t = time.perf_counter()
    global_planes = _decode_global(global_coder, [s.payload for s in global_streams], info, n_samples)
    _add_time(timings, "global", t)
    planes: dict[tuple[int, int], np.ndarray] = {}
    for i in range(n_planes):
        f, c = divmod(i, n_samples)
        prev = _previous_plane(planes, f, c)
        g = global_planes[i]
        t = time.perf_counter()
        loc = local_model.decode(local_streams[i].payload if k else b"", g, info, prev)
        _add_time(timings, "local", t)
        if timings is not None and k:
            timings["local_tokens"] = timings.get("local_tokens", 0) + rows * cols
        values[f, c] = planes[(f, c)] = merge_planes(g, loc, k) if k else g
    if table is not None:
        if values.max() >= table.shape[0]:
            raise CorruptRecordError("decoded a colour index beyond the colour table")
        values = unpack_colours(values, table)
    if palette is not None:
        if values.max() >= palette.size:
            raise CorruptRecordError("decoded a palette index beyond the palette")
        values = unpack_values(values, palette)
    if config.get("outside") == "lzma":
        raw = _inflate(record.one(ct.SECTION_OUTSIDE).payload, values.size * fmt.word_dtype.itemsize, "outside-bits")
        outside = np.frombuffer(raw, dtype=fmt.word_dtype)
        if outside.size != values.size:
            raise CorruptRecordError("outside-bits section has the wrong size")
        outside = outside.reshape(values.shape).astype(np.int64)
    else:
        outside = None
    words = values_to_words(values, outside, fmt)
    if not (expected is not None and _same_words(words, *expected, config.get("digest"))) and (
            words_digest(words) != config.get("digest")):
        raise CorruptRecordError("decoded pixels do not match the record's SHA-256 (corrupt record or model mismatch)")
    return words


# What the lzma decoder may use: records are written with presets up to 9 (a 64 MiB
# dictionary, 65 MiB to decode); a crafted stream header can ask for 1.5 GiB.
_LZMA_MEMLIMIT = 128 << 20


def _inflate(payload: bytes, limit: int, what: str, *, over: type[MedcodecError] = CorruptRecordError,
             hint: str = "") -> bytes:
    """``lzma.decompress(payload)`` (concatenated streams too), refused as soon as it would
    exceed ``limit`` bytes, the most the section can hold: a few kB of lzma must not make
    the reader allocate gigabytes. Past ``limit`` it raises ``over`` (its message ends with
    ``hint``): CorruptRecordError where the limit is what the section can hold, LimitExceededError
    where it is the memory budget (medcodec.sealing)."""
    out: list[bytes] = []
    size = 0
    while True:
        decompressor = lzma.LZMADecompressor(memlimit=_LZMA_MEMLIMIT)
        try:
            chunk = decompressor.decompress(payload, max_length=limit - size + 1)
        except lzma.LZMAError as exc:
            if out:  # trailing bytes that are not a stream: ignored, as lzma.decompress does
                break
            raise CorruptRecordError(f"{what} section does not decompress: {exc}") from None
        size += len(chunk)
        if size > limit:
            raise over(f"{what} section inflates past the {limit} bytes it can hold{hint}")
        out.append(chunk)
        if not decompressor.eof:
            raise CorruptRecordError(f"{what} section does not decompress: its lzma stream is cut short")
        payload = decompressor.unused_data
        if not payload:
            return b"".join(out)
    return b"".join(out)


def _pack_palette(palette: np.ndarray) -> bytes:
    deltas = np.diff(palette, prepend=0).astype("<u4")
    return lzma.compress(deltas.tobytes())


def _unpack_palette(payload: bytes, bits: int) -> np.ndarray:
    try:
        deltas = np.frombuffer(_inflate(payload, 4 << bits, "palette"), dtype="<u4").astype(np.int64)
    except ValueError as exc:
        raise CorruptRecordError(f"palette section does not decompress: {exc}") from None
    palette = np.cumsum(deltas)
    if palette.size == 0 or palette[-1] >= (1 << bits) or (palette.size > 1 and (np.diff(palette) <= 0).any()):
        raise CorruptRecordError("palette section is not a sorted table of stored values")
    return palette


def _unpack_colours(payload: bytes, n: int, samples: int, bits: int) -> np.ndarray:
    if not 1 <= n <= COLOUR_PALETTE_MAX or samples < 2:
        raise CorruptRecordError(f"record claims a colour table of {shown(n)} colours for {samples} samples")
    try:
        raw = np.frombuffer(_inflate(payload, 2 * n * samples, "colour table"), dtype="<u2")
    except ValueError as exc:
        raise CorruptRecordError(f"colour table section does not decompress: {exc}") from None
    if raw.size != n * samples or (raw.size and int(raw.max()) >= (1 << bits)):
        raise CorruptRecordError("colour table section does not hold the claimed colours")
    return raw.reshape(n, samples).astype(np.int64)


# --- numpy arrays ----------------------------------------------------------------------

# The dtypes compress_pixels codes, by the name its records carry.
_ARRAY_DTYPES = {np.dtype(t).str.lstrip("<>|="): np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16)}


def _as_frames(array: np.ndarray) -> np.ndarray:
    """User layout -> (frames, samples, rows, cols)."""
    if array.ndim == 2:
        return array[None, None]
    if array.ndim == 3:
        return array[:, None]
    if array.ndim == 4:
        return np.moveaxis(array, 3, 1)
    raise UnsupportedError(
        f"array must be 2-D (rows, cols), 3-D (frames, rows, cols) or 4-D (frames, rows, cols, samples); got {array.ndim}-D"
    )


def compress_pixels(
    array: np.ndarray,
    *,
    bits_stored: int,
    signed: bool,
    preset: str = "max",
    high_bit: int | None = None,
    local_model: LocalPathModel | str | Sequence[LocalPathModel | str] | None = None,
    timings: dict | None = None,
) -> bytes:
    """Losslessly compress an integer image.

    ``array``: uint8/int8/uint16/int16 of shape (rows, cols), (frames, rows, cols) or
    (frames, rows, cols, samples). Every bit of every element is kept, including bits
    above ``bits_stored``. Returns a container record; :func:`decompress_pixels` inverts it.
    """
    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.int8, np.uint16, np.int16):
        raise UnsupportedError(f"array dtype must be uint8, int8, uint16 or int16; got {array.dtype}")
    if array.size == 0:
        raise UnsupportedError(f"array is empty (shape {array.shape})")
    bits_allocated = array.dtype.itemsize * 8
    fmt = SampleFormat(
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        high_bit=bits_stored - 1 if high_bit is None else high_bit,
        signed=signed,
    )
    words = np.ascontiguousarray(_as_frames(array)).view(fmt.word_dtype)
    pixel_config, sections = encode_words(words, fmt, preset=preset, local_model=local_model, timings=timings)
    config = {
        "kind": "pixels",
        "array": {"dtype": array.dtype.str.lstrip("<>|="), "shape": list(array.shape)},
        "pixels": pixel_config,
    }
    return ct.write_record(ct.Record(config=config, sections=sections))


@record_errors
def decompress_pixels(blob: bytes, *, timings: dict | None = None, limits: DicomLimits | None = None,
                      models: ModelStore | None = None) -> np.ndarray:
    """Inverse of :func:`compress_pixels`: same dtype, shape and values (``limits``: the
    memory budget, as for :func:`decompress_dicom`; ``models``: where the record's adapter
    comes from, as there)."""
    record = ct.read_record(blob)
    if record.config.get("kind") != "pixels":
        raise UnsupportedError(
            f"record holds {shown(record.config.get('kind'))}, not a pixel array; use decompress_dicom"
        )
    try:
        dtype = _ARRAY_DTYPES[record.config["array"]["dtype"]]
        shape = tuple(int(x) for x in record.config["array"]["shape"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise CorruptRecordError(f"array description malformed ({described(exc)})") from None
    if not 2 <= len(shape) <= 4:
        raise CorruptRecordError(f"array description has {len(shape)} dimensions; arrays have 2 to 4")
    if not isinstance(record.config.get("pixels"), dict):
        raise CorruptRecordError("pixel record has no pixel config")
    words = decode_words(record.config["pixels"], record, timings=timings, limits=limits, models=models)
    if words.dtype.itemsize != dtype.itemsize:
        raise CorruptRecordError(f"array dtype {dtype} does not fit the record's {8 * words.dtype.itemsize}-bit words")
    frames = words.view(dtype)
    if len(shape) == 2:
        out = frames[0, 0]
    elif len(shape) == 3:
        out = frames[:, 0]
    else:
        out = np.moveaxis(frames, 1, 3)
    if out.shape != shape:
        raise CorruptRecordError(f"decoded shape {out.shape} differs from recorded ({', '.join(map(shown, shape))})")
    return np.ascontiguousarray(out)


# --- DICOM files -----------------------------------------------------------------------

_HEADER_LENGTHS = struct.Struct("<QQQ")


def _pack_header(parsed: ParsedDicom) -> bytes:
    """The header section: the bytes around the pixel data, lzma-packed. Not at lzma's
    extreme setting: on the pipeline benchmark's 64 files (742 KB of headers) it saved 548
    bytes, 0.005% of their records, for 87 ms, 2.6% of the codec's time on them."""
    raw = _HEADER_LENGTHS.pack(len(parsed.prefix), len(parsed.suffix), len(parsed.extra))
    return ct.lzma_pack(raw + parsed.prefix + parsed.suffix + parsed.extra)


def _unpack_header(payload: bytes, source_size: int) -> tuple[bytes, bytes, bytes]:
    """The header section's prefix, suffix and extra bytes: together never more than the
    source file they came from (``source_size``)."""
    raw = _inflate(payload, _HEADER_LENGTHS.size + source_size, "header")
    try:
        a, b, c = _HEADER_LENGTHS.unpack_from(raw, 0)
    except struct.error as exc:
        raise CorruptRecordError(f"header section does not decompress: {exc}") from None
    at = _HEADER_LENGTHS.size
    if at + a + b + c != len(raw):
        raise CorruptRecordError("header section lengths do not add up")
    return raw[at : at + a], raw[at + a : at + a + b], raw[at + a + b :]


def parse_limits(limits: DicomLimits, preset: str, *, verify: bool = True) -> DicomLimits:
    """The limits to parse an input with before coding it with ``preset``: the memory budget
    per sample covers the encoder's working set (and the verification decode)."""
    per_sample = max(limits.bytes_per_sample, working_bytes_per_sample(preset, decode_too=verify))
    return replace(limits, bytes_per_sample=per_sample)


def compress_dicom(
    data: bytes,
    *,
    preset: str = "max",
    keep_codestream: bool = False,
    limits: DicomLimits | None = None,
    verify: bool = True,
    keyring=None,
    local_model: LocalPathModel | str | Sequence[LocalPathModel | str] | None = None,
    models: ModelStore | None = None,
    parsed: ParsedDicom | None = None,
) -> bytes:
    """Compress one DICOM file (bytes) into a record that restores it exactly.

    With a ``keyring`` (medcodec.crypto.Keyring) the record is keyed: its clear part is
    the de-identified file whose pixels carry the sealed PHI (medcodec.sealing), and the
    original is sealed. ``verify`` decodes the record again (with the key, when given)
    and compares it with what it was coded from before returning. ``limits.seconds``
    bounds the time one input may take: checked after parsing, between planes and
    candidates (encode_words) and before verification, LimitExceededError once it has
    passed. ``models`` (a ModelStore) resolves the local models named by id and holds the
    adapter a coder in ``local_model`` was built from, for verification. ``parsed``:
    ``data``'s parse_dicom result (with the same ``keep_codestream`` and limits), when the
    caller has parsed it already: one parse per input (``limits.seconds`` then counts
    from here).
    """
    return compress_dicom_read_back(data, preset, keep_codestream, limits, verify, keyring, local_model, models,
                                    parsed)[0]


def compress_dicom_read_back(data: bytes, preset: str, keep_codestream: bool, limits: DicomLimits | None, verify: bool,
                             keyring, local_model, models: ModelStore | None,
                             parsed: ParsedDicom | None, sha256: str | None = None) -> tuple[bytes, ct.Record | None]:
    """:func:`compress_dicom` (its arguments in order), with the record as verification
    read it back from the bytes (None without ``verify``): ``describe_record`` takes it
    without reading the bytes (and hashing them) again. ``sha256``: ``data``'s SHA-256
    in hex when the caller has computed it already (not computed again)."""
    _check_preset(preset)
    if sha256 is not None and not _is_sha256(sha256):
        raise ValueError("sha256 must be a SHA-256 in lowercase hex")
    limits = limits or DicomLimits()
    deadline = limits.deadline()
    if parsed is None:
        parsed = parse_dicom(data, keep_codestream=keep_codestream, limits=parse_limits(limits, preset, verify=verify))
    deadline.check("after reading the input")
    if keyring is not None:
        from . import sealing

        def encode(words, fmt):
            return encode_words(words, fmt, preset=preset, local_model=local_model, deadline=deadline)

        sealed_config, sections, _, written = sealing.seal_dicom(data, parsed, keyring, encode=encode,
                                                                 deadline=deadline, sha256=sha256)
        blob = ct.write_record(ct.Record(config={"kind": "dicom", **sealed_config}, sections=sections))
        if not verify:
            return blob, None
        deadline.check("before verification")
        record = ct.read_record(blob)
        pixels = sealed_config["pixels"]
        expected = _Expected(words=written.stego_words, words_digest=pixels and pixels["digest"], file=written.public,
                             file_sha256=sealed_config["source"]["sha256"], original=data,
                             original_sha256=written.original_sha256, written=written)
        restored = _restore_dicom(record, keyring=keyring, models=models, expected=expected)
        if parsed.restore_mode == "pixel-exact":
            same = np.array_equal(parse_dicom(restored).frames, parsed.frames)
        else:
            same = restored == data
        if not same:
            raise CorruptRecordError("keyed record does not restore the original (verification failed)")
        return blob, record
    config: dict[str, Any] = {
        "kind": "dicom",
        "restore_mode": parsed.restore_mode,
        "reencode": parsed.reencode,
        "note": parsed.note,
        "source": {"size": len(data), "sha256": sha256 or hashlib.sha256(data).hexdigest()},
        "spec": None if parsed.spec is None else parsed.spec.to_json(),
    }
    verbatim_sections = [ct.Section(ct.SECTION_VERBATIM, data)]
    words = None
    if parsed.restore_mode == RESTORE_VERBATIM:
        sections = verbatim_sections
        config["pixels"] = None
    else:
        pixel_config, pixel_sections = encode_words(
            parsed.frames, SampleFormat.of(parsed.spec), preset=preset, local_model=local_model, deadline=deadline
        )
        config["pixels"] = pixel_config
        words = parsed.frames
        sections = [ct.Section(ct.SECTION_HEADER, _pack_header(parsed)), *pixel_sections]
    blob = ct.write_record(ct.Record(config=config, sections=sections))
    if parsed.restore_mode == "pixel-exact":
        # A lossless codestream is sometimes smaller than our record: then keeping it
        # verbatim is both smaller and byte-exact.
        kept = {**config, "restore_mode": RESTORE_VERBATIM, "reencode": None, "pixels": None,
                "note": f"{parsed.note}; coded record not smaller than the source codestream, kept verbatim"}
        verbatim_blob = ct.write_record(ct.Record(config=kept, sections=verbatim_sections))
        if len(verbatim_blob) <= len(blob):
            blob, config, words = verbatim_blob, kept, None
    if not verify:
        return blob, None
    deadline.check("before verification")
    record = ct.read_record(blob)
    pixels = config["pixels"]
    _restore_dicom(record, models=models, expected=_Expected(
        words=words, words_digest=pixels and pixels["digest"], file=data, file_sha256=config["source"]["sha256"]))
    return blob, record


@record_errors
def decompress_dicom(blob: bytes, *, keyring=None, limits: DicomLimits | None = None,
                     models: ModelStore | None = None) -> bytes:
    """Restore the DICOM file of a record, checked against the record's digests.

    For a keyed record: without ``keyring`` the de-identified file (pixels = stego
    image); with it the original, byte for byte. ``limits.memory_bytes`` bounds what the
    record may claim (LimitExceededError before anything is allocated). ``models`` (a
    ModelStore) holds the A-LoRA adapter a record names; None: shipped models only.
    """
    return _restore_dicom(ct.read_record(blob), keyring=keyring, limits=limits, models=models)


@record_errors
def _restore_dicom(record: ct.Record, *, keyring=None, limits: DicomLimits | None = None,
                   models: ModelStore | None = None, expected: _Expected | None = None) -> bytes:
    """:func:`decompress_dicom` of a record read already. ``expected``: what verification
    of a record just written compares with instead of hashing (``_Expected``)."""
    config = record.config
    if config.get("kind") != "dicom":
        raise UnsupportedError(f"record holds {shown(config.get('kind'))}, not a DICOM file; use decompress_pixels")
    mode = config.get("restore_mode")
    words = header = None
    if mode == RESTORE_VERBATIM:
        out = record.one(ct.SECTION_VERBATIM).payload
    else:
        try:
            spec = PixelSpec.from_json(config["spec"])
        except (KeyError, TypeError) as exc:
            raise CorruptRecordError(f"pixel spec malformed ({described(exc)})") from None
        source = config.get("source")
        size = source.get("size") if isinstance(source, dict) else None
        if type(size) is not int or size < 1:
            raise CorruptRecordError("record does not give the original's size (config 'source')")
        budget = (limits or DicomLimits()).memory_bytes
        budget = default_memory_budget() if budget is None else budget
        if size > budget:  # the header section may inflate to that size: bounded before it does
            raise LimitExceededError(
                f"record claims an original of {shown(size)} bytes, over the memory budget of"
                f" {budget / 2**30:.1f} GiB (raise it with --memory-budget)")
        prefix, suffix, extra = header = _unpack_header(record.one(ct.SECTION_HEADER).payload, size)
        if not isinstance(config.get("pixels"), dict):
            raise CorruptRecordError(f"record in mode {shown(mode)} has no pixel config")
        known = None if expected is None or expected.words is None else (expected.words, expected.words_digest)
        words = decode_words(config["pixels"], record, limits=limits, models=models, expected=known)
        parsed = ParsedDicom(
            restore_mode=mode,
            spec=spec,
            prefix=prefix,
            suffix=suffix,
            frames=words,
            extra=extra,
            original=None,
            reencode=config.get("reencode"),
            note=config.get("note", ""),
        )
        try:
            out = rebuild_dicom(parsed)
        except MedcodecError:
            raise
        except Exception as exc:  # a rebuild failure is a record problem, never a traceback
            raise CorruptRecordError(f"could not rebuild the DICOM file ({type(exc).__name__})") from None
    source = config.get("source")
    digest = source.get("sha256") if isinstance(source, dict) else None
    if mode != "pixel-exact" and not _is_sha256(digest):
        raise CorruptRecordError("record does not give the original's SHA-256 (config 'source')")
    if mode != "pixel-exact" and not (expected is not None and expected.same_file(out, digest)) and (
            hashlib.sha256(out).hexdigest() != digest):
        raise CorruptRecordError("restored file does not match the original SHA-256")
    if keyring is not None and config.get("sealed"):
        from . import sealing

        original = None if expected is None or expected.original is None else (
            expected.original, expected.original_sha256)
        return sealing.unseal_dicom(record, keyring, stego_words=words, public=out, header=header,
                                    public_sha256=digest if mode != "pixel-exact" else None, limits=limits,
                                    expected=original, written=None if expected is None else expected.written)
    return out


def _global_plane_models(record: ct.Record, coder) -> dict[str, int]:
    """How many planes of a per-plane record each global coder took."""
    counts: dict[str, int] = {}
    for s in record.sections:
        if s.name == "global":
            model = coder.chosen_model(s.payload)
            counts[model] = counts.get(model, 0) + 1
    return counts


@record_errors
def inspect_record(blob: bytes) -> dict[str, Any]:
    """A JSON-able description of a record: versions, sections, sizes, bits per sample per path."""
    return describe_record(ct.read_record(blob), len(blob))


@record_errors
def describe_record(record: ct.Record, size: int) -> dict[str, Any]:
    """:func:`inspect_record` of a record read already from its ``size`` bytes."""
    config = record.config
    pixels = config.get("pixels")
    out: dict[str, Any] = {
        "format_version": f"{record.major}.{record.minor}",
        "kind": config.get("kind"),
        "record_bytes": size,
        "sections": {},
    }
    for s in record.sections:
        out["sections"][s.name] = out["sections"].get(s.name, 0) + len(s.payload)
    for key in ("restore_mode", "reencode", "note", "source", "spec", "array", "sealed"):
        if key in config:
            out[key] = config[key]
    if pixels:
        try:
            shape = [int(x) for x in pixels["shape"]]
            per_plane = PER_PLANE_MODELS.get(pixels["global_model"])
            models = {
                "global": pixels["global_model"],
                "local": pixels["local_model"],
                "local_sha256": pixels.get("local_model_sha256"),
                "adapter_sha256": pixels.get("local_adapter_sha256"),
            }
            described_pixels = {
                "k": pixels["k"],
                **({"colour_palette": pixels["colour_palette"]} if "colour_palette" in pixels else {}),
                "shape": pixels["shape"],
                "bits_stored": pixels["format"]["bits_stored"],
                "plane_stats": pixels["plane_stats"],
                "pixel_sha256": pixels.get("digest"),  # of the stored words, checked on every decode
            }
            head = {"codec_id": pixels["codec_id"], "models": models, "preset": pixels["preset"]}
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CorruptRecordError(f"pixel config incomplete or malformed ({described(exc)})") from None
        if len(shape) != 4 or min(shape) < 1:
            raise CorruptRecordError("record claims a pixel shape that is not 4 positive sizes")
        n = math.prod(shape)
        out.update(head)
        if per_plane is not None:
            out["global_planes"] = _global_plane_models(record, per_plane)
        out.update(described_pixels)
        out["bps"] = {
            "global": 8 * out["sections"].get("global", 0) / n,
            "local": 8 * out["sections"].get("local", 0) / n,
            "record": 8 * size / n,
        }
    return out
