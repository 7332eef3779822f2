"""Cross-run comparison behind notebook 07_compare_runs: load several run folders (a sweep's
points, or any list), find the parameters that differ between them, and show per method
the SumR and the probe accuracies against each swept parameter, with seed intervals.

A run folder is read for params.yaml, timings.json, results.csv, probes.csv and, where the
run made one, comparisons.csv. Swept values are compared and shown as YAML flow text
(`0.1`, `[0]`, `{finetune: [dasd]}`); numeric ones are plotted on a numeric axis, the rest
as categories.

Seeds: a point's SumR is first averaged over the target languages per seed (the oracle:
English), then pooled over the seeds of every run that differs from it only in `run.seeds`
(a seeds sweep makes one run per seed): mean and a t-interval over those seeds.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

from .config import (INTERACTIVE_ID, RUN_NAMING_KEYS, SOURCE_LANG, RunConfig, find_project_root,
                     load_params)
from .metrics import seed_interval
from .evaluate import summary_table
from .plots import _empty, _palette

SEEDS_KEY = "run.seeds"
RUN_COLUMN = "run"
# keys that differ between runs without changing what they compute
IGNORED_KEYS = (*RUN_NAMING_KEYS, "run.shared_dir")
CONFIDENCE = 0.95
# a numeric axis spanning at least this ratio (max / min, all positive) is drawn in log scale
LOG_SCALE_RATIO = 10.0
PANELS_PER_ROW = 3
COMPARISON_AVERAGE = "avg"  # comparisons.csv's lang of the average over target languages


# ----------------------------------------------------------------------------- values

def value_text(value: Any) -> str:
    """A parameter value as YAML flow text, as written on the command line: 0.1, [0],
    {finetune: [floor, dasd]}; reading it back with yaml.safe_load gives `value`."""
    text = yaml.safe_dump([value], default_flow_style=True, sort_keys=False, width=sys.maxsize)
    return text.strip()[1:-1]  # dumped inside a list so that scalars get no '...' end marker


# ----------------------------------------------------------------------------- run folders

def comparison_inputs(sweep_dir: str | Path = "",
                      run_dirs: Sequence[str | Path] = ()) -> tuple[Path, list[Path]]:
    """Notebook 07's first call: (output folder, run folders to compare).

    run_dirs given: those, in that order; outputs go to sweep_dir, or with sweep_dir ""
    (the notebook opened by hand) to <project>/reports/sweeps/interactive. Only sweep_dir:
    its points (runs/<point>/) in grid order, as its sweep.yaml lists them."""
    root = find_project_root()

    def resolve(path) -> Path:  # relative means the project root, as in notebooks 00-06
        p = Path(path).expanduser()
        return (p if p.is_absolute() or root is None else root / p).resolve()

    if not str(sweep_dir):
        out = (root or Path.cwd()) / RunConfig().reports_dir / "sweeps" / INTERACTIVE_ID
    else:
        out = resolve(sweep_dir)
    if run_dirs:
        runs = [resolve(p) for p in run_dirs]
    elif str(sweep_dir):
        runs = sweep_run_dirs(out)
    else:
        raise ValueError("set sweep_dir (a dasd-sweep folder) or run_dirs (run folders)")
    missing = [str(p) for p in runs if not (p / "params.yaml").is_file()]
    if missing:
        raise FileNotFoundError(f"not run folders (no params.yaml): {', '.join(missing)}")
    if not runs:
        raise FileNotFoundError(f"{out} holds no runs yet (runs/<point>/params.yaml)")
    (out / "figures").mkdir(parents=True, exist_ok=True)
    return out, runs


def sweep_run_dirs(sweep_dir: str | Path) -> list[Path]:
    """The run folders of a sweep that exist, in the order of sweep.yaml's points (else by name)."""
    sweep_dir = Path(sweep_dir)
    definition = sweep_dir / "sweep.yaml"
    if definition.is_file():
        names = [p["name"] for p in (yaml.safe_load(definition.read_text(encoding="utf-8"))
                                     or {}).get("points", [])]
    else:
        names = sorted(p.name for p in (sweep_dir / "runs").glob("*") if p.is_dir())
    return [sweep_dir / "runs" / n for n in names if (sweep_dir / "runs" / n / "params.yaml").is_file()]


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    """Folder names, or the paths below their common folder when names repeat."""
    names = [p.name for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([str(p) for p in run_dirs]))
    return [p.relative_to(common).as_posix() for p in run_dirs]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def load_runs(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """One row per run folder: run (label), run_dir, status and notebook minutes (from
    timings.json), then every parameter as a 'section.key' column (the raw values)."""
    run_dirs = [Path(p) for p in run_dirs]
    rows = []
    for label, folder in zip(_labels(run_dirs), run_dirs):
        timings = _read_json(folder / "timings.json")
        seconds = [e.get("seconds") or 0 for e in (timings.get("notebooks") or {}).values()]
        params = pd.json_normalize(load_params(folder / "params.yaml").to_dict(), sep=".")
        rows.append({RUN_COLUMN: label, "run_dir": str(folder),
                     "status": timings.get("status", "no timings.json"),
                     "minutes": round(sum(seconds) / 60, 1), **params.iloc[0].to_dict()})
    return pd.DataFrame(rows)


def swept_keys(runs: pd.DataFrame) -> list[str]:
    """The parameters whose values differ between the runs (run names and the shared
    folder left out), in parameter-file order."""
    params = [c for c in runs.columns if "." in c and c not in IGNORED_KEYS]
    return [c for c in params if runs[c].map(value_text).nunique() > 1]


def plot_keys(keys: Sequence[str]) -> list[str]:
    """The x axes of the comparison plots: each swept key, or the run itself when none."""
    return list(keys) or [RUN_COLUMN]


def _point_keys(keys: Sequence[str], x: str | None = None) -> list[str]:
    """What identifies a point: the swept keys but the seeds (pooled), plus the x axis."""
    point = [k for k in keys if k != SEEDS_KEY or k == x]
    return point + [x] if x is not None and x not in point else point


def run_table(runs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Every run with its status, notebook minutes and swept values (as text)."""
    table = runs[[RUN_COLUMN, "status", "minutes"]].copy()
    for key in keys:
        table[key] = runs[key].map(value_text)
    return table


def _with_keys(frame: pd.DataFrame, runs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """`frame` (with a run column) joined with each run's swept values as text."""
    return frame.merge(run_table(runs, keys).drop(columns=["status", "minutes"]), on=RUN_COLUMN)


def _read_csvs(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    parts = [pd.read_csv(Path(d) / name).assign(**{RUN_COLUMN: r})
             for r, d in zip(runs[RUN_COLUMN], runs["run_dir"]) if (Path(d) / name).is_file()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def pool(frame: pd.DataFrame, by: Sequence[str], value: str,
         also: Sequence[str] = ()) -> pd.DataFrame:
    """Per group of `by`: the mean of `value`, its sample std and 95 % t-interval (ci_low,
    ci_high; NaN for one value), n values, the number of runs they come from, and the mean
    of the `also` columns."""
    rows = []
    for group, part in frame.groupby(list(by), sort=False, dropna=False):
        spread = seed_interval(part[value].to_numpy(float), CONFIDENCE)
        rows.append({**dict(zip(by, group)), value: spread["mean"], f"{value}_std": spread["std"],
                     "ci_low": spread["ci_low"], "ci_high": spread["ci_high"], "n": spread["n"],
                     "runs": part[RUN_COLUMN].nunique(), **{c: part[c].mean() for c in also}})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- SumR

def seed_sumr(runs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Per run, setting, test variant, method and seed: SumR averaged over the target
    languages (the oracle: English), with the run's swept values."""
    results = _read_csvs(runs, "results.csv")
    if results.empty:
        return pd.DataFrame(columns=[RUN_COLUMN, "setting", "variant", "method", "seed", "SumR",
                                     *keys])
    if "variant" not in results.columns:
        results["variant"] = ""
    results["variant"] = results["variant"].fillna("")
    by = [RUN_COLUMN, "setting", "variant", "method", "seed"]
    target = results["lang"] != SOURCE_LANG
    headline = target | ~target.groupby([results[k] for k in by]).transform("any")
    per_seed = results[headline].groupby(by, sort=False)["SumR"].mean().reset_index()
    return _with_keys(per_seed, runs, keys)


def sumr_points(seeds: pd.DataFrame, keys: Sequence[str], x: str | None = None) -> pd.DataFrame:
    """SumR per setting, variant, method and point (the seeds of runs that differ only in
    run.seeds pooled): mean, std and t-interval over seeds, n seeds, n runs."""
    return pool(seeds, ["setting", "variant", "method", *_point_keys(keys, x)], "SumR")


def run_summaries(runs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """dasd_lib.evaluate.summary_table of every run and test variant (its SumR intervals
    where summary_table has them), with the run's swept values."""
    results = _read_csvs(runs, "results.csv")
    if results.empty:
        return pd.DataFrame()
    if "variant" not in results.columns:
        results["variant"] = "native"
    parts = [summary_table(part, variant).assign(variant=variant, **{RUN_COLUMN: run})
             for run, part in results.groupby(RUN_COLUMN, sort=False)
             for variant in dict.fromkeys(part["variant"].dropna())]
    table = _with_keys(pd.concat(parts, ignore_index=True), runs, keys)
    first = [RUN_COLUMN, *keys, "setting", "variant", "method"]
    return table[first + [c for c in table.columns if c not in first]]


# ----------------------------------------------------------------------------- probes and comparisons

def probe_rows(runs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Every run's probes.csv (method, feature, target, accuracy, chance) with its swept values."""
    probes = _read_csvs(runs, "probes.csv")
    if probes.empty:
        return pd.DataFrame(columns=[RUN_COLUMN, "method", "feature", "target", "accuracy",
                                     "chance", *keys])
    return _with_keys(probes, runs, keys)


def probe_points(probes: pd.DataFrame, keys: Sequence[str], x: str | None = None) -> pd.DataFrame:
    """Probe accuracy per method, feature, target and point, pooled over the runs that
    differ only in run.seeds (mean, t-interval), with the mean chance accuracy."""
    return pool(probes, ["method", "feature", "target", *_point_keys(keys, x)], "accuracy",
                also=["chance"] if "chance" in probes.columns else [])


def comparisons_table(runs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Every run's comparisons.csv (the paired bootstrap of SumR differences: setting,
    variant, lang, method, baseline, diff_SumR, ci_low, ci_high, significant) with its swept
    values; empty when no run has one."""
    table = _read_csvs(runs, "comparisons.csv")
    return _with_keys(table, runs, keys) if not table.empty else table


# ----------------------------------------------------------------------------- plots

def _x_positions(labels: Sequence[str]) -> tuple[dict[str, float], bool]:
    """Where each x label goes: its number when every label is numeric (with log scale when
    they span LOG_SCALE_RATIO or more), else its place in order of appearance."""
    labels = list(dict.fromkeys(labels))
    try:
        numbers = [float(v) for v in labels]
    except ValueError:
        return {v: float(i) for i, v in enumerate(labels)}, False
    positive = min(numbers) > 0
    return dict(zip(labels, numbers)), positive and max(numbers) / min(numbers) >= LOG_SCALE_RATIO


def plot_against(points: pd.DataFrame, x: str, value: str, *, panels: Sequence[str],
                 lines: Sequence[str], others: Sequence[str] = (), ylabel: str,
                 reference: str | float | None = None, ylim: tuple[float, float] | None = None):
    """`value` against the swept parameter `x`: a panel per value of `panels`, a line per
    value of `lines` and of the `others` (the other swept keys), error bars from ci_low /
    ci_high where there are any. `reference`: a dashed line per panel at a column's mean
    (chance) or at a number (0)."""
    import matplotlib.pyplot as plt
    panel_values = list(dict.fromkeys(zip(*(points[c] for c in panels)))) if len(points) else []
    n = max(1, len(panel_values))
    ncols = min(n, PANELS_PER_ROW)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols + 1.5, 3.4 * nrows),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    if points.empty:
        _empty(axes[0][0], f"no {value} values in these runs")
        return fig
    positions, log = _x_positions(points[x])
    line_keys = [*lines, *others]
    names = list(dict.fromkeys(zip(*(points[c] for c in line_keys))))
    colours = dict(zip(names, _palette(len(names))))
    for ax, panel in zip(axes.flat, panel_values):
        part = points[np.logical_and.reduce([points[c] == v for c, v in zip(panels, panel)])]
        for name, line in part.groupby(line_keys, sort=False):
            line = line.assign(_x=line[x].map(positions)).sort_values("_x")
            err = np.nan_to_num(np.vstack([line[value] - line["ci_low"],
                                           line["ci_high"] - line[value]]))
            label = ", ".join(str(v) if k in lines else f"{k}={v}" for k, v in zip(line_keys, name))
            ax.errorbar(line["_x"], line[value], yerr=err, marker="o", capsize=3,
                        color=colours[name], label=label)
        if isinstance(reference, str) and reference in part.columns:
            ax.axhline(part[reference].mean(), color="0.3", ls="--", lw=1, label=reference)
        elif isinstance(reference, (int, float)):
            ax.axhline(reference, color="0.3", ls="--", lw=1)
        if log:
            ax.set_xscale("log")
        ax.set_xticks(list(positions.values()), [v[:24] for v in positions], rotation=20,
                      ha="right", fontsize=8)  # the swept values as written, also on a log axis
        ax.minorticks_off()
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel)
        ax.set_title(" · ".join(str(v) for v in panel if str(v)), fontsize=10)
        ax.grid(alpha=0.3)
    axes.flat[n - 1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig


def _others(keys: Sequence[str], x: str) -> list[str]:
    return [k for k in _point_keys(keys, x) if k != x]


def plot_sumr(seeds: pd.DataFrame, keys: Sequence[str], x: str):
    """Per setting and test variant, each method's SumR against `x` (95 % seed intervals)."""
    return plot_against(sumr_points(seeds, keys, x), x, "SumR", panels=["setting", "variant"],
                        lines=["method"], others=_others(keys, x),
                        ylabel="SumR, mean over target languages")


def plot_probes(probes: pd.DataFrame, keys: Sequence[str], x: str):
    """Per probe target, each method's and feature's probe accuracy against `x`, chance dashed."""
    return plot_against(probe_points(probes, keys, x), x, "accuracy", panels=["target"],
                        lines=["method", "feature"], others=_others(keys, x),
                        ylabel="probe accuracy", reference="chance", ylim=(0, 1))


def plot_comparisons(comparisons: pd.DataFrame, keys: Sequence[str], x: str):
    """Per setting and test variant, each run's bootstrap SumR difference (method minus
    baseline, averaged over target languages) against `x`, with its interval; one line per
    pair and value of the other swept keys (seeds not pooled: each run has its own bootstrap)."""
    rows = comparisons[comparisons["lang"] == COMPARISON_AVERAGE] if len(comparisons) else comparisons
    rows = rows.assign(pair=rows["method"] + " - " + rows["baseline"]) if len(rows) else rows
    return plot_against(rows, x, "diff_SumR", panels=["setting", "variant"], lines=["pair"],
                        others=[k for k in keys if k != x], reference=0.0,
                        ylabel="SumR difference (bootstrap interval)")
