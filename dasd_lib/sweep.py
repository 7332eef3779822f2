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
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import itertools
import json
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import yaml

from . import run as runner
from .compare import sweep_run_dirs, value_text
from .config import ConfigError, load_params
from .storage import atomic_write
from .run import (RUN_ID_RE, RunError, _now, _resolve_input, find_project_root,
                  params_diff)

SWEEP_KEYS = ("params", "overrides", "grid", "notebooks", "only", "sweep_id")
SWEEPS_SUBDIR = "sweeps"
CORPUS_SECTIONS = ("data", "web")  # parameters of the generated corpora, which points share
MAX_NAME = 100  # point folder names longer than this are cut and end in a hash of the overrides


class SweepError(RunError):
    """A sweep cannot start; the message says why."""


# ----------------------------------------------------------------------------- definition

@dataclasses.dataclass(frozen=True)
class Point:
    name: str                   # the run folder's name (a valid run id)
    overrides: tuple[str, ...]  # 'section.key=value' per grid axis


@dataclasses.dataclass
class Sweep:
    params: Path                              # the base parameter file
    grid: dict[str, list[Any]]                # key -> values, axes in order
    overrides: list[str] = dataclasses.field(default_factory=list)  # fixed, every point
    sweep_id: str = ""
    notebooks: Path = Path("notebooks")
    only: Sequence[str] | str | None = None  # notebooks of each point, as dasd-run --only

    def points(self) -> list[Point]:
        """One point per combination of grid values, the first axis varying slowest."""
        if not self.grid:
            raise SweepError("a sweep needs at least one grid axis (--grid section.key=v1,v2)")
        fixed = {o.split("=", 1)[0].strip() for o in self.overrides}
        both = sorted(fixed & set(self.swept_keys()))
        if both:
            raise SweepError(f"{', '.join(both)}: both a fixed override and a grid axis")
        points = [grid_point(dict(item for axis, value in zip(self.grid, values)
                                  for item in linked_values(axis, value)))
                  for values in itertools.product(*self.grid.values())]
        names = [p.name for p in points]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise SweepError(f"grid values that give the same point name ({', '.join(clash)}): "
                             f"make them differ in letters or digits")
        return points

    def swept_keys(self) -> list[str]:
        """Every section.key the grid sets (a linked axis 'a+b' sets a and b)."""
        return [k for axis in self.grid for k in axis.split(LINK)]

    def definition(self) -> dict[str, Any]:
        """What identifies the sweep: resuming with another definition is refused. The base
        file is named relative to the project root, so a moved checkout still resumes."""
        root = self.notebooks.parent
        params = self.params.relative_to(root) if self.params.is_relative_to(root) else self.params
        return {"params": params.as_posix(), "overrides": list(self.overrides),
                "grid": {k: list(v) for k, v in self.grid.items()}}


LINK = "+"  # 'cla.steps+cma.steps': [[40, 24], [200, 120]] moves both keys together


def linked_values(axis: str, value: Any) -> list[tuple[str, Any]]:
    """(key, value) pairs one grid value sets: itself for a plain axis; for a linked axis
    'a+b' a list [value of a, value of b]."""
    keys = [k.strip() for k in axis.split(LINK)]
    if len(keys) == 1:
        return [(axis, value)]
    if not (isinstance(value, list) and len(value) == len(keys)):
        raise SweepError(f"grid axis {axis!r}: every value must list {len(keys)} values, one per "
                         f"key ({', '.join(keys)}), got {value_text(value)}")
    return list(zip(keys, value))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "empty"


def grid_point(values: dict[str, Any]) -> Point:
    """The point setting each key to its value; named 'key-value' joined by '__', cut to
    MAX_NAME characters (plus a hash) so that it stays a valid folder name."""
    overrides = tuple(f"{k}={value_text(v)}" for k, v in values.items())
    name = "__".join(f"{k}-{_slug(value_text(v))}" for k, v in values.items())
    if len(name) > MAX_NAME:
        digest = hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME - len(digest) - 1]}-{digest}"
    if not RUN_ID_RE.match(name):
        raise SweepError(f"grid key {next(iter(values))!r} gives an invalid run name {name!r}")
    return Point(name, overrides)


