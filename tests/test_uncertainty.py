"""Uncertainty: per-image hit counts, the paired bootstrap over test images, the seed
t-interval, and the comparisons table, against cases small enough to check by hand."""
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from dasd_lib.evaluate import COMPARISON_COLUMNS, compare_methods
from dasd_lib.metrics import (bootstrap_weights, draws_to_weights, kfold_ranks,
                              kfold_recall_metrics, paired_differences, per_image_hits,
                              recall_metrics_and_hits, retrieval_ranks, seed_interval,
                              sumr_replicates)

# 3 images with 2, 1 and 3 captions: caption j belongs to image CAPTION_IMAGE[j]
CAPTION_IMAGE = np.array([0, 0, 1, 2, 2, 2])
# method A: image ranks of each caption, best caption rank of each image
A_T2I, A_I2T = np.array([1, 7, 2, 1, 1, 30]), np.array([1, 4, 12])
# method B: every image finds a caption at rank 1; image 2's captions rank it 9th
B_T2I, B_I2T = np.array([1, 1, 1, 9, 9, 9]), np.array([1, 1, 1])


def hand_case():
    return (per_image_hits(A_T2I, A_I2T, CAPTION_IMAGE),
            per_image_hits(B_T2I, B_I2T, CAPTION_IMAGE))


def test_per_image_hits_by_hand():
    a, _ = hand_case()
    assert a.shape == (3, 1, 2, 4)
    # i2t: one query per image; image 1's best caption at rank 4 hits @5 and @10
    assert a[:, 0, 0].tolist() == [[1, 1, 1, 1], [1, 0, 1, 1], [1, 0, 0, 0]]
    # t2i: captions per image, and how many rank their image <= 1, 5, 10
    assert a[:, 0, 1].tolist() == [[2, 1, 1, 2], [1, 0, 1, 1], [3, 2, 2, 2]]


def test_bootstrap_replicates_by_hand():
    a, b = hand_case()
    draws = np.array([[0, 1, 2],    # the full set again
                      [0, 0, 2],    # weights (2, 0, 1)
                      [1, 1, 1]])   # weights (0, 3, 0)
    weights = draws_to_weights(draws, 3)
    assert weights.tolist() == [[1, 1, 1], [2, 0, 1], [0, 3, 0]]
    sumr = sumr_replicates(weights, [a, b])
    # full set, A: i2t 1/3 + 2/3 + 2/3, t2i (1+0+2)/6 + (1+1+2)/6 + (2+1+2)/6 -> 100 (5/3 + 2)
    # B: i2t 3, t2i 3/6 + 3/6 + 6/6 = 2 -> 500
    assert sumr[0] == pytest.approx([100 * (5 / 3 + 2), 500.0])
    # weights (2, 0, 1): A i2t 3 x 2/3 = 2, t2i (2+2)/7 + (2+2)/7 + (4+2)/7 = 2 -> 400;
    # B i2t 3, t2i (4+0)/7 + 4/7 + (4+3)/7 = 15/7 -> 300 + 1500/7
    assert sumr[1] == pytest.approx([400.0, 300 + 1500 / 7])
    # weights (0, 3, 0): only image 1. A: i2t 0 + 1 + 1, t2i 0 + 1 + 1 -> 400; B: 600
    assert sumr[2] == pytest.approx([400.0, 600.0])

    table = pd.DataFrame(np.vstack([sumr[[0]], sumr]).T,  # column 0: the full set
                         index=pd.MultiIndex.from_tuples([("a", "de", 0), ("b", "de", 0)],
                                                         names=["method", "lang", "seed"]))
    diff = paired_differences(table, "a", "b").set_index("lang")
    assert list(diff.index) == ["avg", "de"]
    row = diff.loc["de"]
    assert row.diff_SumR == pytest.approx(-400 / 3)
    # replicates sorted: -200, -400/3, -800/7; numpy's linear percentile at 2.5 % sits at
    # position 0.05 between the first two, at 97.5 % at 1.95 between the last two
    assert row.ci_low == pytest.approx(-200 + 0.05 * (200 - 400 / 3))
    assert row.ci_high == pytest.approx(-400 / 3 + 0.95 * (400 / 3 - 800 / 7))
    assert bool(row.significant)  # all three replicates are below 0
    assert row.SumR == pytest.approx(100 * (5 / 3 + 2)) and row.SumR_baseline == pytest.approx(500)
    assert diff.loc["avg"].diff_SumR == pytest.approx(row.diff_SumR)  # one language


