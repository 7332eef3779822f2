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

from dasd_lib.config import load_params, save_params
from dasd_lib.report import results_markdown, summary_tables, write_report

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
    assert "mean ± std over 2 seeds" in md
    static = next(line for line in md.splitlines() if line.startswith("| static"))
    # de: mean 405, sample std 7.1; avg per seed (350, 365) -> 357.5 ± 10.6
    assert "405.0 ± 7.1" in static and "310.0 ± 14.1" in static and "357.5 ± 10.6" in static
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
    mean, std = (float(x) for x in re.search(r"\| ([\d.]+) ± ([\d.]+) \|", row).groups())
    assert mean == pytest.approx(np.mean(values), abs=0.051)
    assert std == pytest.approx(np.std(values, ddof=1), abs=0.051)
