"""The target tower: frozen backbone, padding invariance, generated adapters, zero-init
identity, and the discriminator / SDM separation of the adversarial losses."""
import dataclasses

import pytest
import torch

from dasd_lib import losses
from dasd_lib.backbones import build_tiny_backbone
from dasd_lib.config import ModelConfig, TinyConfig
from dasd_lib.model import (METHODS, Discriminator, build_target_model, masked_mean,
                            trainable_parameters)

EN = ["a red circle left of a blue square", "two small green triangles above a star",
      "there is a big yellow star", "a blue square"]
ML = EN + ["ein roter Kreis links von einem blauen Quadrat", "es gibt einen großen gelben Stern",
           "zwei kleine grüne Dreiecke über einem Stern", "蓝色方块左边的红色圆圈", "一个黄色的大星星"]
TINY = TinyConfig(embed_dim=24, text_width=32, text_layers=3, text_heads=2, context_length=24,
                  vision_width=8, vision_layers=2, english_vocab_size=120, multilingual_vocab_size=300,
                  mbert_dim=16)
CFG = ModelConfig(adapter_rank=4, generator_dim=16, sdm_hidden=16, static_hidden=8)
LANGS = ["de", "zh"]
SHORT, LONG = "ein Kreis", "zwei kleine grüne Dreiecke über einem Stern links von einem blauen Quadrat"


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_tiny_backbone(TINY, EN, ML, image_size=16)


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def unchanged(module, before):
    return all(torch.equal(p, before[n]) for n, p in module.named_parameters())


