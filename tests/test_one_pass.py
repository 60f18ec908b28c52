"""benchmarks.one_pass: the online fits follow their definition, predict from the past
only, and the tool measures a plane end to end."""

import json

import numpy as np
import pytest

from benchmarks import one_pass

from conftest import pydicom_file

SETTINGS = {"rows_between": 2, "stride": 2, "delta": 3.0, "forget": 0.5, "ridge": 1e-3, "prior": 0.5,
            "prior_pixels": 4.0, "min_count": 2.0}


def _reference(x, ref, flat, pixel_class, start, cols, maxv, s):
    """The online fits as the tool's docstring defines them, with numpy's solver."""
    f, n = x.shape
    w = start.astype(float).copy()
    gram = np.zeros((len(start), f, f))
    rhs = np.zeros((len(start), f))
    seen = np.zeros(len(start))
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        j = pixel_class[i]
        p = float(w[j] @ x[:, i])
        out[i] = min(max(int(np.floor(ref[i] + p + 0.5)), 0), maxv)
        if i % s["stride"] == 0:
            y = flat[i] - ref[i]
            a = 1.0 / (abs(y - p) + s["delta"])
            gram[j] += a * np.outer(x[:, i], x[:, i])
            rhs[j] += a * x[:, i] * y
            seen[j] += 1
        if (i + 1) % cols == 0 and ((i + 1) // cols) % s["rows_between"] == 0:
            for c in range(len(start)):
                if seen[c] < s["min_count"]:
                    continue
                shrink = (s["ridge"] + s["prior"] * s["prior_pixels"] / (s["prior_pixels"] + seen[c])) * (
                    np.trace(gram[c]) / f) + 1e-9
                w[c] = np.linalg.solve(gram[c] + shrink * np.eye(f), rhs[c] + shrink * start[c])
                gram[c] *= s["forget"]
                rhs[c] *= s["forget"]
                seen[c] *= s["forget"]
    return out


def _problem(rows=12, cols=10, f=3, seed=5):
    rng = np.random.default_rng(seed)
    n = rows * cols
    x = rng.normal(0, 20, (f, n))
    truth = np.array([0.7, -0.3, 0.2])[:f]
    ref = rng.integers(100, 200, n).astype(np.int64)
    flat = np.clip(ref + np.rint(truth @ x + rng.normal(0, 2, n)), 0, 1023).astype(np.int64)
    pixel_class = rng.integers(0, 2, n)
    start = np.array([[0.5, 0.0, 0.0], [0.0, 0.1, 0.0]])[:, :f]
    return x, ref, flat, pixel_class, start, cols


def test_online_predictions_follow_the_definition():
    x, ref, flat, pixel_class, start, cols = _problem()
    got = one_pass.online_predictions(x, ref, flat, pixel_class, start, cols, 1023, SETTINGS)
    assert np.array_equal(got, _reference(x, ref, flat, pixel_class, start, cols, 1023, SETTINGS))
    # and the weights did move: learning from the pixels, not the starting weights alone
    frozen = {**SETTINGS, "min_count": 1e9}
    assert not np.array_equal(got, one_pass.online_predictions(x, ref, flat, pixel_class, start, cols, 1023, frozen))


@pytest.mark.parametrize("cut", [1, 37, 60, 118])
def test_a_prediction_reads_only_earlier_pixels(cut):
    x, ref, flat, pixel_class, start, cols = _problem()
    before = one_pass.online_predictions(x, ref, flat, pixel_class, start, cols, 1023, SETTINGS)
    rng = np.random.default_rng(cut)
    later = flat.copy()
    later[cut:] = rng.integers(0, 1024, later.size - cut)
    x2 = x.copy()  # a pixel's own features are causal: they stay
    x2[:, cut + 1:] = rng.normal(0, 50, (x.shape[0], x.shape[1] - cut - 1))
    after = one_pass.online_predictions(x2, ref, later, pixel_class, start, cols, 1023, SETTINGS)
    assert np.array_equal(after[: cut + 1], before[: cut + 1])  # the pixel at ``cut`` too: not its own value
    assert not np.array_equal(after[cut + 1:], before[cut + 1:])


def test_the_tool_measures_a_plane(tmp_path, capsys):
    out = tmp_path / "one.json"
    assert one_pass.main([pydicom_file("CT_small.dcm"), "--split", "all", "--min-pixels", "4096",
                          "--json", str(out)]) == 0
    assert "CT_small.dcm[0,0]" in capsys.readouterr().out
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["pixels"] == 128 * 128 and row["v4_bytes"] > 0
    # a 12-bit CT: the sampled fits start well, so the warm start is the smaller
    assert 0 < row["warm_bytes"] < row["cold_bytes"]
    summary = data["summary"]
    assert summary["best_bytes"] == row["warm_bytes"]
    assert summary["warm_change"] == pytest.approx(row["warm_bytes"] / row["v4_bytes"] - 1)


def test_no_planes_and_bad_options_say_so(tmp_path, capsys):
    assert one_pass.main([pydicom_file("CT_small.dcm"), "--split", "all"]) == 2  # 128 x 128 < 2**16
    assert "no planes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        one_pass.main(["pydicom", "--min-pixels", "100"])


def test_a_plane_the_coder_refuses_is_reported_not_raised(monkeypatch, capsys):
    from medcodec.errors import CorruptRecordError

    def refuse(plane, bits, sample):
        raise CorruptRecordError("plane refused")
    monkeypatch.setattr(one_pass, "code_plane", refuse)
    assert one_pass.main([pydicom_file("CT_small.dcm"), "--split", "all", "--min-pixels", "4096"]) == 1
    assert "one_pass: plane refused" in capsys.readouterr().err
