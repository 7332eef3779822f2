"""The hf backbone, through exactly load_hf_backbone: tiny random CLIP and BERT models
written with save_pretrained into a temporary folder."""
import copy

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer, CLIPConfig, CLIPModel

from dasd_lib.backbones import BackboneError, load_backbone, load_hf_backbone, train_wordpiece
from dasd_lib.config import HFConfig, ModelConfig
from dasd_lib.model import build_target_model

EN = ["a red circle left of a blue square", "two small green triangles", "there is a big star"]
ML_WORDS = ["ein", "roter", "kreis", "un", "cercle", "rouge", "红", "色", "圆", "##s", "##e"]
TOWER = ModelConfig(backbone="hf", adapter_rank=4, generator_dim=16, sdm_hidden=16, static_hidden=8)


def make_hf_folders(root, bin_format=False):
    """A tiny CLIPModel + tokenizer, and a tiny BertModel + WordPiece tokenizer."""
    torch.manual_seed(0)
    tok_en = train_wordpiece(EN * 3, 100, context_length=16)
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tok_en), hidden_size=32, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16,
                         eos_token_id=tok_en.sep_token_id, pad_token_id=tok_en.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=24))
    clip.save_pretrained(root / "clip")
    tok_en.save_pretrained(root / "clip")
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + ML_WORDS)}
    tok_ml = BertTokenizer(vocab=vocab)
    bert = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=20, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=32))
    if bin_format:  # a foreign pickle, as the authors' mBERT download has
        (root / "bert").mkdir()
        bert.config.save_pretrained(root / "bert")
        torch.save({f"bert.{k}": v for k, v in bert.state_dict().items()}, root / "bert" / "pytorch_model.bin")
    else:
        bert.save_pretrained(root / "bert")
    tok_ml.save_pretrained(root / "bert")
    cfg = HFConfig(clip_path=str(root / "clip"), mbert_path=str(root / "bert"))
    return cfg, clip, bert


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    cfg, clip, bert = make_hf_folders(tmp_path_factory.mktemp("hf"))
    return cfg, clip.eval(), bert, load_hf_backbone(cfg)


def test_hf_backbone_matches_clip_and_mbert(hf):
    cfg, clip, bert, bb = hf
    assert (bb.embed_dim, bb.width, bb.num_layers, bb.context_length) == (24, 32, 2, 16)
    assert torch.equal(bb.ml_init_embeddings, bert.embeddings.word_embeddings.weight)
    assert bb.ml_eos_id == bb.tokenizer_target.sep_token_id == 3
    ids, mask = bb.tokenize_source(EN)
    with torch.no_grad():
        ref = clip.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        ours = bb.encode_source_text(ids, mask)
    assert torch.allclose(ours, ref, atol=1e-5)
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    pixels = bb.preprocess_images(images)
    assert pixels.shape == (2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(bb.encode_image(pixels), clip.get_image_features(pixel_values=pixels).pooler_output,
                              atol=1e-5)
    ids, mask = bb.tokenize_target(["ein roter kreis", "红色圆"])
    assert (ids[torch.arange(2), mask.sum(1) - 1] == 3).all()


def test_hf_target_models_and_save_load(hf, tmp_path):
    cfg, _, _, bb = hf
    bb.save(tmp_path / "bb")
    loaded = load_backbone(tmp_path / "bb")
    assert loaded.identity() == bb.identity()
    ids, mask = bb.tokenize_target(["ein roter kreis", "un cercle rouge"])
    for method in ["dasd", "static", "full_distill"]:
        model = build_target_model(loaded, TOWER, method, ["de", "fr"], seed=0)
        assert torch.equal(model.embedding.weight, bb.ml_init_embeddings)  # E from mBERT
        out = model(ids, mask, "de")
        assert out.r_T.shape == (2, 24) and torch.isfinite(out.r_T).all()
        out.r_T.sum().backward()
    assert not any(p.requires_grad for p in loaded.parameters())


def test_hf_bin_embeddings_and_clear_errors(tmp_path):
    cfg, _, bert = make_hf_folders(tmp_path, bin_format=True)
    bb = load_hf_backbone(cfg)
    assert torch.equal(bb.ml_init_embeddings, bert.embeddings.word_embeddings.weight)
    with pytest.raises(BackboneError, match="mbert_path is empty"):
        load_hf_backbone(HFConfig(clip_path=cfg.clip_path))
    (tmp_path / "bert" / "pytorch_model.bin").unlink()
    with pytest.raises(BackboneError, match="no model.safetensors"):
        load_hf_backbone(cfg)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["dasd", "static", "full_distill"])
def test_hf_end_token_path_equals_the_full_layers(hf, method, attention):
    """CLIP's last layer run at the end token only (training and evaluation) gives the
    full forward's r_T and gradients, with either attention implementation's mask."""
    _, _, _, bb = hf
    bb = copy.deepcopy(bb)
    bb.clip.config._attn_implementation = attention
    for layer in bb.blocks:
        layer.self_attn.config._attn_implementation = attention
    ids, mask = bb.tokenize_target(["ein roter kreis", "un cercle rouge und ein blauer stern", "红色圆"])
    assert (mask == 0).any()
    model = build_target_model(bb, TOWER, method, ["de", "fr"], seed=0).train()
    params = [p for p in model.parameters() if p.requires_grad]
    outs, grads = [], []
    for end_only in (False, True):
        out = model(ids, mask, "de", end_only=end_only)
        outs.append(out.r_T)
        grads.append(torch.autograd.grad(out.r_T.square().sum(), params, allow_unused=True))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert not torch.allclose(outs[0][0], outs[0][1], atol=1e-3)  # a wrong row would show
    compared = 0
    for a, b in zip(*grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            compared += 1
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert compared > 3
