"""benchmarks.encoder_frontier: lowered search settings reach the encoder, every record
decodes, and the shipped settings are back afterwards."""

import json

import pytest

from benchmarks import encoder_frontier
from medcodec import wavefront

from conftest import pydicom_file


def test_settings_reach_the_encoder_and_are_restored(tmp_path, capsys):
    shipped = {k: getattr(wavefront, k) for k in encoder_frontier.SETTINGS}
    out = tmp_path / "f.json"
    args = [pydicom_file("CT_small.dcm"), "--split", "all", "--runs", "1", "--json", str(out),
            "--set", "LS_ROUNDS=1,LS_SAMPLE=4096", "--set", "LS_L1_ITERATIONS=1"]
    assert encoder_frontier.main(args) == 0
    assert {k: getattr(wavefront, k) for k in encoder_frontier.SETTINGS} == shipped
    text = capsys.readouterr().out
    assert "shipped" in text and "LS_ROUNDS=1,LS_SAMPLE=4096" in text and "CT_small.dcm" in text
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert len(row["bytes"]) == 3 and all(s > 0 for s in row["seconds"])
    # Each lowered setting codes CT_small (128 x 128, 12 bits: fitted predictors) differently.
    assert row["bytes"][1] != row["bytes"][0] and row["bytes"][2] != row["bytes"][0]
    summary = data["summary"]
    assert [s["setting"] for s in summary] == ["shipped", "LS_ROUNDS=1,LS_SAMPLE=4096", "LS_L1_ITERATIONS=1"]
    assert summary[0]["size_change"] == 0
    assert summary[1]["size_change"] == pytest.approx(row["bytes"][1] / row["bytes"][0] - 1)


def test_settings_are_restored_when_the_encoder_fails():
    before = wavefront.LS_ROUNDS

    def fail():
        assert wavefront.LS_ROUNDS == 1
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        encoder_frontier._with({"LS_ROUNDS": 1}, fail)
    assert wavefront.LS_ROUNDS == before


@pytest.mark.parametrize("bad", ["LS_ROUNDS", "NOPE=1", "LS_ROUNDS=x", "LS_ROUNDS=0",
                                 f"LS_MAX_CLASSES={wavefront.LS_MAX_CLASSES + 1}"])
def test_bad_settings_are_refused(bad, capsys):
    with pytest.raises(SystemExit):
        encoder_frontier.main(["pydicom", "--set", bad])
    assert "error" in capsys.readouterr().err


def test_an_empty_split_says_so(tmp_path, capsys):
    assert encoder_frontier.main([str(tmp_path), "--split", "all"]) == 2
    assert "no images" in capsys.readouterr().err


def test_a_record_that_does_not_decode_is_reported_not_raised(monkeypatch, capsys):
    from pipelines.standard_codecs import OurCodec

    monkeypatch.setattr(OurCodec, "decode", lambda self, blobs, image: image.values + 1)
    assert encoder_frontier.main([pydicom_file("CT_small.dcm"), "--split", "all", "--runs", "1"]) == 1
    assert "does not decode" in capsys.readouterr().err
