"""`make demo`: the main job on a bundled sample, end to end.

1. Builds a sample PACS export under demo-output/source from real DICOM files shipped
   in the `pydicom-data` package (CT, MR, CR, ultrasound, NM; plain files in nested
   folders, one study zipped, lossless-compressed and lossy sources, and one file
   that is not DICOM at all), so nothing is downloaded.
2. `medarchive migrate` -> ./demo-archive (shards, Parquet indexes, dead letters, run summary)
   with a new keyring: records hold de-identified files, originals sealed
3. `medarchive audit --deep`  (decodes every record, compares digests, opens the seals)
4. `medarchive restore --study UID` for one study, checked byte for byte against the source
5. `medarchive inspect` of the archive and of one record; that record decompressed
   without the key (the de-identified file) and its embedded PHI revealed with the key.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import zipfile
from pathlib import Path

PLAIN = {
    "ct/chest/CT_small.dcm": "CT_small.dcm",
    "ct/abdomen/IM0001": "693_UNCI.dcm",
    "mr/brain/MR_small.dcm": "MR_small.dcm",
    "mr/knee/MR2_UNCI": "MR2_UNCI.dcm",
    "cr/RG3_UNCR.dcm": "RG3_UNCR.dcm",
    "us/US1_UNCR.dcm": "US1_UNCR.dcm",
    "nm/JPEG2000_UNC.dcm": "JPEG2000_UNC.dcm",
    "mr/jpegls/MR_small_jpeg_ls_lossless.dcm": "MR_small_jpeg_ls_lossless.dcm",
    "ot/SC_rgb_jpeg_dcmtk.dcm": "SC_rgb_jpeg_dcmtk.dcm",
}
ZIPPED = {"emri/emri_small.dcm": "emri_small.dcm", "emri/emri_small_RLE.dcm": "emri_small_RLE.dcm"}


def build_source(root: Path) -> Path:
    from pydicom.data import get_testdata_file

    src = root / "source"
    shutil.rmtree(src, ignore_errors=True)
    for rel, name in PLAIN.items():
        target = src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(get_testdata_file(name), target)
    with zipfile.ZipFile(src / "emri_study.zip", "w") as zf:
        for rel, name in ZIPPED.items():
            zf.write(get_testdata_file(name), rel)
    (src / "notes").mkdir(exist_ok=True)
    (src / "notes" / "README.txt").write_text("not an image: this input ends as a dead-letter row\n")
    return src


def main(argv: list[str] | None = None) -> int:
    import pydicom

    from jobs.cli import main as cli

    parser = argparse.ArgumentParser(prog="python -m jobs.demo")
    parser.add_argument("--out", default="demo-output", help="scratch folder for the sample source and restores")
    parser.add_argument("--archive", default="demo-archive")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    out, archive = Path(args.out), args.archive
    shutil.rmtree(archive, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    src = build_source(out)

    def step(title: str, *cmd: str, ok=(0,)) -> None:
        print(f"\n$ medarchive {' '.join(cmd)}    # {title}", flush=True)
        rc = cli(list(cmd))
        if rc not in ok:
            raise SystemExit(f"demo step failed ({title}): exit {rc}")

    keyring = out / "keyring.json"
    step("create the archive's keyring", "keys", "new", str(keyring))
    step("archive the sample export", "migrate", str(src), archive, "--workers", str(args.workers),
         "--key-file", str(keyring))
    step("verify every record by decoding it", "audit", archive, "--deep", "--key-file", str(keyring))
    study = str(pydicom.dcmread(src / "ct/abdomen/IM0001", stop_before_pixels=True).StudyInstanceUID)
    restored = out / "restored"
    step("restore one study", "restore", archive, str(restored), "--study", study, "--key-file", str(keyring))
    original = hashlib.sha256((src / "ct/abdomen/IM0001").read_bytes()).hexdigest()
    files = list(restored.rglob("*.dcm"))
    same = [f for f in files if hashlib.sha256(f.read_bytes()).hexdigest() == original]
    print(f"restored {len(files)} file(s); byte-identical to the source: {'yes' if same else 'NO'}")
    if not same:
        return 1
    step("archive statistics", "inspect", archive, "--html", str(out / "report.html"))
    # One record out of its shard (plain tar): without the key it gives the de-identified
    # file, whose pixels carry the sealed PHI; `reveal` reads it back with the key.
    record = _largest_record(Path(archive), out / "one-record.mdc")
    step("inspect one record", "inspect", str(record))
    step("decompress without the key: de-identified file", "decompress", str(record), str(out / "deidentified.dcm"))
    step("read the embedded, sealed PHI back", "reveal", "--key-file", str(keyring), str(out / "deidentified.dcm"))
    return 0


def _largest_record(archive: Path, target: Path) -> Path:
    import tarfile

    best = None
    for shard in sorted((archive / "shards").glob("*.tar")):
        with tarfile.open(shard) as tf:
            for member in tf.getmembers():
                if best is None or member.size > best[1].size:
                    best = (shard, member)
    with tarfile.open(best[0]) as tf:
        target.write_bytes(tf.extractfile(best[1]).read())
    return target


if __name__ == "__main__":
    import os

    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # see jobs.cli.entry: avoid Beam's gRPC threads aborting interpreter teardown
