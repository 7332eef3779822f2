"""dasd_lib.findings and dasd_lib.study: docs/findings.md from study sweep folders, checked on hand-made run
folders whose numbers give hand-computable differences, gaps and discriminator accuracies."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SMOKE
from dasd_lib import findings as F
from dasd_lib import study as S
from dasd_lib.config import load_params, save_params
from dasd_lib.metrics import seed_interval


def fake_run(sweep_dir: Path, name: str, overrides: list[str], seed: int,
             sumr: dict[tuple[str, str], float], probes: list[dict] = (),
             d_acc: dict[str, list[float]] | None = None, status: str = "completed") -> Path:
    """A finished run folder: params.yaml, timings.json, results.csv (SumR per (method,
    variant) for German), probes.csv, losses/ with d_acc and train_cla_summary.csv."""
    folder = sweep_dir / "runs" / name
    (folder / "losses").mkdir(parents=True)
    save_params(load_params(SMOKE, [*overrides, f"run.seeds=[{seed}]", f"run.run_id={name}"]),
                folder / "params.yaml")
    (folder / "timings.json").write_text(json.dumps({"status": status, "notebooks": {}}))
    pd.DataFrame([{"setting": "finetune", "method": m, "variant": v, "lang": "de", "seed": seed,
                   "SumR": s, "trainable_params": 10} for (m, v), s in sumr.items()]
                 ).to_csv(folder / "results.csv", index=False)
    pd.DataFrame(list(probes), columns=["method", "feature", "target", "kind", "accuracy",
                                        "chance"]).to_csv(folder / "probes.csv", index=False)
    for method, accs in (d_acc or {}).items():
        pd.DataFrame({"step": range(len(accs)), "d_acc": accs, "total": 1.0}).to_csv(
            folder / "losses" / f"finetune__{method}__seed{seed}__cla.csv", index=False)
    methods = sorted({m for m, _ in sumr})
    pd.DataFrame([{"setting": "finetune", "method": m, "seed": seed, "stage": "cla",
                   "steps": 10, "seconds": 1.0 + (m == "dasd"), "trainable_params": 100 + (m == "dasd")}
                  for m in methods]).to_csv(folder / "train_cla_summary.csv", index=False)
    return folder


def test_paired_differences_are_per_seed_with_a_t_interval():
    rows = pd.DataFrame({"variant": "native", "seed": [0, 1, 2, 0, 1, 2],
                         "method": ["dasd"] * 3 + ["static"] * 3,
                         "SumR": [310.0, 305.0, 320.0, 300.0, 296.0, 309.0]})
    diffs = S.paired_differences(rows[rows.method == "dasd"], rows[rows.method == "static"], ["variant"])
    expected = seed_interval([10.0, 9.0, 11.0])
    row = diffs.iloc[0]
    assert (row["method"], row["baseline"], row["n_seeds"]) == ("dasd", "static", 3)
    assert row["diff"] == pytest.approx(10.0) and row["ci_low"] == pytest.approx(expected["ci_low"])
    assert row["verdict"] == "better"  # 10 +- 4.30 * 1 / sqrt(3) = [7.5, 12.5]
    wide = rows.assign(SumR=[310.0, 305.0, 320.0, 300.0, 301.0, 308.0])  # 10, 4, 12: [-1.7, 19.0]
    assert S.paired_differences(wide[wide.method == "dasd"], wide[wide.method == "static"],
                                ["variant"])["verdict"].iloc[0] == "no difference"
    # a seed missing on one side is not paired; one seed gives no interval
    one = S.paired_differences(rows[(rows.method == "dasd") & (rows.seed == 0)],
                               rows[rows.method == "static"], ["variant"]).iloc[0]
    assert one["n_seeds"] == 1 and one["verdict"] == "one seed"
    assert S.verdict(-1.0, 2.0) == "no difference" and S.verdict(-3.0, -1.0) == "worse"


def test_style_gap_and_feature_contrast_hand_computed():
    sumr = pd.DataFrame({"mt_native_share": [0.0] * 4, "method": ["dasd"] * 4, "seed": [0, 0, 1, 1],
                         "variant": ["native", "mt_clean"] * 2, "SumR": [200.0, 260.0, 210.0, 250.0]})
    gaps = S.style_gaps(sumr, ["mt_native_share"])
    assert gaps.sort_values("seed")["gap"].tolist() == [-60.0, -40.0]
    probes = pd.DataFrame({"run": ["a", "a", "b", "b"], "lambda_adv": 0.1, "method": "dasd",
                           "seed": [0, 0, 1, 1], "target": "style", "kind": "style",
                           "feature": ["f_sr", "f_sa"] * 2, "accuracy": [0.5, 0.7, 0.4, 0.7]})
    contrast = S.feature_contrast(probes, ["lambda_adv"]).iloc[0]
    assert contrast["f_sr_minus_f_sa"] == pytest.approx(-0.25)
    assert contrast["n_seeds"] == 2


def test_findings_from_sweep_folders(tmp_path):
    sweeps = tmp_path / "sweeps"
    for seed, (dasd, static) in enumerate([(300.0, 290.0), (310.0, 296.0), (305.0, 297.0)]):
        for steps in (40, 200):
            fake_run(sweeps / "budget", f"steps{steps}-s{seed}", [f"cla.steps={steps}"], seed,
                     {("dasd", "native"): dasd + steps, ("static", "native"): static + steps,
                      ("dasd", "mt_clean"): dasd + 50, ("static", "mt_clean"): static + 50},
                     d_acc={"dasd": [0.9] * 10 + [0.6] * 2})
        for lam, shift in ((0.001, 0.0), (1.0, -30.0)):
            probes = [{"method": "dasd", "feature": f, "target": t, "kind": k,
                       "accuracy": a + 0.01 * seed, "chance": 0.2}
                      for f, t, k, a in [("f_sr", "n_objects", "content", 0.8),
                                         ("f_sa", "n_objects", "content", 0.6),
                                         ("f_sr", "style", "style", 0.3 if lam == 1.0 else 0.7),
                                         ("f_sa", "style", "style", 0.6)]]
            fake_run(sweeps / "adv_weight", f"adv{lam}-s{seed}",
                     [f"cla.lambda_adv={lam}", f"cma.lambda_adv={lam}"], seed,
                     {("dasd", "native"): dasd + 200 + shift, ("dasd", "mt_clean"): dasd + 50},
                     probes, d_acc={"dasd": [0.5] * 20})
    fake_run(sweeps / "budget", "failed", ["cla.steps=40"], 5, {("dasd", "native"): 0.0},
             status="failed")  # an unfinished run is left out

    out = F.write_findings(sweeps, tmp_path / "docs" / "findings.md")
    text = out.read_text()
    tables = {p.stem: pd.read_csv(p) for p in (tmp_path / "docs" / "findings").glob("*.csv")}
    assert (tmp_path / "docs" / "findings" / "budget_sumr.png").stat().st_size > 0
    assert "Not run yet: variants, style_gap" in text and "budget (6 runs)" in text

    diffs = tables["budget_differences"].set_index(["variant", "cla_steps"])
    native = seed_interval([10.0, 14.0, 8.0])
    assert diffs.loc[("native", 200), "diff"] == pytest.approx(native["mean"])
    assert diffs.loc[("native", 200), "ci_low"] == pytest.approx(native["ci_low"])
    assert diffs.loc[("native", 200), "verdict"] == "better"
    assert f"+{native['mean']:.1f} [+{native['ci_low']:.1f}, +{native['ci_high']:.1f}]" in text

    # adv_weight's DASD against budget's static at 200 steps, paired by seed
    adv = tables["adv_differences"].set_index(["variant", "lambda_adv"])
    assert adv.loc[("native", 1.0), "diff"] == pytest.approx(native["mean"] - 30.0)
    assert adv.loc[("native", 1.0), "verdict"] == "worse"

    contrast = tables["adv_probe_contrast"].set_index(["target", "lambda_adv"])
    assert contrast.loc[("n_objects", 0.001), "f_sr_minus_f_sa"] == pytest.approx(0.2)
    assert contrast.loc[("style", 1.0), "verdict"] == "worse"      # f_sa carries style
    assert contrast.loc[("style", 0.001), "verdict"] == "better"   # f_sr carries style
    assert "every style target favours f_sa: 1.0" in text

    disc = tables["adv_discriminator"]
    assert disc["d_acc"].tolist() == pytest.approx([0.5, 0.5])
    budget_disc = S.final_discriminator(S.load_study(sweeps)["budget"])
    assert budget_disc["d_acc"].tolist() == pytest.approx([0.6] * 6)  # the last 10 % of 12 steps

    cost = tables["cost"].set_index("method")
    assert cost.loc["dasd", "ms_per_step"] == pytest.approx(200.0)
    assert cost.loc["dasd", "ratio_to_static"] == pytest.approx(2.0)
    assert cost.loc["dasd", "trainable_params"] == 101


def test_variants_and_style_gap_sections(tmp_path):
    sweeps = tmp_path / "sweeps"
    for seed in range(3):
        fake_run(sweeps / "budget", f"b-s{seed}", ["cla.steps=200"], seed,
                 {("dasd", "native"): 300.0 + seed, ("static", "native"): 298.0 + seed})
        fake_run(sweeps / "variants", f"frozen-s{seed}", ["model.freeze_embedding=true"], seed,
                 {("dasd", "native"): 250.0 + 2 * seed, ("static", "native"): 240.0 + seed})
        fake_run(sweeps / "variants", f"sdm2-s{seed}", [], seed, {("dasd_sdm2", "native"): 290.0 + seed})
        for share, gap in ((0.0, -60.0), (1.0, -5.0)):
            fake_run(sweeps / "style_gap", f"g{share}-s{seed}",
                     [f"data.mt_native_share={share}", f"data.name=g{int(share)}"], seed,
                     {("dasd", "native"): 300.0 + gap + seed, ("dasd", "mt_clean"): 300.0 + seed,
                      ("static", "native"): 290.0 + gap, ("static", "mt_clean"): 290.0})
    out = F.write_findings(sweeps, tmp_path / "findings.md")
    text = out.read_text()
    tables = {p.stem: pd.read_csv(p) for p in (tmp_path / "findings").glob("*.csv")}
    frozen = tables["variants_frozen_differences"].iloc[0]
    assert frozen["diff"] == pytest.approx(np.mean([10.0, 11.0, 12.0])) and frozen["verdict"] == "better"
    sdm2 = tables["variants_sdm2_differences"].set_index("baseline")
    assert sdm2.loc["dasd", "diff"] == pytest.approx(-10.0) and sdm2.loc["dasd", "verdict"] == "worse"
    gaps = tables["style_gap_gaps"].set_index(["method", "mt_native_share"])
    assert gaps.loc[("dasd", 0.0), "gap"] == pytest.approx(-60.0)
    assert gaps.loc[("static", 1.0), "gap"] == pytest.approx(-5.0)
    assert "## Style gap" in text and "## Variants" in text and "style_gap.png" in text
    assert "Not run yet: adv_weight" in text


def test_cli_refuses_a_missing_sweeps_folder(tmp_path, capsys):
    assert F.main(["--sweeps-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "f.md")]) == 2
    assert "run the study sweeps" in capsys.readouterr().err
    assert np.isnan(S.pooled(pd.DataFrame({"k": [1], "v": [2.0]}), ["k"], "v")["ci_low"][0])
