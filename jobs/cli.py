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

# Exit statuses (README, "Exit statuses"): 0 done; 1 the run failed (storage became
# unavailable) or found failures (audit, restore); 2 usage or input error, nothing done;
# 3 `migrate --strict` completed but dead-lettered inputs; 128 + the signal's number for a
# local job stopped by SIGTERM (143) or Ctrl-C (130) (``pipelines.stopping``).
EXIT_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_DEADLETTERS = 3
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

    return DicomLimits(max_samples=getattr(args, "max_samples", 1 << 31), memory_bytes=_budget(args),
                       max_pixel_ratio=getattr(args, "max_pixel_ratio", 10_000) or None,
                       seconds=getattr(args, "max_seconds", None) or None)


def _budget(args: argparse.Namespace) -> int | None:
    gib = getattr(args, "memory_budget", None)
    return None if gib is None else int(gib * 2**30)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number, got {text!r}")
    return value


def _add_limit_arguments(p: argparse.ArgumentParser, *, encode: bool = True) -> None:
    p.add_argument("--memory-budget", type=_positive, metavar="GIB", default=None,
                   help="memory one input may use, in GiB (default: 60%% of physical memory); larger images are"
                        " refused before they are decoded")
    if encode:
        p.add_argument("--max-pixel-ratio", type=int, default=10_000, metavar="N",
                       help="refuse compressed pixel data that claims more than N bytes of pixels per byte"
                            " (default 10000; 0: no limit)")
        p.add_argument("--max-seconds", type=_non_negative, default=600.0, metavar="S",
                       help="stop coding an input that takes longer than S seconds (checked between planes;"
                            " default 600; 0: no limit)")


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
            data,
            preset=args.preset,
            keep_codestream=args.keep_codestream,
            limits=_limits(args),
            keyring=_keyring(args.key_file),
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
        np.save(buf, medcodec.decompress_pixels(blob, limits=_limits(args)), allow_pickle=False)
        out = buf.getvalue()
    else:
        out = medcodec.decompress_dicom(blob, keyring=_keyring(args.key_file), limits=_limits(args))
    _write_atomic(args.output, out)
    sealed = container.read_record(blob).config.get("sealed")
    what = "original restored and verified" if (args.key_file or not sealed) else "de-identified file (no key)"
    print(f"{args.input} -> {args.output}: {len(out)} bytes, {what}")
    return 0


def _keyring(path: str | None):
    from pipelines.keys import load_keyring

    return load_keyring(path)


def cmd_reveal(args: argparse.Namespace) -> int:
    from medcodec import sealing

    keyring = _keyring(args.key_file)
    phi = sealing.reveal(_read(args.input), keyring)
    carried = phi["tier"]
    if args.record and carried == sealing.TIER_ESSENTIAL:
        phi = {**sealing.follow_link(phi, _read(args.record), keyring), "stego_version": phi["stego_version"]}
    if args.json:
        print(json.dumps({**phi, "carried_tier": carried}, indent=2, sort_keys=True))
        return 0
    if phi.get("stego_version", 1) >= 2:
        print("authenticated: the message belongs to this image and every pixel value is unaltered")
    else:
        print("authenticated: the message belongs to this image and its pixels outside the message are unaltered"
              " (an image embedded before stego version 2: the carrying pixels' upper bits are not covered)")
    if carried == sealing.TIER_FULL:
        print("message tier: full (every removed attribute)")
    elif phi["tier"] == sealing.TIER_FULL:
        print(f"message tier: essential; its link to {args.record} verified: the full attributes sealed there")
    else:
        print("message tier: essential (identity fields only; `--record` with the archive's record of this"
              " image gives every removed attribute)")
    for line in _phi_lines(phi.get("elements", {})):
        print(line)
    return 0


