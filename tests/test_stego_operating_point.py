"""The operating-point steganalysis benchmark: features, classifier, grouped evaluation, CLI."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.steganalysis import roc_auc
from benchmarks.stego_operating_point import (
    FldEnsemble,
    bootstrap_auc_interval,
    grouped_out_of_fold,
    main,
    source_group,
    spam_features,
    tiles_of,
)


@given(rows=st.integers(4, 40), cols=st.integers(4, 40), seed=st.integers(0, 2**32 - 1))
def test_spam_features_are_two_normalised_histograms_and_transpose_invariant(rows, cols, seed):
    x = np.random.default_rng(seed).integers(0, 4096, (rows, cols))
    f = spam_features(x)
    assert f.shape == (686,) and (f >= 0).all()
    assert np.isclose(f[:343].sum(), 1.0) and np.isclose(f[343:].sum(), 1.0)
    assert np.allclose(spam_features(x.T), f)


def test_spam_features_of_flat_and_noisy_planes():
    flat = spam_features(np.full((16, 16), 100))
    zero = (3 * 7 + 3) * 7 + 3  # the (0, 0, 0) difference triple
    assert flat[zero] == 1.0 and flat[343 + zero] == 1.0
    noisy = spam_features(np.random.default_rng(0).integers(0, 4, (64, 64)))
    assert noisy[zero] < 0.2
    with pytest.raises(ValueError):
        spam_features(np.zeros((3, 10)))


def test_fld_ensemble_separates_shifted_classes_and_not_identical_ones():
    rng = np.random.default_rng(1)
    x0, x1 = rng.normal(0, 1, (80, 50)), rng.normal(0, 1, (80, 50))
    x1[:, :5] += 1.5  # Bayes AUC 0.99
    model = FldEnsemble(seed=0).fit(np.vstack([x0[:40], x1[:40]]), np.r_[np.zeros(40), np.ones(40)].astype(int))
    assert roc_auc(model.score(x0[40:]), model.score(x1[40:])) > 0.9
    same = rng.normal(0, 1, (80, 50))
    model = FldEnsemble(seed=0).fit(np.vstack([x0[:40], same[:40]]), np.r_[np.zeros(40), np.ones(40)].astype(int))
    assert 0.3 < roc_auc(model.score(x0[40:]), model.score(same[40:])) < 0.7


def test_grouped_cross_validation_never_scores_an_image_it_trained_on():
    """Features that only identify the image, labels constant per image: a split that let an
    image into both training and scoring would find the label; grouped folds cannot."""
    rng = np.random.default_rng(2)
    n_groups, per = 40, 6
    groups = np.repeat(np.arange(n_groups), per)
    identity = rng.normal(0, 1, (n_groups, 30))
    x = identity[groups] + 0.01 * rng.normal(0, 1, (groups.size, 30))
    y = (groups % 2).astype(int)
    grouped = grouped_out_of_fold(x, y, groups, folds=5)
    assert 0.25 < roc_auc(grouped[y == 0], grouped[y == 1]) < 0.75
    leaky = grouped_out_of_fold(x, y, np.arange(groups.size), folds=5)  # every tile its own group
    assert roc_auc(leaky[y == 0], leaky[y == 1]) > 0.9


def test_bootstrap_interval_brackets_the_auc():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(30), 4)
    y = np.tile([0, 1], 60)
    scores = rng.normal(0, 1, y.size) + 0.8 * y
    auc = roc_auc(scores[y == 0], scores[y == 1])
    lo, hi = bootstrap_auc_interval(scores, y, groups, n_boot=300)
    assert lo < auc < hi and hi - lo < 0.4


def test_one_image_in_several_syntaxes_is_one_source():
    assert source_group("693_UNCI.dcm") == source_group("693_J2KR.dcm") == "693"
    assert source_group("OBXXXX1A_2frame.dcm") == "OBXXXX1A" != source_group("MR_small.dcm")


def test_tiles_are_disjoint_and_central_first():
    tiles = tiles_of(np.zeros((1, 3, 600, 800)), 256, 4)
    assert len(tiles) == 4
    covered = np.zeros((600, 800), dtype=int)
    for rs, cs in tiles:
        covered[rs, cs] += 1
    assert covered.max() == 1 and covered[300, 400] == 1
    assert tiles_of(np.zeros((1, 1, 8, 8)), 256, 4) == []


def test_cli_runs_on_real_images_and_refuses_bad_options(tmp_path, capsys):
    out = tmp_path / "op.json"
    assert main(["--limit", "8", "--folds", "2", "--tiles", "1", "--tile", "64", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["images"] and {"tier", "payload_bytes", "changes_per_value", "changes_per_embeddable_value"} <= set(
        report["images"][0])
    for key in ("stego_at_operating_point", "control_lsb_replacement_all_values"):
        r = report["detection"][key]
        assert 0.0 <= r["auc"] <= 1.0 and r["ci95"][0] <= r["ci95"][1]
    assert "SPAM-686" in capsys.readouterr().out
    for bad in (["--folds", "1"], ["--tile", "0"]):
        with pytest.raises(SystemExit) as info:
            main(bad)
        assert info.value.code == 2
