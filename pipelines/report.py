"""Archive statistics for `medarchive inspect ARCHIVE` and its HTML report (inline SVG, no plotting library).

Every figure has one definition, and its label says which:

* input bytes: the original files' sizes (the index's ``original_size``);
* record bytes: the archived records (``length``): pixel streams, DICOM header, config,
  sealed boxes and the container's framing;
* shard bytes: the tar files that hold the records (tar headers and padding included),
  what ``migrate`` writes and its run summary counts as ``bytes_out``;
* ratio: input bytes / record bytes, or input bytes / shard bytes, always named;
* bits per sample: 8 x bytes / samples (rows x cols x frames x samples per pixel) summed
  over records first, i.e. weighted by samples; ``whole record`` counts every record
  byte, ``pixel streams`` only the sections that code the pixels
  (:data:`PIXEL_SECTIONS`);
* the standard-codec comparison decodes a sample of records and hands JPEG-LS and
  JPEG-XL the same decoded pixels (the accounting of ``benchmarks/compare.py``): our
  pixel streams are compared with their codestreams, and what a record adds (header,
  config, sealed boxes, framing) is reported next to it, never mixed in.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from .archive import Archive

# Records decoded to compare against standard codecs in the HTML report, and a bound on
# their samples in all (JPEG-XL effort 7 codes a few M samples/s): records that would
# pass it are left out of the sample, and the report says how many.
REPORT_SAMPLE = 12
REPORT_SAMPLE_MAX_SAMPLES = 1 << 24

# The record sections that code the pixels: everything a decoder needs to rebuild them
# (path streams, value and colour tables, bits outside BitsStored). The rest of a
# record (config, DICOM header, sealed boxes, framing) is its overhead.
PIXEL_SECTIONS = ("global", "local", "palette", "colours", "outside")

STANDARD = (("jpegls", "JPEG-LS"), ("jpegxl", "JPEG-XL"))

RATIO_RECORD = "input bytes / record bytes"
RATIO_SHARD = "input bytes / shard bytes"


def n_samples(row: dict) -> int:
    """Samples of an index row's image: rows x cols x frames x samples per pixel (0 if unknown)."""
    return (row.get("rows") or 0) * (row.get("cols") or 0) * (row.get("frames") or 0) * (row.get("samples") or 0)


def weighted_bits_per_sample(rows: list[dict], key: str = "bpp_record") -> tuple[float | None, int, int]:
    """(bits/sample weighted by samples, pixel-coded records, their samples) over index rows.

    A record of 4 M samples weighs 4 M times one sample: sum(bpp x samples) / sum(samples),
    not the mean of the records' bits per sample. Rows without ``key`` (verbatim records)
    are left out."""
    bits, samples, records = 0.0, 0, 0
    for r in rows:
        n = n_samples(r)
        if r.get(key) is None or not n:
            continue
        bits += r[key] * n
        samples += n
        records += 1
    return (bits / samples if samples else None), records, samples


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _shard_sizes(archive: Archive) -> dict[str, int]:
    base = archive.path("shards")
    if not archive.fs.exists(base):
        return {}
    return {p["name"].rstrip("/").rsplit("/", 1)[-1]: int(p.get("size") or 0)
            for p in archive.fs.ls(base, detail=True) if p["name"].endswith(".tar")}


