"""Target-language models on disk: `save_pretrained(model, dir)` / `from_pretrained(dir,
backbone)` store a dasd_lib.model.TargetTextModel as `model.safetensors` + `config.json`
(a dasd_lib.storage state folder with save_pretrained's file names; backbone folders use
them too). Only the model's own weights are stored, never the frozen backbone's; the
backbone's identity (name and weights hash), the method, the model config, the language
set and the record of the stage that trained it are kept, and loading onto another
backbone or language set, or for another stage, fails with an error that says which.

The storage names (CheckpointError, load_state, fingerprint, ...) are re-exported here,
where most callers look for them.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .backbones.base import Backbone
from .config import ModelConfig, build_dataclass
from .model import TargetTextModel, build_target_model
from .storage import (PRETRAINED_FILES, STATE_FILES, CheckpointError, StaleStageError,  # noqa: F401
                      atomic_dir, atomic_file, atomic_write, check_record, file_sha256,
                      fingerprint, load_state, make_record, read_meta, record_differences,
                      save_state, write_state)

MODEL_KIND = "dasd_target_model"


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
    cfg = build_dataclass(ModelConfig, meta["model_config"], f"{folder / PRETRAINED_FILES[1]} [model_config]")
    model = build_target_model(backbone, cfg, meta["method"], saved_langs)
    model.load_saved_state_dict(tensors, where=str(folder / PRETRAINED_FILES[0]))
    return model.to(device)
