"""Sweeps: `dasd-sweep` makes one dasd-run run per point of a parameter grid, then compares
the runs with notebooks/07_compare_runs.ipynb.

    dasd-sweep --params params/default.yaml --grid cla.lambda_adv=0.001,0.01,0.1 \\
               [--grid cla.steps=200,1000] [-p run.settings=[finetune]] [--sweep-id adv] \\
               [--workers 2] [--only 00,01,...] [--reports-dir reports]
    dasd-sweep params/sweeps/adv_weight.yaml [--workers 2]
    dasd-sweep params/sweeps/adv_weight.yaml --compare-only      # rebuild the comparison
    dasd-sweep --sweep-id mine --runs reports/run-a reports/run-b  # compare any run folders

A sweep is a base parameter file, fixed overrides (-p, as in dasd-run) and grid axes
(--grid key=v1,v2,...: each value read as YAML, commas inside brackets kept, so
`--grid "run.seeds=[0],[1],[2]"` is three points); its points are the cartesian product of
the axes. A sweep file (params/sweeps/*.yaml) holds the same: `params`, `overrides`, `grid`
and optionally `notebooks`, `only`, `sweep_id` (default: the file's name).

It lives in <run.reports_dir>/sweeps/<sweep_id>/ (reports/README.md): sweep.yaml (the
definition and its points), sweep.json (status per point), runs/<point>/ (each an ordinary
run folder made by dasd_lib.run.run_notebooks, named from the point's overrides, e.g.
`cla.lambda_adv-0.1__cla.steps-200`), shared/ (every point's run.shared_dir: the VLP and
frozen-feature caches that points with the same VLP share), and the comparison: the
executed 07_compare_runs.ipynb, compare.html, compare_*.csv and figures/.

Invoked again, a sweep resumes: finished points are skipped, a point that stopped (failed,
killed) continues from its first notebook that did not finish. A sweep folder keeps its
definition: the same sweep id with another base file, overrides or grid is refused.
The definition, its points and the folder's bookkeeping: dasd_lib.sweep_definition.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from . import run as runner
from .compare import sweep_run_dirs
from .config import ConfigError, load_params
from .storage import atomic_write
from .run import RunError, _now, _resolve_input, find_project_root
from .sweep_definition import (Point, Sweep, SweepError, SweepOutcome, _check_definition,
                               _previous_compare, _Status, default_sweep_id, load_sweep, parse_grid,
                               remaining_notebooks, sweep_folder)

CORPUS_SECTIONS = ("data", "web")  # parameters of the generated corpora, which points share


# ----------------------------------------------------------------------------- running

def run_sweep(sweep: Sweep, *, reports_dir: str | Path | None = None, workers: int = 1,
              compare: bool = True, log_output: bool = False,
              command: Sequence[str] | None = None) -> SweepOutcome:
    """Run every point of `sweep` that is not finished (up to `workers` at a time), then
    the comparison (when a point ran or the last comparison is missing or failed).

    Everything is checked before anything runs: each point's parameters (ConfigError) and
    the sweep folder's definition and runs (SweepError). A failing point is recorded and
    the others go on; SweepOutcome.ok is False then."""
    from filelock import FileLock, Timeout

    if workers < 1:
        raise SweepError(f"--workers {workers}: must be at least 1")
    sweep = dataclasses.replace(sweep, sweep_id=sweep.sweep_id or default_sweep_id(sweep))
    points = sweep.points()
    swept = sweep.swept_keys()
    # a corpus parameter may run in parallel when its folder name moves with it
    corpus_keys = [k for k in swept if k.split(".")[0] in CORPUS_SECTIONS
                   and f"{k.split('.')[0]}.name" not in swept]
    if workers > 1 and corpus_keys:
        raise SweepError(f"--workers {workers} with {', '.join(corpus_keys)} swept: the points' "
                         f"corpora are generated into one folder (data.root/data.name) and would "
                         f"replace each other while other points read them; use --workers 1, or "
                         f"move the folder with them (a linked axis "
                         f"'{corpus_keys[0]}+{corpus_keys[0].split('.')[0]}.name')")
    sweep_dir = sweep_folder(sweep, reports_dir)
    # the sweep's own shared/ folder, unless the parameters name one (several sweeps of a
    # study then share one VLP per fingerprint; relative: from the project root)
    named = load_params(sweep.params, sweep.overrides).run.shared_dir
    shared = (sweep.notebooks.parent / named).resolve() if named else sweep_dir / "shared"
    overrides = {p.name: [*sweep.overrides, *p.overrides, f"run.shared_dir={shared}"]
                 for p in points}
    params = {name: runner._with_run_id(load_params(sweep.params, o), name)  # bad keys fail here
              for name, o in overrides.items()}
    for point_params in params.values():
        runner.pipeline.check_run(point_params)
    notebooks = runner.select_notebooks(runner.find_notebooks(sweep.notebooks), sweep.only)
    command = list(command) if command is not None else ["dasd-sweep", *sys.argv[1:]]

    sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(sweep_dir / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SweepError(f"sweep {sweep_dir} is in use by another dasd-sweep") from None
    try:
        _check_definition(sweep_dir, sweep, points)
        todo = {p.name: remaining_notebooks(sweep_dir / "runs" / p.name, params[p.name], notebooks)
                for p in points}
        previous = _previous_compare(sweep_dir)
        status = _Status(sweep_dir, sweep.sweep_id, points, workers)
        status.update(compare=previous)  # kept when no point runs and the comparison stands
        outcome = SweepOutcome(sweep_dir, {}, {})
        for p in points:
            if not todo[p.name]:
                status.point(p.name, status="skipped")
                outcome.status[p.name] = "skipped"
                print(f"dasd-sweep: {p.name}: finished before, skipped", flush=True)

        def run_point(p: Point, only: Sequence[Path]) -> bool:
            status.start(p.name)
            t0 = time.perf_counter()
            try:
                runner.run_notebooks(sweep.params, run_id=p.name, only=[nb.name for nb in only],
                                     overrides=overrides[p.name], notebooks_dir=sweep.notebooks,
                                     reports_dir=sweep_dir / "runs", resume=True,
                                     log_output=log_output, command=command)
            except Exception as err:  # recorded; the other points go on
                message = f"{type(err).__name__}: {err}"
                status.add_seconds(p.name, time.perf_counter() - t0, status="failed", error=message)
                outcome.status[p.name], outcome.errors[p.name] = "failed", message
                print(f"dasd-sweep: {p.name} FAILED: {message}", file=sys.stderr, flush=True)
                return False
            finished = list(only) == todo[p.name]
            status.add_seconds(p.name, time.perf_counter() - t0,
                               status="completed" if finished else "running")
            if finished:
                outcome.status[p.name] = "completed"
            return True

        pending = [p for p in points if todo[p.name]]
        ran = bool(pending)
        try:
            if workers > 1 and len(pending) > 1:
                # the first point's first notebook runs alone: it makes what every point reads
                # (the corpora) once, so parallel points never race to create it
                first = pending[0]
                if run_point(first, todo[first.name][:1]):
                    todo[first.name] = todo[first.name][1:]
                pending = [p for p in pending if todo[p.name] and p.name not in outcome.errors]
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(run_point, p, todo[p.name]) for p in pending]
                try:
                    for future in futures:
                        future.result()
                except KeyboardInterrupt:  # start no further point; running ones end with their kernels
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
        except KeyboardInterrupt:
            status.update(status="interrupted", finished=_now())
            raise

        fresh = (previous or {}).get("status") == "ok" and (sweep_dir / "compare.html").is_file()
        if compare and (ran or not fresh):
            _compare_into(outcome, status, sweep_dir, sweep_run_dirs(sweep_dir), sweep.notebooks)
        status.update(status="completed" if outcome.ok else "failed", finished=_now())
        return outcome
    finally:
        lock.release()


def _compare_into(outcome: SweepOutcome, status: _Status | None, out_dir: Path,
                  run_dirs: Sequence[Path], notebooks_dir: Path) -> None:
    t0 = time.perf_counter()
    print(f"dasd-sweep: comparing {len(run_dirs)} runs into {out_dir}", flush=True)
    try:
        outcome.compare_html = compare_runs(out_dir, run_dirs, notebooks_dir)
        entry = {"status": "ok", "html": outcome.compare_html.name}
    except Exception as err:  # recorded and reported; the runs themselves stand
        outcome.compare_error = f"{type(err).__name__}: {err}"
        entry = {"status": "failed", "error": outcome.compare_error}
    if status is not None:
        status.update(compare={**entry, "seconds": round(time.perf_counter() - t0, 2)})


def compare_runs(out_dir: str | Path, run_dirs: Sequence[str | Path],
                 notebooks_dir: str | Path = "notebooks") -> Path:
    """Execute notebooks/07_compare_runs.ipynb with papermill into out_dir (parameters
    sweep_dir=out_dir, run_dirs) and export it as out_dir/compare.html without code;
    return the HTML's path. Raises NotebookFailed naming the cell."""
    notebooks_dir = Path(notebooks_dir).resolve()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    src = runner.find_compare_notebook(notebooks_dir)
    dst = out_dir / src.name
    runner.execute_notebook(src, dst, cwd=notebooks_dir.parent,
                            parameters={"sweep_dir": str(out_dir),
                                        "run_dirs": [str(Path(p).resolve()) for p in run_dirs]})
    return export_html(dst, out_dir / "compare.html", f"DASD comparison {out_dir.name}")


