"""Training and evaluation throughput of DASD at ViT-B sizes with random weights.

Measures samples/s of one CLA and one CMA training step of `dasd_lib` in two modes:

  optimised  what the library's training does: frozen outputs r_V, r_S computed once
             (the cache), captions padded to the batch's longest, the first SDM block
             shared with the main path (TargetTextModel.forward(share_prefix=True));
  naive      the authors' code: every frozen output recomputed each step (image tower on
             the pixels for CMA, English text tower on ids padded to 77), target captions
             padded to 77, separate SDM / main passes, every token through every block
             (share_prefix=False, end_only=False).

Both modes run the library's own setup (dasd_lib.train.target_task) and its one training
step (dasd_lib.train.train_step, which run_loop runs: the TargetStep's forward, losses of
method.md and discriminator update, then backward, clipping, AdamW with make_optimizer's
parameter groups, the cosine schedule); only the data object and the share_prefix / end_only
flags differ. Also: that both modes give the same outputs, losses and
gradients on the same batch from the same weights; evaluation time (embed N captions,
similarity, metrics); peak RSS; the optimised CMA step's FLOP rate against a plain fp32
matmul. Prints a table, then one JSON line. On CPU it uses one thread unless told
otherwise (--threads): see benchmarks/README.md for why.

    python benchmarks/throughput.py                # ViT-B/32, batch 32, about 4 min on one core
    python benchmarks/throughput.py --tiny         # tiny sizes (tests)

No tokenizer or weights can be downloaded here, so captions are random "words" of a
made-up vocabulary (one token each) run through in-memory WordPiece tokenizers of the
real vocabulary sizes (CLIP 49,408; mBERT 119,547); see make_corpus for the lengths.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from dasd_lib.backbones.hf import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, HFBackbone  # noqa: E402
from dasd_lib.config import HFConfig, ModelConfig, TargetStageConfig  # noqa: E402
from dasd_lib.evaluate import embed_target, score_captions  # noqa: E402
from dasd_lib.model import METHODS, build_target_model  # noqa: E402
from dasd_lib.train import (FrozenFeatures, TargetData, TrainTask, autocast_dtype,  # noqa: E402
                            encode_images, encode_source_texts, make_accelerator, make_optimizer,
                            TargetStep, make_scheduler, make_target_data, target_task,
                            train_step)

METHOD, LANG = "dasd", "de"
TARGETS = {"cma_speedup": 4.0, "cla_speedup": 2.0, "step_flop_fraction": 0.5}


# ----------------------------------------------------------------------------- sizes

@dataclass(frozen=True)
class Sizes:
    """Backbone and target-tower sizes. Defaults: CLIP ViT-B/32 (transformers CLIPConfig
    defaults), mBERT's vocabulary, and method.md's DASD sizes."""
    image_size: int = 224
    patch_size: int = 32
    vision: dict | None = None       # CLIPVisionConfig overrides (None: ViT-B)
    text: dict | None = None         # CLIPTextConfig overrides (None: 12 x 512, 8 heads, ctx 77)
    projection_dim: int = 512        # d
    source_vocab: int = 49408        # CLIP BPE vocabulary
    ml_vocab: int = 119547           # mBERT cased vocabulary
    ml_dim: int = 768                # e
    rank: int = 32
    generator_dim: int = 512
    sdm_hidden: int = 256
    static_hidden: int = 256
    disc_hidden: tuple[int, ...] = (256, 128)


def vit_b(patch_size: int = 32) -> Sizes:
    return Sizes(patch_size=patch_size)


def tiny_sizes() -> Sizes:
    return Sizes(image_size=32, patch_size=8, projection_dim=24, source_vocab=300, ml_vocab=500, ml_dim=16,
                 vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
                 text=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
                 rank=4, generator_dim=16, sdm_hidden=16, static_hidden=8, disc_hidden=(16, 8))


def model_config(sizes: Sizes) -> ModelConfig:
    return ModelConfig(backbone="hf", adapter_rank=sizes.rank, generator_dim=sizes.generator_dim,
                       sdm_hidden=sizes.sdm_hidden, static_hidden=sizes.static_hidden,
                       disc_hidden=list(sizes.disc_hidden), sdm_layers=1)


# ----------------------------------------------------------------------------- builders

def word_tokenizer(vocab_size: int, context_length: int):
    """A BERT-style WordPiece tokenizer over a made-up vocabulary: [PAD] [UNK] [CLS] [SEP],
    then words 'w4' ... 'w{vocab_size-1}', each one token. Built in memory (no files)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {t: i for i, t in enumerate(specials)} | {f"w{i}": i for i in range(len(specials), vocab_size)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", padding_side="right",
                                   model_max_length=context_length)


