"""The `tiny` backbone: a small CLIP-style dual encoder trained from scratch.

Image tower: a strided CNN (GroupNorm, GELU), global average pool, LayerNorm, linear to d.
Text tower: token embedding + learned positions, L causal pre-LN transformer blocks
(CLIP's layout: attention and a 4w GELU MLP, each with bias), final LayerNorm, pooling at
the end token ([SEP]), linear w -> d without bias. The block has exactly the parameter
count of a CLIP text layer (12 w^2 + 13 w), so counts computed here hold for ViT-B too.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dasd_lib.backbones.base import Backbone, BackboneError
from dasd_lib.backbones.wordpiece import load_tokenizer, train_wordpiece
from dasd_lib.storage import PRETRAINED_FILES, atomic_dir, write_state
from dasd_lib.config import TinyConfig, saved_model_config

TINY_MEAN = [0.5, 0.5, 0.5]
TINY_STD = [0.25, 0.25, 0.25]


class Block(nn.Module):
    """Causal pre-LN transformer block: h + Attn(LN(h)); h + MLP(LN(h))."""

    def __init__(self, *, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise BackboneError(f"tiny.text_width {width} is not divisible by tiny.text_heads {heads}")
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def _heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of every token, each (B, H, T, w/H)."""
        B, T, w = h.shape
        return self.qkv(self.ln_1(h)).view(B, T, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)

    def forward(self, h: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        B, T, w = h.shape
        q, k, v = self._heads(h)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, T, w/H)
        h = h + self.out(a.transpose(1, 2).reshape(B, T, w))
        return h + self.mlp(self.ln_2(h))

    def forward_end(self, h: torch.Tensor, attn_mask: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """forward(h)[b, end[b]] as (B, 1, w), computed for that one query per caption:
        keys and values still come from every token, the output projection and the MLP
        run on B rows instead of B x T (the same values up to float rounding)."""
        B, T, w = h.shape
        q, k, v = self._heads(h)
        rows = torch.arange(B, device=h.device)
        q_end = q[rows, :, end].unsqueeze(2)  # (B, H, 1, w/H)
        a = F.scaled_dot_product_attention(q_end, k, v, attn_mask=attn_mask[end][:, None, None, :])
        h = h[rows, end].unsqueeze(1) + self.out(a.transpose(1, 2).reshape(B, 1, w))
        return h + self.mlp(self.ln_2(h))


class ConvImageTower(nn.Module):
    """Strided 3x3 convolutions halving the resolution each layer, pooled to a 4 x 4 grid
    and flattened to d: keeping the grid keeps where objects are, which captions name
    (a global mean would discard left/right and make binding twins indistinguishable)."""

    def __init__(self, *, width: int, layers: int, embed_dim: int):
        super().__init__()
        # channels: width/2, width, 2 width, 2 width, ... (capped: the cost stays small)
        chans = [3] + [max(8, (width // 2, width)[i] if i < 2 else 2 * width) for i in range(layers)]
        stages: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            stages += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
                       nn.GroupNorm(math.gcd(8, c_out), c_out), nn.GELU()]
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(self.GRID)
        self.norm = nn.LayerNorm(chans[-1] * self.GRID ** 2)
        self.proj = nn.Linear(chans[-1] * self.GRID ** 2, embed_dim, bias=False)

    GRID = 4

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(pixels)).flatten(1)  # (B, C * 16)
        return self.proj(self.norm(x))  # (B, d)


def _init_text(module: Backbone, width: int, layers: int) -> None:
    """CLIP's initialisation of the text tower."""
    nn.init.normal_(module.positional_embedding, std=0.01)
    attn_std, proj_std, fc_std = width ** -0.5, width ** -0.5 * (2 * layers) ** -0.5, (2 * width) ** -0.5
    for block in module.blocks:
        nn.init.normal_(block.qkv.weight, std=attn_std)
        nn.init.normal_(block.out.weight, std=proj_std)
        nn.init.normal_(block.mlp[0].weight, std=fc_std)
        nn.init.normal_(block.mlp[2].weight, std=proj_std)
    nn.init.normal_(module.text_projection.weight, std=width ** -0.5)


class TinyBackbone(Backbone):
    kind = "tiny"

    def __init__(self, *, cfg: TinyConfig, image_size: int, tokenizer_source, tokenizer_target):
        super().__init__()
        self.cfg = cfg
        self.embed_dim, self.width, self.num_layers = cfg.embed_dim, cfg.text_width, cfg.text_layers
        self.context_length, self.image_size = cfg.context_length, image_size
        self.ml_embed_dim = cfg.mbert_dim
        self.tokenizer_source, self.tokenizer_target = tokenizer_source, tokenizer_target
        self.ml_init_embeddings = None  # tiny: the multilingual embedding starts random
        self.image_mean, self.image_std = TINY_MEAN, TINY_STD
        self.train_all_positions = cfg.train_all_positions
        w = cfg.text_width
        self.token_embedding = nn.Embedding(len(tokenizer_source), w)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, w))
        self.blocks = nn.ModuleList(Block(width=w, heads=cfg.text_heads) for _ in range(cfg.text_layers))
        self.final_norm = nn.LayerNorm(w)
        self.text_projection = nn.Linear(w, cfg.embed_dim, bias=False)
        self.visual = ConvImageTower(width=cfg.vision_width, layers=cfg.vision_layers, embed_dim=cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        _init_text(self, w, cfg.text_layers)

    def embed_source_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids)  # (B, T, w)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)

    def identity_name(self) -> str:
        c = self.cfg
        return (f"tiny(d={c.embed_dim},w={c.text_width},L={c.text_layers},heads={c.text_heads},"
                f"ctx={c.context_length},vision={c.vision_width}x{c.vision_layers},img={self.image_size})")

    def save(self, folder: str | Path, record: dict | None = None) -> Path:
        """Atomically write weights (safetensors), config JSON and both tokenizers, with the
        `record` of the stage that trained it (checkpoint.make_record)."""
        meta = {"kind": self.kind, "model_config": dataclasses.asdict(self.cfg),
                "image_size": self.image_size, "identity": self.identity(), "record": record}
        with atomic_dir(folder) as tmp:
            write_state(tmp, self.state_dict(), meta, PRETRAINED_FILES)
            self.tokenizer_source.save_pretrained(str(tmp / "tokenizer_source"))
            self.tokenizer_target.save_pretrained(str(tmp / "tokenizer_target"))
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, tensors: dict, meta: dict) -> TinyBackbone:
        folder = Path(folder)
        cfg = saved_model_config(TinyConfig, meta["model_config"], f"{folder}/config.json [model_config]")
        bb = cls(cfg=cfg, image_size=int(meta["image_size"]),
                 tokenizer_source=load_tokenizer(folder / "tokenizer_source", f"{folder} (English)"),
                 tokenizer_target=load_tokenizer(folder / "tokenizer_target", f"{folder} (multilingual)"))
        try:
            bb.load_state_dict(tensors, strict=True)
        except RuntimeError as err:
            raise BackboneError(f"{folder}: weights do not fit the saved config ({err})") from err
        return bb


