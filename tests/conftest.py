"""Shared fixtures: the smoke parameters pointed at temporary folders, and a smoke run
folder with a trained tiny VLP (built once per test session)."""
from __future__ import annotations

import os

# Smoke sizes are tiny: one thread is faster than two, and notebook kernels started by
# the tests inherit this, so parallel test processes never oversubscribe the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import pytest  # noqa: E402

from dasd_lib.config import load_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"


def smoke_params(tmp: Path, *extra: str):
    """params/smoke.yaml with data, web corpus and reports under `tmp`."""
    return load_params(SMOKE, [f"data.root={tmp / 'dataset'}", f"web.root={tmp / 'dataset'}",
                               f"run.reports_dir={tmp / 'reports'}", "run.device=cpu", *extra])


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """(params, run_dir) with notebook 01's work done: corpora generated, tiny VLP trained."""
    from dasd_lib.context import Run
    from dasd_lib.vlp_stage import source_vlp
    tmp = tmp_path_factory.mktemp("smoke")
    params = smoke_params(tmp)
    run_dir = tmp / "reports" / "smoke"
    run_dir.mkdir(parents=True)
    source_vlp(Run(params, run_dir))
    return params, run_dir
