"""Same input, same output; no stale stage: the tokenizers and the tiny VLP come out the
same for the same inputs, and every VLP, checkpoint and model is refused when what it
was made from differs from what is asked for (library calls, interactive mode, runner)."""
from __future__ import annotations

import shutil
from pathlib import Path
from dataclasses import replace

import pytest
import torch

from conftest import smoke_params
from dasd_lib import context, pipeline, train as T
from dasd_lib.backbones import train_wordpiece
from dasd_lib.checkpoint import (StaleStageError, check_record, make_record, read_meta,
                                 record_differences)
from dasd_lib.context import Run, RunPaths
from dasd_lib.pipeline import train_stage_all
from dasd_lib.vlp_stage import source_vlp
from dasd_lib.run import RunError, stages_to_restart

TEXTS = ["a small red heart on the left.", "there is a big blue square at the top.",
         "ein kleines rotes Herz links.", "一个大的蓝色的正方形在上面。", "小さい赤いハートが左にあります。"] * 3


def test_wordpiece_vocabulary_is_the_same_on_every_call():
    vocabs = [train_wordpiece(TEXTS, 60, context_length=16).get_vocab() for _ in range(5)]
    assert all(v == vocabs[0] for v in vocabs)
    # the budget keeps the specials and the alphabet (here above it), then the most
    # frequent words, ties alphabetical
    n_alpha = sum(t.startswith("##") for t in vocabs[0])
    assert len(vocabs[0]) == 4 + 2 * n_alpha and "[PAD]" in vocabs[0] and "##r" in vocabs[0]
    two = train_wordpiece(TEXTS + ["left left"], 4 + 2 * n_alpha + 2, context_length=16).get_vocab()
    assert sorted(set(two) - set(vocabs[0])) == ["left", "the"]  # 5 and 6 times; "ein": 3
    big = train_wordpiece(TEXTS, 1000, context_length=16)
    assert big.tokenize("a small red heart") == ["a", "small", "red", "heart"]
    assert "[UNK]" not in big.tokenize("reds hearts")  # unseen words fall back to characters


def test_record_differences_name_the_keys():
    a = make_record({"kind": "t", "method": "dasd"}, {"cla": {"lr": 1e-3, "steps": 5}, "seed": 0})
    b = make_record({"kind": "t", "method": "dasd"}, {"cla": {"lr": 2e-3, "steps": 5}, "seed": 0})
    assert record_differences(a, a) == []
    assert record_differences(a, b) == ["cla.lr: 0.001 -> 0.002"]
    assert "no fingerprint" in record_differences(None, b)[0]
    with pytest.raises(StaleStageError, match="cla.lr: 0.001 -> 0.002"):
        check_record(a, b, "here")


def test_tiny_vlp_is_identical_from_the_same_parameters(smoke_run, tmp_path):
    params, run_dir = smoke_run
    other = tmp_path / "again"
    source_vlp(Run(params, other))
    ident = lambda d: read_meta(RunPaths(d).backbone)["identity"]  # noqa: E731
    assert ident(other) == ident(run_dir)
    # another VLP seed gives another VLP, and the folder then refuses the old parameters
    seeded = replace(params, run=replace(params.run, vlp_seed=1))
    with pytest.raises(StaleStageError, match="seed: 0 -> 1"):
        source_vlp(Run(seeded, other))
    source_vlp(Run(seeded, other), restart=True)
    assert ident(other) != ident(run_dir)


def _data(params, run_dir, backbone=None):
    run = Run(params, run_dir)
    backbone = backbone or run.backbone("finetune")
    rows = T.training_rows(run.table(params.data), params.data.langs)
    feats = T.frozen_features(backbone, rows, image_size=params.data.image_size,
                              cache_dir=run_dir / "artifacts" / "cache", device=torch.device("cpu"))
    return backbone, T.make_target_data(backbone, rows, feats, with_images=True)


@pytest.mark.fault
def test_finished_stage_with_other_parameters_is_refused(smoke_run, tmp_path):
    params, run_dir = smoke_run
    backbone, data = _data(params, run_dir)
    kw = dict(stage="cla", method="dasd", seed=0, backbone=backbone, data=data, setting="finetune",
              out_dir=tmp_path / "cla")
    first = T.train_target_stage(params=params, **kw)
    again = T.train_target_stage(params=params, **kw)  # same inputs: the finished stage is reused
    assert again.seconds == 0.0 and again.losses.equals(first.losses)
    changed = replace(params, cla=replace(params.cla, lr=2e-3, lambda_adv=0.5))
    with pytest.raises(StaleStageError) as err:
        T.train_target_stage(params=changed, **kw)
    assert "cla.lr: 0.001 -> 0.002" in str(err.value) and "cla.lambda_adv" in str(err.value)
    assert "--restart-stage cla" in str(err.value)
    redone = T.train_target_stage(params=changed, restart=True, **kw)
    assert redone.seconds > 0 and not redone.losses.equals(first.losses)
    # how often it checkpoints or logs is not part of what it is
    quiet = replace(changed, cla=replace(changed.cla, log_every=0, checkpoint_every=1))
    assert T.train_target_stage(params=quiet, **kw).seconds == 0.0
    # CMA starting from a CLA model made with other inputs is refused
    with pytest.raises(StaleStageError, match="cla.lr: 0.002 -> 0.001"):
        T.train_target_stage(params=params, **{**kw, "stage": "cma", "out_dir": tmp_path / "cma"},
                             init_from=tmp_path / "cla" / "model")


