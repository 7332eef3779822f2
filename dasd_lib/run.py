"""The notebook runner: `dasd-run` executes notebooks/NN_*.ipynb in order with papermill.

    dasd-run --params params/default.yaml [--run-id ID] [--only 02,03] [-p cla.steps=5 ...]
             [--notebooks-dir notebooks] [--reports-dir reports] [--resume] [--log-output]
             [--heartbeat SECONDS]

A run lives in reports/<run_id>/ (see reports/README.md): params.yaml (the resolved
parameters), env.json (versions, git commit, command), notebooks/ (the executed copies),
run.log and timings.json (wall time per notebook), and whatever the notebooks write.

Every notebook gets three parameters: params_file (the run's params.yaml), run_dir (the
run folder, absolute) and overrides ([]; they are already in params.yaml). Notebooks run
with the *project root* (the folder holding notebooks/) as working directory, so relative
paths in the parameters (dataset/, reports/) mean the same as on the command line and as
in JupyterLab, where `prepare_run` changes into the project root for the same reason.

Only one runner may work in a run folder at a time: it holds an flock on
reports/<id>/.lock (filelock; the kernel drops it when the holder dies, so nothing is
left to reclaim) and names itself in .lock.json. A folder that already holds a run is only reused with --resume.

When a run ends (completed or failed) and its folder holds a report.html, the runner
rewrites the report, so it shows the final status and timings rather than the "running"
of the moment notebook 06 wrote it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence


from . import pipeline, train
from .context import Run
from .config import (INTERACTIVE_ID, RUN_NAMING_KEYS, ConfigError, Params,  # noqa: F401
                     canonical_stage, find_project_root, load_params, save_params, seeds_used)
from .execution import (COMPARE_NOTEBOOK, CROSS_RUN_NOTEBOOKS, KERNEL_NAME, NOTEBOOK_RE,  # noqa: F401
                        PACKAGES, NotebookFailed, RunError, RunExistsError, RunLock,
                        RunLockedError, _now, bind_kernel_to_runner, collect_env, execute_notebook,
                        find_compare_notebook,
                        find_notebooks, heartbeat, keep_report_fresh, select_notebooks)
from .official import IMPORTED_SKIPS
from .report_html import REPORT_FILE, write_report
from .run_state import (FIRST_READER, STAGE_NOTEBOOKS, _claim_auto_folder,  # noqa: F401
                        _finished_notebooks, _found_after_a_kill, _Records, _run_status,
                        _with_run_id, default_run_id, first_reader, params_diff,
                        stale_finished_notebooks, stages_to_restart)
from .storage import atomic_write
from .vlp_stage import source_vlp

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
RUN_SUBDIRS = ("figures", "artifacts", "losses")
PROGRESS_FILE = ".progress.json"  # the kernel's latest progress, while a notebook runs

def _resolve_input(path: str | Path, root: Path | None) -> Path:
    """A user-given input path: absolute as is, else relative to the cwd, else to `root`."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or root is None:
        return p.resolve()
    return (root / p).resolve() if (root / p).exists() else p.resolve()


# ----------------------------------------------------------------------------- the runner

