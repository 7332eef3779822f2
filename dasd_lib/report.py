"""The run's results tables: the one seed aggregation, the difference tables and
results.md. report.html (dasd_lib.report_html) shows the same tables.

results.csv is long form, one row per (setting, [variant,] method, lang, seed):
    setting, method, lang, seed, i2t_R1, i2t_R5, i2t_R10, t2i_R1, t2i_R5, t2i_R10,
    SumR, AR, trainable_params [, variant]
comparisons.csv (evaluate.compare_methods) one row per (setting, variant, baseline, lang):
    the SumR difference run.compare_to - baseline and its paired-bootstrap interval.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import SOURCE_LANG, TARGET_LANGS
from .metrics import chance_sumr, t_halfwidth
from .storage import atomic_write

METRICS = ["i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "SumR", "AR"]
AVG_COLUMN = "avg"
PARAMS_COLUMN = "trainable params"


# ----------------------------------------------------------------------------- results tables

def _ordered(values: pd.Series, known: list[str]) -> list[str]:
    """Unique values, the `known` ones first in that order, then the rest as they appear."""
    seen = list(dict.fromkeys(str(v) for v in values))
    return [v for v in known if v in seen] + [v for v in seen if v not in known]


def _count(value: Any) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(value) else f"{int(round(value)):,}"


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    missing = {"setting", "method", "lang", "SumR"} - set(df.columns)
    if missing:
        raise ValueError(f"results table lacks column(s) {sorted(missing)}; "
                         f"has {list(df.columns)}")
    df = df.copy()
    if "seed" not in df.columns:
        df["seed"] = 0
    if "variant" not in df.columns:
        df["variant"] = ""
    for col in ("setting", "method", "lang", "variant"):
        df[col] = df[col].fillna("").astype(str)
    df["SumR"] = pd.to_numeric(df["SumR"], errors="coerce")
    return df


SETTING_ORDER = ["finetune", "zeroshot"]
VARIANT_ORDER = ["native", "mt_clean", "mt"]
SUMMARY_KEYS = ["setting", "variant", "method", "lang"]


def seed_summary(results: pd.DataFrame, metrics: list[str] | tuple[str, ...] = ("SumR",)) -> pd.DataFrame:
    """The one aggregation behind every results table (results.md, report.html, notebook 04):
    a row per (setting, variant, method, lang) with the mean over seeds of each metric, and
    for SumR the sample std over seeds (SumR_std), the 95 % t-interval of the mean
    (SumR_ci_low, SumR_ci_high; NaN for one seed) and the number of seeds (`seeds`), plus
    trainable_params. lang 'avg' is the mean over target languages, taken per seed before
    the spread over seeds; a method scored only on English (the oracle) has no 'avg' row.
    Rows are ordered by setting, variant, method (as listed) and language."""
    df = _normalise(results)
    metrics = list(dict.fromkeys(["SumR", *(m for m in metrics if m in df.columns)]))
    for col in metrics:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    if "trainable_params" not in df.columns:
        df["trainable_params"] = np.nan
    method_keys = ["setting", "variant", "method"]
    per_seed_agg = {**{m: (m, "mean") for m in metrics},
                    "trainable_params": ("trainable_params", "first")}
    per_seed = df.groupby([*method_keys, "lang", "seed"], sort=False).agg(**per_seed_agg).reset_index()
    targets = per_seed[per_seed["lang"] != SOURCE_LANG]
    averages = (targets.groupby([*method_keys, "seed"], sort=False).agg(**per_seed_agg)
                .reset_index().assign(lang=AVG_COLUMN))
    per_seed = pd.concat([per_seed, averages], ignore_index=True)
    out = per_seed.groupby(SUMMARY_KEYS, sort=False).agg(
        **{m: (m, "mean") for m in metrics}, SumR_std=("SumR", "std"), seeds=("SumR", "count"),
        trainable_params=("trainable_params", "first")).reset_index()
    half = t_halfwidth(out["SumR_std"].to_numpy(), out["seeds"].to_numpy())
    out.insert(out.columns.get_loc("SumR_std") + 1, "SumR_ci_low", out["SumR"] - half)
    out.insert(out.columns.get_loc("SumR_ci_low") + 1, "SumR_ci_high", out["SumR"] + half)
    order = {"setting": _ordered(out["setting"], SETTING_ORDER),
             "variant": _ordered(out["variant"], VARIANT_ORDER),
             "method": _ordered(out["method"], []),
             "lang": _ordered(out["lang"], [SOURCE_LANG, *TARGET_LANGS, AVG_COLUMN])}
    if AVG_COLUMN in order["lang"]:  # the average after every language
        order["lang"] = [lang for lang in order["lang"] if lang != AVG_COLUMN] + [AVG_COLUMN]
    rank = {k: {v: i for i, v in enumerate(vs)} for k, vs in order.items()}
    out = out.sort_values(SUMMARY_KEYS, key=lambda col: col.map(rank[col.name]), kind="stable")
    return out.reset_index(drop=True)


def headline_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The headline row of each (setting, variant, method) of a seed_summary: its 'avg'
    over target languages, or its English row when it has no target languages (oracle)."""
    has_avg = summary["lang"].eq(AVG_COLUMN).groupby(
        [summary["setting"], summary["variant"], summary["method"]], sort=False).transform("any")
    return summary[summary["lang"].eq(AVG_COLUMN) |
                   (summary["lang"].eq(SOURCE_LANG) & ~has_avg)].reset_index(drop=True)


