"""The `medarchive` command line.

User errors (bad input, corrupt record, unsupported data) print one line on stderr
and exit with status 2; they never print a traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

EXIT_USER_ERROR = 2
_NPY_MAGIC = b"\x93NUMPY"


def _write_atomic(path: str, data: bytes) -> None:
    """Write to a temporary file next to ``path``, then rename: no half-written outputs."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def _limits(args: argparse.Namespace):
    from medcodec import DicomLimits

    return DicomLimits(max_samples=args.max_samples)


def cmd_compress(args: argparse.Namespace) -> int:
    import numpy as np

    import medcodec

    data = _read(args.input)
    if data.startswith(_NPY_MAGIC):
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise medcodec.UnsupportedError(f"{args.input}: not a readable .npy array ({exc})") from None
        if array.size > args.max_samples:
            raise medcodec.LimitExceededError(
                f"{args.input}: {array.size} samples exceed --max-samples {args.max_samples}"
            )
        bits = args.bits_stored or array.dtype.itemsize * 8
        blob = medcodec.compress_pixels(array, bits_stored=bits, signed=array.dtype.kind == "i", preset=args.preset)
    else:
        blob = medcodec.compress_dicom(
            data, preset=args.preset, keep_codestream=args.keep_codestream, limits=_limits(args)
        )
    _write_atomic(args.output, blob)
    info = medcodec.inspect_record(blob)
    bps = info.get("bps", {}).get("record")
    detail = f", {bps:.3f} bits/sample" if bps is not None else ""
    mode = info.get("restore_mode", "pixels")
    print(f"{args.input} -> {args.output}: {len(data)} -> {len(blob)} bytes ({len(data) / len(blob):.2f}x, {mode}{detail})")
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    import numpy as np

    import medcodec
    from medcodec import container

    blob = _read(args.input)
    kind = container.read_record(blob).config.get("kind")
    if kind == "pixels":
        buf = io.BytesIO()
        np.save(buf, medcodec.decompress_pixels(blob), allow_pickle=False)
        out = buf.getvalue()
    else:
        out = medcodec.decompress_dicom(blob)
    _write_atomic(args.output, out)
    print(f"{args.input} -> {args.output}: {len(out)} bytes restored and verified")
    return 0


def _format_inspect(info: dict) -> str:
    lines = [
        f"format version   {info['format_version']}",
        f"kind             {info['kind']}",
        f"record bytes     {info['record_bytes']}",
    ]
    if "restore_mode" in info:
        lines.append(f"restore mode     {info['restore_mode']}" + (f" ({info['note']})" if info.get("note") else ""))
    if "source" in info:
        lines.append(f"source           {info['source']['size']} bytes, sha256 {info['source']['sha256']}")
    if "shape" in info:
        f, s, r, c = info["shape"]
        lines.append(f"geometry         {f} frame(s) x {s} sample(s) x {r} x {c}, {info['bits_stored']} bits stored")
        lines.append(f"codec            {info['codec_id']}, preset {info['preset']}")
        lines.append(f"models           global {info['models']['global']}, local {info['models']['local']}")
        lines.append(f"split plane k    {info['k']} (noise floor {info['plane_stats'].get('noise')})")
        bps = info["bps"]
        lines.append(
            f"bits/sample      global {bps['global']:.3f}  local {bps['local']:.3f}  whole record {bps['record']:.3f}"
        )
    lines.append("sections         " + ", ".join(f"{k} {v} B" for k, v in info["sections"].items()))
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    import medcodec

    info = medcodec.inspect_record(_read(args.input))
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else _format_inspect(info))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks import compare

    return compare.main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medarchive", description="Lossless archiver for medical imaging.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compress", help="compress a DICOM file (or a .npy array) into a record")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--preset", choices=("max", "fast"), default="max")
    p.add_argument("--keep-codestream", action="store_true", help="keep compressed sources verbatim (byte-exact)")
    p.add_argument("--max-samples", type=int, default=1 << 31, help="refuse images with more samples than this")
    p.add_argument("--bits-stored", type=int, default=None, help=".npy input only: stored bits (default: dtype width)")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="restore the original file from a record (verified)")
    p.add_argument("input")
    p.add_argument("output")
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("inspect", help="describe a record: sizes, bits per sample per path, k, models, versions")
    p.add_argument("input")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("bench", help="compare against JPEG-LS, JPEG 2000, HTJ2K, JPEG-XL (see benchmarks/compare.py)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="DIR (or 'pydicom') and benchmark options")
    p.set_defaults(func=cmd_bench)
    return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
    from medcodec import MedcodecError

    return (MedcodecError,)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except _user_error_types() as exc:
        print(f"medarchive {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except FileNotFoundError as exc:
        print(f"medarchive {args.command}: error: no such file: {exc.filename}", file=sys.stderr)
        return EXIT_USER_ERROR
    except IsADirectoryError as exc:
        print(f"medarchive {args.command}: error: is a directory: {exc.filename}", file=sys.stderr)
        return EXIT_USER_ERROR
    except PermissionError as exc:
        print(f"medarchive {args.command}: error: permission denied: {exc.filename}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