def test_average_over_languages_and_seeds_per_replicate():
    # columns: full set, then two replicates; method a has two seeds, b one
    index = pd.MultiIndex.from_tuples(
        [("a", "de", 0), ("a", "de", 1), ("a", "fr", 0), ("a", "fr", 1), ("b", "de", 0),
         ("b", "fr", 0)], names=["method", "lang", "seed"])
    table = pd.DataFrame([[10, 12, 14], [20, 22, 24], [30, 30, 30], [40, 42, 44],
                          [5, 5, 5], [45, 40, 35]], index=index, dtype=float)
    diff = paired_differences(table, "a", "b").set_index("lang")
    # de: mean over seeds (15, 17, 19) - 5 -> 10 (replicates 12, 14); fr: (35, 36, 37) - (45,
    # 40, 35) -> -10 (replicates -4, 2); avg per replicate: 0 (4, 8)
    assert diff.diff_SumR.to_dict() == {"avg": 0.0, "de": 10.0, "fr": -10.0}
    assert diff.loc["avg", "ci_low"] == pytest.approx(4 + 0.025 * 4)
    assert diff.loc["avg", "ci_high"] == pytest.approx(4 + 0.975 * 4)
    assert bool(diff.loc["avg", "significant"]) and not bool(diff.loc["fr", "significant"])
    assert (diff.n_seeds == 2).all()


def random_hits(rng, n_images, captions_per_image=2, folds=0):
    cap = np.repeat(np.arange(n_images), captions_per_image)
    sim = rng.normal(size=(len(cap), n_images))
    return recall_metrics_and_hits(sim, cap, folds)[1]


def test_identical_methods_differ_by_exactly_zero():
    rng = np.random.default_rng(3)
    hits = random_hits(rng, 40)
    weights = np.vstack([np.ones((1, 40)), bootstrap_weights(40, 200, seed=5)])
    sumr = sumr_replicates(weights, [hits, hits.copy()])
    table = pd.DataFrame(sumr.T, index=pd.MultiIndex.from_tuples(
        [("a", "de", 0), ("b", "de", 0)], names=["method", "lang", "seed"]))
    diff = paired_differences(table, "a", "b")
    assert (diff[["diff_SumR", "ci_low", "ci_high"]].to_numpy() == 0).all()
    assert not diff.significant.any()


def test_better_on_every_image_excludes_zero():
    rng = np.random.default_rng(4)
    n = 30
    cap = np.repeat(np.arange(n), 2)
    worse = per_image_hits(rng.integers(2, 40, size=2 * n), rng.integers(2, 40, size=n), cap)
    better = per_image_hits(np.ones(2 * n, int), np.ones(n, int), cap)  # hits everything
    scored = pd.DataFrame({"setting": "finetune", "method": ["dasd", "static"], "seed": 0,
                           "lang": "de", "variant": "native"})
    out = compare_methods(scored, [better, worse], compare_to="dasd", n_boot=300, seed=1)
    assert list(out.columns) == COMPARISON_COLUMNS
    assert list(out.lang) == ["avg", "de"] and set(out.baseline) == {"static"}
    assert (out.ci_low > 0).all() and out.significant.all()
    assert (out.n_images == n).all() and (out.n_boot == 300).all()


def test_kfold_hits_come_from_within_fold_ranks():
    rng = np.random.default_rng(0)
    cap = np.array([0, 0, 1, 2, 3, 3, 3, 4, 5, 5])  # 6 images, uneven caption counts
    sim = rng.normal(size=(len(cap), 6))
    t2i, i2t, fold = kfold_ranks(sim, cap, 2)
    assert fold.tolist() == [0, 0, 0, 1, 1, 1]
    first = np.flatnonzero(cap < 3)
    t2i_0, i2t_0 = retrieval_ranks(sim[np.ix_(first, np.arange(3))], cap[first])
    assert t2i[first].tolist() == t2i_0.tolist() and i2t[:3].tolist() == i2t_0.tolist()
    metrics, hits = recall_metrics_and_hits(sim, cap, 2)
    assert hits.shape == (6, 2, 2, 4)
    assert (hits[:3, 1] == 0).all() and (hits[3:, 0] == 0).all()  # each image in one fold
    # reweighting with ones gives back the k-fold protocol's SumR (mean over folds)
    assert sumr_replicates(np.ones((1, 6)), [hits])[0, 0] == pytest.approx(metrics["SumR"])
    assert metrics["SumR"] == pytest.approx(kfold_recall_metrics(sim, cap, 2)["SumR"])
    # a replicate that draws from fold 0 only averages over that fold alone
    only_first = sumr_replicates(draws_to_weights([[0, 1, 2, 0, 1, 2]], 6), [hits])[0, 0]
    assert only_first == pytest.approx(sumr_replicates(np.ones((1, 3)), [hits[:3, :1]])[0, 0])


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 9), st.integers(1, 3), st.sampled_from([0, 2]), st.integers(0, 10_000))
def test_full_set_weights_reproduce_recall_metrics(n_half, cpi, folds, seed):
    rng = np.random.default_rng(seed)
    n = 2 * n_half
    cap = np.repeat(np.arange(n), cpi)
    cap = np.concatenate([cap, rng.integers(0, n, size=3)])  # some images with more captions
    sim = rng.normal(size=(len(cap), n)).round(1)  # ties too
    metrics, hits = recall_metrics_and_hits(sim, cap, folds)
    assert sumr_replicates(np.ones((1, n)), [hits])[0, 0] == pytest.approx(metrics["SumR"])


