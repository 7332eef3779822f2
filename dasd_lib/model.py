"""The target-language text tower of DASD (see shared/design/method.md) and its baselines.

Read top to bottom: small parts first (branch MLP, SDM, generator, adapters), then the
tower, the method registry, the discriminator and parameter counting.

phi_T(caption) reuses the frozen VLP text tower (blocks, positions, final norm,
projection, causal mask) with a trainable multilingual embedding E (vocab x e) and a
linear e -> w in place of the VLP's token embedding, pooled at the multilingual [SEP]
(the last real token). Per method:

    none     h <- block_l(h)                                     (floor, full_distill)
    static   h <- block_l(h);  h <- h + Up_l(ReLU(Down_l(h)))    (language acquirer)
    dynamic  h <- block_l(h);  h <- h + Up_l(ReLU(Down_l(h) @ W_z_l(caption)))   (DASD)

DASD's shared computation (what runs once, exactly):
  * the embedded caption x and the first frozen block's output block_0(x) are computed
    once; block_0(x) is the SDM prefix *and* the main path's pre-adapter state after
    block 0 (the main path then applies adapter 0 to it). With sdm_layers k = 1 this is
    all of h0, so DASD costs L block passes, like the static adapter.
  * with k >= 2, blocks 1..k-1 also run on the unadapted prefix to give h0, and run again
    on the main path, whose input there has been adapted (adapters apply after every
    block): L + k - 1 block passes. No further reuse is possible without changing the math.
  * the SDM branch MLPs, LN_sr and P_sr are applied only at the end token for f_sr
    (they act per token, so this equals pooling afterwards); LN_sa runs on all tokens
    because f_sa is a mean over real tokens. The final LayerNorm likewise runs on the
    pooled states only.
`forward(..., share_prefix=False)` recomputes block_0 for the main path (the authors'
separate passes); tests check both give the same outputs.

model.compat: official (config.OFFICIAL_COMPAT, shared/design/official_checkpoint.md) gives
the forward the authors' released checkpoints were trained with: sdm_layers 2, no branch
MLPs (f_sr = P_sr(LN_sr(h0[end])), f_sa = mean LN_sa(h0)), f_sa over all positions,
captions padded to the context length, QuickGELU in the generator. Each is its own field.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dasd_lib.backbones.base import Backbone, last_token_index
from dasd_lib.backbones.tiny import ShapeBackbone
from dasd_lib.config import ModelConfig, TinyConfig, resolve_compat


# ----------------------------------------------------------------------------- helpers

def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, w) mean over real tokens (mask 1) -> (B, w)."""
    m = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def branch_mlp(width: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))


