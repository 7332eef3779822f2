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
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dasd_lib.backbones.base import Backbone, BackboneError, uint8_images
from dasd_lib.backbones.wordpiece import load_tokenizer
from dasd_lib.data.image_files import _to_rgb, load_images
from dasd_lib.storage import PRETRAINED_FILES, atomic_dir, write_state
from dasd_lib.config import HFConfig, saved_model_config

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
WORD_EMBEDDING_SUFFIX = "embeddings.word_embeddings.weight"
PIL_BICUBIC = 3  # transformers' PILImageResampling.BICUBIC, CLIP's filter


def _resolve_file(path: str, names: list[str]) -> Path | None:
    """The first of `names` in folder `path`, or downloaded from hub id `path`."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        for name in names:
            if (folder / name).is_file():
                return folder / name
        return None
    if folder.is_absolute() or path.startswith((".", "~")) or folder.exists():
        raise BackboneError(f"'{path}' is not a folder; point hf.clip_path / hf.mbert_path "
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
        raise BackboneError(f"hf.mbert_path '{path}': no model.safetensors or pytorch_model.bin "
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


# ----------------------------------------------------------------------------- image preprocessing
#
# What transformers' CLIPImageProcessor does on its PIL path (the one it takes without
# torchvision, and the only one of older versions): RGB (transparency composited onto
# white), resize with PIL (the shorter side to size.shortest_edge, the longer to
# int(shortest_edge * long / short); or to size.height x size.width), centre crop (top =
# (H - h) // 2, zero padding where the image is smaller), uint8 -> float64 * rescale_factor
# -> float32, (x - mean) / std in float32. The settings come from the CLIP folder's
# preprocessor_config.json, read as transformers reads them; without that file, the
# processor's own defaults with the vision tower's input size.

def _size_setting(value: Any, square: bool, what: str) -> dict[str, int]:
    """A processor size as transformers reads it: an int is the shorter side (a square when
    `square`, as crop_size is), a pair is (height, width), a dict names its keys."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {"height": value, "width": value} if square else {"shortest_edge": value}
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return {"height": int(value[0]), "width": int(value[1])}
    if isinstance(value, dict):
        given = {k: v for k, v in value.items() if v is not None}
        if set(given) in ({"shortest_edge"}, {"height", "width"}):
            return {k: int(v) for k, v in given.items()}
    raise BackboneError(f"{what}: {value!r} is not a size this workbook reads (an int, "
                        f"[height, width], {{'shortest_edge': n}} or {{'height': h, 'width': w}})")


def default_image_preprocess(image_size: int, mean: list[float] | None = None,
                             std: list[float] | None = None) -> dict:
    """CLIPImageProcessor's defaults (OpenAI's CLIP preprocessing) for `image_size` pixels."""
    return {"resize": {"shortest_edge": int(image_size)}, "resample": PIL_BICUBIC,
            "crop": [int(image_size), int(image_size)], "rescale": 1 / 255,
            "mean": [float(v) for v in (mean or OPENAI_CLIP_MEAN)],
            "std": [float(v) for v in (std or OPENAI_CLIP_STD)], "convert_rgb": True}


def _vision_image_size(clip_path: str) -> int:
    file = _resolve_file(clip_path, ["config.json"])
    if file is None:
        raise BackboneError(f"hf.clip_path '{clip_path}': no config.json; point it at a folder "
                            f"written by CLIPModel.save_pretrained")
    return int(json.loads(file.read_text()).get("vision_config", {}).get("image_size", 224))


