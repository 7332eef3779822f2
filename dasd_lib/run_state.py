"""A run folder's state and records, for the runner (dasd_lib.run): run.log and timings.json,
what a killed runner left behind, which parameters a resume may change (the first notebook
reading each key), which stages a restart retrains, and the folder of a generated run id."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Sequence

from .config import RUN_NAMING_KEYS, Params, canonical_stage
from .execution import RunError, RunLock, _now
from .storage import atomic_write

# training stages in order, and the notebook that trains each: restarting one restarts the
# later ones too, since each starts from the one before
STAGE_NOTEBOOKS = {"vlp": "01", "cla": "02", "cma": "03"}


def stages_to_restart(stages: Sequence[str] | None) -> list[str]:
    """The named stages (vlp, cla/nlt, cma/le) and every later one, in order."""
    order = list(STAGE_NOTEBOOKS)
    try:
        named = [canonical_stage(s.strip()) for item in stages or [] for s in str(item).split(",") if s.strip()]
    except ValueError as err:
        raise RunError(f"--restart-stage: {err}") from None
    if not named:
        return []
    return order[min(order.index(s) for s in named):]


# ----------------------------------------------------------------------------- small helpers

def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def params_diff(a: Params, b: Params, ignore: Sequence[str] = RUN_NAMING_KEYS) -> list[str]:
    """Keys whose values differ between two Params, as 'section.key: a -> b' lines."""
    fa, fb = _flatten(a.to_dict()), _flatten(b.to_dict())
    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in sorted(set(fa) | set(fb))
            if k not in ignore and fa.get(k) != fb.get(k)]


# the first notebook that reads each parameter (the longest matching prefix wins); a change
# can only affect that notebook and the later ones
FIRST_READER = {"data.": "00", "web.": "00", "model.": "01", "tiny.": "01", "hf.": "01", "vlp.": "01",
                "run.": "01",
                "cla.": "02", "cma.": "03", "explore.": "05",
                **{f"run.{k}": "04" for k in ("eval_batch_size", "eval_split", "kfold", "kfold_langs",
                                              "eval_variants", "compare_to", "bootstrap_samples",
                                              "bootstrap_seed", "i2t_protocol")}}


def first_reader(key: str) -> str:
    """The first notebook reading `key` (section.name); "00" for anything unmapped."""
    matches = [p for p in FIRST_READER if key.startswith(p) or key == p.rstrip(".")]
    return FIRST_READER[max(matches, key=len)] if matches else "00"


def stale_finished_notebooks(changed: Sequence[str], finished: Sequence[str],
                             selected: Sequence[str]) -> list[str]:
    """Finished notebooks (numbers) that read a changed parameter ('key: a -> b' lines of
    params_diff) but are not among the `selected` ones this resume executes: their outputs
    would no longer match params.yaml. Empty: the resume may change these parameters."""
    if not changed:
        return []
    first = min(first_reader(line.split(":", 1)[0]) for line in changed)
    return sorted(n for n in finished if n >= first and n not in selected)


def _finished_notebooks(run_dir: Path) -> list[str]:
    """Numbers of the notebooks timings.json records as ok."""
    try:
        books = json.loads((run_dir / "timings.json").read_text(encoding="utf-8")).get("notebooks", {})
    except (OSError, ValueError, AttributeError):
        return []
    return [name[:2] for name, entry in books.items() if isinstance(entry, dict) and entry.get("status") == "ok"]


def _with_run_id(params: Params, run_id: str) -> Params:
    return dataclasses.replace(params, run=dataclasses.replace(params.run, run_id=run_id))


# ----------------------------------------------------------------------------- run records

class _Records:
    """run.log (appended, one line per event) and timings.json (rewritten after each step)."""

    def __init__(self, run_dir: Path, run_id: str, resume: bool):
        self.log_path, self.timings_path = run_dir / "run.log", run_dir / "timings.json"
        old = {}
        if resume and self.timings_path.is_file():
            try:
                old = json.loads(self.timings_path.read_text(encoding="utf-8"))
            except ValueError:
                old = {}
        self.timings: dict[str, Any] = {
            "run_id": run_id, "status": "running", "started": _now(), "finished": None,
            "notebooks": old.get("notebooks", {}) if isinstance(old, dict) else {},
        }
        self.save()

    def log(self, text: str) -> None:
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(f"{_now()} {text}\n")

    def notebook(self, name: str, **entry: Any) -> None:
        self.timings["notebooks"][name] = entry
        self.save()

    def finish(self, status: str) -> None:
        self.timings.update(status=status, finished=_now())
        self.save()

    def save(self) -> None:
        atomic_write(self.timings_path, json.dumps(self.timings, indent=2) + "\n")


def _run_status(run_dir: Path) -> str | None:
    """The status of a previous run in `run_dir`, or None when it holds none."""
    timings = run_dir / "timings.json"
    if timings.is_file():
        try:
            return str(json.loads(timings.read_text(encoding="utf-8")).get("status", "unknown"))
        except (ValueError, AttributeError):
            return "unknown"
    return "unknown" if (run_dir / "params.yaml").is_file() else None


def _found_after_a_kill(run_dir: Path, lock: RunLock) -> list[str]:
    """What a runner that was killed (SIGKILL, power loss) left in `run_dir`, now that this
    one holds its lock: the holder's name in .lock.json, and timings.json still saying
    "running". The latter is rewritten to "interrupted" (no runner is in the folder, so none
    is running). Each finding is printed and returned, for run.log."""
    found = []
    if (owner := lock.reclaimed_from) is not None:
        found.append(f"reclaimed the lock left by pid {owner.get('pid')} on {owner.get('host')} "
                     f"(started {owner.get('started')}), which no longer runs")
    try:
        timings = json.loads((run_dir / "timings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        timings = None
    if isinstance(timings, dict) and timings.get("status") == "running":
        books = timings.get("notebooks", {})
        cut = [n for n, e in books.items() if isinstance(e, dict) and e.get("status") == "running"]
        for name in cut:
            books[name]["status"] = "interrupted"
        timings.update(status="interrupted", finished=None)
        atomic_write(run_dir / "timings.json", json.dumps(timings, indent=2) + "\n")
        found.append("the previous run ended without a word (killed?) while "
                     f"{', '.join(cut) or 'no notebook'} ran; marked interrupted in timings.json")
    for line in found:
        print(f"dasd-run: {line}", flush=True)
    return found


def default_run_id(params_path: str | Path) -> str:
    """20261128-073512-default: local time, then the parameter file's stem."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{Path(params_path).stem}"


def _claim_auto_folder(reports_dir: Path, base: str) -> tuple[str, Path]:
    """A fresh folder for a generated run id; a second run in the same second gets -2, -3..."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        run_id = base if n == 1 else f"{base}-{n}"
        try:
            (reports_dir / run_id).mkdir()  # atomic: exactly one caller creates it
            return run_id, reports_dir / run_id
        except FileExistsError:
            continue
    raise RunError(f"could not find a free run id like {base} in {reports_dir}")