def archive_stats(url: str, *, storage_options: dict | None = None) -> dict:
    archive = Archive(url, storage_options=storage_options)
    manifest = archive.read_manifest()
    rows = archive.read_index().to_pylist()
    runs = []
    for name in sorted(p.rsplit("/", 1)[-1] for p in archive.fs.glob(archive.path("runs", "*.json"))):
        with archive.fs.open(archive.path("runs", name), "rb") as fh:
            runs.append(json.loads(fh.read()))
    dead = len(archive.read_deadletters(indexed={r["source_key"] for r in rows}))
    folder = archive.path("deadletter")
    sizes = _shard_sizes(archive)
    used = {r["shard"].rsplit("/", 1)[-1] for r in rows}
    by_modality: dict[str, dict] = {}
    for mod in sorted({r["modality"] or "?" for r in rows}):
        group = [r for r in rows if (r["modality"] or "?") == mod]
        bpp, coded, samples = weighted_bits_per_sample(group)
        m = {
            "instances": len(group),
            "input_bytes": sum(r["original_size"] for r in group),
            "record_bytes": sum(r["length"] for r in group),
            "pixel_coded": coded,
            "samples": samples,
            "bpp_record": bpp,
        }
        m["ratio_record"] = _ratio(m["input_bytes"], m["record_bytes"])
        by_modality[mod] = m
    input_bytes = sum(r["original_size"] for r in rows)
    record_bytes = sum(r["length"] for r in rows)
    shard_bytes = sum(sizes.get(s, 0) for s in used)
    bpp, coded, samples = weighted_bits_per_sample(rows)
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
        "shards": len(used),
        "deadlettered_inputs": dead,
        # Named only when there is something to read there and it exists.
        "deadletter_folder": folder + "/" if dead and archive.fs.exists(folder) else None,
        "input_bytes": input_bytes,
        "record_bytes": record_bytes,
        "shard_bytes": shard_bytes,
        "ratio_record": _ratio(input_bytes, record_bytes),
        "ratio_shard": _ratio(input_bytes, shard_bytes),
        "pixel_coded": coded,
        "samples": samples,
        "bpp_record": bpp,
        "restore_modes": modes,
        "models": sorted({r["model_id"] or "-" for r in rows}),
        "by_modality": by_modality,
        "runs": [
            {"run_id": run.get("run_id"), "archived": run.get("archived"), "skipped": run.get("skipped"),
             "deadlettered": run.get("deadlettered"), "input_bytes": run.get("bytes_in"),
             "shard_bytes": run.get("bytes_out")}
            for run in runs
        ],
    }


def _x(v: float | None) -> str:
    return f"{v:.2f}x" if v else "-"


def format_archive_stats(stats: dict) -> str:
    dead = f"{stats['deadlettered_inputs']} input(s)"
    if stats.get("deadletter_folder"):
        dead += f" (reasons in {stats['deadletter_folder']})"
    width = max(len(f"{stats[k]:,}") for k in ("input_bytes", "record_bytes", "shard_bytes"))
    bpp = stats["bpp_record"]
    lines = [
        f"archive          {stats['archive']}",
        f"format           {stats['format_version']}  schemas {stats['schemas']}  identity {stats['identity_mode']}",
        f"instances        {stats['instances']} in {stats['studies']} studies, {stats['series']} series, {stats['shards']} shards",
        f"not archived     {dead}",
        f"input bytes      {stats['input_bytes']:>{width},}  (the original files)",
        f"record bytes     {stats['record_bytes']:>{width},}  ratio {_x(stats['ratio_record'])} ({RATIO_RECORD})",
        f"shard bytes      {stats['shard_bytes']:>{width},}  ratio {_x(stats['ratio_shard'])} ({RATIO_SHARD}; tar files)",
        "bits/sample      "
        + (f"{bpp:.3f} (whole records, {stats['pixel_coded']} pixel-coded record(s), weighted by samples)"
           if bpp is not None else "- (no pixel-coded records)"),
        f"restore modes    {stats['restore_modes']}",
        f"models           {', '.join(stats['models'])}",
    ]
    lines += format_modality_table(stats["by_modality"])
    lines.append(f"runs             {len(stats['runs'])}")
    return "\n".join(lines)


