"""Importing the DASD authors' released checkpoints (dasd_lib.official) and the authors'
forward (model.compat: official). A state dict is built here in the documented layout
(shared/design/official_checkpoint.md) at small sizes (text width 512 as the layout
fixes it, three text blocks, small vocabularies, a one-block vision tower), saved with
torch.save, imported, loaded, and compared with a plain re-implementation of the
documented forward written below, independently of dasd_lib.model."""
from __future__ import annotations

import argparse
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertTokenizer

from dasd_lib.backbones import load_backbone, train_wordpiece
from dasd_lib.checkpoint import from_pretrained, load_state, read_meta
from dasd_lib.config import ConfigError, ModelConfig, load_params, resolve_compat
from dasd_lib.model import build_target_model
from dasd_lib.official import OfficialImportError, import_official, main

W, D, E_DIM, CTX, LAYERS, FF, RANK, G = 512, 512, 768, 77, 3, 1024, 32, 512
VW, PATCH, IMAGE = 64, 8, 16
LANGS_IN_FILE = ["de", "fr", "ja"]
EN = ["a red circle left of a blue square", "two small green triangles", "there is a big star"]
CAPTIONS = ["ein roter kreis", "ein kreis", "ein roter roter kreis und ein stern", "ein stern"]
ML_WORDS = ["ein", "roter", "kreis", "und", "stern", "un", "cercle", "rouge"]


