"""Every per-plane selector a record may name, as data: its id, its candidates' ids (a
plane's stream starts with the index of the one that coded it) and the rule that picks
the candidates worth coding a plane with (the smallest stream wins).

============================  ========  ==============================================
selector                      preset    candidates
============================  ========  ==============================================
``per-plane-v3``              (max)     interlaced-tree-v2, raster-wp-v1, its difference
``per-plane-v4``              (max)     v3's, wavelet53-v1
``per-plane-v5``              (max)     interlaced-tree-v2, raster-wp-v2, its difference, wavelet53-v1
``per-plane-v6``              (max)     interlaced-tree-v2, raster-wp-v3, its difference, wavelet53-v1
``per-plane-v7``              (max)     interlaced-tree-v2, raster-wp-v4, its difference, wavelet53-v1
``per-plane-v8``              max       interlaced-tree-v2, raster-wp-v4, its difference, wavelet53-v2
``per-plane-fast-v1``         (fast)    interlaced-ls-v1, its difference, wavelet53-v1
``per-plane-fast-v2``         (fast)    raster-ls-v1, interlaced-ls-v1's difference, wavelet53-v1, interlaced-ls-v1
``per-plane-fast-v3``         (fast)    raster-wpc-v1, wavelet53-v1, raster-wpc-v1's difference
``per-plane-fast-v4``         (fast)    raster-wpc-v1, wavelet53-v2, raster-wpc-v1's difference
``per-plane-fast-v5``         (fast)    raster-wpc-v2, wavelet53-v2, raster-wpc-v2's difference
``per-plane-fast-v6``         fast      raster-wpc-v3, wavelet53-v2, raster-wpc-v3's difference
============================  ========  ==============================================

A preset in brackets wrote records with that selector once; they still decode with it.
The rules are the encoder's alone: a decoder reads the candidate's index. Why each rule
is what it is, and what it measured, is beside it and in schemas/FORMAT.md.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..paths import GlobalPathCoder, PlaneInfo, TreeGlobalPathCoder
from ..wavefront import (
    INTERLACED_LS_DIFF_V1,
    RASTER_WP_DIFF_V1,
    RASTER_WP_DIFF_V2,
    RASTER_WP_DIFF_V3,
    RasterGlobalPathCoder,
    RasterLSGlobalPathCoder,
    RasterV2GlobalPathCoder,
    RasterV3GlobalPathCoder,
)
from ..wavelet import LEVELS, WaveletGlobalPathCoder
from ..wavelet import forward as wavelet_forward
from . import PlaneSelector, register
from .raster_wp_v4 import RASTER_WP_DIFF_V4, RasterV4GlobalPathCoder
from .raster_wpc import (
    RASTER_WPC_DIFF_V1,
    RASTER_WPC_DIFF_V2,
    RASTER_WPC_DIFF_V3,
    RasterWPCGlobalPathCoder,
    RasterWPCV2GlobalPathCoder,
    RasterWPCV3GlobalPathCoder,
)
from .wavelet_v2 import WaveletV2GlobalPathCoder


# Which planes may gain from the wavelet path: on a PROBE x PROBE centre crop (aligned to
# the transform's grid), the fraction of exactly zero finest-level 5/3 detail
# coefficients minus the fraction of zero 4-neighbour Laplacians (flat areas are zero in
# both domains). Held-out images: decoded lossy JPEG 2000 693_UNCI 0.50, RG3_UNCI 0.41,
# MR2_UNCI 0.16, US1_UNCI 0.22; acquired 693_J2KR 0.18, RG3_J2KR 0.12, US1_J2KR 0.07,
# MR2_J2KR 0.05, OBXXXX1A 0.02 (97.6% zero coefficients, but flat), emri 0.02. `max`'s
# per-plane-v4 to v7 tried the wavelet path from WAVELET_PROBE_MIN on (on the held-out
# images it won only on 693_UNCI and RG3_UNCI; at 0.1 it was also coded for 693_J2KR,
# RG3_J2KR, MR2_UNCI and US1_UNCI, and lost); v8 tries its own on every plane.
PROBE = 256
WAVELET_PROBE_MIN = 0.25
# `fast` codes a plane equal to its previous plane at FAST_DIFF_MIN_EQUAL of its pixels or
# more (grey RGB) as the difference (held-out US1_UNCI G and B planes 101.1 -> 76.3 kB),
# and a plane whose probe reaches FAST_WAVELET_PROBE by the wavelet path (693_UNCI 34.9 ->
# 2.1 kB, RG3_UNCI 657 -> 573 kB), without trial codings. (Trying the wavelet path on the
# probe crop wherever the probe reached 0.1 also caught MR2_UNCI, 507 ->
# 453 kB, but chose it for 693_J2KR too, where it is larger, and made `fast` encode at
# 0.63x JPEG-XL's speed.)
FAST_DIFF_MIN_EQUAL = 0.5
FAST_WAVELET_PROBE = 0.3


def _centre(shape: tuple[int, int], size: int, align: int) -> tuple[slice, slice]:
    """A ``size`` x ``size`` window (smaller where the plane is) at the centre of a plane
    of ``shape``, its corner on multiples of ``align``."""
    rows, cols = shape
    r0 = max(0, (rows - size) // 2) // align * align
    c0 = max(0, (cols - size) // 2) // align * align
    return slice(r0, r0 + size), slice(c0, c0 + size)


def _crop_info(crop: np.ndarray, plane: np.ndarray, preset: str) -> PlaneInfo:
    """A crop's PlaneInfo for a trial coding: the bits of the whole plane's largest value."""
    bits = max(1, int(plane.max()).bit_length())
    return PlaneInfo(rows=crop.shape[0], cols=crop.shape[1], bits=bits, k=0, preset=preset)


def _probe_crop(plane: np.ndarray) -> np.ndarray:
    return np.asarray(plane[_centre(plane.shape, PROBE, 1 << LEVELS)], dtype=np.int64)


def wavelet_probe(plane: np.ndarray) -> float:
    """Zero wavelet detail fraction minus zero Laplacian fraction on the centre crop."""
    crop = _probe_crop(plane)
    if min(crop.shape) < 3:
        return 0.0
    from ..countkernel import zero_laplacian_count  # numba: loaded on first use

    details = wavelet_forward(crop, 1)[1:]
    zero_w = sum(d.size - np.count_nonzero(d) for d in details) / sum(d.size for d in details)
    return zero_w - zero_laplacian_count(crop) / ((crop.shape[0] - 2) * (crop.shape[1] - 2))


def _trials(candidates: tuple[str, ...], *, difference: int, wavelet: int | None = None, equal_only: bool = False):
    """A ``choose`` rule that codes a plane with every candidate that applies (the smallest
    stream wins): the difference coder (index ``difference``) where there is a previous
    plane (with ``equal_only``, one the plane is ``_mostly_equal`` to), the wavelet path
    (index ``wavelet``) where ``wavelet_probe`` reaches ``WAVELET_PROBE_MIN``, the others
    always."""

    def choose(plane: np.ndarray, prev: np.ndarray | None) -> tuple[int, ...]:
        return tuple(
            i for i in range(len(candidates))
            if (i != difference or (prev is not None and (not equal_only or _mostly_equal(plane, prev))))
            and (i != wavelet or wavelet_probe(plane) >= WAVELET_PROBE_MIN)
        )

    return choose


def _per_plane(model_id: str, candidates: tuple[str, ...], *, wavelet: int | None = None,
               equal_only: bool = False) -> PlaneSelector:
    """A `max` per-plane selector: every candidate that applies (``_trials``; the
    difference coder is candidate 2, tried on planes ``_mostly_equal`` to their previous
    plane only where ``equal_only``)."""
    return register(PlaneSelector(model_id=model_id, candidates=candidates,
                                  choose=_trials(candidates, difference=2, wavelet=wavelet, equal_only=equal_only)),
                    record_level=True)


# The interlaced tree path wins on smooth and upsampled images (it predicts from both
# sides at every level), the raster path on images with pixel-scale texture, the
# difference coder on planes nearly equal to the previous one (grey RGB).
PER_PLANE_V3 = _per_plane("per-plane-v3", (
    TreeGlobalPathCoder.model_id, RasterGlobalPathCoder.model_id, RASTER_WP_DIFF_V1.model_id))


# per-plane-v3's candidates plus the 5/3 wavelet path (``medcodec.wavelet``), for planes
# that were once lossy JPEG 2000 images (held-out 693_UNCI.dcm: 0.632 -> 0.065 bits per
# sample; RG3_UNCI.dcm: 1.497 -> 1.460), tried where ``wavelet_probe`` allows.
PER_PLANE_V4 = _per_plane("per-plane-v4", PER_PLANE_V3.candidates + (WaveletGlobalPathCoder.model_id,), wavelet=3)


# per-plane-v4 with the raster coders replaced by raster-wp-v2 (a predictor and an offset
# per context leaf).
PER_PLANE_V5 = _per_plane("per-plane-v5", (
    TreeGlobalPathCoder.model_id, RasterV2GlobalPathCoder.model_id, RASTER_WP_DIFF_V2.model_id,
    WaveletGlobalPathCoder.model_id), wavelet=3)


# per-plane-v5 with the raster coders replaced by raster-wp-v3 (leaves may pick fitted
# predictors over a wider neighbourhood).
PER_PLANE_V6 = _per_plane("per-plane-v6", (
    TreeGlobalPathCoder.model_id, RasterV3GlobalPathCoder.model_id, RASTER_WP_DIFF_V3.model_id,
    WaveletGlobalPathCoder.model_id), wavelet=3)


# per-plane-v6 with raster-wp-v3 replaced by raster-wp-v4 (its model, coded inside the
# kernel): `max`'s global path. raster-wp-v4 reads the previous plane itself, so the
# difference coder is tried only on planes mostly equal to it (grey RGB), as `fast` does:
# over the train images' 69 planes with a previous plane it had saved 224 B in all
# against the next best candidate, and the files grow by 30 B of 8,780,818 (three small
# RGB screen captures, 3-24 B each).
PER_PLANE_V7 = _per_plane("per-plane-v7", (
    TreeGlobalPathCoder.model_id, RasterV4GlobalPathCoder.model_id, RASTER_WP_DIFF_V4.model_id,
    WaveletGlobalPathCoder.model_id), wavelet=3, equal_only=True)


# per-plane-v7 with wavelet53-v1 replaced by wavelet53-v2 (compiled band coders), which
# is tried on every plane, and with the interlaced tree path, the raster path and the
# wavelet path screened on a crop (``_screen``). Over the planes `max` coded on the train
# and held-out images (2026-12-05), v2 coded each plane where v1 had won smaller (held-out 693_UNCI
# 2,117 -> 1,690 B, RG3_UNCI 565,342 -> 552,853 B) at 25x v1's speed (RG3_UNCI 3.4 ->
# 0.15 s), and the probe had missed a plane where it wins: train RG1_UNCI (decoded lossy
# JPEG 2000, probe 0.009) 3,843,641 B by the tree path, 3,622,970 B by v2.
PER_PLANE_V8_CANDIDATES = (
    TreeGlobalPathCoder.model_id, RasterV4GlobalPathCoder.model_id, RASTER_WP_DIFF_V4.model_id,
    WaveletV2GlobalPathCoder.model_id)
# Planes of TREE_SCREEN_MIN_SAMPLES or more are first coded on a TREE_SCREEN_CROP square
# at their centre by the tree path, the raster path and wavelet53-v2 (``_screen``). Where
# the wavelet path's crop stream is smaller than both others' by more than
# TREE_SCREEN_MARGIN, the plane is coded by it alone (and the difference coder where that
# applies); else the tree or raster path whose crop stream is larger than the other's by
# more than TREE_SCREEN_MARGIN is not coded in full. On the 27 such planes of the train and
# held-out images (2026-12-05): the wavelet path alone on 3, each where it wins in full
# (train RG1_UNCI crop -4.8%, whole plane -5.7%; held-out RG3_UNCI -11.7%, -4.4%;
# 693_UNCI -80%, -92%; the nearest other, MR2_UNCI, +1.0% on the crop, +0.8% in full);
# of the other 24, the loser of tree and raster dropped on 22 and both kept on 2 (RG1_J2KR,
# US1_UNCI's first plane: within 3% on the crop), never the winner. The same streams, and
# the tree and raster codings of the held-out planes 25.3 -> 21.3 s by the tree and raster
# rule alone (the crops' 0.2-0.3 s each included); the wavelet rule then saves RG3_UNCI's
# 4.2 s and RG1_UNCI's 4.8 s. A 128x128 crop would have dropped the tree path's win on
# RG3_UNCI, 693_UNCI and both planes of eCT_Supplemental.
# Since 2026-12-06 neither of those two planes codes both (the crop's smaller of the tree
# and raster paths alone: RG1_J2KR's crops were 1.0% apart, US1_UNCI's 2.7%, and the
# crop's choice won in full by 0.6% and 6.0%), and wavelet53-v2 is not coded in full
# where its crop stream is over WAVELET_SCREEN_MARGIN larger than the smaller of the
# other two. Over the 29 planes `max` screens on those images, its nearest losers in full
# were within 0.9-2.0% on the crop (MR2_UNCI, RG1_J2KR, US1_UNCI's first plane; kept), the
# next 4.9% (explicit_VR-UN, kept) and 5.7% (RG3_J2KR, dropped: 4.5% larger in full); its
# wins were 4.8% smaller and more on the crop. The train and held-out files are the same bytes (8,644,509 and
# 2,757,795 B), and so are the pipeline benchmark's 64 files.
# Since 2026-12-06 (later) the crop is 224x224: on all 32 screened planes of the train and
# held-out images and the pipeline benchmark's own files it keeps the same paths as the
# 256x256 crop, whose screens took 5.1 s on them, 224's 3.9 s. A 192x192 crop would have
# changed three (US1_UNCI's third plane and one of eCT_Supplemental's to the other of tree
# and raster, explicit_VR-UN without wavelet53-v2).
# A smaller crop cannot decide first either, with the 224x224 crop coded only where its
# streams come close (2026-12-07, the 27 planes screened in the pydicom test files, this
# rule applied to centre crops of each size): 96x96 and 112x112 crops change five
# decisions, 128x128 and 160x160 three. eCT_Supplemental's planes change while their
# crops are far apart (both at 96-128, the second at 160): the raster path's crop stream
# 13-34% smaller than the tree path's, which codes both planes smallest in full. Those
# crops took 1.2 s (96), 1.9 s (128) and 2.8 s (160) against 5.4 s at 224 (tree 1.9 s,
# raster 3.0 s, wavelet 0.2 s, the difference coder 0.4 s).
TREE_SCREEN_MIN_SAMPLES = 1 << 18
TREE_SCREEN_CROP = 224
TREE_SCREEN_MARGIN = 0.03
WAVELET_SCREEN_MARGIN = 0.05
# Planes of TREE_GAP_MIN_SAMPLES pixels or more, too small to screen, are not coded by the
# tree path (2026-12-06, decided on train): on the 60 such planes of the train images it
# coded none smallest, 5.4% larger than the best stream at least (CT_small), for 1.6 s of
# `max`'s encode time; on the 8 of the held-out images and the 12 of the pipeline
# benchmark's own files 6.4% and 5.4% at least. It wins below (16 of 62 planes under 2**12
# pixels, with its fixed contexts) and on screened planes (5 of 32). The same files.
TREE_GAP_MIN_SAMPLES = 1 << 12


class _ScreenTree(TreeGlobalPathCoder):
    """The tree path as it codes the planes ``_screen`` screens (over ``SMALL_PLANE``
    pixels: its learned tree alone), on their crop (``SMALL_PLANE`` pixels or fewer),
    which it would otherwise also code with its fixed contexts. On the 256x256 centre crops
    of the 31 planes of 2**18 pixels or more in the train and held-out images (2026-12-06),
    the fixed contexts never coded one smaller; the crops took 1.8-1.9 s instead of
    2.1-2.3 s (two runs, one thread)."""

    SMALL_PLANE = 0


def _screen(plane: np.ndarray, prev: np.ndarray | None, crops: dict | None = None) -> tuple[int, ...]:
    """Which of the tree path (0), the raster path (1) and wavelet53-v2 (3) to code
    ``plane`` with: all three under ``TREE_GAP_MIN_SAMPLES`` pixels, the last two up to
    ``TREE_SCREEN_MIN_SAMPLES``, and on planes of ``TREE_SCREEN_MIN_SAMPLES`` or more those
    the centre crop does not rule out (module constants above): wavelet53-v2 alone, or
    the smaller of the tree and raster paths on the crop (both where equal) and
    wavelet53-v2 where its crop stream is within ``WAVELET_SCREEN_MARGIN`` of that.
    ``crops``, when given, receives the screened crop (``"crop"``, ``"prev"``, ``"info"``)
    and the three crop stream sizes by path."""
    if plane.size < TREE_SCREEN_MIN_SAMPLES:
        return (0, 1, 3) if plane.size < TREE_GAP_MIN_SAMPLES else (1, 3)
    window = _centre(plane.shape, TREE_SCREEN_CROP, 2)
    crop = np.ascontiguousarray(plane[window], dtype=np.int64)
    crop_prev = None if prev is None else np.ascontiguousarray(prev[window], dtype=np.int64)
    info = _crop_info(crop, plane, "max")
    tree = len(_ScreenTree().encode(crop, info, crop_prev))
    raster = len(RasterV4GlobalPathCoder().encode(crop, info, crop_prev))
    wavelet = len(WaveletV2GlobalPathCoder().encode(crop, info, crop_prev))
    if crops is not None:
        crops.update({"crop": crop, "prev": crop_prev, "info": info, 0: tree, 1: raster, 3: wavelet})
    best = min(tree, raster)
    if wavelet * (1 + TREE_SCREEN_MARGIN) < best:
        return (3,)
    paths = (0,) if tree < raster else (1,) if raster < tree else (0, 1)
    return paths + ((3,) if wavelet <= best * (1 + WAVELET_SCREEN_MARGIN) else ())


# A screened plane that is mostly equal to its previous plane (``_mostly_equal``: a colour
# sample after the first, a later frame) is coded on the crop by the difference coder too
# (2026-12-06, late): where that crop stream is over DIFF_SCREEN_MARGIN larger than the
# smallest of the other paths' crops, the difference coder does not code the plane; where
# it is over DIFF_SCREEN_MARGIN smaller, it alone does. Of the three such planes of the
# train and held-out images and the pipeline benchmark's own files, it dropped the
# difference coder on one (train eCT_Supplemental's second frame: crop +66%, whole plane
# +68%, 0.45 s of `max`'s encode) and kept both on two (held-out US1_UNCI's green and
# blue planes: crop +0.6% and -0.5% against the raster path's, and the difference coder
# won in full, -5.7% and -4.0%). The same files on all three sets.
DIFF_SCREEN_MARGIN = 0.03


def _v8_choice(plane: np.ndarray, prev: np.ndarray | None) -> tuple[int, ...]:
    """``per-plane-v8``'s rule: the paths ``_screen`` keeps, and the difference coder on
    planes ``_mostly_equal`` to their previous plane, on a screened plane unless its crop
    stream rules it out, or rules the others out (``DIFF_SCREEN_MARGIN``)."""
    if not _mostly_equal(plane, prev):
        return _screen(plane, prev)
    crops: dict = {}
    paths = _screen(plane, prev, crops)
    if not crops:
        return tuple(sorted(paths + (2,)))
    diff = len(RASTER_WP_DIFF_V4.encode(crops["crop"], crops["info"], crops["prev"]))
    others = min(crops[i] for i in (0, 1, 3))
    if diff > others * (1 + DIFF_SCREEN_MARGIN):
        return paths
    if diff * (1 + DIFF_SCREEN_MARGIN) < others:
        return (2,)
    return tuple(sorted(paths + (2,)))


PER_PLANE_V8 = register(PlaneSelector(model_id="per-plane-v8", candidates=PER_PLANE_V8_CANDIDATES, choose=_v8_choice),
                        record_level=True)


def _mostly_equal(plane: np.ndarray, prev: np.ndarray | None) -> bool:
    """Whether ``plane`` equals its previous plane at ``FAST_DIFF_MIN_EQUAL`` of its pixels or more."""
    return (prev is not None and prev.shape == plane.shape
            and np.count_nonzero(plane == prev) >= FAST_DIFF_MIN_EQUAL * plane.size)


def _fast_v1_choice(plane: np.ndarray, prev: np.ndarray | None) -> tuple[int, ...]:
    """per-plane-fast-v1's one candidate, no trial coding: the difference form (1) for a
    plane equal to its previous plane at ``FAST_DIFF_MIN_EQUAL`` of its pixels or more,
    the wavelet path (2) where the probe reaches ``FAST_WAVELET_PROBE``, else 0."""
    if _mostly_equal(plane, prev):
        return (1,)
    if wavelet_probe(plane) >= FAST_WAVELET_PROBE:
        return (2,)
    return (0,)


# `fast`'s global path from v1: interlaced-ls-v1, its difference form, or the wavelet path
# (its low band by interlaced-ls-v1).
FAST_V1 = register(PlaneSelector(
    model_id="per-plane-fast-v1",
    candidates=(GlobalPathCoder.model_id, INTERLACED_LS_DIFF_V1.model_id, WaveletGlobalPathCoder.model_id),
    choose=_fast_v1_choice,
), record_level=True)


# per-plane-fast-v2 keeps interlaced-ls-v1 for planes above this many pixels: on held-out
# RG3_J2KR (3.1 M pixels, CR) raster-ls-v1 saved 1.1% but decoded 2.4x slower (4.2 vs
# 1.75 s), its decoder taking 2 rows + cols vector steps. It also keeps it for planes
# that follow their previous plane closely (``_follows``; later frames, colour samples),
# which interlaced-ls-v1 uses as features and raster-ls-v1 does not: held-out
# OBXXXX1A_2frame rose from 0.264 to 0.317 bits per sample when its second frame took
# raster-ls-v1, while emri_small's slices code smaller with it (7.53 -> 6.98).
RASTER_LS_MAX_PIXELS = 1 << 21


def _fast_v2_choice(plane: np.ndarray, prev: np.ndarray | None) -> tuple[int, ...]:
    """per-plane-fast-v1's rule with ``raster-ls-v1`` (0) in place of ``interlaced-ls-v1``
    (3), up to ``RASTER_LS_MAX_PIXELS`` and unless the plane follows its previous plane.
    Held-out, full planes, raster-ls-v1 / interlaced-ls-v1 size: 693_J2KR 0.91, OBXXXX1A
    0.79, US1 planes 0.90-0.96, emri_small 0.91, MR2_J2KR 0.97, RG3_J2KR 1.00, MR2_UNCI
    1.03 (the one loss; no cheap test told it apart: centre-crop trials favoured the
    raster path on every image)."""
    choice = _fast_v1_choice(plane, prev)
    if choice == (0,) and (plane.size > RASTER_LS_MAX_PIXELS or (prev is not None and _follows(plane, prev))):
        return (3,)
    return choice


FAST_V2 = register(PlaneSelector(
    model_id="per-plane-fast-v2",
    candidates=(RasterLSGlobalPathCoder.model_id, INTERLACED_LS_DIFF_V1.model_id,
                WaveletGlobalPathCoder.model_id, GlobalPathCoder.model_id),
    choose=_fast_v2_choice,
), record_level=True)


def _follows(plane: np.ndarray, prev: np.ndarray, samples: int = 4096) -> bool:
    """Whether ``a * prev + b`` (least squares on a sample) predicts ``plane`` with under
    half the mean absolute error of its left neighbour: then interlaced-ls-v1, which has
    the previous plane among its features, beats raster-ls-v1, which has not (encoder only).
    Held-out OBXXXX1A_2frame's second frame (about 255 minus the first) passes; emri_small's
    slices (mean |difference| 31 against 28 to the left neighbour) do not."""
    x = np.asarray(plane, dtype=np.float64).ravel()
    p = np.asarray(prev, dtype=np.float64).ravel()
    step = max(1, x.size // samples)
    xs, ps = x[1::step], p[1::step]
    if not xs.size:  # a one-pixel plane has no left neighbour to compare with
        return False
    left = x[::step][: xs.size]
    fit = np.polyfit(ps, xs, 1) if np.ptp(ps) > 0 else np.array([0.0, xs.mean()])
    return float(np.abs(xs - np.polyval(fit, ps)).mean()) < 0.5 * float(np.abs(xs - left).mean())


def _fast_v3_choice(plane: np.ndarray, prev: np.ndarray | None) -> tuple[int, ...]:
    """`fast`'s rule, without trial codings but for one case: the wavelet path for
    decoded lossy JPEG 2000 images (``wavelet_probe``), the compiled raster
    coder for everything else (it uses the previous plane as a predictor itself); a
    plane equal to its previous plane at ``FAST_DIFF_MIN_EQUAL`` of its pixels or more
    is also coded as the difference, and the smaller stream kept."""
    if _mostly_equal(plane, prev):
        return (0, 2)
    return (1,) if wavelet_probe(plane) >= FAST_WAVELET_PROBE else (0,)


FAST_V3 = register(
    PlaneSelector(
        model_id="per-plane-fast-v3",
        candidates=(RasterWPCGlobalPathCoder.model_id, WaveletGlobalPathCoder.model_id, RASTER_WPC_DIFF_V1.model_id),
        choose=_fast_v3_choice,
        codes_all_planes=True,
    ),
    record_level=True,
)


# Planes up to this many samples that the wavelet probe sends to the wavelet path are
# also coded with the raster coder, and the smaller stream kept; larger ones are coded
# by whichever of the two codes the probe's centre crop smaller. The probe alone is
# often wrong: 100x100 screen-capture planes (train) take 500-1,000 B by the wavelet path
# and 130-550 B raster, JPEG2000_UNC.dcm (train) 22.4 against 18.2 kB.
# Deciding the other trial, a plane mostly equal to its previous plane coded both with the
# raster coder and as the difference (a full raster coding too many for held-out
# US1_UNCI's G and B planes, a sixth of its encode time), by the same crop was tried and
# not kept: on train color3d_jpeg_baseline's 119 such frames the crop favoured the raster
# coder by 1.16-1.22x where the whole frames were within 2% either way (1.0% larger file),
# and requiring a 1.3x margin before trusting the crop made that file's encode 32% slower
# (the crops coded on top of both full codings).
FAST_V4_TRIAL_SAMPLES = 1 << 16
# Planes of FAST_WAVELET_TRIAL_MIN samples or more that the probe leaves to the raster
# coder (and that are not mostly equal to their previous plane) are coded on the probe's
# centre crop both ways too, and take the wavelet path where its crop stream is smaller by
# more than FAST_WAVELET_TRIAL_MARGIN: the probe misses images that were lossy JPEG 2000
# at a high rate, whose finest details are seldom exactly zero. Decided on train (the two
# planes of a million pixels or more): RG1_UNCI (decoded lossy JPEG 2000, probe 0.01)
# crop -6.1%, whole plane 3,956,249 -> 3,622,970 B (-8.4%); RG1_J2KR crop -0.3%, stays
# raster. A crop costs 10-20 ms (two codings of 64 k samples), 5-8% of a plane this size.
FAST_WAVELET_TRIAL_MIN = 1 << 20
FAST_WAVELET_TRIAL_MARGIN = 0.05


def _crop_sizes(plane: np.ndarray, raster) -> tuple[int, int]:
    """(raster coder ``raster``'s, wavelet53-v2's) stream sizes of the probe's centre crop."""
    crop = _probe_crop(plane)
    info = _crop_info(crop, plane, "fast")
    return len(raster().encode(crop, info)), len(WaveletV2GlobalPathCoder().encode(crop, info))