def run_notebooks(params_path: str | Path, run_id: str | None = None,
                  only: Sequence[str] | str | None = None, overrides: Sequence[str] | None = None,
                  notebooks_dir: str | Path = "notebooks", reports_dir: str | Path | None = None,
                  *, resume: bool = False, log_output: bool = False, progress: bool = False,
                  command: Sequence[str] | None = None,
                  restart_stages: Sequence[str] | None = None, heartbeat_s: float = 30.0) -> Path:
    """Execute the notebooks in order into reports/<run_id>/notebooks/; return the run folder.

    `restart_stages` (vlp, cla, cma): retrain these stages and every later one from scratch
    in an existing run folder (implies resume; the parameters may then differ from the
    folder's params.yaml, and the change is logged). Without it, a stage trained with other
    inputs than the current parameters is refused by the library (StaleStageError).

    A resume may change parameters that only notebooks it executes, or none that finished,
    read (FIRST_READER); otherwise RunError names the keys and the finished notebooks.

    reports_dir None means params `run.reports_dir`, relative to the project root (the
    folder holding `notebooks_dir`). Raises ConfigError (bad params; before anything runs),
    RunLockedError, RunExistsError, RunError, or NotebookFailed (after recording it).

    Every `heartbeat_s` seconds a notebook runs, a line says how long it has been running
    and what the kernel reported last (training stage, setting, method, seed and step, or
    the evaluation's model count), with or without log_output.
    """
    notebooks_dir = Path(notebooks_dir).resolve()
    root = notebooks_dir.parent
    params_path = Path(params_path).resolve()
    params = load_params(params_path, list(overrides or []))  # unknown keys and values fail here
    pipeline.check_run(params)
    notebooks = select_notebooks(find_notebooks(notebooks_dir), only)
    if params.run.imported:  # the imported folder holds what notebooks 01-03 would train
        notebooks = [p for p in notebooks if p.name[:2] not in IMPORTED_SKIPS]
    reports = (Path(reports_dir).resolve() if reports_dir is not None
               else root / params.run.reports_dir)

    run_id = run_id or params.run.run_id or None
    if run_id is not None:
        if not RUN_ID_RE.match(run_id):
            raise RunError(f"run id '{run_id}': use letters, digits, '.', '_' and '-' only")
        run_dir = reports / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
    else:  # a generated id never collides: a second run in the same second gets a suffix
        run_id, run_dir = _claim_auto_folder(reports, default_run_id(params_path))
    params = _with_run_id(params, run_id)
    command_line = shlex.join(command if command is not None else sys.argv)
    restart = stages_to_restart(restart_stages)
    resume = resume or bool(restart)

    lock = RunLock(run_dir).acquire(command_line)  # RunLockedError: another run is in there
    try:
        found = _found_after_a_kill(run_dir, lock)
        status = _run_status(run_dir)
        if status is not None and not resume:
            raise RunExistsError(
                f"{run_dir} already holds a run (status: {status}); pass --resume to re-execute "
                f"notebooks in it with the same parameters, or choose another --run-id")
        changed: list[str] = []
        env = collect_env(root, command)
        env["seeds"] = seeds_used(params)
        env["threads"] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        if status is not None and (run_dir / "params.yaml").is_file():
            # resuming: the folder's parameters must not change under its earlier notebooks
            changed = params_diff(load_params(run_dir / "params.yaml"), params)
            stale = stale_finished_notebooks(changed, _finished_notebooks(run_dir),
                                             [p.name[:2] for p in notebooks])
            if stale and not restart:
                raise RunError(f"--resume with other parameters than {run_dir / 'params.yaml'}: "
                               + "; ".join(changed) + f". Finished notebooks {', '.join(stale)} "
                               "depend on them and this resume does not re-execute them: add "
                               "them to --only (training stages then need --restart-stage "
                               "vlp|cla|cma), or start a new run id.")
            try:
                old_env = json.loads((run_dir / "env.json").read_text(encoding="utf-8"))
                env["previous"] = [*old_env.pop("previous", []), old_env]
            except (OSError, ValueError):
                pass
        save_params(params, run_dir / "params.yaml")
        atomic_write(run_dir / "env.json", json.dumps(env, indent=2) + "\n")
        for sub in (*RUN_SUBDIRS, "notebooks"):
            (run_dir / sub).mkdir(exist_ok=True)

        records = _Records(run_dir, run_id, resume)
        for line in found:
            records.log(line)
        records.log(f"start run {run_id}: {command_line} ({len(notebooks)} notebooks"
                    f"{', resumed' if status is not None else ''})")
        if restart:
            records.log(f"restarting stages {', '.join(restart)}")
        if changed:
            records.log(f"parameters changed on resume: {'; '.join(changed)}")
        plural = "s" * (len(notebooks) != 1)
        print(f"dasd-run: run {run_id} in {run_dir} ({len(notebooks)} notebook{plural})",
              flush=True)
        parameters = {"params_file": str(run_dir / "params.yaml"), "run_dir": str(run_dir),
                      "overrides": []}
        restart_numbers = {STAGE_NOTEBOOKS[s] for s in restart}
        t_run = time.perf_counter()
        for i, src in enumerate(notebooks, 1):
            dst = run_dir / "notebooks" / src.name
            records.log(f"start {src.name}")
            records.notebook(src.name, status="running", started=_now(), seconds=None)
            print(f"  [{i}/{len(notebooks)}] {src.name}: running", flush=True)
            t0 = time.perf_counter()
            try:
                with heartbeat(f"  [{i}/{len(notebooks)}] {src.name}", run_dir / PROGRESS_FILE,
                               heartbeat_s):
                    execute_notebook(src, dst, cwd=root, log_output=log_output, progress=progress,
                                     parameters=parameters | ({"restart": True}
                                                              if src.name[:2] in restart_numbers else {}))
            except NotebookFailed as err:
                seconds = round(time.perf_counter() - t0, 2)
                err.run_dir = run_dir
                err.remaining = [p.name[:2] for p in notebooks[i - 1:]]
                records.notebook(src.name, status="failed", seconds=seconds,
                                 cell_index=err.cell_index, error=f"{err.ename}: {err.evalue}")
                records.log(f"FAILED {src.name} after {seconds} s: "
                            + err.describe().replace("\n", " |"))
                records.finish("failed")
                _rewrite_report(run_dir, records)
                raise
            except BaseException as err:  # Ctrl-C or a write that failed (full disk, ...)
                status = "failed" if isinstance(err, OSError) else "interrupted"
                try:  # the record says so when it can; the lock is released below either way
                    records.notebook(src.name, status=status, seconds=round(time.perf_counter() - t0, 2),
                                     **({"error": str(err)} if isinstance(err, OSError) else {}))
                    records.finish(status)
                except OSError:
                    pass  # the disk that refused the notebook refuses the record too
                raise
            seconds = round(time.perf_counter() - t0, 2)
            records.notebook(src.name, status="ok", seconds=seconds)
            records.log(f"ok {src.name} {seconds} s")
            print(f"  [{i}/{len(notebooks)}] {src.name}: ok ({seconds:.1f} s)", flush=True)
        total = round(time.perf_counter() - t_run, 2)
        records.timings["total_seconds"] = total
        records.finish("completed")
        records.log(f"completed {len(notebooks)} notebooks in {total} s")
        _rewrite_report(run_dir, records)
        return run_dir
    finally:
        lock.release()