def _seed_cell(row) -> str:
    """'mean', or 'mean ± std [ci_low, ci_high]' over several seeds; '–' when missing."""
    if row is None or not np.isfinite(row.SumR):
        return "–"
    if row.seeds < 2:
        return f"{row.SumR:.1f}"
    return f"{row.SumR:.1f} ± {row.SumR_std:.1f} [{row.SumR_ci_low:.1f}, {row.SumR_ci_high:.1f}]"


def summary_tables(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One table per setting (and variant): a row per method, SumR per language and the
    average over target languages (mean ± sample std [95 % t-interval] over seeds when
    several), and the trainable parameter count. Cells are formatted strings; titles like
    'finetune · native'."""
    summary = seed_summary(df)
    tables = []
    for (setting, variant), sub in summary.groupby(["setting", "variant"], sort=False):
        langs = [lang for lang in _ordered(sub["lang"], [SOURCE_LANG, *TARGET_LANGS])
                 if lang != AVG_COLUMN]
        cells = {(r.method, r.lang): r for r in sub.itertuples(index=False)}
        rows = []
        for method, part in sub.groupby("method", sort=False):
            row = {"method": method}
            for lang in [*langs, AVG_COLUMN]:
                row[lang] = _seed_cell(cells.get((method, lang)))
            params = part["trainable_params"].dropna()
            row[PARAMS_COLUMN] = _count(params.iloc[0]) if len(params) else "–"
            rows.append(row)
        title = f"{setting} · {variant}" if variant else setting
        tables.append((title, pd.DataFrame(rows, columns=["method", *langs, AVG_COLUMN,
                                                          PARAMS_COLUMN])))
    return tables


def _seed_note(df: pd.DataFrame) -> str:
    n = df["seed"].nunique() if "seed" in df.columns else 1
    spread = (f"mean ± std [95 % t-interval of the mean] over {n} seeds" if n > 1
              else "1 seed")
    return (f"SumR (sum of R@1/5/10 both ways, max 600) per language; `{AVG_COLUMN}` is the "
            f"mean over target languages; {spread}.{_chance_note(df)}")


def _chance_note(df: pd.DataFrame) -> str:
    """' A random ranking scores SumR X here (...)': toy-sized runs look like results otherwise."""
    if not {"n_images", "n_captions"} <= set(df.columns) or df.empty:
        return ""
    sizes = df[["n_images", "n_captions"]].dropna().drop_duplicates()
    if sizes.empty:
        return ""
    chances = [chance_sumr(int(n), max(1, round(c / max(1, n)))) for n, c in sizes.itertuples(index=False)]
    low, high = min(chances), max(chances)
    images = "-".join(str(int(v)) for v in sorted({sizes.n_images.min(), sizes.n_images.max()}))
    value = f"{low:.1f}" if round(low, 1) == round(high, 1) else f"{low:.1f} to {high:.1f}"
    return f" Chance level: a random ranking scores SumR {value} here ({images} test images)."


# ----------------------------------------------------------------------------- differences

COMPARISONS_FILE = "comparisons.csv"


def read_comparisons(run_dir: str | Path) -> pd.DataFrame | None:
    """run_dir/comparisons.csv (evaluate.compare_methods' table), None when absent."""
    path = Path(run_dir) / COMPARISONS_FILE
    return pd.read_csv(path) if path.is_file() else None


def split_name(frame: pd.DataFrame) -> str:
    """The split a results or comparisons table was evaluated on (older runs: test)."""
    if "split" in frame and frame["split"].notna().any():
        return str(frame["split"].dropna().iloc[0])
    return "test"


def differences_note(comparisons: pd.DataFrame | None) -> str:
    """One paragraph saying how the difference intervals were made."""
    if comparisons is None or comparisons.empty:
        return "_No method comparisons in this run (run.compare_to is not among its methods)._"
    n_boot = int(comparisons["n_boot"].max())
    n_images = int(comparisons["n_images"].max())
    split = split_name(comparisons)
    if n_boot < 1:
        return (f"SumR differences on the {n_images} {split} images; no bootstrap replicates "
                "(run.bootstrap_samples = 0), so no intervals.")
    return (f"SumR difference `method − baseline` on the full {split} split, with its 95 % "
            f"percentile interval [low, high] from a paired bootstrap over the {n_images} {split} "
            f"images ({n_boot} replicates; captions move with their image; every method, "
            f"language and seed sees the same draws; `{AVG_COLUMN}`: per replicate, the mean "
            f"over target languages of the seed-averaged differences). **n.s.**: the interval "
            f"includes 0, not significant.")


def _difference_cell(row) -> str:
    if row is None or not np.isfinite(row.diff_SumR):
        return "–"
    if not (np.isfinite(row.ci_low) and np.isfinite(row.ci_high)):
        return f"{row.diff_SumR:+.1f}"
    mark = "" if _truthy(row.significant) else " n.s."
    return f"{row.diff_SumR:+.1f} [{row.ci_low:+.1f}, {row.ci_high:+.1f}]{mark}"


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "1.0")


def difference_tables(comparisons: pd.DataFrame | None) -> list[tuple[str, pd.DataFrame]]:
    """One table per setting and variant: a row per baseline, the SumR difference (method −
    baseline) averaged over target languages and per language, each cell
    '+d [low, high]' with ' n.s.' where the interval includes 0. Titles like
    'finetune · native: dasd − baseline'."""
    if comparisons is None or comparisons.empty:
        return []
    comparisons = comparisons.astype({c: str for c in ("setting", "variant", "lang", "method",
                                                        "baseline")})
    tables = []
    for (setting, variant, method), sub in comparisons.groupby(
            ["setting", "variant", "method"], sort=False):
        langs = [AVG_COLUMN] + [lang for lang in _ordered(sub["lang"], TARGET_LANGS)
                                if lang != AVG_COLUMN]
        cells = {(r.baseline, r.lang): r for r in sub.itertuples(index=False)}
        rows = [{"baseline": baseline,
                 **{lang: _difference_cell(cells.get((baseline, lang))) for lang in langs}}
                for baseline in dict.fromkeys(sub["baseline"])]
        title = f"{setting} · {variant}: {method} − baseline"
        tables.append((title, pd.DataFrame(rows, columns=["baseline", *langs])))
    return tables


def _markdown_table(table: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|")
    header = "| " + " | ".join(cell(c) for c in table.columns) + " |"
    rule = "|" + "|".join([" --- "] + [" ---: "] * (len(table.columns) - 1)) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def results_markdown(df: pd.DataFrame, comparisons: pd.DataFrame | None = None) -> str:
    """results.md: a heading and a markdown table per setting (and variant), then the
    differences with their bootstrap intervals when `comparisons` is given."""
    if df.empty:
        return "_No results yet._\n"
    parts = [_seed_note(df)]
    if "i2t_protocol" in df and (df["i2t_protocol"] == "official").any():
        parts.append("**Image-to-text by the DASD authors' protocol** (run.i2t_protocol: "
                     "official): each other image counts once, by its best caption, so i2t "
                     "recall is higher than by the standard protocol; set beside the paper's "
                     "numbers, not beside standard-protocol ones.")
    if split_name(df) != "test":
        parts.append(f"**Evaluated on the {split_name(df)} split** (run.eval_split): these runs "
                     "choose settings, so the test split is left for the final comparison.")
    for title, table in summary_tables(df):
        parts += [f"### {title}", _markdown_table(table)]
    if comparisons is not None:
        parts += ["## Differences", differences_note(comparisons)]
        for title, table in difference_tables(comparisons):
            parts += [f"### {title}", _markdown_table(table)]
    return "\n\n".join(parts) + "\n"


def write_results_markdown(run_dir: str | Path) -> Path | None:
    """(Re)write run_dir/results.md from run_dir/results.csv (and comparisons.csv when
    there is one); None when there is no results.csv."""
    run_dir = Path(run_dir)
    csv = run_dir / "results.csv"
    if not csv.is_file():
        return None
    out = run_dir / "results.md"
    text = results_markdown(pd.read_csv(csv), read_comparisons(run_dir))
    atomic_write(out, "# Results\n\n" + text)
    return out
