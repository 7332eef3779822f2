"""The run report: results tables as markdown, and report.html built without executing code.

`write_report(run_dir)` assembles a notebook in memory (markdown cells and display_data
outputs only) from what the run folder holds - results.csv / results.md, probes.csv,
figures/*.png, params.yaml, env.json, timings.json - and exports it with nbconvert's
HTMLExporter with code input excluded. A missing piece is noted in the report.

results.csv is long form, one row per (setting, [variant,] method, lang, seed):
    setting, method, lang, seed, i2t_R1, i2t_R5, i2t_R10, t2i_R1, t2i_R5, t2i_R10,
    SumR, AR, trainable_params [, variant]
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

METRICS = ["i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "SumR", "AR"]
AVG_COLUMN = "avg"
PARAMS_COLUMN = "trainable params"


# ----------------------------------------------------------------------------- results tables

def _ordered(values: pd.Series, known: list[str]) -> list[str]:
    """Unique values, the `known` ones first in that order, then the rest as they appear."""
    seen = list(dict.fromkeys(str(v) for v in values))
    return [v for v in known if v in seen] + [v for v in seen if v not in known]


def _mean_std(values: np.ndarray) -> str:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return "–"
    if values.size == 1:
        return f"{values[0]:.1f}"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"  # sample std over seeds


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


def summary_tables(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One table per setting (and variant): a row per method, SumR per language and the
    average over target languages (mean ± sample std over seeds when several), and the
    trainable parameter count. Cells are formatted strings; titles like 'finetune · native'."""
    df = _normalise(df)
    tables = []
    for setting in _ordered(df["setting"], ["finetune", "zeroshot"]):
        part = df[df["setting"] == setting]
        for variant in _ordered(part["variant"], ["native", "mt_clean", "mt"]):
            sub = part[part["variant"] == variant]
            langs = _ordered(sub["lang"], [SOURCE_LANG, *TARGET_LANGS])
            targets = [lang for lang in langs if lang != SOURCE_LANG]
            rows = []
            for method in dict.fromkeys(sub["method"]):
                m = sub[sub["method"] == method]
                row = {"method": method}
                for lang in langs:
                    row[lang] = _mean_std(m.loc[m["lang"] == lang, "SumR"].to_numpy(float))
                # average over target languages per seed first, so the spread is over seeds
                per_seed = m[m["lang"].isin(targets)].groupby("seed", sort=True)["SumR"].mean()
                row[AVG_COLUMN] = _mean_std(per_seed.to_numpy(float))
                tp = m["trainable_params"].dropna() if "trainable_params" in m.columns else []
                row[PARAMS_COLUMN] = _count(tp.iloc[0]) if len(tp) else "–"
                rows.append(row)
            title = f"{setting} · {variant}" if variant else setting
            tables.append((title, pd.DataFrame(rows, columns=["method", *langs, AVG_COLUMN,
                                                              PARAMS_COLUMN])))
    return tables


def _seed_note(df: pd.DataFrame) -> str:
    n = df["seed"].nunique() if "seed" in df.columns else 1
    spread = f"mean ± std over {n} seeds" if n > 1 else "1 seed"
    return (f"SumR (sum of R@1/5/10 both ways, max 600) per language; `{AVG_COLUMN}` is the "
            f"mean over target languages; {spread}.")


def _markdown_table(table: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|")
    header = "| " + " | ".join(cell(c) for c in table.columns) + " |"
    rule = "|" + "|".join([" --- "] + [" ---: "] * (len(table.columns) - 1)) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def results_markdown(df: pd.DataFrame) -> str:
    """results.md: a heading and a markdown table per setting (and variant)."""
    if df.empty:
        return "_No results yet._\n"
    parts = [_seed_note(df)]
    for title, table in summary_tables(df):
        parts += [f"### {title}", _markdown_table(table)]
    return "\n\n".join(parts) + "\n"


def write_results_markdown(run_dir: str | Path) -> Path | None:
    """(Re)write run_dir/results.md from run_dir/results.csv; None when there is no csv."""
    run_dir = Path(run_dir)
    csv = run_dir / "results.csv"
    if not csv.is_file():
        return None
    out = run_dir / "results.md"
    out.write_text("# Results\n\n" + results_markdown(pd.read_csv(csv)), encoding="utf-8")
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
            full = _normalise(df)
            for col in metrics:
                full[col] = pd.to_numeric(full[col], errors="coerce")
            keys = ["setting", "variant", "method", "lang"]
            full = full.groupby(keys, sort=False)[metrics].mean().reset_index()
            # the summary tables' order: setting, variant, then methods and languages as listed
            order = {k: {v: i for i, v in enumerate(_ordered(full[k], known))} for k, known in (
                ("setting", ["finetune", "zeroshot"]), ("variant", ["native", "mt_clean", "mt"]),
                ("method", []), ("lang", [SOURCE_LANG, *TARGET_LANGS]))}
            full = full.sort_values(keys, key=lambda col: col.map(order[col.name]), kind="stable")
            if not (full["variant"] != "").any():
                full = full.drop(columns="variant")
            n = df["seed"].nunique() if "seed" in df.columns else 1
            fold = f"All metrics per language (recall in %, mean over {n} seed{'s' * (n > 1)})"
            cells.append(_display(_html_table(full, fold=fold)))
    elif md.is_file():
        cells.append(_md(md.read_text(encoding="utf-8")))
    else:
        cells.append(_md("_No results.csv in this run yet (notebook 04_evaluate writes it)._"))
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
    tmp = out.with_name(".report.html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out