def export_html(notebook: Path, out: Path, title: str) -> Path:
    """An executed notebook as HTML with its outputs and without code (as report.html)."""
    import nbformat
    from nbconvert import HTMLExporter
    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    html, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4),
                                          resources={"metadata": {"name": title}})
    atomic_write(out, html)
    return out


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dasd-sweep", description="Run one dasd-run run per point of a parameter grid "
        "into <reports>/sweeps/<sweep_id>/runs/, then compare them (07_compare_runs, "
        "compare.html). Invoked again it resumes: finished points are skipped.")
    ap.add_argument("sweep_file", nargs="?", help="a sweep file, e.g. params/sweeps/adv_weight.yaml")
    ap.add_argument("--sweep", dest="sweep_option", metavar="FILE", help="the same as SWEEP_FILE")
    ap.add_argument("--params", default=None,
                    help="base parameter file (default: the sweep file's, else params/default.yaml)")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a fixed override for every point (value read as YAML; repeatable)")
    ap.add_argument("--grid", action="append", default=[], metavar="SECTION.KEY=V1,V2,...",
                    help="a grid axis (values read as YAML; repeatable: the cartesian product)")
    ap.add_argument("--sweep-id", default=None,
                    help="sweep folder name (default: the sweep file's name, else the base "
                         "file's name and the swept keys)")
    ap.add_argument("--workers", type=int, default=1, help="points run at a time (default: 1)")
    ap.add_argument("--only", action="append", default=None, metavar="NN[,NN...]",
                    help="run only these notebooks of each point (repeatable)")
    ap.add_argument("--notebooks-dir", default=None, help="default: notebooks")
    ap.add_argument("--reports-dir", default=None,
                    help="where sweeps/<sweep_id>/ goes (default: run.reports_dir, i.e. reports)")
    ap.add_argument("--compare-only", action="store_true",
                    help="only rebuild the comparison of the sweep's existing runs")
    ap.add_argument("--runs", nargs="+", default=None, metavar="RUN_DIR",
                    help="compare these run folders (no points run) into sweeps/<--sweep-id>/")
    ap.add_argument("--log-output", action="store_true",
                    help="echo the notebooks' cell outputs to the terminal")
    return ap


