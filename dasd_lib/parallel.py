"""Independent CPU jobs (one method's training stage, one model's evaluation) in worker
processes, each with one thread.

On a small CPU, one training job with two threads is far from twice as fast as with one
(the tiny models' matrices are small), and when anything else runs on the machine its
threads spin against each other; two single-thread jobs side by side use both cores fully.
`run.workers` sets how many processes run a notebook's jobs (0: one per CPU core; CUDA
runs in-process). With more than one worker every job runs with exactly one thread
whether it runs in a worker or in-process, so results do not depend on how many workers
there are or on the order the jobs finish in; `run.workers: 1` runs the jobs in-process
with the process's own threads, as before this module existed.

Workers are spawned (not forked: torch's thread pools do not survive a fork), build their
context once (`context_fn(*context_args)`: the backbone, the corpus, the frozen features)
and then take jobs from a queue until none is left. A job's exception is raised again in
the caller, the same type with the same message; a worker that dies stops the call with
its exit code. Workers die with their parent (Linux: PR_SET_PDEATHSIG)."""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import queue
import signal
import sys
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Sequence

import torch


class WorkerError(RuntimeError):
    """A worker process died, or raised something that cannot be sent back as it is."""


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_workers(workers: int, device: str = "cpu") -> int:
    """run.workers -> processes: 0 means one per usable CPU core; CUDA always 1 (in-process)."""
    if device.startswith("cuda"):
        return 1
    return usable_cpus() if workers <= 0 else workers


def die_with_parent(parent_pid: int) -> bool:
    """Linux: SIGKILL this process when its parent `parent_pid` dies (prctl
    PR_SET_PDEATHSIG), so a killed runner or kernel leaves no process writing on into its
    run folder. Whether it was bound; a no-op off Linux."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
        return False
    if os.getppid() != parent_pid:  # the parent died before the call: follow it now
        os._exit(1)
    return True


@contextmanager
def threads(n: int | None):
    """torch's intra-op threads set to `n` inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sendable(err: BaseException) -> tuple[type, str, str]:
    """What a worker sends back for an exception: its type (pickled by reference), its
    message and its traceback text."""
    return type(err), str(err), "".join(traceback.format_exception(err))


def _raise_again(sent: tuple[type, str, str]) -> None:
    """Raise a worker's exception in the caller: the same type with the same message when
    the type can be built from its message alone, else a WorkerError with the traceback."""
    kind, message, text = sent
    try:
        err = kind(message)
    except Exception:  # noqa: BLE001 - a type that needs other arguments
        raise WorkerError(f"a worker process failed:\n{text}") from None
    raise err from WorkerError(f"in a worker process:\n{text}")


def _serve(parent_pid: int, n_threads: int, context_fn, context_args, job_fn, jobs, results) -> None:
    die_with_parent(parent_pid)
    torch.set_num_threads(n_threads)
    try:
        context = context_fn(*context_args) if context_fn is not None else None
    except BaseException as err:  # noqa: BLE001 - sent back to the caller
        results.put((-1, False, _sendable(err)))
        return
    while True:
        item = jobs.get()
        if item is None:
            return
        index, job = item
        try:
            results.put((index, True, job_fn(context, job)))
        except BaseException as err:  # noqa: BLE001 - sent back to the caller
            results.put((index, False, _sendable(err)))
            return


def run_jobs(job_fn: Callable[[Any, Any], Any], jobs: Sequence[Any], *, workers: int,
             context_fn: Callable[..., Any] | None = None, context_args: tuple = ()) -> list[Any]:
    """[job_fn(context, job) for job in jobs], in the order of `jobs`, with
    context = context_fn(*context_args) built once per process.

    workers <= 1: in-process with the process's threads. workers > 1: min(workers, len(jobs))
    spawned processes, one thread each (a single job runs in-process, also with one
    thread). job_fn and context_fn must be importable module-level functions, and jobs,
    context_args and results picklable."""
    jobs = list(jobs)
    if not jobs:
        return []
    if workers <= 1 or len(jobs) == 1:
        with threads(1 if workers > 1 else None):
            context = context_fn(*context_args) if context_fn is not None else None
            return [job_fn(context, job) for job in jobs]
    ctx = mp.get_context("spawn")
    job_queue, results = ctx.Queue(), ctx.Queue()
    for item in enumerate(jobs):
        job_queue.put(item)
    n = min(workers, len(jobs))
    for _ in range(n):
        job_queue.put(None)
    procs = [ctx.Process(target=_serve, daemon=True, name=f"dasd-worker-{i}",
                         args=(os.getpid(), 1, context_fn, context_args, job_fn, job_queue, results))
             for i in range(n)]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    try:
        while len(out) < len(jobs):
            try:
                index, ok, value = results.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead or all(p.exitcode is not None for p in procs):
                    which = dead[0] if dead else procs[0]
                    raise WorkerError(f"worker process {which.name} ended (exit code "
                                      f"{which.exitcode}) with {len(jobs) - len(out)} of "
                                      f"{len(jobs)} jobs unfinished; its error is above in the "
                                      f"log. A script that calls dasd_lib with run.workers other "
                                      f"than 1 must start its work under `if __name__ == "
                                      f"'__main__':` (worker processes import it), or set "
                                      f"run.workers: 1") from None
                continue
            if not ok:
                _raise_again(value)
            out[index] = value
    finally:
        for p in procs:
            if p.is_alive() and len(out) < len(jobs):
                p.terminate()
        for p in procs:
            p.join(timeout=30)
        job_queue.close()
        results.close()
    return [out[i] for i in range(len(jobs))]


__all__ = ["WorkerError", "die_with_parent", "resolve_workers", "run_jobs", "threads", "usable_cpus"]
