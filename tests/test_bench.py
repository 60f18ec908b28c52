"""benchmarks.compare and benchmarks.split_sweep on small real inputs: every codec round-trips,
the summary is complete, and bad inputs are reported, never a crash."""

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest

from benchmarks import compare, split_sweep
from benchmarks.compare import ALL_CODECS, STATUS_OK, format_table, run_benchmark, stored_values

from conftest import pydicom_bytes, pydicom_file

imagecodecs = pytest.importorskip("imagecodecs")


def _smooth(shape, peak, seed):
    """A smooth image plus a little noise: compressible, like a real one."""
    rng = np.random.default_rng(seed)
    rows, cols = shape[:2]
    y, x = np.mgrid[0:rows, 0:cols]
    base = (np.sin(x / 7.0) + np.cos(y / 5.0) + 2) / 4 * peak
    img = base if len(shape) == 2 else base[..., None] * np.linspace(0.6, 1.0, shape[2])
    return np.clip(img + rng.normal(0, peak / 200, img.shape), 0, peak).round()


@pytest.fixture
def bench_dir(tmp_path):
    d = tmp_path / "inputs"
    (d / "nested").mkdir(parents=True)
    np.save(d / "gray8.npy", _smooth((40, 48), 255, 1).astype(np.uint8))
    np.save(d / "nested" / "gray12.npy", _smooth((36, 44), 4095, 2).astype(np.uint16))
    shutil.copy(pydicom_file("CT_small.dcm"), d / "nested" / "ct")  # DICOM found by content, any name
    return d


def _expected_codecs():
    flags = {"jpegls": "JPEGLS", "jpeg2k": "JPEG2K", "htj2k": "HTJ2K", "jpegxl": "JPEGXL"}
    return ["ours", *(n for n in ALL_CODECS[1:] if getattr(imagecodecs, flags[n]).available)]


def test_every_codec_round_trips_and_summary_is_complete(bench_dir):
    result = run_benchmark([bench_dir], runs=1)
    assert result.codec_names == _expected_codecs()
    by_name = {r.name: r for r in result.rows}
    assert set(by_name) == {"gray8.npy", str(Path("nested", "gray12.npy")), str(Path("nested", "ct"))}
    assert by_name["gray8.npy"].bits == 8
    assert by_name[str(Path("nested", "gray12.npy"))].bits == 12
    ct = by_name[str(Path("nested", "ct"))]
    assert (ct.modality, ct.bits, ct.rows, ct.cols) == ("CT", 16, 128, 128)
    for row in result.rows:
        for name in result.codec_names:
            res = row.results[name]
            assert res.status == STATUS_OK, (row.name, name, res.error)
            assert res.bpp > 0 and res.nbytes > 0
            assert res.encode_mbps > 0 and res.decode_mbps > 0
    summary = result.summary
    assert summary["images_in_summary"] == 3
    for name in result.codec_names:
        per = summary["codecs"][name]
        assert per["weighted_bpp"] > 0 and per["mean_bpp"] > 0
        assert per["median_encode_mbps"] > 0 and per["median_decode_mbps"] > 0
    assert set(summary["ours_over"]) == set(result.codec_names) - {"ours"}
    assert all(ratio > 0 for ratio in summary["ours_over"].values())
    # Weighted mean = total bits / total samples.
    ours = [r.results["ours"] for r in result.rows]
    total = sum(r.n_samples for r in result.rows)
    assert summary["codecs"]["ours"]["weighted_bpp"] == pytest.approx(8 * sum(x.nbytes for x in ours) / total)
    # Overall speed = all raw MB / the sum of each image's median time.
    raw_mb = sum(r.raw_bytes for r in result.rows) / 1e6
    for key, times in (("overall_encode_mbps", "encode_s"), ("overall_decode_mbps", "decode_s")):
        seconds = sum(statistics.median(getattr(x, times)) for x in ours)
        assert summary["codecs"]["ours"][key] == pytest.approx(raw_mb / seconds)
    table = format_table(result)
    for word in ("weighted mean bpp", "unweighted mean bpp", "median encode MB/s", "overall decode MB/s",
                 "ours / codec", "gray8.npy"):
        assert word in table


