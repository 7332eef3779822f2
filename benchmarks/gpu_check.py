"""GPU check: a few DASD CLA and CMA training steps at ViT-B/16 sizes with random weights.

The library's optimised training step (frozen cache, batch-longest padding, shared first
SDM block; dasd_lib.train.target_task and train_step, as run_loop runs them),
batch 128, bf16 autocast on CUDA (the library's default precision there). Builders are
shared with throughput.py. Ends with one JSON line: device, cla_samples_per_s,
cma_samples_per_s, peak_mem_gib (torch.cuda.max_memory_allocated during the steps; on CPU
the process's peak RSS instead).

    python benchmarks/gpu_check.py                       # on a CUDA machine
    python benchmarks/gpu_check.py --compile             # with torch.compile
    python benchmarks/gpu_check.py --tiny --device cpu   # tiny sizes on CPU (tests)
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as tp  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per stage (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (more with --compile)")
    p.add_argument("--patch", type=int, default=16, help="ViT patch size (16: ViT-B/16)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (tests, CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="autocast (auto: bf16 on CUDA, fp32 on CPU, as the library)")
    p.add_argument("--compile", action="store_true", help="torch.compile the target model (stage.compile)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads on --device cpu (0: torch's default)")
    p.add_argument("--fused-adamw", action="store_true",
                   help="what-if: AdamW(fused=True) over make_optimizer's groups (not what the library does)")
    return p.parse_args(argv)


def peak_mem_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return tp.peak_rss_mib() / 1024


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda but no CUDA device is visible; use --tiny --device cpu")
    sizes = tp.tiny_sizes() if args.tiny else tp.vit_b(args.patch)
    cfg = tp.stage_config(args.batch, precision=args.precision, compile=args.compile)
    torch.manual_seed(0)
    tp.log("building backbone and frozen cache ...")
    backbone, _, cached, timing = tp.setup(sizes, device, 2 * args.batch)
    out = tp.header(args, sizes, cfg, device) | timing
    name = out.pop("device_name")
    out["device"] = name if device.type == "cuda" else "cpu"
    out["device_type"] = device.type
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup = args.warmup + (2 if args.compile else 0)
    for stage in ("cla", "cma"):
        trainer = tp.build_trainer(backbone, sizes, stage, cfg, device, fused_adamw=args.fused_adamw)
        fn, _ = trainer.step_fn(cached[stage], True)
        tp.log(f"{stage}: {warmup} warm-up + {args.steps} timed steps ...")
        sec = tp.time_steps(trainer, fn, warmup, args.steps).seconds
        out[f"{stage}_samples_per_s"] = args.batch / sec
        out[f"{stage}_step_s"] = sec
        out.setdefault("trainable_params", sum(p.numel() for p in trainer.trainable))
        del trainer, fn
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out["peak_mem_gib"] = peak_mem_gib(device)
    out["peak_mem_kind"] = "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss"
    print(f"DASD training, {out['vision']}, batch {args.batch}, {out['dtype']} on {out['device']}: "
          f"CLA {out['cla_samples_per_s']:.1f} samples/s, CMA {out['cma_samples_per_s']:.1f} samples/s, "
          f"peak memory {out['peak_mem_gib']:.2f} GiB")
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads and args.device == "cpu":
        torch.set_num_threads(args.threads)
    out = run(args)
    print(json.dumps({k: tp.rounded(v) for k, v in out.items()}))


if __name__ == "__main__":
    main()