@pytest.mark.parametrize("method", ["dasd", "full_distill", "static"])
def test_backbone_frozen_and_bit_identical_after_training(backbone, method):
    before = snapshot(backbone)
    model = build_target_model(backbone, CFG, method, LANGS, seed=0)
    model.train()
    assert not backbone.training
    own = snapshot(model)
    opt = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    ids, mask = backbone.tokenize_target(ML[4:7])
    target = torch.randn(3, TINY.embed_dim)
    for _ in range(3):
        out = model(ids, mask, "de")
        loss = losses.mse(out.r_T, target)
        if out.f_sr is not None:
            loss = loss + losses.consistency(out.f_sr, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(not p.requires_grad and p.grad is None for p in backbone.parameters())
    assert unchanged(backbone, before)
    assert not unchanged(model, own)  # the target side did train
    assert all(p.requires_grad for p in trainable_parameters(model))
    assert not any(p is q for p in trainable_parameters(model) for q in backbone.parameters())


@pytest.mark.parametrize("method", ["dasd", "dasd_sdm2", "dasd_no_sdm", "static", "full_distill"])
def test_padding_invariance(backbone, method):
    model = build_target_model(backbone, CFG, method, LANGS, seed=1).eval()
    with torch.no_grad():
        alone = model(*backbone.tokenize_target([SHORT]), "de")
        ids, mask = backbone.tokenize_target([SHORT, LONG])
        assert ids.shape[1] > int(mask[0].sum()) + 5  # SHORT really is padded
        batched = model(ids, mask, "de")
        ids1, mask1 = backbone.tokenize_target([SHORT])
        pad = TINY.context_length - ids1.shape[1]
        full_ids = torch.nn.functional.pad(ids1, (0, pad), value=backbone.tokenizer_target.pad_token_id)
        full = model(full_ids, torch.nn.functional.pad(mask1, (0, pad)), "de")
    for other in (batched, full):
        for field in ("r_T", "f_sr", "f_sa"):
            a, b = getattr(alone, field), getattr(other, field)
            if a is None:
                assert b is None
                continue
            assert torch.allclose(a[0], b[0], atol=1e-5), field
        if alone.w_z is not None:
            assert all(torch.allclose(a[0], b[0], atol=1e-5) for a, b in zip(alone.w_z, other.w_z))


def test_dynamic_matrices_differ_per_caption_static_has_none(backbone):
    ids, mask = backbone.tokenize_target(ML[4:8])
    dasd = build_target_model(backbone, CFG, "dasd", LANGS, seed=0)
    out = out_dasd = dasd(ids, mask, "de")
    assert len(out.w_z) == TINY.text_layers
    for w in out.w_z:
        assert w.shape == (4, CFG.adapter_rank, CFG.adapter_rank)
        assert all(not torch.allclose(w[i], w[j], atol=1e-4) for i in range(4) for j in range(i))
    static = build_target_model(backbone, CFG, "static", LANGS, seed=0)
    out = static(ids, mask, "de")
    assert out.w_z is None and out.f_sr is None and out.f_sa is None
    assert static.generator is None and static.sdm is None
    # the same hidden states: the static adapter maps them identically for every caption,
    # the dynamic one differently under each caption's W_z
    h = torch.randn(1, 5, TINY.text_width).expand(4, 5, TINY.text_width)
    with torch.no_grad():
        s_out = static.adapters["de"][1](h)
        d_out = dasd.adapters["de"][1](h, out_dasd.w_z[1])
    assert all(torch.equal(s_out[0], s_out[i]) for i in range(4))
    assert not torch.allclose(d_out[0], d_out[1], atol=1e-5)


@pytest.mark.parametrize("method", ["dasd", "dasd_sdm2", "dasd_no_sdm", "static"])
def test_zero_init_up_equals_frozen_tower(backbone, method):
    cfg = dataclasses.replace(CFG, zero_init_up=True)
    model = build_target_model(backbone, cfg, method, LANGS, seed=0).eval()
    ids, mask = backbone.tokenize_target([SHORT, LONG])
    with torch.no_grad():
        out = model(ids, mask, "zh")
        h = model.embed_proj(model.embedding(ids)) + backbone.positional_embedding[:ids.shape[1]]
        attn = backbone.causal_mask(ids.shape[1], ids.device)
        for i in range(backbone.num_layers):
            h = backbone.run_block(i, h, attn)
        ref = backbone.project_text(backbone.final_norm(h[torch.arange(2), mask.sum(1) - 1]))
    assert torch.allclose(out.r_T, ref, atol=1e-6)
    # without zero init the adapters do change the output (the test above can fail)
    other = build_target_model(backbone, CFG, method, LANGS, seed=0).eval()
    with torch.no_grad():
        assert not torch.allclose(other(ids, mask, "zh").r_T, ref, atol=1e-4)


def test_shared_prefix_equals_separate_passes(backbone):
    model = build_target_model(backbone, CFG, "dasd_sdm2", LANGS, seed=0).eval()
    ids, mask = backbone.tokenize_target([SHORT, LONG])
    with torch.no_grad():
        a, b = model(ids, mask, "de"), model(ids, mask, "de", share_prefix=False)
    assert torch.allclose(a.r_T, b.r_T, atol=1e-6)


def test_adapters_per_language_or_shared(backbone):
    ids, mask = backbone.tokenize_target([SHORT])
    model = build_target_model(backbone, CFG, "dasd", LANGS, seed=0)
    assert sorted(model.adapters) == sorted(LANGS)
    with torch.no_grad():
        assert not torch.allclose(model(ids, mask, "de").r_T, model(ids, mask, "zh").r_T)
    with pytest.raises(KeyError, match="'fr' is not one"):
        model(ids, mask, "fr")
    shared = build_target_model(backbone, dataclasses.replace(CFG, share_adapters=True), "dasd", LANGS)
    assert list(shared.adapters) == ["shared"]
    with torch.no_grad():
        assert torch.equal(shared(ids, mask, "de").r_T, shared(ids, mask, "zh").r_T)


def test_methods_registry(backbone):
    assert {"floor", "oracle", "full_distill", "static", "dasd", "dasd_no_sdm", "dasd_no_adv",
            "dasd_no_sc", "dasd_sdm2", "dasd_adv0.01", "dasd_adv0.1"} <= set(METHODS)
    assert METHODS["oracle"].oracle and not METHODS["floor"].trained
    assert METHODS["dasd_adv0.1"].lambda_adv == 0.1 and METHODS["dasd_sdm2"].sdm_layers == 2
    floor = build_target_model(backbone, CFG, "floor", LANGS)
    assert trainable_parameters(floor) == []
    with pytest.raises(KeyError, match="unknown method 'dasdd'"):
        build_target_model(backbone, CFG, "dasdd", LANGS)


def test_discriminator_and_adversarial_updates_touch_only_their_side(backbone):
    model = build_target_model(backbone, CFG, "dasd", LANGS, seed=0)
    disc = Discriminator(CFG, backbone.width, backbone.embed_dim)
    assert disc(torch.zeros(2, 32), torch.zeros(2, 24)).shape == (2, 2)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-2)
    opt_m = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    ids, mask = backbone.tokenize_target(ML[4:9])
    r_ref = torch.randn(5, TINY.embed_dim)

    sdm_before, disc_before = snapshot(model.sdm), snapshot(disc)
    out = model(ids, mask, "de")
    d_loss = losses.discriminator_loss(disc, out.f_sa, r_ref)
    opt_m.zero_grad()
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    assert all(p.grad is None for p in model.sdm.parameters())
    assert unchanged(model.sdm, sdm_before) and not unchanged(disc, disc_before)

    disc_before = snapshot(disc)
    out = model(ids, mask, "de")
    a_loss = losses.adversarial_loss(disc, out.f_sa, r_ref)
    opt_m.zero_grad()
    opt_d.zero_grad()
    a_loss.backward()
    assert all(p.grad is None for p in disc.parameters())
    assert model.sdm.mlp_sa[0].weight.grad.abs().sum() > 0  # it does reach the style branch
    opt_m.step()
    assert unchanged(disc, disc_before) and not unchanged(model.sdm, sdm_before)