def mbert_like_vocab() -> dict[str, int]:
    """mBERT's special ids: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return {t: i for i, t in enumerate(tokens + ML_WORDS)}


def released_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random DASD release in the authors' layout (every key of the documented tables)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.02, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    def block(prefix, width, ff):
        return {f"{prefix}.attn.in_proj_weight": rnd(3 * width, width, std=width ** -0.5),
                f"{prefix}.attn.in_proj_bias": rnd(3 * width),
                f"{prefix}.attn.out_proj.weight": rnd(width, width, std=width ** -0.5),
                f"{prefix}.attn.out_proj.bias": rnd(width),
                f"{prefix}.ln_1.weight": rnd(width, std=0.1, mean=1.0), f"{prefix}.ln_1.bias": rnd(width),
                f"{prefix}.mlp.c_fc.weight": rnd(ff, width, std=width ** -0.5), f"{prefix}.mlp.c_fc.bias": rnd(ff),
                f"{prefix}.mlp.c_proj.weight": rnd(width, ff, std=ff ** -0.5), f"{prefix}.mlp.c_proj.bias": rnd(width),
                f"{prefix}.ln_2.weight": rnd(width, std=0.1, mean=1.0), f"{prefix}.ln_2.bias": rnd(width)}

    grid = IMAGE // PATCH
    s = {"visual.conv1.weight": rnd(VW, 3, PATCH, PATCH, std=0.05),
         "visual.class_embedding": rnd(VW, std=0.5), "visual.positional_embedding": rnd(grid * grid + 1, VW, std=0.1),
         "visual.ln_pre.weight": rnd(VW, std=0.1, mean=1.0), "visual.ln_pre.bias": rnd(VW),
         "visual.ln_post.weight": rnd(VW, std=0.1, mean=1.0), "visual.ln_post.bias": rnd(VW),
         "visual.proj": rnd(VW, D, std=VW ** -0.5),
         "token_embedding.weight": rnd(len(CLIP_TOKENIZER), W, std=0.5),
         "positional_embedding": rnd(CTX, W, std=0.1),
         "ln_final.weight": rnd(W, std=0.1, mean=1.0), "ln_final.bias": rnd(W),
         "text_projection": rnd(W, D, std=W ** -0.5), "logit_scale": torch.tensor(math.log(100.0)),
         "multilingual_embedding.weight": rnd(len(mbert_like_vocab()), E_DIM, std=0.5),
         "multilingual_embedding_linear.weight": rnd(W, E_DIM, std=E_DIM ** -0.5),
         "multilingual_embedding_linear.bias": rnd(W),
         "transformer.zi_adapter_student.c_fc1.weight": rnd(G, D + W, std=(D + W) ** -0.5),
         "transformer.zi_adapter_student.c_fc1.bias": rnd(G, std=0.5),
         "visual.transformer.zi_adapter_student.c_fc1.weight": rnd(G, D + W),  # the stray copy
         "visual.transformer.zi_adapter_student.c_fc1.bias": rnd(G),
         "ln_mu.weight": rnd(W, std=0.1, mean=1.0), "ln_mu.bias": rnd(W),
         "sr_projection": rnd(W, D, std=W ** -0.5),
         "ln_sigma.weight": rnd(W, std=0.1, mean=1.0), "ln_sigma.bias": rnd(W, std=0.5),
         "target_projection": rnd(W, D), "sigma_projection": rnd(W, D)}
    s |= block("visual.transformer.resblocks.0", VW, 4 * VW)
    for n in range(LAYERS):
        s |= block(f"transformer.resblocks.{n}", W, FF)
        s[f"transformer.resblocks.{n}.mlp_zi.c_fc1.weight"] = rnd(RANK * RANK, G, std=G ** -0.5)
        s[f"transformer.resblocks.{n}.mlp_zi.c_fc1.bias"] = rnd(RANK * RANK, std=0.2)
        for lang in LANGS_IN_FILE:
            a = f"transformer.resblocks.{n}.acquirer.{lang}"
            s |= {f"{a}.mlp_beforez.c_fc.weight": rnd(RANK, W, std=W ** -0.5), f"{a}.mlp_beforez.c_fc.bias": rnd(RANK),
                  f"{a}.mlp_afterz.c_proj2.weight": rnd(W, RANK, std=0.5), f"{a}.mlp_afterz.c_proj2.bias": rnd(W),
                  f"{a}.mlp_sr.c_fc.weight": rnd(256, W), f"{a}.mlp_sr.c_fc.bias": rnd(256),
                  f"{a}.mlp_sr.c_proj.weight": rnd(W, 256), f"{a}.mlp_sr.c_proj.bias": rnd(W),
                  f"{a}.mlp_sa.c_fc.weight": rnd(256, W), f"{a}.mlp_sa.c_fc.bias": rnd(256),
                  f"{a}.mlp_sa.c_proj.weight": rnd(W, 256), f"{a}.mlp_sa.c_proj.bias": rnd(W),
                  f"{a}.ln.weight": rnd(W, mean=1.0), f"{a}.ln.bias": rnd(W)}
    for i, (a, b) in zip((0, 2, 4), [(W + D, 256), (256, 128), (128, 2)]):
        s[f"AdvAgent.discriminator.model.{i}.weight"] = rnd(b, a)
        s[f"AdvAgent.discriminator.model.{i}.bias"] = rnd(b)
    return s


CLIP_TOKENIZER = train_wordpiece(EN * 3, 100, context_length=CTX)


# ----------------------------------------------------------------------------- the reference

def ref_ln(sd, name, x):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{name}.weight"], sd[f"{name}.bias"], 1e-5)


def ref_quick_gelu(u):
    return u * torch.sigmoid(1.702 * u)


def ref_block(sd, p, x, causal):
    """OpenAI's pre-LayerNorm residual block, heads of 64, additive causal mask."""
    B, T, width = x.shape
    heads = width // 64
    y = ref_ln(sd, f"{p}.ln_1", x)
    q, k, v = (y @ sd[f"{p}.attn.in_proj_weight"].T + sd[f"{p}.attn.in_proj_bias"]).split(width, dim=-1)
    q, k, v = (t.reshape(B, T, heads, 64).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / 8.0
    if causal:
        scores = scores + torch.full((T, T), float("-inf")).triu(1)
    att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, width)
    x = x + att @ sd[f"{p}.attn.out_proj.weight"].T + sd[f"{p}.attn.out_proj.bias"]
    y = ref_ln(sd, f"{p}.ln_2", x)
    hidden = ref_quick_gelu(y @ sd[f"{p}.mlp.c_fc.weight"].T + sd[f"{p}.mlp.c_fc.bias"])
    return x + hidden @ sd[f"{p}.mlp.c_proj.weight"].T + sd[f"{p}.mlp.c_proj.bias"]