def quick_gelu(u: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's GELU approximation, the generator's activation in the authors' code."""
    return u * torch.sigmoid(1.702 * u)


ACTIVATIONS = {"gelu": F.gelu, "quick_gelu": quick_gelu}
F_SA_POOLS = ("real", "all")


@dataclass
class TargetOutput:
    r_T: torch.Tensor                     # (B, d) target caption in the joint space
    f_sr: torch.Tensor | None = None      # (B, d) semantic-related descriptor (SDM)
    f_sa: torch.Tensor | None = None      # (B, w) semantic-agnostic descriptor (SDM)
    w_z: list[torch.Tensor] | None = None  # L x (B, r, r) generated adapter matrices


# ----------------------------------------------------------------------------- parts

class SDM(nn.Module):
    """Semantic disentangling module: two residual branches on the shared h0.
    branches=False: no branch MLPs (h_sr = h_sa = h0), as the authors' forward;
    f_sa_pool "all": f_sa averages every position, padding included (theirs), not real tokens."""

    def __init__(self, *, width: int, embed_dim: int, hidden: int, branches: bool = True,
                 f_sa_pool: str = "real"):
        super().__init__()
        if f_sa_pool not in F_SA_POOLS:
            raise ValueError(f"model.f_sa_pool must be one of {F_SA_POOLS}, got {f_sa_pool!r}")
        self.f_sa_pool = f_sa_pool
        self.mlp_sr = self.mlp_sa = None
        if branches:
            self.mlp_sr, self.mlp_sa = branch_mlp(width, hidden), branch_mlp(width, hidden)
        self.ln_sr, self.ln_sa = nn.LayerNorm(width), nn.LayerNorm(width)
        self.proj_sr = nn.Linear(width, embed_dim, bias=False)  # P_sr: into the joint space

    def forward(self, h0: torch.Tensor, mask: torch.Tensor, eos: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        end = h0[torch.arange(h0.shape[0], device=h0.device), eos]  # (B, w)
        h_sr_end = end if self.mlp_sr is None else end + self.mlp_sr(end)
        h_sa = h0 if self.mlp_sa is None else h0 + self.mlp_sa(h0)
        f_sr = self.proj_sr(self.ln_sr(h_sr_end))  # (B, d)
        styled = self.ln_sa(h_sa)
        f_sa = masked_mean(styled, mask) if self.f_sa_pool == "real" else styled.mean(1)  # (B, w)
        return f_sr, f_sa


class Generator(nn.Module):
    """z = act(W_g feat + b_g); W_z_l = reshape(A_l z + c_l, r x r) for every layer l.
    The L heads A_l are one linear (hidden -> L r^2): the same parameters, one matmul.
    act: GELU (method.md) or QuickGELU (the authors' code)."""

    def __init__(self, *, in_dim: int, hidden: int, rank: int, layers: int, act: str = "gelu"):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"model.generator_act must be one of {list(ACTIVATIONS)}, got {act!r}")
        self.rank, self.layers, self.act = rank, layers, ACTIVATIONS[act]
        self.inp = nn.Linear(in_dim, hidden)
        self.heads = nn.Linear(hidden, layers * rank * rank)

    def forward(self, feat: torch.Tensor) -> list[torch.Tensor]:
        z = self.act(self.inp(feat))  # (B, hidden)
        w = self.heads(z).view(-1, self.layers, self.rank, self.rank)  # (B, L, r, r)
        return list(w.unbind(1))


class DynamicAdapter(nn.Module):
    """h <- h + Up(ReLU(Down(h) @ W_z)), W_z (B, r, r) generated per caption."""

    def __init__(self, *, width: int, rank: int, zero_init_up: bool):
        super().__init__()
        self.down, self.up = nn.Linear(width, rank), nn.Linear(rank, width)
        if zero_init_up:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor, w_z: torch.Tensor) -> torch.Tensor:
        u = torch.bmm(self.down(h), w_z.to(h.dtype))  # (B, T, r) @ (B, r, r)
        return h + self.up(F.relu(u))


class StaticAdapter(nn.Module):
    """h <- h + Up(ReLU(Down(h))): the language-acquirer bottleneck."""

    def __init__(self, *, width: int, hidden: int, zero_init_up: bool):
        super().__init__()
        self.down, self.up = nn.Linear(width, hidden), nn.Linear(hidden, width)
        if zero_init_up:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.relu(self.down(h)))


