"""The `hf` backbone: a transformers CLIPModel plus mBERT's tokenizer and word embeddings.

Both come from local folders in save_pretrained layout (or hub ids where the hub is
reachable). Only mBERT's word-embedding matrix is read (from its safetensors file, or a
`.bin` through torch.load(weights_only=True)); the rest of BERT is never loaded.

Text tower (transformers 5.x): CLIPTextModel.embeddings (token + position embedding),
encoder.layers[i](hidden_states, attention_mask) -> hidden_states, final_layer_norm,
CLIPModel.text_projection (no bias). The causal mask passed to the layers is a bool
(T, T) for sdpa attention (the default here) or an additive float mask for eager.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from torch import nn

from dasd_lib.backbones.base import Backbone, BackboneError
from dasd_lib.backbones.wordpiece import load_tokenizer
from dasd_lib.storage import PRETRAINED_FILES, atomic_dir, write_state
from dasd_lib.config import ModelConfig, build_dataclass

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
WORD_EMBEDDING_SUFFIX = "embeddings.word_embeddings.weight"


def _resolve_file(path: str, names: list[str]) -> Path | None:
    """The first of `names` in folder `path`, or downloaded from hub id `path`."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        for name in names:
            if (folder / name).is_file():
                return folder / name
        return None
    if folder.is_absolute() or path.startswith((".", "~")) or folder.exists():
        raise BackboneError(f"'{path}' is not a folder; point model.clip_path / model.mbert_path "
                            f"at a folder written by save_pretrained")
    try:  # a hub id: only works where the hub is reachable
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover
        return None
    for name in names:
        try:
            return Path(hf_hub_download(path, name))
        except Exception:  # noqa: BLE001 - try the next file name
            continue
    return None


def _pick_key(keys: list[str], where: str) -> str:
    hits = [k for k in keys if k.endswith(WORD_EMBEDDING_SUFFIX)]
    if not hits:
        raise BackboneError(f"{where}: no tensor named '*{WORD_EMBEDDING_SUFFIX}'; is this a BERT model?")
    return min(hits, key=len)  # 'embeddings...' or 'bert.embeddings...'


def read_mbert_embeddings(path: str) -> torch.Tensor:
    """mBERT's word embeddings (vocab, e) from a folder or hub id, without loading the rest."""
    index = _resolve_file(path, ["model.safetensors.index.json", "pytorch_model.bin.index.json"])
    if index is not None:  # sharded checkpoint: find the shard holding the embedding
        weight_map = json.loads(index.read_text())["weight_map"]
        key = _pick_key(list(weight_map), str(index))
        files = [weight_map[key]]
    else:
        files = ["model.safetensors", "pytorch_model.bin"]
    file = _resolve_file(path, files)
    if file is None:
        raise BackboneError(f"model.mbert_path '{path}': no model.safetensors or pytorch_model.bin "
                            f"found; point it at a BERT folder written by save_pretrained")
    if file.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(file), framework="pt") as f:
            return f.get_tensor(_pick_key(list(f.keys()), str(file))).float()
    try:
        try:  # a foreign pickle: tensors only, never arbitrary objects
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)  # noqa: TID251 (the sanctioned loader)
        except RuntimeError:  # not a zip checkpoint: cannot be memory-mapped
            state = torch.load(file, map_location="cpu", weights_only=True)  # noqa: TID251
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [""]
        why = next((ln for ln in lines if "WeightsUnpickler" in ln), lines[0]).split(". ")[0][:200]
        raise BackboneError(f"{file}: refused: the pickle holds objects other than tensors, and "
                            f"dasd_lib loads .bin files only with torch.load(weights_only=True) "
                            f"({why}); convert it to safetensors where you trust it") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise BackboneError(f"{file}: not a readable torch checkpoint ({err})") from err
    if not isinstance(state, dict):
        raise BackboneError(f"{file}: expected a state dict of tensors, got {type(state).__name__}")
    emb = state[_pick_key(list(state), str(file))].float().clone()
    del state
    return emb


def _image_stats(clip_path: str) -> tuple[list[float], list[float]]:
    file = _resolve_file(clip_path, ["preprocessor_config.json"])
    if file is None:
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    cfg = json.loads(file.read_text())
    return list(cfg.get("image_mean", OPENAI_CLIP_MEAN)), list(cfg.get("image_std", OPENAI_CLIP_STD))


