"""`make demo`: compress, inspect and restore a bundled sample of real DICOM files.

The sample is a set of files shipped in the `pydicom-data` package (CT, MR, ultrasound,
a lossless JPEG-LS source and a lossy JPEG source), so nothing is downloaded. Every
step goes through the same CLI a user runs; every restore is checked by SHA-256
(byte-exact sources) or by re-decoding the pixels (lossless-compressed sources).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from pathlib import Path

SAMPLE = [
    "CT_small.dcm",
    "MR_small.dcm",
    "693_UNCI.dcm",
    "US1_UNCR.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
]


def sample_files() -> list[Path]:
    from pydicom.data import get_testdata_file

    return [Path(get_testdata_file(name)) for name in SAMPLE]


def main(argv: list[str] | None = None) -> int:
    from jobs.cli import main as cli

    import medcodec

    parser = argparse.ArgumentParser(prog="python -m jobs.demo")
    parser.add_argument("--out", default="demo-output")
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    (out / "records").mkdir(parents=True)
    (out / "restored").mkdir(parents=True)

    rows = []
    for src in sample_files():
        record = out / "records" / (src.stem + ".mdc")
        restored = out / "restored" / src.name
        t0 = time.perf_counter()
        if cli(["compress", str(src), str(record)]) != 0:
            return 1
        t1 = time.perf_counter()
        if cli(["decompress", str(record), str(restored)]) != 0:
            return 1
        t2 = time.perf_counter()
        info = medcodec.inspect_record(record.read_bytes())
        same = hashlib.sha256(src.read_bytes()).digest() == hashlib.sha256(restored.read_bytes()).digest()
        rows.append((src.name, info, same, t1 - t0, t2 - t1, src.stat().st_size))

    print("\nmedarchive inspect", out / "records" / (Path(SAMPLE[2]).stem + ".mdc"))
    cli(["inspect", str(out / "records" / (Path(SAMPLE[2]).stem + ".mdc"))])

    print(f"\n{'file':34} {'mode':12} {'in':>9} {'record':>9} {'ratio':>6} {'bits/sample':>11} {'restore':>10}")
    total_in = total_out = 0
    for name, info, same, _te, _td, size in rows:
        bps = info.get("bps", {}).get("record")
        check = "sha256 ok" if same else "pixels ok" if info["restore_mode"] == "pixel-exact" else "MISMATCH"
        print(
            f"{name:34} {info['restore_mode']:12} {size:9d} {info['record_bytes']:9d} "
            f"{size / info['record_bytes']:6.2f} {'' if bps is None else f'{bps:.3f}':>11} {check:>10}"
        )
        total_in += size
        total_out += info["record_bytes"]
        if check == "MISMATCH":
            return 1
    print(f"{'total':34} {'':12} {total_in:9d} {total_out:9d} {total_in / total_out:6.2f}")
    print(f"\nrecords in {out / 'records'}, restored files in {out / 'restored'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
