"""Backbones: one interface (base.Backbone), two implementations (tiny, hf).

    build_tiny_backbone(cfg, english_texts, multilingual_texts, image_size)  # untrained tiny VLP
    load_hf_backbone(cfg)                     # CLIPModel + mBERT tokenizer/embeddings
    build_backbone(cfg, table=None, ...)      # either, from a config (+ the data table for tiny)
    load_backbone(folder_or_cfg)              # a folder written by Backbone.save, or hf from cfg
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dasd_lib.backbones.base import Backbone, BackboneError, VLPOutput
from dasd_lib.backbones.hf import HFBackbone, load_hf_backbone, read_mbert_embeddings
from dasd_lib.backbones.tiny import ShapeBackbone, TinyBackbone, build_tiny_backbone
from dasd_lib.backbones.wordpiece import train_wordpiece
from dasd_lib.storage import PRETRAINED_FILES, CheckpointError, load_state
from dasd_lib.config import HFConfig, TinyConfig

__all__ = ["Backbone", "BackboneError", "HFBackbone", "ShapeBackbone", "TinyBackbone", "VLPOutput",
           "build_backbone", "build_tiny_backbone", "load_backbone", "load_hf_backbone",
           "read_mbert_embeddings", "train_wordpiece"]


def build_backbone(cfg: TinyConfig | HFConfig, table: Any = None, out_dir: str | Path | None = None,
                   image_size: int = 64) -> Backbone:
    """An HFConfig (params.hf): load_hf_backbone(cfg). A TinyConfig (params.tiny): a tiny VLP
    with tokenizers trained on `table` (a DataFrame with
    columns lang, caption and optionally split: the English rows train the VLP tokenizer,
    every row the multilingual one; only split == 'train' rows when the column exists).
    Saved to `out_dir` when given."""
    if isinstance(cfg, HFConfig):
        backbone: Backbone = load_hf_backbone(cfg)
    elif isinstance(cfg, TinyConfig):
        if table is None:
            raise BackboneError("backbone 'tiny' needs the data table to train its tokenizers")
        rows = table[table["split"] == "train"] if "split" in table.columns else table
        english = rows.loc[rows["lang"] == "en", "caption"].tolist()
        if not english:
            raise BackboneError("backbone 'tiny': the table has no English training captions")
        backbone = build_tiny_backbone(cfg, english, rows["caption"].tolist(), image_size)
    else:
        raise BackboneError(f"build_backbone takes a TinyConfig (tiny:) or an HFConfig (hf:), "
                            f"got {type(cfg).__name__}")
    if out_dir is not None:
        backbone.save(out_dir)
    return backbone


def load_backbone(source: str | Path | TinyConfig | HFConfig) -> Backbone:
    """A backbone folder written by `Backbone.save`, or an hf backbone from an HFConfig."""
    if isinstance(source, HFConfig):
        return load_hf_backbone(source)
    if isinstance(source, TinyConfig):
        raise BackboneError("a tiny backbone is trained, not loaded from a config: build it with "
                            "build_tiny_backbone or load the folder it was saved to")
    folder = Path(source)
    try:
        tensors, meta = load_state(folder, "cpu", PRETRAINED_FILES)
    except CheckpointError as err:
        raise BackboneError(f"cannot load a backbone from {folder}: {err}") from err
    kind = meta.get("kind")
    if kind == "tiny":
        backbone: Backbone = TinyBackbone.load(folder, tensors, meta)
    elif kind == "hf":
        backbone = HFBackbone.load(folder, tensors, meta)
    else:
        raise BackboneError(f"{folder}: unknown backbone kind {kind!r} in config.json")
    saved = meta.get("identity", {})
    if saved and saved.get("weights_hash") != backbone.identity()["weights_hash"]:
        raise BackboneError(f"{folder}: the loaded weights do not hash to the identity recorded "
                            f"when it was saved; the folder was modified")
    return backbone
