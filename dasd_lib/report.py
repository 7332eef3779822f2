"""The run report: results tables as markdown, and report.html built without executing code.

`write_report(run_dir)` assembles a notebook in memory (markdown cells and display_data
outputs only) from what the run folder holds - results.csv / results.md, comparisons.csv,
probes.csv, figures/*.png, params.yaml, env.json, timings.json - and exports it with nbconvert's
HTMLExporter with code input excluded. A missing piece is noted in the report.

results.csv is long form, one row per (setting, [variant,] method, lang, seed):
    setting, method, lang, seed, i2t_R1, i2t_R5, i2t_R10, t2i_R1, t2i_R5, t2i_R10,
    SumR, AR, trainable_params [, variant]
comparisons.csv (evaluate.compare_methods) one row per (setting, variant, baseline, lang):
    the SumR difference run.compare_to - baseline and its paired-bootstrap interval.
"""
from __future__ import annotations

import base64
import json
import math
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import SOURCE_LANG, TARGET_LANGS
from .metrics import t_halfwidth
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
            f"mean over target languages; {spread}.")


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


# ----------------------------------------------------------------------------- the report

def _md(text: str):
    import nbformat
    return nbformat.v4.new_markdown_cell(text)


def _display(data: dict[str, str], metadata: dict[str, Any] | None = None):
    """A code cell with no source and one display_data output (the input is not exported)."""
    import nbformat
    cell = nbformat.v4.new_code_cell(source="")
    cell.outputs = [nbformat.v4.new_output("display_data", data=data, metadata=metadata or {})]
    return cell


def _html_table(df: pd.DataFrame, digits: int = 1, fold: str = "") -> dict[str, str]:
    """A table output; `fold` puts it in a collapsed <details> block with that summary."""
    html = df.to_html(index=False, border=0, na_rep="–", escape=True,
                      float_format=lambda x: f"{x:.{digits}f}")
    if fold:
        html = f"<details><summary>{escape(fold)}</summary>{html}</details>"
    return {"text/html": html, "text/plain": df.to_string(index=False)}


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.is_file():
        return None, None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        return None, f"{path.name} could not be read ({err})."
    return (value, None) if isinstance(value, dict) else (None, f"{path.name} is not an object.")


def _results_cells(run_dir: Path) -> list:
    csv, md = run_dir / "results.csv", run_dir / "results.md"
    cells = [_md("## Results")]
    if csv.is_file():
        try:
            df = pd.read_csv(csv)
            tables = summary_tables(df)
        except (ValueError, pd.errors.ParserError) as err:
            return cells + [_md(f"_results.csv could not be read: {err}_")]
        cells.append(_md(_seed_note(df)))
        for title, table in tables:
            cells += [_md(f"### {title}"), _display(_html_table(table))]
        metrics = [c for c in METRICS if c in df.columns]
        if metrics:
            full = seed_summary(df, metrics)
            full = full[full["lang"] != AVG_COLUMN][[*SUMMARY_KEYS, *metrics]]
            if not (full["variant"] != "").any():
                full = full.drop(columns="variant")
            n = df["seed"].nunique() if "seed" in df.columns else 1
            fold = f"All metrics per language (recall in %, mean over {n} seed{'s' * (n > 1)})"
            cells.append(_display(_html_table(full, fold=fold)))
        cells += _difference_cells(run_dir)
    elif md.is_file():
        cells.append(_md(md.read_text(encoding="utf-8")))
    else:
        cells.append(_md("_No results.csv in this run yet (notebook 04_evaluate writes it)._"))
    return cells


def _difference_cells(run_dir: Path) -> list:
    try:
        comparisons = read_comparisons(run_dir)
    except (ValueError, pd.errors.ParserError) as err:
        return [_md("### Differences"), _md(f"_comparisons.csv could not be read: {err}_")]
    if comparisons is None:
        return []
    cells = [_md("### Differences"), _md(differences_note(comparisons))]
    try:
        tables = difference_tables(comparisons)
    except (KeyError, AttributeError, ValueError) as err:
        return cells + [_md(f"_comparisons.csv lacks what the table needs: {err}_")]
    for title, table in tables:
        cells += [_md(f"#### {title}"), _display(_html_table(table))]
    return cells


