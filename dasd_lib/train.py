"""Training stages: `vlp` (tiny VLP pretraining / English fine-tune), `cla` (alias `nlt`)
and `cma` (alias `le`), with the losses of method.md.

A stage is a function taking configs and returning a StageResult, so notebooks, the
runner and the tests call the same thing. The frozen VLP's outputs (image embeddings
r_V, source-caption embeddings r_S) are computed once and cached (dasd_lib.features).
Devices, processes and the Accelerator live in dasd_lib.devices (re-exported here); the
VLP's training loop (`train_vlp_stage`) in dasd_lib.train_vlp, on this module's loop.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from . import losses
from .checkpoint import (CheckpointError, check_record, clear_partial_writes,  # noqa: F401
                         fingerprint, from_pretrained, latest_checkpoint, load_state,
                         load_training_state, make_record, remove_tree, save_pretrained,
                         save_state, save_training_state, step_dirs, write_losses)
from .storage import report_progress
from .devices import (TrainingError, apply_determinism, autocast_dtype, is_main_process,  # noqa: F401
                      launcher_processes, make_accelerator, on_main, process_rank, resolve_device,
                      wait_for_everyone, warn_if_single_launch)
from .config import (FP16_REFUSED, STAGE_ALIASES, ConfigError, ModelConfig, Params, StageConfig,  # noqa: F401
                     TargetStageConfig, canonical_stage)
from .model import METHODS, Discriminator, build_target_model
from .features import (FeaturesError, FrozenFeatures, TargetData, cache_key,  # noqa: F401
                       encode_images, encode_source_texts, features_key, file_fingerprint,
                       frozen_features, make_target_data, target_data_key, training_rows)

log = logging.getLogger("dasd_lib.train")



# ----------------------------------------------------------------------------- optimiser

def make_optimizer(params: list[torch.nn.Parameter] | list[tuple[str, torch.nn.Parameter]],
                   cfg: StageConfig, lr: float | None = None) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases, LayerNorm gains and scalars excluded)."""
    named = [p if isinstance(p, tuple) else ("", p) for p in params]
    decay = [p for _, p in named if p.requires_grad and p.ndim >= 2]
    no_decay = [p for _, p in named if p.requires_grad and p.ndim < 2]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    # fused AdamW: one kernel per parameter instead of ~10 passes with 2 temporaries; the
    # dense 92M-row mBERT embedding made the unfused update up to half of a CPU step
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr if lr is not None else cfg.lr,
                             betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)


# ----------------------------------------------------------------------------- loop

@dataclass
class StageResult:
    stage: str
    out_dir: Path
    steps: int
    losses: pd.DataFrame
    seconds: float
    samples_per_s: float
    resumed_from: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class TrainTask:
    """What a generic loop needs: modules to checkpoint, how to compute one step."""
    modules: dict[str, torch.nn.Module]              # name -> module whose trainable weights are saved
    optimizer: torch.optim.Optimizer
    step_fn: Callable[[int], dict[str, torch.Tensor]]  # step -> named loss terms incl. "total"
    batch_size: int
    extra_optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    params_to_clip: list[torch.nn.Parameter] = field(default_factory=list)
    accelerator: Any = None                            # accelerate.Accelerator, or None