def format_modality_table(by_modality: dict[str, dict]) -> list[str]:
    """One aligned row per modality, whatever the names' lengths."""
    if not by_modality:
        return ["by modality      -"]
    items = sorted(by_modality.items())
    wm = max(4, *(len(mod) for mod, _ in items))
    wi = max(len(f"{m['input_bytes']:,}") for _, m in items)
    wr = max(len(f"{m['record_bytes']:,}") for _, m in items)
    wx = max(len(_x(m["ratio_record"])) for _, m in items)
    lines = [f"by modality      (ratio: {RATIO_RECORD}; bits/sample: whole records, pixel-coded ones, weighted by samples)"]
    for mod, m in items:
        bpp = f"{m['bpp_record']:.3f}" if m["bpp_record"] is not None else "-"
        lines.append(
            f"  {mod:{wm}} {m['instances']:6d} instances  input {m['input_bytes']:>{wi},} B  "
            f"records {m['record_bytes']:>{wr},} B  ratio {_x(m['ratio_record']):>{wx}}  bits/sample {bpp}"
        )
    return lines


# --- ours against the standard codecs, pixels with pixels -----------------------------------


def _codecs() -> tuple[list, dict[str, str]]:
    """(available standard codecs, {name: label or why unavailable}) as pipelines/standard_codecs.py builds them."""
    from pipelines.standard_codecs import build_codecs

    codecs, infos = build_codecs([name for name, _ in STANDARD], preset="fast")
    return codecs, {i.name: (i.label if i.unavailable is None else f"unavailable: {i.unavailable}") for i in infos}


def compare_with_standard_codecs(url: str, *, storage_options: dict | None = None, sample: int = REPORT_SAMPLE,
                                 max_samples: int = REPORT_SAMPLE_MAX_SAMPLES) -> dict:
    """Decode a deterministic sample of pixel-coded records; size their pixels with JPEG-LS / JPEG-XL.

    The sample: pixel-coded records in index-key order (keyed hashes, so a pseudo-random
    choice), up to ``sample`` of them and ``max_samples`` samples in all. Each standard
    codec gets the decoded pixels as ``benchmarks/compare.py`` hands them over (the stored
    bits, offset binary when signed, frame by frame) and must decode them back exactly.
    Returns {"records": [per record byte counts], "codecs": {name: label}, "left_out": n}."""
    import medcodec
    BenchImage, stored_values = medcodec.images.BenchImage, medcodec.images.stored_values

    ours = medcodec.Codec(models=Archive(url, storage_options=storage_options).model_store())

    archive = Archive(url, storage_options=storage_options)
    rows = sorted((r for r in archive.read_index().to_pylist() if r["pixel_sha256"] and n_samples(r)),
                  key=lambda r: r["sop_key"])
    codecs, labels = _codecs()
    out, total, left_out = [], 0, 0
    for r in rows:
        if len(out) == sample:
            break
        if total + n_samples(r) > max_samples:
            left_out += 1
            continue
        blob = archive.read_record(r["shard"], r["offset"], r["length"])
        words, fmt = ours.pixel_values(blob)
        values = stored_values(words, bits_stored=fmt["bits_stored"],
                               high_bit=fmt["high_bit"], signed=fmt["signed"])
        image = BenchImage(name=r["sop_key"], source="archive", modality=r["modality"] or "?", values=values,
                           bits=fmt["bits_stored"], frames_total=values.shape[0], photometric="", origin="archive")
        sections = medcodec.inspect_record(blob)["sections"]
        pixel_bytes = sum(sections.get(s, 0) for s in PIXEL_SECTIONS)
        entry = {
            "modality": image.modality,
            "samples": image.n_samples,
            "record_bytes": len(blob),
            "pixel_bytes": pixel_bytes,
            "overhead_bytes": len(blob) - pixel_bytes,
        }
        for codec in codecs:
            streams = codec.encode(image)
            if not np.array_equal(codec.decode(streams, image), values):
                raise RuntimeError(f"{codec.name} did not decode a sampled record's pixels exactly")
            entry[f"{codec.name}_bytes"] = sum(len(s) for s in streams)
        out.append(entry)
        total += image.n_samples
    return {"records": out, "codecs": labels, "left_out": left_out}


