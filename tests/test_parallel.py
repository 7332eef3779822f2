"""dasd_lib.parallel: jobs in spawned single-thread workers, results in job order, errors
raised again in the caller, dead workers named, workers dying with their parent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from dasd_lib.parallel import WorkerError, resolve_workers, run_jobs


def _context(offset: int) -> dict:
    return {"offset": offset, "pid": os.getpid()}


def _square(ctx: dict, job: int) -> tuple[int, int, int]:
    if job < 3:  # the first jobs finish last, so completion order differs from job order
        time.sleep(0.3)
    return job * job + ctx["offset"], torch.get_num_threads(), ctx["pid"]


def _fail_on_three(ctx, job: int) -> int:
    if job == 3:
        raise ValueError(f"job {job} is bad")
    return job


def _die(ctx, job: int) -> int:
    os._exit(7)


def test_results_come_back_in_job_order_from_single_thread_workers():
    out = run_jobs(_square, list(range(6)), workers=2, context_fn=_context, context_args=(10,))
    assert [o[0] for o in out] == [j * j + 10 for j in range(6)]
    assert {o[1] for o in out} == {1}  # one thread in every worker
    pids = {o[2] for o in out}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes, each its context


def test_one_worker_runs_in_process_with_the_process_threads():
    out = run_jobs(_square, [1, 2], workers=1, context_fn=_context, context_args=(0,))
    assert [o[0] for o in out] == [1, 4]
    assert {o[1] for o in out} == {torch.get_num_threads()}
    assert {o[2] for o in out} == {os.getpid()}


def test_a_single_job_with_several_workers_runs_in_process_with_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        (value, threads, pid), = run_jobs(_square, [5], workers=4, context_fn=_context, context_args=(0,))
        assert (value, threads, pid) == (25, 1, os.getpid())
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)


def test_a_job_error_is_raised_again_with_its_type_and_message():
    with pytest.raises(ValueError, match="job 3 is bad") as info:
        run_jobs(_fail_on_three, list(range(6)), workers=2)
    assert isinstance(info.value.__cause__, WorkerError)
    assert "_fail_on_three" in str(info.value.__cause__)  # the worker's traceback travels along


def test_a_dead_worker_is_named_with_its_exit_code():
    with pytest.raises(WorkerError, match=r"exit code 7.*if __name__ == '__main__'"):
        run_jobs(_die, [1, 2, 3], workers=2)


def test_resolve_workers():
    assert resolve_workers(3, "cpu") == 3
    assert resolve_workers(0, "cpu") == len(os.sched_getaffinity(0))
    assert resolve_workers(4, "cuda") == 1


@pytest.mark.fault
def test_workers_die_when_their_parent_is_killed(tmp_path: Path):
    """SIGKILL of the process that started the workers (a notebook kernel, under a killed
    runner) leaves no worker behind to write on into the run folder."""
    script = tmp_path / "parent.py"
    pids = tmp_path / "pids"
    script.write_text(textwrap.dedent(f"""
        import os, time
        from dasd_lib.parallel import run_jobs
        import test_parallel
        if __name__ == "__main__":
            run_jobs(test_parallel._record_and_sleep, [{str(pids)!r}] * 2, workers=2)
    """))
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    parent = subprocess.Popen([sys.executable, str(script)], env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(_read_pids(pids)) < 2:
            time.sleep(0.2)
        workers = _read_pids(pids)
        assert len(workers) == 2, "the workers did not start"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers), "a worker outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def _record_and_sleep(ctx, path: str) -> None:
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(120)


def _read_pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (killed, not yet reaped by init) counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_workers_give_the_results_of_one_process(smoke_run, tmp_path):
    """The target stages and the evaluation of a smoke run, in-process (run.workers 1, one
    thread as the tests run) and in two worker processes: the same bytes in results.csv,
    comparisons.csv and every trained model."""
    import dataclasses
    import shutil

    from dasd_lib.context import Run
    from dasd_lib.pipeline import evaluate_run, train_stage_all

    params, source = smoke_run
    assert torch.get_num_threads() == 1  # conftest: the in-process run uses one thread too
    methods = {"finetune": ["floor", "oracle", "static", "dasd"], "zeroshot": ["dasd"]}
    folders = {}
    for workers in (1, 2):
        folder = tmp_path / f"workers{workers}"
        shutil.copytree(source, folder)
        run = Run(dataclasses.replace(params, run=dataclasses.replace(
            params.run, workers=workers, methods=methods)), folder)
        for stage in ("cla", "cma"):
            summary = train_stage_all(run, stage)
            assert list(summary.method) == ["static", "dasd", "dasd"]
        evaluate_run(run)
        folders[workers] = folder
    one, two = folders[1], folders[2]
    for name in ("results.csv", "comparisons.csv"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    models = sorted(p.relative_to(one) for p in one.rglob("model.safetensors") if "checkpoints" in str(p))
    assert len(models) >= 6  # 3 trained methods x 2 stages
    for rel in models:
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
