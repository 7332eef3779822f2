"""Every notebook, run in order through the runner (dasd-run's run_notebooks) with
params/smoke.yaml, data and reports in a temporary folder; then the run folder is checked:
report, results table, probes, figures. One run per module (about a minute or two)."""
from __future__ import annotations

import json
import re

import nbformat
import pandas as pd
import pytest

from conftest import ROOT, SMOKE, smoke_params
from dasd_lib.execution import execute_notebook
from dasd_lib.run import find_notebooks, run_notebooks

RESULT_COLUMNS = ["setting", "method", "lang", "seed", "i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1",
                  "t2i_R5", "t2i_R10", "SumR", "AR", "trainable_params"]
PROBE_COLUMNS = ["method", "feature", "target", "accuracy", "chance"]


@pytest.fixture(scope="module")
def smoke_run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("notebooks")
    overrides = [f"data.root={tmp / 'dataset'}", f"web.root={tmp / 'dataset'}",
                 f"run.reports_dir={tmp / 'reports'}", "run.device=cpu"]
    # (conftest sets OMP_NUM_THREADS=1 before this; the kernels inherit it)
    run_dir = run_notebooks(SMOKE, run_id="smoke", overrides=overrides,
                            notebooks_dir=ROOT / "notebooks", command=["pytest", "smoke"])
    return run_dir, smoke_params(tmp)


