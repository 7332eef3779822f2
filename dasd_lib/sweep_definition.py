"""A sweep's definition and its bookkeeping (the command: dasd_lib.sweep): the
grid and its points (Sweep, Point, parse_grid, linked axes), sweep files (load_sweep), the
sweep folder (sweep_folder), its recorded definition (sweep.yaml), its status file
(sweep.json) and which notebooks a point still has to run."""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import re
import threading
from pathlib import Path
from typing import Any, Sequence

import yaml

from .compare import value_text
from .config import load_params, read_yaml_mapping
from .storage import atomic_write
from .run import RUN_ID_RE, RunError, _now, _resolve_input, find_project_root, params_diff

SWEEP_KEYS = ("params", "overrides", "grid", "notebooks", "only", "sweep_id")
SWEEPS_SUBDIR = "sweeps"
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
    values = read_yaml_mapping(path, SweepError, f"sweep file {path} does not exist; see params/sweeps/",
                               f"expected a mapping with keys {', '.join(SWEEP_KEYS)}")
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


def _previous_compare(sweep_dir: Path) -> dict[str, Any] | None:
    """The comparison entry of the sweep's last sweep.json."""
    try:
        entry = json.loads((sweep_dir / "sweep.json").read_text(encoding="utf-8")).get("compare")
    except (OSError, ValueError, AttributeError):
        return None
    return entry if isinstance(entry, dict) else None
