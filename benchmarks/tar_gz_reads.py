"""Reading the members of a tar.gz one at a time, as migrate's workers do.

    python -m benchmarks.tar_gz_reads [--copies 4] [--sample 16] [--order size|listing|random]
                                      [--files N] [--json OUT.json]

Builds a tar.gz of the pipeline benchmark's files (``pipeline_throughput``: pydicom-data's
native CT / MR / CR / US / NM files), ``--copies`` times over under different folders (a
PACS export of several studies), in a temporary folder. Then, in this process:

* listing: ``sources.expand_file`` (one inflation of the archive, every header read);
* reading every member with ``sources.read_source``, in ``--order``: ``size`` deals them
  as a local migrate run does (``migrate.balanced_order``, largest first), ``listing``
  as listed, ``random`` shuffled (seed 0). Each member is checked against the file it
  was made from. Reported: seconds, ms a member, MB/s of members read, the bytes zlib
  inflated (re-inflation included) and the inflater states kept;
* the member read as it was before the inflater kept states (f624479): ``tarfile`` over
  the gzip stream, the member found by name (``getmember``: every header of the
  archive read, so the whole archive inflated), on ``--sample`` members spread over the
  archive, and that per-member time times the number of members.

One thread; the machine's speed wanders by 20% and more, so compare the two reads of
one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path


def build(files: list[tuple[Path, Path]], copies: int, path: Path) -> dict[str, bytes]:
    """Writes the tar.gz of ``files`` (``copies`` times) at ``path``; member name -> bytes."""
    members: dict[str, bytes] = {}
    with tarfile.open(path, "w:gz") as tf:
        for copy in range(copies):
            for i, (root, file) in enumerate(files):
                name = f"export/study-{copy:03d}/{i:02d}-{root.name}/{file.relative_to(root)}"
                members[name] = file.read_bytes()
                tf.add(str(file), arcname=name)
    return members


def read_all(refs: list, members: dict[str, bytes]) -> float:
    """Seconds to read every ref with ``read_source`` (each checked)."""
    from pipelines.sources import read_source

    t0 = time.perf_counter()
    for ref in refs:
        if read_source(ref) != members[ref.member]:
            raise RuntimeError(f"member {ref.member} read wrong")
    return time.perf_counter() - t0


def by_name_seconds(path: Path, names: list[str], members: dict[str, bytes]) -> list[float]:
    """Seconds of each member read by name through tarfile's gzip reader (each checked)."""
    out = []
    for name in names:
        t0 = time.perf_counter()
        with tarfile.open(path, "r:gz") as tf:
            data = tf.extractfile(tf.getmember(name)).read()
        out.append(time.perf_counter() - t0)
        if data != members[name]:
            raise RuntimeError(f"member {name} read wrong by name")
    return out


def measure(files: list[tuple[Path, Path]], work: Path, *, copies: int, sample: int, order: str) -> dict:
    from pipelines import sources
    from pipelines.migrate import balanced_order

    path = work / "export.tar.gz"
    members = build(files, copies, path)
    url = f"file://{path}"
    t0 = time.perf_counter()
    refs = list(sources.expand_file(url))
    list_s = time.perf_counter() - t0
    if [r.member for r in refs] != list(members):
        raise RuntimeError("listing found other members than were written")
    if order == "size":
        refs = balanced_order(refs, [r.size or 0 for r in refs], 1)
    elif order == "random":
        random.Random(0).shuffle(refs)
    read_s = read_all(refs, members)
    fs, fs_path = sources.open_fs(url)
    inflater = sources._inflated(fs, fs_path, fs.info(fs_path))
    names = list(members)
    picked = [names[i * len(names) // sample] for i in range(sample)] if sample else []
    by_name = by_name_seconds(path, picked, members)
    raw = sum(map(len, members.values()))
    return {
        "members": len(members), "copies": copies, "files": len(files), "order": order,
        "raw_bytes": raw, "tar_gz_bytes": path.stat().st_size, "list_s": list_s, "read_s": read_s,
        "inflated_bytes": inflater.inflated, "states": len(inflater.states), "state_spacing": inflater.spacing,
        "by_name_sampled": len(by_name), "by_name_median_s": statistics.median(by_name) if by_name else None,
    }


def format_report(r: dict) -> str:
    mb = r["raw_bytes"] / 1e6
    lines = [
        f"tar.gz reads: {r['members']} members ({r['copies']} copies of {r['files']} pydicom-data files), "
        f"{mb:.1f} MB in a {r['tar_gz_bytes'] / 1e6:.1f} MB tar.gz",
        f"listing (expand_file): {r['list_s']:.2f} s",
        f"read_source, every member in {r['order']} order: {r['read_s']:.2f} s, "
        f"{r['read_s'] / r['members'] * 1000:.1f} ms a member, {mb / r['read_s']:.1f} MB/s; inflated "
        f"{r['inflated_bytes'] / 1e6:.1f} MB ({r['inflated_bytes'] / r['raw_bytes']:.2f}x the members), "
        f"{r['states']} inflater states kept, one each {r['state_spacing'] / 2**20:.0f} MiB",
    ]
    if r["by_name_median_s"] is not None:
        per = r["by_name_median_s"]
        lines.append(f"by name through tarfile's gzip reader (before f624479), {r['by_name_sampled']} members "
                     f"sampled: {per * 1000:.0f} ms a member (median), ~{per * r['members']:.0f} s for all "
                     f"({per * r['members'] / r['read_s']:.0f}x)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.pipeline_throughput import native_imaging_files, pydicom_data_dirs

    parser = argparse.ArgumentParser(prog="python -m benchmarks.tar_gz_reads", description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=4, help="copies of the file set in the archive (default 4)")
    parser.add_argument("--sample", type=int, default=16,
                        help="members read by name through tarfile, for the before figure (default 16; 0: none)")
    parser.add_argument("--order", choices=("size", "listing", "random"), default="size")
    parser.add_argument("--files", type=int, default=None, help="use only the first N files")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.copies < 1 or args.sample < 0 or (args.files is not None and args.files < 1):
        parser.error("--copies and --files must be 1 or more, --sample 0 or more")
    files = native_imaging_files(pydicom_data_dirs())[: args.files]
    if not files:
        print("no pydicom-data files found (pip install pydicom-data)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="tar-gz-reads-") as work:
        result = measure(files, Path(work), copies=args.copies, sample=min(args.sample, len(files) * args.copies),
                         order=args.order)
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
