"""The backbone interface: a frozen VLP and the text-tower pieces the target tower reuses.

A backbone is an `nn.Module` holding a CLIP-style dual encoder (image tower, causal
English text transformer pooled at its end token, projections to the joint space d),
its English tokenizer, and the multilingual tokenizer (plus, for mBERT, its word
embeddings) the target-language tower uses. Two implementations: `tiny.TinyBackbone`
(trained from scratch on the benchmark) and `hf.HFBackbone` (transformers CLIPModel +
mBERT). After the VLP stage every backbone weight is frozen (`freeze()`).

Text-tower contract (what dasd_lib.model relies on):
    h = embedded tokens + positional_embedding[:T]            # (B, T, w)
    for i in range(num_layers): h = run_block(i, h, causal_mask(T, device))
    r = project_text(final_norm(h[b, last real token]))       # (B, d)
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dasd_lib.data import load_images


class BackboneError(ValueError):
    """Bad input to a backbone, or a backbone folder/config that cannot be used."""


@dataclass
class VLPOutput:
    image_embeds: torch.Tensor  # (B, d), not normalised
    text_embeds: torch.Tensor   # (B, d), not normalised
    logit_scale: torch.Tensor   # () exp of the learned log-scale, clamped to 100 (as CLIP)


# ----------------------------------------------------------------------------- helpers

def eos_id_of(tokenizer: Any, what: str) -> int:
    """The id pooling happens at: [SEP] for BERT-style tokenizers, else the eos token."""
    for tok_id in (getattr(tokenizer, "sep_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tok_id is not None:
            return int(tok_id)
    raise BackboneError(f"{what}: the tokenizer has neither a sep nor an eos token to pool at")


def tokenize(tokenizer: Any, texts: list[str] | tuple[str, ...], context_length: int, eos_id: int,
             what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize, pad to the batch's longest caption, truncate to `context_length` keeping
    the end token. Returns (ids, mask), both (B, T) int64."""
    if isinstance(texts, str):
        raise BackboneError(f"{what}: expected a list of captions, got one string")
    texts = list(texts)
    if not texts:
        raise BackboneError(f"{what}: no captions given")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise BackboneError(f"{what}: caption {i} is empty or not a string ({text!r}); "
                                f"drop empty captions before encoding")
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=context_length,
                    return_tensors="pt", return_attention_mask=True)
    ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
    lengths = mask.sum(1)
    if (mask != (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()).any():
        raise BackboneError(f"{what}: the tokenizer pads on the left; set padding_side='right'")
    last = ids[torch.arange(len(ids)), lengths - 1]
    if (last != eos_id).any():
        bad = int((last != eos_id).nonzero()[0, 0])
        raise BackboneError(f"{what}: caption {bad} does not end in the end token (id {eos_id}) "
                            f"after tokenization; the tokenizer must add it (post-processor)")
    return ids, mask


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last real token: the end token the text towers pool at."""
    return mask.sum(1) - 1


def positions(pos_embedding: torch.Tensor, T: int, offset: int | torch.Tensor = 0) -> torch.Tensor:
    """Positional embeddings for T tokens: (T, w), or (B, T, w) for per-caption offsets.
    Positions past the table (only ever padding, given valid offsets) are clamped."""
    ctx = pos_embedding.shape[0]
    if isinstance(offset, int):
        if offset + T > ctx:
            raise BackboneError(f"{T} tokens at offset {offset} exceed the context length {ctx}")
        return pos_embedding[offset:offset + T]
    idx = offset.to(pos_embedding.device)[:, None] + torch.arange(T, device=pos_embedding.device)
    return pos_embedding[idx.clamp(max=ctx - 1)]  # (B, T, w)


def uint8_images(images: Any) -> torch.Tensor:
    """An image array or tensor, or one image, as a uint8 tensor (N, H, W, 3); anything else
    is refused naming its shape or dtype."""
    if not isinstance(images, torch.Tensor):
        images = np.ascontiguousarray(images)
        images = images if images.flags.writeable else images.copy()  # e.g. np.asarray(a PIL image)
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise BackboneError(f"preprocess_images: expected images of shape (N, H, W, 3), "
                            f"got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise BackboneError(f"preprocess_images: expected uint8 pixels, got {x.dtype}")
    return x


def images_to_pixels(images: Any, size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (N, H, W, 3) array or tensor -> normalised float (N, 3, size, size).
    Resizes the shorter side to `size` (bicubic, antialiased) and centre-crops."""
    x = uint8_images(images)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, H, W)
    H, W = x.shape[-2:]
    if (H, W) != (size, size):
        scale = size / min(H, W)
        nh, nw = max(size, round(H * scale)), max(size, round(W * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[:, :, top:top + size, left:left + size].clamp_(0.0, 1.0)
    m = torch.tensor(mean, dtype=x.dtype)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype)[:, None, None]
    return (x - m) / s


def weights_hash(named: list[tuple[str, torch.Tensor]], extra: str = "") -> str:
    """sha256 over tensor names, dtypes, shapes and bytes (sorted by name) plus `extra`."""
    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda kv: kv[0]):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    h.update(extra.encode())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A stable string for the vocabulary: a backbone with another tokenizer is another backbone."""
    return json.dumps(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]), ensure_ascii=False)


# ----------------------------------------------------------------------------- interface

class Backbone(nn.Module):
    """Common behaviour of the tiny and HF backbones; subclasses provide the towers."""

    kind: str = ""
    # set by subclasses
    embed_dim: int            # d, the joint space
    width: int                # w, text width
    num_layers: int           # L, text blocks
    context_length: int       # max tokens (77 for CLIP)
    image_size: int           # side of the square pixels encode_image expects
    ml_embed_dim: int         # e, width of the multilingual embedding table
    tokenizer_source: Any     # English tokenizer of the VLP
    tokenizer_target: Any     # multilingual tokenizer of the target tower
    ml_init_embeddings: torch.Tensor | None  # (vocab, e) mBERT word embeddings; None for tiny
    image_mean: list[float]
    image_std: list[float]

    def __init__(self) -> None:
        super().__init__()
        self._frozen = False
        self._identity: tuple[tuple, dict[str, str]] | None = None

    # --- text-tower pieces (subclasses provide blocks, positional_embedding, final_norm,
    # text_projection and embed_source_tokens) ---
    def call_block(self, block: nn.Module, h: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """Run one text block (a frozen one, or a trainable copy of it). (B, T, w) -> (B, T, w)."""
        return block(h, attn_mask)

    def run_block(self, i: int, h: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        return self.call_block(self.blocks[i], h, attn_mask)

    def call_block_end(self, block: nn.Module, h: torch.Tensor, attn_mask: torch.Tensor,
                       end: torch.Tensor) -> torch.Tensor:
        """call_block's output at one position per caption, (B, 1, w): what the last block
        needs when only the pooled token is read. Blocks with a `forward_end` (the tiny
        VLP's) compute that one query only; others run in full and are indexed."""
        if hasattr(block, "forward_end"):
            return block.forward_end(h, attn_mask, end)
        return self.call_block(block, h, attn_mask)[torch.arange(h.shape[0], device=h.device), end].unsqueeze(1)

    def causal_mask(self, T: int, device: torch.device | str) -> torch.Tensor:
        """(T, T) bool, True where a query may attend to a key (itself and earlier tokens)."""
        return torch.ones(T, T, dtype=torch.bool, device=device).tril_()

    def project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, w) final-normed end-token states -> (B, d)."""
        return self.text_projection(pooled)

    def embed_source_tokens(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, w)
        raise NotImplementedError

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, d)
        raise NotImplementedError

    # --- shared implementations ---
    @property
    def source_eos_id(self) -> int:
        return eos_id_of(self.tokenizer_source, f"{self.kind} backbone English tokenizer")

    @property
    def ml_eos_id(self) -> int:
        return eos_id_of(self.tokenizer_target, f"{self.kind} backbone multilingual tokenizer")

    @property
    def ml_vocab_size(self) -> int:
        if self.ml_init_embeddings is not None:
            return int(self.ml_init_embeddings.shape[0])
        return len(self.tokenizer_target)

    def tokenize_source(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return tokenize(self.tokenizer_source, texts, self.context_length, self.source_eos_id,
                        "tokenize_source")

    def tokenize_target(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return tokenize(self.tokenizer_target, texts, self.context_length, self.ml_eos_id,
                        "tokenize_target")

    def read_images(self, paths: Any, size: int, on_missing: str = "error") -> np.ndarray:
        """Image files -> uint8 (N, size, size, 3) the way this backbone reads them (tiny:
        data.load_images at `size`, the corpus's image_size; hf overrides this with its
        CLIP's own processor settings). preprocess_images turns them into pixels."""
        return load_images(paths, size, on_missing=on_missing)

    def image_preprocessing(self) -> dict | None:
        """Settings of read_images/preprocess_images that do not live in the code or the
        weights (hf: the CLIP folder's preprocessor_config.json), for cache keys; None here."""
        return None

    def preprocess_images(self, images: Any) -> torch.Tensor:
        return images_to_pixels(images, self.image_size, self.image_mean, self.image_std)

    def encode_source_text(self, ids: torch.Tensor, mask: torch.Tensor,
                           position_offset: int | torch.Tensor = 0) -> torch.Tensor:
        """English captions -> (B, d) at the end token. `position_offset`: int or (B,) long.
        Only the end token's state is read, so the last block runs for that query alone
        (call_block_end; the same up to float rounding)."""
        T = ids.shape[1]
        h = self.embed_source_tokens(ids) + positions(self.positional_embedding, T, position_offset)
        attn = self.causal_mask(T, ids.device)
        for i in range(self.num_layers - 1):
            h = self.run_block(i, h, attn)
        end = last_token_index(mask).to(h.device)
        h_end = self.call_block_end(self.blocks[self.num_layers - 1], h, attn, end)[:, 0]  # (B, w)
        return self.project_text(self.final_norm(h_end))

    def sample_position_offset(self, mask: torch.Tensor, generator: torch.Generator | None = None
                               ) -> torch.Tensor:
        """(B,) random offsets with offset + length <= context_length for every caption."""
        room = (self.context_length - mask.sum(1)).clamp(min=0)  # (B,)
        u = torch.rand(mask.shape[0], generator=generator, device=mask.device)
        return (u * (room + 1).to(u.dtype)).floor().long().clamp(max=room)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                position_offset: int | torch.Tensor | str | None = None) -> VLPOutput:
        """VLP pretraining / English fine-tune step. `position_offset`: None = random when
        training and the config asks for it (tiny), else 0; "random"; an int; or (B,) long."""
        if position_offset is None:
            position_offset = "random" if (self.training and self.train_all_positions) else 0
        if isinstance(position_offset, str):
            if position_offset != "random":
                raise BackboneError(f"position_offset must be None, 'random', an int or a tensor, "
                                    f"got {position_offset!r}")
            position_offset = self.sample_position_offset(mask)
        return VLPOutput(image_embeds=self.encode_image(pixels),
                         text_embeds=self.encode_source_text(ids, mask, position_offset),
                         logit_scale=self.logit_scale.exp().clamp(max=100.0))

    # random position offsets in VLP training, so positions longer target captions use are
    # trained (tiny: cfg.train_all_positions; CLIP has trained all 77 already)
    train_all_positions: bool = False

    def vlp_parameters(self) -> list[nn.Parameter]:
        """Every weight the VLP stage trains (all of the dual encoder). Unfreezes the
        backbone: the VLP stage is about to train it."""
        self._frozen = False
        self.requires_grad_(True)
        return list(self.parameters())

    # --- freezing and identity ---
    def freeze(self) -> Backbone:
        """Freeze every weight (idempotent); the backbone stays in eval mode from now on."""
        self.requires_grad_(False)
        self._frozen = True
        return super().train(False)

    @property
    def frozen(self) -> bool:
        return self._frozen

    def train(self, mode: bool = True) -> Backbone:
        # a frozen backbone never leaves eval mode, even when a parent module calls train()
        return super().train(mode and not self._frozen)

    def identity_name(self) -> str:
        raise NotImplementedError

    def hashed_tensors(self) -> list[tuple[str, torch.Tensor]]:
        named = list(self.state_dict().items())
        if self.ml_init_embeddings is not None:
            named.append(("ml_init_embeddings", self.ml_init_embeddings))
        return named

    def _weights_version(self) -> tuple:
        # in-place updates (optimiser steps, copy_) bump a tensor's _version; moves change data_ptr
        return tuple((t.data_ptr(), t._version) for _, t in self.hashed_tensors())

    def identity(self) -> dict[str, str]:
        """{"name", "weights_hash"}: keys caches and checkpoints to this exact backbone.
        The hash (about 1 GB of tensors for ViT-B + mBERT) is recomputed only when a weight
        has changed since the last call."""
        version = self._weights_version()
        if self._identity is None or self._identity[0] != version:
            extra = tokenizer_fingerprint(self.tokenizer_source) + tokenizer_fingerprint(self.tokenizer_target)
            ident = {"name": self.identity_name(),
                     "weights_hash": weights_hash(self.hashed_tensors(), extra)}
            self._identity = (version, ident)
        return dict(self._identity[1])

    def save(self, folder: Any, record: dict | None = None) -> Any:
        raise NotImplementedError