def ref_target(sd, captions, lang):
    """The documented inference of target captions: returns (r_T, f_sr, f_sa)."""
    enc = BertTokenizer(vocab=mbert_like_vocab())(captions, padding="max_length", max_length=77,
                                                   truncation=True, return_tensors="pt")
    ids = enc["input_ids"]
    rows = torch.arange(len(captions))
    end = (ids == 102).int().argmax(1)
    x = sd["multilingual_embedding.weight"][ids] @ sd["multilingual_embedding_linear.weight"].T \
        + sd["multilingual_embedding_linear.bias"] + sd["positional_embedding"]
    h0 = ref_block(sd, "transformer.resblocks.1", ref_block(sd, "transformer.resblocks.0", x, True), True)
    f_sr = ref_ln(sd, "ln_mu", h0)[rows, end] @ sd["sr_projection"]
    f_sa = ref_ln(sd, "ln_sigma", h0).mean(1)
    z = ref_quick_gelu(torch.cat([f_sr, f_sa], -1) @ sd["transformer.zi_adapter_student.c_fc1.weight"].T
                       + sd["transformer.zi_adapter_student.c_fc1.bias"])
    h = x
    for n in range(LAYERS):
        b = f"transformer.resblocks.{n}"
        h = ref_block(sd, b, h, True)
        w_gen = (z @ sd[f"{b}.mlp_zi.c_fc1.weight"].T + sd[f"{b}.mlp_zi.c_fc1.bias"]).reshape(-1, RANK, RANK)
        a = f"{b}.acquirer.{lang}"
        down = h @ sd[f"{a}.mlp_beforez.c_fc.weight"].T + sd[f"{a}.mlp_beforez.c_fc.bias"]
        h = h + torch.relu(down @ w_gen) @ sd[f"{a}.mlp_afterz.c_proj2.weight"].T + sd[f"{a}.mlp_afterz.c_proj2.bias"]
    return ref_ln(sd, "ln_final", h)[rows, end] @ sd["text_projection"], f_sr, f_sa