def _probe_cells(run_dir: Path) -> list:
    path = run_dir / "probes.csv"
    cells = [_md("## Disentanglement probes")]
    if not path.is_file():
        return cells + [_md("_No probes.csv in this run yet "
                            "(notebook 05_explore_embeddings writes it)._")]
    try:
        probes = pd.read_csv(path)
        need = {"method", "feature", "target", "accuracy"}
        if not need <= set(probes.columns):
            raise ValueError(f"needs columns {sorted(need)}, has {list(probes.columns)}")
    except (ValueError, pd.errors.ParserError) as err:
        return cells + [_md(f"_probes.csv could not be read: {err}_")]
    cells.append(_md("Held-out linear-probe accuracy of content and style from each feature. "
                     "Disentangled: content decodable from `f_sr` and not from `f_sa`; "
                     "style the other way round."))
    probes = probes.astype({"method": str, "feature": str, "target": str})
    probes["column"] = probes["target"] + " from " + probes["feature"]
    table = probes.pivot_table(index="method", columns="column", values="accuracy",
                               aggfunc="mean", sort=False).round(3)
    if "chance" in probes.columns:
        chance = probes.groupby("column", sort=False)["chance"].mean().round(3)
        table.loc["(chance)"] = chance.reindex(table.columns)
    cells.append(_display(_html_table(table.reset_index().rename_axis(None, axis=1), digits=3)))
    return cells


def _figure_cells(run_dir: Path) -> list:
    figures = sorted((run_dir / "figures").rglob("*.png")) if (run_dir / "figures").is_dir() else []
    cells = [_md("## Figures")]
    if not figures:
        return cells + [_md("_No figures in this run yet._")]
    for path in figures:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        name = path.relative_to(run_dir).as_posix()
        cells += [_md(f"**{name}**"),
                  _display({"image/png": data, "text/plain": name}, {"image/png": {"alt": name}})]
    return cells


def _params_cells(run_dir: Path) -> list:
    path = run_dir / "params.yaml"
    if not path.is_file():
        return [_md("## Parameters"), _md("_No params.yaml in this run._")]
    text = path.read_text(encoding="utf-8")
    html = f"<details><summary>params.yaml</summary><pre>{escape(text)}</pre></details>"
    return [_md("## Parameters"), _display({"text/html": html, "text/plain": text})]


def _env_cells(run_dir: Path) -> list:
    env, problem = _read_json(run_dir / "env.json")
    cells = [_md("## Environment")]
    if env is None:
        return cells + [_md(f"_{problem or 'No env.json in this run.'}_")]
    git = env.get("git") or {}
    commit = git.get("commit") or "no commit"
    dirty = " (uncommitted changes)" if git.get("dirty") else ""
    lines = [f"- command: `{env.get('command', '?')}`",
             f"- git: `{commit}`{dirty}",
             f"- Python {env.get('python', '?')} on {env.get('platform', '?')}, "
             f"{env.get('cpu_count', '?')} CPUs, host {env.get('host', '?')}",
             f"- recorded {env.get('created', '?')}"]
    cells.append(_md("\n".join(lines)))
    packages = env.get("packages") or {}
    if packages:
        table = pd.DataFrame({"package": list(packages),
                              "version": [v or "not installed" for v in packages.values()]})
        cells.append(_display(_html_table(table)))
    return cells


def _timing_cells(run_dir: Path) -> list:
    timings, problem = _read_json(run_dir / "timings.json")
    cells = [_md("## Timings")]
    if timings is None:
        note = problem or "No timings.json: this run was not made by dasd-run."
        return cells + [_md(f"_{note}_")]
    rows = [{"notebook": name, "status": entry.get("status", "?"),
             "seconds": entry.get("seconds")}
            for name, entry in sorted((timings.get("notebooks") or {}).items())]
    cells.append(_md(f"Run status: **{timings.get('status', '?')}**, started "
                     f"{timings.get('started', '?')}."))
    if rows:
        cells.append(_display(_html_table(pd.DataFrame(rows))))
    return cells


def build_report_notebook(run_dir: str | Path):
    """The report as an in-memory notebook (nothing is executed)."""
    import nbformat
    run_dir = Path(run_dir).resolve()
    nb = nbformat.v4.new_notebook()
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [_md(f"# DASD run `{run_dir.name}`\n\nRun folder: `{run_dir}`. "
                    "Retrieval results, disentanglement probes, figures, and what produced them.")]
    for part in (_results_cells, _probe_cells, _figure_cells, _params_cells, _env_cells,
                 _timing_cells):
        nb.cells += part(run_dir)
    return nb


def write_report(run_dir: str | Path) -> Path:
    """Build run_dir/report.html (no code cells); also (re)write results.md from results.csv."""
    from nbconvert import HTMLExporter

    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    try:
        write_results_markdown(run_dir)
    except (ValueError, pd.errors.ParserError):
        pass  # the report itself says what is wrong with results.csv
    nb = build_report_notebook(run_dir)
    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    resources = {"metadata": {"name": f"DASD run {run_dir.name}"}}  # the page title
    html, _ = exporter.from_notebook_node(nb, resources=resources)
    out = run_dir / "report.html"
    return atomic_write(out, html)
