"""Where a run's time goes: each compute stage of a run folder (the VLP, CLA, CMA, the
evaluation), timed in this process with the library's own calls, once per precision asked
for, in one run so that the machine's load affects every precision alike.

    .venv/bin/python benchmarks/stages.py reports/<run_id>                  # fp32 (CPU's auto)
    .venv/bin/python benchmarks/stages.py reports/<run_id> --precision fp32 bf16

The run folder needs notebook 00's corpus (its parameters come from its params.yaml). Each
precision trains every stage from scratch in a copy of the folder under --work (its
params.yaml with vlp/cla/cma.precision replaced), so the run folder itself is not touched.
Prints a table of seconds per stage and precision, their ratio to the first precision
and, per precision, the test SumR of every method (mean over languages and variants);
the last line is JSON."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dasd_lib.config import load_params, save_params  # noqa: E402
from dasd_lib.pipeline import evaluate_run, train_stage_all  # noqa: E402
from dasd_lib.run import prepare_run  # noqa: E402
from dasd_lib.vlp_stage import source_vlp  # noqa: E402

STAGES = ("vlp", "cla", "cma", "eval")


def time_stages(run_dir: Path, precision: str, work: Path) -> tuple[dict, dict]:
    """(seconds per stage and in total, mean SumR per setting/method) of the run trained at
    `precision`."""
    params = load_params(run_dir / "params.yaml")
    for stage in ("vlp", "cla", "cma"):
        getattr(params, stage).precision = precision
    folder = work / precision
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    save_params(params, folder / "params.yaml")
    run = prepare_run(folder / "params.yaml", folder)
    calls = {"vlp": lambda: source_vlp(run, restart=True),
             "cla": lambda: train_stage_all(run, "cla", restart=True),
             "cma": lambda: train_stage_all(run, "cma", restart=True),
             "eval": lambda: evaluate_run(run, write=False)}
    seconds, results = {}, None
    for stage in STAGES:
        t0 = time.perf_counter()
        out = calls[stage]()
        seconds[stage] = round(time.perf_counter() - t0, 2)
        print(f"  {precision} {stage}: {seconds[stage]:.1f} s", flush=True)
        if stage == "eval":
            results = out
    seconds["total"] = round(sum(seconds.values()), 2)
    sumr = results.groupby(["setting", "method"])["SumR"].mean().round(1)
    return seconds, {f"{s}/{m}": float(v) for (s, m), v in sumr.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["auto", "fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--work", default="", help="folder for the copies (default: a temporary one)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir).resolve()
    if not (run_dir / "params.yaml").is_file():
        print(f"{run_dir}/params.yaml does not exist: give a run folder made by dasd-run "
              f"(make demo's is reports/demo)", file=sys.stderr)
        return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dasd-stages-"))
    out: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__, "seconds": {},
                 "sumr": {}}
    for precision in args.precision:
        out["seconds"][precision], out["sumr"][precision] = time_stages(run_dir, precision, work)
    base = out["seconds"][args.precision[0]]
    print(f"\nseconds per stage ({out['threads']} threads); ratio to {args.precision[0]} in brackets")
    print("precision " + "".join(f"{s:>16}" for s in (*STAGES, "total")))
    for precision, secs in out["seconds"].items():
        print(f"{precision:9s} " + "".join(
            f"{secs[s]:8.1f} ({secs[s] / base[s]:4.2f}x)" for s in (*STAGES, "total")))
    print(json.dumps(out))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
