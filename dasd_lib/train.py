"""Training stages: `vlp` (tiny VLP pretraining / English fine-tune), `cla` (alias `nlt`)
and `cma` (alias `le`), with the losses of method.md.

A stage is a function taking configs and returning a StageResult, so notebooks, the
runner and the tests call the same thing. The frozen VLP's outputs (image embeddings
r_V, source-caption embeddings r_S) are computed once and cached (dasd_lib.features).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
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
from .config import (FP16_REFUSED, STAGE_ALIASES, ConfigError, Params, StageConfig,  # noqa: F401
                     canonical_stage)
from .model import METHODS, Discriminator, build_target_model
from .features import (FeaturesError, FrozenFeatures, TargetData, cache_key,  # noqa: F401
                       encode_images, encode_source_texts, features_key, file_fingerprint,
                       frozen_features, make_target_data, target_data_key, training_rows)

log = logging.getLogger("dasd_lib.train")



class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, unusable checkpoint); the message says why."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("run.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device(name)


def apply_determinism(enabled: bool) -> None:
    """run.deterministic: deterministic torch kernels (warn only where none exists)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts
    torch.use_deterministic_algorithms(enabled, warn_only=True)


# ----------------------------------------------------------------------------- processes

def process_rank() -> tuple[int, int]:
    """(rank, number of processes) of this process: (0, 1) unless a process group is up
    (`accelerate launch --multi_gpu`, started by the first make_accelerator)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return process_rank()[0] == 0


def wait_for_everyone() -> None:
    if process_rank()[1] > 1:
        torch.distributed.barrier()


def on_main(fn: Callable[[], Any]) -> Any:
    """Run fn on the main process only and hand its (small, picklable) result to every
    process; with one process just fn(). Shared files (caches, tokenizers, the VLP,
    checkpoints) are written this way, once, instead of by every process at the same
    paths. An exception on the main process is raised on every process as well, so none
    is left waiting for a result that never comes."""
    rank, world = process_rank()
    if world == 1:
        return fn()
    box: list[Any] = [None]
    if rank == 0:
        try:
            box = [("ok", fn())]
        except BaseException as err:
            torch.distributed.broadcast_object_list([("error", f"{type(err).__name__}: {err}")], src=0)
            raise
    torch.distributed.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise TrainingError(f"the main process failed, so this one stops too: {value}")
    return value


def launcher_processes(parent_pid: int | None = None) -> int | None:
    """How many processes `accelerate launch` was asked for (its --num_processes), read
    from the launcher's command line, when this process is the single child it started;
    None when that cannot be told. A single-process launch sets no variable that says
    how many were asked for (checked with accelerate 1.15: WORLD_SIZE, RANK and
    LOCAL_RANK are set only with --multi_gpu), but accelerate's simple launcher is this
    process's parent."""
    if "WORLD_SIZE" in os.environ or "ACCELERATE_DYNAMO_BACKEND" not in os.environ:
        return None  # several processes really started, or not started by accelerate launch
    try:
        argv = Path(f"/proc/{parent_pid or os.getppid()}/cmdline").read_bytes().decode().split("\0")
    except OSError:  # not Linux, or the parent is gone
        return None
    for i, arg in enumerate(argv):
        for flag in ("--num_processes", "--num-processes"):
            value = arg[len(flag) + 1:] if arg.startswith(flag + "=") else (
                argv[i + 1] if arg == flag and i + 1 < len(argv) else None)
            if value is not None and value.isdigit():
                return int(value)
    return None


def warn_if_single_launch() -> bool:
    """Log a warning when `accelerate launch --num_processes N` (N > 1) started a single
    process: without --multi_gpu (on CPU too, where the processes talk over gloo) accelerate
    silently runs one process, which then trains alone at 1/N of the asked global batch.
    Returns whether it warned."""
    asked = launcher_processes()
    if asked is None or asked <= 1 or process_rank()[1] > 1:
        return False
    log.warning("accelerate launch was asked for %d processes but started one: accelerate "
                "starts several only with --multi_gpu (on CPU too: add --multi_gpu, not "
                "--cpu); this process trains alone. See docs/real_data.md, 'Several GPUs'.",
                asked)
    return True


def make_accelerator(device_name: str = "auto"):
    """An `accelerate` Accelerator: one process here; under `accelerate launch` it wraps the
    model in DDP (per-language adapters leave parameters unused in a step, hence
    find_unused_parameters) and gives each process its device."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    cpu = resolve_device(device_name).type == "cpu" if device_name != "auto" else not torch.cuda.is_available()
    return Accelerator(cpu=cpu, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def autocast_dtype(cfg: StageConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default; fp32 on CPU. fp16 is refused (config.FP16_REFUSED:
    there is no gradient scaler), here too for configs built without load_params."""
    if cfg.precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if cfg.precision == "fp16":
        raise ConfigError(f"precision {FP16_REFUSED}")
    return {"fp32": None, "bf16": torch.bfloat16}[cfg.precision]


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
    cfg: StageConfig
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
            out = self.model(ids, mask, lang)
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