def _wavelet_checked(raster) -> Callable[[np.ndarray, np.ndarray | None], tuple[int, ...]]:
    """``per-plane-fast-v3``'s rule with the wavelet path (1) checked against the raster
    coder ``raster`` (0): both coded up to ``FAST_V4_TRIAL_SAMPLES``, above that whichever
    codes the probe's centre crop smaller; and a plane the rule gives the raster coder
    alone, of ``FAST_WAVELET_TRIAL_MIN`` samples or more, by the wavelet path where its
    crop is smaller by more than ``FAST_WAVELET_TRIAL_MARGIN``."""

    def choose(plane: np.ndarray, prev: np.ndarray | None) -> tuple[int, ...]:
        order = _fast_v3_choice(plane, prev)
        if order == (0,) and plane.size >= FAST_WAVELET_TRIAL_MIN:
            size, wavelet = _crop_sizes(plane, raster)
            return (1,) if wavelet * (1 + FAST_WAVELET_TRIAL_MARGIN) < size else (0,)
        if order != (1,):
            return order
        if plane.size <= FAST_V4_TRIAL_SAMPLES:
            return (0, 1)
        size, wavelet = _crop_sizes(plane, raster)
        return (1,) if wavelet < size else (0,)

    return choose


def _fast_selector(model_id: str, raster, difference) -> PlaneSelector:
    """A `fast` selector over the raster coder ``raster`` (0), ``wavelet53-v2`` (1) and
    ``difference`` (2), with ``_wavelet_checked``'s rule."""
    return register(
        PlaneSelector(
            model_id=model_id,
            candidates=(raster.model_id, WaveletV2GlobalPathCoder.model_id, difference.model_id),
            choose=_wavelet_checked(raster),
            codes_all_planes=True,
        ),
        record_level=True,
    )


# ``per-plane-fast-v3`` with ``wavelet53-v2`` in place of v1, where the wavelet path is
# checked against the raster coder.
FAST_V4 = _fast_selector("per-plane-fast-v4", RasterWPCGlobalPathCoder, RASTER_WPC_DIFF_V1)


# per-plane-fast-v4 with raster-wpc-v2 (run mode, leaner residual) for raster-wpc-v1.
FAST_V5 = _fast_selector("per-plane-fast-v5", RasterWPCV2GlobalPathCoder, RASTER_WPC_DIFF_V2)


# `fast`'s global path: per-plane-fast-v5 with raster-wpc-v3 (a lighter predictor and
# probability model) for raster-wpc-v2.
FAST_V6 = _fast_selector("per-plane-fast-v6", RasterWPCV3GlobalPathCoder, RASTER_WPC_DIFF_V3)