def parse_grid(options: Sequence[str]) -> dict[str, list[Any]]:
    """['cla.steps=200,1000', 'run.seeds=[0],[1]'] -> {'cla.steps': [200, 1000],
    'run.seeds': [[0], [1]]}: the values are read as one YAML flow sequence, so commas
    inside brackets or quotes stay in their value."""
    grid: dict[str, list[Any]] = {}
    for option in options:
        key, sep, text = option.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise SweepError(f"--grid {option!r}: expected section.key=value1,value2,...")
        try:
            values = yaml.safe_load(f"[{text}]")
        except yaml.YAMLError as err:
            raise SweepError(f"--grid {option!r}: the values are not valid YAML ({err})") from err
        if not isinstance(values, list):
            raise SweepError(f"--grid {option!r}: expected section.key=value1,value2,...")
        if key in grid:
            raise SweepError(f"--grid {key} given twice; list all its values in one --grid")
        grid[key] = values
    return grid


def load_sweep(path: str | Path) -> Sweep:
    """A sweep file: params (base file), overrides (list of 'section.key=value'), grid
    (mapping key -> list of values), optional notebooks, only and sweep_id (default: the
    file name). Relative paths: from the working directory, else the project root."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist; see params/sweeps/")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(values, dict):
        raise SweepError(f"{path}: expected a mapping with keys {', '.join(SWEEP_KEYS)}")
    for key in values:
        if key not in SWEEP_KEYS:
            close = difflib.get_close_matches(str(key), SWEEP_KEYS, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(SWEEP_KEYS)}"
            raise SweepError(f"{path}: unknown key '{key}'; {hint}")
    if not isinstance(values.get("params"), str):
        raise SweepError(f"{path}: 'params' must name the base parameter file")
    overrides = values.get("overrides") or []
    if not (isinstance(overrides, list) and all(isinstance(o, str) and "=" in o for o in overrides)):
        raise SweepError(f"{path}: 'overrides' must be a list of 'section.key=value' strings")
    grid = values.get("grid") or {}
    if not (isinstance(grid, dict) and grid
            and all(isinstance(v, list) and v for v in grid.values())):
        raise SweepError(f"{path}: 'grid' must map each section.key to a non-empty list of values")
    only = values.get("only")
    root = find_project_root(path.parent)
    return Sweep(params=_resolve_input(values["params"], root), grid=grid, overrides=overrides,
                 sweep_id=str(values.get("sweep_id") or path.stem),
                 notebooks=_resolve_input(values.get("notebooks", "notebooks"), root),
                 only=[str(o) for o in only] if isinstance(only, list) else only)


def default_sweep_id(sweep: Sweep) -> str:
    """The base file's name and the swept keys: the same command resumes the same sweep."""
    return "__".join([sweep.params.stem, *map(_slug, sweep.grid)])


def sweep_folder(sweep: Sweep, reports_dir: str | Path | None = None) -> Path:
    """<reports_dir>/sweeps/<sweep_id>; reports_dir None: the base parameters'
    run.reports_dir, relative to the project root."""
    if not RUN_ID_RE.match(sweep.sweep_id):
        raise SweepError(f"sweep id '{sweep.sweep_id}': use letters, digits, '.', '_' and '-'")
    if reports_dir is None:
        reports_dir = sweep.notebooks.parent / load_params(sweep.params, sweep.overrides).run.reports_dir
    return Path(reports_dir).resolve() / SWEEPS_SUBDIR / sweep.sweep_id


# ----------------------------------------------------------------------------- state