def summarize_comparison(records: list[dict], names: tuple[str, ...] = tuple(n for n, _ in STANDARD)) -> dict:
    """Bits per sample over records, weighted by samples (bytes summed first), and our pixel
    streams over each codec's codestreams (< 1: ours smaller)."""
    samples = sum(r["samples"] for r in records)
    if not samples:
        return {"records": len(records), "samples": 0}
    bps = lambda key: 8 * sum(r[key] for r in records) / samples  # noqa: E731
    out = {"records": len(records), "samples": samples, "pixels": bps("pixel_bytes"),
           "overhead": bps("overhead_bytes"), "record": bps("record_bytes")}
    for name in names:
        if all(f"{name}_bytes" in r for r in records):
            out[name] = bps(f"{name}_bytes")
            out[f"ours/{name}"] = out["pixels"] / out[name]
    return out


# --- HTML ------------------------------------------------------------------------------------

# SVG text is set in a monospace font of this size, so that the chart can size itself to
# its labels (advance <= 0.62 em in the common monospace fonts) and never clip one.
FONT_PX = 13
CHAR_PX = 0.62 * FONT_PX


def _text_px(text: str) -> float:
    return len(text) * CHAR_PX


def _bars(title: str, items: list[tuple], unit: str, *, digits: int = 3) -> str:
    """A horizontal bar chart whose width fits its longest label and value. Items are
    (label, value) or (label, value, text shown instead of the value)."""
    head = f"<h3>{html.escape(title)}</h3>"
    if not items:
        return head + "<p>no data</p>"
    bar_w, bar_h, gap, pad = 420, 20, 6, 10
    values = [item[2] if len(item) > 2 else f"{item[1]:.{digits}f}{'' if unit == 'x' else ' '}{unit}".rstrip()
              for item in items]
    items = [item[:2] for item in items]
    left = int(max(_text_px(label) for label, _ in items)) + pad
    width = left + bar_w + pad + int(max(_text_px(v) for v in values)) + pad
    height = len(items) * (bar_h + gap) + gap
    top = max(v for _, v in items) or 1.0
    parts = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{html.escape(title)}" font-family="monospace" font-size="{FONT_PX}">']
    for i, ((label, v), shown) in enumerate(zip(items, values)):
        y = gap + i * (bar_h + gap)
        w = max(0, int(bar_w * v / top))
        base = y + bar_h * 0.72
        parts.append(f'<text x="0" y="{base:.1f}">{html.escape(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w}" height="{bar_h}" fill="#3b6ea5"/>')
        parts.append(f'<text x="{left + w + pad}" y="{base:.1f}">{html.escape(shown)}</text>')
    parts.append("</svg>")
    return head + "\n".join(parts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _comparison_html(comparison: dict) -> list[str]:
    records, labels = comparison["records"], comparison["codecs"]
    names = [(n, shown) for n, shown in STANDARD if all(f"{n}_bytes" in r for r in records)]
    title = "Pixels against the standard lossless codecs"
    note = (
        f"<p>A sample of {len(records)} pixel-coded record(s) (the first in index-key order: keyed hashes, so a "
        "pseudo-random choice), decoded; JPEG-LS and JPEG-XL get the same decoded "
        "pixels (stored bits, frame by frame) and decode them back exactly. <b>ours (pixel streams)</b> counts the "
        f"record sections that code the pixels ({', '.join(PIXEL_SECTIONS)}); the codecs count their codestreams. "
        "What a record adds on top (DICOM header, config, sealed boxes, framing) is the <b>record overhead</b>, shown "
        "apart. Bits per sample are weighted by samples (bytes summed over records, then divided)."
        + (f" {comparison['left_out']} record(s) left out of the sample: they would pass "
           f"{REPORT_SAMPLE_MAX_SAMPLES:,} samples in all." if comparison["left_out"] else "")
        + "</p><ul>" + "".join(f"<li>{html.escape(shown)}: {html.escape(labels.get(n, '-'))}</li>"
                               for n, shown in STANDARD) + "</ul>"
    )
    if not records:
        return [f"<h2>{title}</h2><p>No pixel-coded records to compare.</p>"]
    total = summarize_comparison(records)
    groups = [("all", records)] + [(m, [r for r in records if r["modality"] == m])
                                   for m in sorted({r["modality"] for r in records})]
    header = ["modality", "records", "samples", "ours: pixel streams", *(f"{s}" for _, s in names),
              *(f"ours / {s}" for _, s in names), "record overhead", "ours: whole record"]
    rows = []
    for label, group in groups:
        s = summarize_comparison(group)
        rows.append([label, str(s["records"]), f"{s['samples']:,}", f"{s['pixels']:.3f}",
                     *(f"{s[n]:.3f}" for n, _ in names), *(f"{s[f'ours/{n}']:.2f}x" for n, _ in names),
                     f"{s['overhead']:.3f}", f"{s['record']:.3f}"])
    return [
        f"<h2>{title}</h2>", note,
        "<p>Bits per sample (ratios: our pixel streams / the codec's codestreams; below 1x ours is smaller):</p>",
        _table(header, rows),
        _bars("Pixel bits per sample on the sampled records (weighted by samples)",
              [("ours (pixel streams)", total["pixels"]), *((shown, total[n]) for n, shown in names)], "bits/sample"),
        _bars("Our pixel streams relative to each codec's codestreams (below 1x: ours smaller)",
              [(f"ours / {shown}", total[f"ours/{n}"]) for n, shown in names], "x", digits=2),
        _bars("Whole records on the sampled records: pixel streams + record overhead",
              [("pixel streams", total["pixels"]), ("record overhead", total["overhead"]),
               ("whole record", total["record"])], "bits/sample"),
    ]


CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:80em} pre,table{width:max-content} "
    "table{border-collapse:collapse;margin:0.5em 0 1em} td,th{padding:2px 10px;text-align:right;white-space:nowrap} "
    "th{border-bottom:1px solid #999} td:first-child,th:first-child{text-align:left} "
    "svg.chart{display:block;overflow:visible;margin-bottom:1em} h3{font-size:1em;margin:1em 0 0.3em}"
)


