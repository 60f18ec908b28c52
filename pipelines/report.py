"""Archive statistics for `medarchive inspect ARCHIVE` and its HTML report (inline SVG, no plotting library)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from .archive import Archive

# Records decoded to compare against standard codecs in the HTML report.
REPORT_SAMPLE = 12


def archive_stats(url: str, *, storage_options: dict | None = None) -> dict:
    archive = Archive(url, storage_options=storage_options)
    manifest = archive.read_manifest()
    rows = archive.read_index().to_pylist()
    runs = []
    for name in sorted(p.rsplit("/", 1)[-1] for p in archive.fs.glob(archive.path("runs", "*.json"))):
        with archive.fs.open(archive.path("runs", name), "rb") as fh:
            runs.append(json.loads(fh.read()))
    dead = len(archive.read_deadletters(indexed={r["source_key"] for r in rows}))
    by_modality: dict[str, dict] = {}
    for r in rows:
        m = by_modality.setdefault(r["modality"] or "?", {"instances": 0, "bytes_in": 0, "bytes_out": 0, "samples": 0, "bits": 0.0})
        m["instances"] += 1
        m["bytes_in"] += r["original_size"]
        m["bytes_out"] += r["length"]
        n = (r["rows"] or 0) * (r["cols"] or 0) * (r["frames"] or 0) * (r["samples"] or 0)
        if r["bpp_record"] is not None and n:
            m["samples"] += n
            m["bits"] += r["bpp_record"] * n
    for m in by_modality.values():
        m["bpp"] = m["bits"] / m["samples"] if m["samples"] else None
        m["ratio"] = m["bytes_in"] / m["bytes_out"] if m["bytes_out"] else None
    bytes_in = sum(r["original_size"] for r in rows)
    bytes_out = sum(r["length"] for r in rows)
    modes: dict[str, int] = {}
    for r in rows:
        modes[r["restore_mode"]] = modes.get(r["restore_mode"], 0) + 1
    return {
        "archive": url,
        "format_version": manifest.get("format_version"),
        "schemas": manifest.get("schemas"),
        "identity_mode": manifest.get("identity", {}).get("mode"),
        "instances": len(rows),
        "studies": len({r["study_key"] for r in rows}),
        "series": len({r["series_key"] for r in rows}),
        "shards": len(archive.shard_names()),
        "deadlettered_inputs": dead,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "ratio": bytes_in / bytes_out if bytes_out else None,
        "restore_modes": modes,
        "models": sorted({r["model_id"] or "-" for r in rows}),
        "by_modality": by_modality,
        "runs": [
            {k: run.get(k) for k in ("run_id", "archived", "skipped", "deadlettered", "bytes_in", "bytes_out")}
            for run in runs
        ],
    }


def format_archive_stats(stats: dict) -> str:
    lines = [
        f"archive          {stats['archive']}",
        f"format           {stats['format_version']}  schemas {stats['schemas']}  identity {stats['identity_mode']}",
        f"instances        {stats['instances']} in {stats['studies']} studies, {stats['series']} series, {stats['shards']} shards",
        f"not archived     {stats['deadlettered_inputs']} input(s) (see deadletter/)",
        f"bytes in / out   {stats['bytes_in']:,} / {stats['bytes_out']:,}"
        + (f"  ratio {stats['ratio']:.2f}x" if stats["ratio"] else ""),
        f"restore modes    {stats['restore_modes']}",
        f"models           {', '.join(stats['models'])}",
        "by modality:",
    ]
    for mod, m in sorted(stats["by_modality"].items()):
        bpp = f"{m['bpp']:.3f}" if m["bpp"] is not None else "-"
        ratio = f"{m['ratio']:.2f}x" if m["ratio"] else "-"
        lines.append(f"  {mod:4} {m['instances']:6d} instances  {m['bytes_in']:>14,} B  ratio {ratio:>7}  bits/sample {bpp}")
    lines.append(f"runs             {len(stats['runs'])}")
    return "\n".join(lines)


def compare_with_standard_codecs(url: str, *, storage_options: dict | None = None, sample: int = REPORT_SAMPLE) -> list[dict]:
    """Decode a deterministic sample of pixel-coded records and size them with JPEG-LS / JPEG-XL."""
    import imagecodecs

    import medcodec
    from medcodec.codec import decode_words

    archive = Archive(url, storage_options=storage_options)
    rows = sorted((r for r in archive.read_index().to_pylist() if r["pixel_sha256"]), key=lambda r: r["sop_key"])
    out = []
    for r in rows[:sample]:
        record = medcodec.container.read_record(archive.read_record(r["shard"], r["offset"], r["length"]))
        pixels = record.config["pixels"]
        words = decode_words(pixels, record)
        fmt = pixels["format"]
        low = fmt["high_bit"] + 1 - fmt["bits_stored"]
        values = (words.astype(np.int64) >> low) & ((1 << fmt["bits_stored"]) - 1)
        if fmt["signed"]:
            values ^= 1 << (fmt["bits_stored"] - 1)
        values = values.astype(np.uint8 if fmt["bits_stored"] <= 8 else np.uint16)
        sizes = {"jpeg-ls": 0, "jpeg-xl": 0}
        for frame in values:
            img = np.moveaxis(frame, 0, -1) if frame.shape[0] > 1 else frame[0]
            img = np.ascontiguousarray(img)
            sizes["jpeg-ls"] += len(imagecodecs.jpegls_encode(img))
            sizes["jpeg-xl"] += len(imagecodecs.jpegxl_encode(img, lossless=True, effort=7))
        n = values.size
        out.append({
            "modality": r["modality"] or "?",
            "ours": 8 * r["length"] / n,
            **{k: 8 * v / n for k, v in sizes.items()},
        })
    return out


def _bars(title: str, items: list[tuple[str, float]], unit: str) -> str:
    if not items:
        return f"<p>{html.escape(title)}: no data</p>"
    width, bar_h, gap, left = 560, 22, 6, 150
    top = max(v for _, v in items) or 1.0
    h = len(items) * (bar_h + gap) + 30
    parts = [f'<svg width="{width + left + 80}" height="{h}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="16" font-weight="bold">{html.escape(title)}</text>']
    for i, (label, v) in enumerate(items):
        y = 26 + i * (bar_h + gap)
        w = int(width * v / top)
        parts.append(f'<text x="0" y="{y + 16}">{html.escape(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w}" height="{bar_h}" fill="#3b6ea5"/>')
        parts.append(f'<text x="{left + w + 6}" y="{y + 16}">{v:.3f} {html.escape(unit)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def write_html_report(stats: dict, path: str, *, storage_options: dict | None = None) -> None:
    comparison = compare_with_standard_codecs(stats["archive"], storage_options=storage_options)
    bpp = [(m, v["bpp"]) for m, v in sorted(stats["by_modality"].items()) if v["bpp"] is not None]
    totals = {k: sum(c[k] for c in comparison) for k in ("ours", "jpeg-ls", "jpeg-xl")} if comparison else {}
    ratio_items = [(f"ours / {k}", totals["ours"] / totals[k]) for k in ("jpeg-ls", "jpeg-xl")] if totals else []
    runs = [(r["run_id"][:20], (r["bytes_out"] or 0) / 1e6) for r in stats["runs"]]
    body = [
        "<!doctype html><html><head><meta charset='utf-8'><title>medarchive report</title>",
        "<style>body{font-family:sans-serif;margin:2em} td,th{padding:2px 10px;text-align:right}</style></head><body>",
        f"<h1>medarchive archive report</h1><pre>{html.escape(format_archive_stats(stats))}</pre>",
        _bars("Bits per sample by modality (whole records)", bpp, "bits/sample"),
        _bars(f"Size relative to standard codecs (sample of {len(comparison)} records; <1 is smaller)", ratio_items, "x"),
        _bars("Bytes written per run", runs, "MB"),
        "</body></html>",
    ]
    Path(path).write_text("\n".join(body))
