"""The study's findings: docs/findings.md, its tables (CSV) and figures, exported from the
run folders of the study sweeps (params/study/*.yaml), never hand-copied.

    python -m dasd_lib.findings [--sweeps-dir reports/sweeps] [--out docs/findings.md]

How differences and their intervals are made: PAIRING below (also printed in findings.md).
The runs and the statistics the tables are made of: dasd_lib.study.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import compare
from .storage import atomic_csv, atomic_file, atomic_write
from .study import (CONDITION_KEYS, FINAL_FRACTION, SWEEPS, feature_contrast, final_discriminator,
                    load_study, paired_differences, pooled, probe_rows, seed_sumr, step_costs,
                    style_gaps, trainable_params)

PAIRING = ("Every difference is paired by target-side seed (same seed, same VLP, same "
           "evaluation images) and reported with the 95 % t-interval over the seeds; it is "
           "called a difference only when that interval excludes zero. The interval covers "
           "training randomness (init, batches, discriminator) on the fixed evaluation images, "
           "not the sampling of those images (each run's image-bootstrap intervals are in its "
           "comparisons.csv and in the sweep's compare.html).")
MIDDLE_STEPS = 200  # the base budget of params/study.yaml, where adv_weight and variants run
DASD = "dasd"
BASELINES = ("static", "full_distill", "dasd_no_sdm")


def _signed(x: float, digits: int = 1) -> str:
    return "n/a" if np.isnan(x) else f"{x:+.{digits}f}"


def _interval(row, digits: int = 1) -> str:
    if np.isnan(row["ci_low"]):
        return f"{_signed(row['diff'], digits)} (one seed)"
    return (f"{_signed(row['diff'], digits)} [{_signed(row['ci_low'], digits)}, "
            f"{_signed(row['ci_high'], digits)}]")


def _table(frame: pd.DataFrame, digits: int = 1) -> str:
    if frame.empty:
        return "_No rows._\n"
    shown = frame.copy()
    for c in shown.columns:
        if c in CONDITION_KEYS.values():  # parameter values as written (0.001, not 0.0)
            shown[c] = shown[c].map(compare.value_text)
        elif pd.api.types.is_float_dtype(shown[c]):
            shown[c] = shown[c].map(lambda v: "" if pd.isna(v) else f"{v:.{digits}f}")
    header = "| " + " | ".join(map(str, shown.columns)) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = ["| " + " | ".join(map(str, r)) + " |" for r in shown.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _mean_table(means: pd.DataFrame, index: Sequence[str], columns: str, value: str,
                digits: int = 1) -> pd.DataFrame:
    """`means` (a pooled() frame) as index x columns cells 'mean ± half-width of the 95 %
    interval' (the mean alone for one seed)."""
    def cell(r):
        half = (r["ci_high"] - r["ci_low"]) / 2
        return f"{r[value]:.{digits}f}" + ("" if np.isnan(half) else f" ± {half:.{digits}f}")
    cells = means.assign(cell=[cell(r) for _, r in means.iterrows()])
    order = [compare.value_text(v) for v in sorted(cells[columns].unique().tolist())]  # 40, 200, 600
    cells[columns] = cells[columns].map(compare.value_text)
    table = cells.pivot(index=list(index), columns=columns, values="cell")
    table = table[order].reset_index()
    table.columns.name = None
    return table.fillna("")


def _contrast_table(contrast: pd.DataFrame, on: str) -> str:
    """feature_contrast's rows as kind, target, the condition, interval, which carries more."""
    if contrast.empty:
        return "_No probes._\n"
    shown = contrast.assign(interval=[_interval(r.rename({"f_sr_minus_f_sa": "diff"}), 3)
                                      for _, r in contrast.iterrows()])
    return _table(shown.sort_values(["kind", "target", on], kind="stable")
                  [["kind", "target", on, "interval", "carries_more"]])


def _save(fig, folder: Path, name: str) -> str:
    import matplotlib.pyplot as plt
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / name) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return f"{folder.name}/{name}"


def _points(frame: pd.DataFrame, x: str, value: str, by: Sequence[str]) -> pd.DataFrame:
    points = pooled(frame, [*by, x], value)
    points[x] = points[x].map(compare.value_text)
    return points