class HFBackbone(Backbone):
    kind = "hf"

    def __init__(self, *, cfg: ModelConfig, clip: nn.Module, tokenizer_source, tokenizer_target,
                 ml_embeddings: torch.Tensor, image_mean: list[float], image_std: list[float]):
        super().__init__()
        self.cfg = cfg
        self.clip = clip
        tc = clip.config.text_config
        self.embed_dim, self.width = clip.config.projection_dim, tc.hidden_size
        self.num_layers, self.context_length = tc.num_hidden_layers, tc.max_position_embeddings
        self.image_size = clip.config.vision_config.image_size
        self.tokenizer_source, self.tokenizer_target = tokenizer_source, tokenizer_target
        if len(tokenizer_target) > ml_embeddings.shape[0]:
            raise BackboneError(f"model.mbert_path '{cfg.mbert_path}': the tokenizer has "
                                f"{len(tokenizer_target)} tokens but the embedding only "
                                f"{ml_embeddings.shape[0]} rows")
        # a plain attribute, not a buffer: read once by build_target_model, never moved to GPU
        self.ml_init_embeddings = ml_embeddings
        self.ml_embed_dim = int(ml_embeddings.shape[1])
        self.image_mean, self.image_std = image_mean, image_std

    # the frozen text-tower pieces, as views into the CLIPModel (no duplicate registration)
    @property
    def blocks(self) -> nn.ModuleList:
        return self.clip.text_model.encoder.layers

    @property
    def positional_embedding(self) -> nn.Parameter:
        return self.clip.text_model.embeddings.position_embedding.weight  # (ctx, w)

    @property
    def final_norm(self) -> nn.Module:
        return self.clip.text_model.final_layer_norm

    @property
    def text_projection(self) -> nn.Module:
        return self.clip.text_projection

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def call_block(self, block: nn.Module, h: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        out = block(h, attn_mask)
        return out[0] if isinstance(out, tuple) else out  # transformers < 5 returned a tuple

    def causal_mask(self, T: int, device: torch.device | str) -> torch.Tensor:
        allowed = super().causal_mask(T, device)
        if self.clip.config._attn_implementation == "eager":  # eager adds the mask to the scores
            return torch.zeros(T, T, device=device).masked_fill_(~allowed, torch.finfo(torch.float32).min)
        return allowed

    def embed_source_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.clip.text_model.embeddings.token_embedding(ids)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.clip.get_image_features(pixel_values=pixels)
        return getattr(out, "pooler_output", out)  # 5.x: BaseModelOutputWithPooling

    def identity_name(self) -> str:
        return f"hf(clip={Path(self.cfg.clip_path).name},mbert={Path(self.cfg.mbert_path).name})"

    def save(self, folder: str | Path, record: dict | None = None) -> Path:
        """Atomically write the CLIPModel (safetensors + config), both tokenizers and the
        multilingual embeddings, so a fine-tuned VLP can be reloaded exactly; `record` is
        the fine-tune's (checkpoint.make_record)."""
        import dataclasses
        meta = {"kind": self.kind, "model_config": dataclasses.asdict(self.cfg),
                "image_mean": self.image_mean, "image_std": self.image_std,
                "identity": self.identity(), "record": record}
        with atomic_dir(folder) as tmp:
            self.clip.save_pretrained(str(tmp / "clip"), safe_serialization=True)
            self.tokenizer_source.save_pretrained(str(tmp / "clip"))
            self.tokenizer_target.save_pretrained(str(tmp / "tokenizer_target"))
            write_state(tmp, {"ml_embeddings": self.ml_init_embeddings}, meta, PRETRAINED_FILES)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, tensors: dict, meta: dict) -> HFBackbone:
        folder = Path(folder)
        cfg = build_dataclass(ModelConfig, meta["model_config"], f"{folder}/config.json [model_config]")
        return cls(cfg=cfg, clip=_load_clip(str(folder / "clip")),
                   tokenizer_source=load_tokenizer(folder / "clip", f"{folder} (CLIP)"),
                   tokenizer_target=load_tokenizer(folder / "tokenizer_target", f"{folder} (mBERT)"),
                   ml_embeddings=tensors["ml_embeddings"],
                   image_mean=meta["image_mean"], image_std=meta["image_std"])


def _load_clip(path: str) -> nn.Module:
    from transformers import CLIPModel
    try:
        return CLIPModel.from_pretrained(path, attn_implementation="sdpa")
    except (OSError, ValueError, pickle.UnpicklingError) as err:  # a .bin is read weights_only
        raise BackboneError(f"model.clip_path '{path}': cannot load a CLIPModel ({err}); use a "
                            f"folder written by CLIPModel.save_pretrained or a hub id") from err


def load_hf_backbone(cfg: ModelConfig) -> HFBackbone:
    """CLIPModel + its tokenizer from cfg.clip_path; mBERT tokenizer and word embeddings
    from cfg.mbert_path. All weights trainable until freeze() (English fine-tune first)."""
    for key in ("clip_path", "mbert_path"):
        if not getattr(cfg, key):
            raise BackboneError(f"model.{key} is empty: set it to a local folder (save_pretrained "
                                f"layout) or a hub id for backbone 'hf'")
    mean, std = _image_stats(cfg.clip_path)
    return HFBackbone(cfg=cfg, clip=_load_clip(cfg.clip_path),
                      tokenizer_source=load_tokenizer(cfg.clip_path, f"model.clip_path '{cfg.clip_path}'"),
                      tokenizer_target=load_tokenizer(cfg.mbert_path, f"model.mbert_path '{cfg.mbert_path}'"),
                      ml_embeddings=read_mbert_embeddings(cfg.mbert_path), image_mean=mean, image_std=std)
