"""Retrieval metrics against hand-computed cases."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dasd_lib.metrics import chance_sumr, kfold_recall_metrics, recall_metrics, retrieval_ranks


def test_ranks_by_hand_two_captions_per_image():
    # 3 images, 2 captions each: caption j belongs to image j // 2.
    sim = np.array([
        [0.9, 0.1, 0.0],   # c0 (img0): rank 1
        [0.2, 0.5, 0.1],   # c1 (img0): img1 ahead -> rank 2
        [0.3, 0.8, 0.4],   # c2 (img1): rank 1
        [0.1, 0.2, 0.3],   # c3 (img1): img2 ahead -> rank 2
        [0.6, 0.5, 0.4],   # c4 (img2): img0, img1 ahead -> rank 3
        [0.0, 0.1, 0.7],   # c5 (img2): rank 1
    ])
    cap_img = np.array([0, 0, 1, 1, 2, 2])
    t2i, i2t = retrieval_ranks(sim, cap_img)
    assert t2i.tolist() == [1, 2, 1, 2, 3, 1]
    # img0 column: c0 .9 is top -> 1. img1 column: c2 .8 top -> 1.
    # img2 column: scores .0 .1 .4 .3 .4 .7 -> c5 first -> 1
    assert i2t.tolist() == [1, 1, 1]


def test_i2t_takes_best_caption():
    sim = np.array([
        [0.1, 0.9],  # c0 img0
        [0.8, 0.0],  # c1 img0
        [0.5, 0.2],  # c2 img1
    ])
    _, i2t = retrieval_ranks(sim, np.array([0, 0, 1]))
    # img0 column .1 .8 .5 -> c1 rank 1; img1 column .9 .0 .2 -> c2 rank 2 (c0 ahead)
    assert i2t.tolist() == [1, 2]


def test_recall_values_and_sumr():
    sim = np.array([[0.9, 0.1], [0.8, 0.2]])  # both captions pick image 0
    m = recall_metrics(sim, np.array([0, 1]))
    assert m["t2i_R1"] == 50.0 and m["t2i_R5"] == 100.0
    # img0 column: .9 .8 -> c0 rank 1; img1 column .1 .2 -> c1 rank 1
    assert m["i2t_R1"] == 100.0
    assert m["SumR"] == pytest.approx(50 + 100 + 100 + 100 + 100 + 100)
    assert m["AR"] == pytest.approx(m["SumR"] / 6)
    assert m["t2i_medr"] == 1.5 and m["t2i_meanr"] == 1.5
    assert m["image_retrieval_recall@1"] == 0.5
    assert m["text_retrieval_recall@1"] == 1.0


def test_ties_count_against_truth():
    m = recall_metrics(np.zeros((4, 4)), np.arange(4))
    assert m["t2i_R1"] == 0.0 and m["i2t_R1"] == 0.0


def test_kfold_matches_manual_blocks():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(8, 4))
    cap = np.repeat(np.arange(4), 2)
    k = kfold_recall_metrics(sim, cap, 2)
    a = recall_metrics(sim[:4, :2], cap[:4])
    b = recall_metrics(sim[4:, 2:], cap[4:] - 2)
    assert k["SumR"] == pytest.approx((a["SumR"] + b["SumR"]) / 2)
    with pytest.raises(ValueError, match="equal folds"):
        kfold_recall_metrics(sim, cap, 3)


def test_bad_shapes_rejected():
    with pytest.raises(ValueError, match="shape"):
        retrieval_ranks(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="no caption"):
        retrieval_ranks(np.zeros((2, 3)), np.array([0, 1]))


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 12), st.integers(1, 4), st.integers(0, 10_000))
def test_perfect_and_random_properties(n_img, cpi, seed):
    cap = np.repeat(np.arange(n_img), cpi)
    onehot = np.eye(n_img)[cap] + 1e-3 * np.random.default_rng(seed).random((len(cap), n_img))
    m = recall_metrics(onehot, cap)
    assert m["SumR"] == pytest.approx(600.0)
    # shuffling images and captions together leaves metrics unchanged
    perm = np.random.default_rng(seed).permutation(n_img)
    inv = np.argsort(perm)
    m2 = recall_metrics(onehot[:, perm], inv[cap])
    assert m2["SumR"] == pytest.approx(m["SumR"])


def test_chance_sumr_matches_simulation():
    rng = np.random.default_rng(1)
    n, c = 50, 5
    cap = np.repeat(np.arange(n), c)
    sims = [recall_metrics(rng.random((n * c, n)), cap)["SumR"] for _ in range(200)]
    assert np.mean(sims) == pytest.approx(chance_sumr(n, c), rel=0.05)


def test_official_i2t_protocol_counts_each_other_image_once():
    # 2 images, 3 captions each (caption j belongs to image j // 3). For image 0 its best own
    # caption scores 0.6; image 1's captions score 0.9, 0.8, 0.7 with image 0.
    sim = np.array([[0.6, 0.0], [0.1, 0.0], [0.2, 0.0],
                    [0.9, 0.5], [0.8, 0.4], [0.7, 0.3]])
    cap_img = np.array([0, 0, 0, 1, 1, 1])
    t2i, standard = retrieval_ranks(sim, cap_img)
    t2i_o, official = retrieval_ranks(sim, cap_img, protocol="official")
    assert standard.tolist() == [4, 1]  # three of image 1's captions ahead of 0.6
    assert official.tolist() == [2, 1]  # image 1 counts once, by its best caption (0.9)
    assert t2i.tolist() == t2i_o.tolist()
    assert recall_metrics(sim, cap_img, "official")["i2t_R1"] == 50.0
    with pytest.raises(ValueError, match="run.i2t_protocol: 'paper'"):
        retrieval_ranks(sim, cap_img, protocol="paper")


def test_an_images_own_tied_captions_never_count_against_it():
    # every image has a duplicated best caption: both peers give i2t R@1 100, not 0
    sim = np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.2, 0.8]])
    cap_img = np.array([0, 0, 1, 1])
    _, i2t = retrieval_ranks(sim, cap_img)
    assert i2t.tolist() == [1, 1]
    assert recall_metrics(sim, cap_img)["i2t_R1"] == 100.0


def test_non_finite_scores_are_refused():
    sim = np.full((4, 2), np.nan)
    with pytest.raises(ValueError, match="8 non-finite scores"):
        recall_metrics(sim, np.array([0, 0, 1, 1]))
    sim = np.eye(2)[[0, 0, 1, 1]].astype(float)
    sim[1, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        recall_metrics(sim, np.array([0, 0, 1, 1]))


def test_a_constant_matrix_scores_zero_below_the_candidate_count():
    m = recall_metrics(np.zeros((40, 20)), np.repeat(np.arange(20), 2))
    assert m["t2i_R1"] == m["t2i_R10"] == 0.0 and m["i2t_R1"] == 0.0


def test_kfold_refuses_images_without_captions():
    import pandas as pd
    from dasd_lib.evaluate import score_captions
    captions = pd.DataFrame({"image_id": ["a", "a", "c", "c"]})  # b has none: a gap
    emb = np.eye(4)
    with pytest.raises(ValueError, match="would shift the fold boundaries"):
        score_captions(emb[[0, 0, 2, 2]], captions, ["a", "b", "c", "d"], emb, kfold=2)
    assert score_captions(emb[[0, 0, 2, 2]], captions, ["a", "b", "c", "d"], emb)["n_images"] == 2
    # another set's images after this one's (no gap) leave the folds as they are
    tail = pd.DataFrame({"image_id": ["a", "b"]})
    assert score_captions(emb[[0, 1]], tail, ["a", "b", "c", "d"], emb, kfold=2)["n_images"] == 2


def test_i2t_protocol_is_checked_when_parameters_load():
    from dasd_lib.config import ConfigError, load_params
    assert load_params(None, ["run.i2t_protocol=official"]).run.i2t_protocol == "official"
    with pytest.raises(ConfigError, match="run.i2t_protocol is 'oficial'.*did you mean 'official'"):
        load_params(None, ["run.i2t_protocol=oficial"])
    with pytest.raises(ConfigError, match="run.eval_split is 'tset'"):
        load_params(None, ["run.eval_split=tset"])


@pytest.mark.parametrize("override,message", [
    ("cla.steps=-1", "cla.steps is -1; it counts training steps"),
    ("vlp.batch_size=0", "vlp.batch_size is 0; it must be at least 1"),
    ("run.settings=[fintune]", "run.settings names 'fintune'.*did you mean 'finetune'"),
    ("run.methods={zeroshoot: [dasd]}", "setting 'zeroshoot'"),
    ("run.device=gpu", "run.device is 'gpu', not one of auto, cpu, cuda"),
    ("cla.lr=0", "cla.lr is 0(.0)?; it must be more than 0"),
    ("cma.disc_lr=-1e-4", "cma.disc_lr is -0.0001; it must be more than 0"),
    ("run.eval_batch_size=0", "run.eval_batch_size is 0; it must be at least 1"),
    ("run.bootstrap_samples=-1", "run.bootstrap_samples is -1; it must be 0 or more"),
    ("run.seeds=[]", "run.seeds is empty"),
    ("data.langs=[de, fx]", "data.langs names 'fx', not one of de, fr, cs, ja, zh; did you mean 'fr'"),
    ("data.on_missing=skipp", "data.on_missing is 'skipp', not one of error, skip"),
    ("data.source=manfest", "data.source is 'manfest'.*did you mean 'manifest'"),
    ("vlp.precision=fp8", "vlp.precision is 'fp8', not one of auto, fp32, bf16"),
    ("cla.warmup_frac=1.5", "cla.warmup_frac is 1.5; it must be between 0 and 1"),
    ("explore.probe_test_frac=1.0", "explore.probe_test_frac is 1.0; it must be strictly between"),
    ("explore.probe_style=[styl]", "explore.probe_style names 'styl'.*did you mean 'style'"),
    ("data.n_test=0", "data.n_test is 0; the downstream corpus is what every method is tested on"),
    ("model.backbone=clip", "model.backbone is 'clip', not one of tiny, hf"),
])
@pytest.mark.fault
def test_bad_values_stop_when_parameters_load(override, message):
    from dasd_lib.config import ConfigError, load_params
    with pytest.raises(ConfigError, match=message):
        load_params(None, [override])
    assert load_params(None, ["run.device=cuda:1"]).run.device == "cuda:1"


def test_real_data_languages_are_not_limited_to_the_synthetic_five():
    from dasd_lib.config import load_params
    assert load_params(None, ["data.source=manifest", "data.langs=[es]"]).data.langs == ["es"]


@pytest.mark.parametrize("overrides,message", [
    (["data.source=manifest"], "data.path is empty; a manifest corpus needs its file"),
    (["data.source=manifest", "data.path=/nowhere/m.csv"], "data.path: /nowhere/m.csv does not exist"),
    (["data.source=release", "data.path=EXISTING", "data.english_path=/nowhere/en.json"],
     "data.english_path: /nowhere/en.json does not exist; it names the English captions"),
    (["model.backbone=hf"], "hf.clip_path is empty; backbone hf needs a CLIP folder"),
    (["model.backbone=hf", "hf.clip_path=/nowhere/clip"], "hf.clip_path: /nowhere/clip does not exist"),
    (["run.imported=/nowhere/imp", "run.methods={finetune: [dasd]}", "run.settings=[finetune]"], "run.imported: /nowhere/imp is not a folder"),
])
@pytest.mark.fault
def test_missing_inputs_stop_before_notebook_00(tmp_path, overrides, message):
    from dasd_lib.config import ConfigError, load_params
    from dasd_lib.pipeline import check_run
    existing = tmp_path / "m.json"
    existing.write_text("{}")
    params = load_params(None, [o.replace("EXISTING", str(existing)) for o in overrides])  # loading a run's params is fine
    with pytest.raises(ConfigError, match=message):
        check_run(params)
    # a hub id cannot be checked offline, so it passes
    check_run(load_params(None, ["model.backbone=hf", "hf.clip_path=openai/clip-vit-base-patch16"]))
    # a release corpus without English captions is allowed (they only add English rows)
    check_run(load_params(None, ["data.source=release", f"data.path={existing}"]))


@pytest.mark.fault
def test_unknown_method_names_stop_before_a_run_starts(tmp_path):
    from dasd_lib.config import ConfigError, load_params
    from dasd_lib.pipeline import check_methods
    with pytest.raises(ConfigError, match="run.methods.finetune: unknown method 'dasdd'; did you mean 'dasd'"):
        check_methods(load_params(None, ["run.methods={finetune: [dasdd]}"]))
    from dasd_lib.run import run_notebooks
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "p.yaml").write_text("run: {methods: {finetune: [statik]}}\n")
    with pytest.raises(ConfigError, match="unknown method 'statik'"):
        run_notebooks(tmp_path / "params" / "p.yaml", run_id="x", notebooks_dir=tmp_path / "notebooks",
                      reports_dir=tmp_path / "reports")
    assert not (tmp_path / "reports" / "x").exists()