def test_rebuilt_backbone_does_not_take_old_target_models(smoke_run, tmp_path):
    params, run_dir = smoke_run
    backbone, data = _data(params, run_dir)
    kw = dict(params=params, stage="cla", method="static", seed=0, setting="finetune",
              out_dir=tmp_path / "cla")
    T.train_target_stage(backbone=backbone, data=data, **kw)
    other = replace(params, run=replace(params.run, vlp_seed=7))
    source_vlp(Run(other, tmp_path / "run2"))
    new_backbone, new_data = _data(other, tmp_path / "run2")
    with pytest.raises(StaleStageError, match="backbone.weights_hash"):
        T.train_target_stage(backbone=new_backbone, data=new_data, **kw)


@pytest.mark.fault
def test_swapped_method_folders_and_changed_parameters_are_refused_at_evaluation(tmp_path):
    params = smoke_params(tmp_path, "run.settings=[finetune]",
                          "run.methods={finetune: [static, dasd]}")
    run_dir = tmp_path / "run"
    run = Run(params, run_dir)
    source_vlp(run)
    train_stage_all(run, "cla")
    train_stage_all(run, "cma")
    assert pipeline.load_trained_model(run, "finetune", "dasd", 0).method == "dasd"
    ck = run_dir / "artifacts" / "checkpoints" / "finetune"
    shutil.move(ck / "dasd", ck / "tmp")
    shutil.move(ck / "static", ck / "dasd")
    shutil.move(ck / "tmp", ck / "static")
    with pytest.raises(StaleStageError, match="method: 'static' -> 'dasd'"):
        pipeline.load_trained_model(run, "finetune", "dasd", 0)
    shutil.move(ck / "dasd", ck / "tmp")
    shutil.move(ck / "static", ck / "dasd")
    shutil.move(ck / "tmp", ck / "static")
    # interactive mode or a library call with other parameters: the trained models are refused
    changed = replace(params, cma=replace(params.cma, steps=4))
    with pytest.raises(StaleStageError, match="cma.steps: 3 -> 4"):
        pipeline.load_trained_model(Run(changed, run_dir), "finetune", "dasd", 0)
    with pytest.raises(StaleStageError, match="cma.steps: 3 -> 4"):
        train_stage_all(Run(changed, run_dir), "cma")
    # a changed CLA parameter reaches the CMA model through the record of its start
    cla_changed = replace(params, cla=replace(params.cla, lambda_sc=0.5))
    with pytest.raises(StaleStageError, match="init.inputs.cla.lambda_sc: 0.1 -> 0.5"):
        pipeline.load_trained_model(Run(cla_changed, run_dir), "finetune", "dasd", 0)


def test_shared_dir_trains_the_vlp_once(tmp_path):
    shared = tmp_path / "shared"
    a = smoke_params(tmp_path, f"run.shared_dir={shared}")
    b = smoke_params(tmp_path, f"run.shared_dir={shared}", "cla.lr=0.01", "model.adapter_rank=2")
    first = source_vlp(Run(a, tmp_path / "a"))
    second = source_vlp(Run(b, tmp_path / "b"))
    assert first.samples_per_s > 0 and second.samples_per_s == 0.0  # reused, not trained
    assert second.backbone.identity() == first.backbone.identity()
    assert len(list((shared / "vlp").iterdir())) == 2  # one VLP folder and its lock file
    assert list((shared / "cache").iterdir())  # the frozen caches are shared too
    # a VLP-side change trains (and shares) another one
    c = smoke_params(tmp_path, f"run.shared_dir={shared}", "vlp.lr=0.002")
    assert source_vlp(Run(c, tmp_path / "c")).samples_per_s > 0
    assert len([p for p in (shared / "vlp").iterdir() if p.is_dir()]) == 2


def test_restart_stage_includes_the_later_stages():
    assert stages_to_restart(["cla"]) == ["cla", "cma"]
    assert stages_to_restart(["le"]) == ["cma"]
    assert stages_to_restart(["cma,vlp"]) == ["vlp", "cla", "cma"]
    assert stages_to_restart(None) == []
    with pytest.raises(RunError, match="unknown stage"):
        stages_to_restart(["clx"])


def test_memoised_tables_and_backbones_follow_their_files(smoke_run, monkeypatch):
    """A Run memoises its corpus tables and loaded backbones, keyed on the files' size and
    mtime: a corpus or backbone rewritten on disk is read again. Another Run shares nothing."""
    import os
    params, run_dir = smoke_run
    calls = []
    real = context.load_corpus
    monkeypatch.setattr(context, "load_corpus", lambda cfg: calls.append(cfg.name) or real(cfg))
    run = Run(params, run_dir)
    first_table = run.table(params.data)
    first_table["caption"] = "changed by the caller"  # a copy: the memo is not changed
    assert (run.table(params.data).caption != "changed by the caller").all()
    assert len(calls) == 1
    captions = Path(params.data.root) / params.data.name / "captions.jsonl"
    stat = captions.stat()
    os.utime(captions, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten, same bytes
    run.table(params.data)
    assert len(calls) == 2
    Run(params, run_dir).table(params.data)  # a new Run reads it again
    assert len(calls) == 3
    first = run.backbone("finetune")
    assert run.backbone("finetune") is first and run.backbone("zeroshot") is first  # tiny: one VLP
    assert Run(params, run_dir).backbone("finetune") is not first
    weights = RunPaths(run_dir).backbone / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = run.backbone("finetune")
    assert again is not first and run.backbone("finetune") is again
    run.forget_backbones()
    assert run.backbone("finetune") is not again
