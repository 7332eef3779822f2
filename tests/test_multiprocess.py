"""Training on two processes (`accelerate launch --multi_gpu --num_processes 2` on CPU, gloo):
the main process alone writes the shared files, the tokenizers are built once, the CLA
stage gives the checkpoint of its single-process equivalent (one process, batch 2 x the
per-process batch) within float tolerance, and notebooks 03-04's loaders read it."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dasd_lib import devices, train as T
from dasd_lib.checkpoint import load_state
from dasd_lib.config import load_params
from dasd_lib.context import Run, RunPaths
from dasd_lib.pipeline import load_trained_model, train_stage_all

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"
METHOD = "dasd_no_adv"  # no discriminator: its in-batch shuffled pairs differ between 2 x B and 2B


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(tmp: Path, batch: int) -> list[str]:
    pairs = [f"data.root={tmp / 'dataset'}", f"web.root={tmp / 'dataset'}", "run.device=cpu",
             "run.settings=[finetune]", f"run.methods={{finetune: [floor, {METHOD}]}}",
             f"cla.batch_size={batch}", "cla.steps=4", "cma.steps=2"]
    return [a for p in pairs for a in ("-p", p)]


def _launch(tmp: Path, run_dir: Path, stage: str) -> str:
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "dasd_lib.train", "--params", str(ROOT / "params" / "smoke.yaml"),
           "--run-dir", str(run_dir), "--stage", stage, *_overrides(tmp, 8)]
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.skipif(not ACCELERATE.exists() or not torch.distributed.is_gloo_available(),
                    reason="needs accelerate's launcher and torch's gloo backend")
def test_two_processes_match_one_with_twice_the_batch(tmp_path):
    run_dir = tmp_path / "reports" / "multi"
    out = _launch(tmp_path, run_dir, "vlp")
    # the tokenizers and initial VLP are built once, by the main process, and loaded by the other
    assert "VLP: process 1 of 2 loaded the main process's" in out
    assert not (run_dir / "artifacts" / "vlp_training" / "initial_vlp").exists()
    out = _launch(tmp_path, run_dir, "cla")
    assert "Traceback" not in out

    # the single-process equivalent: the same VLP, one process, batch 2 x 8
    single = tmp_path / "reports" / "single"
    shutil.copytree(run_dir / "artifacts" / "backbone", single / "artifacts" / "backbone")
    args = _overrides(tmp_path, 16)
    params = load_params(ROOT / "params" / "smoke.yaml", [*args[1::2], "run.run_id=single"])
    train_stage_all(Run(params, single), "cla")

    multi_ckpt = RunPaths(run_dir).checkpoint("finetune", METHOD, 0, "cla")
    single_ckpt = RunPaths(single).checkpoint("finetune", METHOD, 0, "cla")
    a, _ = load_state(multi_ckpt / "model")
    b, _ = load_state(single_ckpt / "model")
    assert a.keys() == b.keys() and a
    # Not bitwise: DDP averages two per-process means where one process takes one mean
    # over 2B rows (another float summation order). Measured: max abs diff 4.5e-8, where
    # one process with the per-process batch (8) differs by 3e-3.
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    # the loss file holds the global batch's loss (the mean over the processes)
    la, lb = pd.read_csv(multi_ckpt / "losses.csv"), pd.read_csv(single_ckpt / "losses.csv")
    np.testing.assert_allclose(la["total"], lb["total"], rtol=1e-4)

    # notebook 03 (CMA from the CLA model, same record check) and 04 (load_trained_model)
    # read the two-process run with the parameters it saved
    params = load_params(run_dir / "params.yaml")
    run = Run(params, run_dir)
    train_stage_all(run, "cma")
    model = load_trained_model(run, "finetune", METHOD, 0)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0


def test_warns_when_accelerate_starts_one_of_several(monkeypatch, caplog):
    """accelerate launch --num_processes 3 without --multi_gpu: one process, a warning."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")  # set by every accelerate launch
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                               "launch", "--num_processes", "3", "train.py"])
    try:
        cmdline = Path(f"/proc/{parent.pid}/cmdline").read_bytes().split(b"\0")
        assert T.launcher_processes(parent.pid) == 3, cmdline
        monkeypatch.setattr(devices.os, "getppid", lambda: parent.pid)  # warn_if_single_launch asks the parent
        with caplog.at_level("WARNING", logger="dasd_lib.train"):
            assert T.warn_if_single_launch()
        assert "asked for 3 processes but started one" in caplog.text
        assert "--multi_gpu" in caplog.text
    finally:
        parent.kill()
        parent.wait()
    monkeypatch.setenv("WORLD_SIZE", "3")  # several processes really started: no warning
    assert T.launcher_processes() is None and not T.warn_if_single_launch()
