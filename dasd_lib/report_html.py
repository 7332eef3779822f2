"""report.html: a run folder gathered into one page that opens offline, built without
executing code.

`write_report(run_dir)` assembles a notebook in memory (markdown cells and display_data
outputs only) from what the run folder holds - results.csv / results.md, comparisons.csv,
probes.csv, figures/*.png, params.yaml, env.json, timings.json (REPORT_INPUTS) - exports it
with nbconvert's HTMLExporter (lab template, code input excluded) and puts a table of
contents under the title. A missing piece is noted in the report.

Self-contained: figures are embedded as data: URIs with an alt text and a caption saying
what they show (FIGURE_CAPTIONS), and the template's require.js, MathJax and mermaid
scripts, which the lab template loads from a CDN, are left out (the report has no code,
no formulas and no diagrams), so opening the file makes no network request.

`stale_report_inputs(run_dir)`: the inputs written after report.html, so whoever changes a
finished run's folder (dasd-run at the end of a run, a notebook re-run in JupyterLab) can
rewrite the report instead of leaving it stale.
"""
from __future__ import annotations

import base64
import json
import os
import re
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

import pandas as pd

from .config import SOURCE_LANG, TARGET_LANGS
from .report import (AVG_COLUMN, METRICS, SUMMARY_KEYS, _seed_note, difference_tables,
                     differences_note, read_comparisons, seed_summary, summary_tables,
                     write_results_markdown)
from .storage import atomic_write

REPORT_FILE = "report.html"
# what write_report reads; a change to any of them makes report.html stale
REPORT_INPUTS = ("results.csv", "comparisons.csv", "probes.csv", "params.yaml", "env.json",
                 "timings.json")
FIGURES_DIR = "figures"
LANGS = [SOURCE_LANG, *TARGET_LANGS]

# The lab template with its script blocks emptied: each loads a library from a CDN
# (require.js for widgets, MathJax, mermaid), which the report does not need.
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""

# (figure file stem pattern, what the figure shows); groups fill {0}, {1}. The notebooks
# name their figures (plots.save_figure), so a new figure name needs a line here.
FIGURE_CAPTIONS: list[tuple[str, str]] = [
    (r"00_sample_images", "Four test images of the benchmark with their ids (notebook 00 "
                          "lists their captions in every language)."),
    (r"00_caption_counts", "Number of captions per split, language and variant (native, "
                           "MT-style) in the corpus."),
    (r"00_style_shares", "Share of each expression style per language, for training "
                         "translations (mt), clean MT-style test captions (mt_clean) and "
                         "native test captions: the style gap DASD is meant to bridge."),
    (r"00_token_coverage", "Share of the word forms of each language's native test captions "
                           "that occur in its training text, content words and all words."),
    (r"01_vlp_loss", "Contrastive training loss of the source vision-language model per step "
                     "(raw and smoothed)."),
    (r"0[23]_(cla|cma)_losses", "Loss terms of the {0} stage per training step, one line per "
                                "method (weighted as they enter the total), a row per setting."),
    (r"0[23]_(cla|cma)_discriminator", "Discriminator accuracy during the {0} stage for the "
                                       "methods with the adversarial loss; near 0.5 means f_sa "
                                       "carries no semantics the discriminator can use."),
    (r"04_sumr_by_method", "SumR per method (mean over target languages; the oracle on "
                           "English) per setting, native and MT-style test captions; error "
                           "bars: 95 % t-interval over seeds."),
    (r"04_differences", "SumR difference of the compared method minus each baseline (mean "
                        "over target languages) with its paired-bootstrap 95 % interval; "
                        "hollow markers: the interval includes 0."),
    (r"04_sumr_by_language", "Heatmap of SumR per method and target language on native test "
                             "captions, one panel per setting."),
    (rf"05_umap_(.+)_({'|'.join(LANGS)})", "UMAP of the {0} features f_sr, f_sa and r_T of {1} test "
                                 "captions only, coloured by content and by style."),
    (r"05_umap_(.+)", "UMAP of the {0} features f_sr, f_sa and r_T (rows) of the sampled "
                      "test captions, coloured by language, content and style (columns)."),
    (r"05_probes", "Held-out linear-probe accuracy of content and style from f_sr, f_sa and "
                   "r_T per method, against chance (black ticks)."),
    (r"05_wz_variation", "Relative change of the generated adapter matrices W_z per layer "
                         "between captions that differ in style only and captions that "
                         "differ in content only."),
    (r"05_wz_examples", "W_z of one layer for three captions (A and B: same image, other "
                        "style; C: other image, A's style) and the differences |A-B| and "
                        "|A-C|."),
    (r"05_search_example", "Retrieval example: the top test images for one native caption, "
                           "with rank and cosine score; its own image framed in red."),
]


