"""The DASD authors' released checkpoints in the workbook's own format.

A released file (`pytorch_model.bin.<step>`, shared/design/official_checkpoint.md) is one
state dict: OpenAI's CLIP in its original layout with DASD's parts added. `import_official`
reads it with torch.load(weights_only=True) only, checks its keys against that layout
(naming every missing and every unexpected key, refusing a file that is not DASD's, such
as a static-acquirer MLA checkpoint), and writes two folders of safetensors + JSON:

    <out>/backbone/   an `hf` backbone (backbones.hf: the CLIP converted to transformers'
                      CLIPModel, CLIP's and mBERT's tokenizers, mBERT's word embeddings)
    <out>/dasd/       the trained DASD target tower (checkpoint.save_pretrained), with
                      model.compat: official so that loading it computes the authors' forward

    backbone = load_backbone(out / "backbone")
    model = from_pretrained(out / "dasd", backbone)

The command line is `dasd-import-official PATH --langs de,fr,cs --mbert-tokenizer DIR
--clip-tokenizer DIR --out DIR`.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import pickle
import re
import sys
from pathlib import Path

import torch

from .backbones.base import BackboneError, eos_id_of
from .backbones.hf import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, HFBackbone, read_mbert_embeddings
from .backbones.wordpiece import load_tokenizer
from .checkpoint import CheckpointError, file_sha256, from_pretrained, make_record, save_pretrained
from .config import OFFICIAL_COMPAT, ConfigError, HFConfig, ModelConfig, Params
from .model import METHODS, TargetTextModel, build_target_model

log = logging.getLogger("dasd_lib.official")

# the ids the released weights were trained with (mBERT cased): pooling is at 102, padding 0
MBERT_SPECIAL_IDS = {"pad_token_id": 0, "cls_token_id": 101, "sep_token_id": 102}
BACKBONE_DIR, TARGET_DIR = "backbone", "dasd"
# the notebooks a run with run.imported skips: the VLP and both target stages (the imported
# folder holds what they would train)
IMPORTED_SKIPS = ("01", "02", "03")
IMPORT_KIND = "official_import"

BLOCK_PARTS = ["attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
               "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
               "mlp.c_proj.weight", "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias"]
TEXT_KEYS = ["token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
             "text_projection", "logit_scale"]
VISION_KEYS = ["visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
               "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight",
               "visual.ln_post.bias", "visual.proj"]
DASD_KEYS = ["multilingual_embedding.weight", "multilingual_embedding_linear.weight",
             "multilingual_embedding_linear.bias", "transformer.zi_adapter_student.c_fc1.weight",
             "transformer.zi_adapter_student.c_fc1.bias", "ln_mu.weight", "ln_mu.bias", "sr_projection",
             "ln_sigma.weight", "ln_sigma.bias"]
GENERATOR_HEAD = "transformer.resblocks.{n}.mlp_zi.c_fc1.{p}"
DOWN = "transformer.resblocks.{n}.acquirer.{lang}.mlp_beforez.c_fc.{p}"
UP = "transformer.resblocks.{n}.acquirer.{lang}.mlp_afterz.c_proj2.{p}"
# in the file, never used by the forward (the branch MLPs, spare projections, a stray copy of
# the generator input) or only by training (the discriminator): skipped, and said so once
UNUSED = [r"transformer\.resblocks\.\d+\.acquirer\.[^.]+\.(mlp_sr|mlp_sa|ln)\..+",
          r"target_projection", r"sigma_projection", r"visual\.transformer\.zi_adapter_student\..+",
          r"AdvAgent\.discriminator\.model\.\d+\.(weight|bias)"]
ACQUIRER_RE = re.compile(r"transformer\.resblocks\.\d+\.acquirer\.([^.]+)\.")


class OfficialImportError(ValueError):
    """A file that is not a DASD release, or inputs that do not fit it."""


# ----------------------------------------------------------------------------- reading

def read_official_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The released state dict, read as tensors only (torch.load(weights_only=True))."""
    path = Path(path)
    if not path.is_file():
        raise OfficialImportError(f"{path}: no such file (a released pytorch_model.bin.<step>)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # noqa: TID251 (tensors only)
    except pickle.UnpicklingError as err:
        why = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise OfficialImportError(f"{path}: refused: the pickle holds objects other than tensors, and "
                                  f"dasd_lib reads .bin files only with torch.load(weights_only=True) "
                                  f"({why})") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise OfficialImportError(f"{path}: not a readable torch checkpoint ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OfficialImportError(f"{path}: expected a state dict of tensors (torch.save(model."
                                  f"state_dict())), got {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):  # saved from a DataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _block_count(keys: set[str], prefix: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def checkpoint_languages(keys: set[str]) -> list[str]:
    """The languages a checkpoint has dynamic adapters for."""
    return sorted({m.group(1) for k in keys if ".mlp_beforez." in k and (m := ACQUIRER_RE.match(k))})


def check_layout(state: dict[str, torch.Tensor], langs: list[str] | None, where: str
                 ) -> tuple[list[str], list[str]]:
    """(languages to import, keys skipped) for a DASD release; OfficialImportError naming
    every missing and unexpected key otherwise, or saying what the file is instead."""
    keys = set(state)
    if not {"token_embedding.weight", "visual.conv1.weight"} & keys:
        raise OfficialImportError(f"{where}: not an OpenAI-layout CLIP state dict (no token_embedding."
                                  f"weight, no visual.conv1.weight); expected a DASD release "
                                  f"pytorch_model.bin.<step>")
    if "multilingual_embedding.weight" not in keys:
        raise OfficialImportError(f"{where}: a CLIP without DASD's parts (no multilingual_embedding."
                                  f"weight): not a DASD checkpoint")
    has_generator = any(".mlp_zi." in k or "zi_adapter_student" in k for k in keys)
    if not has_generator:
        what = ("a static-acquirer (MLA-style) checkpoint: language acquirers but no dynamic-"
                "adapter generator (transformer.zi_adapter_student, mlp_zi)") if any(
            ACQUIRER_RE.match(k) for k in keys) else "not DASD's: no dynamic-adapter generator"
        raise OfficialImportError(f"{where}: {what}; only DASD checkpoints are imported (the "
                                  f"static method is trained by the workbook, not imported)")
    found = checkpoint_languages(keys)
    langs = list(found) if langs is None else list(langs)
    absent = [lang for lang in langs if lang not in found]
    if not langs or absent or len(set(langs)) != len(langs):
        raise OfficialImportError(f"{where}: languages {langs} asked for; the checkpoint has "
                                  f"adapters for {found}" + (f" (not {absent})" if absent else ""))
    L, Lv = _block_count(keys, "transformer.resblocks."), _block_count(keys, "visual.transformer.resblocks.")
    expected = set(TEXT_KEYS + VISION_KEYS + DASD_KEYS)
    expected |= {f"transformer.resblocks.{n}.{p}" for n in range(L) for p in BLOCK_PARTS}
    expected |= {f"visual.transformer.resblocks.{n}.{p}" for n in range(Lv) for p in BLOCK_PARTS}
    for n in range(L):
        for p in ("weight", "bias"):
            expected.add(GENERATOR_HEAD.format(n=n, p=p))
            expected |= {pat.format(n=n, lang=lang, p=p) for pat in (DOWN, UP) for lang in langs}
    other_langs = [lang for lang in found if lang not in langs]
    skip = [re.compile(p) for p in UNUSED] + [re.compile(rf"transformer\.resblocks\.\d+\.acquirer\."
                                                         rf"{re.escape(lang)}\..+") for lang in other_langs]
    missing = sorted(expected - keys)
    skipped = sorted(k for k in keys - expected if any(p.fullmatch(k) for p in skip))
    unexpected = sorted(keys - expected - set(skipped))
    if missing or unexpected:
        raise OfficialImportError(f"{where}: does not fit the DASD release layout ({L} text blocks, "
                                  f"{Lv} vision blocks, languages {langs}): missing {len(missing)} "
                                  f"key(s) {missing}; unexpected {len(unexpected)} key(s) {unexpected}")
    return langs, skipped


# ----------------------------------------------------------------------------- converting

def _heads(width: int, where: str) -> int:
    if width % 64:
        raise OfficialImportError(f"{where}: width {width} is not a multiple of 64 (OpenAI CLIP's "
                                  f"heads of 64)")
    return width // 64


def clip_config(state: dict[str, torch.Tensor], tokenizer_source, where: str):
    """transformers' CLIPConfig for the sizes found in the OpenAI-layout tensors."""
    from transformers import CLIPConfig  # optional and heavy: only an import needs CLIP's modules
    keys = set(state)
    ctx, w = state["positional_embedding"].shape
    vocab = state["token_embedding.weight"].shape[0]
    conv = state["visual.conv1.weight"]
    vw, patch = conv.shape[0], conv.shape[-1]
    grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
    if len(tokenizer_source) > vocab:
        raise OfficialImportError(f"--clip-tokenizer: {len(tokenizer_source)} tokens, but the "
                                  f"checkpoint's token_embedding has {vocab} rows; use CLIP's tokenizer")
    eos = eos_id_of(tokenizer_source, "--clip-tokenizer")
    text = dict(vocab_size=vocab, hidden_size=w, max_position_embeddings=ctx,
                intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                num_hidden_layers=_block_count(keys, "transformer.resblocks."),
                num_attention_heads=_heads(w, where), hidden_act="quick_gelu", layer_norm_eps=1e-5,
                eos_token_id=eos, bos_token_id=getattr(tokenizer_source, "bos_token_id", None),
                pad_token_id=getattr(tokenizer_source, "pad_token_id", None))
    vision = dict(hidden_size=vw, patch_size=patch, image_size=patch * grid,
                  intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                  num_hidden_layers=_block_count(keys, "visual.transformer.resblocks."),
                  num_attention_heads=_heads(vw, where), hidden_act="quick_gelu", layer_norm_eps=1e-5)
    return CLIPConfig(text_config=text, vision_config=vision,
                      projection_dim=state["text_projection"].shape[1])


def _blocks(state: dict, src: str, dst: str, n_blocks: int) -> dict[str, torch.Tensor]:
    """OpenAI residual blocks -> CLIPEncoderLayer tensors (in_proj split into q, k, v)."""
    out = {}
    for n in range(n_blocks):
        s, d = f"{src}.{n}", f"{dst}.{n}"
        for part, w in zip("qkv", state[f"{s}.attn.in_proj_weight"].chunk(3)):
            out[f"{d}.self_attn.{part}_proj.weight"] = w
        for part, b in zip("qkv", state[f"{s}.attn.in_proj_bias"].chunk(3)):
            out[f"{d}.self_attn.{part}_proj.bias"] = b
        for ours, theirs in [("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                             ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"), ("layer_norm2", "ln_2")]:
            for p in ("weight", "bias"):
                out[f"{d}.{ours}.{p}"] = state[f"{s}.{theirs}.{p}"]
    return out


def convert_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The OpenAI CLIP tensors under transformers' CLIPModel names."""
    keys = set(state)
    out = {"logit_scale": state["logit_scale"],
           "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
           "text_model.final_layer_norm.weight": state["ln_final.weight"],
           "text_model.final_layer_norm.bias": state["ln_final.bias"],
           "text_projection.weight": state["text_projection"].t(),  # used as x @ P: Linear holds P^T
           "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
           "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
           "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
           "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],  # transformers' spelling
           "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
           "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
           "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
           "visual_projection.weight": state["visual.proj"].t()}
    out |= _blocks(state, "transformer.resblocks", "text_model.encoder.layers",
                   _block_count(keys, "transformer.resblocks."))
    out |= _blocks(state, "visual.transformer.resblocks", "vision_model.encoder.layers",
                   _block_count(keys, "visual.transformer.resblocks."))
    return {k: v.float().contiguous() for k, v in out.items()}


def convert_dasd(state: dict[str, torch.Tensor], langs: list[str]) -> dict[str, torch.Tensor]:
    """DASD's tensors under dasd_lib.model.TargetTextModel's names (method dasd)."""
    L = _block_count(set(state), "transformer.resblocks.")
    out = {"embedding.weight": state["multilingual_embedding.weight"],
           "embed_proj.weight": state["multilingual_embedding_linear.weight"],
           "embed_proj.bias": state["multilingual_embedding_linear.bias"],
           "sdm.ln_sr.weight": state["ln_mu.weight"], "sdm.ln_sr.bias": state["ln_mu.bias"],
           "sdm.ln_sa.weight": state["ln_sigma.weight"], "sdm.ln_sa.bias": state["ln_sigma.bias"],
           "sdm.proj_sr.weight": state["sr_projection"].t(),  # used as x @ P_sr
           "generator.inp.weight": state["transformer.zi_adapter_student.c_fc1.weight"],
           "generator.inp.bias": state["transformer.zi_adapter_student.c_fc1.bias"]}
    for p in ("weight", "bias"):  # the L heads A_N stacked: our one linear, block 0's rows first
        out[f"generator.heads.{p}"] = torch.cat([state[GENERATOR_HEAD.format(n=n, p=p)] for n in range(L)])
        for lang in langs:
            for n in range(L):
                out[f"adapters.{lang}.{n}.down.{p}"] = state[DOWN.format(n=n, lang=lang, p=p)]
                out[f"adapters.{lang}.{n}.up.{p}"] = state[UP.format(n=n, lang=lang, p=p)]
    return {k: v.float().contiguous() for k, v in out.items()}


def target_config(state: dict[str, torch.Tensor], langs: list[str]) -> ModelConfig:
    """The ModelConfig of the imported tower: its sizes, and the authors' forward (the text
    tower's sizes are the CLIP's, read by the backbone)."""
    keys = set(state)
    rank = state[DOWN.format(n=0, lang=langs[0], p="weight")].shape[0]
    disc = sorted((int(m.group(1)), state[k].shape[0]) for k in keys
                  if (m := re.fullmatch(r"AdvAgent\.discriminator\.model\.(\d+)\.weight", k)))
    return ModelConfig(
        backbone="hf", adapter_rank=int(rank),
        generator_dim=int(state["transformer.zi_adapter_student.c_fc1.weight"].shape[0]),
        disc_hidden=[int(rows) for _, rows in disc[:-1]] or [256, 128],
        compat="official", **OFFICIAL_COMPAT)


def _check_target_tokenizer(tokenizer, rows: int) -> None:
    wrong = {name: getattr(tokenizer, name, None) for name, want in MBERT_SPECIAL_IDS.items()
             if getattr(tokenizer, name, None) != want}
    if wrong:
        raise OfficialImportError(f"--mbert-tokenizer: the checkpoint was trained with mBERT's ids "
                                  f"{MBERT_SPECIAL_IDS}, this tokenizer has {wrong}; use "
                                  f"bert-base-multilingual-cased's tokenizer")
    if len(tokenizer) > rows:
        raise OfficialImportError(f"--mbert-tokenizer: {len(tokenizer)} tokens, but the checkpoint's "
                                  f"multilingual_embedding has {rows} rows")


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin",
               "model.safetensors.index.json", "pytorch_model.bin.index.json"))


# ----------------------------------------------------------------------------- importing

@dataclasses.dataclass
class ImportResult:
    backbone_dir: Path
    target_dir: Path
    langs: list[str]
    skipped: list[str]     # keys of the file the forward never uses
    ml_embeddings: str     # where the backbone's initial E came from: "mbert" or "checkpoint"


def import_official(path: str | Path, out: str | Path, *, mbert_tokenizer: str | Path,
                    clip_tokenizer: str | Path, langs: list[str] | None = None) -> ImportResult:
    """Convert a released DASD state dict into <out>/backbone (hf) and <out>/dasd (target
    tower, compat official). `langs`: the adapter sets to import (None: all in the file).
    The backbone's initial multilingual embedding (what untrained methods such as floor use)
    is mBERT's when `mbert_tokenizer` also holds mBERT's weights, else the checkpoint's."""
    path, out = Path(path), Path(out).resolve()
    mbert_dir, clip_dir = Path(mbert_tokenizer), Path(clip_tokenizer)
    for flag, folder in (("--mbert-tokenizer", mbert_dir), ("--clip-tokenizer", clip_dir)):
        if not folder.is_dir():
            raise OfficialImportError(f"{flag} {folder}: no such folder (a tokenizer saved with "
                                      f"save_pretrained)")
    state = read_official_state(path)
    langs, skipped = check_layout(state, langs, str(path))
    if skipped:
        log.info("%s: skipping %d keys the forward never uses (branch MLPs, spare projections, "
                 "the discriminator, other languages)", path.name, len(skipped))
    tok_source = load_tokenizer(clip_dir, "--clip-tokenizer")
    tok_target = load_tokenizer(mbert_dir, "--mbert-tokenizer")
    E = state["multilingual_embedding.weight"]
    _check_target_tokenizer(tok_target, E.shape[0])

    from transformers import CLIPModel  # optional and heavy (about a second): only an import needs it
    clip = CLIPModel(clip_config(state, tok_source, str(path)))
    try:
        clip.load_state_dict(convert_clip(state), strict=True)
    except RuntimeError as err:  # a shape that does not fit the sizes read from the file
        raise OfficialImportError(f"{path}: the CLIP tensors do not fit one CLIP ({err})") from err
    clip.eval()

    ml_source, ml_init = "checkpoint", E.float().clone()
    if _has_weights(mbert_dir):
        ml_source, ml_init = "mbert", read_mbert_embeddings(str(mbert_dir))
        if ml_init.shape != E.shape:
            raise OfficialImportError(f"--mbert-tokenizer {mbert_dir}: mBERT's word embeddings are "
                                      f"{tuple(ml_init.shape)}, the checkpoint's {tuple(E.shape)}")
    cfg = target_config(state, langs)
    hf = HFConfig(clip_path=str(out / BACKBONE_DIR / "clip"), mbert_path=str(mbert_dir.resolve()))
    backbone = HFBackbone(cfg=hf, clip=clip, tokenizer_source=tok_source, tokenizer_target=tok_target,
                          ml_embeddings=ml_init, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    model = build_target_model(backbone, cfg, "dasd", langs, seed=0)
    try:
        model.load_saved_state_dict(convert_dasd(state, langs), where=str(path))
    except ValueError as err:
        raise OfficialImportError(str(err)) from err

    step = path.name.rsplit(".", 1)[-1] if path.name.startswith("pytorch_model.bin.") else ""
    record = make_record({"kind": IMPORT_KIND, "method": "dasd", "langs": sorted(langs)},
                         {"source": path.name, "source_sha256": file_sha256(path), "step": step})
    backbone_dir = backbone.save(out / BACKBONE_DIR, record=record)
    target_dir = save_pretrained(model, out / TARGET_DIR, record=record, extra_meta={
        "source": str(path), "step": step, "skipped_keys": len(skipped), "ml_embeddings": ml_source})
    return ImportResult(backbone_dir, target_dir, langs, skipped, ml_source)


# ----------------------------------------------------------------------------- a run on an imported model

def imported_backbone_dir(folder: str | Path) -> Path:
    """<folder>/backbone of a run.imported folder, or a clear error."""
    where = Path(folder) / BACKBONE_DIR
    if not (where / "config.json").is_file() or not (Path(folder) / TARGET_DIR / "config.json").is_file():
        raise ConfigError(f"run.imported '{folder}': no {BACKBONE_DIR}/ and {TARGET_DIR}/ folders "
                          f"there; write them with dasd-import-official PATH --out {folder}")
    return where


def check_imported_methods(params: Params) -> None:
    """With run.imported, only dasd (the imported tower) and the untrained methods can run:
    the others would need notebooks 02-03, which such a run skips."""
    if not params.run.imported:
        return
    for setting, names in params.run.methods.items():
        bad = [m for m in names if m in METHODS and METHODS[m].trained and m != "dasd"]
        if bad:
            raise ConfigError(f"run.methods.{setting}: {bad} are trained by notebooks 02-03, which a "
                              f"run with run.imported skips; list only dasd, floor and oracle")


def load_imported_tower(folder: str | Path, backbone, method: str, langs: list[str]) -> TargetTextModel:
    """The imported DASD tower of a run.imported folder, for the run's languages."""
    if method != "dasd":
        raise ConfigError(f"run.imported holds a DASD tower, not method '{method}'")
    model = from_pretrained(Path(folder) / TARGET_DIR, backbone)
    absent = [lang for lang in langs if lang not in model.langs]
    if absent:
        raise ConfigError(f"data.langs asks for {absent}, but the imported tower in {folder} has "
                          f"adapters for {model.langs} only; set data.langs to those")
    return model


# ----------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dasd-import-official",
        description="Convert a DASD release (pytorch_model.bin.<step>) into an hf backbone folder "
                    "and a DASD target-tower folder (OUT/backbone, OUT/dasd).")
    parser.add_argument("path", help="the released state dict, e.g. pytorch_model.bin.45000")
    parser.add_argument("--langs", default="", help="comma-separated languages to import (default: all)")
    parser.add_argument("--mbert-tokenizer", required=True,
                        help="folder of bert-base-multilingual-cased's tokenizer (and weights, optional)")
    parser.add_argument("--clip-tokenizer", required=True,
                        help="folder of the CLIP tokenizer (e.g. openai/clip-vit-base-patch16)")
    parser.add_argument("--out", required=True, help="folder to write backbone/ and dasd/ into")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    langs = [lang.strip() for lang in args.langs.split(",") if lang.strip()] or None
    try:
        result = import_official(args.path, args.out, mbert_tokenizer=args.mbert_tokenizer,
                                 clip_tokenizer=args.clip_tokenizer, langs=langs)
    except (OfficialImportError, BackboneError, CheckpointError) as err:
        print(f"dasd-import-official: {err}", file=sys.stderr)
        return 1
    print(f"imported {Path(args.path).name} ({', '.join(result.langs)}): backbone {result.backbone_dir}, "
          f"DASD tower {result.target_dir}; {len(result.skipped)} unused keys skipped; the backbone's "
          f"initial embedding is the {result.ml_embeddings}'s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