def test_strongest_jpegxl_runs_only_when_named(bench_dir):
    if not imagecodecs.JPEGXL.available:
        pytest.skip("imagecodecs built without JPEG-XL")
    assert "jpegxl-e10" not in ALL_CODECS  # the default columns stay as fast as before
    result = run_benchmark([bench_dir], runs=1, codecs=["jpegxl", "jpegxl-e10"])
    assert result.codec_names == ["jpegxl", "jpegxl-e10"]
    for row in result.rows:  # decoded and compared with the input, like every column
        assert row.results["jpegxl-e10"].status == STATUS_OK, row.results["jpegxl-e10"].error
    e7, e10 = (sum(r.results[n].nbytes for r in result.rows) for n in ("jpegxl", "jpegxl-e10"))
    assert e10 != e7  # a different encoder setting, not the effort-7 column twice
    with pytest.raises(ValueError, match="jpegxl-e10"):
        run_benchmark([bench_dir], runs=1, codecs=["jpegxl-e11"])


def test_main_prints_table_and_json(bench_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = compare.main([str(bench_dir), "--runs", "1", "--json", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert code == 0
    for word in ("command: python -m benchmarks.compare", "CPUs", "weighted mean bpp", "ours / codec", "gray8.npy"):
        assert word in text
    payload = json.loads(out.read_text())
    assert len(payload["images"]) == 3
    assert payload["summary"]["codecs"]["ours"]["weighted_bpp"] > 0
    assert payload["meta"]["cpu_count"] >= 1


def test_bad_inputs_are_reported_not_fatal(tmp_path):
    np.save(tmp_path / "good.npy", _smooth((24, 24), 255, 3).astype(np.uint8))
    ct = pydicom_bytes("CT_small.dcm")
    (tmp_path / "truncated.dcm").write_bytes(ct[:900])  # DICM preamble, cut inside the header
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp_path / "float.npy", np.zeros((8, 8), np.float32))
    result = run_benchmark([tmp_path, tmp_path / "missing"], runs=1, codecs=["ours"])
    assert [r.name for r in result.rows] == ["good.npy"]
    reasons = {s.name: s.reason for s in result.skipped}
    assert set(reasons) == {"truncated.dcm", "notes.txt", "garbage.npy", "float.npy", str(tmp_path / "missing")}
    assert all(reasons.values())
    assert "float32" in reasons["float.npy"]
    assert "skipped (5)" in format_table(result)


def test_main_without_images_exits_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("nothing here\n")
    assert compare.main([str(tmp_path), "--runs", "1", "--quiet", "--codecs", "ours"]) == 2
    assert "notes.txt" in capsys.readouterr().out


def test_colour_signed_multiframe_and_duplicates(tmp_path):
    rgb = _smooth((20, 24, 3), 255, 4).astype(np.uint8)
    np.save(tmp_path / "a_rgb.npy", rgb)
    np.save(tmp_path / "b_rgb_copy.npy", rgb)
    np.save(tmp_path / "c_rgb_2frames.npy", np.stack([rgb, rgb[::-1]]))
    np.save(tmp_path / "d_signed.npy", (_smooth((16, 20), 3000, 5) - 1500).astype(np.int16))
    np.save(tmp_path / "e_frames.npy", np.stack([_smooth((12, 16), 900, s).astype(np.uint16) for s in range(10)]))
    result = run_benchmark([tmp_path], runs=1, frame_cap=8)
    rows = {r.name: r for r in result.rows}
    assert set(rows) == {"a_rgb.npy", "c_rgb_2frames.npy", "d_signed.npy", "e_frames.npy"}
    assert [s.reason for s in result.skipped] == ["same pixels as a_rgb.npy"]
    assert (rows["c_rgb_2frames.npy"].frames, rows["c_rgb_2frames.npy"].samples) == (2, 3)
    assert (rows["d_signed.npy"].bits, rows["e_frames.npy"].bits) == (16, 10)
    assert (rows["e_frames.npy"].frames, rows["e_frames.npy"].frames_total) == (8, 10)
    for row in result.rows:
        for name in result.codec_names:
            assert row.results[name].status == STATUS_OK, (row.name, name, row.results[name].error)
    assert "8 of 10*" in format_table(result)


def test_stored_values_masks_and_maps_signed_to_offset_binary():
    # 12 stored bits at high bit 13: low bit 2; junk in bits 0-1 and 14-15 is dropped.
    words = np.array([(0x0ABC << 2) | 0b11 | 0xC000, 0x0001 << 2], dtype=np.uint16)
    assert stored_values(words, bits_stored=12, high_bit=13, signed=False).tolist() == [0x0ABC, 1]
    # Two's complement -1, 0, -2048, 2047 in 12 bits -> offset binary.
    signed = np.array([-1, 0, -2048, 2047], dtype=np.int16).view(np.uint16)
    out = stored_values(signed, bits_stored=12, high_bit=11, signed=True)
    assert out.tolist() == [2047, 2048, 0, 4095]
    assert stored_values(np.array([255], np.uint16), bits_stored=8, high_bit=7, signed=False).dtype == np.uint8


def test_split_sweep_reports_every_k(tmp_path, capsys):
    np.save(tmp_path / "g.npy", _smooth((24, 28), 4095, 6).astype(np.uint16))
    rows, report = split_sweep.sweep([str(tmp_path)], ks=(0, 1, 2))
    assert len(rows) == 1 and not report.skipped
    row = rows[0]
    assert set(row.bpp) == {0, 1, 2} and all(b > 0 for b in row.bpp.values())
    assert row.best_k in row.bpp and row.noise >= 0
    assert split_sweep.main([str(tmp_path), "--ks", "0-2", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "k=2" in text and "g.npy" in text and "weighted" in text


def test_adapt_benchmark_crops_and_rejects_bad_options(tmp_path, capsys):
    from benchmarks.adapt import centre_crop, main

    a = np.arange(2 * 1 * 10 * 12).reshape(2, 1, 10, 12)
    assert np.array_equal(centre_crop(a, 4), a[:, :, 3:7, 4:8])
    assert centre_crop(a, 0) is a and centre_crop(a, 50).shape == a.shape
    with pytest.raises(SystemExit) as exc:
        main(["--eval-size", "-1", str(tmp_path)])
    assert exc.value.code == 2 and "--eval-size" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no images in the modality groups CT"):
        main(["--groups", "ct", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        main(["--no-records", str(tmp_path)])
    assert exc.value.code == 2 and "--no-records without --bound" in capsys.readouterr().err


def test_adapt_benchmark_bound_measures_every_model_on_the_same_patches(monkeypatch):
    import medcodec.model.adapt
    from benchmarks.adapt import format_report, local_bound
    from medcodec.model.registry import load_model

    monkeypatch.setattr(medcodec.model.adapt, "VALID_PATCHES", 64)
    base = load_model("llm-base-v1", device="cpu")
    rng = np.random.default_rng(5)
    planes = [((rng.normal(2000, 30, (40, 48)).astype(np.int64) & 4095), 3)]
    bound = local_bound(base, {"a-lora": base, "lora": base}, planes, steps=2, rank=2, seed=0, threads=1)
    assert bound["patches"] == 64
    assert bound["a-lora"] == bound["lora"] == bound["base"] > 0  # the same model on the same patches
    assert bound["in-sample"] > 0
    report = {"rank": 2, "steps": 2, "seed": 0, "threads": 1, "eval_size": 0, "images": {"CT": ["x"]},
              "groups": {"CT": {"images": [], "local_bound": bound, "fits": {"a-lora": {"adapter_bytes": 10}}}}}
    text = format_report(report)
    assert "CT    local bits per symbol on 64 evaluation patches" in text and "in-sample" in text
    assert "0.0% below" in text and "no records coded" in text


@pytest.mark.slow
def test_scale_rehearsal_runs_and_resumes(capsys):
    from benchmarks import scale_rehearsal

    assert scale_rehearsal.main(["--n", "12", "--workers", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    row = table[-1].split()
    assert row[:3] == ["1", "12", "0"] and row[-1] == "12"  # all archived, none dead, all skipped on resume


def test_kernel_speed_times_the_compiled_coders_and_checks_their_round_trip():
    from benchmarks.kernel_speed import measure

    rows = measure("train", 1, 1)
    assert rows and rows[0]["coder"] == "raster-wpc-v3"
    assert rows[0]["bytes"] > 0 and rows[0]["encode_ns"] > 0 and rows[0]["decode_ns"] > 0


def test_the_keying_line_times_each_file_keyless_and_keyed_back_to_back():
    """benchmarks.pipeline_throughput's keying line: two passes one after the other let the
    machine's drift between them into the difference; each file is now coded keyless and
    keyed back to back, which first alternating, and each codec's times summed."""
    from benchmarks import pipeline_throughput

    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def archive_dicom(self, data):
            calls.append((self.name, data))

    keying = pipeline_throughput.Keying.__new__(pipeline_throughput.Keying)
    keying.datas = [b"a", b"b", b"c"]
    keying.codecs = (Fake("keyless"), Fake("keyed"))
    plain, sealed = keying.seconds()
    assert calls == [("keyless", b"a"), ("keyed", b"a"), ("keyed", b"b"), ("keyless", b"b"),
                     ("keyless", b"c"), ("keyed", b"c")]
    assert plain >= 0 and sealed >= 0