def test_losses():
    torch.manual_seed(0)
    a = torch.randn(6, 8)
    assert losses.info_nce(a, a) < 0.01 < losses.info_nce(a, torch.randn(6, 8))
    b = torch.randn(6, 8)
    assert torch.isclose(losses.info_nce(a, b), losses.info_nce(b, a))  # symmetric
    assert losses.mse(a, a + 1) == pytest.approx(1.0)
    assert losses.consistency(a, a + 2, "l1") == pytest.approx(2.0)
    assert losses.consistency(a, a + 2, "smooth_l1") == pytest.approx(1.5)
    with pytest.raises(ValueError):
        losses.consistency(a, a, "l2")
    for t in (losses.info_nce(a, b), losses.mse(a, b), losses.consistency(a, b)):
        assert t.ndim == 0
    x = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.allclose(masked_mean(x, mask)[0], x[0, :2].mean(0))


@pytest.mark.parametrize("method,layers", [(m, n) for n in (1, 3) for m in (
    "floor", "full_distill", "static", "dasd", "dasd_no_sdm", "dasd_sdm2") if not (m == "dasd_sdm2" and n == 1)])
def test_end_only_forward_equals_the_full_one(method, layers):
    """Evaluation's fast path (the last block at the end token only) gives the full
    forward's r_T, f_sr, f_sa and W_z, for captions of different lengths in one batch."""
    cfg = dataclasses.replace(CFG, sdm_layers=min(layers, CFG.sdm_layers))
    backbone = build_tiny_backbone(dataclasses.replace(TINY, text_layers=layers), EN, ML, image_size=16)
    model = build_target_model(backbone, cfg, method, LANGS, seed=0).eval()
    ids, mask = backbone.tokenize_target([SHORT, LONG, "drei Sterne"])
    with torch.no_grad():
        full, fast = model(ids, mask, "de"), model(ids, mask, "de", end_only=True)
    assert torch.allclose(full.r_T, fast.r_T, atol=1e-5)
    assert not torch.equal(full.r_T[0], full.r_T[1])  # the captions differ, so a wrong row would show
    for name in ("f_sr", "f_sa"):
        if getattr(full, name) is not None:
            assert torch.equal(getattr(full, name), getattr(fast, name))
    if full.w_z is not None:
        assert all(torch.equal(a, b) for a, b in zip(full.w_z, fast.w_z))


@pytest.mark.parametrize("method", ["full_distill", "static", "dasd", "dasd_no_sdm", "dasd_sdm2"])
def test_end_only_training_gradients_equal_the_full_ones(backbone, method):
    """Training runs the last block at the end token only (TargetStep): the trainable
    weights get the full forward's gradients, for captions of different lengths."""
    ids, mask = backbone.tokenize_target([SHORT, LONG, "drei Sterne"])
    model = build_target_model(backbone, CFG, method, LANGS, seed=0).train()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for end_only in (False, True):
        out = model(ids, mask, "de", end_only=end_only)
        loss = out.r_T.square().sum() + (out.f_sr.sum() + out.f_sa.square().sum() if out.f_sa is not None else 0)
        grads.append(torch.autograd.grad(loss, params, allow_unused=True))
    used = 0
    for full, fast in zip(*grads, strict=True):
        assert (full is None) == (fast is None)  # the other language's adapters get none
        if full is not None:
            used += 1
            assert torch.allclose(full, fast, atol=1e-5, rtol=1e-4)
    assert used > 0
