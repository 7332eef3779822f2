"""report.html and results.md from a run folder, without executing anything."""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dasd_lib.config import load_params, save_params
from dasd_lib.evaluate import summary_table
from dasd_lib.plots import per_language_table
from dasd_lib.report import (differences_note, difference_tables, results_markdown, seed_summary,
                             summary_tables)
from dasd_lib.report_html import write_report

RECALLS = ["i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10"]


def results_frame(sumr: dict[tuple[str, str, int], float], setting: str = "finetune") -> pd.DataFrame:
    """Long-form results rows from {(method, lang, seed): SumR}."""
    rows = []
    for (method, lang, seed), total in sumr.items():
        recalls = dict.fromkeys(RECALLS, total / 6)
        rows.append({"setting": setting, "method": method, "lang": lang, "seed": seed, **recalls,
                     "SumR": total, "AR": total / 6,
                     "trainable_params": 1_234_567 if method == "dasd" else 89_000})
    return pd.DataFrame(rows)


@pytest.fixture
def run_dir(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = tmp_path / "20261128-073512-smoke"
    (run / "figures").mkdir(parents=True)
    results_frame({("static", "de", 0): 401.0, ("static", "zh", 0): 377.0,
                   ("dasd", "de", 0): 433.5, ("dasd", "zh", 0): 390.5}).to_csv(
        run / "results.csv", index=False)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(run / "figures" / "loss_cla.png")
    plt.close(fig)
    save_params(load_params(None, ["cla.steps=7"]), run / "params.yaml")
    (run / "env.json").write_text(json.dumps({"python": "3.11.9", "git": {"commit": "abc123"},
                                              "packages": {"torch": "2.13.0"}}))
    return run


def test_report_holds_results_image_params_and_no_code(run_dir):
    out = write_report(run_dir)
    assert out == run_dir / "report.html"
    html = out.read_text(encoding="utf-8")
    # the results table: both methods, per-language SumR and the target-language average
    assert "static" in html and "dasd" in html
    assert "433.5" in html and "412.0" in html  # dasd de; dasd avg of (433.5, 390.5)
    assert "1,234,567" in html
    # the PNG itself, embedded
    png = base64.b64encode((run_dir / "figures" / "loss_cla.png").read_bytes()).decode()
    assert f"data:image/png;base64,{png[:200]}" in html
    assert "figures/loss_cla.png" in html
    assert "steps: 7" in html and "abc123" in html  # params.yaml and env.json made it in
    # no code input anywhere: no editor blocks, no prompts
    assert '<div class="jp-CodeMirrorEditor' not in html
    assert "In [" not in html
    # missing optional pieces are said, not crashed on
    assert "No probes.csv" in html and "No timings.json" in html
    # results.md is written from results.csv
    assert "| dasd |" in (run_dir / "results.md").read_text()


def test_report_of_an_empty_run_and_probe_table(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    html = write_report(run).read_text(encoding="utf-8")
    assert "No results.csv" in html and "No figures" in html and "No params.yaml" in html

    pd.DataFrame({"method": ["dasd"] * 4, "feature": ["f_sr", "f_sa"] * 2,
                  "target": ["content", "content", "style", "style"],
                  "accuracy": [0.91, 0.22, 0.31, 0.84], "chance": [0.1, 0.1, 0.25, 0.25]}
                 ).to_csv(run / "probes.csv", index=False)
    (run / "results.csv").write_text("not,a\nresults,table\n")
    html = write_report(run).read_text(encoding="utf-8")
    assert "content from f_sr" in html and "0.91" in html and "(chance)" in html
    assert "results.csv could not be read" in html


def test_results_markdown_two_seeds_mean_std_and_variants():
    df = results_frame({("static", "de", 0): 400.0, ("static", "de", 1): 410.0,
                        ("static", "zh", 0): 300.0, ("static", "zh", 1): 320.0,
                        ("dasd", "de", 0): 420.0, ("dasd", "de", 1): 420.0,
                        ("dasd", "zh", 0): 330.0, ("dasd", "zh", 1): 350.0})
    md = results_markdown(df)
    assert "mean ± std [95 % t-interval of the mean] over 2 seeds" in md
    static = next(line for line in md.splitlines() if line.startswith("| static"))
    # de: mean 405, sample std 7.07, half-width t_{0.975,1} 12.706 x 7.07 / sqrt 2 = 63.5;
    # avg per seed (350, 365) -> 357.5 ± 10.6, half-width 12.706 x 10.61 / sqrt 2 = 95.3
    assert "405.0 ± 7.1 [341.5, 468.5]" in static and "310.0 ± 14.1 [" in static
    assert "357.5 ± 10.6 [262.2, 452.8]" in static
    assert "89,000" in static
    assert "| method | de | zh | avg | trainable params |" in md

    both = pd.concat([df.assign(variant="native"), df.assign(variant="mt_clean"),
                      results_frame({("dasd", "de", 0): 1.0}, setting="zeroshot")
                      .assign(variant="native")])
    titles = [t for t, _ in summary_tables(both)]
    assert titles == ["finetune · native", "finetune · mt_clean", "zeroshot · native"]
    one_seed = results_markdown(df[df.seed == 0])
    assert "±" not in one_seed.split("\n", 1)[1] and "1 seed" in one_seed


@settings(max_examples=25, deadline=None)
@given(values=st.lists(st.floats(0, 600, allow_nan=False), min_size=2, max_size=5))
def test_results_markdown_mean_matches_numpy(values):
    df = results_frame({("dasd", "fr", seed): v for seed, v in enumerate(values)})
    row = next(line for line in results_markdown(df).splitlines() if line.startswith("| dasd"))
    found = re.search(r"\| ([\d.]+) ± ([\d.]+) \[(-?[\d.]+), (-?[\d.]+)\] \|", row)
    mean, std, low, high = (float(x) for x in found.groups())
    assert mean == pytest.approx(np.mean(values), abs=0.051)
    assert std == pytest.approx(np.std(values, ddof=1), abs=0.051)
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    assert low == pytest.approx(np.mean(values) - half, abs=0.051)
    assert high == pytest.approx(np.mean(values) + half, abs=0.051)


def comparisons_frame() -> pd.DataFrame:
    """A comparisons.csv as evaluate.compare_methods writes it: dasd against static (better
    on average, the interval above 0) and floor, zh not significant against static."""
    rows = [("static", "avg", 12.3, 4.1, 20.5), ("static", "de", 32.5, 20.0, 45.0),
            ("static", "zh", -8.0, -30.0, 14.0), ("floor", "avg", 390.0, 380.0, 400.0),
            ("floor", "de", 420.0, 405.0, 435.0), ("floor", "zh", 360.0, 345.0, 375.0)]
    return pd.DataFrame([{"setting": "finetune", "variant": "native", "lang": lang,
                          "method": "dasd", "baseline": baseline, "diff_SumR": d, "ci_low": lo,
                          "ci_high": hi, "significant": lo > 0 or hi < 0, "SumR": 400.0,
                          "SumR_baseline": 400.0 - d, "n_seeds": 1, "n_images": 32,
                          "n_boot": 1000} for baseline, lang, d, lo, hi in rows])


def test_differences_table_in_results_md_and_report(run_dir):
    comparisons_frame().to_csv(run_dir / "comparisons.csv", index=False)
    html = write_report(run_dir).read_text(encoding="utf-8")
    md = (run_dir / "results.md").read_text(encoding="utf-8")
    assert "## Differences" in md and "1000 replicates" in md and "32 test images" in md
    assert "### finetune · native: dasd − baseline" in md
    assert "| baseline | avg | de | zh |" in md
    differences = md.split("## Differences", 1)[1]
    static = next(line for line in differences.splitlines() if line.startswith("| static"))
    assert static == "| static | +12.3 [+4.1, +20.5] | +32.5 [+20.0, +45.0] | -8.0 [-30.0, +14.0] n.s. |"
    assert md.count("n.s.") == 2  # the zh cell and the note's explanation
    assert "Differences" in html and "-8.0 [-30.0, +14.0] n.s." in html
    assert "+390.0 [+380.0, +400.0]" in html
    titles = [title for title, _ in difference_tables(comparisons_frame())]
    assert titles == ["finetune · native: dasd − baseline"]
    assert difference_tables(None) == [] and difference_tables(comparisons_frame().iloc[:0]) == []


def test_notebook_and_report_tables_share_one_aggregation():
    df = results_frame({("static", "de", 0): 400.0, ("static", "de", 1): 410.0,
                        ("static", "zh", 0): 300.0, ("static", "zh", 1): 320.0,
                        ("oracle", "en", 0): 550.0}).assign(variant="native")
    summary = seed_summary(df)
    static_avg = summary[(summary.method == "static") & (summary.lang == "avg")].iloc[0]
    assert static_avg.SumR == 357.5 and static_avg.seeds == 2
    half = 12.706204736174707 * np.std([350.0, 365.0], ddof=1) / np.sqrt(2)
    assert static_avg.SumR_ci_low == pytest.approx(357.5 - half)
    # evaluate.summary_table: the average (the oracle: English) with the same interval
    table = summary_table(df).set_index("method")
    assert list(table.columns) == ["setting", "SumR", "SumR_std", "SumR_ci_low", "SumR_ci_high",
                                   "t2i_R1", "i2t_R1", "seeds", "trainable_params"]
    assert table.loc["static", "SumR_ci_high"] == pytest.approx(357.5 + half)
    assert table.loc["oracle", "SumR"] == 550.0 and np.isnan(table.loc["oracle", "SumR_ci_low"])
    # plots.per_language_table (notebook 04's heatmap) and the report cells agree
    per_lang = per_language_table(df, "finetune").set_index("method")
    assert per_lang.loc["static", ["de", "zh", "avg"]].tolist() == [405.0, 310.0, 357.5]
    assert list(per_lang.columns) == ["en", "de", "zh", "avg"]
    (_, report_table), = summary_tables(df)
    assert list(report_table.columns) == ["method", "en", "de", "zh", "avg", "trainable params"]
    assert report_table.set_index("method").loc["static", "avg"].startswith("357.5 ± 10.6 [")
    assert report_table.set_index("method").loc["oracle", "avg"] == "–"


def test_eval_split_picks_the_rows_and_is_named_in_the_tables(tmp_path):
    from conftest import smoke_params
    from dasd_lib.config import ConfigError
    from dasd_lib.context import Run

    def test_table(params):
        return Run(params, tmp_path / "reports" / "split").test_table()

    val = test_table(smoke_params(tmp_path, "run.eval_split=val"))
    assert set(val["split"]) == {"val"} and len(val) > 0
    assert set(test_table(smoke_params(tmp_path))["split"]) == {"test"}
    with pytest.raises(ConfigError, match="run.eval_split is 'train', not one of test, val"):
        test_table(smoke_params(tmp_path, "run.eval_split=train"))
    with pytest.raises(ConfigError, match="data.n_val is 0"):
        test_table(smoke_params(tmp_path, "run.eval_split=val", "data.n_val=0"))

    rows = pd.DataFrame([{"setting": "finetune", "method": m, "variant": "native", "lang": "de",
                          "seed": 0, "SumR": s, "split": "val", "trainable_params": 1}
                         for m, s in (("static", 300.0), ("dasd", 310.0))])
    text = results_markdown(rows)
    assert "Evaluated on the val split" in text
    assert "Evaluated on the" not in results_markdown(rows.assign(split="test"))
    comparisons = pd.DataFrame([{"n_boot": 10, "n_images": 24, "split": "val"}])
    assert "the full val split" in differences_note(comparisons)


def test_results_state_the_chance_level():
    """10 images, 1 caption each: R@1/5/10 = 10/50/100 both ways, so chance SumR = 320."""
    df = results_frame({("dasd", "de", 0): 400.0}).assign(n_images=10, n_captions=10)
    assert "Chance level: a random ranking scores SumR 320.0 here (10 test images)." in results_markdown(df)
    # two test sizes: the range of both
    from dasd_lib.metrics import chance_sumr
    two = pd.concat([df, df.assign(lang="zh", n_images=100, n_captions=100)])
    assert (f"SumR {chance_sumr(100, 1):.1f} to 320.0 here (10-100 test images)"
            in results_markdown(two))