class TowerCopy(nn.Module):
    """Full distillation: trainable deep copies of the frozen text-tower pieces."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.blocks = copy.deepcopy(backbone.blocks)
        self.positional_embedding = nn.Parameter(backbone.positional_embedding.detach().clone())
        self.final_norm = copy.deepcopy(backbone.final_norm)
        self.text_projection = copy.deepcopy(backbone.text_projection)
        self.requires_grad_(True)


# ----------------------------------------------------------------------------- methods

@dataclass(frozen=True)
class MethodSpec:
    adapter: str = "none"            # "dynamic" | "static" | "none"
    sdm: bool = False                # SDM descriptors feed the generator (else a mean-pooled h0)
    use_sc: bool = False             # semantic consistency loss on f_sr
    use_adv: bool = False            # adversarial decoupling loss on f_sa
    lambda_adv: float | None = None  # overrides TargetStageConfig.lambda_adv
    sdm_layers: int | None = None    # overrides ModelConfig.sdm_layers
    train_tower: bool = False        # full distillation: every text-side weight trainable
    trained: bool = True             # False: evaluated as initialised (nothing trained)
    oracle: bool = False             # translate-test: the evaluator uses the frozen VLP on English


_DASD = MethodSpec(adapter="dynamic", sdm=True, use_sc=True, use_adv=True)
METHODS: dict[str, MethodSpec] = {
    "floor": MethodSpec(trained=False),
    "oracle": MethodSpec(trained=False, oracle=True),
    "full_distill": MethodSpec(train_tower=True),
    "static": MethodSpec(adapter="static"),
    "dasd": _DASD,
    # generator fed by the mean over real tokens of h0 (the first k frozen blocks' output)
    "dasd_no_sdm": MethodSpec(adapter="dynamic"),
    "dasd_no_adv": dataclasses.replace(_DASD, use_adv=False),
    "dasd_no_sc": dataclasses.replace(_DASD, use_sc=False),
    "dasd_sdm2": dataclasses.replace(_DASD, sdm_layers=2),
    "dasd_adv0.01": dataclasses.replace(_DASD, lambda_adv=0.01),
    "dasd_adv0.1": dataclasses.replace(_DASD, lambda_adv=0.1),
}


def method_spec(method: str) -> MethodSpec:
    if method not in METHODS:
        raise KeyError(f"unknown method '{method}'; methods: {', '.join(METHODS)}")
    return METHODS[method]


# ----------------------------------------------------------------------------- the tower

class TargetTextModel(nn.Module):
    """phi_T on a frozen backbone. forward(ids, mask, lang) -> TargetOutput."""

    def __init__(self, *, backbone: Backbone, cfg: ModelConfig, method: str, langs: list[str]):
        super().__init__()
        spec = method_spec(method)
        cfg = resolve_compat(cfg)  # compat: official sets the authors' forward's fields
        if not langs or len(set(langs)) != len(langs):
            raise ValueError(f"langs must be a non-empty list without repeats, got {langs}")
        self.cfg, self.method, self.spec, self.langs = cfg, method, spec, list(langs)
        self.backbone = backbone
        w, d, L = backbone.width, backbone.embed_dim, backbone.num_layers
        self.sdm_layers = spec.sdm_layers if spec.sdm_layers is not None else cfg.sdm_layers
        if spec.adapter == "dynamic" and not 1 <= self.sdm_layers <= L:
            raise ValueError(f"sdm_layers {self.sdm_layers} must be within 1..{L} (the text layers)")

        self.embedding = nn.Embedding(backbone.ml_vocab_size, backbone.ml_embed_dim)  # E
        if backbone.ml_init_embeddings is not None:
            with torch.no_grad():
                self.embedding.weight.copy_(backbone.ml_init_embeddings)
        else:
            nn.init.normal_(self.embedding.weight, std=0.02)
        self.embed_proj = nn.Linear(backbone.ml_embed_dim, w)  # e -> w

        self.tower = TowerCopy(backbone) if spec.train_tower else None
        self.sdm = self.generator = self.adapters = None
        keys = ["shared"] if cfg.share_adapters else self.langs
        if spec.adapter == "dynamic":
            if spec.sdm:
                self.sdm = SDM(width=w, embed_dim=d, hidden=cfg.sdm_hidden,
                               branches=cfg.sdm_branches, f_sa_pool=cfg.f_sa_pool)
            self.generator = Generator(in_dim=d + w if spec.sdm else w, hidden=cfg.generator_dim,
                                       rank=cfg.adapter_rank, layers=L, act=cfg.generator_act)
            self.adapters = nn.ModuleDict({k: nn.ModuleList(
                DynamicAdapter(width=w, rank=cfg.adapter_rank, zero_init_up=cfg.zero_init_up)
                for _ in range(L)) for k in keys})
        elif spec.adapter == "static":
            self.adapters = nn.ModuleDict({k: nn.ModuleList(
                StaticAdapter(width=w, hidden=cfg.static_hidden, zero_init_up=cfg.zero_init_up)
                for _ in range(L)) for k in keys})
        elif spec.adapter != "none":
            raise ValueError(f"MethodSpec.adapter must be dynamic, static or none, got {spec.adapter!r}")

        if cfg.freeze_embedding:  # E only: its e -> w linear stays trainable (method.md's counts)
            self.embedding.weight.requires_grad_(False)
        if not spec.trained:  # floor / oracle: evaluated as initialised
            for p in self.own_parameters():
                p.requires_grad_(False)

    # --- parameters ---
    def own_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]

    def saved_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: trainable weights, plus a frozen E only when the backbone
        cannot rebuild it (tiny: random init). Never the backbone's weights."""
        out = {}
        for name, p in self.named_parameters():
            if name.startswith("backbone."):
                continue
            rebuildable = name == "embedding.weight" and self.backbone.ml_init_embeddings is not None
            if p.requires_grad or not rebuildable:
                out[name] = p
        return out

    def load_saved_state_dict(self, tensors: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
        want = set(self.saved_state_dict())
        missing, extra = sorted(want - set(tensors)), sorted(set(tensors) - want)
        if missing or extra:
            raise ValueError(f"{where}: does not fit method '{self.method}' on this backbone "
                             f"(missing {missing[:5]}, unexpected {extra[:5]})")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, t in tensors.items():
                if params[name].shape != t.shape:
                    raise ValueError(f"{where}: '{name}' has shape {tuple(t.shape)}, the model "
                                     f"expects {tuple(params[name].shape)} (other sizes in config?)")
                params[name].copy_(t)

    def train(self, mode: bool = True) -> TargetTextModel:
        super().train(mode)
        self.backbone.train(False)  # the frozen VLP stays in eval mode
        return self

    # --- forward ---
    def _adapter_set(self, lang: str) -> nn.ModuleList | None:
        if lang not in self.langs:
            raise KeyError(f"language '{lang}' is not one this model was built for: {self.langs}")
        if self.adapters is None:
            return None
        return self.adapters["shared" if self.cfg.share_adapters else lang]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, lang: str, *,
                share_prefix: bool = True, end_only: bool = False) -> TargetOutput:
        """ids, mask (B, T) from backbone.tokenize_target, one language per batch.
        end_only: the last block (and its adapter) only at the pooled end token, which is
        all r_T reads (causal attention): equal up to float rounding. Training (TargetStep)
        and evaluation use it; the naive mode of benchmarks/throughput.py does not."""
        bb, tower = self.backbone, self.tower
        B, T = ids.shape
        if T > bb.context_length:
            raise ValueError(f"{T} tokens exceed the context length {bb.context_length}; "
                             f"tokenize with backbone.tokenize_target (it truncates)")
        adapters = self._adapter_set(lang)
        if self.cfg.pad_to_context and T < bb.context_length:
            # the authors pad every caption to 77 [PAD]s, which f_sa_pool "all" averages over
            pad = bb.context_length - T
            ids = F.pad(ids, (0, pad), value=int(bb.tokenizer_target.pad_token_id))
            mask = F.pad(mask, (0, pad), value=0)
            T = bb.context_length
        blocks = bb.blocks if tower is None else tower.blocks
        pos, norm, proj = ((bb.positional_embedding, bb.final_norm, bb.text_projection) if tower is None
                           else (tower.positional_embedding, tower.final_norm, tower.text_projection))
        eos = last_token_index(mask).to(ids.device)  # (B,) the multilingual [SEP]
        last = bb.num_layers - 1

        def run(i: int, h: torch.Tensor, attn: torch.Tensor, main_path: bool = False) -> torch.Tensor:
            if end_only and main_path and i == last:  # (B, 1, w) at the end token
                return bb.call_block_end(blocks[i], h, attn, eos)
            return bb.call_block(blocks[i], h, attn)

        x = self.embed_proj(self.embedding(ids)) + pos[:T]  # (B, T, w)
        attn = bb.causal_mask(T, ids.device)
        f_sr = f_sa = w_z = None

        if self.spec.adapter == "dynamic":
            first = run(0, x, attn)  # block 0 output: SDM prefix and main path share it
            h0 = first
            for i in range(1, self.sdm_layers):
                h0 = run(i, h0, attn)  # (B, T, w) unadapted prefix
            if self.sdm is not None:
                f_sr, f_sa = self.sdm(h0, mask, eos)
                feat = torch.cat([f_sr, f_sa], dim=-1)  # (B, d + w)
            else:
                feat = masked_mean(h0, mask)  # (B, w): the no-SDM ablation
            w_z = self.generator(feat)
            if end_only and last == 0:
                first = first[torch.arange(B, device=ids.device), eos].unsqueeze(1)
            h = adapters[0](first if share_prefix else run(0, x, attn, True), w_z[0])
            for i in range(1, bb.num_layers):
                h = adapters[i](run(i, h, attn, True), w_z[i])
        else:
            h = x
            for i in range(bb.num_layers):
                h = run(i, h, attn, True)
                if adapters is not None:
                    h = adapters[i](h)

        # (B, w): LN is per token, so pooling before it is exact
        pooled = h[:, 0] if end_only else h[torch.arange(B, device=h.device), eos]
        return TargetOutput(r_T=proj(norm(pooled)), f_sr=f_sr, f_sa=f_sa, w_z=w_z)