def _rewrite_report(run_dir: Path, records: _Records) -> None:
    """Rewrite report.html once the run has ended: notebook 06 writes it while the run (and
    06 itself) still count as running, and a resumed run changes what it shows. A run
    folder without a report gets none (the run did not include notebook 06)."""
    if not (run_dir / REPORT_FILE).is_file():
        return
    try:
        write_report(run_dir)
    except Exception as err:  # noqa: BLE001 - a report problem must not hide how the run ended
        records.log(f"report.html could not be rewritten: {type(err).__name__}: {err}")
        return
    records.log(f"rewrote {REPORT_FILE} with the final status ({records.timings['status']})")


# ----------------------------------------------------------------------------- in notebooks

def prepare_run(params_file: str | Path, run_dir: str | Path,
                overrides: Sequence[str] | None = None) -> Run:
    """First call of every notebook: the run object (context.Run) holding the run's Params
    (`run.params`), its folder (`run.dir`, absolute, with figures/, artifacts/ and losses/
    created) and, as the notebook reads them, its corpus tables and backbones.

    - run_dir holds params.yaml (a dasd-run run): those parameters, always. A different
      params_file or overrides that would change them are an error: a run's notebooks
      must agree on their parameters.
    - run_dir without params.yaml (a notebook run alone with papermill): params_file plus
      overrides, recorded into run_dir/params.yaml and env.json.
    - run_dir "" (opened alone in JupyterLab): params_file plus overrides, and
      <reports_dir>/interactive as the run folder.
    Relative params_file and run_dir mean the project root, as relative paths inside the
    parameters do (config.resolve_paths), whatever folder the kernel runs in.

    In a kernel it also registers keep_report_fresh: a cell that changes what the folder's
    report.html shows rewrites the report.
    """
    bind_kernel_to_runner()  # under dasd-run: this kernel dies with the runner
    overrides = list(overrides or [])
    root = find_project_root()
    source = _notebook_path(params_file, root) if str(params_file) else None
    if not str(run_dir):
        params = load_params(source, overrides)
        pipeline.check_run(params)
        folder = Path(params.run.reports_dir) / INTERACTIVE_ID
        if not folder.is_absolute():  # outside a project: relative to the kernel's folder
            folder = folder.resolve()
        params = _with_run_id(params, INTERACTIVE_ID)
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / "params.yaml").is_file():
            changed = params_diff(load_params(folder / "params.yaml"), params)
            if changed:
                print(f"note: {folder} held outputs made with other parameters "
                      f"({'; '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}); "
                      f"a trained stage they change is refused with the keys named, until it "
                      f"is retrained (parameter restart = True in notebooks 01-03)")
        return _record(params, folder, root or Path.cwd())

    folder = _notebook_path(run_dir, root)
    recorded = folder / "params.yaml"
    if recorded.is_file():
        params = load_params(recorded)
        given = source or recorded
        if given != recorded or overrides:
            asked = load_params(given, overrides)
            changed = params_diff(params, asked)
            if changed:
                raise ConfigError(
                    f"{recorded} already fixes this run's parameters; "
                    f"params_file={str(params_file)!r} with overrides {overrides} would change "
                    f"{'; '.join(changed)}. Use a new "
                    f"run_dir, or params_file={str(recorded)!r} and no overrides.")
        for sub in RUN_SUBDIRS:
            (folder / sub).mkdir(parents=True, exist_ok=True)
        keep_report_fresh(folder)
        return Run(params, folder)
    params = load_params(source, overrides)
    folder.mkdir(parents=True, exist_ok=True)
    return _record(_with_run_id(params, folder.name), folder, root or Path.cwd())


