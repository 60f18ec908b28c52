"""The figures `migrate`, its progress line, `inspect` and the HTML report print: one
definition each, labelled, weighted by samples, pixels compared with pixels.

Fast: a synthetic archive (two real records made with compress_pixels, packed in a tar,
indexed by hand), no Beam pipeline."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

import medcodec
from pipelines import report
from pipelines.archive import Archive
from pipelines.progress import ProgressMonitor, ProgressReporter, status_line
from pipelines.runner import format_summary
from schemas.tables import INDEX_SCHEMA, table_of


def _row(**kw) -> dict:
    base = {"sop_key": "s", "series_key": "se", "study_key": "st", "patient_key": "p", "source_key": "src",
            "source_sha256": "0" * 64, "original_size": 0, "shard": "shards/x.tar", "offset": 0, "length": 0,
            "record_sha256": "0" * 64, "restore_mode": "byte-exact", "format_version": "1.0", "run_id": "r",
            "frames": 1, "samples": 1}
    return {**base, **kw}


# --- bits per sample: weighted by samples ---------------------------------------------------


def test_bits_per_sample_is_weighted_by_samples():
    big = _row(rows=512, cols=512, bpp_record=2.0)  # 262,144 samples
    small = _row(rows=16, cols=16, bpp_record=10.0)  # 256 samples
    verbatim = _row(rows=512, cols=512, bpp_record=None)  # not pixel-coded: left out
    bpp, records, samples = report.weighted_bits_per_sample([big, small, verbatim])
    hand = (2.0 * 262_144 + 10.0 * 256) / (262_144 + 256)
    assert (records, samples) == (2, 262_400)
    assert bpp == pytest.approx(hand) and bpp == pytest.approx(2.0078, abs=1e-4)
    assert abs(bpp - (2.0 + 10.0) / 2) > 3  # the unweighted mean would say 6.0
    assert report.weighted_bits_per_sample([verbatim]) == (None, 0, 0)


def test_the_codec_comparison_is_weighted_and_pixel_only():
    records = [
        {"modality": "CT", "samples": 1000, "record_bytes": 1300, "pixel_bytes": 1000, "overhead_bytes": 300,
         "jpegls_bytes": 1100, "jpegxl_bytes": 1000},
        {"modality": "MR", "samples": 10, "record_bytes": 900, "pixel_bytes": 20, "overhead_bytes": 880,
         "jpegls_bytes": 10, "jpegxl_bytes": 10},
    ]
    s = report.summarize_comparison(records)
    assert s["pixels"] == pytest.approx(8 * 1020 / 1010) and s["jpegls"] == pytest.approx(8 * 1110 / 1010)
    assert s["ours/jpegls"] == pytest.approx(1020 / 1110)  # 0.92x: pixels with pixels
    assert s["ours/jpegxl"] == pytest.approx(1020 / 1010)
    assert s["overhead"] == pytest.approx(8 * 1180 / 1010) and s["record"] == pytest.approx(s["pixels"] + s["overhead"])
    # What the old report did: mean of per-record bits/sample of whole records -> 2x and more.
    unweighted = sum(8 * r["record_bytes"] / r["samples"] for r in records) / sum(
        8 * r["jpegls_bytes"] / r["samples"] for r in records)
    assert unweighted > 5 * s["ours/jpegls"]


# --- migrate's summary and progress line ----------------------------------------------------

SUMMARY = {"run_id": "20261204T000000Z-abcdef01", "runner": "FnApiRunner", "workers": 1, "inputs": 13,
           "archived": 0, "skipped": 12, "deadlettered": 1, "deadlettered_before": 1,
           "deadletter_reasons": {"InvalidDicomError": 1}, "shards": 0, "bytes_in": 0, "bytes_out": 0,
           "samples": 0, "coded_bits": 0, "stage_seconds": {"read": 0.0, "encode": 0.0, "write": 0.0},
           "started": 0.0, "finished": 0.6, "wall_seconds": 0.6}


def test_an_all_skipped_run_says_nothing_new_was_archived():
    text = format_summary(SUMMARY)
    assert "nothing new archived (12 input(s) already in the archive)" in text
    assert "skipped         12" in text
    for bad in ("nan", "0.00 instances/s", "0.0/s", "0.00 MB/s", "ratio"):
        assert bad not in text, bad


def test_the_summary_labels_each_ratio_with_what_it_divides():
    done = {**SUMMARY, "archived": 3, "skipped": 0, "shards": 2, "bytes_in": 1_000_000, "bytes_out": 400_000,
            "samples": 1000, "coded_bits": 2500.0, "wall_seconds": 2.0}
    text = format_summary(done)
    assert "ratio 2.50x (input / shard bytes: tar files)" in text
    assert "bits/sample     2.500 (whole records, pixel-coded images, weighted by samples)" in text
    assert "1.50 instances/s, 0.50 MB/s archived" in text and "record bytes" not in text
    text = format_summary({**done, "record_bytes": 320_000})  # when migrate gives it: the progress line's ratio
    assert "ratio 3.12x (input / record bytes)" in text and "ratio 2.50x (input / shard bytes" in text
    assert "- (no pixel-coded images)" in format_summary({**done, "samples": 0, "coded_bits": 0})


def test_progress_ratio_counts_only_what_this_run_encoded():
    c = {"instances": 3, "bytes_in": 5_000_000, "archived": 1, "archived_in": 1_000_000, "archived_out": 250_000,
         "skipped": 2, "failed": 0}
    line = status_line(c, 2.0)
    assert "3 instances, 5.0 MB in 4.00x (input / record bytes), 2 skipped" in line  # not 20.00x
    assert "1.5 instances/s, 2.50 MB/s read" in line
    skipped = {**c, "archived": 0, "archived_in": 0, "archived_out": 0, "skipped": 3}
    final = status_line(skipped, 2.0, final=True)
    assert final.endswith("; nothing new archived") and "x (input" not in final and "0.0/s" not in final
    empty = dict.fromkeys(c, 0)
    assert status_line(empty, 2.0, final=True) == "0 instances, 0.0 MB in, 0 skipped, 0 failed: nothing read"


def test_progress_monitor_sums_worker_ticks(tmp_path):
    worker = ProgressReporter(str(tmp_path))
    worker.tick(1_000_000, 250_000)
    worker.tick(3_000_000, 0, skipped=True)
    worker.tick(10, 0, failed=True)
    log = io.StringIO()
    with ProgressMonitor(str(tmp_path), total=None, stream=log, interval=10, log_interval=100) as monitor:
        assert monitor.counts() == {"instances": 3, "bytes_in": 4_000_010, "archived": 1, "archived_in": 1_000_000,
                                    "archived_out": 250_000, "skipped": 1, "failed": 1}
        assert monitor.totals() == (3, 4_000_010, 250_000, 1, 1)
    (line,) = log.getvalue().splitlines()
    assert line.startswith("progress: 3 instances, 4.0 MB in 4.00x (input / record bytes), 1 skipped, 1 failed")


# --- inspect --------------------------------------------------------------------------------


def test_modality_rows_align_whatever_the_names():
    def m(n, i, r, bpp):
        return {"instances": n, "input_bytes": i, "record_bytes": r, "ratio_record": i / r, "pixel_coded": n,
                "samples": 1, "bpp_record": bpp}

    lines = report.format_modality_table({"CT": m(3, 568_782, 105_973, 2.9), "RTIMAGE": m(1, 9_844, 10_433, None),
                                          "SEG": m(120, 12_345_678_901, 1_234_567, 0.5)})
    assert "input bytes / record bytes" in lines[0]
    rows = lines[1:]
    assert [r.split()[0] for r in rows] == ["CT", "RTIMAGE", "SEG"]
    for word in ("instances", "input", "B  records", "ratio", "bits/sample"):
        assert len({r.index(word) for r in rows}) == 1, (word, rows)
    assert rows[0].index("3 instances") == rows[2].index("120 instances") + 2  # counts right-aligned


def _pixels_record(array: np.ndarray, bits: int) -> bytes:
    return medcodec.compress_pixels(array, bits_stored=bits, signed=False, preset="fast")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """An archive of two real pixel records (different sizes) and a verbatim-like one, indexed by hand."""
    dst = tmp_path_factory.mktemp("reports") / "dst"
    archive = Archive(str(dst))
    archive.open_or_create(key=None, key_mode="keyring")
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:96, 0:80]
    ct = ((yy * 23 + xx * 11) % 4096 + rng.integers(0, 16, (96, 80))).astype(np.uint16)  # 12-bit
    small = rng.integers(0, 256, (8, 8), dtype=np.uint8)  # noise: ~8 bpp, record mostly overhead
    blobs = {"ct": (_pixels_record(ct, 12), ct.size, "CT"), "rt": (_pixels_record(small, 8), small.size, "RTIMAGE")}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, (blob, _, _) in blobs.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    tar = buf.getvalue()
    (dst / "shards").mkdir()
    (dst / "shards" / "aaaa.tar").write_bytes(tar)
    rows = []
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        for member in tf.getmembers():
            blob, n, modality = blobs[member.name]
            info = medcodec.inspect_record(blob)
            shape = info["shape"]
            rows.append(_row(sop_key=hashlib.sha256(member.name.encode()).hexdigest(), source_key=member.name,
                             shard="shards/aaaa.tar", offset=member.offset_data, length=len(blob),
                             record_sha256=hashlib.sha256(blob).hexdigest(), original_size=2 * n,
                             modality=modality, frames=shape[0], samples=shape[1], rows=shape[2], cols=shape[3],
                             pixel_sha256="1" * 64, bpp_record=info["bps"]["record"],
                             bpp_global=info["bps"]["global"], bpp_local=info["bps"]["local"]))
    archive.write_table("index/aaaa.parquet", table_of(rows, INDEX_SCHEMA))
    (dst / "runs").mkdir()
    (dst / "runs" / "r.json").write_text(json.dumps({**SUMMARY, "run_id": "r"}))
    return dst, blobs, rows, len(tar)


def test_inspect_labels_its_figures_and_names_no_missing_folder(synthetic):
    dst, blobs, rows, tar_size = synthetic
    stats = report.archive_stats(str(dst))
    records = sum(len(b) for b, _, _ in blobs.values())
    assert stats["record_bytes"] == records and stats["shard_bytes"] == tar_size > records
    assert stats["ratio_record"] == pytest.approx(stats["input_bytes"] / records)
    hand = sum(8 * len(b) for b, _, _ in blobs.values()) / sum(n for _, n, _ in blobs.values())
    assert stats["bpp_record"] == pytest.approx(hand)
    text = report.format_archive_stats(stats)
    assert "not archived     0 input(s)\n" in text and "reasons in" not in text  # there is no such folder
    assert f"ratio {stats['ratio_record']:.2f}x (input bytes / record bytes)" in text
    assert f"ratio {stats['ratio_shard']:.2f}x (input bytes / shard bytes; tar files)" in text
    assert "  RTIMAGE      1 instances  input" in text and "  CT           1 instances  input" in text
    assert "nan" not in text


def test_inspect_points_to_the_dead_letters_where_they_are(synthetic, tmp_path):
    from schemas.tables import DEADLETTER_SCHEMA

    dst = tmp_path / "dst"
    shutil.copytree(synthetic[0], dst)
    Archive(str(dst)).write_table("deadletter/r-0.parquet", table_of(
        [{"source_key": "gone", "stage": "parse", "error_type": "InvalidDicomError", "message": "m", "run_id": "r"}],
        DEADLETTER_SCHEMA))
    stats = report.archive_stats(str(dst))
    assert stats["deadlettered_inputs"] == 1 and Path(stats["deadletter_folder"]).is_dir()
    assert f"not archived     1 input(s) (reasons in {dst / 'deadletter'}/)" in report.format_archive_stats(stats)


def test_the_codec_comparison_counts_pixel_streams_against_codestreams(synthetic):
    dst, blobs, rows, _ = synthetic
    comparison = report.compare_with_standard_codecs(str(dst))
    by = {r["modality"]: r for r in comparison["records"]}
    assert set(by) == {"CT", "RTIMAGE"} and comparison["left_out"] == 0
    for modality, (blob, n, _) in ((m, blobs[k]) for k, m in (("ct", "CT"), ("rt", "RTIMAGE"))):
        sections = medcodec.inspect_record(blob)["sections"]
        r = by[modality]
        assert r["samples"] == n and r["record_bytes"] == len(blob)
        assert r["pixel_bytes"] == sum(sections.get(s, 0) for s in report.PIXEL_SECTIONS) < len(blob)
        assert r["overhead_bytes"] == len(blob) - r["pixel_bytes"] > 0
        assert r["jpegls_bytes"] > 0 and r["jpegxl_bytes"] > 0
    # The tiny noisy record is mostly overhead: as a whole record it is larger than JPEG-LS's
    # codestream, as pixel streams under half of it. Only the second compares pixels with pixels.
    rt = by["RTIMAGE"]
    assert rt["overhead_bytes"] > rt["pixel_bytes"]
    assert rt["record_bytes"] > rt["jpegls_bytes"] > 2 * rt["pixel_bytes"]
    # Capped by samples: the big record would pass a 1000-sample budget and is left out.
    capped = report.compare_with_standard_codecs(str(dst), max_samples=1000)
    assert [r["modality"] for r in capped["records"]] == ["RTIMAGE"] and capped["left_out"] == 1


def test_html_charts_are_as_wide_as_their_labels(synthetic, tmp_path):
    dst, *_ = synthetic
    stats = report.archive_stats(str(dst))
    page = report.render_html(stats, report.compare_with_standard_codecs(str(dst)))
    assert "Bits per sample by modality" in page and "ours / JPEG-LS" in page and "record overhead" in page
    assert ">nothing new archived</text>" in page  # the all-skipped run's bar, not "0.000 MB"
    svgs = re.findall(r'<svg class="chart" width="(\d+)" height="(\d+)" viewBox="0 0 (\d+) (\d+)"(.*?)</svg>', page, re.S)
    assert len(svgs) == 6
    for width, height, vw, vh, body in svgs:
        assert (width, height) == (vw, vh)
        for x, y, text in re.findall(r'<text x="([\d.]+)" y="([\d.]+)">([^<]*)</text>', body):
            assert float(x) + report._text_px(text) <= int(width), text
            assert float(y) <= int(height)
    # A long run id or modality name widens the chart instead of running out of it.
    wide = report._bars("t", [("a-very-long-label-" * 4, 1.0)], "bits/sample")
    assert int(re.search(r'width="(\d+)"', wide).group(1)) > report._text_px("a-very-long-label-" * 4) + 420