def ref_image(sd, pixels):
    patches = F.conv2d(pixels, sd["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(len(pixels), 1, VW)
    x = ref_ln(sd, "visual.ln_pre", torch.cat([cls, patches], 1) + sd["visual.positional_embedding"])
    x = ref_block(sd, "visual.transformer.resblocks.0", x, False)
    return ref_ln(sd, "visual.ln_post", x[:, 0]) @ sd["visual.proj"]


def ref_source(sd, ids, mask):
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:ids.shape[1]]
    for n in range(LAYERS):
        x = ref_block(sd, f"transformer.resblocks.{n}", x, True)
    return ref_ln(sd, "ln_final", x)[torch.arange(len(ids)), mask.sum(1) - 1] @ sd["text_projection"]


# ----------------------------------------------------------------------------- fixtures

def write_inputs(root, state):
    torch.save(state, root / "pytorch_model.bin.4500")
    BertTokenizer(vocab=mbert_like_vocab()).save_pretrained(root / "mbert")
    CLIP_TOKENIZER.save_pretrained(root / "clip_tok")
    return root / "pytorch_model.bin.4500"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    state = released_state()
    path = write_inputs(root, state)
    result = import_official(path, root / "out", mbert_tokenizer=root / "mbert",
                             clip_tokenizer=root / "clip_tok", langs=["de", "fr"])
    backbone = load_backbone(result.backbone_dir)
    model = from_pretrained(result.target_dir, backbone).eval()
    return state, root, result, backbone, model


def run_model(model, captions, lang="de"):
    ids, mask = model.backbone.tokenize_target(captions)
    with torch.no_grad():
        return model(ids, mask, lang)


# ----------------------------------------------------------------------------- import and forward

def test_imported_model_computes_the_documented_forward(imported):
    state, _, result, backbone, model = imported
    assert result.langs == ["de", "fr"] and model.langs == ["de", "fr"]
    assert model.cfg.compat == "official" and read_meta(result.target_dir)["model_config"]["compat"] == "official"
    for lang in ("de", "fr"):
        out = run_model(model, CAPTIONS, lang)
        r_T, f_sr, f_sa = ref_target(state, CAPTIONS, lang)
        assert torch.allclose(out.f_sr, f_sr, atol=1e-4)
        assert torch.allclose(out.f_sa, f_sa, atol=1e-4)
        assert torch.allclose(out.r_T, r_T, atol=1e-4), (out.r_T - r_T).abs().max()
    # the two languages' adapters differ, so the outputs do
    assert not torch.allclose(run_model(model, CAPTIONS, "de").r_T, run_model(model, CAPTIONS, "fr").r_T, atol=1e-3)


def test_imported_backbone_is_the_released_clip(imported):
    state, _, _, backbone, _ = imported
    assert (backbone.width, backbone.embed_dim, backbone.num_layers, backbone.context_length) == (W, D, LAYERS, CTX)
    images = np.random.default_rng(0).integers(0, 256, (2, IMAGE, IMAGE, 3), dtype=np.uint8)
    pixels = backbone.preprocess_images(images)
    ids, mask = backbone.tokenize_source(EN)
    with torch.no_grad():
        assert torch.allclose(backbone.encode_image(pixels), ref_image(state, pixels), atol=1e-4)
        assert torch.allclose(backbone.encode_source_text(ids, mask), ref_source(state, ids, mask), atol=1e-4)
        assert torch.allclose(backbone.logit_scale, state["logit_scale"])


def test_import_records_its_source_and_skips_the_unused_keys(imported):
    state, root, result, _, _ = imported
    meta = read_meta(result.target_dir)
    assert meta["record"]["identity"]["kind"] == "official_import"
    assert meta["record"]["inputs"]["step"] == "4500" and meta["extra"]["ml_embeddings"] == "checkpoint"
    assert any(".acquirer.de.mlp_sr." in k for k in result.skipped)
    assert any(k.startswith("AdvAgent.") for k in result.skipped)
    assert any(".acquirer.ja." in k for k in result.skipped)  # a language not asked for
    assert "target_projection" in result.skipped and "sigma_projection" in result.skipped
    tensors, _ = load_state(result.target_dir)
    assert torch.equal(tensors["embedding.weight"], state["multilingual_embedding.weight"])
    assert not any("mlp_sr" in k or "mlp_sa" in k for k in tensors)  # no branch MLPs in the official tower


# ----------------------------------------------------------------------------- the compat switches

OFFICIAL = resolve_compat(ModelConfig(compat="official"))


def test_compat_preset_sets_the_authors_forward():
    assert (OFFICIAL.sdm_layers, OFFICIAL.sdm_branches, OFFICIAL.f_sa_pool, OFFICIAL.pad_to_context,
            OFFICIAL.generator_act) == (2, False, "all", True, "quick_gelu")
    plain = ModelConfig()
    assert resolve_compat(plain) is plain and plain.compat == "method"
    assert load_params(overrides=["model.compat=official"]).model.compat == "official"
    with pytest.raises(ConfigError, match="model.compat is 'oficial'.*did you mean 'official'"):
        load_params(overrides=["model.compat=oficial"])
    with pytest.raises(ConfigError, match="model.f_sa_pool"):
        load_params(overrides=["model.f_sa_pool=mean"])


def variant(imported, **changes):
    """The imported tower rebuilt with compat: method and `changes` to the official fields;
    weights the official tower lacks (branch MLPs) keep their seeded initial values."""
    _, _, result, backbone, model = imported
    cfg = dataclasses.replace(model.cfg, compat="method", **changes)
    other = build_target_model(backbone, cfg, "dasd", model.langs, seed=1)
    tensors, _ = load_state(result.target_dir)
    own = other.saved_state_dict()
    other.load_saved_state_dict({k: tensors.get(k, v) for k, v in own.items()})
    return other.eval()


def differs(a, b, atol=1e-5):
    return not torch.allclose(a, b, atol=atol)


def test_method_fields_equal_to_the_preset_compute_the_same(imported):
    base = run_model(imported[4], CAPTIONS)
    assert torch.allclose(run_model(variant(imported), CAPTIONS).r_T, base.r_T, atol=1e-6)


def test_sdm_layers_switch(imported):
    base = run_model(variant(imported), CAPTIONS)
    assert differs(run_model(variant(imported, sdm_layers=1), CAPTIONS).r_T, base.r_T)


def test_sdm_branches_switch(imported):
    base = run_model(variant(imported), CAPTIONS)
    with_branches = variant(imported, sdm_branches=True)
    assert differs(run_model(with_branches, CAPTIONS).f_sr, base.f_sr)
    assert differs(run_model(with_branches, CAPTIONS).r_T, base.r_T)
    with torch.no_grad():  # branches whose output layer is zero are the identity: same as none
        for mlp in (with_branches.sdm.mlp_sr, with_branches.sdm.mlp_sa):
            mlp[-1].weight.zero_()
            mlp[-1].bias.zero_()
    assert torch.allclose(run_model(with_branches, CAPTIONS).r_T, base.r_T, atol=1e-5)


def test_f_sa_pool_switch(imported):
    base = run_model(variant(imported), CAPTIONS)
    real = run_model(variant(imported, f_sa_pool="real"), CAPTIONS)
    assert differs(real.f_sa, base.f_sa) and differs(real.r_T, base.r_T)
    # without padding (one caption, not padded to 77) the two pools are the same mean
    one = ["ein roter kreis"]
    assert torch.allclose(run_model(variant(imported, f_sa_pool="real", pad_to_context=False), one).r_T,
                          run_model(variant(imported, pad_to_context=False), one).r_T, atol=1e-5)


def test_pad_to_context_switch(imported):
    base = run_model(variant(imported), CAPTIONS)
    unpadded = run_model(variant(imported, pad_to_context=False), CAPTIONS)
    assert differs(unpadded.f_sa, base.f_sa) and differs(unpadded.r_T, base.r_T)
    # with f_sa over real tokens padding changes nothing (causal attention, pooling at [SEP])
    assert torch.allclose(run_model(variant(imported, f_sa_pool="real"), CAPTIONS).r_T,
                          run_model(variant(imported, f_sa_pool="real", pad_to_context=False), CAPTIONS).r_T,
                          atol=1e-5)


def test_generator_act_switch(imported):
    base = run_model(variant(imported), CAPTIONS)
    gelu = run_model(variant(imported, generator_act="gelu"), CAPTIONS)
    assert torch.allclose(gelu.f_sa, base.f_sa) and differs(gelu.r_T, base.r_T)
    assert differs(gelu.w_z[0], base.w_z[0])


# ----------------------------------------------------------------------------- refusals

def try_import(tmp_path, state, **kw):
    path = write_inputs(tmp_path, state)
    return import_official(path, tmp_path / "out", mbert_tokenizer=tmp_path / "mbert",
                           clip_tokenizer=tmp_path / "clip_tok", **kw)


@pytest.mark.fault
def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = released_state()
    del state["transformer.resblocks.2.mlp_zi.c_fc1.bias"]
    del state["transformer.resblocks.1.acquirer.fr.mlp_afterz.c_proj2.weight"]
    state["transformer.resblocks.0.acquirer.de.mlp_extra.weight"] = torch.zeros(2)
    state["stray.weight"] = torch.zeros(2)
    with pytest.raises(OfficialImportError) as err:
        try_import(tmp_path, state, langs=["de", "fr"])
    text = str(err.value)
    for key in ("transformer.resblocks.2.mlp_zi.c_fc1.bias", "transformer.resblocks.1.acquirer.fr.mlp_afterz"
                ".c_proj2.weight", "transformer.resblocks.0.acquirer.de.mlp_extra.weight", "stray.weight"):
        assert key in text
    assert "missing 2 key(s)" in text and "unexpected 2 key(s)" in text


def test_a_shape_that_does_not_fit_is_named(tmp_path):
    state = released_state()
    state["transformer.resblocks.1.acquirer.de.mlp_beforez.c_fc.weight"] = torch.zeros(RANK, W + 1)
    with pytest.raises(OfficialImportError, match=r"adapters\.de\.1\.down\.weight"):
        try_import(tmp_path, state, langs=["de"])


@pytest.mark.fault
def test_static_acquirer_and_non_dasd_checkpoints_are_refused(tmp_path):
    state = released_state()
    mla = {k: v for k, v in state.items() if "mlp_zi" not in k and "zi_adapter" not in k
           and "mlp_beforez" not in k and "mlp_afterz" not in k}
    with pytest.raises(OfficialImportError, match="static-acquirer.*MLA"):
        try_import(tmp_path, mla)
    clip_only = {k: v for k, v in state.items() if not k.startswith(("multilingual", "transformer.zi"))}
    with pytest.raises(OfficialImportError, match="not a DASD checkpoint"):
        try_import(tmp_path, clip_only)
    with pytest.raises(OfficialImportError, match="not an OpenAI-layout CLIP"):
        try_import(tmp_path, {"bert.embeddings.word_embeddings.weight": torch.zeros(3, 2)})
    with pytest.raises(OfficialImportError, match=r"languages \['cs'\].*has adapters for \['de', 'fr', 'ja'\]"):
        try_import(tmp_path, state, langs=["cs"])


@pytest.mark.fault
def test_pickled_objects_and_wrong_tokenizers_are_refused(tmp_path):
    torch.save({"args": argparse.Namespace(lr=1)}, tmp_path / "pytorch_model.bin.1")
    with pytest.raises(OfficialImportError, match="refused: the pickle holds objects other than tensors"):
        import_official(tmp_path / "pytorch_model.bin.1", tmp_path / "o", mbert_tokenizer=tmp_path,
                        clip_tokenizer=tmp_path)
    path = write_inputs(tmp_path, released_state())
    with pytest.raises(OfficialImportError, match="trained with mBERT's ids"):
        import_official(path, tmp_path / "out", mbert_tokenizer=tmp_path / "clip_tok",
                        clip_tokenizer=tmp_path / "clip_tok")


def test_command_line_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope.bin"), "--mbert-tokenizer", str(tmp_path), "--clip-tokenizer",
                 str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.bin: no such file" in err
    assert main([str(tmp_path / "nope.bin"), "--mbert-tokenizer", str(tmp_path / "missing"),
                 "--clip-tokenizer", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--mbert-tokenizer" in err and "no such folder" in err


def test_command_line_imports(tmp_path, capsys):
    path = write_inputs(tmp_path, released_state(seed=3))
    assert main([str(path), "--langs", "fr", "--mbert-tokenizer", str(tmp_path / "mbert"),
                 "--clip-tokenizer", str(tmp_path / "clip_tok"), "--out", str(tmp_path / "out")]) == 0
    assert "imported pytorch_model.bin.4500 (fr)" in capsys.readouterr().out
    model = from_pretrained(tmp_path / "out" / "dasd", load_backbone(tmp_path / "out" / "backbone"))
    assert model.langs == ["fr"] and model.cfg.compat == "official"


# ----------------------------------------------------------------------------- a run on the imported model

def test_a_run_evaluates_the_imported_model(imported, tmp_path):
    from conftest import smoke_params
    from dasd_lib.context import Run
    from dasd_lib.pipeline import check_methods, evaluate_run, load_trained_model
    _, root, _, _, _ = imported
    extra = [f"run.imported={root / 'out'}", "data.langs=[de, fr]", "run.settings=[finetune]",
             "run.methods={finetune: [floor, oracle, dasd]}", "run.eval_variants=[native]"]
    params = smoke_params(tmp_path, *extra)
    check_methods(params)
    run_dir = tmp_path / "reports" / "imported"
    run_dir.mkdir(parents=True)
    run = Run(params, run_dir)
    model = load_trained_model(run, "finetune", "dasd", 0)
    assert model.cfg.compat == "official" and model.backbone.width == W
    frame = evaluate_run(run, write=False)
    assert set(frame.method) == {"floor", "oracle", "dasd"}
    assert sorted(frame[frame.method == "dasd"].lang) == ["de", "fr"]
    with pytest.raises(ConfigError, match=r"\['static'\] are trained by notebooks 02-03"):
        check_methods(smoke_params(tmp_path, *extra[:-2], "run.methods={finetune: [static, dasd]}"))
    with pytest.raises(ConfigError, match="has adapters for \\['de', 'fr'\\] only"):
        load_trained_model(Run(smoke_params(tmp_path, *extra[:1], "data.langs=[de, cs]"), run_dir),
                           "finetune", "dasd", 0)
    with pytest.raises(ConfigError, match="no backbone/ and dasd/ folders"):
        load_trained_model(Run(smoke_params(tmp_path, f"run.imported={tmp_path}"), run_dir),
                           "finetune", "dasd", 0)