def _notebook_path(path: str | Path, root: Path | None) -> Path:
    """A path given as a notebook parameter: relative means the project root (the same
    wherever the kernel runs: notebooks/, a run's notebooks/ copy, or under dasd-run);
    outside a project, the kernel's folder. A path that exists only relative to the
    kernel's folder (the older '../params/x.yaml' form in notebooks/) is taken as it is."""
    p = Path(path).expanduser()
    if p.is_absolute() or root is None or (not (root / p).exists() and p.exists()):
        return p.resolve()
    return (root / p).resolve()


def _record(params: Params, folder: Path, root: Path) -> Run:
    save_params(params, folder / "params.yaml")
    env = collect_env(root) | {"seeds": seeds_used(params)}
    atomic_write(folder / "env.json", json.dumps(env, indent=2) + "\n")
    for sub in RUN_SUBDIRS:
        (folder / sub).mkdir(exist_ok=True)
    keep_report_fresh(folder)
    return Run(params, folder)


# ----------------------------------------------------------------------------- training outside the notebooks

def train_main(argv: list[str] | None = None) -> int:
    """Train one stage of a run outside the notebooks, e.g. on several GPUs:

        accelerate launch --multi_gpu --num_processes 4 -m dasd_lib.train \\
            --params params/paper_multi30k.yaml --run-dir reports/m30k --stage cla

    (--multi_gpu on CPU too: without it accelerate starts one process, and a warning says
    so.) The same functions as notebooks 01-03 run; each process trains on its own slice
    of the global batch and the main process alone writes the shared files (lock,
    parameters, VLP and tokenizers, feature cache, checkpoints, loss files). It holds the
    run folder's lock (RunLock) while it trains, so it never trains into a folder a
    dasd-run is using."""
    parser = argparse.ArgumentParser(prog="python -m dasd_lib.train", description=train_main.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--stage", required=True, help="vlp, cla (nlt) or cma (le)")
    parser.add_argument("-p", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--restart", action="store_true",
                        help="train the stage from scratch even if the run folder holds one "
                             "made from other inputs (otherwise refused, naming what differs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    run_dir = Path(args.run_dir)
    # the run id is the folder's name, so `dasd-run --run-id <name> --resume` continues it
    params = load_params(args.params, [*args.overrides, f"run.run_id={run_dir.name}"])
    train.warn_if_single_launch()
    # under `accelerate launch --multi_gpu` this starts the process group now, so that the
    # main process alone takes the lock and writes the run folder's shared files
    train.make_accelerator(params.run.device)
    held: list[RunLock] = []

    def take_lock() -> str | None:  # main process only: one holder, one params.yaml
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            held.append(RunLock(run_dir).acquire(
                shlex.join(["python -m dasd_lib.train", *(argv or sys.argv[1:])])))
        except RunLockedError as err:
            return str(err)
        if not (run_dir / "params.yaml").exists():
            save_params(params, run_dir / "params.yaml")
        return None

    refused = train.on_main(take_lock)
    if refused:
        print(f"python -m dasd_lib.train: {refused}", file=sys.stderr)
        return 2
    try:
        stage = canonical_stage(args.stage)
        run = Run(params, run_dir)
        if stage == "vlp":
            source_vlp(run, restart=args.restart)
        else:
            summary = pipeline.train_stage_all(run, stage, restart=args.restart)
            if train.is_main_process():
                print(summary.to_string())
    finally:
        for lock in held:
            lock.release()
    return 0


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dasd-run", description="Run the workbook's notebooks in order with papermill "
        "into reports/<run_id>/ and record the parameters, versions and timings.")
    ap.add_argument("--params", default="params/default.yaml",
                    help="parameter file (default: %(default)s)")
    ap.add_argument("--run-id", default=None,
                    help="run folder name (default: run.run_id, else a timestamp + params stem)")
    ap.add_argument("--only", action="append", default=None, metavar="NN[,NN...]",
                    help="run only these notebooks, by number or name prefix (repeatable)")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one parameter, e.g. -p cla.steps=5 (value read as YAML)")
    ap.add_argument("--notebooks-dir", default="notebooks", help="default: %(default)s")
    ap.add_argument("--reports-dir", default=None,
                    help="where run folders go (default: run.reports_dir, i.e. reports)")
    ap.add_argument("--resume", action="store_true",
                    help="re-execute the selected notebooks in an existing run folder")
    ap.add_argument("--restart-stage", action="append", default=None, metavar="STAGE",
                    help="retrain this stage (vlp, cla or cma) and every later one from scratch "
                         "in an existing run folder; the parameters may differ from its params.yaml")
    ap.add_argument("--log-output", action="store_true",
                    help="echo the notebooks' cell outputs to the terminal")
    ap.add_argument("--heartbeat", type=float, default=30.0, metavar="SECONDS",
                    help="print the running notebook's progress every SECONDS (default 30; 0: never)")
    return ap


def resume_command(argv: Sequence[str], run_id: str, only: str) -> str:
    """The dasd-run command line that continues a run: the same arguments (parameter file,
    overrides, folders) with --run-id, --resume and --only set; pasteable into a shell."""
    keep, skip_next = [], False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--run-id", "--only"):
            skip_next = "=" not in arg
            continue
        if name in ("--resume", "--restart-stage"):
            skip_next = name == "--restart-stage" and "=" not in arg
            continue
        keep.append(arg)
    return shlex.join(["dasd-run", *keep, "--run-id", run_id, "--resume", "--only", only])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        run_dir = run_notebooks(args.params, run_id=args.run_id, only=args.only,
                                overrides=args.param, notebooks_dir=args.notebooks_dir,
                                reports_dir=args.reports_dir, resume=args.resume,
                                log_output=args.log_output, progress=sys.stderr.isatty(),
                                command=["dasd-run", *argv], restart_stages=args.restart_stage,
                                heartbeat_s=args.heartbeat)
    except NotebookFailed as err:
        print(f"dasd-run: {err}", file=sys.stderr)
        if err.run_dir is not None:
            only = ",".join(getattr(err, "remaining", None) or [err.notebook[:2]])
            print(f"dasd-run: run folder {err.run_dir} (see run.log); after a fix, rerun with\n"
                  f"  {resume_command(argv, err.run_dir.name, only)}", file=sys.stderr)
        return 1
    except OSError as err:  # ENOSPC, EACCES, EROFS in the runner's own writes or papermill's
        where = err.filename or "a file of the run folder"
        reason = err.strerror or str(err)
        print(f"dasd-run: cannot write {where}: {reason}; free space or fix the permissions, then "
              f"rerun with --resume (finished notebooks are kept)", file=sys.stderr)
        return 3
    except (RunError, ConfigError) as err:
        print(f"dasd-run: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dasd-run: interrupted", file=sys.stderr)
        return 130
    print(f"dasd-run: finished; run folder {run_dir}")
    report = run_dir / "report.html"
    if report.is_file():
        print(f"dasd-run: report {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