def build_tiny_backbone(cfg: TinyConfig, english_texts: list[str], multilingual_texts: list[str],
                        image_size: int) -> TinyBackbone:
    """Train both WordPiece tokenizers and build an untrained tiny VLP (trainable)."""
    tok_en = train_wordpiece(list(english_texts), cfg.english_vocab_size, context_length=cfg.context_length)
    tok_ml = train_wordpiece(list(multilingual_texts), cfg.multilingual_vocab_size,
                             context_length=cfg.context_length)
    return TinyBackbone(cfg=cfg, image_size=image_size, tokenizer_source=tok_en, tokenizer_target=tok_ml)


class ShapeBackbone(Backbone):
    """Text-tower pieces only, sized from a config: for counting parameters (build it under
    `torch.device("meta")`: no memory). Its block has CLIP's layer layout and count."""

    kind = "shape"

    def __init__(self, *, cfg: TinyConfig, vocab: int, e: int):
        super().__init__()
        self.cfg, self._vocab = cfg, vocab
        self.embed_dim, self.width, self.num_layers = cfg.embed_dim, cfg.text_width, cfg.text_layers
        self.context_length, self.ml_embed_dim = cfg.context_length, e
        self.ml_init_embeddings = None
        w = cfg.text_width
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, w))
        self.blocks = nn.ModuleList(Block(width=w, heads=cfg.text_heads) for _ in range(cfg.text_layers))
        self.final_norm = nn.LayerNorm(w)
        self.text_projection = nn.Linear(w, cfg.embed_dim, bias=False)

    @property
    def ml_vocab_size(self) -> int:
        return self._vocab

    def identity(self) -> dict[str, str]:
        return {"name": f"shape(vocab={self._vocab},e={self.ml_embed_dim})", "weights_hash": ""}


__all__ = ["Block", "ConvImageTower", "ShapeBackbone", "TinyBackbone", "build_tiny_backbone"]
