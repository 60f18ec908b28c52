"""Compile the codec's kernels ahead of their first use: ``python -m medcodec.warmup``.

numba compiles a kernel the first time a process on the machine calls it and caches it
beside its module (``medcodec.jit``); a later process loads it. A first ``max`` coding
compiles for about a minute on 2 cores, most of it in two kernels, one after the other.
This compiles them in parallel processes instead (one per share below, each coding a
small synthetic plane both ways, the same bytes checked), then codes a small image with
each preset in one more process, which loads what the shares compiled and compiles
what is left. ``make install`` runs it, so the first job, and the test suite, start
warm; a worker image (Dataflow, Flink, Spark) can run it once when it is built.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

# Each share compiles kernels the others do not, so that they run in parallel without
# compiling the same kernel twice. Alone, each compiles in about 20-25 s on this project's
# 2-core machines: raster (wavekernel, wp4kernel, the tree path's kernels), wpc (the
# raster-wpc-v3 kernel, once per direction), wavelet (the band kernel, and the
# raster-wpc-v1 kernel its low band takes).
SHARES = {
    "raster": ("raster-wp-v4", "interlaced-tree-v2"),
    "wpc": ("raster-wpc-v3",),
    "wavelet": ("wavelet53-v2",),
}


def _image(rows: int, cols: int, bits: int, seed: int) -> np.ndarray:
    """A smooth ramp with noise: every coder codes it without a special case."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:rows, :cols]
    ramp = (y * 7 + x * 3) % (1 << (bits - 2))
    return np.clip(ramp + rng.integers(0, 1 << (bits - 4), (rows, cols)), 0, (1 << bits) - 1).astype(np.int64)


def _share(name: str) -> None:
    from .coders import coder_for
    from .paths import PlaneInfo

    # 72 x 64: over LS_MIN_PIXELS, so raster-wp-v4 takes its fitted-predictor path too
    rows, cols = 72, 64
    for preset in ("max", "fast"):
        plane = _image(rows, cols, 12, 1)
        prev = _image(rows, cols, 12, 2)
        for model_id in SHARES[name]:
            coder = coder_for(model_id)
            info = PlaneInfo(rows=rows, cols=cols, bits=12, k=0, preset=preset)
            for reference in (None, prev):
                data = coder.encode(plane, info, reference)
                if not np.array_equal(coder.decode(data, info, reference), plane):
                    raise AssertionError(f"{model_id} did not decode its own stream")


def _presets() -> None:
    from . import codec, planes, stego

    rgb = np.stack([_image(40, 36, 8, s) for s in (3, 4, 5)], axis=-1).astype(np.uint8)
    grey = _image(40, 36, 12, 6).astype(np.uint16)
    for preset in ("max", "fast"):
        for array, bits in ((grey, 12), (rgb, 8)):
            blob = codec.compress_pixels(array, bits_stored=bits, signed=False, preset=preset)
            if not np.array_equal(codec.decompress_pixels(blob), array):
                raise AssertionError(f"{preset} did not decode its own record")
    # the transformer's compiled pass and steps (model/intkernel.py), which max's records on
    # these small images need not take
    blob = codec.compress_pixels(grey, bits_stored=12, signed=False, preset="max", local_model="llm-base-v1")
    if not np.array_equal(codec.decompress_pixels(blob), grey):
        raise AssertionError("the transformer path did not decode its own record")
    cover = stego.Cover(grey.astype(np.int64), key=bytes(32), bits_stored=12)
    stego_values, displaced, known = cover.embed_known(b"warm")
    for embedded in (None, known):  # as a reader, and as verification
        restored, _ = stego.recover(stego_values, displaced, key=bytes(32), bits_stored=12, known=embedded)
        if not np.array_equal(restored, grey):
            raise AssertionError("stego did not restore its cover")
    from .stegokernel import equal_outside  # verification's pixel-digest compare, at both word widths

    for dtype in (np.uint8, np.uint16):
        if not equal_outside(np.zeros(2, dtype), np.ones(2, dtype), np.ones(2, bool)):
            raise AssertionError("equal_outside compared a masked value")
        for bits in (8, 12):  # the binding's pixel digest, at both sample widths
            stego.outside_digest(grey.astype(dtype) & 255, np.zeros(grey.shape, bool), bits_stored=bits)
        # sealing's values at the words' width, with which of them occur: the words
        # themselves (unsigned) and values moved from them (signed)
        for signed in (False, True):
            fmt = planes.SampleFormat(bits_allocated=8 * np.dtype(dtype).itemsize, bits_stored=8, high_bit=7,
                                      signed=signed)
            planes.values_and_seen(grey.astype(dtype) & 255, fmt, dtype=fmt.word_dtype)
    # what the presets' images above do not reach: a colour image's first pass
    # (planes.colour_table) and `fast`'s wavelet probe on a crop that is not contiguous
    from .countkernel import colour_slots, zero_laplacian_count

    colour_slots(np.zeros((1, 3, 4, 4), dtype=np.int64), 8, 16)
    zero_laplacian_count(np.ascontiguousarray(grey, dtype=np.int64)[:, 1:])


# One share compiles in under half a minute on 2 cores; a share still running after this
# long is stuck, and install says so rather than wait on it.
SHARE_SECONDS = 600


def _waited(process: subprocess.Popen) -> int:
    try:
        return process.wait(timeout=SHARE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return -1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medcodec.warmup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=(*SHARES, "presets"), help=argparse.SUPPRESS)  # one share, in this process
    args = parser.parse_args(argv)
    from .model.threads import set_threads

    set_threads(1)
    if args.only == "presets":
        _presets()
        return 0
    if args.only:
        _share(args.only)
        return 0
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    shares = [subprocess.Popen([sys.executable, "-m", "medcodec.warmup", "--only", name], env=env) for name in SHARES]
    failed = [name for name, p in zip(SHARES, shares) if _waited(p) != 0]
    if not failed and _waited(subprocess.Popen([sys.executable, "-m", "medcodec.warmup", "--only", "presets"], env=env)):
        failed.append("presets")
    if failed:
        print(f"medcodec.warmup: {', '.join(failed)} failed", file=sys.stderr)
        return 1
    print(f"medcodec.warmup: kernels compiled and cached in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
