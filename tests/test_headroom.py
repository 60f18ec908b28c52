"""benchmarks.headroom: the per-pixel least-squares predictor only reads pixels before
the one it predicts (raster order), and the tool measures real raster-wp-v3 streams."""

import json

import numpy as np
import pytest

from benchmarks import headroom

from conftest import pydicom_file


def _image(seed=0, shape=(24, 21), maxv=4095):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    base = (np.sin(x / 3.0) + np.cos(y / 4.0) + 2) / 4 * maxv
    return np.clip(base + rng.normal(0, 40, shape), 0, maxv).round().astype(np.int64)


@pytest.mark.parametrize("window", [1, 3, 6])
def test_prediction_reads_only_earlier_pixels(window):
    img = _image()
    pred = headroom.windowed_ls_prediction(img, 4095, window)
    rng = np.random.default_rng(1)
    flat = img.ravel()
    for at in [0, 1, 20, 21, 22, 100, 250, flat.size - 1]:
        changed = flat.copy()
        changed[at:] = rng.integers(0, 4096, flat.size - at)  # this pixel and every later one
        again = headroom.windowed_ls_prediction(changed.reshape(img.shape), 4095, window).ravel()
        assert np.array_equal(again[: at + 1], pred.ravel()[: at + 1]), at


def test_prediction_fits_a_plane_exactly():
    # A linear ramp is predicted exactly once the window holds enough rows.
    y, x = np.mgrid[0:20, 0:20]
    ramp = 100 + 3 * x + 5 * y
    pred = headroom.windowed_ls_prediction(ramp, 4095, 4)
    assert np.abs(pred[4:, 3:-3] - ramp[4:, 3:-3]).max() <= 1


def test_cli_measures_a_real_image(tmp_path, capsys):
    out = tmp_path / "h.json"
    path = pydicom_file("CT_small.dcm")
    assert headroom.main([path, "--names", "CT_small", "--crop", "48", "--window", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "CT_small.dcm" in text and "raster-wp-v3" in text
    row = json.loads(out.read_text())["images"][0]
    assert row["shape"] == [48, 48] and row["v3_bytes"] > 0 and row["v3_with_ls_bytes"] > 0
    assert row["change"] == pytest.approx(row["v3_with_ls_bytes"] / row["v3_bytes"] - 1)


def test_cli_rejects_bad_options_and_no_match(tmp_path, capsys):
    with pytest.raises(SystemExit):
        headroom.main(["pydicom", "--window", "0"])
    assert headroom.main([pydicom_file("CT_small.dcm"), "--names", "nothing"]) == 2
    assert "no images matched" in capsys.readouterr().err
    missing = tmp_path / "missing"
    assert headroom.main([str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err  # says why: the source is not there