def remaining_notebooks(run_dir: Path, params, notebooks: Sequence[Path]) -> list[Path]:
    """The notebooks a point still has to run: all for a new run folder, none when every
    one finished ("ok" in timings.json), else from the first that did not finish on (the
    later ones read what it writes). Refuses a folder made with other parameters."""
    if not (run_dir / "params.yaml").is_file():
        return list(notebooks)
    changed = params_diff(load_params(run_dir / "params.yaml"), params)
    if changed:
        raise SweepError(f"{run_dir} holds a run with other parameters ({'; '.join(changed)}): "
                         f"the base file or the defaults changed since the sweep started; use "
                         f"another --sweep-id")
    try:
        done = json.loads((run_dir / "timings.json").read_text(encoding="utf-8"))["notebooks"]
    except (OSError, ValueError, KeyError, TypeError):
        done = {}
    status = [(done.get(nb.name) or {}).get("status") for nb in notebooks]
    first = next((i for i, s in enumerate(status) if s != "ok"), len(notebooks))
    return list(notebooks[first:])


class _Status:
    """sweep.json: the sweep's status and, per point, its overrides, status (pending,
    running, completed, skipped: finished before, failed), seconds and error."""

    def __init__(self, sweep_dir: Path, sweep_id: str, points: Sequence[Point], workers: int):
        self.path = sweep_dir / "sweep.json"
        self._lock = threading.Lock()  # points finish in worker threads
        self.data: dict[str, Any] = {
            "sweep_id": sweep_id, "status": "running", "started": _now(), "finished": None,
            "workers": workers, "compare": None,
            "points": {p.name: {"overrides": list(p.overrides), "run_dir": f"runs/{p.name}",
                                "status": "pending"} for p in points}}
        self.save()

    def point(self, name: str, **entry: Any) -> None:
        with self._lock:
            self.data["points"][name].update(entry)
            self.save()

    def start(self, name: str) -> None:
        with self._lock:
            entry = self.data["points"][name]
            entry.update(status="running", error=None)
            entry.setdefault("started", _now())
            self.save()

    def add_seconds(self, name: str, seconds: float, **entry: Any) -> None:
        """A point's time in all its calls (the first notebook may run apart from the rest)."""
        with self._lock:
            point = self.data["points"][name]
            point.update(entry, seconds=round(point.get("seconds", 0) + seconds, 2))
            self.save()

    def update(self, **entry: Any) -> None:
        with self._lock:
            self.data.update(entry)
            self.save()

    def save(self) -> None:
        atomic_write(self.path, json.dumps(self.data, indent=2) + "\n")


@dataclasses.dataclass
class SweepOutcome:
    sweep_dir: Path
    status: dict[str, str]            # point name -> completed / skipped / failed
    errors: dict[str, str]            # point name -> error message
    compare_html: Path | None = None
    compare_error: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors and not self.compare_error


# ----------------------------------------------------------------------------- running

def _check_definition(sweep_dir: Path, sweep: Sweep, points: Sequence[Point]) -> None:
    """Record sweep.yaml for a new sweep; refuse one whose recorded definition differs."""
    path = sweep_dir / "sweep.yaml"
    definition = sweep.definition()
    if path.is_file():
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        changed = [k for k in definition if old.get(k) != definition[k]]
        if changed:
            what = "; ".join(f"{k}: {old.get(k)!r} -> {definition[k]!r}" for k in changed)
            raise SweepError(f"sweep {sweep.sweep_id} in {sweep_dir} was defined otherwise "
                             f"({what}); resume it unchanged or choose another --sweep-id")
    record = {"sweep_id": sweep.sweep_id, **definition, "notebooks": str(sweep.notebooks),
              "only": sweep.only,
              "points": [{"name": p.name, "overrides": list(p.overrides)} for p in points]}
    atomic_write(path, yaml.safe_dump(record, sort_keys=False, allow_unicode=True))


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


def _previous_compare(sweep_dir: Path) -> dict[str, Any] | None:
    """The comparison entry of the sweep's last sweep.json."""
    try:
        entry = json.loads((sweep_dir / "sweep.json").read_text(encoding="utf-8")).get("compare")
    except (OSError, ValueError, AttributeError):
        return None
    return entry if isinstance(entry, dict) else None


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
