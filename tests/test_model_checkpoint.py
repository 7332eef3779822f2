"""Checkpoints: round trip, wrong backbone / language set, corruption, atomic overwrite."""
import dataclasses

import pytest
import torch

from dasd_lib.backbones import build_tiny_backbone
from dasd_lib.checkpoint import (PRETRAINED_FILES, CheckpointError, from_pretrained, load_state, read_meta,
                                 save_pretrained, save_state)
from dasd_lib.config import ModelConfig, TinyConfig
from dasd_lib.model import build_target_model

EN = ["a red circle left of a blue square", "two small green triangles", "a big yellow star"]
ML = EN + ["ein roter Kreis", "zwei kleine grüne Dreiecke", "蓝色方块左边的红色圆圈"]
TINY = TinyConfig(embed_dim=16, text_width=16, text_layers=2, text_heads=2, context_length=16,
                  vision_width=8, vision_layers=2, english_vocab_size=100, multilingual_vocab_size=200,
                  mbert_dim=8)
CFG = ModelConfig(adapter_rank=4, generator_dim=8, sdm_hidden=8, static_hidden=8)


@pytest.fixture(scope="module")
def backbones():
    torch.manual_seed(0)
    a = build_tiny_backbone(TINY, EN, ML, image_size=16)
    b = build_tiny_backbone(TINY, EN, ML, image_size=16)  # same architecture, other weights
    return a, b


@pytest.mark.parametrize("method", ["dasd", "full_distill"])
def test_round_trip(backbones, tmp_path, method):
    bb = backbones[0]
    model = build_target_model(bb, CFG, method, ["de", "zh"], seed=3)
    with torch.no_grad():
        for p in model.own_parameters():
            p.add_(0.01 * torch.randn_like(p))  # as if trained
    save_pretrained(model, tmp_path / "ck", extra_meta={"step": 7})
    meta = read_meta(tmp_path / "ck", PRETRAINED_FILES)
    assert meta["backbone"] == bb.identity() and meta["langs"] == ["de", "zh"]
    assert meta["extra"] == {"step": 7} and meta["method"] == method
    tensors, _ = load_state(tmp_path / "ck")  # finds model.safetensors + config.json
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]
    assert not any(name.startswith("backbone.") for name in tensors)  # trainable weights only
    loaded = from_pretrained(tmp_path / "ck", bb, langs=["zh", "de"])
    ids, mask = bb.tokenize_target(ML[3:])
    with torch.no_grad():
        assert torch.equal(model.eval()(ids, mask, "zh").r_T, loaded.eval()(ids, mask, "zh").r_T)


def test_wrong_backbone_or_languages(backbones, tmp_path):
    a, b = backbones
    save_pretrained(build_target_model(a, CFG, "static", ["de", "zh"]), tmp_path / "ck")
    with pytest.raises(CheckpointError, match="weights hash"):
        from_pretrained(tmp_path / "ck", b)
    bigger = build_tiny_backbone(dataclasses.replace(TINY, text_layers=3), EN, ML, image_size=16)
    with pytest.raises(CheckpointError, match="trained on backbone 'tiny.*L=2.*given is 'tiny.*L=3"):
        from_pretrained(tmp_path / "ck", bigger)
    with pytest.raises(CheckpointError, match=r"languages \['de', 'zh'\].*\['de', 'fr'\]"):
        from_pretrained(tmp_path / "ck", a, langs=["de", "fr"])


def test_frozen_embedding_not_saved_when_rebuildable_but_saved_for_tiny(backbones, tmp_path):
    a = backbones[0]
    model = build_target_model(a, dataclasses.replace(CFG, freeze_embedding=True), "dasd", ["de"])
    assert "embedding.weight" in model.saved_state_dict()  # tiny E is random: must be kept
    assert not model.embedding.weight.requires_grad and model.embed_proj.weight.requires_grad


def test_save_state_checksum_and_atomic_overwrite(tmp_path):
    folder = tmp_path / "opt"
    save_state(folder, {"m": torch.arange(4.0)}, {"step": 1})
    save_state(folder, {"m": torch.arange(5.0)}, {"step": 2})  # replaces the old folder
    tensors, meta = load_state(folder)
    assert meta == {"step": 2} and torch.equal(tensors["m"], torch.arange(5.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt"]  # no temp or old folders left

    with pytest.raises(CheckpointError, match="not JSON"):
        save_state(folder, {"m": torch.zeros(1)}, {"bad": object()})
    assert load_state(folder)[1] == {"step": 2}  # a failed write keeps the last good one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt"]
    data = (folder / "state.safetensors").read_bytes()
    (folder / "state.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="sha256"):
        load_state(folder, verify_only=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state(tmp_path / "missing")
