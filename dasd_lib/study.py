"""The study's data and statistics, which docs/findings.md (dasd_lib.findings) is made of:
the finished runs of the study sweeps (params/study/*.yaml) with their condition columns,
per-seed SumR, probes, discriminator accuracy and step costs; paired differences with
their 95 % seed intervals, pooled means, style gaps and f_sr-vs-f_sa probe contrasts."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import compare
from .metrics import seed_interval
from .pipeline import load_losses

SWEEPS = ("budget", "adv_weight", "variants", "style_gap")
NATIVE, MT_VARIANT = "native", "mt_clean"  # the test variants of run.eval_variants' default
FINISHED = "completed"  # timings.json status of a run that ran every notebook
FINAL_FRACTION = 0.1  # "final" discriminator accuracy: mean over the last 10 % of a stage's steps
# the parameters that tell the study's conditions apart (raw values from params.yaml)
CONDITION_KEYS = {"cla.steps": "cla_steps", "cla.lambda_adv": "lambda_adv",
                  "model.freeze_embedding": "freeze_embedding",
                  "data.mt_native_share": "mt_native_share"}
DIFF_COLUMNS = ["method", "baseline", "diff", "ci_low", "ci_high", "n_seeds", "verdict"]


# ----------------------------------------------------------------------------- loading

def _runs(sweep_dir: Path) -> pd.DataFrame:
    dirs = compare.sweep_run_dirs(sweep_dir)
    runs = compare.load_runs(dirs) if dirs else pd.DataFrame()
    if runs.empty:
        return runs
    runs = runs[runs["status"] == FINISHED]
    return runs.rename(columns=CONDITION_KEYS)


def _conditions(runs: pd.DataFrame) -> list[str]:
    return [c for c in CONDITION_KEYS.values() if c in runs.columns]


def load_study(sweeps_dir: str | Path, sweeps: Sequence[str] = SWEEPS) -> dict[str, pd.DataFrame]:
    """Per study sweep that has finished runs: one row per run (compare.load_runs, finished
    runs only, condition columns renamed to cla_steps, lambda_adv, freeze_embedding,
    mt_native_share). Sweeps without a folder are left out."""
    out = {}
    for name in sweeps:
        folder = Path(sweeps_dir) / name
        if folder.is_dir():
            runs = _runs(folder)
            if not runs.empty:
                out[name] = runs.assign(sweep=name)
    return out


def seed_sumr(runs: pd.DataFrame) -> pd.DataFrame:
    """SumR per run, method, test variant and seed (mean over the target languages) with the
    run's condition columns."""
    per_seed = compare.seed_sumr(runs, [])
    keep = [compare.RUN_COLUMN, "sweep", *_conditions(runs)]
    return per_seed.merge(runs[keep], on=compare.RUN_COLUMN)


def probe_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run's probes.csv with the run's seed and condition columns."""
    probes = compare.probe_rows(runs, [])
    if probes.empty:
        return probes
    seeds = runs["run.seeds"].map(lambda s: s[0] if isinstance(s, list) and len(s) == 1 else np.nan)
    keep = runs[[compare.RUN_COLUMN, "sweep", *_conditions(runs)]].assign(seed=seeds.to_numpy())
    return probes.merge(keep, on=compare.RUN_COLUMN)


def final_discriminator(runs: pd.DataFrame, fraction: float = FINAL_FRACTION) -> pd.DataFrame:
    """Per run, method, seed and stage (cla, cma): the discriminator's accuracy at telling a
    caption's own (f_sa, reference) pair from a shuffled one, averaged over the last
    `fraction` of the stage's steps (0.5 = chance; methods without a discriminator absent)."""
    rows = []
    for _, run in runs.iterrows():
        for stage in ("cla", "cma"):
            losses = load_losses(run["run_dir"], stage)
            if losses.empty or "d_acc" not in losses:
                continue
            for (method, seed), part in losses.dropna(subset=["d_acc"]).groupby(["method", "seed"]):
                last = part.sort_values("step").tail(max(1, int(round(len(part) * fraction))))
                rows.append({compare.RUN_COLUMN: run[compare.RUN_COLUMN], "method": method,
                             "seed": int(seed), "stage": stage, "d_acc": float(last["d_acc"].mean()),
                             **{c: run[c] for c in ["sweep", *_conditions(runs)]}})
    return pd.DataFrame(rows)


def trainable_params(runs: pd.DataFrame) -> pd.DataFrame:
    """Per method: the trainable parameters results.csv records (max over the runs)."""
    results = compare._read_csvs(runs, "results.csv") if len(runs) else pd.DataFrame()
    if results.empty or "trainable_params" not in results:
        return pd.DataFrame(columns=["method", "trainable_params"])
    return results.groupby("method", sort=False)["trainable_params"].max().reset_index()


