"""What keying costs and changes, per real image: `python -m benchmarks.keyed_records`.

For every native (byte-exact) CT / MR / CR / US / NM file in pydicom-data: the sealed
PHI message size, the embedding capacity, whether it was embedded, PSNR and max error of
the de-identified (stego) pixels against the original, and the record size with and
without a key (sealed sections and stego noise included), plus encode / decode times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODALITIES = {"CT", "MR", "CR", "DX", "US", "NM", "MG", "XA", "RF"}


def real_images(limit: int | None = None) -> list[Path]:
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
        if parsed.restore_mode != "byte-exact" or str(ds.get("Modality", "")) not in MODALITIES:
            continue
        digest = hash(parsed.frames.tobytes())
        if digest in seen:  # the same image in another syntax
            continue
        seen.add(digest)
        out.append(p)
    return out[:limit] if limit else out


def main(argv: list[str] | None = None) -> int:
    import medcodec
    from medcodec import container
    from medcodec.crypto import Keyring

    parser = argparse.ArgumentParser(prog="python -m benchmarks.keyed_records")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args(argv)
    ring = Keyring.create(Path(tempfile.mkdtemp()) / "ring.json")
    rows = []
    for path in real_images(args.limit):
        data = path.read_bytes()
        plain = medcodec.compress_dicom(data, verify=False)
        t0 = time.perf_counter()
        keyed = medcodec.compress_dicom(data, keyring=ring, verify=False)
        t1 = time.perf_counter()
        assert medcodec.decompress_dicom(keyed, keyring=ring) == data
        t2 = time.perf_counter()
        report = container.read_record(keyed).config["sealed"]["stego"]
        rows.append((path.name, report, len(plain), len(keyed), t1 - t0, t2 - t1))
    print(f"{'image':34} {'msg B':>6} {'cap bits':>9} {'embedded':>8} {'PSNR dB':>8} {'maxerr':>6} "
          f"{'plain B':>9} {'keyed B':>9} {'+%':>6} {'enc s':>6} {'dec s':>6}")
    for name, r, plain, keyed, te, td in rows:
        psnr = f"{r['psnr']:.1f}" if r.get("psnr") is not None else "-"
        print(f"{name:34} {r['message_bytes']:6d} {r.get('capacity_bits', 0):9d} {str(r['embedded']):>8} {psnr:>8} "
              f"{r.get('max_error', 0):6d} {plain:9d} {keyed:9d} {100 * (keyed - plain) / plain:6.1f} {te:6.2f} {td:6.2f}")
    embedded = [r for _, r, *_ in rows if r["embedded"]]
    total_plain = sum(x[2] for x in rows)
    total_keyed = sum(x[3] for x in rows)
    print(f"\n{len(rows)} images, {len(embedded)} with the message embedded; median PSNR "
          f"{statistics.median(r['psnr'] for r in embedded):.1f} dB, min {min(r['psnr'] for r in embedded):.1f} dB; "
          f"max error {max(r['max_error'] for r in embedded)}; keyed records {100 * (total_keyed - total_plain) / total_plain:+.1f}% "
          f"bytes vs plain in total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