def figure_caption(stem: str) -> str:
    """What the figure named `stem` (file name without .png) shows."""
    for pattern, caption in FIGURE_CAPTIONS:
        match = re.fullmatch(pattern, stem)
        if match:
            return caption.format(*(g.upper() if g in ("cla", "cma") else g
                                    for g in match.groups()))
    return f"Figure {stem} (a figure this report has no description for)."


def report_inputs(run_dir: str | Path) -> list[Path]:
    """The files of run_dir the report is made from, those that exist."""
    run_dir = Path(run_dir)
    files = [run_dir / name for name in REPORT_INPUTS if (run_dir / name).is_file()]
    figures = run_dir / FIGURES_DIR
    return files + (sorted(figures.rglob("*.png")) if figures.is_dir() else [])


def stale_report_inputs(run_dir: str | Path) -> list[Path]:
    """The report inputs written after run_dir/report.html; [] when there is no report."""
    report = Path(run_dir) / REPORT_FILE
    if not report.is_file():
        return []
    written = report.stat().st_mtime_ns
    return [p for p in report_inputs(run_dir) if p.stat().st_mtime_ns > written]


def notebook_folder(run_dir: str | Path, environ: Mapping[str, str] | None = None) -> Path:
    """The folder of the notebook this kernel runs. Jupyter's server names the notebook in
    JPY_SESSION_NAME (an absolute path since jupyter_server 2; older ones give a path from
    the server root, and start the kernel in the notebook's folder). Without a server the
    notebook runs under papermill, and dasd-run writes the executed copy to
    run_dir/notebooks/."""
    environ = os.environ if environ is None else environ
    session = environ.get("JPY_SESSION_NAME", "")
    if session:
        path = Path(session)
        return path.parent if path.is_absolute() else Path.cwd()
    return Path(run_dir) / "notebooks"


def report_link(run_dir: str | Path, environ: Mapping[str, str] | None = None) -> str:
    """run_dir/report.html relative to the notebook's folder, URL-quoted: JupyterLab opens
    a relative link from a notebook's output, not a file:// URL."""
    report = Path(run_dir).resolve() / REPORT_FILE
    relative = os.path.relpath(report, Path(notebook_folder(run_dir, environ)).resolve())
    return quote(Path(relative).as_posix())


# ----------------------------------------------------------------------------- cells

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


