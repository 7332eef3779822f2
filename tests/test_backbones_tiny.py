"""The tiny backbone: tokenizers, towers, position offsets, save/load and identity."""
import numpy as np
import pytest
import torch

from dasd_lib.backbones import BackboneError, build_backbone, build_tiny_backbone, load_backbone
from dasd_lib.backbones.base import positions
from dasd_lib.config import TinyConfig

EN = ["a red circle left of a blue square", "two small green triangles above a star",
      "there is a big yellow star", "a blue square", "three purple circles in a row"]
ML = EN + ["ein roter Kreis links von einem blauen Quadrat", "es gibt einen großen gelben Stern",
           "un cercle rouge à gauche d'un carré bleu", "červený kruh vlevo od modrého čtverce",
           "青い四角の左に赤い丸", "蓝色方块左边的红色圆圈", "一个黄色的大星星"]
CFG = TinyConfig(embed_dim=32, text_width=32, text_layers=2, text_heads=2, context_length=12,
                 vision_width=8, vision_layers=2, english_vocab_size=120, multilingual_vocab_size=300,
                 mbert_dim=16)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_tiny_backbone(CFG, EN, ML, image_size=16)


def test_tokenizers_pool_token_padding_and_truncation(backbone):
    tok = backbone.tokenizer_target
    assert backbone.ml_eos_id == tok.convert_tokens_to_ids("[SEP]")
    assert backbone.ml_vocab_size == len(tok) <= CFG.multilingual_vocab_size
    long = " ".join(["rot"] * 40)
    ids, mask = backbone.tokenize_target(["蓝色方块", long])
    assert ids.shape == (2, CFG.context_length)  # the long one is truncated to the context
    assert ids[1, -1] == backbone.ml_eos_id  # ... keeping its end token
    n = int(mask[0].sum())
    assert ids[0, n - 1] == backbone.ml_eos_id and (ids[0, n:] == tok.pad_token_id).all()
    assert tok.convert_ids_to_tokens(ids[0, 1:3].tolist()) == ["蓝", "色"]  # CJK: one per char
    ids, mask = backbone.tokenize_source(["a blue square", "a star"])
    assert ids.shape[1] == int(mask.sum(1).max())  # padded to the batch's longest, not 77
    assert (ids[torch.arange(2), mask.sum(1) - 1] == backbone.source_eos_id).all()
    with pytest.raises(BackboneError, match="caption 1 is empty"):
        backbone.tokenize_target(["ok", "  "])


def test_towers_shapes_and_preprocessing(backbone):
    images = np.random.default_rng(0).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    pixels = backbone.preprocess_images(images)
    assert pixels.shape == (3, 3, 16, 16) and pixels.dtype == torch.float32
    assert backbone.encode_image(pixels).shape == (3, CFG.embed_dim)
    ids, mask = backbone.tokenize_source(EN[:3])
    assert backbone.encode_source_text(ids, mask).shape == (3, CFG.embed_dim)
    with pytest.raises(BackboneError, match="uint8"):
        backbone.preprocess_images(images.astype(np.float32))


def test_position_offsets_reach_every_position_and_change_outputs(backbone):
    ids, mask = backbone.tokenize_source(EN[:2])
    offsets = torch.stack([backbone.sample_position_offset(mask) for _ in range(300)])
    last = offsets + mask.sum(1)  # one past each caption's last position
    assert (last <= CFG.context_length).all() and (last == CFG.context_length).any()
    a = backbone.encode_source_text(ids, mask, 0)
    b = backbone.encode_source_text(ids, mask, torch.tensor([0, 2]))
    assert torch.allclose(a[0], b[0], atol=1e-6) and not torch.allclose(a[1], b[1], atol=1e-4)
    backbone.train()
    out = backbone(backbone.preprocess_images(np.zeros((2, 16, 16, 3), np.uint8)), ids, mask)
    assert out.text_embeds.shape == (2, CFG.embed_dim) and float(out.logit_scale.detach()) <= 100


def test_save_load_round_trip_and_identity(backbone, tmp_path):
    backbone.save(tmp_path / "bb")
    loaded = load_backbone(tmp_path / "bb")
    assert loaded.identity() == backbone.identity()
    ids, mask = backbone.tokenize_target(ML[-3:])
    assert torch.equal(ids, loaded.tokenize_target(ML[-3:])[0])
    backbone.eval()
    x, y = backbone.tokenize_source(EN[:2])
    assert torch.equal(backbone.encode_source_text(x, y), loaded.encode_source_text(x, y))
    with torch.no_grad():
        loaded.blocks[0].out.bias[0] += 1e-3
    assert loaded.identity()["weights_hash"] != backbone.identity()["weights_hash"]
    (tmp_path / "bb" / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(BackboneError, match="sha256"):
        load_backbone(tmp_path / "bb")


def test_build_backbone_from_table_and_freeze():
    pd = pytest.importorskip("pandas")
    table = pd.DataFrame({"lang": ["en"] * len(EN) + ["de", "zh"], "split": "train",
                          "caption": EN + ["ein Kreis", "红色圆圈"]})
    bb = build_backbone(CFG, table, image_size=16)
    assert bb.tokenize_target(["红色圆圈"])[0].shape[1] == 6
    bb.freeze()
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert not bb.training  # a frozen backbone stays in eval mode


def test_identity_follows_weight_changes():
    backbone = build_tiny_backbone(CFG, EN, ML, image_size=16)
    first = backbone.identity()
    assert backbone.identity() == first  # cached: unchanged weights hash the same
    params = backbone.vlp_parameters()
    assert all(p.requires_grad for p in params) and not backbone.frozen
    opt = torch.optim.SGD(params, lr=0.1)
    ids, mask = backbone.tokenize_source(EN[:2])
    backbone.encode_source_text(ids, mask).sum().backward()
    opt.step()  # an optimiser step changes the weights in place
    assert backbone.identity()["weights_hash"] != first["weights_hash"]


def test_english_text_end_token_path_equals_the_full_tower(backbone):
    """encode_source_text runs the last block at the end token only: the same embeddings
    and weight gradients as every token through every block, for captions of different
    lengths and random position offsets (VLP training)."""
    ids, mask = backbone.tokenize_source([EN[0], "a star", EN[1]])
    assert (mask == 0).any()
    offset = torch.tensor([0, 3, 1])
    backbone.requires_grad_(True)
    try:
        fast = backbone.encode_source_text(ids, mask, offset)
        T = ids.shape[1]
        h = backbone.embed_source_tokens(ids) + positions(backbone.positional_embedding, T, offset)
        attn = backbone.causal_mask(T, ids.device)
        for i in range(backbone.num_layers):
            h = backbone.run_block(i, h, attn)
        full = backbone.project_text(backbone.final_norm(h[torch.arange(3), mask.sum(1) - 1]))
        assert torch.allclose(fast, full, atol=1e-5)
        assert not torch.allclose(full[0], full[1], atol=1e-3)  # a wrong row would show
        params = [p for p in backbone.parameters() if p.requires_grad]
        g_fast = torch.autograd.grad(fast.square().sum(), params, allow_unused=True)
        g_full = torch.autograd.grad(full.square().sum(), params, allow_unused=True)
        compared = 0
        for a, b in zip(g_fast, g_full, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                compared += 1
                assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
        assert compared > 5
    finally:
        backbone.requires_grad_(False)