def train_step(task: TrainTask, cfg: StageConfig, scheduler, step: int, *, stage: str,
               desc: str = "", out_dir: Path | None = None,
               on_phase: Callable[[str], None] | None = None) -> dict[str, float]:
    """One training step, the one run_loop and the throughput benchmark run: the task's
    step (batch, forward, losses, discriminator update), a check that every term is
    finite, backward, gradient clipping (refusing a non-finite norm before the update),
    the optimiser and the schedule. Returns the loss row (step, lr, every term).
    `on_phase(name)` is called after 'forward', 'backward', 'clip' and 'optimizer'."""
    phase = on_phase or (lambda _name: None)
    acc = task.accelerator
    where = desc or stage

    def last() -> str:
        found = latest_checkpoint(out_dir) if out_dir is not None else None
        return str(found) if found else "none (no checkpoint written yet)"

    terms = task.step_fn(step)
    logged = {k: v.detach() for k, v in terms.items()}
    if acc is not None and acc.num_processes > 1:
        # the mean over processes: the logged loss is the global batch's (each process's
        # batch is the same size), and a non-finite term on any process stops all of them
        # here together instead of leaving the others waiting in the next all-reduce
        logged = {k: acc.reduce(v.float().clone(), reduction="mean") for k, v in logged.items()}
    for name, value in logged.items():
        if not torch.isfinite(value).all():
            raise TrainingError(
                f"{where}: loss term '{name}' is {value.item()} at step {step}; stopped. "
                f"Last good checkpoint: {last()}. Lower {stage}.lr or check the data.")
    phase("forward")
    task.optimizer.zero_grad(set_to_none=True)
    if acc is not None:
        acc.backward(terms["total"])
    else:
        terms["total"].backward()
    phase("backward")
    clip = acc.clip_grad_norm_ if acc is not None else torch.nn.utils.clip_grad_norm_
    # with grad_clip 0 this only measures (max_norm inf scales by exactly 1). A non-finite
    # gradient (fp16 overflow, sqrt at 0) must not reach the weights: the next checkpoint
    # would hold NaNs and be taken for a good one.
    norm = clip(task.params_to_clip, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    if norm is not None and not torch.isfinite(torch.as_tensor(norm)).all():
        raise TrainingError(
            f"{where}: the gradient norm is {float(norm)} at step {step} although every "
            f"loss term is finite; stopped before the update. Last good checkpoint: {last()}. "
            f"Lower {stage}.lr, use fp32 or bf16, or check the data.")
    phase("clip")
    task.optimizer.step()
    scheduler.step()
    phase("optimizer")
    return {"step": step, "lr": scheduler.get_last_lr()[0],
            **{k: float(v) for k, v in logged.items()}}


def make_scheduler(optimizer, cfg: StageConfig, steps: int):
    """Cosine schedule with linear warm-up over `steps` (transformers)."""
    return get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_frac * steps), max(steps, 1))