def _figure_html(path: Path, name: str, number: int) -> str:
    """One figure as <figure>: the PNG as a data: URI, alt text and caption from its name."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = figure_caption(path.stem)
    return (f'<figure id="figure-{number}" style="margin: 0 0 1.5em 0">'
            f'<img src="data:image/png;base64,{data}" alt="{escape(caption)}" '
            f'style="max-width: 100%">'
            f"<figcaption><b>Figure {number}</b> ({escape(name)}): {escape(caption)}"
            f"</figcaption></figure>")


def _figure_cells(run_dir: Path) -> list:
    folder = run_dir / FIGURES_DIR
    figures = sorted(folder.rglob("*.png")) if folder.is_dir() else []
    cells = [_md("## Figures")]
    if not figures:
        return cells + [_md("_No figures in this run yet._")]
    for number, path in enumerate(figures, 1):
        name = path.relative_to(run_dir).as_posix()
        cells.append(_display({"text/html": _figure_html(path, name, number),
                               "text/plain": f"{name}: {figure_caption(path.stem)}"}))
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


def _seconds(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "–"


def timings_rows(timings: dict[str, Any]) -> pd.DataFrame:
    """The Timings table: a row per notebook (name order) with its status and seconds."""
    rows = [{"notebook": name, "status": str(entry.get("status", "?")),
             "seconds": _seconds(entry.get("seconds"))}
            for name, entry in sorted((timings.get("notebooks") or {}).items())
            if isinstance(entry, dict)]
    return pd.DataFrame(rows, columns=["notebook", "status", "seconds"])


def _timing_cells(run_dir: Path) -> list:
    timings, problem = _read_json(run_dir / "timings.json")
    cells = [_md("## Timings")]
    if timings is None:
        note = problem or "No timings.json: this run was not made by dasd-run."
        return cells + [_md(f"_{note}_")]
    status = str(timings.get("status", "?"))
    # after --resume, started/finished/total belong to the last dasd-run only, while the
    # table keeps every notebook's latest execution: the sentence says which is which
    line = f"Run status: **{status}**; the last dasd-run started {timings.get('started', '?')}"
    if timings.get("finished"):
        line += f", finished {timings['finished']}"
    if isinstance(timings.get("total_seconds"), (int, float)):
        line += f" ({timings['total_seconds']:.1f} s)"
    if status == "running":
        # a report notebook 06 writes during a dasd-run; the runner rewrites it at the end
        line += (". The run was still going when this report was written; dasd-run "
                 "rewrites the report with the final timings when the run ends")
    rows = timings_rows(timings)
    if not rows.empty:
        line += ". Below, each notebook's latest execution"
    cells.append(_md(line + "."))
    if not rows.empty:
        cells.append(_display(_html_table(rows)))
    return cells


def build_report_notebook(run_dir: str | Path):
    """The report as an in-memory notebook (nothing is executed)."""
    import nbformat
    run_dir = Path(run_dir).resolve()
    nb = nbformat.v4.new_notebook()
    nb.metadata["language_info"] = {"name": "python"}
    written = datetime.now().astimezone().isoformat(timespec="seconds")
    nb.cells = [_md(f"# DASD run `{run_dir.name}`\n\nRun folder: `{run_dir}`; report written "
                    f"{written}. Retrieval results, disentanglement probes, figures, and what "
                    "produced them.")]
    for part in (_results_cells, _probe_cells, _figure_cells, _params_cells, _env_cells,
                 _timing_cells):
        nb.cells += part(run_dir)
    return nb


def _add_contents(html: str) -> str:
    """A table of contents after the title: a link to every h2 and h3, by the ids nbconvert
    gave the headings (read back from the page, so the links always resolve)."""
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(html, features="html.parser")
    title = soup.find("h1")
    headings = [h for h in soup.find_all(["h2", "h3"]) if h.get("id")]
    if title is None or not headings:
        return html
    nav = soup.new_tag("nav", attrs={"id": "contents", "aria-label": "Contents"})
    nav.append(soup.new_tag("strong"))
    nav.strong.string = "Contents"
    top = soup.new_tag("ul")
    nav.append(top)
    current = None
    for h in headings:
        item = soup.new_tag("li")
        link = soup.new_tag("a", href=f"#{h['id']}")
        link.string = h.get_text().rstrip("¶").strip()
        item.append(link)
        if h.name == "h3" and current is not None:
            sub = current.find("ul")
            if sub is None:
                sub = soup.new_tag("ul")
                current.append(sub)
            sub.append(item)
        else:
            top.append(item)
            current = item
    # the title's cell holds the intro paragraph too: contents go after it
    (title.find_next_sibling("p") or title).insert_after(nav)
    return str(soup)


def write_report(run_dir: str | Path) -> Path:
    """Build run_dir/report.html (no code cells, nothing fetched from the network when it is
    opened); also (re)write results.md from results.csv."""
    from nbconvert import HTMLExporter

    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    try:
        write_results_markdown(run_dir)
    except (ValueError, pd.errors.ParserError):
        pass  # the report itself says what is wrong with results.csv
    nb = build_report_notebook(run_dir)
    exporter = HTMLExporter(template_name="lab", raw_template=OFFLINE_TEMPLATE)
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    resources = {"metadata": {"name": f"DASD run {run_dir.name}"}}  # the page title
    html, _ = exporter.from_notebook_node(nb, resources=resources)
    return atomic_write(run_dir / REPORT_FILE, _add_contents(html))