def build_backbone(sizes: Sizes, seed: int = 0) -> HFBackbone:
    """The `hf` backbone on a random CLIPModel (sdpa attention, as load_hf_backbone loads
    it) and a random multilingual embedding, without files: HFBackbone's own constructor."""
    from transformers import CLIPConfig, CLIPModel
    text = {"vocab_size": sizes.source_vocab, "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0, **(sizes.text or {})}
    vision = {"image_size": sizes.image_size, "patch_size": sizes.patch_size, **(sizes.vision or {})}
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=sizes.projection_dim)
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = CLIPModel(config).eval()
        ml = torch.randn(sizes.ml_vocab, sizes.ml_dim) * 0.02  # stands in for mBERT's word embeddings
    ctx = config.text_config.max_position_embeddings
    backbone = HFBackbone(cfg=HFConfig(clip_path="random-clip", mbert_path="random-mbert"), clip=clip,
                          tokenizer_source=word_tokenizer(sizes.source_vocab, ctx),
                          tokenizer_target=word_tokenizer(sizes.ml_vocab, ctx),
                          ml_embeddings=ml, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    return backbone.freeze()


def random_captions(rng: np.random.Generator, n: int, vocab: int, words: tuple[int, int],
                    pieces_per_word: float) -> list[str]:
    """n captions of `words` (inclusive range) words, each word ~pieces_per_word tokens."""
    lengths = np.ceil(rng.integers(words[0], words[1] + 1, n) * pieces_per_word).astype(int)
    return [" ".join(f"w{i}" for i in rng.integers(4, vocab, k)) for k in lengths]


@dataclass
class Corpus:
    table: pd.DataFrame      # one target caption per image: lang, caption, source_caption, image_id
    images: np.ndarray       # (N, S, S, 3) uint8, row i = image_id f"img{i}"


def make_corpus(sizes: Sizes, n: int, seed: int = 0, words: tuple[int, int] = (10, 25)) -> Corpus:
    """n (image, English caption, translated caption) triples. Captions have 10-25 words;
    English runs ~1.2 CLIP BPE tokens per word, German/French ~1.4 mBERT pieces per word
    (plus [CLS]/[SEP]), so a batch of 32 pads to about 37 target tokens."""
    rng = np.random.default_rng(seed)
    english = random_captions(rng, n, sizes.source_vocab, words, 1.2)
    target = random_captions(rng, n, sizes.ml_vocab, words, 1.4)
    table = pd.DataFrame({"lang": LANG, "caption": target, "source_caption": english,
                          "image_id": [f"img{i}" for i in range(n)], "split": "train"})
    images = rng.integers(0, 256, (n, sizes.image_size, sizes.image_size, 3), dtype=np.uint8)
    return Corpus(table=table, images=images)


def frozen_cache(backbone: HFBackbone, corpus: Corpus, device: torch.device) -> FrozenFeatures:
    """r_V per image and r_S per English caption, once: what dasd_lib.train.frozen_features
    computes and stores (the same encode_images / encode_source_texts, no disk)."""
    texts = sorted(set(corpus.table.source_caption))
    image_ids = corpus.table.image_id.tolist()
    return FrozenFeatures(image_index={i: n for n, i in enumerate(image_ids)},
                          image_emb=encode_images(backbone, corpus.images, device),
                          text_index={t: n for n, t in enumerate(texts)},
                          text_emb=encode_source_texts(backbone, texts, device))


class Recompute:
    """Stands in for TargetData.r_S / r_V in the naive mode: `x[rows]` runs the frozen
    tower on those rows, every time (no cache)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.fn(rows)


@dataclass
class NaiveTargetData(TargetData):
    """TargetData whose batches pad to the context length and whose frozen references
    are recomputed per batch (see Recompute)."""
    context_length: int = 77
    pad_id: int = 0

    def batch(self, rows: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = self.lengths[rows]
        ids = torch.full((len(rows), self.context_length), self.pad_id, dtype=self.ids.dtype)
        width = min(self.ids.shape[1], self.context_length)
        ids[:, :width] = self.ids[rows, :width]
        mask = (torch.arange(self.context_length)[None, :] < lengths[:, None]).long()
        return ids.to(device), mask.to(device)


def naive_data(backbone: HFBackbone, corpus: Corpus, cached: TargetData, device: torch.device) -> NaiveTargetData:
    """The same captions as `cached`, with r_S from the English ids padded to 77 and r_V from
    the preprocessed pixels (the authors' data loader preprocesses in its workers)."""
    ctx = backbone.context_length
    en_ids, en_mask = backbone.tokenize_source(corpus.table.source_caption.tolist())
    pad = backbone.tokenizer_source.pad_token_id
    en_ids = torch.nn.functional.pad(en_ids, (0, ctx - en_ids.shape[1]), value=pad)  # (N, 77)
    en_mask = torch.nn.functional.pad(en_mask, (0, ctx - en_mask.shape[1]), value=0)
    pixels = backbone.preprocess_images(corpus.images)  # (N, 3, S, S); image i belongs to row i
    return NaiveTargetData(
        ids=cached.ids, lengths=cached.lengths, lang_rows=cached.lang_rows,
        r_S=Recompute(lambda rows: backbone.encode_source_text(en_ids[rows].to(device), en_mask[rows].to(device))),
        r_V=Recompute(lambda rows: backbone.encode_image(pixels[rows].to(device))),
        context_length=ctx, pad_id=backbone.tokenizer_target.pad_token_id)


def stage_config(batch: int, lr: float = 1e-4, precision: str = "auto", compile: bool = False) -> TargetStageConfig:
    """method.md's optimiser (AdamW 0.9/0.98, eps 1e-6, wd 0.2, clip 1.0) and loss weights.
    precision "auto": bf16 autocast on CUDA, fp32 on CPU (dasd_lib.devices.autocast_dtype)."""
    return TargetStageConfig(batch_size=batch, lr=lr, steps=1000, precision=precision, compile=compile)


# ----------------------------------------------------------------------------- steps

class Recorder:
    """Calls the target model in one mode and keeps the last output. Optimised
    (share_prefix=True): what the step asks for (block 0 shared, the last block at the end
    token only); naive: the authors' full computation (separate SDM and main passes, every
    token through every block)."""

    def __init__(self, model, share_prefix: bool):
        self.model, self.share_prefix, self.last = model, share_prefix, None

    def __call__(self, ids, mask, lang, end_only: bool = False):
        self.last = self.model(ids, mask, lang, share_prefix=self.share_prefix,
                               end_only=end_only and self.share_prefix)
        return self.last


@dataclass
class Trainer:
    """One method's training state for a stage, and the step both modes time."""
    model: torch.nn.Module            # the prepared TargetTextModel (or its torch.compile wrapper)
    trainable: list[torch.nn.Parameter]
    disc: torch.nn.Module
    disc_opt: torch.optim.Optimizer
    opt: torch.optim.Optimizer        # accelerate's wrapper of make_optimizer's AdamW
    scheduler: object
    cfg: TargetStageConfig
    stage: str
    device: torch.device
    dtype: torch.dtype | None
    accelerator: object
    step: TargetStep                  # the library's step as target_task built it

    def step_fn(self, data: TargetData, share_prefix: bool) -> tuple[Callable, Recorder]:
        """The library's TargetStep on `data`, through a Recorder with a fixed share_prefix, with
        the trainer's current discriminator and its optimiser."""
        rec = Recorder(self.model, share_prefix)
        fn = dataclasses.replace(self.step, model=rec, data=data, disc=self.disc, disc_opt=self.disc_opt)
        return fn, rec

    def train_step(self, fn: Callable, step: int) -> dict[str, float]:
        """dasd_lib.train.train_step (what run_loop runs each step) with this trainer's
        optimiser and schedule, without run_loop's CSV / checkpoint I/O. Returns seconds per
        phase (CPU only: on CUDA that would need syncs the loop has not)."""
        clock = PhaseClock(self.device.type != "cuda")
        task = TrainTask(modules={}, optimizer=self.opt, step_fn=fn, batch_size=self.cfg.batch_size,
                         params_to_clip=self.trainable, accelerator=self.accelerator)
        train_step(task, self.cfg, self.scheduler, step, stage=self.stage, desc="benchmark",
                   on_phase=clock)
        return clock.phases


class PhaseClock:
    """clock(name) records the seconds since the previous call under `name`."""

    def __init__(self, enabled: bool):
        self.enabled, self.phases, self.t = enabled, {}, time.perf_counter()

    def __call__(self, name: str) -> None:
        if self.enabled:
            now = time.perf_counter()
            self.phases[name], self.t = now - self.t, now


def fused_like(opt: torch.optim.Optimizer, cfg: TargetStageConfig) -> torch.optim.AdamW:
    """make_optimizer's AdamW groups (decay / no decay), with fused=True: one kernel per
    parameter instead of about ten passes over it."""
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True)


def build_trainer(backbone: HFBackbone, sizes: Sizes, stage: str, cfg: TargetStageConfig, device: torch.device,
                  fused_adamw: bool = False, seed: int = 0, data: TargetData | None = None) -> Trainer:
    """Model, discriminator, optimiser, accelerator, compile and schedule from the library's
    own setup (dasd_lib.train.target_task, as train_target_stage uses it). `fused_adamw` is a
    what-if (the same AdamW groups with fused=True), not the library's optimiser."""
    accelerator = make_accelerator(device.type)
    if accelerator.device.type != device.type:
        raise RuntimeError(f"benchmark: accelerate chose {accelerator.device}, not {device}")
    torch.manual_seed(seed)
    model = build_target_model(backbone, model_config(sizes), METHOD, [LANG], seed=seed)
    task, trainable = target_task(model, backbone=backbone, model_cfg=model_config(sizes), cfg=cfg,
                                  spec=METHODS[METHOD], stage=stage, data=data, seed=0,
                                  accelerator=accelerator,
                                  optimizer_factory=(lambda named, c: fused_like(make_optimizer(named, c), c))
                                  if fused_adamw else None)
    step = task.step_fn
    return Trainer(model=step.model, trainable=trainable, disc=step.disc, disc_opt=step.disc_opt,
                   opt=task.optimizer, scheduler=make_scheduler(task.optimizer, cfg, cfg.steps),
                   cfg=cfg, stage=stage, device=device, dtype=step.dtype, accelerator=accelerator,
                   step=step)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    seconds: float               # median seconds per step
    phases: dict[str, float]     # median seconds per phase (CPU)
    all_seconds: list[float]


def time_steps(trainer: Trainer, fn: Callable, warmup: int, steps: int, start: int = 0) -> Timing:
    """`steps` timed steps after `warmup` untimed ones."""
    return time_interleaved(trainer, {"only": (fn, None)}, warmup, steps, start)["only"]


def time_interleaved(trainer: Trainer, variants: dict[str, tuple[Callable, tuple | None]], warmup: int,
                     steps: int, start: int = 0) -> dict[str, Timing]:
    """Time several variants of the step in turns (A B A B ...), so a burst of load from
    other processes slows each about alike. A variant is (step fn, (optimizer, scheduler) or
    None for the trainer's own); `warmup` untimed rounds first."""
    own = (trainer.opt, trainer.scheduler)
    times: dict[str, list[float]] = {k: [] for k in variants}
    phases: dict[str, list[dict]] = {k: [] for k in variants}
    for i in range(warmup + steps):
        for name, (fn, opt_sched) in variants.items():
            trainer.opt, trainer.scheduler = opt_sched or own
            sync(trainer.device)
            t0 = time.perf_counter()
            ph = trainer.train_step(fn, start + i)
            sync(trainer.device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
                phases[name].append(ph)
    trainer.opt, trainer.scheduler = own
    return {k: Timing(seconds=statistics.median(times[k]), all_seconds=times[k],
                      phases={n: statistics.median(p[n] for p in phases[k]) for n in (phases[k] or [{}])[0]})
            for k in variants}


# ----------------------------------------------------------------------------- checks

def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative difference ||a - b|| / max(||a||, tiny)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


def compare_modes(trainer: Trainer, cached: TargetData, naive: TargetData, tol: float = 1e-4) -> dict:
    """One step's outputs (r_T, f_sr, f_sa), loss terms and gradients in both modes, on the
    same batch (step 0) from the same weights (each mode gets an identical fresh discriminator,
    since its update is part of the step). Nothing is applied to the model. The FLOPs of
    each mode's forward + backward are counted on the way (the optimiser adds no matmuls)."""
    base_disc = copy.deepcopy(trainer.disc.state_dict())
    outputs, terms_of, flops = {}, {}, {}
    grads: list[torch.Tensor] = []
    grad_sq = diff_sq = 0.0
    for mode, data, share in (("optimised", cached, True), ("naive", naive, False)):
        trainer.disc.load_state_dict(base_disc)
        trainer.disc_opt = torch.optim.Adam(trainer.disc.parameters(), lr=trainer.cfg.disc_lr)
        fn, rec = trainer.step_fn(data, share)
        trainer.opt.zero_grad(set_to_none=True)
        with flop_counter() as counter:
            terms = fn(0)
            terms["total"].backward()
        flops[mode] = int(counter.get_total_flops())
        outputs[mode] = {k: getattr(rec.last, k).detach().float() for k in ("r_T", "f_sr", "f_sa")}
        terms_of[mode] = {k: v.detach().float() for k, v in terms.items()}
        with_grad = [p for p in trainer.trainable if p.grad is not None]
        if mode == "optimised":  # keep one copy of the gradients, not two
            grads = [p.grad.clone() for p in with_grad]
        else:
            for g, p in zip(grads, with_grad, strict=True):
                grad_sq += float(g.double().square().sum())
                diff_sq += float((g - p.grad).double().square().sum())
        trainer.opt.zero_grad(set_to_none=True)
    del grads
    trainer.disc.load_state_dict(base_disc)
    trainer.disc_opt = torch.optim.Adam(trainer.disc.parameters(), lr=trainer.cfg.disc_lr)
    o1, o2, t1, t2 = outputs["optimised"], outputs["naive"], terms_of["optimised"], terms_of["naive"]
    diffs = {k: _rel(o1[k], o2[k]) for k in o1}
    diffs |= {f"loss_{k}": abs(float(t1[k] - t2[k])) / max(abs(float(t1[k])), 1e-3) for k in t1}
    diffs["grad"] = math.sqrt(diff_sq / max(grad_sq, 1e-24))
    worst = max(diffs, key=diffs.get)
    return {"match": all(v <= tol for v in diffs.values()), "max_rel_diff": diffs[worst], "worst": worst,
            "diffs": diffs, "flops": flops["optimised"], "flops_naive": flops["naive"]}


# ----------------------------------------------------------------------------- flops

def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-`repeats` fp32 (n x n) @ (n x n) rate in GFLOP/s."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def flop_counter():
    """torch.utils.flop_counter.FlopCounterMode. The CPU flash-attention kernels are not in
    its registry, so they are mapped to its own sdpa formulas."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    def fwd(q, k, v, *args, out_shape=None, **kwargs):  # shapes, as the counter passes them
        return sdpa_flop_count(q, k, v)

    def bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, q, k, v)

    aten = torch.ops.aten
    return FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: fwd,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: bwd})


def profile_step(trainer: Trainer, fn: Callable, step: int, rows: int = 25) -> str:
    """torch.profiler table (self CPU time) of one step."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        trainer.train_step(fn, step)
    key = "self_cuda_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


# ----------------------------------------------------------------------------- evaluation

def eval_throughput(model, backbone: HFBackbone, sizes: Sizes, n_captions: int, device: torch.device,
                    batch_size: int = 256, captions_per_image: int = 5, seed: int = 1) -> dict:
    """Evaluation as dasd_lib.evaluate does it: tokenize and embed n test captions
    (embed_target: length-sorted, batch-longest batches), cosine similarity against the
    test images' cached r_V, and the retrieval metrics."""
    rng = np.random.default_rng(seed)
    n_images = max(1, n_captions // captions_per_image)
    texts = random_captions(rng, n_captions, sizes.ml_vocab, (10, 25), 1.4)
    captions = pd.DataFrame({"image_id": [f"img{i % n_images}" for i in range(n_captions)]})
    image_ids = [f"img{i}" for i in range(n_images)]
    image_emb = rng.standard_normal((n_images, backbone.embed_dim)).astype(np.float32)  # a cache hit
    with torch.no_grad():
        embed_target(model, backbone, texts[:min(8, n_captions)], LANG, device=device, batch_size=batch_size)
        sync(device)
        t0 = time.perf_counter()
        emb = embed_target(model, backbone, texts, LANG, device=device, batch_size=batch_size)
        t1 = time.perf_counter()
        metrics = score_captions(emb.r_T, captions, image_ids, image_emb)
        t2 = time.perf_counter()
    model.train()
    return {"eval_captions": n_captions, "eval_images": n_images, "eval_s": t2 - t0, "eval_embed_s": t1 - t0,
            "eval_metrics_s": t2 - t1, "eval_captions_per_s": n_captions / (t2 - t0),
            "eval_SumR": metrics["SumR"]}


# ----------------------------------------------------------------------------- main

def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def setup(sizes: Sizes, device: torch.device, pool: int, seed: int = 0):
    """Backbone, corpus, the frozen cache and the cached data of both stages."""
    t0 = time.perf_counter()
    backbone = build_backbone(sizes, seed).to(device)
    corpus = make_corpus(sizes, pool, seed)
    t1 = time.perf_counter()
    feats = frozen_cache(backbone, corpus, device)
    t2 = time.perf_counter()
    cached = {s: make_target_data(backbone, corpus.table, feats, with_images=s == "cma") for s in ("cla", "cma")}
    return backbone, corpus, cached, {"build_s": t1 - t0, "cache_build_s": t2 - t1}


def header(args, sizes: Sizes, cfg: TargetStageConfig, device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": device.type, "device_name": name,
            "dtype": str(autocast_dtype(cfg, device) or torch.float32).replace("torch.", ""),
            "batch": args.batch, "tiny": args.tiny, "compile": args.compile, "fused_adamw": args.fused_adamw,
            "vision": "tiny" if args.tiny else f"ViT-B/{sizes.patch_size}@{sizes.image_size}",
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_avg_1m_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def run(args) -> dict:
    device = torch.device(args.device)
    sizes = tiny_sizes() if args.tiny else vit_b(args.patch)
    cfg = stage_config(args.batch, precision=args.precision, compile=args.compile)
    torch.manual_seed(0)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    log(f"building backbone and frozen cache ({'tiny' if args.tiny else 'ViT-B'}) ...")
    backbone, corpus, cached, timing = setup(sizes, device, args.pool or 2 * args.batch)
    out = header(args, sizes, cfg, device) | timing
    n_mm = 512 if args.tiny else 2048
    matmul = [matmul_gflops(device, n_mm)]
    rows = []
    for stage in ("cla", "cma"):
        trainer = build_trainer(backbone, sizes, stage, cfg, device, fused_adamw=args.fused_adamw)
        out.setdefault("trainable_params", sum(p.numel() for p in trainer.trainable))
        naive = naive_data(backbone, corpus, cached[stage], device)
        fn_opt, _ = trainer.step_fn(cached[stage], True)
        trainer.train_step(fn_opt, 0)  # the first step also allocates AdamW's moments
        out.setdefault("peak_rss_optimised_mib", peak_rss_mib())  # before the naive mode's T = 77 activations
        log(f"{stage}: checking both modes give the same outputs ...")
        check = compare_modes(trainer, cached[stage], naive)
        out[f"{stage}_outputs_match"], out[f"{stage}_max_rel_diff"] = check["match"], check["max_rel_diff"]
        if not check["match"]:
            log(f"{stage}: modes differ: {check['diffs']}")
        fn_opt, _ = trainer.step_fn(cached[stage], True)  # with the fresh discriminator optimiser
        fn_naive, _ = trainer.step_fn(naive, False)
        log(f"{stage}: timing optimised and naive steps in turns ...")
        timed = time_interleaved(trainer, {"optimised": (fn_opt, None), "naive": (fn_naive, None)},
                                 args.warmup, args.steps, start=1)
        t_opt, t_naive = timed["optimised"], timed["naive"]
        log(f"{stage}: optimised {[round(t, 2) for t in t_opt.all_seconds]} s/step, "
            f"naive {[round(t, 2) for t in t_naive.all_seconds]} s/step")
        sec, sec_naive = t_opt.seconds, t_naive.seconds
        out[f"{stage}_phases_s"] = {k: rounded(v) for k, v in t_opt.phases.items()}
        out[f"{stage}_naive_phases_s"] = {k: rounded(v) for k, v in t_naive.phases.items()}
        flops, flops_naive = check["flops"], check["flops_naive"]
        out |= {f"{stage}_samples_per_s": args.batch / sec, f"{stage}_naive_samples_per_s": args.batch / sec_naive,
                f"{stage}_speedup": sec_naive / sec, f"{stage}_step_s": sec, f"{stage}_naive_step_s": sec_naive,
                f"{stage}_step_gflop": flops / 1e9, f"{stage}_naive_step_gflop": flops_naive / 1e9,
                f"{stage}_step_gflops_per_s": flops / sec / 1e9,
                f"{stage}_speedup_best": min(t_naive.all_seconds) / min(t_opt.all_seconds)}
        rows.append((stage, sec, sec_naive, flops, flops_naive, t_opt.phases, t_naive.phases))
        if args.profile:
            print(f"\n--- profile: optimised {stage} step ---\n{profile_step(trainer, fn_opt, 1)}")
            print(f"\n--- profile: naive {stage} step ---\n{profile_step(trainer, fn_naive, 1)}")
        if stage == "cma" and args.what_if and not args.fused_adamw and device.type == "cpu":
            out |= what_if_fused(trainer, fn_opt, args, t_naive, check["flops"])
        if stage == "cma":
            log(f"evaluation: embedding {args.eval_captions} captions ...")
            out |= eval_throughput(trainer.model, backbone, sizes, args.eval_captions, device)
        del trainer, fn_opt, fn_naive, naive
    matmul.append(matmul_gflops(device, n_mm))
    out["outputs_match"] = bool(out["cla_outputs_match"] and out["cma_outputs_match"])
    out["step_gflops_per_s"] = out["cma_step_gflops_per_s"]
    out["matmul_gflops_per_s"] = max(matmul)  # best of a few, at the start and at the end
    out["step_flop_fraction"] = out["step_gflops_per_s"] / out["matmul_gflops_per_s"]
    out["peak_rss_mib"] = peak_rss_mib()
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    out["load_avg_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    # CPU seconds this process got per wall second and thread: near 1 on an idle machine,
    # well below when others share the cores (then every figure here is slowed)
    out["cpu_share"] = (time.process_time() - cpu0) / (time.perf_counter() - wall0) / torch.get_num_threads()
    out["total_s"] = time.perf_counter() - wall0
    out["targets_met"] = {k: bool(out[k] >= v) for k, v in TARGETS.items()}
    print_table(out, rows)
    return out


def what_if_fused(trainer: Trainer, fn_opt: Callable, args, t_naive: Timing, flops: int) -> dict:
    """Not the library: the optimised CMA step with AdamW(fused=True) over the same groups
    (one pass over the 100M parameters instead of about ten), timed in turns with the
    library's AdamW. The naive step with it is estimated from its measured phases: naive -
    its optimiser phase + the fused one."""
    fused = trainer.accelerator.prepare(fused_like(trainer.opt, trainer.cfg))
    log("what-if: optimised CMA step, library AdamW and AdamW(fused=True) in turns ...")
    timed = time_interleaved(trainer, {"library": (fn_opt, None),
                                       "fused": (fn_opt, (fused, make_scheduler(fused, trainer.cfg, trainer.cfg.steps)))},
                             args.warmup, args.steps, start=1)
    lib, t = timed["library"], timed["fused"]
    fused.state.clear()
    naive_est = t_naive.seconds - t_naive.phases.get("optimizer", 0.0) + t.phases.get("optimizer", 0.0)
    return {"whatif_fused_cma_samples_per_s": args.batch / t.seconds,
            "whatif_library_cma_samples_per_s": args.batch / lib.seconds,
            "whatif_fused_cma_phases_s": {k: rounded(v) for k, v in t.phases.items()},
            "whatif_library_cma_phases_s": {k: rounded(v) for k, v in lib.phases.items()},
            "whatif_fused_cma_speedup_est": naive_est / t.seconds,
            "whatif_fused_step_gflops_per_s": flops / t.seconds / 1e9}


def print_table(out: dict, rows: list) -> None:
    b = out["batch"]
    print(f"\nDASD training step, {out['vision']}, batch {b}, {out['dtype']}, {out['device']} "
          f"({out['threads']} threads), torch {out['torch']}, trainable {out['trainable_params']:,}")
    phase_names = ["forward", "backward", "clip", "optimizer"]
    print(f"{'stage':<6}{'mode':<11}{'s/step':>9}{'samples/s':>11}{'GFLOP/step':>12}{'GFLOP/s':>9}{'speedup':>9}"
          "   " + " ".join(f"{n:>9}" for n in phase_names))
    for stage, sec, sec_naive, flops, flops_naive, ph, ph_naive in rows:
        def phase_cols(p):
            return "   " + " ".join(f"{p[n]:>9.3f}" if n in p else f"{'':>9}" for n in phase_names)
        print(f"{stage:<6}{'optimised':<11}{sec:>9.3f}{b / sec:>11.2f}{flops / 1e9:>12.1f}"
              f"{flops / sec / 1e9:>9.1f}{sec_naive / sec:>8.2f}x" + phase_cols(ph))
        print(f"{stage:<6}{'naive':<11}{sec_naive:>9.3f}{b / sec_naive:>11.2f}{flops_naive / 1e9:>12.1f}"
              f"{flops_naive / sec_naive / 1e9:>9.1f}{'':>9}" + phase_cols(ph_naive))
    print("(phases: seconds per step; forward = batch, frozen references, forward, losses, discriminator update)")
    print(f"outputs match (r_T, f_sr, f_sa, losses, grads): {out['outputs_match']} "
          f"(max relative diff CLA {out['cla_max_rel_diff']:.1e}, CMA {out['cma_max_rel_diff']:.1e})")
    print(f"frozen cache built once in {out['cache_build_s']:.1f} s; evaluation: {out['eval_captions']} captions "
          f"in {out['eval_s']:.2f} s ({out['eval_captions_per_s']:.0f} captions/s, metrics {out['eval_metrics_s']:.3f} s)")
    print(f"optimised CMA step {out['step_gflops_per_s']:.1f} GFLOP/s vs fp32 matmul "
          f"{out['matmul_gflops_per_s']:.1f} GFLOP/s ({100 * out['step_flop_fraction']:.0f} %)")
    print(f"CPU share {out['cpu_share']:.2f} (1.0: the cores were ours), load average "
          f"{out['load_avg_1m_start']} -> {out['load_avg_1m_end']}, total {out['total_s']:.0f} s")
    if "whatif_fused_cma_samples_per_s" in out:
        print(f"what-if (not the library): AdamW(fused=True) -> optimised CMA "
              f"{out['whatif_fused_cma_samples_per_s']:.2f} samples/s (library AdamW in the same turns: "
              f"{out['whatif_library_cma_samples_per_s']:.2f}), optimizer phase "
              f"{out['whatif_fused_cma_phases_s'].get('optimizer', float('nan')):.3f} s "
              f"(library {out['whatif_library_cma_phases_s'].get('optimizer', float('nan')):.3f} s), "
              f"{out['whatif_fused_step_gflops_per_s']:.1f} GFLOP/s, speedup over naive "
              f"~{out['whatif_fused_cma_speedup_est']:.2f}x (estimated)")
    print(f"peak RSS {out['peak_rss_mib']:.0f} MiB (optimised training alone: {out['peak_rss_optimised_mib']:.0f} MiB); targets "
          + ", ".join(f"{k} >= {v}: {'met' if out['targets_met'][k] else 'MISSED'}" for k, v in TARGETS.items()))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3,
                   help="timed steps per stage and mode, the modes in turns (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    p.add_argument("--pool", type=int, default=0, help="captions (and images) batches are drawn from (0: 2 x batch)")
    p.add_argument("--eval-captions", type=int, default=250, help="test captions embedded (5 per image)")
    p.add_argument("--patch", type=int, default=32, help="ViT patch size (32: ViT-B/32, 16: ViT-B/16)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (for tests)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="autocast (auto: bf16 on CUDA, fp32 on CPU, as the library)")
    p.add_argument("--compile", action="store_true", help="torch.compile the target model (stage.compile)")
    p.add_argument("--fused-adamw", action="store_true",
                   help="what-if: AdamW(fused=True) over make_optimizer's groups (not what the library does)")
    p.add_argument("--no-what-if", dest="what_if", action="store_false",
                   help="skip the fused-AdamW what-if on the optimised CMA step (CPU)")
    p.add_argument("--profile", action="store_true", help="print torch.profiler tables of one step per mode")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch's default, one per core). 1 by default: on a CPU that "
                        "others share, 2 threads wait milliseconds at every op's barrier (README)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads and args.device == "cpu":
        torch.set_num_threads(args.threads)
    out = run(args)
    out["python"] = platform.python_version()
    print(json.dumps({k: rounded(v) for k, v in out.items()}))


def rounded(v):
    """Floats to 4 significant digits for the JSON line."""
    return float(f"{v:.4g}") if isinstance(v, float) else v


if __name__ == "__main__":
    main()