def step_costs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run, method and seed: trainable parameters and milliseconds per CLA and CMA step
    (train_<stage>_summary.csv), with the ratio to the static adapter of the same run."""
    rows = []
    for _, run in runs.iterrows():
        for stage in ("cla", "cma"):
            path = Path(run["run_dir"]) / f"train_{stage}_summary.csv"
            if not path.is_file():
                continue
            summary = pd.read_csv(path)
            summary = summary[summary["steps"] > 0]
            ms = 1000 * summary["seconds"] / summary["steps"]
            static = ms[summary["method"] == "static"]
            ratio = ms / static.iloc[0] if len(static) else np.nan
            rows += [{compare.RUN_COLUMN: run[compare.RUN_COLUMN], "stage": stage,
                      "method": m, "seed": s, "trainable_params": int(p), "ms_per_step": t,
                      "ratio_to_static": r}
                     for m, s, p, t, r in zip(summary["method"], summary["seed"],
                                              summary["trainable_params"], ms,
                                              ratio if len(static) else [np.nan] * len(ms))]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- statistics

def verdict(low: float, high: float) -> str:
    """'better' / 'worse' when the interval excludes zero, else 'no difference' ('one seed'
    when there is no interval)."""
    if np.isnan(low) or np.isnan(high):
        return "one seed"
    return "better" if low > 0 else "worse" if high < 0 else "no difference"


def _interval_row(values, **keys) -> dict:
    s = seed_interval(np.asarray(values, float))
    return {**keys, "diff": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
            "n_seeds": s["n"], "verdict": verdict(s["ci_low"], s["ci_high"])}


def paired_differences(treated: pd.DataFrame, baseline: pd.DataFrame, on: Sequence[str],
                       value: str = "SumR") -> pd.DataFrame:
    """`value` of each treated method minus each baseline method, paired on the `on`
    columns and the seed: per group of (`on`, method, baseline) the mean difference, its 95 %
    t-interval over seeds, the number of seeds and the verdict."""
    pairs = treated[[*on, "seed", "method", value]].merge(
        baseline[[*on, "seed", "method", value]].rename(columns={"method": "baseline"}),
        on=[*on, "seed"], suffixes=("", "_baseline"))
    pairs = pairs[pairs["method"] != pairs["baseline"]]
    rows = [_interval_row(part[value] - part[f"{value}_baseline"],
                          **dict(zip([*on, "method", "baseline"], key)))
            for key, part in pairs.groupby([*on, "method", "baseline"], sort=False)]
    return pd.DataFrame(rows, columns=[*on, *DIFF_COLUMNS])


def pooled(frame: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """Mean of `value` per group with its 95 % t-interval over the rows (seeds) and n."""
    rows = []
    for key, part in frame.groupby(list(by), sort=False):
        s = seed_interval(part[value].to_numpy(float))
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))),
                     value: s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"], "n": s["n"]})
    return pd.DataFrame(rows)


def style_gaps(sumr: pd.DataFrame, on: Sequence[str]) -> pd.DataFrame:
    """Per seed: SumR on native-style captions minus SumR on noise-free MT-style captions (the
    native-vs-MT gap; negative: native captions are harder), with the `on` columns."""
    by = [*on, "method", "seed"]
    wide = sumr.pivot_table(index=by, columns="variant", values="SumR").reset_index()
    if not {NATIVE, MT_VARIANT} <= set(wide.columns):
        return pd.DataFrame(columns=[*by, "gap"])
    return wide.assign(gap=wide[NATIVE] - wide[MT_VARIANT])[[*by, "gap"]]


def feature_contrast(probes: pd.DataFrame, on: Sequence[str]) -> pd.DataFrame:
    """Per probe target: accuracy from f_sr minus accuracy from f_sa, paired by run and
    seed, pooled over seeds (positive: f_sr carries more of the target). Content targets
    should be positive and style targets negative if the module disentangles."""
    wide = probes[probes["feature"].isin(["f_sr", "f_sa"])].pivot_table(
        index=[compare.RUN_COLUMN, *on, "method", "seed", "target", "kind"], columns="feature",
        values="accuracy").reset_index()
    if not {"f_sr", "f_sa"} <= set(wide.columns):
        return pd.DataFrame()
    wide["contrast"] = wide["f_sr"] - wide["f_sa"]
    rows = [_interval_row(part["contrast"], **dict(zip([*on, "method", "target", "kind"], key)))
            for key, part in wide.groupby([*on, "method", "target", "kind"], sort=False)]
    frame = pd.DataFrame(rows)
    frame["carries_more"] = frame["verdict"].map({"better": "f_sr", "worse": "f_sa"}).fillna("neither")
    return frame.rename(columns={"diff": "f_sr_minus_f_sa"})