def run_loop(task: TrainTask, cfg: StageConfig, *, stage: str, steps: int, out_dir: Path,
             resume: bool = True, desc: str = "", record: dict | None = None) -> StageResult:
    """The shared training loop: cosine schedule with warm-up, clipping, atomic step
    checkpoints every cfg.checkpoint_every steps, per-step losses in losses.csv, resume
    from the newest good checkpoint, stop on a non-finite loss naming the step and term.

    `record` (make_record: what the stage is and what determines it) is stored in every
    checkpoint; resuming from, or reusing, a checkpoint with another record raises
    StaleStageError. resume=False discards the folder's checkpoints and trains afresh."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    acc = task.accelerator
    is_main = acc is None or acc.is_main_process
    if is_main:
        clear_partial_writes(out_dir)
        if not resume:  # a fresh start must not leave older checkpoints to resume from later
            for old in step_dirs(out_dir):
                remove_tree(old)
            (out_dir / "losses.csv").unlink(missing_ok=True)
    if acc is not None:
        acc.wait_for_everyone()
    scheduler = make_scheduler(task.optimizer, cfg, steps)
    start = 0
    if resume and (ckpt := latest_checkpoint(out_dir)) is not None:
        start = load_training_state(ckpt, task, scheduler, stage, record)
        log.info("%s: resumed from %s (step %d)", desc or stage, ckpt, start)
    loss_path = out_dir / "losses.csv"
    if start >= steps and loss_path.exists():  # already complete: nothing to redo
        frame = pd.read_csv(loss_path)
        return StageResult(stage=stage, out_dir=out_dir, steps=steps, losses=frame, seconds=0.0,
                           samples_per_s=0.0, resumed_from=start)
    rows = []
    if start and loss_path.exists():
        rows = [r for r in pd.read_csv(loss_path).to_dict("records") if r["step"] < start]
    t0 = time.perf_counter()
    every = cfg.checkpoint_every
    for step in tqdm(range(start, steps), desc=desc or stage, initial=start, total=steps,
                     leave=False, mininterval=2.0, disable=None):
        for m in task.modules.values():
            m.train()
        rows.append(train_step(task, cfg, scheduler, step, stage=stage, desc=desc, out_dir=out_dir))
        if is_main:
            report_progress(desc or stage, step + 1, steps)
        if cfg.log_every and (step + 1) % cfg.log_every == 0:
            log.info("%s step %d/%d: %s", desc or stage, step + 1, steps,
                     " ".join(f"{k}={v:.4g}" for k, v in rows[-1].items() if k not in ("step",)))
        if every and (step + 1) % every == 0 and step + 1 < steps and is_main:
            # losses first: a checkpoint on disk always has its loss rows (resume drops extras)
            write_losses(rows, loss_path)
            save_training_state(out_dir / f"step-{step + 1:07d}", task, scheduler, step + 1, stage,
                                 record)
            for old in step_dirs(out_dir)[:-2]:  # keep the two newest
                remove_tree(old)
    seconds = time.perf_counter() - t0
    frame = pd.DataFrame(rows)
    if is_main:
        write_losses(frame, loss_path)
        save_training_state(out_dir / f"step-{steps:07d}", task, scheduler, steps, stage, record)
        for old in step_dirs(out_dir)[:-1]:
            remove_tree(old)
    if acc is not None:
        acc.wait_for_everyone()
    done = max(steps - start, 0)
    return StageResult(stage=stage, out_dir=out_dir, steps=steps, losses=frame, seconds=seconds,
                       samples_per_s=done * task.batch_size / seconds if seconds > 0 else 0.0,
                       resumed_from=start)


def rank_slice(order: torch.Tensor, batch_size: int, accelerator) -> torch.Tensor:
    """This process's batch out of one global draw: the step's shuffled rows `order` are
    drawn alike on every process and process r takes order[r*B:(r+1)*B]. So N processes
    together train on exactly the rows one process with batch_size N*B trains on (the
    single-process equivalent of a multi-process run), and no two share a row. Where the
    order holds fewer than N*B rows the slices wrap around (processes then share rows)
    rather than leave a process an empty batch; with one process this is order[:B]."""
    rank = accelerator.process_index if accelerator is not None else 0
    take = torch.arange(min(batch_size, len(order)))
    return order[(rank * batch_size + take) % max(len(order), 1)]


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """Batch sampling depends only on (seed, stage, step): resuming replays the same batches."""
    digest = hashlib.sha256(f"{seed}:{stage}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**62 - 1))


# ----------------------------------------------------------------------------- target stages

@dataclass
class TargetStep:
    """One CLA or CMA step of method.md for any method, called as step(step_index): picks
    the step's language (round robin) and seeded batch, runs the tower, computes the stage's
    loss terms and, for methods with a discriminator, first updates the discriminator once
    (its own optimiser, on detached inputs) and then adds the adversarial term against the
    updated discriminator. Returns the named terms with their sum as 'total'; terms starting
    with 'd_' (the discriminator's loss and accuracy) are logged only. The target tower's
    own backward and optimiser step are train_step's."""
    model: Any
    disc: Any
    disc_opt: Any
    spec: Any
    stage: str
    cfg: TargetStageConfig
    data: TargetData
    seed: int
    device: Any
    dtype: Any
    accelerator: Any = None
    vlp_scale: float = 100.0

    @property
    def lambda_adv(self) -> float:
        return self.spec.lambda_adv if self.spec.lambda_adv is not None else self.cfg.lambda_adv

    @property
    def uses_adversary(self) -> bool:
        return self.spec.sdm and self.spec.use_adv and self.lambda_adv > 0 and self.disc is not None

    def batch(self, step: int) -> tuple[str, torch.Tensor]:
        """The step's language and caption rows; depends only on (seed, stage, step, rank)."""
        langs = sorted(self.data.lang_rows)
        lang = langs[step % len(langs)]  # one language per batch: its adapters are used
        pool = self.data.lang_rows[lang]
        order = torch.randperm(len(pool), generator=step_generator(self.seed, self.stage, step))
        return lang, pool[rank_slice(order, self.cfg.batch_size, self.accelerator)]

    def update_discriminator(self, f_sa: torch.Tensor, ref: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimiser step of the discriminator on own vs shuffled (f_sa, reference)
        pairs (inputs detached: this never moves the tower); returns d_loss and d_acc."""
        f_sa, ref = f_sa.detach(), ref.detach()
        perm = None  # losses.default_perm: each caption paired with another's semantics
        d_acc = losses.discriminator_accuracy(self.disc, f_sa, ref, perm)
        d_loss = losses.discriminator_loss(self.disc, f_sa, ref, perm)
        self.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        acc = self.accelerator
        if acc is not None and acc.num_processes > 1:
            for p in self.disc.parameters():  # D is not DDP-wrapped: average its gradients
                p.grad = acc.reduce(p.grad, reduction="mean")
        self.disc_opt.step()
        return {"d_loss": d_loss.detach(), "d_acc": d_acc.detach()}

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        lang, rows = self.batch(step)
        ids, mask = self.data.batch(rows, self.device)
        r_S = self.data.r_S[rows].to(self.device)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            # every loss reads r_T (the end token) and the SDM's features (taken before the
            # last block), so the last block runs at the end token only: the same loss and
            # gradients up to float rounding, for a quarter less of the tower's work
            out = self.model(ids, mask, lang, end_only=True)
        r_T = out.r_T.float()
        terms: dict[str, torch.Tensor] = {}
        if self.stage == "cla":
            ref = r_S
            terms["mse"] = cfg.lambda_mse * losses.mse(r_T, r_S)
        else:
            ref = self.data.r_V[rows].to(self.device)
            terms["infonce"] = losses.info_nce(ref, r_T, scale=cfg.logit_scale or self.vlp_scale)
            if cfg.lambda_mse > 0:
                terms["mse"] = cfg.lambda_mse * losses.mse(r_T, r_S)
        if self.spec.sdm and self.spec.use_sc and cfg.lambda_sc > 0:
            kind = "l1" if self.stage == "cla" else "smooth_l1"
            terms["sc"] = cfg.lambda_sc * losses.consistency(out.f_sr.float(), ref, kind=kind)
        if self.uses_adversary:
            f_sa = out.f_sa.float()
            logged = self.update_discriminator(f_sa, ref)
            terms["adv"] = self.lambda_adv * losses.adversarial_loss(self.disc, f_sa, ref, None)
            terms |= logged
        terms["total"] = sum(v for k, v in terms.items() if not k.startswith("d_"))
        return terms


def target_task(model, *, backbone, model_cfg, cfg: TargetStageConfig, spec, stage: str,
                data: TargetData, seed: int, accelerator,
                optimizer_factory: Callable = None) -> tuple[TrainTask, list[torch.nn.Parameter]]:
    """The training task of one method's stage from its (built or loaded) model: the
    discriminator and its optimiser when the method has one, the tower's optimiser
    (make_optimizer, or `optimizer_factory(named_params, cfg)`), accelerate's wrapping,
    torch.compile when cfg.compile, and the TargetStep. Returns (task, trainable params)."""
    device = accelerator.device
    model.to(device)
    disc = disc_opt = None
    if spec.sdm and spec.use_adv:
        disc = Discriminator(model_cfg, backbone.width, backbone.embed_dim).to(device)
        disc_opt = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = (optimizer_factory or make_optimizer)(trainable, cfg)
    wrapped, opt = accelerator.prepare(model, opt)
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    step = TargetStep(model=wrapped, disc=disc, disc_opt=disc_opt, spec=spec, stage=stage, cfg=cfg,
                      data=data, seed=seed, device=device, dtype=autocast_dtype(cfg, device),
                      accelerator=accelerator, vlp_scale=vlp_logit_scale(backbone))
    modules = {"model": model} | ({"disc": disc} if disc is not None else {})
    task = TrainTask(modules=modules, optimizer=opt, batch_size=cfg.batch_size, step_fn=step,
                     extra_optimizers={"disc": disc_opt} if disc_opt is not None else {},
                     params_to_clip=[p for _, p in trainable], accelerator=accelerator)
    return task, [p for _, p in trainable]


# StageConfig fields that change how a stage is run or logged, not what it computes
UNRECORDED_STAGE_FIELDS = ("checkpoint_every", "log_every", "num_workers")


# forward switches added after runs were trained: recorded only when they differ from the
# default (method.md's forward), so stages trained before they existed still match
LATER_MODEL_FIELDS = ("compat", "sdm_branches", "f_sa_pool", "pad_to_context", "generator_act")


def model_inputs(params: Params) -> dict:
    """The record's "model" entry: model's keys (LATER_MODEL_FIELDS only when not their
    default) and tiny's and hf's, in one mapping (as when they were one section)."""
    default = ModelConfig()
    model = {k: v for k, v in dataclasses.asdict(params.model).items()
             if k not in LATER_MODEL_FIELDS or v != getattr(default, k)}
    return {**model, **dataclasses.asdict(params.tiny), **dataclasses.asdict(params.hf)}


def stage_inputs(cfg: StageConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in UNRECORDED_STAGE_FIELDS}


def target_stage_record(params: Params, *, stage: str, setting: str, method: str, seed: int,
                        backbone, data_key: str, init: dict | None = None) -> dict:
    """The record (checkpoint.make_record) of one method's CLA or CMA stage: its stage
    config, the model config, the method spec, the seed, the backbone identity, the data
    key and, for CMA, the record of the CLA model it starts from."""
    stage = canonical_stage(stage)
    inputs = {stage: stage_inputs(getattr(params, stage)), "model": model_inputs(params),
              "method": dataclasses.asdict(METHODS[method]), "seed": seed,
              "backbone": backbone.identity(), "data": data_key}
    if init is not None:
        inputs["init"] = {"identity": init["identity"], "inputs": init["inputs"]}
    return make_record({"kind": "target_stage", "setting": setting, "method": method,
                        "seed": seed, "stage": stage}, inputs)


def stage_records(params: Params, *, setting: str, method: str, seed: int, backbone,
                  data_key: str) -> dict[str, dict]:
    """{"cla": record, "cma": record}: CMA starts from CLA's weights."""
    cla = target_stage_record(params, stage="cla", setting=setting, method=method, seed=seed,
                              backbone=backbone, data_key=data_key)
    return {"cla": cla, "cma": target_stage_record(params, stage="cma", setting=setting, method=method,
                                                   seed=seed, backbone=backbone, data_key=data_key,
                                                   init=cla)}


def train_target_stage(*, params: Params, stage: str, method: str, seed: int, backbone,
                       data: TargetData, out_dir: Path, init_from: Path | None = None,
                       resume: bool = True, restart: bool = False, setting: str = "") -> StageResult:
    """Train one method's target tower for one stage (CLA or CMA) and save it to out_dir/model.

    The stage's record (target_stage_record) goes into every checkpoint and the model: a
    folder holding a stage trained with other inputs (parameters, backbone, data, seed,
    method, the CLA model it started from) raises StaleStageError naming what differs,
    unless `restart` (train from scratch, discarding the folder's checkpoints)."""

    stage = canonical_stage(stage)
    cfg: TargetStageConfig = getattr(params, stage)
    spec = METHODS[method]
    apply_determinism(params.run.deterministic)
    records = stage_records(params, setting=setting, method=method, seed=seed, backbone=backbone,
                            data_key=data.key)
    record = records[stage] if init_from is not None or stage == "cla" else \
        target_stage_record(params, stage=stage, setting=setting, method=method, seed=seed,
                            backbone=backbone, data_key=data.key)
    accelerator = make_accelerator(params.run.device)
    langs = sorted(data.lang_rows)
    torch.manual_seed(seed)
    if init_from is not None:
        model = from_pretrained(init_from, backbone, expect=records["cla"], remedy=(
            "Retrain CLA first (dasd-run --restart-stage cla, or restart = True in notebook 02), "
            "or use a new run id."))
    else:
        model = build_target_model(backbone, params.model, method, langs)
    task, trainable = target_task(model, backbone=backbone, model_cfg=params.model, cfg=cfg,
                                  spec=spec, stage=stage, data=data, seed=seed,
                                  accelerator=accelerator)
    steps = stage_steps(cfg, len(data.lengths))
    result = run_loop(task, cfg, stage=stage, steps=steps, out_dir=out_dir,
                      resume=resume and not restart, desc=" ".join(filter(None, (stage, setting, method, f"s{seed}"))),
                      record=record)
    if accelerator.is_main_process:
        save_pretrained(model, out_dir / "model", record=record)
    accelerator.wait_for_everyone()
    result.extra["trainable_params"] = sum(p.numel() for p in trainable)
    return result


def vlp_logit_scale(backbone) -> float:
    """The frozen VLP's own InfoNCE scale (exp of its learned log-scale, capped at 100)."""
    return float(backbone.logit_scale.detach().exp().clamp(max=100.0))


def stage_steps(cfg: StageConfig, n_samples: int) -> int:
    if cfg.epochs > 0:
        return max(1, math.ceil(cfg.epochs * n_samples / cfg.batch_size))
    return cfg.steps


# ----------------------------------------------------------------------------- command line

if __name__ == "__main__":  # `python -m dasd_lib.train`: the command line lives in dasd_lib.run
    from .run import train_main
    raise SystemExit(train_main())