class Findings:
    """The study's tables, built from the sweeps that exist; `markdown()` writes them up."""

    def __init__(self, sweeps_dir: str | Path):
        self.sweeps_dir = Path(sweeps_dir)
        self.runs = load_study(self.sweeps_dir)
        self.sumr = {k: seed_sumr(v) for k, v in self.runs.items()}
        self.sections: list[str] = []
        self.tables: dict[str, pd.DataFrame] = {}

    def _dasd_vs(self, sumr: pd.DataFrame, on: Sequence[str], baselines=BASELINES) -> pd.DataFrame:
        treated = sumr[sumr["method"].str.startswith(DASD) & ~sumr["method"].isin(baselines)]
        return paired_differences(treated, sumr[sumr["method"].isin(baselines)], on)

    # each section returns its markdown and records its tables
    def budget(self, figures: Path) -> str:
        sumr = self.sumr["budget"]
        means = pooled(sumr, ["variant", "method", "cla_steps"], "SumR")
        diffs = self._dasd_vs(sumr[sumr["method"].isin([DASD, *BASELINES])],
                              ["variant", "cla_steps"])
        self.tables |= {"budget_sumr": means, "budget_differences": diffs}
        trained = sumr[sumr["method"].isin([DASD, *BASELINES])]
        points = _points(trained, "cla_steps", "SumR", ["variant", "method"])
        fig = compare.plot_against(points, "cla_steps", "SumR", panels=["variant"],
                                   lines=["method"], ylabel="SumR (val, de), 95 % seed interval")
        figure = _save(fig, figures, "budget_sumr.png")
        diff_points = diffs.rename(columns={"diff": "value"}).assign(
            cla_steps=lambda f: f["cla_steps"].map(compare.value_text),
            pair=lambda f: "dasd - " + f["baseline"])
        fig = compare.plot_against(diff_points, "cla_steps", "value", panels=["variant"],
                                   lines=["pair"], reference=0.0,
                                   ylabel="SumR difference, 95 % seed interval")
        diff_figure = _save(fig, figures, "budget_differences.png")
        wins = diffs[diffs["verdict"] == "better"]
        probes = probe_rows(self.runs["budget"])
        contrast = feature_contrast(probes[probes["method"] == DASD], ["cla_steps"]) \
            if len(probes) else pd.DataFrame()
        self.tables["budget_probe_contrast"] = contrast
        return "\n".join([
            "## Budget: is DASD only short of training?",
            f"CLA steps per language {', '.join(map(str, sorted(sumr['cla_steps'].unique())))} "
            "(CMA at 0.6 of CLA); `dasd-sweep params/study/budget.yaml --workers 2`.",
            f"![SumR against the CLA budget]({figure})", "",
            "SumR on the validation split (mean ± half-width of the 95 % t-interval over seeds), "
            "per CLA steps per language:", "",
            _table(_mean_table(means, ["variant", "method"], "cla_steps", "SumR")),
            "DASD minus each baseline, paired by seed:", "",
            f"![DASD minus each baseline against the budget]({diff_figure})", "",
            _table(diffs.assign(interval=[_interval(r) for _, r in diffs.iterrows()])
                   [["variant", "cla_steps", "baseline", "interval", "n_seeds", "verdict"]]),
            f"**DASD is better than a baseline in {len(wins)} of {len(diffs)} comparisons** "
            f"and worse in {int((diffs['verdict'] == 'worse').sum())}." + (
                " Where better: " + "; ".join(f"{r.baseline} at {r.cla_steps} steps ({r.variant})"
                                              for r in wins.itertuples()) + "." if len(wins) else ""),
            "", "Does disentangling appear with training? DASD's f_sr minus f_sa probe accuracy "
            "per budget (disentangling wants content > 0 and style < 0):", "",
            _contrast_table(contrast, "cla_steps"), ""])

    def _middle_baseline(self) -> pd.DataFrame:
        """The static adapter and full distillation at the middle budget (budget sweep)."""
        if "budget" not in self.sumr:
            return pd.DataFrame(columns=["variant", "seed", "method", "SumR"])
        b = self.sumr["budget"]
        return b[(b["cla_steps"] == MIDDLE_STEPS) & b["method"].isin(["static", "full_distill"])]

    def adv_weight(self, figures: Path) -> str:
        runs = self.runs["adv_weight"]
        sumr = self.sumr["adv_weight"]
        dasd = sumr[sumr["method"] == DASD]
        means = pooled(dasd, ["variant", "lambda_adv"], "SumR")
        base = self._middle_baseline()
        diffs = paired_differences(dasd, base, ["variant"]).iloc[0:0]
        parts = [paired_differences(part, base, ["variant"]).assign(lambda_adv=lam)
                 for lam, part in dasd.groupby("lambda_adv")]
        if parts:
            diffs = pd.concat(parts, ignore_index=True)
        probes = probe_rows(runs)
        probes = probes[probes["method"] == DASD] if len(probes) else probes
        acc = pd.DataFrame()
        if len(probes):  # each feature's accuracy, and the majority-class rate as 'chance'
            chance = probes.drop_duplicates(["run", "target"]).assign(feature="(chance)",
                                                                     accuracy=lambda f: f["chance"])
            acc = pooled(pd.concat([probes, chance]), ["target", "kind", "feature", "lambda_adv"],
                         "accuracy")
        contrast = feature_contrast(probes, ["lambda_adv"]) if len(probes) else pd.DataFrame()
        disc = final_discriminator(runs)
        disc_points = pooled(disc, ["stage", "lambda_adv"], "d_acc") if len(disc) else pd.DataFrame()
        self.tables |= {"adv_sumr": means, "adv_differences": diffs, "adv_probes": acc,
                        "adv_probe_contrast": contrast, "adv_discriminator": disc_points}
        out = ["## Adversarial weight: what does lambda_adv do?",
               "DASD at the middle budget with lambda_adv in both stages; "
               "`dasd-sweep params/study/adv_weight.yaml --workers 2`. The baselines are the "
               "budget sweep's middle point (same seeds, same VLP).", "",
               "DASD's SumR per lambda_adv (mean ± half-width of the 95 % seed interval):", "",
               _table(_mean_table(means, ["variant"], "lambda_adv", "SumR")),
               "DASD minus baseline, paired by seed:", "",
               _table(diffs.assign(interval=[_interval(r) for _, r in diffs.iterrows()])
                      [["variant", "lambda_adv", "baseline", "interval", "n_seeds", "verdict"]]
                      if len(diffs) else diffs)]
        if len(acc):
            points = _points(probes, "lambda_adv", "accuracy", ["target", "feature"]).assign(
                method=DASD)
            points = points.merge(pooled(probes, ["target", "lambda_adv"], "chance")
                                  .assign(lambda_adv=lambda f: f["lambda_adv"].map(compare.value_text))
                                  [["target", "lambda_adv", "chance"]], on=["target", "lambda_adv"])
            fig = compare.plot_against(points, "lambda_adv", "accuracy", panels=["target"],
                                       lines=["feature"], ylabel="probe accuracy (held-out images)",
                                       reference="chance", ylim=(0, 1))
            out += [f"![probe accuracy against lambda_adv]({_save(fig, figures, 'adv_probes.png')})", "",
                    "Probe accuracy (mean over seeds) of each feature; content targets are "
                    "probed across languages, style targets within each language:", "",
                    _table(_mean_table(acc, ["kind", "target", "feature"], "lambda_adv",
                                       "accuracy", digits=3)),
                    "f_sr minus f_sa accuracy per target, paired by seed (disentangling wants "
                    "content > 0 and style < 0):", "",
                    _contrast_table(contrast, "lambda_adv"), ""]
        if len(disc_points):
            out += ["Final discriminator accuracy (own vs shuffled (f_sa, reference) pairs, "
                    f"mean over the last {FINAL_FRACTION:.0%} of steps; 0.5 is chance):", "",
                    _table(_mean_table(disc_points, ["stage"], "lambda_adv", "d_acc", digits=3))]
        out.append(self._disentangling_words(contrast))
        return "\n".join(out)

    @staticmethod
    def _disentangling_words(contrast: pd.DataFrame) -> str:
        if contrast.empty:
            return "_No probes in this sweep._\n"
        content = contrast[contrast["kind"] == "content"]
        style = contrast[contrast["kind"] == "style"]
        good = [lam for lam, part in contrast.groupby("lambda_adv")
                if (part[part.kind == "content"]["verdict"] == "better").all()
                and (part[part.kind == "style"]["verdict"] == "worse").all()]
        return (f"**Disentangling:** f_sr carries a content target better than f_sa in "
                f"{int((content['verdict'] == 'better').sum())} of {len(content)} (target, "
                f"weight) cells and worse in {int((content['verdict'] == 'worse').sum())}; f_sa "
                f"carries a style target better than f_sr in "
                f"{int((style['verdict'] == 'worse').sum())} of {len(style)}. Weights at which "
                f"every content target favours f_sr and every style target favours f_sa: "
                f"{', '.join(map(str, good)) if good else 'none'}.\n")

    def variants(self, figures: Path) -> str:
        sumr = self.sumr["variants"]
        frozen = sumr[sumr["freeze_embedding"] == True]  # noqa: E712 (a column of booleans)
        frozen_diff = paired_differences(frozen[frozen["method"] == DASD],
                                         frozen[frozen["method"] == "static"], ["variant"])
        sdm2 = sumr[sumr["method"] == "dasd_sdm2"]
        middle = self.sumr.get("budget", pd.DataFrame(columns=sumr.columns))
        middle = middle[(middle["cla_steps"] == MIDDLE_STEPS) & middle["method"].isin([DASD, "static"])]
        sdm_diff = paired_differences(sdm2, middle, ["variant"])
        condition = np.where(sumr["freeze_embedding"] == True, "embedding frozen",  # noqa: E712
                             "embedding trained")
        both = pd.concat([sumr.assign(condition=condition), middle.assign(condition="embedding trained")])
        means = pooled(both, ["variant", "condition", "method"], "SumR")
        runs = self.runs["variants"]
        frozen_runs = runs[runs["freeze_embedding"] == True]  # noqa: E712
        trained_runs = pd.concat([runs[runs["freeze_embedding"] != True],  # noqa: E712
                                  self.runs.get("budget", pd.DataFrame())])
        frozen_params = trainable_params(frozen_runs)
        params = pd.concat([frozen_params.assign(condition="embedding frozen"),
                            trainable_params(trained_runs).assign(condition="embedding trained")])
        means = means.merge(params, on=["condition", "method"], how="left")
        probes = probe_rows(self.runs["variants"])
        probes = probes.assign(condition=np.where(probes["freeze_embedding"] == True,  # noqa: E712
                                                  "embedding frozen", "embedding trained")) if len(probes) else probes
        contrast = feature_contrast(probes, ["condition"]) if len(probes) else pd.DataFrame()
        self.tables |= {"variants_sumr": means, "variants_frozen_differences": frozen_diff,
                        "variants_sdm2_differences": sdm_diff, "variants_probe_contrast": contrast,
                        "variants_frozen_params": frozen_params}
        shown = pd.concat([frozen_diff.assign(comparison="frozen embedding"),
                           sdm_diff.assign(comparison="sdm_layers 2 (embedding trained)")])
        cells = means.assign(SumR=[f"{r.SumR:.1f}" + ("" if np.isnan(r.ci_low) else f" ± {(r.ci_high - r.ci_low) / 2:.1f}")
                                   for r in means.itertuples()])
        keep = ["variant", "condition", "method", "SumR", "n"] + (["trainable_params"] if "trainable_params" in cells else [])
        return "\n".join([
            "## Variants: SDM over two blocks, and the frozen embedding",
            "`dasd-sweep params/study/variants.yaml --workers 2`; dasd_sdm2 and the trained-embedding "
            "rows of dasd and static are the budget sweep's middle point (same seeds). Trainable "
            "parameters as results.csv records them (with the embedding frozen: "
            + (", ".join(f"{r.method} {int(r.trainable_params):,}" for r in frozen_params.itertuples())
               or "n/a") + ").", "",
            _table(cells[keep].sort_values(["variant", "condition", "method"])), "Differences, paired by seed:", "",
            _table(shown.assign(interval=[_interval(r) for _, r in shown.iterrows()])
                   [["comparison", "variant", "method", "baseline", "interval", "n_seeds", "verdict"]]
                   if len(shown) else shown),
            "f_sr minus f_sa probe accuracy of these variants:", "",
            _contrast_table(contrast.assign(condition=contrast["method"] + ", " + contrast["condition"])
                            if len(contrast) else contrast, "condition"), ""])

    def style_gap(self, figures: Path) -> str:
        sumr = self.sumr["style_gap"]
        gaps = style_gaps(sumr, ["mt_native_share"])
        gap_points = pooled(gaps, ["method", "mt_native_share"], "gap")
        native = sumr[sumr["variant"] == "native"]
        diffs = pd.concat([paired_differences(native[(native.method == DASD) & (native.mt_native_share == s)],
                                              native[(native.method != DASD) & (native.mt_native_share == s)],
                                              ["variant"]).assign(mt_native_share=s)
                           for s in sorted(native["mt_native_share"].unique())], ignore_index=True)
        means = pooled(sumr, ["variant", "method", "mt_native_share"], "SumR")
        self.tables |= {"style_gap_sumr": means, "style_gap_gaps": gap_points,
                        "style_gap_differences": diffs}
        points = _points(gaps, "mt_native_share", "gap", ["method"]).assign(panel="native - MT")
        fig = compare.plot_against(points.rename(columns={"gap": "value"}), "mt_native_share",
                                   "value", panels=["panel"], lines=["method"], reference=0.0,
                                   ylabel="SumR native - SumR MT-style")
        figure = _save(fig, figures, "style_gap.png")
        return "\n".join([
            "## Style gap: the regime DASD is built for",
            "`data.mt_native_share` is the share of training translations written in the native "
            "test styles (0: the translator never writes them, the default benchmark); "
            "`dasd-sweep params/study/style_gap.yaml --workers 2`.",
            f"![native-vs-MT gap against mt_native_share]({figure})", "",
            "Native-vs-MT gap (SumR on native-style minus MT-style captions, mean over seeds):", "",
            _table(_mean_table(gap_points, ["method"], "mt_native_share", "gap")),
            "SumR per variant:", "",
            _table(_mean_table(means, ["variant", "method"], "mt_native_share", "SumR")),
            "DASD minus each baseline on native-style captions, paired by seed:", "",
            _table(diffs.assign(interval=[_interval(r) for _, r in diffs.iterrows()])
                   [["mt_native_share", "baseline", "interval", "n_seeds", "verdict"]]
                   if len(diffs) else diffs), ""])

    def cost(self) -> str:
        runs = pd.concat(list(self.runs.values()), ignore_index=True)
        runs = runs[(runs["sweep"] == "budget") & (runs["cla_steps"] == MIDDLE_STEPS)] \
            if "budget" in self.runs else runs
        costs = step_costs(runs)
        if costs.empty:
            return ""
        table = costs.groupby(["stage", "method"], sort=False).agg(
            trainable_params=("trainable_params", "max"), ms_per_step=("ms_per_step", "median"),
            ratio_to_static=("ratio_to_static", "median"), runs=("run", "nunique")).reset_index()
        self.tables["cost"] = table
        return "\n".join([
            "## Cost",
            "Trainable parameters and time per training step at the middle budget (median over "
            "seeds; ratio to the static adapter measured within each run, which trains every "
            "method in one process; two points ran at once on 2 cores, one thread each):", "",
            _table(table, digits=2), ""])

    def markdown(self, figures: Path, discussion: str = "") -> str:
        head = ["# Findings of the study", "",
                "Generated by `python -m dasd_lib.findings` from the run folders of the study "
                "sweeps (params/study/*.yaml, base params/study.yaml: one target language, "
                "German; finetune setting; evaluated on the 500-image validation split, so the "
                "test split stays untouched for the final comparison). " + PAIRING, ""]
        found = ", ".join(f"{k} ({len(v)} runs)" for k, v in self.runs.items())
        missing = [s for s in SWEEPS if s not in self.runs]
        head.append(f"Sweeps found: {found or 'none'}." +
                    (f" Not run yet: {', '.join(missing)}." if missing else "") + "\n")
        body = [getattr(self, name)(figures) for name in SWEEPS if name in self.runs]
        if self.runs:
            body.append(self.cost())
        if discussion:
            body.append(discussion)
        return "\n".join(head + body)


