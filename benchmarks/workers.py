"""Training throughput of run.workers: the same CLA steps of a run's methods, in one process
with torch's threads (run.workers: 1, the default) and in single-thread worker processes
(run.workers: 0 or N), measured in one run so that the machine's load affects both alike.

    .venv/bin/python benchmarks/workers.py reports/<run_id> [--steps 40] [--workers 2]

The run folder needs notebook 01's VLP (its parameters come from the folder's params.yaml).
Each job builds one method's target tower and times `train.train_step` (what run_loop runs)
for --steps steps after two warm-up steps, on the finetune setting's training data. Prints
steps/s of all jobs together for both ways and their ratio; the last line is JSON."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dasd_lib.config import load_params  # noqa: E402
from dasd_lib.context import Run, corpus_config  # noqa: E402
from dasd_lib.features import frozen_features, make_target_data, training_rows  # noqa: E402
from dasd_lib.model import METHODS, build_target_model  # noqa: E402
from dasd_lib.parallel import run_jobs, usable_cpus  # noqa: E402
from dasd_lib.train import make_accelerator, make_scheduler, target_task, train_step  # noqa: E402


def context(run_dir: str):
    params = load_params(Path(run_dir) / "params.yaml")
    run = Run(params, run_dir)
    backbone = run.backbone("finetune")
    rows = training_rows(run.table(corpus_config(params, "finetune")), params.data.langs)
    feats = frozen_features(backbone, rows, image_size=params.data.image_size,
                            cache_dir=run.cache_dir, device=torch.device("cpu"))
    return params, backbone, make_target_data(backbone, rows, feats, with_images=False)


def job(ctx, spec: tuple[str, int]) -> tuple[float, int]:
    """(seconds, steps) of `steps` timed CLA steps of `method`."""
    params, backbone, data = ctx
    method, steps = spec
    model = build_target_model(backbone, params.model, method, params.data.langs, seed=0)
    task, _ = target_task(model, backbone=backbone, model_cfg=params.model, cfg=params.cla,
                          spec=METHODS[method], stage="cla", data=data, seed=0,
                          accelerator=make_accelerator("cpu"))
    scheduler = make_scheduler(task.optimizer, params.cla, steps + 2)
    for step in range(2):
        train_step(task, params.cla, scheduler, step, stage="cla")
    t0 = time.perf_counter()
    for step in range(2, steps + 2):
        train_step(task, params.cla, scheduler, step, stage="cla")
    return time.perf_counter() - t0, steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--workers", type=int, default=usable_cpus())
    ap.add_argument("--methods", default="full_distill,static,dasd,static,dasd",
                    help="the jobs (default: the demo's five trained rows)")
    args = ap.parse_args()
    jobs = [(m, args.steps) for m in args.methods.split(",")]
    out = {"threads_in_process": torch.get_num_threads(), "workers": args.workers,
           "jobs": len(jobs), "steps_per_job": args.steps}
    for name, workers in (("in_process", 1), ("workers", args.workers), ("in_process_again", 1)):
        t0 = time.perf_counter()
        run_jobs(job, jobs, workers=workers, context_fn=context, context_args=(args.run_dir,))
        wall = time.perf_counter() - t0
        out[f"{name}_wall_s"] = round(wall, 1)
        out[f"{name}_steps_per_s"] = round(len(jobs) * args.steps / wall, 2)
        print(f"{name:>17}: {wall:6.1f} s wall for {len(jobs)} x {args.steps} steps "
              f"(setup included) = {out[f'{name}_steps_per_s']} steps/s", flush=True)
    base = (out["in_process_wall_s"] + out["in_process_again_wall_s"]) / 2
    out["speedup"] = round(base / out["workers_wall_s"], 2)
    print(f"workers / in-process (mean of the two in-process rounds): {out['speedup']}x")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
