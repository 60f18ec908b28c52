"""Patches, token order and the integer inputs of the local-path transformer.

Pure numpy, shared by the training job and the coder, so the model is trained on
exactly the inputs it codes with. Everything here is part of the bitstream
definition of the ``llm-*`` local models: changing a constant changes every record.

A plane of ``rows x cols`` local symbols (the low ``k`` bits of each value) is cut
into patches of ``PATCH_ROWS x PATCH_COLS`` pixels, scanned block by block in raster
order; inside a patch tokens run in raster order. Each token sees

* the *visual prompt*: the global modality (high planes) in a 5x5 window around its
  pixel, as differences to its own global value, clipped. The decoder knows the whole
  global modality before the local path starts, so neighbours below and to the right
  are included;
* the local symbols of its left, upper, upper-left and upper-right neighbours when
  they lie earlier in the same patch (else an "unknown" index), at the resolution of
  ``MAX_K`` bits so one model serves every k;
* k itself.

Patches are independent given the global modality, so they are coded in parallel:
``GROUP_PATCHES`` patches at a time, position by position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PATCH_ROWS = 4
PATCH_COLS = 8
PATCH_TOKENS = PATCH_ROWS * PATCH_COLS
# Highest k the model codes; symbols are embedded at this resolution.
MAX_K = 6
N_BINS = 1 << MAX_K
UNKNOWN = N_BINS  # embedding index of a neighbour that is not (yet) known
# Visual prompt: 5x5 window minus the centre, differences clipped to +-CLIP.
WINDOW = 2
CLIP = 15
PROMPT_OFFSETS = tuple(
    (dr, dc) for dr in range(-WINDOW, WINDOW + 1) for dc in range(-WINDOW, WINDOW + 1) if (dr, dc) != (0, 0)
)
N_PROMPT = len(PROMPT_OFFSETS)
# Causal neighbours inside a patch: (row offset, col offset).
CAUSAL_OFFSETS = ((0, -1), (-1, 0), (-1, -1), (-1, 1))
N_CAUSAL = len(CAUSAL_OFFSETS)
# Patches coded together, position by position (part of the stream order).
GROUP_PATCHES = 4096

_T = np.arange(PATCH_TOKENS)
_TR, _TC = _T // PATCH_COLS, _T % PATCH_COLS


def _causal_source() -> np.ndarray:
    """For each token and causal neighbour, the earlier token index in the patch, or -1."""
    src = np.full((PATCH_TOKENS, N_CAUSAL), -1, dtype=np.int64)
    for j, (dr, dc) in enumerate(CAUSAL_OFFSETS):
        r, c = _TR + dr, _TC + dc
        ok = (r >= 0) & (c >= 0) & (c < PATCH_COLS)
        src[ok, j] = (r * PATCH_COLS + c)[ok]
    return src


CAUSAL_SOURCE = _causal_source()


@dataclass(frozen=True)
class PatchGrid:
    """Where every token of every patch lies in a rows x cols plane."""

    rows: int
    cols: int

    @property
    def block_rows(self) -> int:
        return -(-self.rows // PATCH_ROWS)

    @property
    def block_cols(self) -> int:
        return -(-self.cols // PATCH_COLS)

    @property
    def n_patches(self) -> int:
        return self.block_rows * self.block_cols

    def groups(self) -> list[tuple[int, int]]:
        """Half-open patch ranges coded together, in stream order."""
        return [(lo, min(lo + GROUP_PATCHES, self.n_patches)) for lo in range(0, self.n_patches, GROUP_PATCHES)]

    def coordinates(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, col, valid) of the tokens of patches lo..hi, each shaped (patches, PATCH_TOKENS)."""
        p = np.arange(lo, hi, dtype=np.int64)
        br, bc = p // self.block_cols, p % self.block_cols
        r = br[:, None] * PATCH_ROWS + _TR[None, :]
        c = bc[:, None] * PATCH_COLS + _TC[None, :]
        valid = (r < self.rows) & (c < self.cols)
        return r, c, valid


def prompt_features(global_part: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The visual prompt of the tokens at (r, c): int8 (..., N_PROMPT) clipped differences."""
    g = global_part.astype(np.int64)
    rows, cols = g.shape
    rc, cc = np.minimum(r, rows - 1), np.minimum(c, cols - 1)
    centre = g[rc, cc]
    out = np.empty(r.shape + (N_PROMPT,), dtype=np.int8)
    for j, (dr, dc) in enumerate(PROMPT_OFFSETS):
        nb = g[np.clip(rc + dr, 0, rows - 1), np.clip(cc + dc, 0, cols - 1)]
        out[..., j] = np.clip(nb - centre, -CLIP, CLIP)
    return out


def causal_known(valid: np.ndarray) -> np.ndarray:
    """(patches, tokens, N_CAUSAL) bool: the neighbour exists earlier in the patch and in the plane."""
    src = CAUSAL_SOURCE
    known = np.zeros(valid.shape + (N_CAUSAL,), dtype=bool)
    has = src >= 0
    known[:, has] = valid[:, np.where(has, src, 0)][:, has]
    return known & valid[:, :, None]


def scaled_symbols(symbols: np.ndarray, k: int) -> np.ndarray:
    """Local symbols at MAX_K resolution (what the embeddings see)."""
    return symbols.astype(np.int64) << (MAX_K - k)


def causal_inputs(scaled: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(patches, tokens, N_CAUSAL) embedding indices from the scaled symbols of the patch."""
    src = np.where(CAUSAL_SOURCE >= 0, CAUSAL_SOURCE, 0)
    return np.where(known, scaled[:, src], UNKNOWN)


def causal_inputs_at(scaled: np.ndarray, known: np.ndarray, t: int) -> np.ndarray:
    """Embedding indices of position t only, from symbols decoded so far: (patches, N_CAUSAL)."""
    src = np.where(CAUSAL_SOURCE[t] >= 0, CAUSAL_SOURCE[t], 0)
    return np.where(known[:, t], scaled[:, src], UNKNOWN)
