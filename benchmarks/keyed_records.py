"""What keying costs and changes, per real image: `python -m benchmarks.keyed_records`.

For every native (byte-exact) CT / MR / CR / US / NM file in pydicom-data: the sealed
size of the full and of the essential PHI message, the embedding capacity, which tier
the pixels carry (full / essential / none, with the reason for anything less than full),
PSNR and max error of the de-identified (stego) pixels against the original, for colour
images the grey-pixel (R = G = B) count before and after with whether their positions are
unchanged, and the record size with and without a key (sealed sections and stego noise
included), plus encode / decode times. Every keyed record is decoded with the key and
compared with the original file, and `reveal` must find the tier the record reports.
A last table gives the same record sizes for the lossy files of those modalities, which
are kept verbatim, with the size of their sealed original.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODALITIES = {"CT", "MR", "CR", "DX", "US", "NM", "MG", "XA", "RF"}


def real_images(limit: int | None = None, mode: str = "byte-exact") -> list[Path]:
    """The distinct images of ``MODALITIES`` among pydicom's test files that medcodec
    restores in ``mode``: "byte-exact" (native pixels, coded) or "verbatim" (lossy
    sources, kept as they are; files without pixel data are left out)."""
    import pydicom
    from pydicom.data import get_testdata_files

    from medcodec.dicom import parse_dicom

    out, seen = [], set()
    for f in sorted(get_testdata_files()):
        p = Path(f)
        if not p.is_file():
            continue
        try:
            data = p.read_bytes()
            parsed = parse_dicom(data)
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:
            continue
        if (parsed.restore_mode != mode or str(ds.get("Modality", "")) not in MODALITIES
                or parsed.spec is None):  # no pixel data
            continue
        digest = hash(data if parsed.frames is None else parsed.frames.tobytes())
        if digest in seen:  # the same image in another syntax
            continue
        seen.add(digest)
        out.append(p)
    return out[:limit] if limit else out


def _grey_pixels(dicom: bytes):
    """(count, mask) of grey pixels (all samples equal) of a colour image, else None."""
    from medcodec.dicom import parse_dicom
    from medcodec.planes import SampleFormat, words_to_values

    parsed = parse_dicom(dicom)
    if parsed.frames is None or parsed.spec.samples < 2:
        return None
    values, _ = words_to_values(parsed.frames, SampleFormat.of(parsed.spec))
    mask = (values == values[:, :1]).all(axis=1)
    return int(mask.sum()), mask


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    import medcodec
    from medcodec import container, sealing
    from medcodec.crypto import Keyring

    parser = argparse.ArgumentParser(prog="python -m benchmarks.keyed_records")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--preset", choices=("max", "fast"), default="max", help="pixel codec preset (default max)")
    args = parser.parse_args(argv)
    ring = Keyring.create(Path(tempfile.mkdtemp()) / "ring.json")
    rows, greys = [], []
    for path in real_images(args.limit):
        data = path.read_bytes()
        plain = medcodec.compress_dicom(data, verify=False, preset=args.preset)
        t0 = time.perf_counter()
        keyed = medcodec.compress_dicom(data, keyring=ring, verify=False, preset=args.preset)
        t1 = time.perf_counter()
        assert medcodec.decompress_dicom(keyed, keyring=ring) == data
        t2 = time.perf_counter()
        report = container.read_record(keyed).config["sealed"]["stego"]
        public = medcodec.decompress_dicom(keyed)
        if report["tier"] != "none":
            assert sealing.reveal(public, ring)["tier"] == report["tier"]
        before, after = _grey_pixels(data), _grey_pixels(public)
        if before is not None:
            greys.append((path.name, before[0], after[0], bool(np.array_equal(before[1], after[1]))))
        rows.append((path.name, report, len(plain), len(keyed), t1 - t0, t2 - t1))
    print(f"{'image':30} {'full B':>6} {'ess B':>5} {'cap B':>6} {'tier':>9} {'PSNR dB':>7} {'maxerr':>6} "
          f"{'plain B':>9} {'keyed B':>9} {'+%':>6} {'enc s':>6} {'dec s':>6}")
    for name, r, plain, keyed, te, td in rows:
        psnr = f"{r['psnr']:.1f}" if r.get("psnr") is not None else "-"
        sizes = r.get("tier_bytes", {})
        print(f"{name:30} {sizes.get('full', 0):6d} {sizes.get('essential', 0):5d} {r.get('capacity_bits', 0) // 8:6d} "
              f"{r['tier']:>9} {psnr:>7} {r.get('max_error', 0):6d} {plain:9d} {keyed:9d} "
              f"{100 * (keyed - plain) / plain:6.1f} {te:6.2f} {td:6.2f}")
    print("\nwhy not the full message:")
    for name, r, *_ in rows:
        if r["tier"] != "full":
            print(f"  {name}: {r['tier']}: {r.get('reason', '')}")
    if greys:
        print("\ncolour images, grey pixels (all samples equal) in the original -> the de-identified copy:")
        for name, before, after, same in greys:
            print(f"  {name}: {before} -> {after}, positions {'unchanged' if same else 'CHANGED'}")
    embedded = [r for _, r, *_ in rows if r["embedded"]]
    tiers = {t: sum(r["tier"] == t for _, r, *_ in rows) for t in ("full", "essential", "none")}
    total_plain = sum(x[2] for x in rows)
    total_keyed = sum(x[3] for x in rows)
    print(f"\n{len(rows)} images: {tiers['full']} full, {tiers['essential']} essential, {tiers['none']} none;"
          f" median PSNR {statistics.median(r['psnr'] for r in embedded):.1f} dB,"
          f" min {min(r['psnr'] for r in embedded):.1f} dB; max error {max(r['max_error'] for r in embedded)};"
          f" keyed records {100 * (total_keyed - total_plain) / total_plain:+.1f}% bytes vs plain in total")
    _verbatim_sources(ring, args.limit)
    return 0


def _verbatim_sources(ring, limit: int | None) -> None:
    """Lossy sources are kept verbatim: with a key the record holds the de-identified file
    and the sealed original, packed against it (format 1.2, section 35)."""
    import medcodec
    from medcodec import container

    print(f"\nsources kept verbatim (lossy):\n{'image':30} {'file B':>9} {'plain B':>9} {'keyed B':>9} {'+%':>6} "
          f"{'sealed original B':>17}")
    for path in real_images(limit, mode="verbatim"):
        data = path.read_bytes()
        plain = medcodec.compress_dicom(data, verify=False)
        keyed = medcodec.compress_dicom(data, keyring=ring)
        assert medcodec.decompress_dicom(keyed, keyring=ring) == data
        sealed = sum(len(s.payload) for s in container.read_record(keyed).sections
                     if s.type in (container.SECTION_SEALED_ORIGINAL, container.SECTION_SEALED_ORIGINAL_DELTA))
        print(f"{path.name:30} {len(data):9d} {len(plain):9d} {len(keyed):9d} "
              f"{100 * (len(keyed) - len(plain)) / len(plain):6.1f} {sealed:17d}")


if __name__ == "__main__":
    sys.exit(main())