def clip_image_preprocess(clip_path: str, image_size: int | None = None) -> dict:
    """The image preprocessing of the CLIP at `clip_path` (its preprocessor_config.json, as
    transformers' CLIPImageProcessor reads it) as a JSON-able dict: what HFBackbone applies,
    and what enters the frozen-feature cache key and the English fine-tune's record.
    `image_size`: the vision tower's input size (read from config.json when None); the
    settings must turn every image into image_size x image_size pixels."""
    size = _vision_image_size(clip_path) if image_size is None else int(image_size)
    file = _resolve_file(clip_path, ["preprocessor_config.json"])
    if file is None:
        return default_image_preprocess(size)
    what = str(file)
    try:
        cfg = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise BackboneError(f"{what}: not readable JSON ({err})") from err
    if not isinstance(cfg, dict):
        raise BackboneError(f"{what}: expected a JSON object")
    d = default_image_preprocess(224)  # the processor's class defaults
    spec = {
        "resize": _size_setting(cfg.get("size", d["resize"]), bool(cfg.get("default_to_square", False)),
                                f"{what} size") if cfg.get("do_resize", True) else None,
        "resample": int(cfg.get("resample", PIL_BICUBIC)),
        "crop": None, "rescale": float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else None,
        "mean": [float(v) for v in cfg.get("image_mean", d["mean"])] if cfg.get("do_normalize", True) else None,
        "std": [float(v) for v in cfg.get("image_std", d["std"])] if cfg.get("do_normalize", True) else None,
        "convert_rgb": bool(cfg.get("do_convert_rgb", True))}
    if cfg.get("do_center_crop", True):
        crop = _size_setting(cfg.get("crop_size", d["crop"]), True, f"{what} crop_size")
        if set(crop) != {"height", "width"}:
            raise BackboneError(f"{what}: crop_size must give a height and a width")
        spec["crop"] = [crop["height"], crop["width"]]
    if _output_size(spec) != [size, size]:
        raise BackboneError(f"{what}: these settings do not turn every image into {size} x {size} "
                            f"pixels, the input size of the CLIP's vision tower (crop {spec['crop']}, "
                            f"resize {spec['resize']}); fix crop_size")
    for key in ("mean", "std"):
        if spec[key] is not None and len(spec[key]) != 3:
            raise BackboneError(f"{what}: image_{key} must hold 3 values (R, G, B), got {spec[key]}")
    if spec["std"] is not None and min(spec["std"]) <= 0:
        raise BackboneError(f"{what}: image_std must be positive, got {spec['std']}")
    try:
        Image.Resampling(spec["resample"])
    except ValueError:
        raise BackboneError(f"{what}: resample {spec['resample']} is not a PIL resampling filter") from None
    return spec


def _output_size(spec: dict) -> list[int] | None:
    """[height, width] of every image the settings make, or None when that depends on the image."""
    r = spec.get("resize")
    return spec.get("crop") or ([r["height"], r["width"]] if r and "height" in r else None)


def processor_config(spec: dict) -> dict:
    """`spec` written as a preprocessor_config.json that CLIPImageProcessor reads back."""
    return {"image_processor_type": "CLIPImageProcessor",
            "do_resize": spec["resize"] is not None, "size": spec["resize"] or {"shortest_edge": 224},
            "resample": spec["resample"], "do_center_crop": spec["crop"] is not None,
            "crop_size": {"height": spec["crop"][0], "width": spec["crop"][1]} if spec["crop"] else None,
            "do_rescale": spec["rescale"] is not None, "rescale_factor": spec["rescale"] or 1 / 255,
            "do_normalize": spec["mean"] is not None, "image_mean": spec["mean"] or OPENAI_CLIP_MEAN,
            "image_std": spec["std"] or OPENAI_CLIP_STD, "do_convert_rgb": spec["convert_rgb"]}


def _to_rgb_like_processor(im: Image.Image, convert_rgb: bool) -> Image.Image:
    """RGB as CLIPImageProcessor makes it: transparency composited onto white. 16-bit
    greyscale is scaled to 8 bits first (the processor's plain convert would clip it to
    white: the one place this deliberately differs)."""
    if convert_rgb and ("A" in im.getbands() or im.info.get("transparency") is not None):
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return _to_rgb(im)


def _centre_crop(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) -> (height, width, 3), as transformers' center_crop (zero padding, centred
    with ceil offsets, where the image is smaller than the crop)."""
    H, W = x.shape[:2]
    top, left = (H - height) // 2, (W - width) // 2
    if top >= 0 and left >= 0:
        return x[top:top + height, left:left + width]
    nh, nw = max(height, H), max(width, W)
    top_pad, left_pad = math.ceil((nh - H) / 2), math.ceil((nw - W) / 2)
    padded = np.zeros((nh, nw) + x.shape[2:], x.dtype)
    padded[top_pad:top_pad + H, left_pad:left_pad + W] = x
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top):min(nh, top + height), max(0, left):min(nw, left + width)]


def resize_and_crop(im: Image.Image, spec: dict) -> np.ndarray:
    """An RGB PIL image -> uint8 (S, S, 3): the processor's resize and centre crop."""
    if spec["resize"] is not None:
        r, (w, h) = spec["resize"], im.size
        if "shortest_edge" in r:
            s = r["shortest_edge"]
            nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        else:
            nh, nw = r["height"], r["width"]
        im = im.resize((nw, nh), resample=Image.Resampling(spec["resample"]))
    x = np.asarray(im)
    return _centre_crop(x, *spec["crop"]) if spec["crop"] is not None else x