def test_bootstrap_weights_are_seeded_counts():
    w = bootstrap_weights(50, 20, seed=7)
    assert w.shape == (20, 50) and (w.sum(axis=1) == 50).all()
    assert (w == bootstrap_weights(50, 20, seed=7)).all()
    assert not (w == bootstrap_weights(50, 20, seed=8)).all()
    assert bootstrap_weights(50, 0).shape == (0, 50)


def test_seed_interval_by_hand():
    out = seed_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / np.sqrt(3)  # t_{0.975, 2} * std 1 / sqrt(3)
    assert out["mean"] == 2.0 and out["std"] == 1.0 and out["n"] == 3
    assert out["ci_low"] == pytest.approx(2 - half) and out["ci_high"] == pytest.approx(2 + half)
    one = seed_interval([5.0])
    assert one["mean"] == 5.0 and np.isnan(one["std"]) and np.isnan(one["ci_low"])


def test_compare_methods_skips_a_setting_without_compare_to(caplog):
    rng = np.random.default_rng(2)
    scored = pd.DataFrame({"setting": ["finetune", "finetune", "zeroshot"],
                           "method": ["dasd", "floor", "static"], "seed": 0, "lang": "de",
                           "variant": "native"})
    hits = [random_hits(rng, 10) for _ in range(3)]
    with caplog.at_level("INFO", logger="dasd_lib.evaluate"):
        out = compare_methods(scored, hits, n_boot=50)
    assert set(out.setting) == {"finetune"} and set(out.baseline) == {"floor"}
    assert "zeroshot" in caplog.text and "compare_to" in caplog.text
    none = compare_methods(scored, hits, compare_to="nope", n_boot=10)
    assert none.empty and list(none.columns) == COMPARISON_COLUMNS
    # no replicates: point estimates, no intervals
    plain = compare_methods(scored, hits, n_boot=0)
    assert plain.ci_low.isna().all() and not plain.significant.any()
    # the same inputs give the same table
    pd.testing.assert_frame_equal(compare_methods(scored, hits, n_boot=50), out)


def test_a_replicate_without_images_of_a_language_is_left_out():
    # zh has captions for images 0 and 1 only (zero counts elsewhere, as evaluation pads)
    rng = np.random.default_rng(6)
    zh = np.zeros((4, 1, 2, 4))
    zh[:2] = random_hits(rng, 2)
    weights = draws_to_weights([[0, 1, 2, 3], [2, 3, 3, 2], [0, 0, 1, 3]], 4)
    sumr = sumr_replicates(weights, [zh])[:, 0]
    assert np.isfinite(sumr[[0, 2]]).all() and np.isnan(sumr[1])  # drew no zh image
    index = pd.MultiIndex.from_tuples([("a", "de", 0), ("a", "zh", 0), ("b", "de", 0),
                                       ("b", "zh", 0)], names=["method", "lang", "seed"])
    table = pd.DataFrame([[1, 2, 3, 4], [10, np.nan, 30, 50], [0, 0, 0, 0], [0, np.nan, 0, 0]],
                         index=index, dtype=float)
    diff = paired_differences(table, "a", "b").set_index("lang")
    # zh from replicates 30 and 50 only; avg from the replicates with both: (3+30)/2, (4+50)/2
    assert diff.loc["zh", ["ci_low", "ci_high"]].tolist() == pytest.approx([30.5, 49.5])
    assert diff.loc["avg", ["ci_low", "ci_high"]].tolist() == pytest.approx(
        [16.5 + 0.025 * 10.5, 16.5 + 0.975 * 10.5])
    assert diff.loc["de", ["ci_low", "ci_high"]].tolist() == pytest.approx([2.05, 3.95])
