"""What the training loops stand on: the device (`resolve_device`), deterministic kernels,
the processes of a multi-process launch (`process_rank`, `on_main`, `accelerate launch`
checks), the `accelerate` Accelerator and the autocast dtype of a stage's precision.
Moved out of dasd_lib.train, which re-exports every name; log records keep its logger.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch

from .config import FP16_REFUSED, ConfigError, StageConfig

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
