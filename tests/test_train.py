"""Training stages: resume equals an uninterrupted run, the frozen-output cache changes
nothing and is never stale, non-finite losses stop with a message, every method trains."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from dasd_lib import train as T
from dasd_lib.checkpoint import load_state
from dasd_lib.context import Run
from dasd_lib.pipeline import load_losses, train_stage_all


def _cla_data(params, run_dir, use_cache=True):
    run = Run(params, run_dir)
    backbone = run.backbone("finetune")
    rows = T.training_rows(run.table(params.data), params.data.langs)
    feats = T.frozen_features(backbone, rows, image_size=params.data.image_size,
                              cache_dir=run_dir / "artifacts" / "cache", device=torch.device("cpu"),
                              use_cache=use_cache)
    return backbone, rows, feats


def _train(params, run_dir, out, stage="cla", method="dasd", data=None, **kw):
    backbone, rows, feats = _cla_data(params, run_dir)
    data = data or T.make_target_data(backbone, rows, feats, with_images=(stage == "cma"))
    return T.train_target_stage(params=params, stage=stage, method=method, seed=0, backbone=backbone,
                                data=data, out_dir=out, **kw)


def _weights(out):
    tensors, _ = load_state(out / "model")
    return tensors


# resume after a kill: tests/test_faults.py kills a real training process (SIGKILL) mid-write
# and after a checkpoint, and compares the resumed weights and losses bit for bit


def test_cache_gives_identical_features_and_losses(smoke_run, tmp_path):
    params, run_dir = smoke_run
    backbone, rows, cached = _cla_data(params, run_dir)
    _, _, again = _cla_data(params, run_dir)
    assert again.from_cache
    _, _, fresh = _cla_data(params, run_dir, use_cache=False)
    assert not fresh.from_cache
    assert torch.equal(again.image_emb, fresh.image_emb) and torch.equal(again.text_emb, fresh.text_emb)
    r1 = _train(params, run_dir, tmp_path / "a", data=T.make_target_data(backbone, rows, again, False))
    r2 = _train(params, run_dir, tmp_path / "b", data=T.make_target_data(backbone, rows, fresh, False))
    np.testing.assert_array_equal(r1.losses.total.values, r2.losses.total.values)


def test_changed_weights_or_images_never_reuse_cache(smoke_run, tmp_path):
    params, run_dir = smoke_run
    backbone, rows, feats = _cla_data(params, run_dir)
    key = feats.key
    images = rows.drop_duplicates("image_id").image_path.tolist()
    texts = sorted(set(rows.source_caption))
    assert T.cache_key(backbone, images, texts, params.data.image_size) == key
    assert T.cache_key(backbone, images, texts, params.data.image_size + 1) != key
    assert T.cache_key(backbone, images, texts[:-1], params.data.image_size) != key
    # touching an image file changes the key
    copy = tmp_path / "img.png"
    shutil.copyfile(images[0], copy)
    assert T.cache_key(backbone, [str(copy)] + images[1:], texts, params.data.image_size) != key
    # perturbing one frozen weight changes the identity and the key
    p = next(backbone.parameters())
    original = p.detach().clone()  # restored exactly: (x + 1) - 1 need not equal x
    with torch.no_grad():
        p.add_(1.0)
    try:
        assert T.cache_key(backbone, images, texts, params.data.image_size) != key
    finally:
        with torch.no_grad():
            p.copy_(original)
    assert T.cache_key(backbone, images, texts, params.data.image_size) == key


def test_nan_loss_stops_naming_step_and_term(smoke_run, tmp_path):
    params, run_dir = smoke_run
    backbone, rows, feats = _cla_data(params, run_dir)
    data = T.make_target_data(backbone, rows, feats, with_images=False)
    data.r_S = data.r_S.clone()
    data.r_S[:] = float("nan")
    with pytest.raises(T.TrainingError, match=r"loss term 'mse' is nan at step 0"):
        _train(params, run_dir, tmp_path / "nan", data=data)


def test_every_method_trains_both_stages(smoke_run):
    params, run_dir = smoke_run
    run = Run(params, run_dir)
    cla = train_stage_all(run, "nlt")   # alias of cla
    cma = train_stage_all(run, "le")    # alias of cma
    trained = {m for s in params.run.settings for m in params.run.methods[s] if m not in ("floor", "oracle")}
    assert set(cla.method) == trained and set(cma.method) == trained
    assert (cla.steps == params.cla.steps).all() and np.isfinite(cma.final_loss).all()
    losses = load_losses(run_dir, "cma")
    assert {"infonce", "total"} <= set(losses.columns)
    dasd = losses[losses.method == "dasd"]
    assert dasd[["sc", "adv", "d_acc"]].notna().all().all()
    assert losses[losses.method == "static"].get("adv", pd.Series(dtype=float)).isna().all()


def test_training_loop_reports_its_progress(tmp_path, monkeypatch):
    """The runner's heartbeat reads what run_loop writes to $DASD_PROGRESS_FILE."""
    from dataclasses import replace
    from conftest import smoke_params
    from dasd_lib.storage import PROGRESS_ENV, read_progress
    progress = tmp_path / "progress.json"
    monkeypatch.setenv(PROGRESS_ENV, str(progress))
    net = torch.nn.Linear(2, 1)
    x = torch.randn(4, 2)

    def step_fn(step):
        loss = net(x).pow(2).mean()
        return {"mse": loss, "total": loss}

    task = T.TrainTask(modules={"net": net}, optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                       step_fn=step_fn, batch_size=4, params_to_clip=list(net.parameters()))
    cfg = replace(smoke_params(tmp_path).cla, checkpoint_every=0)
    T.run_loop(task, cfg, stage="cla", steps=5, out_dir=tmp_path / "run", desc="cla finetune dasd s0")
    assert {k: v for k, v in read_progress(progress).items() if k != "time"} == \
        {"what": "cla finetune dasd s0", "done": 5, "total": 5}
