"""Losses of the DASD stages: small named functions, each returning a scalar tensor.

    CLA: mse(r_T, r_S) + 0.1 * consistency(f_sr, r_S, "l1") + 0.001 * adversarial_loss(D, f_sa, r_S)
    CMA: info_nce(r_V, r_T) + 0.1 * consistency(f_sr, r_V, "smooth_l1")
         + 0.001 * adversarial_loss(D, f_sa, r_V) + mse(r_T, r_S)
    D:   discriminator_loss(D, f_sa, r_ref), one update per step with its own optimiser.

Pairs for the discriminator: [f_sa_i ; r_ref_i] ("own", label 1) and
[f_sa_i ; r_ref_pi(i)] ("shuffled", label 0). The default pi rolls the batch by one
(a derangement for B >= 2; reversal, the authors' choice, leaves the middle caption
paired with itself when B is odd); pass `perm` to choose another.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

OWN, SHUFFLED = 1, 0


def info_nce(a: torch.Tensor, b: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """Symmetric InfoNCE on cosine similarities x `scale`: row i of a matches row i of b."""
    logits = scale * F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T  # (B, B)
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), target.float())


def consistency(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Semantic consistency of f_sr with r_ref: "l1" (CLA) or "smooth_l1" (CMA)."""
    if kind == "l1":
        return F.l1_loss(pred.float(), target.float())
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred.float(), target.float())
    raise ValueError(f"consistency kind must be 'l1' or 'smooth_l1', got {kind!r}")


def default_perm(n: int, device: torch.device | str) -> torch.Tensor:
    return torch.roll(torch.arange(n, device=device), 1)


def _pairs(f_sa: torch.Tensor, r_ref: torch.Tensor, perm: torch.Tensor | None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    perm = default_perm(len(r_ref), r_ref.device) if perm is None else perm
    return f_sa, r_ref, r_ref[perm]


def discriminator_loss(disc: nn.Module, f_sa: torch.Tensor, r_ref: torch.Tensor,
                       perm: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of D telling own from shuffled pairs, on detached inputs: its gradient
    reaches only D's weights, never the SDM."""
    f_sa, own, shuffled = _pairs(f_sa.detach(), r_ref.detach(), perm)
    logits = torch.cat([disc(f_sa, own), disc(f_sa, shuffled)]).float()  # (2B, 2)
    labels = torch.cat([torch.full((len(f_sa),), OWN), torch.full((len(f_sa),), SHUFFLED)])
    return F.cross_entropy(logits, labels.to(logits.device))


def adversarial_loss(disc: nn.Module, f_sa: torch.Tensor, r_ref: torch.Tensor,
                     perm: torch.Tensor | None = None) -> torch.Tensor:
    """The SDM's loss: D's cross-entropy on shuffled pairs labelled as own pairs. D's
    weights enter as constants, so this gradient reaches only f_sa, never D."""
    f_sa, _, shuffled = _pairs(f_sa, r_ref.detach(), perm)
    frozen = {n: p.detach() for n, p in disc.named_parameters()}
    logits = functional_call(disc, frozen, (f_sa, shuffled)).float()  # (B, 2)
    labels = torch.full((len(f_sa),), OWN, device=logits.device)
    return F.cross_entropy(logits, labels)


@torch.no_grad()
def discriminator_accuracy(disc: nn.Module, f_sa: torch.Tensor, r_ref: torch.Tensor,
                           perm: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of own and shuffled pairs D classifies correctly (0.5: f_sa carries no
    semantics D can use; near 1: it does)."""
    f_sa, own, shuffled = _pairs(f_sa, r_ref, perm)
    hit_own = disc(f_sa, own).argmax(-1) == OWN
    hit_shuffled = disc(f_sa, shuffled).argmax(-1) == SHUFFLED
    return torch.cat([hit_own, hit_shuffled]).float().mean()