def _phi_lines(elements: dict, indent: str = "  ") -> list[str]:
    """Removed attributes as `(gggg,eeee) Keyword: value` lines (binary values by size only)."""
    from pydicom.datadict import keyword_for_tag

    lines = []
    for path, entry in sorted(elements.items()):
        tag_text = path.rsplit("/", 1)[-1].split("[")[0]
        try:
            tag = int(tag_text, 16)
            name = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword_for_tag(tag) or 'private'}"
        except ValueError:
            name = path
        if path.startswith("meta/"):
            name = "file meta " + name
        if entry.get("absent"):
            value = "(absent; added by de-identification)"
        else:
            value = entry.get("value")
            if isinstance(value, dict) and "b64" in value:
                value = f"<{len(value['b64']) * 3 // 4} bytes>"
            elif isinstance(value, (dict, list)):
                value = json.dumps(value)[:200]
        lines.append(f"{indent}{name}: {value}")
    return lines


def cmd_keys(args: argparse.Namespace) -> int:
    from medcodec.crypto import Keyring

    if args.action == "new":
        ring = Keyring.create(args.path)
        print(f"new keyring {args.path} (owner-only permissions), primary key {ring.primary_key_id}")
        print("keep it safe: without it, sealed originals cannot be restored", file=sys.stderr)
        return 0
    ring = Keyring.load(args.path)
    if args.action == "rotate":
        new = ring.rotate()
        print(f"new primary key {new}; older keys still decrypt until retired. Re-wrap archives with "
              f"`medarchive rewrap ARCHIVE --key-file {args.path}`")
    elif args.action == "retire":
        if not args.key_id:
            raise ValueError("keys retire needs KEY_ID")
        ring.retire(args.key_id)
        print(f"retired {args.key_id}")
    for info in ring.list():
        mark = "*" if info.key_id == ring.primary_key_id else " "
        print(f"{mark} {info.key_id}  {info.status:8}  created {info.created}")
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
        models = info["models"]
        lines.append(
            f"models           global {models['global']}"
            + (" (" + ", ".join(f"{m} x{n}" for m, n in info["global_planes"].items()) + ")"
               if info.get("global_planes") else "")
            + f", local {models['local']}"
            + (f" sha256 {models['local_sha256'][:16]}..." if models.get("local_sha256") else "")
            + (f" + A-LoRA adapter {models['adapter_sha256'][:16]}..." if models.get("adapter_sha256") else "")
        )
        lines.append(f"split plane k    {info['k']} (noise floor {info['plane_stats'].get('noise')})")
        from pipelines.report import PIXEL_SECTIONS

        bps = info["bps"]
        pixel_bits = 8 * sum(info["sections"].get(name, 0) for name in PIXEL_SECTIONS)
        lines.append(
            f"bits/sample      pixel streams {pixel_bits / (f * s * r * c):.3f}"
            f" (global {bps['global']:.3f}, local {bps['local']:.3f}, tables)  whole record {bps['record']:.3f}"
        )
    report = (info.get("sealed") or {}).get("stego")
    if report is not None:
        tier = report.get("tier", "full" if report.get("embedded") else "none")  # records before tiers
        sizes = ", ".join(f"{t} {n} B" for t, n in report.get("tier_bytes", {}).items())
        lines.append(f"embedded PHI     tier {tier}" + (f" ({report['message_bytes']} B sealed)" if report.get("embedded") else "")
                     + (f"; sealed sizes {sizes}; capacity {report.get('capacity_bits', 0) // 8} B" if sizes else ""))
        if report.get("reason"):
            lines.append(f"                 {report['reason']}")
    lines.append("sections         " + ", ".join(f"{k} {v} B" for k, v in info["sections"].items()))
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    import medcodec

    if _is_archive(args.input):
        from pipelines.report import archive_stats, format_archive_stats, write_html_report

        stats = archive_stats(args.input)
        print(json.dumps(stats, indent=2, sort_keys=True) if args.json else format_archive_stats(stats))
        if args.html:
            write_html_report(stats, args.html)
            print(f"report written to {args.html}")
        return 0
    if args.html:
        raise medcodec.UnsupportedError("--html needs an archive, not a single record")
    info = medcodec.inspect_record(_read(args.input))
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else _format_inspect(info))
    return 0


