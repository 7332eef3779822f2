"""Fault suite (issue 8): runs that die, files that rot, losses that blow up, pickles that
would run code, a network that is not there, messy input, and two runs in one folder.

Every test provokes one fault and checks what the library makes of it: the same result
as without the fault, a counted skip, or a library error (DataError, CheckpointError,
BackboneError, TrainingError, RunLockedError) whose message names the file or key, never
a raw traceback from deep inside torch, PIL, pandas or json.
"""
from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from dataclasses import replace
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import ROOT, smoke_params

pytestmark = pytest.mark.fault  # every test here is a row of docs/reliability.md
from dasd_lib import train as T
from dasd_lib.backbones import BackboneError, load_backbone, read_mbert_embeddings
from dasd_lib.checkpoint import CheckpointError, from_pretrained, load_state, save_state
from dasd_lib.data import (COLUMNS, LANGS, DataError, load_images, load_manifest, load_release,
                           write_release_layout)
from dasd_lib.context import Run

CHILD = Path(__file__).parent / "fault_helpers" / "train_child.py"
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


# ============================================================================ shared setup

def _cla_params(params, steps=6, every=2):
    return replace(params, cla=replace(params.cla, steps=steps, checkpoint_every=every))


def _inputs(params, run_dir, cache_dir=None):
    run = Run(params, run_dir)
    backbone = run.backbone("finetune")
    rows = T.training_rows(run.table(params.data), params.data.langs)
    feats = T.frozen_features(backbone, rows, image_size=params.data.image_size,
                              cache_dir=cache_dir or run_dir / "artifacts" / "cache",
                              device=torch.device("cpu"))
    return backbone, rows, feats


def _train(params, run_dir, out, stage="cla", data=None, method="dasd", **kw):
    backbone, rows, feats = _inputs(params, run_dir)
    data = data or T.make_target_data(backbone, rows, feats, with_images=(stage == "cma"))
    return T.train_target_stage(params=params, stage=stage, method=method, seed=0,
                                backbone=backbone, data=data, out_dir=out, **kw)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_state(folder)[0]


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def _step_dirs(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("step-*"))