def render_html(stats: dict, comparison: dict) -> str:
    bpp = [(m, v["bpp_record"]) for m, v in sorted(stats["by_modality"].items()) if v["bpp_record"] is not None]
    ratios = [(m, v["ratio_record"]) for m, v in sorted(stats["by_modality"].items()) if v["ratio_record"]]
    runs = [(r["run_id"] or "?", (r["shard_bytes"] or 0) / 1e6) + (("nothing new archived",) if r["archived"] == 0 else ())
            for r in stats["runs"]]
    body = [
        "<!doctype html><html><head><meta charset='utf-8'><title>medarchive report</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>medarchive archive report</h1><pre>{html.escape(format_archive_stats(stats))}</pre>",
        "<h2>The whole archive</h2>",
        _bars("Bits per sample by modality (whole records with their headers, pixel-coded records, "
              "weighted by samples)", bpp, "bits/sample"),
        _bars(f"Ratio by modality ({RATIO_RECORD})", ratios, "x", digits=2),
        *_comparison_html(comparison),
        "<h2>Runs</h2>",
        _bars("Shard bytes written per run (tar files)", runs, "MB", digits=3),
        "</body></html>",
    ]
    return "\n".join(body)


def write_html_report(stats: dict, path: str, *, storage_options: dict | None = None) -> None:
    comparison = compare_with_standard_codecs(stats["archive"], storage_options=storage_options)
    Path(path).write_text(render_html(stats, comparison))