def _runner_settings(args: argparse.Namespace) -> dict:
    """Runner, workers and Beam options from --pipeline-config, overridden by the command line."""
    settings = {"runner": "FnApiRunner", "workers": 1, "beam_args": []}
    if args.pipeline_config:
        config = json.loads(Path(args.pipeline_config).read_text())
        settings.update({k: config[k] for k in ("runner", "workers", "beam_args") if k in config})
    if args.runner:
        settings["runner"] = args.runner
    if args.workers:
        settings["workers"] = args.workers
    settings["beam_args"] = list(settings["beam_args"]) + list(args.beam_args)
    if settings["workers"] < 1:
        raise ValueError(f"--workers must be >= 1, got {settings['workers']}")
    settings["storage_options"] = args.storage_options or {}
    return settings


def cmd_adapt(args: argparse.Namespace) -> int:
    from jobs.adapt import run_from_args
    from pipelines.adapt import format_manifest

    manifest = run_from_args(args, args.src, args.out, args.sample, sys.argv[2:], args.storage_options)
    print(format_manifest(manifest))
    return 0


def _migrate_adapters(args: argparse.Namespace, settings: dict) -> dict:
    """--adapt N: the adapters to code with (fitted now, or DST's from an earlier run)."""
    if not args.adapt:
        return {}
    from jobs.adapt import run_from_args
    from medcodec.models import BASE_TRANSFORMER as BASE_MODEL
    from pipelines.adapt import adapter_map, format_manifest, read_manifest

    if args.preset != "max" or args.local_model not in (None, BASE_MODEL):
        raise ValueError(
            f"--adapt adapts the transformer local path: use it with --preset max, and with no --local-model "
            f"(the adapted transformer or the v1.0 path, whichever is smaller) or --local-model {BASE_MODEL} "
            "(the adapted transformer only)"
        )
    manifest = read_manifest(args.dst, settings["storage_options"])
    if manifest is None:
        manifest = run_from_args(args, args.src, args.dst, args.adapt, sys.argv[2:], settings["storage_options"])
    else:
        print(f"using the adapters of {args.dst.rstrip('/')}/models/adapters.json (fitted earlier)", file=sys.stderr)
    print(format_manifest(manifest), file=sys.stderr)
    return adapter_map(manifest)


def cmd_migrate(args: argparse.Namespace) -> int:
    from pipelines.runner import format_summary, run_migrate
    from pipelines.storage import StorageTimeouts

    if not args.key_file and args.phi_in_clear:
        print(
            "warning: --phi-in-clear: records keep the DICOM headers (PHI) unencrypted, and index identifiers are"
            " salted hashes whose salt is in DST/archive.json (anyone with the archive can confirm a guess: not"
            " pseudonyms). Use `medarchive keys new` and --key-file to seal them.",
            file=sys.stderr,
        )
    settings = _runner_settings(args)
    adapters = _migrate_adapters(args, settings)
    summary = run_migrate(
        args.src,
        args.dst,
        preset=args.preset,
        local_model=args.local_model,
        adapters=adapters,
        keep_codestream=args.keep_codestream,
        key_file=args.key_file,
        progress=not args.no_progress,
        memory_budget=_budget(args),
        max_pixel_ratio=args.max_pixel_ratio or None,
        max_input_bytes=int(args.max_input_size * 2**30),
        max_seconds=args.max_seconds or None,
        phi_in_clear=args.phi_in_clear,
        timeouts=StorageTimeouts(connect=min(10.0, args.io_timeout), read=args.io_timeout, retries=args.io_retries),
        announce=lambda run_id: print(f"medarchive migrate: run {run_id} started ({args.src} -> {args.dst})",
                                      file=sys.stderr, flush=True),
        **settings,
    )
    print(_as_json(summary) if args.json else format_summary(summary))
    if summary["deadlettered"]:
        new = summary["deadlettered"] - summary.get("deadlettered_before", 0)
        where = (f"{args.dst.rstrip('/')}/deadletter/{summary['run_id']}-*.parquet" if new
                 else f"{args.dst.rstrip('/')}/deadletter/ (recorded by earlier runs)")
        print(f"warning: {summary['deadlettered']} input(s) could not be archived; reasons in {where}", file=sys.stderr)
        if args.strict:
            return EXIT_DEADLETTERS
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from pipelines.audit import format_audit, run_audit

    summary = run_audit(
        args.archive, deep=args.deep, sample=args.sample, key_file=args.key_file, **_runner_settings(args)
    )
    print(_as_json(summary) if args.json else format_audit(summary))
    return 0 if summary["failures"] == 0 else EXIT_FAILED


