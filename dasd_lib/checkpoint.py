"""Target-language models on disk: `save_pretrained(model, dir)` / `from_pretrained(dir,
backbone)` store a dasd_lib.model.TargetTextModel as `model.safetensors` + `config.json`
(a dasd_lib.storage state folder with save_pretrained's file names; backbone folders use
them too). Only the model's own weights are stored, never the frozen backbone's; the
backbone's identity (name and weights hash), the method, the model config, the language
set and the record of the stage that trained it are kept, and loading onto another
backbone or language set, or for another stage, fails with an error that says which.

Training-state folders (the loop's checkpoints): `save_training_state` / `load_training_state`
write and read a step-<n>/ folder holding the trainable weights of a task's modules, its
optimisers' state, the schedule, the step and the stage's record; `latest_checkpoint`
finds the newest readable one; `clear_partial_writes` and `remove_tree` keep a killed
process from leaving anything that could be read as a checkpoint.

The storage names (CheckpointError, load_state, fingerprint, ...) are re-exported here,
where most callers look for them.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .backbones.base import Backbone
from .config import ModelConfig, saved_model_config
from .model import TargetTextModel, build_target_model
from .storage import (PRETRAINED_FILES, STATE_FILES, CheckpointError, StaleStageError,  # noqa: F401
                      atomic_csv, atomic_dir, atomic_file, atomic_write, check_record, file_sha256,
                      fingerprint, load_state, make_record, read_meta, record_differences,
                      save_state, write_state)

MODEL_KIND = "dasd_target_model"
log = logging.getLogger("dasd_lib.checkpoint")


def save_pretrained(model: TargetTextModel, folder: str | Path,
                    extra_meta: dict[str, Any] | None = None,
                    record: dict[str, Any] | None = None) -> Path:
    """Save a target model's own weights, its config, method, languages and backbone identity,
    and the `record` (make_record) of the stage that trained it."""
    meta = {
        "record": record,
        "kind": MODEL_KIND,
        "method": model.method,
        "spec": dataclasses.asdict(model.spec),
        "model_config": dataclasses.asdict(model.cfg),
        "langs": list(model.langs),
        "backbone": model.backbone.identity(),
        "extra": extra_meta or {},
    }
    return save_state(folder, model.saved_state_dict(), meta, PRETRAINED_FILES)


def check_backbone(meta: dict[str, Any], backbone: Backbone, where: str) -> None:
    """Fail unless `backbone` is the one the checkpoint was trained on."""
    want, have = meta.get("backbone", {}), backbone.identity()
    if want.get("name") != have["name"]:
        raise CheckpointError(
            f"{where} was trained on backbone '{want.get('name')}', but the backbone given is "
            f"'{have['name']}'; load the run's own backbone (artifacts/backbone/)")
    if want.get("weights_hash") != have["weights_hash"]:
        raise CheckpointError(
            f"{where} was trained on backbone '{have['name']}' with weights hash "
            f"{str(want.get('weights_hash'))[:12]}..., but the given backbone's weights hash is "
            f"{have['weights_hash'][:12]}... (same architecture, other weights: another VLP "
            f"training or fine-tune); load the run's own backbone (artifacts/backbone/)")


def from_pretrained(folder: str | Path, backbone: Backbone, langs: list[str] | None = None,
                    device: str | torch.device = "cpu", expect: dict[str, Any] | None = None,
                    remedy: str = "") -> TargetTextModel:
    """Rebuild a target model from `folder` on `backbone`.

    `langs`, when given, must equal the checkpoint's language set (order ignored).
    `expect`, when given, is the record (make_record) of the stage asked for: a model made
    by another stage, method, seed or other inputs raises StaleStageError naming them."""
    folder = Path(folder)
    tensors, meta = load_state(folder, "cpu", PRETRAINED_FILES)
    if meta.get("kind") != MODEL_KIND:
        raise CheckpointError(f"{folder}: holds '{meta.get('kind')}', not a target-language model")
    check_backbone(meta, backbone, f"checkpoint {folder}")
    if expect is not None:
        check_record(meta.get("record"), expect, f"model {folder}", remedy)
    saved_langs = list(meta["langs"])
    if langs is not None and sorted(langs) != sorted(saved_langs):
        raise CheckpointError(
            f"checkpoint {folder} was trained for languages {saved_langs}, but languages "
            f"{list(langs)} were asked for; train a model for that language set or pass "
            f"langs={saved_langs}")
    cfg = saved_model_config(ModelConfig, meta["model_config"], f"{folder / PRETRAINED_FILES[1]} [model_config]")
    model = build_target_model(backbone, cfg, meta["method"], saved_langs)
    model.load_saved_state_dict(tensors, where=str(folder / PRETRAINED_FILES[0]))
    return model.to(device)


# ----------------------------------------------------------------------------- training-state folders

def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict, dict]:
    """Optimizer state as flat tensors + JSON meta, so checkpoints stay pickle-free."""
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state_keys": {}}
    for idx, state in sd["state"].items():
        meta["state_keys"][str(idx)] = sorted(state)
        for name, value in state.items():
            tensors[f"{prefix}.{idx}.{name}"] = torch.as_tensor(value).clone()
    return tensors, meta


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict, prefix: str) -> None:
    state = {int(idx): {name: tensors[f"{prefix}.{idx}.{name}"] for name in names}
             for idx, names in meta["state_keys"].items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def trainable_state(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{n}": p.detach().cpu().clone() for n, p in module.named_parameters()
            if p.requires_grad}


def save_training_state(path: Path, task, scheduler, step: int, stage: str,
                         record: dict | None = None) -> None:
    tensors, meta = {}, {"stage": stage, "step": step, "scheduler": scheduler.state_dict(),
                         "optimizers": {}, "record": record}
    for name, module in task.modules.items():
        tensors.update(trainable_state(module, name))
    for name, opt in {"main": task.optimizer, **task.extra_optimizers}.items():
        t, m = optimizer_tensors(opt, f"opt_{name}")
        tensors.update(t)
        meta["optimizers"][name] = m
    save_state(path, tensors, meta)


def load_training_state(path: Path, task, scheduler, stage: str,
                         record: dict | None = None) -> int:
    tensors, meta = load_state(path)
    if meta.get("stage") != stage:
        raise CheckpointError(f"checkpoint {path} is from stage '{meta.get('stage')}', not '{stage}'")
    if record is not None:
        check_record(meta.get("record"), record, f"checkpoint {path}")
    for name, module in task.modules.items():
        own = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        missing, unexpected = module.load_state_dict(own, strict=False)
        if unexpected:
            raise CheckpointError(f"checkpoint {path}: unexpected weights for '{name}': {unexpected[:3]}")
    for name, opt in {"main": task.optimizer, **task.extra_optimizers}.items():
        load_optimizer(opt, tensors, meta["optimizers"][name], f"opt_{name}")
    scheduler.load_state_dict(meta["scheduler"])
    return int(meta["step"])


STEP_DIR_RE = re.compile(r"^step-(\d+)$")


def step_dirs(out_dir: Path) -> list[Path]:
    """The step-<n> checkpoint folders in out_dir, oldest first (stray names are not ours)."""
    found = [(int(m.group(1)), p) for p in Path(out_dir).iterdir() if (m := STEP_DIR_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def clear_partial_writes(out_dir: Path) -> None:
    """Remove what a killed process left half-done: atomic_dir temp folders, folders being
    deleted, the loss file's temp copy. All are hidden and never read as checkpoints."""
    for p in Path(out_dir).iterdir():
        if p.name.startswith((".step-", ".losses.csv")):
            log.info("removing %s, left by an interrupted write", p)
            remove_tree(p) if p.is_dir() else p.unlink(missing_ok=True)


def write_losses(rows: list[dict] | pd.DataFrame, path: Path) -> None:
    """Atomically: a kill never leaves half a loss file."""
    atomic_csv(pd.DataFrame(rows), path)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """Newest readable step checkpoint in out_dir; a corrupt newest one falls back to the one before."""
    for cand in reversed(step_dirs(out_dir)):
        try:
            load_state(cand, verify_only=True)
            return cand
        except CheckpointError as err:
            log.warning("checkpoint %s is unusable (%s); trying the previous one", cand, err)
    return None


def remove_tree(path: Path) -> None:
    """Rename aside, then delete: a kill mid-delete leaves a hidden folder (cleared on the
    next run), never a half-deleted step-* folder."""
    trash = path.with_name(f".{path.name.lstrip('.')}.del-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(path, trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)