def write_findings(sweeps_dir: str | Path, out: str | Path,
                   discussion: str | Path | None = None) -> Path:
    """Write `out` (markdown), its figures in <out stem>/ beside it and every table as
    <out stem>/<table>.csv; `discussion`: a hand-written markdown file appended verbatim."""
    out = Path(out)
    figures = out.parent / out.stem
    findings = Findings(sweeps_dir)
    text = findings.markdown(figures, Path(discussion).read_text(encoding="utf-8")
                             if discussion and Path(discussion).is_file() else "")
    figures.mkdir(parents=True, exist_ok=True)
    for name, table in findings.tables.items():
        if len(table.columns):  # a section without rows of that kind has no table
            atomic_csv(table, figures / f"{name}.csv")
    atomic_write(out, text)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweeps-dir", default="reports/sweeps")
    ap.add_argument("--out", default="docs/findings.md")
    ap.add_argument("--discussion", default="docs/findings_discussion.md",
                    help="hand-written conclusions appended verbatim (skipped when absent)")
    args = ap.parse_args(argv)
    if not Path(args.sweeps_dir).is_dir():
        print(f"dasd-findings: no sweeps folder {args.sweeps_dir}; run the study sweeps "
              "(params/study/*.yaml) first", file=sys.stderr)
        return 2
    print(f"dasd-findings: wrote {write_findings(args.sweeps_dir, args.out, args.discussion)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
