"""A CLA training run in its own process, for the SIGKILL tests in tests/test_faults.py.

    python train_child.py --tmp T --run-dir R --out O --cache C --steps N --every K
                          [--hang mid-write|after-checkpoint --hang-step S --signal F]

Trains method dasd, seed 0, on the smoke setup under T (corpus in T/dataset, tiny VLP in
R/artifacts/backbone), resuming from O. --hang stops the process at a chosen point of the
checkpoint of step S, touches F and sleeps, so the test can SIGKILL it exactly there:
`mid-write` after half of the safetensors file is on disk (inside the atomic temp folder),
`after-checkpoint` right after the checkpoint is complete, before anything else is written.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def hang(signal: Path) -> None:
    signal.write_text("hanging")
    time.sleep(600)  # the test kills us long before this ends
    sys.exit(3)


def install_hang(kind: str, step: int, signal: Path) -> None:
    from dasd_lib import storage as C  # where state folders are written
    from dasd_lib import train as T

    name = f"step-{step:07d}"
    if kind == "mid-write":
        real_save_file = C.save_file

        def save_file(tensors, filename, metadata=None):
            if Path(filename).parent.name.startswith(f".{name}.tmp-"):
                real_save_file(tensors, filename, metadata=metadata)
                data = Path(filename).read_bytes()
                Path(filename).write_bytes(data[: len(data) // 2])  # half the file on disk
                hang(signal)
            return real_save_file(tensors, filename, metadata=metadata)

        C.save_file = save_file
    elif kind == "after-checkpoint":
        real_save = T.save_training_state  # the name run_loop calls

        def save_training_state(path, *args, **kw):
            real_save(path, *args, **kw)
            if Path(path).name == name:
                hang(signal)

        T.save_training_state = save_training_state
    else:
        raise SystemExit(f"unknown --hang {kind}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tmp", required=True, type=Path)
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cache", required=True, type=Path)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--every", type=int, required=True)
    ap.add_argument("--hang", default="")
    ap.add_argument("--hang-step", type=int, default=0)
    ap.add_argument("--signal", type=Path)
    a = ap.parse_args()

    from dasd_lib import train as T
    from dasd_lib.config import load_params
    from dasd_lib.context import Run

    params = load_params(ROOT / "params" / "smoke.yaml", [
        f"data.root={a.tmp / 'dataset'}", f"web.root={a.tmp / 'dataset'}",
        f"run.reports_dir={a.tmp / 'reports'}", "run.device=cpu",
        f"cla.steps={a.steps}", f"cla.checkpoint_every={a.every}"])
    if a.hang:
        install_hang(a.hang, a.hang_step, a.signal)
    run = Run(params, a.run_dir)
    backbone = run.backbone("finetune")
    rows = T.training_rows(run.table(params.data), params.data.langs)
    feats = T.frozen_features(backbone, rows, image_size=params.data.image_size,
                              cache_dir=a.cache, device=torch.device("cpu"))
    data = T.make_target_data(backbone, rows, feats, with_images=False)

    T.train_target_stage(params=params, stage="cla", method="dasd", seed=0, backbone=backbone,
                         data=data, out_dir=a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