def normalise_pixels(x: torch.Tensor, spec: dict) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float32 (N, 3, S, S): the processor's rescale and normalise."""
    x = x.permute(0, 3, 1, 2)
    x = (x.double() * spec["rescale"]).float() if spec["rescale"] is not None else x.float()
    if spec["mean"] is not None:
        mean = torch.tensor(spec["mean"], dtype=torch.float32)[:, None, None]
        std = torch.tensor(spec["std"], dtype=torch.float32)[:, None, None]
        x = (x - mean) / std
    return x.contiguous()


class HFBackbone(Backbone):
    kind = "hf"

    def __init__(self, *, cfg: HFConfig, clip: nn.Module, tokenizer_source, tokenizer_target,
                 ml_embeddings: torch.Tensor, image_mean: list[float], image_std: list[float],
                 image_preprocess: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.clip = clip
        tc = clip.config.text_config
        self.embed_dim, self.width = clip.config.projection_dim, tc.hidden_size
        self.num_layers, self.context_length = tc.num_hidden_layers, tc.max_position_embeddings
        self.image_size = clip.config.vision_config.image_size
        self.tokenizer_source, self.tokenizer_target = tokenizer_source, tokenizer_target
        if len(tokenizer_target) > ml_embeddings.shape[0]:
            raise BackboneError(f"hf.mbert_path '{cfg.mbert_path}': the tokenizer has "
                                f"{len(tokenizer_target)} tokens but the embedding only "
                                f"{ml_embeddings.shape[0]} rows")
        # a plain attribute, not a buffer: read once by build_target_model, never moved to GPU
        self.ml_init_embeddings = ml_embeddings
        self.ml_embed_dim = int(ml_embeddings.shape[1])
        # the CLIP folder's CLIPImageProcessor settings (clip_image_preprocess); without them,
        # the processor's defaults at the vision tower's input size with image_mean/std
        self.image_preprocess = dict(image_preprocess) if image_preprocess is not None else \
            default_image_preprocess(self.image_size, image_mean, image_std)
        spec = self.image_preprocess
        if _output_size(spec) != [self.image_size] * 2:
            raise BackboneError(f"image preprocessing {spec} does not give {self.image_size} x "
                                f"{self.image_size} pixels, the input size of the CLIP's vision tower")
        self.image_mean = spec["mean"] if spec["mean"] is not None else [0.0, 0.0, 0.0]
        self.image_std = spec["std"] if spec["std"] is not None else [1.0, 1.0, 1.0]

    # --- images: exactly transformers' CLIPImageProcessor (PIL path) with the folder's settings
    def image_preprocessing(self) -> dict:
        return dict(self.image_preprocess)

    def read_images(self, paths, size: int | None = None, on_missing: str = "error") -> np.ndarray:
        """Image files -> uint8 (N, S, S, 3), S the CLIP's input size: RGB, resized and
        centre-cropped as the CLIP's CLIPImageProcessor does (`size` is not used: the
        processor's settings decide)."""
        spec = self.image_preprocess
        return load_images(paths, self.image_size, on_missing=on_missing,
                           transform=lambda im: resize_and_crop(_to_rgb_like_processor(im, spec["convert_rgb"]), spec))

    def preprocess_images(self, images: Any) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float (N, 3, S, S) as CLIPImageProcessor computes it. Images
        already S x S are taken as read_images made them (resized and cropped), so only
        rescaled and normalised; others are resized and cropped first, image by image."""
        x = uint8_images(images)
        if tuple(x.shape[1:3]) != (self.image_size, self.image_size):
            x = torch.from_numpy(np.stack([
                resize_and_crop(Image.fromarray(a), self.image_preprocess) for a in x.cpu().numpy()]))
        return normalise_pixels(x, self.image_preprocess)

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

    def call_block_end(self, block: nn.Module, h: torch.Tensor, attn_mask: torch.Tensor,
                       end: torch.Tensor) -> torch.Tensor:
        """A CLIP encoder layer's output at the end token only, (B, 1, w): keys and values
        from every token, the query, output projection and MLP for that one position
        (pre-LN: h + Attn(LN1(h)); h + MLP(LN2(h)), as CLIPEncoderLayer). Other blocks run
        in full and are indexed."""
        if not hasattr(block, "self_attn"):  # not a CLIPEncoderLayer
            return super().call_block_end(block, h, attn_mask, end)
        attn = block.self_attn
        B, T, w = h.shape
        rows = torch.arange(B, device=h.device)
        x = block.layer_norm1(h)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, n, w) -> (B, H, n, w/H)
            return t.view(B, t.shape[1], -1, attn.head_dim).transpose(1, 2)

        q = heads(attn.q_proj(x[rows, end].unsqueeze(1)))
        k, v = heads(attn.k_proj(x)), heads(attn.v_proj(x))
        # the causal mask's row of each end token: bool (sdpa) or additive (eager) alike
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask[end][:, None, None, :],
                                           dropout_p=attn.dropout if attn.training else 0.0,
                                           scale=attn.scale)
        h_end = h[rows, end].unsqueeze(1) + attn.out_proj(a.transpose(1, 2).reshape(B, 1, w))
        return h_end + block.mlp(block.layer_norm2(h_end))

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
                "image_preprocess": self.image_preprocess,
                "identity": self.identity(), "record": record}
        with atomic_dir(folder) as tmp:
            self.clip.save_pretrained(str(tmp / "clip"), safe_serialization=True)
            self.tokenizer_source.save_pretrained(str(tmp / "clip"))
            # clip/ is a complete CLIP folder, usable as hf.clip_path (e.g. zero-shot on a
            # fine-tuned CLIP) with the same image preprocessing
            (tmp / "clip" / "preprocessor_config.json").write_text(
                json.dumps(processor_config(self.image_preprocess), indent=2))
            self.tokenizer_target.save_pretrained(str(tmp / "tokenizer_target"))
            write_state(tmp, {"ml_embeddings": self.ml_init_embeddings}, meta, PRETRAINED_FILES)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, tensors: dict, meta: dict) -> HFBackbone:
        folder = Path(folder)
        cfg = saved_model_config(HFConfig, meta["model_config"], f"{folder}/config.json [model_config]")
        return cls(cfg=cfg, clip=_load_clip(str(folder / "clip")),
                   tokenizer_source=load_tokenizer(folder / "clip", f"{folder} (CLIP)"),
                   tokenizer_target=load_tokenizer(folder / "tokenizer_target", f"{folder} (mBERT)"),
                   ml_embeddings=tensors["ml_embeddings"],
                   image_mean=meta["image_mean"], image_std=meta["image_std"],
                   image_preprocess=meta.get("image_preprocess"))  # absent: saved before it was kept


def _load_clip(path: str) -> nn.Module:
    from transformers import CLIPModel
    try:
        return CLIPModel.from_pretrained(path, attn_implementation="sdpa")
    except (OSError, ValueError, pickle.UnpicklingError) as err:  # a .bin is read weights_only
        raise BackboneError(f"hf.clip_path '{path}': cannot load a CLIPModel ({err}); use a "
                            f"folder written by CLIPModel.save_pretrained or a hub id") from err


def load_hf_backbone(cfg: HFConfig) -> HFBackbone:
    """CLIPModel + its tokenizer from cfg.clip_path; mBERT tokenizer and word embeddings
    from cfg.mbert_path. All weights trainable until freeze() (English fine-tune first)."""
    for key in ("clip_path", "mbert_path"):
        if not getattr(cfg, key):
            raise BackboneError(f"hf.{key} is empty: set it to a local folder (save_pretrained "
                                f"layout) or a hub id for backbone 'hf'")
    clip = _load_clip(cfg.clip_path)
    spec = clip_image_preprocess(cfg.clip_path, clip.config.vision_config.image_size)
    return HFBackbone(cfg=cfg, clip=clip,
                      tokenizer_source=load_tokenizer(cfg.clip_path, f"hf.clip_path '{cfg.clip_path}'"),
                      tokenizer_target=load_tokenizer(cfg.mbert_path, f"hf.mbert_path '{cfg.mbert_path}'"),
                      ml_embeddings=read_mbert_embeddings(cfg.mbert_path), image_mean=spec["mean"],
                      image_std=spec["std"], image_preprocess=spec)
