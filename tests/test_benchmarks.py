"""The benchmark scripts run end to end at tiny sizes and report what they promise; the
naive/optimised comparison they rely on is not vacuous."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dasd_lib.config import load_params, save_params

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def run_folder(smoke_run) -> tuple:
    """The smoke run's (params, folder) with its params.yaml written: what the scripts read."""
    params, run_dir = smoke_run
    save_params(params, run_dir / "params.yaml")
    return params, run_dir


def run_script(name: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last)


def test_throughput_tiny_reports_every_figure():
    out = run_script("throughput.py", "--tiny", "--batch", "8", "--steps", "1", "--warmup", "1",
                     "--eval-captions", "20")
    assert out["outputs_match"] is True
    assert out["cla_outputs_match"] is True and out["cma_outputs_match"] is True
    for key in ["cla_samples_per_s", "cla_naive_samples_per_s", "cma_samples_per_s", "cma_naive_samples_per_s",
                "peak_rss_mib", "step_gflops_per_s", "matmul_gflops_per_s", "cla_speedup", "cma_speedup",
                "eval_captions_per_s", "cma_step_gflop", "cma_naive_step_gflop"]:
        assert isinstance(out[key], (int, float)) and out[key] > 0, key
    # the naive mode pads to 77 and recomputes the frozen towers: strictly more arithmetic
    assert out["cma_naive_step_gflop"] > out["cma_step_gflop"]
    assert out["cla_naive_step_gflop"] > out["cla_step_gflop"]
    assert out["eval_captions"] == 20
    assert set(out["targets_met"]) == {"cma_speedup", "cla_speedup", "step_flop_fraction"}


def test_gpu_check_tiny_on_cpu():
    out = run_script("gpu_check.py", "--tiny", "--device", "cpu", "--batch", "8", "--steps", "1", "--warmup", "1")
    assert out["device"] == "cpu"
    for key in ["cla_samples_per_s", "cma_samples_per_s", "peak_mem_gib"]:
        assert isinstance(out[key], (int, float)) and out[key] > 0, key


def test_workers_benchmark_times_both_ways(smoke_run):
    """benchmarks/workers.py on a smoke run folder: both ways timed, the ratio reported."""
    params, run_dir = run_folder(smoke_run)
    out = run_script("workers.py", str(run_dir), "--steps", "2", "--workers", "2",
                     "--methods", "static,dasd")
    assert (out["jobs"], out["steps_per_job"], out["workers"]) == (2, 2, 2)
    for key in ("in_process_steps_per_s", "workers_steps_per_s", "in_process_again_steps_per_s",
                "speedup"):
        assert isinstance(out[key], (int, float)) and out[key] > 0, key


@pytest.fixture(scope="module")
def tiny_setup():
    sys.path.insert(0, str(BENCH))
    import throughput as tp
    device = torch.device("cpu")
    sizes = tp.tiny_sizes()
    backbone, corpus, cached, _ = tp.setup(sizes, device, pool=12)
    return tp, sizes, backbone, corpus, cached, device


def test_naive_batches_pad_to_context_and_keep_the_captions(tiny_setup):
    tp, _, backbone, corpus, cached, device = tiny_setup
    naive = tp.naive_data(backbone, corpus, cached["cla"], device)
    rows = torch.tensor([0, 3, 5])
    ids, mask = cached["cla"].batch(rows, device)
    ids77, mask77 = naive.batch(rows, device)
    assert ids77.shape == (3, backbone.context_length) and ids.shape[1] == int(mask.sum(1).max())
    assert torch.equal(ids77[:, :ids.shape[1]] * mask, ids * mask) and torch.equal(mask77.sum(1), mask.sum(1))
    with torch.no_grad():  # recomputed references equal the cache
        assert torch.allclose(naive.r_S[rows], cached["cla"].r_S[rows], atol=1e-5)
        assert torch.allclose(naive.r_V[rows], cached["cma"].r_V[rows], atol=1e-5)


@pytest.mark.parametrize("stage", ["cla", "cma"])
def test_mode_comparison_catches_a_difference(tiny_setup, stage):
    tp, sizes, backbone, corpus, cached, device = tiny_setup
    trainer = tp.build_trainer(backbone, sizes, stage, tp.stage_config(8), device)
    naive = tp.naive_data(backbone, corpus, cached[stage], device)
    assert tp.compare_modes(trainer, cached[stage], naive)["match"]
    shifted = tp.naive_data(backbone, corpus, cached[stage], device)
    ref = shifted.r_S if stage == "cla" else shifted.r_V
    ref_fn = ref.fn
    ref.fn = lambda rows: ref_fn(rows) + 0.05  # a stale or wrong reference
    check = tp.compare_modes(trainer, cached[stage], shifted)
    assert not check["match"] and check["worst"].startswith(("loss_", "grad"))


def test_stages_benchmark_times_every_stage_per_precision(smoke_run, tmp_path):
    """benchmarks/stages.py on a smoke run folder: every stage timed for both precisions,
    every trained method evaluated, and the run folder itself left as it was."""
    params, run_dir = run_folder(smoke_run)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    out = run_script("stages.py", str(run_dir), "--precision", "fp32", "bf16", "--threads", "1",
                     "--work", str(tmp_path))
    assert set(out["seconds"]) == {"fp32", "bf16"}
    for secs in out["seconds"].values():
        assert set(secs) == {"vlp", "cla", "cma", "eval", "total"}
        assert all(v > 0 for v in secs.values())
        assert abs(secs["total"] - sum(v for k, v in secs.items() if k != "total")) < 0.05
    methods = {f"{s}/{m}" for s, ms in params.run.methods.items() for m in ms}
    assert set(out["sumr"]["fp32"]) == methods
    # each precision trained its own copy, with its own recorded precision
    assert load_params_precision(tmp_path / "bf16") == "bf16"
    assert load_params_precision(tmp_path / "fp32") == "fp32"
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


def load_params_precision(folder: Path) -> str:
    params = load_params(folder / "params.yaml")
    assert params.vlp.precision == params.cla.precision == params.cma.precision
    return params.cla.precision
