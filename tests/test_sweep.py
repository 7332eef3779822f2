"""dasd-sweep (dasd_lib.sweep) and the cross-run comparison (dasd_lib.compare, notebook 07).

The grid, naming, sweep-file and bookkeeping tests replace papermill with a recorder (no
kernels). One module fixture runs params/sweeps/smoke.yaml end to end through the real
runner, two points in parallel (about two minutes on 2 cores), and the tests after it
check the sweep folder, the sharing of the VLP, the comparison and resuming.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, SMOKE
from dasd_lib import compare
from dasd_lib import run as runner
from dasd_lib.config import load_params, save_params
from dasd_lib.metrics import seed_interval
from dasd_lib.run import RUN_ID_RE, NotebookFailed, RunError, find_compare_notebook, find_notebooks
from dasd_lib.sweep import main, run_sweep
from dasd_lib.sweep_definition import (MAX_NAME, Sweep, SweepError, load_sweep, parse_grid,
                                       remaining_notebooks)

NOTEBOOKS = ROOT / "notebooks"
SWEEPS = ROOT / "params" / "sweeps"


def tmp_overrides(tmp: Path) -> list[str]:
    """Data, web corpus and reports under `tmp` (as conftest.smoke_params)."""
    return [f"data.root={tmp / 'dataset'}", f"web.root={tmp / 'dataset'}",
            f"run.reports_dir={tmp / 'reports'}", "run.device=cpu"]


# ----------------------------------------------------------------------------- grid and names

def test_grid_values_are_yaml_and_commas_in_brackets_stay():
    grid = parse_grid(["cla.lambda_adv=0.001,0.1", "run.seeds=[0],[1],[2]",
                       "run.methods={finetune: [floor, dasd]},{finetune: [static]}",
                       "data.name='a,b',c"])
    assert grid == {"cla.lambda_adv": [0.001, 0.1], "run.seeds": [[0], [1], [2]],
                    "run.methods": [{"finetune": ["floor", "dasd"]}, {"finetune": ["static"]}],
                    "data.name": ["a,b", "c"]}
    for bad, says in [("cla.steps", "expected section.key=value1"), ("cla.steps=", "expected"),
                      ("run.seeds=[0],[1", "not valid YAML")]:
        with pytest.raises(SweepError, match=says):
            parse_grid([bad])
    with pytest.raises(SweepError, match="given twice"):
        parse_grid(["cla.steps=1", "cla.steps=2"])


def test_points_are_the_product_named_from_their_overrides():
    sweep = Sweep(params=SMOKE, grid=parse_grid(["cla.steps=2,3", "run.seeds=[0],[1, 2]"]))
    points = sweep.points()
    assert [p.name for p in points] == [
        "cla.steps-2__run.seeds-0", "cla.steps-2__run.seeds-1_2",
        "cla.steps-3__run.seeds-0", "cla.steps-3__run.seeds-1_2"]
    assert all(RUN_ID_RE.match(p.name) for p in points)
    # the overrides give back the grid values
    last = load_params(SMOKE, list(points[-1].overrides))
    assert last.cla.steps == 3 and last.run.seeds == [1, 2]

    methods = [{"finetune": ["floor", "static", "dasd", *(f"dasd_adv{w}" for w in (0.01, 0.1))] * 4},
               {"finetune": ["floor", "static", "dasd", "dasd_no_sdm"] * 6}]
    long = Sweep(params=SMOKE, grid={"run.methods": methods}).points()
    assert all(len(p.name) <= MAX_NAME and RUN_ID_RE.match(p.name) for p in long)
    assert long[0].name != long[1].name  # cut names keep a hash of the full overrides

    with pytest.raises(SweepError, match="same point name"):
        Sweep(params=SMOKE, grid={"data.name": ["a b", "a_b"]}).points()
    with pytest.raises(SweepError, match="both a fixed override and a grid axis"):
        Sweep(params=SMOKE, grid={"cla.steps": [1, 2]}, overrides=["cla.steps=5"]).points()
    with pytest.raises(SweepError, match="at least one grid axis"):
        Sweep(params=SMOKE, grid={}).points()


def test_every_sweep_file_loads_with_valid_parameters():
    files = sorted(SWEEPS.glob("*.yaml"))
    assert {"smoke.yaml", "adv_weight.yaml", "seeds.yaml"} <= {f.name for f in files}
    for path in files:
        sweep = load_sweep(path)
        assert sweep.sweep_id == path.stem and sweep.params.is_file()
        points = sweep.points()
        assert len(points) == int(np.prod([len(v) for v in sweep.grid.values()]))
        for point in points:  # unknown keys or wrong types would raise ConfigError
            load_params(sweep.params, [*sweep.overrides, *point.overrides])


def test_sweep_file_errors_name_the_problem(tmp_path):
    def sweep_file(text: str) -> Path:
        path = tmp_path / "s.yaml"
        path.write_text(text)
        return path

    with pytest.raises(SweepError, match="unknown key 'gird'; did you mean 'grid'"):
        load_sweep(sweep_file("params: params/smoke.yaml\ngird: {cla.steps: [1, 2]}\n"))
    with pytest.raises(SweepError, match="'params' must name"):
        load_sweep(sweep_file("grid: {cla.steps: [1, 2]}\n"))
    with pytest.raises(SweepError, match="non-empty list"):
        load_sweep(sweep_file("params: params/smoke.yaml\ngrid: {cla.steps: 5}\n"))
    with pytest.raises(SweepError, match="'overrides' must be a list"):
        load_sweep(sweep_file("params: params/smoke.yaml\noverrides: {cla: 1}\n"
                              "grid: {cla.steps: [1]}\n"))
    with pytest.raises(SweepError, match="does not exist"):
        load_sweep(tmp_path / "missing.yaml")


def test_the_compare_notebook_is_never_part_of_a_run():
    names = [p.name for p in find_notebooks(NOTEBOOKS)]
    assert runner.COMPARE_NOTEBOOK not in names and names
    assert find_compare_notebook(NOTEBOOKS).name == runner.COMPARE_NOTEBOOK
    with pytest.raises(RunError, match="no such notebook"):
        runner.select_notebooks(find_notebooks(NOTEBOOKS), "07")


# ----------------------------------------------------------------------------- bookkeeping (no kernels)

@pytest.fixture
def recorder(monkeypatch):
    """papermill replaced: copies the notebook, records (run folder name, notebook) and
    fails where told."""
    seen: list[tuple[str, str]] = []
    fail: set[tuple[str, str]] = set()

    def fake(src, dst, *, parameters, cwd, log_output=False, progress=False):
        where = Path(parameters.get("run_dir") or parameters.get("sweep_dir")).name
        seen.append((where, src.name[:2]))
        shutil.copy(src, dst)
        if (where, src.name[:2]) in fail:
            raise NotebookFailed(notebook=src.name, output_path=dst, ename="ValueError",
                                 evalue="boom")

    monkeypatch.setattr(runner, "execute_notebook", fake)
    return seen, fail


def test_remaining_notebooks_continue_from_the_first_unfinished(tmp_path):
    notebooks = find_notebooks(NOTEBOOKS)
    params = load_params(SMOKE)
    assert remaining_notebooks(tmp_path / "new", params, notebooks) == notebooks
    save_params(params, tmp_path / "params.yaml")
    states = {nb.name: {"status": "ok"} for nb in notebooks}
    states[notebooks[2].name] = {"status": "failed"}
    (tmp_path / "timings.json").write_text(json.dumps({"status": "failed", "notebooks": states}))
    assert remaining_notebooks(tmp_path, params, notebooks) == notebooks[2:]
    states[notebooks[2].name] = {"status": "ok"}
    (tmp_path / "timings.json").write_text(json.dumps({"status": "completed", "notebooks": states}))
    assert remaining_notebooks(tmp_path, params, notebooks) == []
    with pytest.raises(SweepError, match=r"other parameters \(cla.steps: 3 -> 4\)"):
        remaining_notebooks(tmp_path, load_params(SMOKE, ["cla.steps=4"]), notebooks)


def test_a_failing_point_is_recorded_and_the_others_go_on(tmp_path, recorder, capsys):
    seen, fail = recorder
    sweep = Sweep(params=SMOKE, grid={"cla.steps": [1, 2, 3]}, overrides=tmp_overrides(tmp_path),
                  sweep_id="t", notebooks=NOTEBOOKS)
    fail.add(("cla.steps-2", "03"))
    outcome = run_sweep(sweep, workers=2, compare=False)
    assert outcome.status == {"cla.steps-1": "completed", "cla.steps-2": "failed",
                              "cla.steps-3": "completed"}
    assert not outcome.ok and "boom" in outcome.errors["cla.steps-2"]
    # the first point's first notebook ran alone, before any other point started
    assert seen[0] == ("cla.steps-1", "00") and seen.count(("cla.steps-1", "00")) == 1
    record = json.loads((outcome.sweep_dir / "sweep.json").read_text())
    assert record["status"] == "failed"
    assert {k: v["status"] for k, v in record["points"].items()} == outcome.status
    assert record["points"]["cla.steps-2"]["overrides"] == ["cla.steps=2"]
    # every point ran with the sweep's shared folder
    shared = outcome.sweep_dir / "shared"
    for name in outcome.status:
        assert load_params(outcome.sweep_dir / "runs" / name / "params.yaml").run.shared_dir == str(shared)

    # again: the finished points are skipped, the failed one continues at its failed notebook
    seen.clear()
    fail.clear()
    again = run_sweep(sweep, workers=2, compare=False)
    assert again.ok and again.status == {"cla.steps-1": "skipped", "cla.steps-2": "completed",
                                         "cla.steps-3": "skipped"}
    assert seen == [("cla.steps-2", nb) for nb in ("03", "04", "05", "06")]

    # parallel points must not regenerate the corpora they share
    with pytest.raises(SweepError, match="data.mt_noise swept"):
        run_sweep(Sweep(params=SMOKE, grid={"data.mt_noise": [0.1, 0.2]}, sweep_id="noise",
                        overrides=tmp_overrides(tmp_path), notebooks=NOTEBOOKS), workers=2)

    # the same sweep id with another grid is refused, naming the difference
    with pytest.raises(SweepError, match="defined otherwise.*grid"):
        run_sweep(Sweep(params=SMOKE, grid={"cla.steps": [1, 5]}, sweep_id="t",
                        overrides=tmp_overrides(tmp_path), notebooks=NOTEBOOKS), compare=False)


def test_cli_exit_status_and_bad_keys(tmp_path, recorder, capsys):
    seen, fail = recorder
    fail.add(("cla.steps-2", "01"))
    base = ["--params", str(SMOKE), "--sweep-id", "cli", "--only", "00,01",
            *(x for o in tmp_overrides(tmp_path) for x in ("-p", o))]
    assert main([*base, "--grid", "cla.steps=1,2"]) == 1
    assert "cla.steps-2: NotebookFailed" in capsys.readouterr().err
    assert main([*base, "--grid", "cla.stepz=1,2"]) == 2  # nothing runs
    assert "did you mean 'steps'" in capsys.readouterr().err
    assert main(["--params", str(SMOKE), "-p", "cla.steps=1", "--grid", "cla.steps=1,2"]) == 2
    assert main(["--runs", str(tmp_path)]) == 2 and "--runs needs --sweep-id" in capsys.readouterr().err


# ----------------------------------------------------------------------------- comparison library

def _fake_run(folder: Path, overrides: list[str], sumr: dict[tuple[str, int], float]) -> None:
    """A run folder with params.yaml and a results.csv of native SumR per (method, seed)."""
    folder.mkdir(parents=True)
    save_params(load_params(SMOKE, [*overrides, f"run.run_id={folder.name}",
                                    f"run.shared_dir={folder.parent}"]), folder / "params.yaml")
    rows = [{"setting": "finetune", "variant": "native", "method": m, "seed": s, "lang": lang,
             "SumR": value + offset, "trainable_params": 1}
            for (m, s), value in sumr.items() for lang, offset in (("de", 1.0), ("fr", -1.0))]
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    pd.DataFrame([{"method": m, "feature": "f_sr", "target": "style", "accuracy": v / 600,
                   "chance": 0.2} for (m, _), v in sumr.items()]).to_csv(folder / "probes.csv",
                                                                          index=False)


def test_seeds_pool_across_runs_that_differ_only_in_seeds(tmp_path):
    values = {(0.001, 0): 300.0, (0.001, 1): 320.0, (0.001, 2): 310.0, (0.1, 0): 200.0}
    dirs = []
    for (adv, seed), v in values.items():
        dirs.append(tmp_path / f"adv{adv}-seed{seed}")
        _fake_run(dirs[-1], [f"cla.lambda_adv={adv}", f"run.seeds=[{seed}]"], {("dasd", seed): v})
    runs = compare.load_runs(dirs)
    keys = compare.swept_keys(runs)
    assert keys == ["cla.lambda_adv", "run.seeds"]  # run_id and shared_dir are left out
    assert compare.run_table(runs, keys)["run.seeds"].tolist() == ["[0]", "[1]", "[2]", "[0]"]

    seeds = compare.seed_sumr(runs, keys)
    assert len(seeds) == len(values)  # one row per run and seed: languages averaged
    points = compare.sumr_points(seeds, keys).set_index("cla.lambda_adv")
    expected = seed_interval([v for (adv, _), v in values.items() if adv == 0.001])
    pooled = points.loc["0.001"]
    assert (pooled["n"], pooled["runs"]) == (3, 3)
    assert np.isclose(pooled["SumR"], expected["mean"])
    assert np.isclose(pooled["ci_low"], expected["ci_low"]) and pooled["ci_low"] < pooled["SumR"]
    assert points.loc["0.1", "n"] == 1 and np.isnan(points.loc["0.1", "ci_low"])
    # against the seeds themselves nothing is pooled
    assert compare.sumr_points(seeds, keys, "run.seeds")["n"].max() == 1

    probes = compare.probe_points(compare.probe_rows(runs, keys), keys)
    assert np.isclose(probes.set_index("cla.lambda_adv").loc["0.001", "accuracy"],
                      expected["mean"] / 600)


def test_plots_put_numbers_on_a_number_line_and_the_rest_in_categories(tmp_path):
    dirs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for folder, steps, methods in zip(dirs, (200, 1000, 5000), ("[dasd]", "[static]", "[dasd]")):
        _fake_run(folder, [f"cla.steps={steps}", f"explore.probe_methods={methods}"],
                  {("dasd", 0): steps / 100, ("static", 0): steps / 50})
    runs = compare.load_runs(dirs)
    keys = compare.swept_keys(runs)
    assert keys == ["cla.steps", "explore.probe_methods"]
    seeds = compare.seed_sumr(runs, keys)
    fig = compare.plot_sumr(seeds, keys, "cla.steps")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"  # 200 .. 5000 spans more than a decade
    assert sorted(ax.get_xticks()) == [200, 1000, 5000]
    # a line per method and value of the other swept key
    assert len(ax.get_legend_handles_labels()[1]) == 2 * 2
    fig = compare.plot_sumr(seeds, keys, "explore.probe_methods")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["[dasd]", "[static]"]
    assert compare.plot_keys([]) == [compare.RUN_COLUMN]


# ----------------------------------------------------------------------------- the smoke sweep, end to end

@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    sweep = load_sweep(SWEEPS / "smoke.yaml")
    sweep.overrides = [*sweep.overrides, *tmp_overrides(tmp)]
    t0 = time.perf_counter()
    outcome = run_sweep(sweep, workers=2, command=["pytest", "smoke sweep"])
    return sweep, outcome, time.perf_counter() - t0


def test_smoke_sweep_runs_every_point(smoke_sweep):
    sweep, outcome, seconds = smoke_sweep
    print(f"smoke sweep: {seconds:.0f} s")
    names = [p.name for p in sweep.points()]
    assert outcome.ok, (outcome.errors, outcome.compare_error)
    assert outcome.status == {n: "completed" for n in names}
    sources = [p.name for p in find_notebooks(NOTEBOOKS)]
    (key, values), = sweep.grid.items()
    for name, value in zip(names, values):
        run_dir = outcome.sweep_dir / "runs" / name
        timings = json.loads((run_dir / "timings.json").read_text())
        assert timings["status"] == "completed"
        assert {k: v["status"] for k, v in timings["notebooks"].items()} == {s: "ok" for s in sources}
        section, field = key.split(".")
        assert yaml.safe_load((run_dir / "params.yaml").read_text())[section][field] == value
        assert (run_dir / "results.csv").is_file() and (run_dir / "probes.csv").is_file()
    definition = yaml.safe_load((outcome.sweep_dir / "sweep.yaml").read_text())
    assert [p["name"] for p in definition["points"]] == names


def test_smoke_sweep_trains_the_vlp_once(smoke_sweep):
    _, outcome, _ = smoke_sweep
    runs = sorted((outcome.sweep_dir / "runs").iterdir())
    shared = [p for p in (outcome.sweep_dir / "shared" / "vlp").iterdir() if p.is_dir()]
    assert len(shared) == 1  # one fingerprint: the points change only the target side
    trained = [r.name for r in runs if (r / "artifacts" / "vlp_training").exists()]
    assert len(trained) == 1, trained  # the other point copied the shared VLP
    hashes = {json.loads((r / "artifacts" / "backbone" / "config.json").read_text())
              ["meta"]["identity"]["weights_hash"] for r in runs}
    assert len(hashes) == 1


def test_smoke_sweep_compares_its_runs(smoke_sweep):
    sweep, outcome, _ = smoke_sweep
    out = outcome.sweep_dir
    executed = nbformat.read(out / runner.COMPARE_NOTEBOOK, as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert outputs and not [o for o in outputs if o.get("output_type") == "error"]
    html = (outcome.compare_html or out / "compare.html").read_text(encoding="utf-8")
    assert "<table" in html and "data:image/png;base64" in html
    assert "In&nbsp;[" not in html and "compare.load_runs" not in html  # no code cells
    (key, values), = sweep.grid.items()
    table = pd.read_csv(out / "compare_runs.csv", dtype=str)
    assert table[key].tolist() == [compare.value_text(v) for v in values]
    assert set(table["status"]) == {"completed"}
    for value in values:
        assert f"<td>{compare.value_text(value)}</td>" in html
    points = pd.read_csv(out / "compare_sumr.csv")
    params = load_params(sweep.params, sweep.overrides)
    methods = params.run.methods["finetune"]
    assert set(points["method"]) == set(methods)
    assert len(points) == len(methods) * len(values) * len(params.run.eval_variants)
    for name in ("sumr", "probes"):
        png = out / "figures" / f"07_{name}_vs_{key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoke_sweep_resumes_without_rerunning(smoke_sweep, monkeypatch):
    sweep, outcome, _ = smoke_sweep
    executed: list[str] = []
    real = runner.execute_notebook

    def recording(src, dst, **kwargs):
        executed.append(f"{Path(dst).parent.parent.name}/{src.name[:2]}")
        return real(src, dst, **kwargs)

    monkeypatch.setattr(runner, "execute_notebook", recording)
    again = run_sweep(sweep, workers=2)
    assert executed == [] and again.ok  # bookkeeping only
    assert set(again.status.values()) == {"skipped"}

    # a point whose last notebook did not finish continues there, and only there
    first = sweep.points()[0].name
    timings_path = outcome.sweep_dir / "runs" / first / "timings.json"
    timings = json.loads(timings_path.read_text())
    last = sorted(timings["notebooks"])[-1]
    timings["notebooks"][last]["status"] = "interrupted"
    timings["status"] = "interrupted"
    timings_path.write_text(json.dumps(timings))
    again = run_sweep(sweep, workers=2, compare=False)
    assert again.ok and again.status[first] == "completed"
    assert executed == [f"{first}/{last[:2]}"]
    assert json.loads(timings_path.read_text())["status"] == "completed"


def test_linked_axes_move_their_keys_together():
    sweep = Sweep(params=SMOKE, grid={"cla.steps+cma.steps": [[4, 2], [8, 5]], "run.seeds": [[0], [1]]})
    points = sweep.points()
    assert sweep.swept_keys() == ["cla.steps", "cma.steps", "run.seeds"]
    assert [p.name for p in points][:2] == ["cla.steps-4__cma.steps-2__run.seeds-0",
                                            "cla.steps-4__cma.steps-2__run.seeds-1"]
    last = load_params(SMOKE, list(points[-1].overrides))
    assert (last.cla.steps, last.cma.steps, last.run.seeds) == (8, 5, [1])
    with pytest.raises(SweepError, match="every value must list 2 values"):
        Sweep(params=SMOKE, grid={"cla.steps+cma.steps": [[4, 2], 8]}).points()
    with pytest.raises(SweepError, match="both a fixed override and a grid axis"):
        Sweep(params=SMOKE, grid={"cla.steps+cma.steps": [[4, 2]]}, overrides=["cma.steps=1"]).points()


def test_corpus_keys_run_in_parallel_only_when_the_folder_moves_with_them(tmp_path, recorder):
    with pytest.raises(SweepError, match="data.mt_native_share\\+data.name"):
        run_sweep(Sweep(params=SMOKE, grid={"data.mt_native_share": [0.0, 0.5]},
                        overrides=tmp_overrides(tmp_path)), reports_dir=tmp_path, workers=2)
    linked = Sweep(params=SMOKE, grid={"data.mt_native_share+data.name": [[0.0, "a"], [0.5, "b"]]},
                   overrides=tmp_overrides(tmp_path), sweep_id="gap")
    outcome = run_sweep(linked, reports_dir=tmp_path, workers=2)
    assert outcome.errors == {}
    names = {load_params(outcome.sweep_dir / "runs" / p.name / "params.yaml").data.name
             for p in linked.points()}
    assert names == {"a", "b"}


def test_a_shared_dir_in_the_base_parameters_is_shared_by_sweeps(tmp_path, recorder):
    study = tmp_path / "study_shared"
    for sweep_id in ("one", "two"):
        sweep = Sweep(params=SMOKE, grid={"cla.steps": [1, 2]}, sweep_id=sweep_id,
                      overrides=[*tmp_overrides(tmp_path), f"run.shared_dir={study}"])
        outcome = run_sweep(sweep, reports_dir=tmp_path)
        for p in sweep.points():
            assert load_params(outcome.sweep_dir / "runs" / p.name / "params.yaml").run.shared_dir == str(study)
