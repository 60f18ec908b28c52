"""Bits per sample of our codec with the split plane k forced to each of 0..6, per image.

    python -m benchmarks.split_sweep [FILES, DIRS or 'pydicom'] [--ks 0,1,2,3,4,5,6] [--limit N] [--json OUT.json]

This is the measurement behind ``LOCAL_PLANE_MARGIN`` in medcodec/planes.py. For every
image (first frame, first sample; inputs found as in benchmarks.compare, default
``pydicom``) it prints the noise level ``noise_level`` measures, the k that ``choose_k``
picks, the bits per sample of the global plus local streams for each forced k, the best k,
and how much the chosen k costs over the best one.  Sizes count the two path streams only
(no record header, no palette table), at preset "max".  As in the codec, an image with a
sparse histogram is first packed to palette indices (``value_palette``) and k is chosen
and swept on the packed values; the "coded" column gives the bits actually coded.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.compare import code_version
from medcodec.model.images import InputReport, iter_images

DEFAULT_KS = tuple(range(7))


def coded_bytes(values: np.ndarray, bits: int, k: int, *, preset: str = "max") -> int:
    """Size of the global and local streams of one 2-D plane of ``bits``-bit offset-binary values, split at k."""
    from medcodec.paths import ClassicalLocalPathCoder, GlobalPathCoder, PlaneInfo
    from medcodec.planes import split_planes

    rows, cols = values.shape
    g, loc = split_planes(values, k)
    info = PlaneInfo(rows=rows, cols=cols, bits=bits - k, k=k, preset=preset)
    return len(GlobalPathCoder().encode(g, info)) + len(ClassicalLocalPathCoder().encode(loc, g, info))


@dataclass
class SweepRow:
    """One image: its noise level, the chosen k and the bpp at every forced k."""

    name: str
    modality: str
    rows: int
    cols: int
    bits: int
    coded_bits: int  # bits of the values the paths code (fewer when palette-packed)
    palette: bool
    noise: float
    chosen_k: int
    bpp: dict[int, float] = field(default_factory=dict)  # only the k < bits

    @property
    def best_k(self) -> int:
        return min(self.bpp, key=lambda k: (self.bpp[k], k))

    @property
    def chosen_excess(self) -> float | None:
        """Relative cost of the chosen k over the best k measured (None if k was not swept)."""
        if self.chosen_k not in self.bpp:
            return None
        return self.bpp[self.chosen_k] / self.bpp[self.best_k] - 1.0


def _as_coded(values: np.ndarray, bits: int) -> tuple[np.ndarray, int, bool]:
    """The values the path coders see: palette indices when the codec would pack them."""
    try:
        from medcodec.planes import pack_values, palette_bits, value_palette
    except ImportError:  # a codec without palette packing
        return values, bits, False
    palette = value_palette(values, bits)
    if palette is None:
        return values, bits, False
    return pack_values(values, palette).astype(np.int64), palette_bits(palette), True


def sweep(
    sources: Sequence[str], *, ks: Sequence[int] = DEFAULT_KS, limit: int | None = None, progress=None
) -> tuple[list[SweepRow], InputReport]:
    """Measure every image under ``sources`` at every k in ``ks``."""
    from medcodec.planes import choose_k, noise_level

    report = InputReport()
    rows: list[SweepRow] = []
    for image in iter_images(sources, frame_cap=1, limit=limit, report=report):
        v = image.values[0, 0].astype(np.int64)
        t0 = time.perf_counter()
        v, bits, palette = _as_coded(v, image.bits)
        row = SweepRow(
            name=image.name, modality=image.modality, rows=image.rows, cols=image.cols, bits=image.bits,
            coded_bits=bits, palette=palette, noise=noise_level(v), chosen_k=choose_k(v, bits)[0],
        )
        for k in ks:
            if k < bits:  # the global path keeps at least one plane
                row.bpp[k] = 8.0 * coded_bytes(v, bits, k) / v.size
        rows.append(row)
        if progress:
            progress(f"[{len(rows)}] {image.name} {image.rows}x{image.cols}: {time.perf_counter() - t0:.1f}s")
    return rows, report


def format_sweep(rows: Sequence[SweepRow], ks: Sequence[int], report: InputReport, command: str) -> str:
    """Plain-text table: one row per image, then sample-weighted totals."""
    header = ["image", "mod", "rows x cols", "bits", "coded", "noise", "chosen", "best", *(f"k={k}" for k in ks), "chosen/best"]
    table = [header]
    for r in rows:
        excess = r.chosen_excess
        table.append([
            r.name, r.modality, f"{r.rows}x{r.cols}", str(r.bits), f"{r.coded_bits}p" if r.palette else str(r.coded_bits),
            f"{r.noise:.2f}", str(r.chosen_k), str(r.best_k),
            *(f"{r.bpp[k]:.3f}" if k in r.bpp else "-" for k in ks),
            "-" if excess is None else f"{100 * excess:+.1f}%",
        ])
    # Sample-weighted totals over the images where every k was measurable.
    full = [r for r in rows if all(k in r.bpp for k in ks) and r.chosen_k in r.bpp]
    total = sum(r.rows * r.cols for r in full)
    summary = []
    if full:
        def weighted(bpp_of) -> float:
            return sum(bpp_of(r) * r.rows * r.cols for r in full) / total

        summary.append([
            f"weighted bpp ({len(full)} images)", "", "", "", "", "", f"{weighted(lambda r: r.bpp[r.chosen_k]):.3f}",
            f"{weighted(lambda r: r.bpp[r.best_k]):.3f}", *(f"{weighted(lambda r, k=k: r.bpp[k]):.3f}" for k in ks), "",
        ])
    widths = [max(len(row[i]) for row in table + summary) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    out = [
        "Split-plane sweep: bits per sample of the global + local streams (preset max), first frame, first sample",
        f"command: {command}",
        f"code: {code_version()}",
        "coded = bits the paths code (p: palette-packed); noise = medcodec.planes.noise_level (of the coded values);",
        "chosen = choose_k's k; best = smallest bpp measured; weighted row: bpp at the chosen / best / each k",
        "",
        *(line(r) for r in table),
    ]
    if summary:
        out.append("-" * max(len(line(r)) for r in table))
        out += [line(r) for r in summary]
    if report.skipped:
        out.append(f"skipped ({len(report.skipped)}):")
        out += [f"  {s.name}: {s.reason}" for s in report.skipped]
    return "\n".join(out)


def _parse_ks(text: str) -> tuple[int, ...]:
    ks = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        ks += range(int(lo), int(hi or lo) + 1)
    if not ks or min(ks) < 0:
        raise argparse.ArgumentTypeError(f"--ks needs k >= 0, like 0-6 or 0,2,4; got {text!r}")
    return tuple(sorted(set(ks)))


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and print the table; 2 for bad arguments or no image found."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.split_sweep", description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", default=["pydicom"], metavar="PATH",
                        help="files, folders, or 'pydicom' (default)")
    parser.add_argument("--ks", type=_parse_ks, default=DEFAULT_KS, help="split planes to try (default 0-6)")
    parser.add_argument("--limit", type=int, help="at most N images")
    parser.add_argument("--json", metavar="OUT.json", help="also write the measurements as JSON")
    parser.add_argument("--quiet", action="store_true", help="no per-image progress on stderr")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    rows, report = sweep(args.sources, ks=args.ks, limit=args.limit, progress=progress)
    command = shlex.join(["python", "-m", "benchmarks.split_sweep", *argv])
    print(format_sweep(rows, args.ks, report, command))
    if args.json:
        payload: dict[str, Any] = {
            "command": command,
            "ks": list(args.ks),
            "images": [{**vars(r), "best_k": r.best_k, "chosen_excess": r.chosen_excess} for r in rows],
            "skipped": [vars(s) for s in report.skipped],
        }
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
    if not rows:
        print("error: no image found", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
