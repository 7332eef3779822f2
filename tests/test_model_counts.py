"""Trainable-parameter counts at CLIP ViT-B sizes equal method.md's closed-form table,
computed from a config alone (meta device: no weights are allocated)."""
import dataclasses

import pytest

from dasd_lib.config import ModelConfig, TinyConfig
from dasd_lib.model import count_discriminator, count_trainable

VITB_TEXT = TinyConfig(embed_dim=512, text_width=512, text_layers=12, text_heads=8, context_length=77,
                       mbert_dim=768)
VITB = ModelConfig(adapter_rank=32, generator_dim=512, sdm_hidden=256, static_hidden=256)
VOCAB, E = 119547, 768

# method.md, "Numbers that pin the implementation"
EMBEDDING, LINEAR, ADAPTERS, GENERATOR, SDM = 91_812_096, 393_728, 399_744, 6_828_544, 790_016


def test_closed_form_parts_add_up():
    d = w = 512
    assert EMBEDDING == VOCAB * E and LINEAR == E * w + w
    assert ADAPTERS == 12 * ((w * 32 + 32) + (32 * w + w))
    assert GENERATOR == (d + w) * 512 + 512 + 12 * (512 * 32 * 32 + 32 * 32)
    assert SDM == 2 * ((w * 256 + 256) + (256 * w + w)) + 2 * 2 * w + w * d
    assert EMBEDDING + LINEAR + ADAPTERS + GENERATOR + SDM == 100_224_128


@pytest.mark.parametrize("method,n_langs,freeze,expected", [
    ("dasd", 1, False, 100_224_128),
    ("dasd", 1, True, 8_412_032),
    ("dasd", 5, False, 101_823_104),
    ("static", 1, False, 95_360_768),
    ("static", 1, True, 3_548_672),
    ("dasd_no_adv", 1, False, 100_224_128),  # same modules, other losses
    ("dasd_no_sdm", 1, False, 100_224_128 - SDM - 512 * 512),  # generator input w, not d + w
    ("floor", 5, False, 0),
    ("oracle", 5, False, 0),
    # full distillation: E, linear, 12 CLIP layers (12 w^2 + 13 w), final LN, projection, positions
    ("full_distill", 1, False, EMBEDDING + LINEAR + 12 * (12 * 512 ** 2 + 13 * 512) + 2 * 512
     + 512 * 512 + 77 * 512),
])
def test_vitb_counts(method, n_langs, freeze, expected):
    cfg = dataclasses.replace(VITB, freeze_embedding=freeze)
    assert count_trainable(VITB_TEXT, cfg, method, n_langs, VOCAB, E) == expected


def test_shared_adapters_and_discriminator():
    shared = dataclasses.replace(VITB, share_adapters=True)
    assert count_trainable(VITB_TEXT, shared, "dasd", 5, VOCAB, E) == 100_224_128
    assert count_discriminator(VITB_TEXT, VITB) == 295_554