def _hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def _corrupt(path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "flip":
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif kind == "zero":
        path.write_bytes(b"")
    elif kind == "delete":
        path.unlink()
    elif kind == "garbage":
        path.write_bytes(b'{"format_version": 1, "sha256": "')
    else:
        raise ValueError(kind)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here and in the children: on a shared 2-core machine more threads
    only contend (a smoke CLA stage: 13 s with 2 threads under load, 0.7 s with one), and
    runs compared bit for bit across processes must use the same count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(smoke_run, tmp_path_factory):
    """An uninterrupted 6-step CLA run (checkpoint every 2 steps): (params, run_dir, out)."""
    params, run_dir = smoke_run
    params = _cla_params(params)
    out = tmp_path_factory.mktemp("reference") / "cla"
    _train(params, run_dir, out)
    return params, run_dir, out


# ============================================================================ 1. SIGKILL

def _child_env() -> dict:
    # the same thread count in every child: results are compared bit for bit across processes
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _kill_when_hanging(args: list[str], flag: Path, must_exist: Path, timeout: float = 180) -> None:
    """Start the child, wait until it hangs at its kill point (flag written and the
    checkpoint `must_exist` on disk), SIGKILL it."""
    log_file = flag.with_suffix(".log")  # a file, not a pipe nobody drains while we wait
    with open(log_file, "w") as log_handle:
        proc = subprocess.Popen([sys.executable, str(CHILD), *args], env=_child_env(),
                                stdout=subprocess.DEVNULL, stderr=log_handle)
    try:
        deadline = time.monotonic() + timeout
        while not (flag.exists() and must_exist.exists()):
            if proc.poll() is not None:
                pytest.fail(f"training child exited ({proc.returncode}) before its kill point:\n"
                            f"{log_file.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("training child never reached its kill point")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    flag.unlink()


@pytest.fixture(scope="module")
def killed_after_step_4(smoke_run, tmp_path_factory):
    """The folder a real training process (6 CLA steps, checkpoint every 2) leaves when it
    is SIGKILLed right after its step-4 checkpoint: step-2, step-4, no final model."""
    _, run_dir = smoke_run
    tmp = tmp_path_factory.mktemp("killed")
    out, flag = tmp / "cla", tmp / "hanging"
    _kill_when_hanging(["--tmp", str(run_dir.parents[1]), "--run-dir", str(run_dir), "--out", str(out),
                        "--cache", str(tmp / "cache"), "--steps", "6", "--every", "2",
                        "--signal", str(flag), "--hang", "after-checkpoint", "--hang-step", "4"],
                       flag, out / "step-0000004")
    return out


def _check_all_steps_load(out: Path) -> None:
    for name in _step_dirs(out):
        tensors, meta = load_state(out / name)  # sha256 checked
        assert meta["step"] == int(name.split("-")[1]) and tensors


def test_sigkill_mid_write_and_after_checkpoint_then_resume_is_bit_identical(smoke_run, tmp_path):
    params, run_dir = smoke_run
    tmp = run_dir.parents[1]  # smoke_params(tmp): corpus in tmp/dataset
    out, ref, cache = tmp_path / "killed", tmp_path / "reference", tmp_path / "cache"
    flag = tmp_path / "hanging"
    base = ["--tmp", str(tmp), "--run-dir", str(run_dir), "--out", str(out), "--cache", str(cache),
            "--steps", "12", "--every", "2", "--signal", str(flag)]

    # kill 1: half of step 6's safetensors is on disk (inside the atomic temp folder)
    _kill_when_hanging(base + ["--hang", "mid-write", "--hang-step", "6"], flag, out / "step-0000004")
    assert _step_dirs(out) == ["step-0000002", "step-0000004"]
    _check_all_steps_load(out)
    partial = [out / n for n in _hidden(out)]
    assert len(partial) == 1 and partial[0].name.startswith(".step-0000006.tmp-")
    assert (partial[0] / "state.safetensors").stat().st_size > 0  # the kill did cut a write
    with pytest.raises(CheckpointError):
        load_state(partial[0])
    assert T.latest_checkpoint(out) == out / "step-0000004"
    # the frozen-feature cache the killed run wrote is complete and verifies
    keys = [p for p in cache.iterdir()]
    assert len(keys) == 1 and not keys[0].name.startswith(".")
    load_state(keys[0])

    # kill 2: resumed from step 4, killed right after step 8's checkpoint completed
    _kill_when_hanging(base + ["--hang", "after-checkpoint", "--hang-step", "8"], flag,
                       out / "step-0000008")
    assert _hidden(out) == []  # the resume cleared the half-written folder of kill 1
    assert "step-0000008" in _step_dirs(out)
    _check_all_steps_load(out)
    assert T.latest_checkpoint(out) == out / "step-0000008"

    # resume to the end here (one thread, as the children), and train uninterrupted
    params = _cla_params(params, steps=12, every=2)
    backbone, rows, feats = _inputs(params, run_dir, cache)
    assert feats.from_cache  # the killed run's cache is used as it is
    data = T.make_target_data(backbone, rows, feats, with_images=False)
    kw = dict(params=params, stage="cla", method="dasd", seed=0, backbone=backbone, data=data)
    assert T.train_target_stage(out_dir=out, **kw).resumed_from == 8
    T.train_target_stage(out_dir=ref, resume=False, **kw)
    _assert_same_tensors(_tensors(out / "model"), _tensors(ref / "model"))
    # the last training state (weights, both optimizers, scheduler) matches too
    assert _step_dirs(out) == _step_dirs(ref) == ["step-0000012"]
    a, meta_a = load_state(out / "step-0000012")
    b, meta_b = load_state(ref / "step-0000012")
    _assert_same_tensors(a, b)
    assert meta_a == meta_b
    assert _hidden(out) == []
    # no lost loss rows: steps 0..11 once each, equal to the uninterrupted run
    la, lb = pd.read_csv(out / "losses.csv"), pd.read_csv(ref / "losses.csv")
    assert la.step.tolist() == lb.step.tolist() == list(range(12))
    pd.testing.assert_frame_equal(la, lb, check_exact=True)
    # and the cache equals a fresh computation
    assert [p.name for p in cache.iterdir()] == [keys[0].name]
    fresh = T.frozen_features(backbone, rows, image_size=params.data.image_size, cache_dir=None,
                              device=torch.device("cpu"), use_cache=False)
    cached, meta = load_state(keys[0])
    assert meta["key"] == fresh.key == keys[0].name
    assert torch.equal(cached["image_emb"], fresh.image_emb) and torch.equal(cached["text_emb"], fresh.text_emb)


# ============================================================================ 2. corrupt files

@pytest.mark.parametrize("target,kind,says", [
    ("state.safetensors", "truncate", "sha256"),
    ("state.safetensors", "flip", "sha256"),
    ("state.safetensors", "zero", "sha256"),
    ("state.safetensors", "delete", "expected state.json and state.safetensors"),
    ("state.json", "garbage", "not valid JSON"),
    ("state.json", "delete", "expected state.json and state.safetensors"),
])
def test_corrupt_state_file_is_detected_naming_it(tmp_path, target, kind, says):
    folder = save_state(tmp_path / "ck", {"w": torch.arange(1000.0)}, {"step": 1})
    _corrupt(folder / target, kind)
    with pytest.raises(CheckpointError, match=says) as err:
        load_state(folder)
    assert str(folder) in str(err.value)
    with pytest.raises(CheckpointError):
        load_state(folder, verify_only=True)


@pytest.mark.parametrize("which", ["newest", "all"])
def test_resume_skips_corrupt_checkpoints(reference, killed_after_step_4, tmp_path, caplog, which):
    params, run_dir, ref = reference
    out = tmp_path / "cla"
    shutil.copytree(killed_after_step_4, out)
    assert _step_dirs(out) == ["step-0000002", "step-0000004"] and not (out / "model").exists()
    _corrupt(out / "step-0000004" / "state.safetensors", "truncate")
    if which == "all":
        _corrupt(out / "step-0000002" / "state.json", "garbage")
    (out / "step-backup").mkdir()  # a stray folder a user left: never taken for a checkpoint
    caplog.set_level(logging.WARNING, "dasd_lib.train")
    result = _train(params, run_dir, out)
    assert result.resumed_from == (2 if which == "newest" else 0)
    assert "step-0000004" in caplog.text and "sha256" in caplog.text
    _assert_same_tensors(_tensors(out / "model"), _tensors(ref / "model"))
    assert pd.read_csv(out / "losses.csv").step.tolist() == list(range(6))
    assert (out / "step-backup").is_dir()


@pytest.mark.parametrize("target,kind", [("state.safetensors", "truncate"),
                                         ("state.safetensors", "flip"),
                                         ("state.json", "garbage")])
def test_corrupt_feature_cache_is_recomputed_with_warning(smoke_run, tmp_path, caplog, target, kind):
    params, run_dir = smoke_run
    cache = tmp_path / "cache"
    _, _, first = _inputs(params, run_dir, cache)
    folder = cache / first.key
    _corrupt(folder / target, kind)
    caplog.set_level(logging.WARNING, "dasd_lib.features")
    _, _, again = _inputs(params, run_dir, cache)
    assert not again.from_cache
    assert str(folder) in caplog.text and "recomputing" in caplog.text
    assert torch.equal(again.image_emb, first.image_emb) and torch.equal(again.text_emb, first.text_emb)
    load_state(folder)  # rewritten whole
    _, _, third = _inputs(params, run_dir, cache)
    assert third.from_cache


@pytest.mark.parametrize("target,kind", [("model.safetensors", "truncate"),
                                         ("model.safetensors", "zero"),
                                         ("config.json", "truncate")])
def test_truncated_model_or_backbone_names_the_file(reference, tmp_path, target, kind):
    params, run_dir, ref = reference
    backbone = Run(params, run_dir).backbone("finetune")
    model = shutil.copytree(ref / "model", tmp_path / "model")
    assert from_pretrained(model, backbone) is not None
    _corrupt(model / target, kind)
    with pytest.raises(CheckpointError) as err:
        from_pretrained(model, backbone)
    assert str(model / target) in str(err.value)
    bb = shutil.copytree(run_dir / "artifacts" / "backbone", tmp_path / "backbone")
    _corrupt(bb / target, kind)
    with pytest.raises(BackboneError) as err:
        load_backbone(bb)
    assert str(bb / target) in str(err.value)


# ============================================================================ 3. NaN / Inf

def test_inf_in_cma_image_embeddings_stops_naming_step_and_term(smoke_run, tmp_path):
    params, run_dir = smoke_run
    params = replace(params, cma=replace(params.cma, steps=6, checkpoint_every=1))
    backbone, rows, feats = _inputs(params, run_dir)
    data = T.make_target_data(backbone, rows, feats, with_images=True)
    langs = sorted(data.lang_rows)
    data.r_V = data.r_V.clone()
    data.r_V[data.lang_rows[langs[2]]] = float("inf")  # step 2 is the first batch of langs[2]
    out = tmp_path / "cma"
    with pytest.raises(T.TrainingError, match=r"loss term 'infonce' is (nan|inf) at step 2") as err:
        _train(params, run_dir, out, stage="cma", data=data)
    assert str(out / "step-0000002") in str(err.value)
    assert _step_dirs(out) == ["step-0000001", "step-0000002"]
    tensors, meta = load_state(out / "step-0000002")
    assert meta["step"] == 2 and all(torch.isfinite(t).all() for t in tensors.values())
    assert not (out / "model").exists()


def test_nonfinite_gradient_with_finite_loss_stops_before_a_bad_checkpoint(tmp_path):
    """fp16 overflow and friends: the loss is finite but its gradient is not. The step must
    not be taken, or the next checkpoint would hold NaN weights labelled as good."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    x = torch.randn(8, 4)

    def step_fn(step):
        loss = net(x).pow(2).mean()
        if step == 3:  # value 0, gradient NaN (sqrt at 0 times 0)
            loss = loss + torch.sqrt(net.weight.sum() * 0.0)
        return {"mse": loss, "total": loss}

    task = T.TrainTask(modules={"net": net}, optimizer=opt, step_fn=step_fn, batch_size=8,
                       params_to_clip=list(net.parameters()))
    cfg = replace(smoke_params(tmp_path).cla, checkpoint_every=1, grad_clip=1.0)
    with pytest.raises(T.TrainingError, match=r"step 3") as err:
        T.run_loop(task, cfg, stage="cla", steps=6, out_dir=tmp_path / "run")
    assert "gradient" in str(err.value)
    assert _step_dirs(tmp_path / "run") == ["step-0000002", "step-0000003"]
    for name in _step_dirs(tmp_path / "run"):
        assert all(torch.isfinite(t).all() for t in _tensors(tmp_path / "run" / name).values())


# ============================================================================ 4. never unpickle

class Planted:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def _plant(path: Path, marker: Path, key: str = "embeddings.word_embeddings.weight",
           legacy: bool = False) -> Path:
    payload = {key: Planted(marker), "bert." + key: Planted(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if legacy:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, path)
    return path


def _forge_config(folder: Path, weights: str, meta_name: str, meta: dict) -> None:
    sha = hashlib.sha256((folder / weights).read_bytes()).hexdigest()
    (folder / meta_name).write_text(json.dumps({"format_version": 1, "sha256": sha, "meta": meta}))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the planted legacy pickle
def test_planted_pickles_never_run(smoke_run, tmp_path):
    params, run_dir = smoke_run
    marker = tmp_path / "PWNED"
    backbone = Run(params, run_dir).backbone("finetune")

    # mBERT weights as a .bin (zip and legacy pickle), and as a shard of an index
    for legacy in (False, True):
        mbert = tmp_path / f"mbert_{legacy}"
        _plant(mbert / "pytorch_model.bin", marker, legacy=legacy)
        with pytest.raises(BackboneError, match="pytorch_model.bin") as err:
            read_mbert_embeddings(str(mbert))
        assert "weights_only" in str(err.value) or "tensors" in str(err.value)
    sharded = tmp_path / "mbert_sharded"
    _plant(sharded / "shard-1.bin", marker)
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {"bert.embeddings.word_embeddings.weight": "shard-1.bin"}}))
    with pytest.raises(BackboneError, match="shard-1.bin"):
        read_mbert_embeddings(str(sharded))

    # a CLIP folder whose weights are a pickle
    from dasd_lib.backbones.hf import _load_clip
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"model_type": "clip"}))
    _plant(clip / "pytorch_model.bin", marker, key="text_projection.weight")
    with pytest.raises(BackboneError, match=str(clip)):
        _load_clip(str(clip))

    # offered as a checkpoint: .pt / .bin files are not read at all
    for name in ("model.pt", "pytorch_model.bin", "model.bin"):
        folder = tmp_path / f"ckpt_{name}"
        _plant(folder / name, marker)
        with pytest.raises(CheckpointError, match="expected config.json and model.safetensors"):
            from_pretrained(folder, backbone)
        with pytest.raises(BackboneError):
            load_backbone(folder)
    # ... nor a pickle renamed to .safetensors, even with a forged matching sha256
    forged = tmp_path / "forged"
    _plant(forged / "model.safetensors", marker)
    _forge_config(forged, "model.safetensors", "config.json",
                  {"kind": "dasd_target_model", "backbone": backbone.identity()})
    with pytest.raises(CheckpointError, match=str(forged / "model.safetensors")):
        from_pretrained(forged, backbone)
    # ... nor as a training step checkpoint to resume from
    out = tmp_path / "resume"
    _plant(out / "step-0000009" / "state.safetensors", marker)
    _forge_config(out / "step-0000009", "state.safetensors", "state.json", {"stage": "cla", "step": 9})
    with pytest.raises(CheckpointError, match="step-0000009"):
        _train(_cla_params(params), run_dir, out)

    # an object array of image names for the release layout
    names = tmp_path / "names.npy"
    np.save(names, np.array([Planted(marker)], dtype=object), allow_pickle=True)
    (tmp_path / "anno.json").write_text("{}")
    (tmp_path / "path.json").write_text(json.dumps({"train": {
        "anno_file": ["anno.json"], "feature": ["."], "name_file": ["names.npy"], "langs": ["de"]}}))
    with pytest.raises(DataError, match="without pickle"):
        load_release(tmp_path / "path.json")

    assert not marker.exists(), "a planted pickle ran code"


UNSAFE_CALLS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"),
                ("pd", "read_pickle"), ("pandas", "read_pickle"), ("joblib", "load"),
                ("dill", "load"), ("dill", "loads"), ("shelve", "open"), ("marshal", "loads"),
                ("marshal", "load"), ("torch.jit", "load")}
UNSAFE_MODULES = {"cPickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}
UNSAFE_NAMES = {"load", "loads", "Unpickler", "read_pickle"}  # `import pickle` for its errors is fine


def test_the_lint_rules_catch_every_unsafe_weight_read(tmp_path):
    """`make lint` (ruff with pyproject.toml's rules, over the library, the notebooks, the
    benchmarks and the tests) is where unsafe reads are caught; here: the rules see each
    kind of unsafe read in a planted file, and allow the sanctioned one."""
    import shutil
    import subprocess
    import sys
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: `make venv` installs the dev extras")
    planted = tmp_path / "planted.py"
    planted.write_text("import pickle\nimport joblib\nimport torch\nimport pandas as pd\n"
                       "pickle.load(open('f', 'rb'))\ntorch.load('f')\n"
                       "torch.load('f', weights_only=True)\npd.read_pickle('p')\n"
                       "torch.load('f', weights_only=True)  # noqa: TID251\n")
    out = subprocess.run([ruff, "check", "--config", str(ROOT / "pyproject.toml"), "--no-cache",
                          "--output-format", "concise", str(planted)],
                         capture_output=True, text=True)
    flagged = {int(line.split(":")[1]) for line in out.stdout.splitlines() if "planted.py:" in line}
    assert out.returncode == 1
    # joblib, pickle.load, torch.load with and without weights_only, read_pickle; not the
    # sanctioned loader on line 9 (its no-qa comment)
    assert flagged == {2, 5, 6, 7, 8}, out.stdout


# ============================================================================ 5. no network

def test_smoke_pipeline_runs_with_the_network_blocked(tmp_path, monkeypatch):
    from dasd_lib.data import style_frequencies, token_coverage
    from dasd_lib.pipeline import evaluate_run, train_stage_all
    from dasd_lib.vlp_stage import source_vlp

    attempts = []

    def refuse(*args, **kw):
        attempts.append(repr(args)[:200])
        raise OSError("network access blocked by tests/test_faults.py")

    for obj, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"),
                      (socket, "create_connection"), (socket, "getaddrinfo")):
        monkeypatch.setattr(obj, name, refuse)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(OSError, match="blocked"):
        socket.create_connection(("example.org", 443), timeout=1)
    attempts.clear()

    params = smoke_params(tmp_path, "run.methods={finetune: [floor, oracle, static, dasd], "
                                    "zeroshot: [floor, oracle, dasd]}")
    run_dir = tmp_path / "reports" / "offline"
    run_dir.mkdir(parents=True)
    run = Run(params, run_dir)
    table = run.table(params.data)                                     # 00
    style_frequencies(table), token_coverage(table)
    vlp = source_vlp(run)                                              # 01
    cla = train_stage_all(run, "cla")                                  # 02
    cma = train_stage_all(run, "cma")                                  # 03
    results = evaluate_run(run)                                        # 04
    assert attempts == []
    assert vlp.english_test and len(cla) == len(cma) == 3
    assert np.isfinite(cma.final_loss).all()
    assert set(results.method) == {"floor", "oracle", "static", "dasd"}
    assert (run_dir / "results.csv").is_file()


# ============================================================================ 6. fuzzed input

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12)
ODD_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\t\n", "\x00\x07\x1b", "🐱🐶🚗 🎉", "قطة حمراء بجانب مربع أزرق",
                     "\u200b\u200f\u202e", "e\u0301\u0301\u0301", "红色的圆" * 3, "\ufeffein Hund"]),
    st.integers(200, 3000).map(lambda n: "ein roter kreis " * n))


def _assert_names(err: Exception, folder: Path) -> None:
    assert isinstance(err, DataError), f"{type(err).__name__}: {err}"
    assert str(folder) in str(err), f"message does not name the file: {err}"


@pytest.fixture(scope="module")
def release_layout(smoke_run, tmp_path_factory):
    """A small valid release layout (own image copies), from the smoke corpus."""
    params, run_dir = smoke_run
    table = Run(params, run_dir).table(params.data)
    keep = table.drop_duplicates("image_id").groupby("split").head(2).image_id
    part = table[table.image_id.isin(keep) & table.lang.isin(["en", "de"])]
    out = tmp_path_factory.mktemp("release")
    write_release_layout(part, out, copy_images=True)
    assert len(load_release(out / "path.json", out / "english.json")) == len(part)
    return out


def _mutate_release(data, folder: Path) -> None:
    spec = json.loads((folder / "path.json").read_text())
    what = data.draw(st.sampled_from(["spec", "entry", "key", "element", "anno", "anno_entry",
                                      "raw", "cut"]))
    split = data.draw(st.sampled_from(sorted(spec)))
    key = data.draw(st.sampled_from(["anno_file", "feature", "name_file", "langs", "variants"]))
    annos = sorted((folder / "annotations").glob("*.json"))
    anno = data.draw(st.sampled_from(annos + [folder / "english.json"]))
    if what == "spec":
        spec = data.draw(JSON)
    elif what == "entry":
        spec[data.draw(st.sampled_from([split, data.draw(st.text(max_size=6))]))] = data.draw(JSON)
    elif what == "key":
        if data.draw(st.booleans()):
            spec[split].pop(key, None)
        else:
            spec[split][key] = data.draw(JSON)
    elif what == "element":
        values = spec[split][key]
        i = data.draw(st.integers(0, len(values)))
        if i < len(values):
            values[i] = data.draw(JSON | st.sampled_from(["xx", "en", "mt", "../nope", ""]))
        else:
            values.append(data.draw(JSON))
    elif what in ("anno", "anno_entry"):
        doc = json.loads(anno.read_text())
        if what == "anno":
            doc = data.draw(JSON)
        else:
            name = data.draw(st.sampled_from(sorted(doc) + ["new.png"]))
            doc[name] = data.draw(JSON | st.lists(ODD_TEXT, max_size=3))
        anno.write_text(json.dumps(doc))
    target = data.draw(st.sampled_from([folder / "path.json", anno]))
    if what == "raw":
        target.write_bytes(data.draw(st.binary(max_size=200)))
    elif what == "cut":
        text = target.read_bytes()
        target.write_bytes(text[: data.draw(st.integers(0, max(len(text) - 1, 0)))])
    if what not in ("raw", "cut", "anno", "anno_entry"):
        (folder / "path.json").write_text(json.dumps(spec))


@FUZZ
@given(data=st.data())
def test_fuzzed_release_layout_gives_table_or_named_data_error(release_layout, data):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(release_layout, Path(tmp) / "layout"))
        _mutate_release(data, folder)
        on_missing = data.draw(st.sampled_from(["error", "skip"]))
        try:
            table = load_release(folder / "path.json", folder / "english.json", on_missing=on_missing)
        except Exception as err:  # noqa: BLE001 - the type is what is tested
            _assert_names(err, folder)
        else:
            assert list(table.columns[:len(COLUMNS)]) == COLUMNS
            assert table.lang.isin(LANGS).all() and (table.caption.str.strip() != "").all()
            assert all(os.path.isfile(p) for p in table.image_path)


@FUZZ
@given(data=st.data())
def test_fuzzed_manifest_gives_table_or_named_data_error(release_layout, data):
    image = sorted((release_layout / "images").iterdir())[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        kind = data.draw(st.sampled_from(["jsonl", "csv", "raw"]))
        path = folder / ("m.csv" if kind == "csv" or (kind == "raw" and data.draw(st.booleans()))
                         else "m.jsonl")
        field = {"image_path": st.sampled_from([str(image), "missing.png", ""]) | JSON,
                 "lang": st.sampled_from([*LANGS, "xx", "EN", ""]) | JSON,
                 "caption": ODD_TEXT | JSON, "split": st.sampled_from(["train", "test", "dev"]) | JSON,
                 "variant": st.sampled_from(["native", "mt", "bad"]) | JSON,
                 "caption_id": st.sampled_from(["a", "b", ""]) | JSON}
        records = data.draw(st.lists(st.fixed_dictionaries(
            {}, optional={**field, "extra": JSON})
            | JSON, max_size=5))
        if kind == "jsonl":
            lines = [json.dumps(r) for r in records]
            if data.draw(st.booleans()):
                lines.insert(data.draw(st.integers(0, len(lines))), data.draw(st.text(max_size=30)))
            path.write_text("\n".join(lines), encoding="utf-8")
        elif kind == "csv":
            dicts = [r for r in records if isinstance(r, dict)]
            frame = pd.DataFrame([{k: json.dumps(v) if not isinstance(v, str) else v
                                   for k, v in r.items()} for r in dicts])
            frame.to_csv(path, index=False)
            if data.draw(st.booleans()):
                text = path.read_bytes()
                path.write_bytes(text[: data.draw(st.integers(0, len(text)))])
        else:
            path.write_bytes(data.draw(st.binary(max_size=300)))
        try:
            table = load_manifest(path, on_missing=data.draw(st.sampled_from(["error", "skip"])))
        except Exception as err:  # noqa: BLE001
            _assert_names(err, path)
        else:
            assert table.lang.isin(LANGS).all() and (table.caption.str.strip() != "").all()
            assert not table.caption_id.duplicated().any()
            assert all(os.path.isfile(p) for p in table.image_path)


@pytest.fixture(scope="module")
def target_model(smoke_run):
    from dasd_lib.model import build_target_model
    params, run_dir = smoke_run
    backbone = Run(params, run_dir).backbone("finetune")
    torch.manual_seed(0)
    return backbone, build_target_model(backbone, params.model, "dasd", params.data.langs).eval()


@FUZZ
@given(captions=st.lists(ODD_TEXT, min_size=1, max_size=4), lang_i=st.integers(0, 4))
def test_odd_captions_tokenize_and_encode_or_name_the_caption(target_model, captions, lang_i):
    backbone, model = target_model
    lang = model.langs[lang_i % len(model.langs)]
    empty = [i for i, c in enumerate(captions) if not c.strip()]
    for tokenize in (backbone.tokenize_target, backbone.tokenize_source):
        if empty:
            with pytest.raises(BackboneError, match=f"caption {empty[0]} is empty"):
                tokenize(captions)
            continue
        ids, mask = tokenize(captions)
        assert ids.shape == mask.shape and ids.shape[0] == len(captions)
        assert ids.shape[1] <= backbone.context_length  # long captions truncate
    if not empty:
        ids, mask = backbone.tokenize_target(captions)
        with torch.no_grad():
            out = model(ids, mask, lang)
        assert out.r_T.shape == (len(captions), backbone.embed_dim)
        assert torch.isfinite(out.r_T).all()


def test_unknown_language_is_named(target_model):
    backbone, model = target_model
    ids, mask = backbone.tokenize_target(["ein roter kreis"])
    with pytest.raises(KeyError, match="'ar'"):
        model(ids, mask, "ar")


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _image_bytes(mode: str, fmt: str, size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    im = Image.new(mode, size)
    if mode in ("L", "RGB", "RGBA", "CMYK", "P", "LA"):
        im = Image.frombytes(mode, size, rng.integers(0, 256, len(im.tobytes()), np.uint8).tobytes())
    buf = __import__("io").BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


COMBOS = [(m, f) for m in ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F")
          for f in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")]


def _combo_ok(mode: str, fmt: str) -> bool:
    try:
        _image_bytes(mode, fmt, (4, 4), 0)
        return True
    except (OSError, ValueError, KeyError):
        return False


COMBOS = [c for c in COMBOS if _combo_ok(*c)]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@FUZZ
@given(combo=st.sampled_from(COMBOS), size=st.tuples(st.integers(1, 70), st.integers(1, 70)),
       seed=st.integers(0, 99), damage=st.sampled_from(["none", "cut", "flip", "random", "zero"]),
       where=st.floats(0, 1), data=st.binary(max_size=64))
def test_fuzzed_images_load_or_name_the_file(tmp_path, combo, size, seed, damage, where, data):
    blob = _image_bytes(*combo, size, seed)
    i = int(where * (len(blob) - 1))
    blob = {"none": blob, "cut": blob[:i], "flip": blob[:i] + bytes([blob[i] ^ 0x5A]) + blob[i + 1:],
            "random": blob[:i] + data, "zero": b""}[damage]
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(good)
    bad = tmp_path / f"fuzz.{combo[1].lower()}"
    bad.write_bytes(blob)
    try:
        out = load_images([good, bad, good], 16)
    except Exception as err:  # noqa: BLE001
        _assert_names(err, bad)
        handler = _Records()
        logging.getLogger("dasd_lib.data").addHandler(handler)
        try:
            out, kept = load_images([good, bad, good], 16, on_missing="skip", return_kept=True)
        finally:
            logging.getLogger("dasd_lib.data").removeHandler(handler)
        assert kept.tolist() == [0, 2] and out.shape == (2, 16, 16, 3)
        assert any("skipped 1 item" in m and str(bad) in m for m in handler.messages)
    else:
        assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("mode", ["CMYK", "L", "LA", "RGBA", "P", "1", "I;16", "I", "F"])
def test_images_in_other_modes_load_as_rgb(tmp_path, mode):
    ramp = np.tile(np.linspace(0, 255, 32), (32, 1))  # (H, W) 0..255 left to right
    rgb = Image.fromarray(np.stack([ramp] * 3, -1).astype(np.uint8))
    if mode in ("I;16", "I"):
        im = Image.fromarray((ramp * 257).astype(np.uint16 if mode == "I;16" else np.int32))
    elif mode == "F":
        im = Image.fromarray((ramp / 255).astype(np.float32))  # floats in [0, 1]
    else:
        im = rgb.convert(mode)
    path = tmp_path / f"img.{'jpg' if mode == 'CMYK' else 'tiff' if mode in ('I', 'F') else 'png'}"
    im.save(path)
    assert Image.open(path).mode.startswith(mode[0])
    out = load_images([path], 32)
    assert out.shape == (1, 32, 32, 3) and out.dtype == np.uint8
    if mode not in ("1", "I", "F"):  # the ramp survives: no saturation (16-bit as white) or clipping
        gray = out[0].mean(-1).mean(0)  # (W,)
        assert gray[0] < 40 and gray[-1] > 215 and abs(gray[16] - 130) < 35, gray


@pytest.mark.parametrize("side,says", [(6000, "truncated"), (30000, "pixels")])
def test_huge_image_headers_give_named_error_or_skip(tmp_path, caplog, side, says):
    path = tmp_path / f"huge{side}.png"
    path.write_bytes(_png_header_only(side, side))
    with pytest.raises(DataError, match=says) as err:
        load_images([path], 32)
    assert str(path) in str(err.value)
    caplog.set_level(logging.WARNING, "dasd_lib.data")
    out, kept = load_images([path], 32, on_missing="skip", return_kept=True)
    assert out.shape == (0, 32, 32, 3) and kept.tolist() == [] and "skipped 1 item" in caplog.text


@pytest.mark.parametrize("content,says", [
    (b"", "malformed JSON"), (b"\xff\xfe\x00bad", "UTF-8"), (b"[" * 100000, "JSON")])
def test_bad_annotation_bytes_name_the_file(tmp_path, content, says):
    path = tmp_path / "path.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=says) as err:
        load_release(path)
    assert str(path) in str(err.value)
    for name in ("m.jsonl", "m.csv"):
        (tmp_path / name).write_bytes(content)
        try:
            table = load_manifest(tmp_path / name)
        except Exception as err:  # noqa: BLE001
            _assert_names(err, tmp_path / name)
        else:
            assert table.empty and name == "m.jsonl" and content == b""  # no lines, no rows


# ============================================================================ 7. same run id

WAIT_CELL = textwrap.dedent("""
    import time
    (run.dir / "started").write_text("1")
    t0 = time.time()
    while not (run.dir / "go").exists() and time.time() - t0 < 120:
        time.sleep(0.05)
    (run.dir / "done.txt").write_text(str(params.cla.steps))
""")


def _one_notebook_project(tmp_path: Path, name: str, cell: str, run_id: str) -> tuple[list[str], Path]:
    """tmp_path as a project with one notebook (`cell` after prepare_run): the dasd-run
    command for it and the run folder."""
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "p.yaml").write_text("cla: {steps: 3}\n")
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell('params_file = ""\nrun_dir = ""\noverrides = []',
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("from dasd_lib.run import prepare_run\n"
                                          "run = prepare_run(params_file, run_dir, overrides)\n"
                                          "params = run.params"),
                nbformat.v4.new_code_cell(cell)]
    nbformat.write(nb, tmp_path / "notebooks" / name)
    exe = Path(sys.executable).with_name("dasd-run")
    cmd = [str(exe), "--params", str(tmp_path / "params" / "p.yaml"), "--notebooks-dir",
           str(tmp_path / "notebooks"), "--reports-dir", str(tmp_path / "reports"), "--run-id", run_id]
    return cmd, tmp_path / "reports" / run_id


def test_two_dasd_run_processes_with_one_run_id(tmp_path):
    cmd, run = _one_notebook_project(tmp_path, "00_wait.ipynb", WAIT_CELL, "same")
    log_file = tmp_path / "first.log"
    with open(log_file, "w") as log_handle:
        first = subprocess.Popen(cmd, cwd=tmp_path, stdout=log_handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (run / "started").exists():
            assert first.poll() is None, log_file.read_text()
            assert time.monotonic() < deadline, "first run never started its notebook"
            time.sleep(0.1)
        second = subprocess.run(cmd + ["-p", "cla.steps=99"], cwd=tmp_path, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert "in use by another dasd-run" in second.stderr and f"pid {first.pid}" in second.stderr
        (run / "go").write_text("1")
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, log_file.read_text()
    # the refused run changed nothing: the first run's params and outputs stand
    assert yaml.safe_load((run / "params.yaml").read_text())["cla"]["steps"] == 3
    assert (run / "done.txt").read_text() == "3"
    assert json.loads((run / "timings.json").read_text())["status"] == "completed"
    assert not (run / ".lock.json").exists()  # the lock was released with its owner record


# ============================================================================ 8. killed runner

TICK_CELL = textwrap.dedent("""\
    import os, time
    (run.dir / "kernel.pid").write_text(str(os.getpid()))
    if (run.dir / "resumed").exists():
        (run.dir / "done.txt").write_text("1")
    else:
        for i in range(2400):  # about two minutes of writes, unless killed
            (run.dir / "ticks.txt").write_text(str(i))
            time.sleep(0.05)
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has stopped; nobody may have reaped it yet


def test_sigkill_of_the_runner_stops_its_kernel_and_resume_says_what_it_found(tmp_path):
    cmd, run = _one_notebook_project(tmp_path, "00_tick.ipynb", TICK_CELL, "k")
    with open(tmp_path / "runner.log", "w") as log_handle:
        runner = subprocess.Popen(cmd, cwd=tmp_path, stdout=log_handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (run / "ticks.txt").exists():
            assert runner.poll() is None, (tmp_path / "runner.log").read_text()
            assert time.monotonic() < deadline, "the notebook never started ticking"
            time.sleep(0.05)
        kernel = int((run / "kernel.pid").read_text())
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    deadline = time.monotonic() + 0.5  # ipykernel's own parent poller would take up to 1 s
    while _alive(kernel) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(kernel), "the kernel outlived its runner by more than 0.5 s"
    ticks = (run / "ticks.txt").read_text()
    time.sleep(0.3)
    assert (run / "ticks.txt").read_text() == ticks  # nothing writes into the folder any more
    # what the killed runner left: its name in .lock.json, timings.json saying "running"
    assert json.loads((run / "timings.json").read_text())["status"] == "running"
    assert json.loads((run / ".lock.json").read_text())["pid"] == runner.pid
    (run / "resumed").write_text("1")
    resumed = subprocess.run(cmd + ["--resume"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert f"reclaimed the lock left by pid {runner.pid}" in resumed.stdout
    assert "ended without a word (killed?) while 00_tick.ipynb ran" in resumed.stdout
    log = (run / "run.log").read_text()
    assert "reclaimed the lock" in log and "marked interrupted" in log
    timings = json.loads((run / "timings.json").read_text())
    assert timings["status"] == "completed" and timings["notebooks"]["00_tick.ipynb"]["status"] == "ok"
    assert (run / "done.txt").read_text() == "1"