def target_task(model, *, backbone, model_cfg, cfg: StageConfig, spec, stage: str,
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


def model_inputs(cfg) -> dict:
    default = type(cfg)()
    return {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in LATER_MODEL_FIELDS or v != getattr(default, k)}


def stage_inputs(cfg: StageConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in UNRECORDED_STAGE_FIELDS}


def target_stage_record(params: Params, *, stage: str, setting: str, method: str, seed: int,
                        backbone, data_key: str, init: dict | None = None) -> dict:
    """The record (checkpoint.make_record) of one method's CLA or CMA stage: its stage
    config, the model config, the method spec, the seed, the backbone identity, the data
    key and, for CMA, the record of the CLA model it starts from."""
    stage = canonical_stage(stage)
    inputs = {stage: stage_inputs(getattr(params, stage)), "model": model_inputs(params.model),
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
    cfg: StageConfig = getattr(params, stage)
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


# ----------------------------------------------------------------------------- VLP stage

# the VLP stage holds at most this much decoded image data at once (the chunk being trained
# on and the one read ahead); corpora that fit are read once, as a whole
IMAGE_BUFFER_BYTES = 2 << 30


@dataclass
class StreamedImages:
    """The VLP stage's images as files, read when training needs them rather than all at
    once (MSCOCO's 113K training images are 17 GB at 224 x 224). `read(paths)` returns
    uint8 (n, S, S, 3) (Backbone.read_images). When all of them fit in `max_bytes`
    (IMAGE_BUFFER_BYTES when None) they are read once, as a whole; otherwise in chunks of
    steps, the next chunk read ahead in a background thread while the current one trains."""
    paths: list[str]
    read: Callable[[list[str]], np.ndarray]
    max_bytes: int | None = None

    def __len__(self) -> int:
        return len(self.paths)


class _ImageFeed:
    """The images of each step: indexed from an array, or read chunk by chunk (StreamedImages).
    `needed(step)` gives the step's image indices; it depends on the step only, so a chunk
    of steps can be read ahead and a resumed run reads what it needs."""

    def __init__(self, images, needed: Callable[[int], np.ndarray], steps: int, batch_size: int,
                 workers: int):
        from concurrent.futures import ThreadPoolExecutor
        self.needed, self.steps, self.workers = needed, steps, max(1, workers)
        self.array: np.ndarray | None = images if isinstance(images, np.ndarray) else None
        self.source, self.ahead, self.current = images, {}, None
        self.pool = self.decoders = None
        if self.array is not None:
            return
        if self.workers > 1:  # Pillow decodes and resizes without the GIL
            self.decoders = ThreadPoolExecutor(self.workers, thread_name_prefix="vlp-decode")
        per_image = max(1, self._read(images.paths[:1]).nbytes) if len(images) else 1
        budget = images.max_bytes if images.max_bytes is not None else IMAGE_BUFFER_BYTES
        if per_image * len(images) <= budget:
            self.array = self._read(images.paths)
            return
        # two chunks (this one and the one read ahead) within the budget
        self.chunk_steps = max(1, budget // 2 // (per_image * batch_size))
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="vlp-images")
        log.info("vlp: %d images do not fit in %.1f GB: read %d steps at a time", len(images),
                 budget / 1e9, self.chunk_steps)

    def _read(self, paths: list[str]) -> np.ndarray:
        if self.decoders is None or len(paths) < 2 * self.workers:
            return self.source.read(list(paths))
        parts = np.array_split(np.arange(len(paths)), self.workers)
        return np.concatenate(list(self.decoders.map(
            lambda part: self.source.read([paths[i] for i in part]), parts)))

    def _load_chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        first = chunk * self.chunk_steps
        steps = range(first, min(first + self.chunk_steps, self.steps))
        index = np.unique(np.concatenate([self.needed(s) for s in steps]))
        return index, self._read([self.source.paths[i] for i in index])

    def __call__(self, step: int, idx: np.ndarray) -> np.ndarray:
        """uint8 images idx (indices into the image list) of `step`."""
        if self.array is not None:
            return self.array[idx]
        chunk = step // self.chunk_steps
        if self.current is None or self.current[0] != chunk:
            ahead = self.ahead.pop(chunk, None) or self.pool.submit(self._load_chunk, chunk)
            self.ahead.clear()  # a resumed or out-of-order step: drop what was read for others
            self.current = (chunk, *ahead.result())
            if (chunk + 1) * self.chunk_steps < self.steps:
                self.ahead[chunk + 1] = self.pool.submit(self._load_chunk, chunk + 1)
        _, index, pixels = self.current
        return pixels[np.searchsorted(index, idx)]

    def close(self) -> None:
        for pool in (self.pool, self.decoders):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self.ahead.clear()
        self.current = None


def vlp_epoch_batches(image_rows: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """One epoch of the English fine-tune, as the authors' loader iterates it: every
    (image, caption) pair once, in an order shuffled from (seed, epoch), cut into batches of
    `batch_size`, except that a batch never holds two captions of one image (InfoNCE would
    count the second as a negative of its own image): such a pair waits, in order, for the
    next batch without its image. So an epoch is about ceil(pairs / batch_size) steps
    (MSCOCO: 566K pairs, 4.4K steps at batch 128; 5 epochs about 22K), and only the last
    batches can be smaller. Returns the batches as arrays of caption indices."""
    image_of = np.asarray(image_rows).tolist()
    pending = torch.randperm(len(image_of), generator=step_generator(seed, "vlp-epoch", epoch)).tolist()
    batches, waiting, i = [], [], 0
    while i < len(pending) or waiting:
        batch, seen, still = [], set(), []
        for j in waiting:  # pairs put off by earlier batches come first
            if len(batch) < batch_size and image_of[j] not in seen:
                batch.append(j)
                seen.add(image_of[j])
            else:
                still.append(j)
        while len(batch) < batch_size and i < len(pending):
            j, i = pending[i], i + 1
            if image_of[j] in seen:
                still.append(j)
            else:
                batch.append(j)
                seen.add(image_of[j])
        waiting = still
        batches.append(np.asarray(batch, dtype=np.int64))
    return batches


def train_vlp_stage(*, backbone, images: np.ndarray | StreamedImages, captions: list[str],
                    image_rows: np.ndarray, cfg: StageConfig, seed: int, device_name: str,
                    out_dir: Path, resume: bool = True, record: dict | None = None) -> StageResult:
    """Contrastive training of the VLP itself on English (image, caption) pairs: the tiny
    VLP's pretraining, or the English fine-tune of an HF CLIP. Every VLP weight trains.
    image_rows[j] is the index in `images` (an array, or StreamedImages read chunk by chunk)
    of caption j's image.

    Batches hold one caption per image. With cfg.epochs > 0 an epoch is one pass over the
    (image, caption) pairs (vlp_epoch_batches); with cfg.steps each step draws its own
    batch from (seed, step)."""
    ids_all, mask_all = backbone.tokenize_source(captions)
    lengths = mask_all.sum(1)
    image_rows = np.asarray(image_rows)
    accelerator = make_accelerator(device_name)
    device = accelerator.device
    dtype = autocast_dtype(cfg, device)
    backbone.to(device)
    for p in backbone.vlp_parameters():
        p.requires_grad_(True)
    named = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
    opt = make_optimizer(named, cfg)
    wrapped, opt = accelerator.prepare(backbone, opt)
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    plan = None
    if cfg.epochs > 0:  # the global batch (all processes) holds each image once
        plan = [b for epoch in range(cfg.epochs) for b in vlp_epoch_batches(
            image_rows, cfg.batch_size * accelerator.num_processes, seed, epoch)]

    def step_rows(step: int, gen: torch.Generator) -> torch.Tensor:
        """This process's caption rows of `step` (depends on the step only)."""
        if plan is not None:
            return rank_slice(torch.from_numpy(plan[step]), cfg.batch_size, accelerator)
        # one caption per image in a batch, so InfoNCE has no false negatives from duplicates
        order = torch.randperm(len(captions), generator=gen)
        _, first = np.unique(image_rows[order.numpy()], return_index=True)
        return rank_slice(order[np.sort(first)], cfg.batch_size, accelerator)

    steps = len(plan) if plan is not None else stage_steps(cfg, len(np.unique(image_rows)))
    feed = _ImageFeed(images, lambda s: image_rows[step_rows(s, step_generator(seed, "vlp", s)).numpy()],
                      steps, cfg.batch_size, cfg.num_workers)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        gen = step_generator(seed, "vlp", step)
        rows = step_rows(step, gen)
        width = int(lengths[rows].max())
        ids = ids_all[rows, :width].to(device)
        mask = mask_all[rows, :width].to(device)
        pixels = backbone.preprocess_images(feed(step, image_rows[rows.numpy()])).to(device)
        offset = 0
        if backbone.train_all_positions:  # random offsets so every position gets trained
            offset = backbone.sample_position_offset(mask.cpu(), generator=gen).to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = wrapped(pixels, ids, mask, position_offset=offset)
        loss = losses.info_nce(out.image_embeds.float(), out.text_embeds.float(), scale=out.logit_scale)
        return {"infonce": loss, "total": loss, "d_logit_scale": out.logit_scale.detach()}

    task = TrainTask(modules={"backbone": backbone}, optimizer=opt, step_fn=step_fn,
                     batch_size=cfg.batch_size, params_to_clip=[p for _, p in named],
                     accelerator=accelerator)
    try:
        result = run_loop(task, cfg, stage="vlp", steps=steps, out_dir=out_dir, resume=resume,
                          desc="vlp", record=record)
    finally:
        feed.close()
    backbone.freeze()
    return result


# ----------------------------------------------------------------------------- command line

if __name__ == "__main__":  # `python -m dasd_lib.train`: the command line lives in dasd_lib.run
    from .run import train_main
    raise SystemExit(train_main())