def sweep_from_args(args: argparse.Namespace) -> Sweep:
    """The sweep a command line describes: the sweep file (if any) with --params replacing
    its base file, -p and --grid added to its overrides and axes."""
    root = find_project_root()
    path = args.sweep_file or args.sweep_option
    if args.sweep_file and args.sweep_option:
        raise SweepError("give the sweep file once (positional or --sweep)")
    sweep = (load_sweep(_resolve_input(path, root)) if path else
             Sweep(params=_resolve_input("params/default.yaml", root), grid={},
                   notebooks=_resolve_input("notebooks", root)))
    extra = parse_grid(args.grid)
    twice = sorted(set(extra) & set(sweep.grid))
    if twice:
        raise SweepError(f"--grid {', '.join(twice)}: already an axis of {path}")
    return dataclasses.replace(
        sweep, grid={**sweep.grid, **extra}, overrides=[*sweep.overrides, *args.param],
        params=_resolve_input(args.params, root) if args.params else sweep.params,
        sweep_id=args.sweep_id or sweep.sweep_id,
        notebooks=_resolve_input(args.notebooks_dir, root) if args.notebooks_dir else sweep.notebooks,
        only=args.only if args.only is not None else sweep.only)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        sweep = sweep_from_args(args)
        if args.runs is not None or args.compare_only:
            if args.runs is not None and not args.sweep_id:
                raise SweepError("--runs needs --sweep-id: the folder the comparison goes to")
            sweep.sweep_id = sweep.sweep_id or default_sweep_id(sweep)
            out = sweep_folder(sweep, args.reports_dir)
            if args.runs is None and not out.is_dir():
                raise SweepError(f"no sweep folder {out}; run the sweep first")
            runs = ([_resolve_input(p, find_project_root()) for p in args.runs]
                    if args.runs is not None else sweep_run_dirs(out))
            outcome = SweepOutcome(out, {}, {})
            _compare_into(outcome, None, out, runs, sweep.notebooks)
        else:
            outcome = run_sweep(sweep, reports_dir=args.reports_dir, workers=args.workers,
                                log_output=args.log_output, command=["dasd-sweep", *argv])
    except (SweepError, RunError, ConfigError) as err:
        print(f"dasd-sweep: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dasd-sweep: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    for name, state in outcome.status.items():
        print(f"dasd-sweep: {state:9s} {name}")
    for name, error in outcome.errors.items():
        print(f"dasd-sweep: {name}: {error.splitlines()[0]} (see {outcome.sweep_dir}/runs/"
              f"{name}/run.log)", file=sys.stderr)
    if outcome.compare_error:
        print(f"dasd-sweep: comparison failed: {outcome.compare_error}", file=sys.stderr)
    elif outcome.compare_html is not None:
        print(f"dasd-sweep: comparison {outcome.compare_html}")
    print(f"dasd-sweep: sweep folder {outcome.sweep_dir}")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