def build_target_model(backbone: Backbone, cfg: ModelConfig, method: str, langs: list[str], *,
                       seed: int | None = None) -> TargetTextModel:
    """Freeze `backbone` and build the target tower of `method` for `langs` on it.
    `seed`: draw the initial weights from this seed (the global RNG is left untouched)."""
    backbone.freeze()
    if seed is None:
        return TargetTextModel(backbone=backbone, cfg=cfg, method=method, langs=langs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TargetTextModel(backbone=backbone, cfg=cfg, method=method, langs=langs)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The weights the stage optimiser updates (never the backbone's: they are frozen)."""
    return [p for p in model.parameters() if p.requires_grad]


# ----------------------------------------------------------------------------- discriminator

class Discriminator(nn.Module):
    """D([f_sa ; r_ref]) -> 2 logits (1: a caption's own semantics, 0: another caption's).
    MLP (w + d) -> disc_hidden... -> 2 with tanh; trained by its own optimiser."""

    def __init__(self, cfg: ModelConfig, w: int, d: int):
        super().__init__()
        dims = [w + d, *cfg.disc_hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.Tanh()]
        self.net = nn.Sequential(*layers, nn.Linear(dims[-1], 2))

    def forward(self, f_sa: torch.Tensor, r_ref: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([f_sa, r_ref.to(f_sa.dtype)], dim=-1))  # (B, 2)


# ----------------------------------------------------------------------------- counting

def count_trainable(tiny: TinyConfig, cfg: ModelConfig, method: str, n_langs: int, vocab: int,
                    e: int) -> int:
    """Trainable parameters of `method` (tower config `cfg`) for a backbone of the sizes in
    `tiny` (embed_dim, text_width, text_layers, text_heads, context_length), without
    allocating weights (meta device)."""
    with torch.device("meta"):
        backbone = ShapeBackbone(cfg=tiny, vocab=vocab, e=e)
        model = build_target_model(backbone, cfg, method, [f"lang{i}" for i in range(n_langs)])
    return sum(p.numel() for p in trainable_parameters(model))


def count_discriminator(tiny: TinyConfig, cfg: ModelConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in Discriminator(cfg, tiny.text_width, tiny.embed_dim).parameters())
