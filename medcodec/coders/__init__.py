"""The global-path coder registry: every coder a record may name, by its stable id.

A global-path coder turns one plane of non-negative integers (the global modality,
``values >> k``) into bytes and back::

    class MyCoder:
        model_id = "my-coder-v1"          # stable: never changes meaning once records exist
        def encode(self, plane, info, prev=None) -> bytes: ...
        def decode(self, data, info, prev=None) -> np.ndarray: ...

``info`` is a :class:`medcodec.paths.PlaneInfo`; ``prev`` is the previous plane of the
same image (the previous sample of a pixel, or the same sample of the previous frame)
or None. Decorate the class with :func:`register`; ``record_level=True`` when a
record's config may name it as its ``global_model`` (the others are candidates of a
per-plane selector, named inside its streams). A coder whose stream does not depend on
``info.preset`` may say so (``preset_free = True``): selectors of several presets then
share its streams of one image's planes (``PlaneSelector.encode``'s ``streams``). A coder
whose encoder can start from what it fitted on the previous plane says ``reuses_fits =
True`` and takes a ``fits`` dict, kept per image (``_kept_stream``).

A per-plane selector (:class:`PlaneSelector`) is data: an id, its candidates' ids (a
stream's first varint is the index of the one that coded it) and the rule that picks
one. A coder of the difference to the previous plane is data too
(:class:`medcodec.coders.difference.DifferenceCoder`: its id and its base coder's id).
Adding a coder means one module in this package (found and imported by the registry
itself), one section of schemas/FORMAT.md and one golden record
(tests/fixtures/make_golden.py).

Ids are never reused: a coder whose stream changes gets a new id, and the old one
stays registered to decode what was written with it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from ..errors import CorruptRecordError, ModelMismatchError


class GlobalCoder(Protocol):
    """What a global-path coder provides (see the module docstring)."""

    model_id: str

    def encode(self, plane: np.ndarray, info, prev: np.ndarray | None = None) -> bytes: ...

    def decode(self, data: bytes, info, prev: np.ndarray | None = None) -> np.ndarray: ...


_REGISTRY: dict[str, object] = {}
_RECORD_LEVEL: set[str] = set()
# Modules whose import registers coders: the older ones, which live beside the path code,
# and every module of this package (a new coder's module is found without being listed).
_OLDER_MODULES = ("medcodec.paths", "medcodec.wavefront", "medcodec.wavelet")
_loaded = False


def register(cls=None, *, record_level: bool = False):
    """Class decorator: add a coder (or a :class:`PlaneSelector` instance) to the registry."""

    def add(entry):
        model_id = entry.model_id
        known = _REGISTRY.get(model_id)
        if known is not None and known is not entry:
            raise ValueError(f"global coder id {model_id!r} is already registered to {known!r}")
        _REGISTRY[model_id] = entry
        if record_level:
            _RECORD_LEVEL.add(model_id)
        return entry

    return add if cls is None else add(cls)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    import pkgutil

    for name in _OLDER_MODULES + tuple(f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(name)
    _loaded = True


def registered(*, record_level: bool | None = None) -> dict[str, object]:
    """Every registered coder by id (only the record-level ones, or only the others)."""
    _load()
    return {
        k: v for k, v in _REGISTRY.items() if record_level is None or (k in _RECORD_LEVEL) == record_level
    }


def coder_for(model_id: str) -> GlobalCoder:
    """A coder instance for ``model_id``; ModelMismatchError if this reader does not know it."""
    _load()
    entry = _REGISTRY.get(model_id)
    if entry is None:
        raise ModelMismatchError(f"global coder {model_id!r} is unknown; this reader knows {', '.join(sorted(_REGISTRY))}")
    return entry() if isinstance(entry, type) else entry


@dataclass(frozen=True)
class PlaneSelector:
    """A global path that codes each plane with one of ``candidates`` (coder ids).

    ``choose(plane, prev) -> indices`` names the candidates worth coding the plane with
    (the smallest stream wins; one index means no trial coding); None tries them all. A stream is the
    candidate's index (one varint) and that candidate's stream. ``codes_all_planes``:
    the candidates model the noise floor themselves, so the record keeps no local planes
    (k = 0).
    """

    model_id: str
    candidates: tuple[str, ...]
    choose: Callable[[np.ndarray, np.ndarray | None], tuple[int, ...]] | None = None
    codes_all_planes: bool = False

    def encode(self, plane: np.ndarray, info, prev: np.ndarray | None = None, *, streams: dict | None = None) -> bytes:
        """The smallest stream of the candidates ``choose`` names. ``streams``: one image's
        streams of candidates whose stream does not depend on the preset
        (``preset_free``), kept by plane (``_kept_stream``), so a plane another selector
        coded with the same candidate is not coded again."""
        from ..paths import IntWriter

        if self.choose is not None:
            order = self.choose(plane, prev)
        else:
            order = range(len(self.candidates))
        best = None
        for i in order:
            head = IntWriter()
            head.put(i)
            data = bytes(head.buf) + _kept_stream(coder_for(self.candidates[i]), plane, info, prev, streams)
            if best is None or len(data) < len(best):
                best = data
        return best

    def _choice(self, data: bytes) -> tuple[str, int]:
        from ..paths import IntReader

        reader = IntReader(data)
        i = reader.get()
        if not 0 <= i < len(self.candidates):
            raise CorruptRecordError(f"global stream names candidate {i} (0..{len(self.candidates) - 1})")
        return self.candidates[i], reader.at

    def decode(self, data: bytes, info, prev: np.ndarray | None = None) -> np.ndarray:
        model_id, at = self._choice(data)
        return coder_for(model_id).decode(data[at:], info, prev)

    def chosen_model(self, data: bytes) -> str:
        """The id of the candidate that coded this stream."""
        return self._choice(data)[0]

    def decode_planes(self, streams: list[bytes], info, prev_of: list[int | None]) -> list[np.ndarray]:
        """Every plane of a record, plane i's previous plane being plane ``prev_of[i]`` (an
        earlier one) or none."""
        out: list[np.ndarray] = []
        for data, p in zip(streams, prev_of):
            out.append(self.decode(data, info, None if p is None else out[p]))
        return out


def _kept_stream(coder, plane: np.ndarray, info, prev: np.ndarray | None, streams: dict | None) -> bytes:
    """``coder``'s stream of ``plane``; for a ``preset_free`` coder, taken from ``streams``
    where it coded the same plane (content), previous plane and PlaneInfo but the preset
    already, and kept there otherwise.

    `max` codes an image with its selector and then, where the screen allows, with
    `fast`'s (``codec.encode_words``), and both have wavelet53-v2 among their candidates:
    on decoded lossy JPEG 2000 images both chose it for the same planes and coded the
    same stream twice (RG1_UNCI 0.55 of 1.5 s, RG3_UNCI 0.20 of 0.76 s; 2026-12-07).
    A plane's key is its SHA-256 (about 5 ns a sample, against 100 ns and more a sample
    for the coding).

    A coder that ``reuses_fits`` (raster-wp-v3 and v4) is given ``streams`` as its
    ``fits``: the fitted predictors it leaves there for a plane start the fits of the
    plane that follows it (``wavefront.RasterV3GlobalPathCoder._fit_models``)."""
    if streams is not None and getattr(coder, "reuses_fits", False):
        return coder.encode(plane, info, prev, fits=streams)
    if streams is None or not getattr(coder, "preset_free", False):
        return coder.encode(plane, info, prev)
    key = (coder.model_id, info.rows, info.cols, info.bits, info.k, _content(plane),
           None if prev is None else _content(prev))
    data = streams.get(key)
    if data is None:
        data = streams[key] = coder.encode(plane, info, prev)
    return data


def _content(a: np.ndarray) -> tuple:
    """An array's shape, type and SHA-256: equal for equal arrays, whatever their layout."""
    import hashlib

    a = np.ascontiguousarray(a)
    return a.shape, a.dtype.str, hashlib.sha256(a.data).digest()


__all__ = ["GlobalCoder", "PlaneSelector", "coder_for", "register", "registered"]