def cmd_restore(args: argparse.Namespace) -> int:
    from pipelines.restore import run_restore

    summary = run_restore(
        args.archive,
        args.dst,
        key_file=args.key_file,
        study=args.study,
        series=args.series,
        sop=args.sop,
        fail_fast=args.fail_fast,
        **_runner_settings(args),
    )
    for problem in summary["unreadable_indexes"]:
        print(f"warning: {problem['file']}: {problem['reason']}; its records are not restored", file=sys.stderr)
    if args.json:
        print(_as_json(summary))
    if summary["selected"] == 0:
        print("no archived instance matches the selection", file=sys.stderr)
        return EXIT_FAILED
    what = "de-identified files (no --key-file)" if summary["deidentified"] else "file(s)"
    if not args.json:
        print(f"restored {summary['restored']} of {summary['selected']} {what} from {summary['shards']} shard(s) to"
              f" {args.dst}, verified ({summary['wall_seconds']:.1f} s)")
    for f in summary["failed"]:
        print(f"  failed: {f['shard']} {f['sop_key']}: {f['reason']}", file=sys.stderr)
    if summary["failed"] or summary["unreadable_indexes"]:
        where = f"; report in {args.dst.rstrip('/')}/{summary['report']}" if summary["report"] else ""
        print(f"error: {len(summary['failed'])} record(s) not restored{where}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _as_json(summary: dict) -> str:
    """A run summary as one JSON document (what --json prints on stdout)."""
    return json.dumps(summary, sort_keys=True, default=str)


def _is_archive(target: str) -> bool:
    import fsspec

    fs, root = fsspec.core.url_to_fs(target)
    return fs.isdir(root) and fs.exists(root.rstrip("/") + "/archive.json")


def cmd_repair(args: argparse.Namespace) -> int:
    from pipelines.repair import run_repair

    summary = run_repair(args.archive, key_file=args.key_file, storage_options=args.storage_options)
    if summary["rebuilt"]:
        print(f"archive.json rebuilt for {args.archive}: {summary['evidence']}")
        for problem in summary["index_problems"]:
            print(f"warning: {problem['file']}: {problem['reason']}", file=sys.stderr)
    else:
        print(f"{args.archive}: {summary['evidence']}")
    return 0


def cmd_rewrap(args: argparse.Namespace) -> int:
    from pipelines.rewrap import run_rewrap

    summary = run_rewrap(args.archive, key_file=args.key_file, **_runner_settings(args))
    print(f"re-wrapped {summary['records']} record(s) in {summary['shards']} shard(s) under key "
          f"{summary['key_id']}; pixels untouched ({summary['wall_seconds']:.1f} s)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks import compare

    return compare.main(args.bench_args)


def cmd_train_base(args: argparse.Namespace) -> int:
    from jobs import train_base

    return train_base.run(args, sys.argv[2:])


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
    p.add_argument("--key-file", help="de-identify, seal the original and embed the sealed PHI (keyring file)")
    _add_limit_arguments(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="restore a file from a record (verified)")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--key-file", help="keyed records: restore the original (without: the de-identified file)")
    _add_limit_arguments(p, encode=False)
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("reveal", help="authenticate and print the PHI embedded in a de-identified (stego) DICOM")
    p.add_argument("input")
    p.add_argument("--key-file", required=True)
    p.add_argument("--json", action="store_true", help="the removed attributes as stored (restorable form)")
    p.add_argument("--record", help="the archive's record (.mdc) of this image: when the image carries only the"
                   " essential message, follow its keyed link to the full attributes sealed there")
    p.set_defaults(func=cmd_reveal)

    p = sub.add_parser("keys", help="keyring: new | rotate | retire KEY_ID | list")
    p.add_argument("action", choices=("new", "rotate", "retire", "list"))
    p.add_argument("path")
    p.add_argument("key_id", nargs="?")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("inspect", help="describe a record (sizes, bits/sample per path, k, models) or an archive")
    p.add_argument("input", help="a .mdc record, or an archive root (any fsspec URL)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--html", metavar="REPORT.html",
                   help="archives: also write an HTML report with plots, and a sample of records decoded and"
                        " sized with JPEG-LS / JPEG-XL on the same pixels")
    p.set_defaults(func=cmd_inspect)

    def runner_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--storage-options",
            type=json.loads,
            default=None,
            help='fsspec options as JSON, e.g. \'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\'',
        )
        p.add_argument("--runner", help="Beam runner (default FnApiRunner, in-process and offline)")
        p.add_argument("--workers", type=int, help="local workers: threads of one process (default 1)")
        p.add_argument("--pipeline-config", help="JSON job config: runner, workers, beam_args (see jobs/configs/)")
        p.set_defaults(beam_args=[], accepts_beam_args=True)

    p = sub.add_parser("migrate", help="archive every DICOM under SRC into DST (any fsspec URLs); resumable")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--key-file", help="keyring (a path, an fsspec URL or env:NAME): keyed identifiers and sealed metadata")
    p.add_argument("--preset", choices=("max", "fast"), default="max")
    p.add_argument("--local-model", choices=("classical-v1", "llm-base-v1"),
                   help="code the local path with this model only: classical-v1 (the v1.0 path, no transformer: "
                        "faster on CPU) or llm-base-v1 (the transformer, with its adapter under --adapt); by "
                        "default `max` tries both and keeps the smaller record")
    p.add_argument("--keep-codestream", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit 3 if any input was dead-lettered")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    p.add_argument("--io-timeout", type=_positive, default=60.0, metavar="S",
                   help="object storage: seconds to wait for an answer (connect: at most 10), per try (default 60)")
    p.add_argument("--io-retries", type=int, default=3, metavar="N", help="object storage: tries per call (default 3)")
    p.add_argument("--phi-in-clear", action="store_true",
                   help="without --key-file: store the DICOM headers (PHI) in clear, on purpose (refused otherwise)")
    _add_limit_arguments(p)
    p.add_argument("--max-input-size", type=_positive, metavar="GIB", default=2.0,
                   help="largest input after decompression, in GiB (default 2); .gz and archive members that"
                        " inflate over 200:1 past 64 MiB are refused as they are read")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--adapt", type=int, metavar="N",
                   help="first fit A-LoRA adapters on N sampled inputs (per modality; see `adapt`), then code with "
                        "them; a DST that already has models/adapters.json reuses it")
    adapt_group = p.add_argument_group("adaptation (with --adapt)")
    from jobs.adapt import add_arguments as add_adapt_arguments

    add_adapt_arguments(adapt_group, with_sample=False)
    runner_options(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("adapt", help="fit A-LoRA adapters (one per modality) on a sample of SRC, stored in OUT/models/")
    p.add_argument("src")
    p.add_argument("out", help="the archive (any fsspec URL) whose models/ receives the adapters")
    add_adapt_arguments(p)
    p.add_argument("--storage-options", type=json.loads, default=None, help="fsspec options as JSON")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("audit", help="verify an archive: checksums (fast) or full decode (--deep)")
    p.add_argument("archive")
    p.add_argument("--deep", action="store_true")
    p.add_argument("--sample", type=float, default=1.0, help="fraction of records to check (deterministic)")
    p.add_argument("--key-file")
    p.add_argument("--json", action="store_true", help="print the audit summary as JSON on stdout")
    runner_options(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("restore", help="restore original files (verified) from an archive")
    p.add_argument("archive")
    p.add_argument("dst")
    p.add_argument("--key-file", help="keyed archives: restore the originals (without: the de-identified files)")
    p.add_argument("--fail-fast", action="store_true",
                   help="stop at the first record or index file that cannot be restored (default: report it, go on)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--study", metavar="UID")
    sel.add_argument("--series", metavar="UID")
    sel.add_argument("--sop", metavar="UID")
    p.add_argument("--json", action="store_true", help="print the restore summary as JSON on stdout")
    runner_options(p)
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("repair", help="rebuild a lost archive.json from what the archive holds (proved with the key)")
    p.add_argument("archive")
    p.add_argument("--key-file", help="the archive's keyring (a keyless archive's salt cannot be rebuilt)")
    p.add_argument("--storage-options", type=json.loads, default=None, help="fsspec options as JSON")
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("rewrap", help="after `keys rotate`: re-wrap every record's data keys (no pixel re-coding)")
    p.add_argument("archive")
    p.add_argument("--key-file", required=True)
    runner_options(p)
    p.set_defaults(func=cmd_rewrap)

    p = sub.add_parser("bench", help="compare against JPEG-LS, JPEG 2000, HTJ2K, JPEG-XL (see benchmarks/compare.py)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="DIR (or 'pydicom') and benchmark options")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("train-base", help="train the local-path transformers on pydicom-data (see jobs/train_base.py)")
    from jobs.train_base import add_arguments as add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=cmd_train_base)
    return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
    from medcodec import MedcodecError

    return (MedcodecError,)


def _pipeline_error_types() -> tuple[type[BaseException], ...]:
    """Errors of the archive jobs that are the user's to fix (bad archive, bad option values)."""
    from pipelines.archive import ArchiveError

    return (ArchiveError, ValueError)


def _unavailable_error_types() -> tuple[type[BaseException], ...]:
    """Object storage that stopped answering: the run failed, the inputs were fine."""
    from pipelines.storage import StorageUnavailableError

    return (StorageUnavailableError,)


# The commands that run a Beam job: run locally from the command line, they are stopped
# by SIGTERM and Ctrl-C as pipelines.stopping says.
_BEAM_JOBS = frozenset({"migrate", "audit", "restore", "rewrap"})


def _beam_job(argv: list[str]) -> bool:
    """Whether ``argv`` names one of _BEAM_JOBS (its first word that is not an option)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    return command in _BEAM_JOBS


def main(argv: list[str] | None = None, *, stop_signals_blocked: bool = False) -> int:
    """The command line. ``stop_signals_blocked`` (``entry``): SIGTERM and SIGINT were
    blocked before the process started any thread; a local Beam job takes them in a thread
    of its own (``pipelines.stopping``), any other command unblocks them."""
    import logging

    # Library chatter (Beam's import-time notices) is not for the terminal; our own warnings
    # are printed explicitly. MEDARCHIVE_DEBUG=1 shows everything.
    if not os.environ.get("MEDARCHIVE_DEBUG"):
        logging.getLogger().setLevel(logging.ERROR)
    from medcodec import allocator

    allocator.tune()  # fewer page faults on the coders' temporaries (medcodec/allocator.py)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not getattr(args, "accepts_beam_args", False) or not all(a.startswith("--") or "=" in a for a in extra[:1]):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.beam_args = extra  # standard Beam options (--project=..., --region=...) pass through
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        if stop_signals_blocked:
            _take_stop_signals(args)
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
    except BrokenPipeError:  # output piped into e.g. `head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except _unavailable_error_types() as exc:  # the run could not finish: try again later
        print(f"medarchive {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except _pipeline_error_types() as exc:
        print(f"medarchive {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def _take_stop_signals(args: argparse.Namespace) -> None:
    """After ``entry`` blocked the stop signals: a Beam job on a local runner takes them in
    a thread (``pipelines.stopping``); anything else gets Python's defaults back."""
    from pipelines import stopping

    if args.command in _BEAM_JOBS:
        from pipelines.runner import LOCAL_RUNNERS

        if _runner_settings(args)["runner"] in LOCAL_RUNNERS:
            stopping.await_stop_signals()
            return
    stopping.unblock_stop_signals()


def entry() -> None:
    """Console-script entry point.

    A local Beam job blocks SIGTERM and SIGINT first, before any import starts a thread
    (``pipelines.stopping``: every later thread inherits the mask).

    Exits with os._exit after flushing: Beam's gRPC threads can still be alive at
    interpreter teardown, where they sometimes abort the process (SIGABRT, "terminate
    called without an active exception") after the job has finished and reported.
    """
    blocked = _beam_job(sys.argv[1:])
    if blocked:
        from pipelines.stopping import block_stop_signals

        block_stop_signals()
    code = main(stop_signals_blocked=blocked)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