def test_every_notebook_ran(smoke_run_dir):
    run_dir, _ = smoke_run_dir
    sources = [p.name for p in find_notebooks(ROOT / "notebooks")]
    assert [p[:2] for p in sources] == ["00", "01", "02", "03", "04", "05", "06"]
    timings = json.loads((run_dir / "timings.json").read_text())
    assert timings["status"] == "completed"
    assert {k: v["status"] for k, v in timings["notebooks"].items()} == {s: "ok" for s in sources}
    for name in sources:  # executed copies, with outputs and no error output
        nb = nbformat.read(run_dir / "notebooks" / name, as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert outputs, f"{name} produced no output"
        assert not [o for o in outputs if o.get("output_type") == "error"], name


def test_report_holds_results_and_probes(smoke_run_dir):
    run_dir, params = smoke_run_dir
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    # the first results table (finetune, native): a row per method whose cells are the
    # SumR of results.csv (the page also embeds params.yaml, so names alone prove nothing)
    table = html[html.index('<table class="dataframe">'):]
    table = table[:table.index("</table>")]
    header = re.findall(r"<th>([^<]*)</th>", table)
    rows = {m: re.findall(r"<td>([^<]*)</td>", body)
            for m, body in re.findall(r"<tr>\s*<td>([^<]+)</td>(.*?)</tr>", table, re.S)}
    assert set(rows) == set(params.run.methods["finetune"])
    results = pd.read_csv(run_dir / "results.csv")
    native = results[(results.setting == "finetune") & (results.variant == "native")]
    for (method, lang), part in native.groupby(["method", "lang"]):
        cell = rows[method][header.index(lang) - 1]
        assert cell.startswith(f"{part.SumR.mean():.1f}"), (method, lang, cell)
    assert "Disentanglement probes" in html and "style from f_sa" in html
    assert "<td>" in html and "data:image/png;base64" in html  # tables and embedded figures
    assert "In&nbsp;[" not in html and "prepare_run" not in html  # no code cells
    assert (run_dir / "results.md").read_text(encoding="utf-8").count("| dasd |") >= 1
    # the paired-bootstrap differences: comparisons.csv, its tables in results.md and the report
    comparisons = pd.read_csv(run_dir / "comparisons.csv")
    assert {"lang", "baseline", "diff_SumR", "ci_low", "ci_high", "significant"} <= set(comparisons.columns)
    assert set(comparisons.baseline) == set(params.run.methods["finetune"]) - {"dasd", "oracle"}
    assert (comparisons.ci_low <= comparisons.ci_high).all()
    assert "## Differences" in (run_dir / "results.md").read_text(encoding="utf-8")
    assert "dasd − baseline" in html and "replicates" in html


def test_finished_report_is_final_offline_and_linked_relatively(smoke_run_dir):
    from bs4 import BeautifulSoup
    from test_report_html import external_references, timings_table
    run_dir, _ = smoke_run_dir
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert external_references(html) == []
    soup = BeautifulSoup(html, features="html.parser")
    # rewritten by the runner after notebook 06: final status, 06 with its seconds
    assert soup.find(id="Timings").find_next("p").get_text().startswith("Run status: completed")
    rows = {name: (status, seconds) for name, status, seconds in timings_table(soup)}
    assert rows["06_report.ipynb"][0] == "ok" and float(rows["06_report.ipynb"][1]) > 0
    assert all(status == "ok" for status, _ in rows.values())
    assert all(img["alt"] and "No description" not in img["alt"] for img in soup.find_all("img"))
    # notebook 06's link, from its executed copy in run/notebooks/
    executed = nbformat.read(run_dir / "notebooks" / "06_report.ipynb", as_version=4)
    links = [o.data["text/markdown"] for c in executed.cells for o in c.get("outputs", [])
             if "open report.html" in o.get("data", {}).get("text/markdown", "")]
    assert links == ["[open report.html](../report.html)"]
    # notebook 05's explorer cell keeps a static result beside the widget
    explore = nbformat.read(run_dir / "notebooks" / "05_explore_embeddings.ipynb", as_version=4)
    last = [c for c in explore.cells if c.cell_type == "code"][-1]
    assert "retrieval_explorer" in last.source
    static = [o for o in last.outputs if "text/html" in o.get("data", {})]
    assert len(static) == 1 and static[0].data["text/html"].count("<img") >= 1


def test_results_csv_has_every_method(smoke_run_dir):
    run_dir, params = smoke_run_dir
    results = pd.read_csv(run_dir / "results.csv")
    assert set(RESULT_COLUMNS) <= set(results.columns)
    for setting, methods in params.run.methods.items():
        if setting not in params.run.settings:
            continue
        have = set(results.loc[results.setting == setting, "method"])
        assert set(methods) <= have, f"{setting}: missing {set(methods) - have}"
    targets = results[results.lang != "en"]
    assert set(targets.lang) == set(params.data.langs)
    assert set(targets.variant) == set(params.run.eval_variants)
    assert results.SumR.between(0, 600).all()


def test_probes_csv(smoke_run_dir):
    run_dir, params = smoke_run_dir
    probes = pd.read_csv(run_dir / "probes.csv")
    assert list(probes.columns[:3]) == PROBE_COLUMNS[:3] and set(PROBE_COLUMNS) <= set(probes.columns)
    assert set(probes.method) == set(params.explore.probe_methods)
    assert {"f_sr", "f_sa", "r_T"} <= set(probes.feature)
    assert set(params.explore.probe_content) | set(params.explore.probe_style) == set(probes.target)
    assert probes.accuracy.between(0, 1).all() and probes.chance.between(0, 1).all()


def test_figures_were_saved(smoke_run_dir):
    run_dir, params = smoke_run_dir
    names = {p.stem for p in (run_dir / "figures").glob("*.png")}
    expected = {"00_sample_images", "00_style_shares", "00_token_coverage", "01_vlp_loss",
                "02_cla_losses", "02_cla_discriminator", "03_cma_losses", "04_sumr_by_method",
                "04_sumr_by_language", "04_differences", "05_probes", "05_wz_variation", "05_wz_examples",
                "05_search_example", *(f"05_umap_{m}" for m in params.explore.umap_methods)}
    assert expected <= names, f"missing figures: {sorted(expected - names)}"
    for path in (run_dir / "figures").glob("*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_same_parameters_give_byte_identical_results(smoke_run_dir):
    """A second run of the same parameter file and overrides into another run folder (the
    corpus is reused, every model is retrained) writes the same bytes."""
    run_dir, _ = smoke_run_dir
    tmp = run_dir.parents[1]
    overrides = [f"data.root={tmp / 'dataset'}", f"web.root={tmp / 'dataset'}",
                 f"run.reports_dir={tmp / 'reports'}", "run.device=cpu"]
    again = run_notebooks(SMOKE, run_id="smoke-again", overrides=overrides, only="00,01,02,03,04,05",
                          notebooks_dir=ROOT / "notebooks", command=["pytest", "smoke-again"])
    for name in ("results.csv", "probes.csv", "comparisons.csv", "vlp_english_test.json"):
        if name == "comparisons.csv" and not (run_dir / name).exists():
            continue
        assert (again / name).read_bytes() == (run_dir / name).read_bytes(), name
    seeds = json.loads((again / "env.json").read_text())["seeds"]
    assert any(k.startswith("run.vlp_seed") for k in seeds)


def test_relative_paths_mean_the_project_root_wherever_the_kernel_runs(tmp_path):
    """Notebook 00 executed as JupyterLab would: the kernel in notebooks/, then in the run's
    notebooks/ copy, with relative params_file and run_dir and the relative default
    data.root. Everything written lands in the run folder or the data root."""
    project = tmp_path / "project"
    (project / "params").mkdir(parents=True)
    (project / "notebooks").mkdir()
    (project / "params" / "smoke.yaml").write_text(SMOKE.read_text())
    source = project / "notebooks" / "00_prepare_data.ipynb"
    source.write_bytes((ROOT / "notebooks" / source.name).read_bytes())
    before = {p for p in project.rglob("*")}
    parameters = {"params_file": "params/smoke.yaml", "run_dir": "reports/rel",
                  "overrides": ["run.device=cpu"]}
    run = project / "reports" / "rel"
    (run / "notebooks").mkdir(parents=True)  # where dasd-run keeps executed copies
    execute_notebook(source, run / "notebooks" / source.name, parameters=parameters,
                     cwd=project / "notebooks")
    again = run / "notebooks" / "again.ipynb"
    execute_notebook(run / "notebooks" / source.name, again, parameters=parameters,
                     cwd=run / "notebooks")
    written = {p for p in project.rglob("*") if p.is_file()} - before
    outside = [p for p in written if not (p.is_relative_to(run) or p.is_relative_to(project / "dataset"))]
    assert outside == []
    assert (project / "dataset" / "smoke" / "meta.json").is_file() and (run / "params.yaml").is_file()
    assert not (run / "notebooks" / "dataset").exists() and not (project / "notebooks" / "dataset").exists()


def test_notebook_00_shows_every_languages_sample_captions(smoke_run_dir):
    run_dir, params = smoke_run_dir
    nb = nbformat.read(run_dir / "notebooks" / "00_prepare_data.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "display(grid.captions)" in c.source)
    html = "".join(o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {}))
    cells = set(re.findall(r"<td>([^<]*)</td>", html))
    assert "..." not in cells  # pandas' elision of middle rows
    assert set(params.data.langs) | {"en"} <= cells


def test_results_md_states_the_chance_level(smoke_run_dir):
    run_dir, _ = smoke_run_dir
    assert "Chance level: a random ranking scores SumR" in (run_dir / "results.md").read_text()
