"""The papermill runner (dasd-run) and prepare_run, on small dummy notebooks.

Only `test_real_papermill_run_stops_at_failing_cell` starts kernels (two notebooks); the
other tests replace `dasd_lib.run.execute_notebook` with a recorder.
"""
from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import nbformat
import pytest
import yaml

from dasd_lib import run as runner
from dasd_lib.config import ConfigError
from dasd_lib.context import Run
from dasd_lib.run import (NotebookFailed, RunError, RunExistsError, RunLock, RunLockedError,
                          main, prepare_run, run_notebooks)

PARAMS_CELL = 'params_file = ""\nrun_dir = ""\noverrides = []'
PREPARE = ("from dasd_lib.run import prepare_run\n"
           "run = prepare_run(params_file, run_dir, overrides)\nparams = run.params")


def mark(name: str) -> str:
    return f'with open(run.dir / "order.txt", "a") as f:\n    f.write("{name}\\n")'


def notebook(*cells: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(PARAMS_CELL, metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    return nb


@pytest.fixture
def project(tmp_path):
    """tmp_path laid out like the repo: params/t.yaml and notebooks/00..03."""
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "t.yaml").write_text("cla: {steps: 3}\n")
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    books = {
        "00_write.ipynb": notebook(PREPARE, mark("00") + "\n"
                                   "import os\n(run.dir / 'cwd.txt').write_text(os.getcwd())\n"
                                   "(run.dir / 'steps.txt').write_text(str(params.cla.steps))"),
        "01_second.ipynb": notebook(PREPARE, mark("01")),
        "02_fail.ipynb": notebook(PREPARE, 'raise ValueError("boom in cell two")', mark("02")),
        "03_after.ipynb": notebook(PREPARE, mark("03")),
    }
    for name, nb in books.items():
        nbformat.write(nb, nbs / name)
    return tmp_path


def args(project: Path, *extra: str) -> list[str]:
    return ["--params", str(project / "params" / "t.yaml"), "--notebooks-dir",
            str(project / "notebooks"), "--reports-dir", str(project / "reports"), *extra]


@pytest.fixture
def calls(monkeypatch):
    """Replace papermill with a recorder that copies the notebook; '03' writes report.html."""
    seen: list[dict] = []

    def fake(src, dst, *, parameters, cwd, log_output=False, progress=False):
        seen.append({"name": src.name, "parameters": parameters, "cwd": cwd})
        shutil.copy(src, dst)
        if src.name.startswith("03"):
            (Path(parameters["run_dir"]) / "report.html").write_text("<html></html>")

    monkeypatch.setattr(runner, "execute_notebook", fake)
    return seen


# ----------------------------------------------------------------------------- real papermill

def test_log_output_shows_the_cells_output(project, capfd):
    nb = notebook('print("hello from the cell", flush=True)')
    nbformat.write(nb, project / "notebooks" / "01_second.ipynb")
    assert main(args(project, "--run-id", "lo", "--only", "01", "--log-output")) == 0
    assert "hello from the cell" in capfd.readouterr().err


@pytest.mark.fault
def test_real_papermill_run_stops_at_failing_cell(project, capsys):
    rc = main(args(project, "--run-id", "r1", "--only", "00,02,03", "-p", "cla.steps=7"))
    err = capsys.readouterr().err
    run = project / "reports" / "r1"
    assert rc == 1
    # the failure names the notebook, the cell (index and first line) and the error
    assert "02_fail.ipynb" in err and "cell 2 " in err
    assert 'raise ValueError("boom in cell two")' in err and "boom in cell two" in err
    # executed in order, filtered by --only, stopped at the failure
    assert (run / "order.txt").read_text() == "00\n"
    assert sorted(p.name for p in (run / "notebooks").iterdir()) == ["00_write.ipynb", "02_fail.ipynb"]
    # the override reached params.yaml and the notebook; the kernel ran in the project root
    recorded = yaml.safe_load((run / "params.yaml").read_text())
    assert recorded["cla"]["steps"] == 7 and recorded["run"]["run_id"] == "r1"
    assert (run / "steps.txt").read_text() == "7"
    assert Path((run / "cwd.txt").read_text()).resolve() == project.resolve()
    env = json.loads((run / "env.json").read_text())
    assert env["python"] == sys.version.split()[0] and env["packages"]["papermill"] == "2.7.0"
    assert {"commit", "dirty"} <= set(env["git"]) and "cla.steps=7" in env["command"]
    timings = json.loads((run / "timings.json").read_text())
    assert timings["status"] == "failed"
    assert timings["notebooks"]["00_write.ipynb"]["status"] == "ok"
    assert timings["notebooks"]["02_fail.ipynb"]["status"] == "failed"
    assert timings["notebooks"]["02_fail.ipynb"]["cell_index"] == 2
    assert "FAILED 02_fail.ipynb" in (run / "run.log").read_text()
    assert not (run / ".lock.json").exists() and RunLock(run).acquire().held  # released
    # the executed copy carries the injected parameters and the traceback
    executed = nbformat.read(run / "notebooks" / "02_fail.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert "boom in cell two" in (run / "notebooks" / "02_fail.ipynb").read_text()


# ----------------------------------------------------------------------------- recorded runs

def test_runs_selected_notebooks_in_order_and_records(project, calls, capsys):
    rc = main(args(project, "--run-id", "ok", "--only", "3", "--only", "01"))
    out = capsys.readouterr().out
    run = (project / "reports" / "ok").resolve()
    assert rc == 0
    assert [c["name"] for c in calls] == ["01_second.ipynb", "03_after.ipynb"]
    assert calls[0]["parameters"] == {"params_file": str(run / "params.yaml"),
                                      "run_dir": str(run), "overrides": []}
    assert calls[0]["cwd"] == project.resolve()
    assert str(run / "report.html") in out
    timings = json.loads((run / "timings.json").read_text())
    assert timings["status"] == "completed"
    assert [n for n, e in timings["notebooks"].items() if e["status"] == "ok"] == [
        "01_second.ipynb", "03_after.ipynb"]
    assert all((run / d).is_dir() for d in ("figures", "artifacts", "losses", "notebooks"))


def test_existing_run_needs_resume_with_same_params(project, calls, capsys):
    run_notebooks(project / "params" / "t.yaml", run_id="x", only=["00"],
                  notebooks_dir=project / "notebooks", reports_dir=project / "reports")
    with pytest.raises(RunExistsError, match="--resume"):
        run_notebooks(project / "params" / "t.yaml", run_id="x",
                      notebooks_dir=project / "notebooks", reports_dir=project / "reports")
    assert main(args(project, "--run-id", "x")) == 2
    assert "already holds a run (status: completed)" in capsys.readouterr().err
    # data.* is read by the finished 00 (other keys are the resume tests' subject, below)
    with pytest.raises(RunError, match=r"data\.mt_noise: .* -> 0\.5"):
        run_notebooks(project / "params" / "t.yaml", run_id="x", overrides=["data.mt_noise=0.5"], only="01",
                      notebooks_dir=project / "notebooks", reports_dir=project / "reports",
                      resume=True)
    assert len(calls) == 1
    run = run_notebooks(project / "params" / "t.yaml", run_id="x", only="01", resume=True,
                        notebooks_dir=project / "notebooks", reports_dir=project / "reports")
    assert [c["name"] for c in calls] == ["00_write.ipynb", "01_second.ipynb"]
    timings = json.loads((run / "timings.json").read_text())
    assert set(timings["notebooks"]) == {"00_write.ipynb", "01_second.ipynb"}
    assert len(json.loads((run / "env.json").read_text())["previous"]) == 1


@pytest.mark.fault
def test_bad_params_fail_before_anything_runs(project, calls, capsys):
    assert main(args(project, "-p", "cla.stpes=5")) == 2
    err = capsys.readouterr().err
    assert "stpes" in err and "'steps'" in err
    assert main(args(project, "--only", "09")) == 2
    assert "--only 09" in capsys.readouterr().err
    assert calls == [] and not (project / "reports").exists()


def test_generated_run_ids_never_collide(project, calls, monkeypatch):
    monkeypatch.setattr(runner, "default_run_id", lambda path: "20261128-073512-t")
    kw = dict(only="00", notebooks_dir=project / "notebooks", reports_dir=project / "reports")
    first = run_notebooks(project / "params" / "t.yaml", **kw)
    second = run_notebooks(project / "params" / "t.yaml", **kw)
    assert (first.name, second.name) == ("20261128-073512-t", "20261128-073512-t-2")


# ----------------------------------------------------------------------------- the lock

HOLDER = textwrap.dedent("""
    import sys, time
    from dasd_lib.run import RunLock
    lock = RunLock(sys.argv[1]).acquire("holder")  # kept: a collected lock is released
    print("locked", flush=True)
    time.sleep(120)
""")


@pytest.mark.fault
def test_concurrent_run_with_same_id_is_refused_until_holder_dies(project, calls, capsys):
    run = project / "reports" / "same"
    run.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            run_notebooks(project / "params" / "t.yaml", run_id="same",
                          notebooks_dir=project / "notebooks", reports_dir=project / "reports")
        assert main(args(project, "--run-id", "same")) == 2
        assert "in use by another dasd-run" in capsys.readouterr().err
        assert calls == [] and not (run / "params.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    assert (run / ".lock.json").exists()  # SIGKILL left its name behind, but not its flock
    run_notebooks(project / "params" / "t.yaml", run_id="same", only="00",
                  notebooks_dir=project / "notebooks", reports_dir=project / "reports")
    assert len(calls) == 1 and not (run / ".lock.json").exists()
    assert RunLock(run).acquire().held  # released: the next run takes it at once


@pytest.mark.fault
def test_lock_race_has_one_winner(tmp_path):
    barrier = threading.Barrier(8)
    won, lost, errors = [], [], []

    def contend():
        lock = RunLock(tmp_path)
        barrier.wait()
        try:
            won.append(lock.acquire())
        except RunLockedError:
            lost.append(lock)
        except Exception as err:  # anything else is a bug
            errors.append(err)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(won) == 1 and len(lost) == 7
    won[0].release()
    assert not (tmp_path / ".lock.json").exists() and RunLock(tmp_path).acquire().held


@pytest.mark.fault
def test_a_leftover_or_empty_lock_file_does_not_block(tmp_path):
    (tmp_path / ".lock").write_bytes(b"")  # e.g. a full disk or a crash left it behind
    (tmp_path / ".lock.json").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    lock = RunLock(tmp_path).acquire("now")
    assert json.loads((tmp_path / ".lock.json").read_text())["command"] == "now"
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    lock.release()


# ----------------------------------------------------------------------------- prepare_run

def test_prepare_run_modes(project, monkeypatch):
    pfile = project / "params" / "t.yaml"
    # a notebook run alone into a fresh folder: params recorded there
    prepared = prepare_run(str(pfile), str(project / "reports" / "solo"), ["cla.steps=5"])
    params, run = prepared.params, prepared.dir
    assert params.cla.steps == 5 and run == (project / "reports" / "solo").resolve()
    assert isinstance(prepared, Run) and prepared.paths.figures == run / "figures"
    assert yaml.safe_load((run / "params.yaml").read_text())["cla"]["steps"] == 5
    assert (run / "env.json").is_file() and (run / "figures").is_dir()
    # later notebooks of that run: the recorded params win; conflicting ones are refused
    again = prepare_run(str(run / "params.yaml"), str(run), [])
    assert again.params == params and again.dir == run and again is not prepared
    assert prepare_run(str(pfile), str(run), ["cla.steps=5"]).params == params
    with pytest.raises(ConfigError, match=r"cla\.steps: 5 -> 3"):
        prepare_run(str(pfile), str(run), [])
    # opened alone in JupyterLab: cwd notebooks/, run_dir "" -> reports/interactive; relative
    # paths mean the project root, and the library never changes the working directory
    monkeypatch.chdir(project / "notebooks")
    prepared = prepare_run("params/t.yaml", "", ["cla.steps=4"])
    params, run = prepared.params, prepared.dir
    assert run == (project / "reports" / "interactive").resolve() and params.cla.steps == 4
    assert Path.cwd() == (project / "notebooks").resolve() and params.run.run_id == "interactive"
    assert (run / "params.yaml").is_file() and (run / "losses").is_dir()
    assert params.data.root == str((project / "dataset").resolve())
    assert prepare_run("../params/t.yaml", "", ["cla.steps=4"]).params == params  # the older form
    # a run's executed copy (kernel in reports/solo/notebooks/) names the run from the root
    (project / "reports" / "solo" / "notebooks").mkdir()
    monkeypatch.chdir(project / "reports" / "solo" / "notebooks")
    relative = prepare_run("params/t.yaml", "reports/solo", ["cla.steps=5"])
    absolute = prepare_run(str(pfile), str(project / "reports" / "solo"), ["cla.steps=5"])
    assert (relative.params, relative.dir) == (absolute.params, absolute.dir)


def test_notebook_failed_message_names_everything():
    err = NotebookFailed(notebook="03_train_cma.ipynb", output_path=Path("r/03.ipynb"),
                         ename="ValueError", evalue="bad", cell_index=4, exec_count=5,
                         first_line="result = train(params)")
    text = str(err)
    assert "03_train_cma.ipynb" in text and "cell 4" in text and "In [5]" in text
    assert "result = train(params)" in text and "ValueError: bad" in text


def test_restart_stage_allows_changed_params_and_restarts_later_stages(project, calls, capsys):
    kw = dict(notebooks_dir=project / "notebooks", reports_dir=project / "reports")
    run_notebooks(project / "params" / "t.yaml", run_id="x", **kw)
    calls.clear()
    run = run_notebooks(project / "params" / "t.yaml", run_id="x", overrides=["cla.steps=9"],
                        restart_stages=["cla"], **kw)  # implies --resume
    restarted = {c["name"]: c["parameters"].get("restart", False) for c in calls}
    assert restarted == {"00_write.ipynb": False, "01_second.ipynb": False,
                         "02_fail.ipynb": True, "03_after.ipynb": True}
    assert "cla.steps: 3 -> 9" in (run / "run.log").read_text()
    assert yaml.safe_load((run / "params.yaml").read_text())["cla"]["steps"] == 9
    assert main(args(project, "--run-id", "x", "--restart-stage", "clx")) == 2
    assert "unknown stage 'clx'" in capsys.readouterr().err


@pytest.mark.fault
def test_failure_hint_lists_the_remaining_notebooks(project, calls, monkeypatch, capsys):
    def failing(src, dst, *, parameters, cwd, log_output=False, progress=False):
        if src.name.startswith("02"):
            raise NotebookFailed(notebook=src.name, output_path=dst, ename="ValueError", evalue="x")
    monkeypatch.setattr(runner, "execute_notebook", failing)
    assert main(args(project, "--run-id", "y", "-p", "cla.steps=4")) == 1
    hint = capsys.readouterr().err.splitlines()[-1].strip()
    assert hint.startswith("dasd-run --params ") and hint.endswith("--run-id y --resume --only 02,03")
    assert "-p cla.steps=4" in hint
    # pasted as is (after the fix), it resumes the run with the same parameters
    monkeypatch.setattr(runner, "execute_notebook", lambda src, dst, **kw: shutil.copy(src, dst))
    assert main(shlex.split(hint)[1:]) == 0
    assert json.loads((project / "reports" / "y" / "timings.json").read_text())["status"] == "completed"


@pytest.mark.fault
@pytest.mark.parametrize("where", ["notebook", "timings"])
def test_a_full_disk_is_one_line_and_resume_finishes_the_run(project, calls, monkeypatch, capsys, where):
    """ENOSPC in papermill's write of notebook 01, or in the runner's own timings.json
    write after 01: one line naming the path, the lock released, the run marked failed
    (when the disk lets the record be written), and --resume completes it."""
    from dasd_lib import run_state  # writes run.log and timings.json
    real_execute, real_write = runner.execute_notebook, run_state.atomic_write
    full = errno.ENOSPC, "No space left on device"

    def execute(src, dst, **kw):
        if src.name.startswith("01"):
            raise OSError(*full, str(dst))
        real_execute(src, dst, **kw)

    def write(path, text, *a, **kw):
        if Path(path).name == "timings.json" and '"01_second.ipynb"' in text and '"ok"' in text.split(
                '"01_second.ipynb"')[1][:80]:
            raise OSError(*full, str(path))
        real_write(path, text, *a, **kw)

    if where == "notebook":
        monkeypatch.setattr(runner, "execute_notebook", execute)
    else:
        monkeypatch.setattr(run_state, "atomic_write", write)
    assert main(args(project, "--run-id", "full")) == 3
    err = capsys.readouterr().err.strip().splitlines()
    run = project / "reports" / "full"
    assert len(err) == 1 and "No space left on device" in err[0] and "--resume" in err[0]
    assert (str(run / "notebooks" / "01_second.ipynb") if where == "notebook" else "timings.json") in err[0]
    assert not (run / ".lock.json").exists()  # released: nobody is named as holding it,
    RunLock(run).acquire("test").release()     # and another process can take it at once
    timings = json.loads((run / "timings.json").read_text())
    assert timings["status"] == ("failed" if where == "notebook" else "running")
    monkeypatch.setattr(runner, "execute_notebook", real_execute)
    monkeypatch.setattr(run_state, "atomic_write", real_write)
    assert main(args(project, "--run-id", "full", "--resume")) == 0
    timings = json.loads((run / "timings.json").read_text())
    assert timings["status"] == "completed"
    assert {k: v["status"] for k, v in timings["notebooks"].items()} == {
        "00_write.ipynb": "ok", "01_second.ipynb": "ok", "02_fail.ipynb": "ok", "03_after.ipynb": "ok"}


@pytest.mark.fault
def test_train_command_refuses_a_run_folder_in_use(tmp_path, capsys):
    from dasd_lib.run import train_main
    from conftest import SMOKE
    run = tmp_path / "busy"
    run.mkdir()
    holder = RunLock(run).acquire("dasd-run")
    try:
        assert train_main(["--params", str(SMOKE), "--run-dir", str(run), "--stage", "cla"]) == 2
        assert "in use by another dasd-run" in capsys.readouterr().err
        assert not (run / "params.yaml").exists()
    finally:
        holder.release()


# ----------------------------------------------------------------------------- report.html kept current

def _report_status(run: Path) -> tuple[str, dict[str, str]]:
    """(the Timings paragraph, {notebook: status}) read back from report.html."""
    from bs4 import BeautifulSoup
    soup = BeautifulSoup((run / "report.html").read_text(encoding="utf-8"), "html.parser")
    heading = soup.find(id="Timings")
    rows = [[td.get_text(strip=True) for td in tr.find_all("td")]
            for tr in heading.find_next("table").find_all("tr") if tr.find("td")]
    return heading.find_next("p").get_text(), {name: status for name, status, _ in rows}


def test_the_runner_rewrites_the_report_when_the_run_ends(project, monkeypatch):
    from dasd_lib.report_html import write_report
    written_during_run = []

    def fake(src, dst, *, parameters, cwd, log_output=False, progress=False):
        shutil.copy(src, dst)
        if src.name.startswith("02"):
            raise NotebookFailed(notebook=src.name, output_path=dst, ename="ValueError", evalue="x")
        if src.name.startswith("03"):  # as notebook 06: the report, while the run still runs
            write_report(parameters["run_dir"])
            written_during_run.append(_report_status(Path(parameters["run_dir"])))

    monkeypatch.setattr(runner, "execute_notebook", fake)
    run = run_notebooks(project / "params" / "t.yaml", run_id="rep", only=["00", "03"],
                        notebooks_dir=project / "notebooks", reports_dir=project / "reports")
    (during, during_rows), = written_during_run
    assert "Run status: running" in during and during_rows["03_after.ipynb"] == "running"
    text, rows = _report_status(run)
    assert text.startswith("Run status: completed") and "finished" in text
    assert rows == {"00_write.ipynb": "ok", "03_after.ipynb": "ok"}
    seconds = json.loads((run / "timings.json").read_text())["notebooks"]["03_after.ipynb"]["seconds"]
    assert f"{seconds:.1f}" in (run / "report.html").read_text(encoding="utf-8")
    assert "rewrote report.html with the final status (completed)" in (run / "run.log").read_text()

    # a resumed run that fails: the report says failed, not running or completed
    with pytest.raises(NotebookFailed):
        run_notebooks(project / "params" / "t.yaml", run_id="rep", only=["02"], resume=True,
                      notebooks_dir=project / "notebooks", reports_dir=project / "reports")
    text, rows = _report_status(run)
    assert text.startswith("Run status: failed") and rows["02_fail.ipynb"] == "failed"


def test_rerunning_a_notebook_refreshes_the_report(tmp_path, capsys):
    from types import SimpleNamespace

    from IPython.core.events import EventManager, available_events

    from dasd_lib.execution import keep_report_fresh
    from dasd_lib.report_html import figure_caption, write_report
    run = tmp_path / "done"
    (run / "figures").mkdir(parents=True)
    shell = SimpleNamespace()
    shell.events = EventManager(shell, available_events)
    assert keep_report_fresh(run, shell) and keep_report_fresh(run, shell)
    assert len(shell.events.callbacks["post_run_cell"]) == 1  # a second call replaces the hook
    shell.events.trigger("post_run_cell", None)
    assert not (run / "report.html").exists()  # no report: none is made
    report = write_report(run)
    before = report.stat().st_mtime_ns
    shell.events.trigger("post_run_cell", None)
    assert report.stat().st_mtime_ns == before  # nothing changed: not rewritten

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(2, 2))
    fig.savefig(run / "figures" / "05_probes.png")
    plt.close(fig)
    holder = RunLock(run).acquire("dasd-run")  # a runner holds the folder: it rewrites later
    try:
        shell.events.trigger("post_run_cell", None)
        assert report.stat().st_mtime_ns == before
    finally:
        holder.release()
    shell.events.trigger("post_run_cell", None)  # the cell that re-made a figure
    assert report.stat().st_mtime_ns > before
    assert figure_caption("05_probes") in report.read_text(encoding="utf-8")
    assert "figures/05_probes.png changed" in capsys.readouterr().out


# ----------------------------------------------------------------------------- live feedback

def test_heartbeat_names_the_notebook_and_the_kernels_progress(project, monkeypatch, capsys):
    from dasd_lib.storage import PROGRESS_ENV, report_progress
    seen = {}

    def slow(src, dst, *, parameters, cwd, log_output=False, progress=False):
        seen["file"] = os.environ.get(PROGRESS_ENV)
        report_progress("cla finetune dasd s0", 3, 10, every_s=0)
        threading.Event().wait(0.45)
        shutil.copy(src, dst)

    monkeypatch.setattr(runner, "execute_notebook", slow)
    run = run_notebooks(project / "params" / "t.yaml", run_id="hb", only="00",
                        notebooks_dir=project / "notebooks", reports_dir=project / "reports",
                        heartbeat_s=0.1)
    out = capsys.readouterr().out
    beats = [ln for ln in out.splitlines() if "running" in ln and " s" in ln and ";" in ln]
    assert beats, out
    assert beats[0].startswith("  [1/1] 00_write.ipynb: running ")
    assert beats[0].endswith("; cla finetune dasd s0: 3/10")
    # the kernel was pointed into the run folder; afterwards neither the variable nor the file is left
    assert seen["file"] == str(run / runner.PROGRESS_FILE)
    assert PROGRESS_ENV not in os.environ and not (run / runner.PROGRESS_FILE).exists()


def test_heartbeat_reads_progress_a_real_kernel_reports(project, capsys):
    nb = notebook("from dasd_lib.storage import report_progress\nimport time\n"
                  "report_progress('vlp', 2, 5, every_s=0)\ntime.sleep(2.5)")
    nbformat.write(nb, project / "notebooks" / "01_second.ipynb")
    run_notebooks(project / "params" / "t.yaml", run_id="hbk", only="01",
                  notebooks_dir=project / "notebooks", reports_dir=project / "reports",
                  heartbeat_s=0.5)
    beats = [ln for ln in capsys.readouterr().out.splitlines() if "01_second.ipynb: running " in ln]
    # the first beats may come before the kernel has started; the last one saw its report
    assert beats and beats[-1].endswith("; vlp: 2/5"), beats


# ----------------------------------------------------------------------------- resume with changes

@pytest.mark.fault
def test_resume_may_change_parameters_only_unfinished_notebooks_read(project, monkeypatch, capsys):
    """02 fails; a resume changing cla.* (first read by 02, unfinished) is allowed and logged;
    once 02 has finished, changing cla.* again is refused unless 02 is re-executed too."""
    def fake(src, dst, *, parameters, **kw):
        if src.name.startswith("02") and not (project / "fixed").exists():
            raise NotebookFailed(notebook=src.name, output_path=dst, ename="ValueError", evalue="boom")
        shutil.copy(src, dst)

    monkeypatch.setattr(runner, "execute_notebook", fake)
    assert main(args(project, "--run-id", "c")) == 1
    err = capsys.readouterr().err
    (project / "fixed").write_text("")
    # 00 and 01 finished; cla.* is first read by 02, which did not finish: allowed, and logged
    assert main(args(project, "--run-id", "c", "--resume", "--only", "02,03", "-p", "cla.lr=0.002")) == 0
    run = project / "reports" / "c"
    log_text = (run / "run.log").read_text()
    assert "parameters changed on resume: cla.lr: 0.001 -> 0.002" in log_text, log_text
    assert yaml.safe_load((run / "params.yaml").read_text())["cla"]["lr"] == 0.002
    # now 02 finished: changing cla.* again without re-executing 02 is refused, naming it
    assert main(args(project, "--run-id", "c", "--resume", "--only", "03", "-p", "cla.lr=0.003")) == 2
    err = capsys.readouterr().err
    assert "cla.lr: 0.002 -> 0.003" in err and "Finished notebooks 02 depend on them" in err
    assert yaml.safe_load((run / "params.yaml").read_text())["cla"]["lr"] == 0.002
    # data.* is read by 00: every finished notebook would be stale
    assert main(args(project, "--run-id", "c", "--resume", "--only", "01", "-p", "cla.lr=0.002",
                     "-p", "data.mt_noise=0.5")) == 2
    assert "Finished notebooks 00, 02, 03 depend on them" in capsys.readouterr().err
    # re-executing every notebook a change reaches is allowed (trained stages are then
    # checked by their fingerprints in the library)
    assert main(args(project, "--run-id", "c", "--resume", "--only", "02,03", "-p", "cla.lr=0.003")) == 0


def test_first_reader_of_a_parameter():
    from dasd_lib.run import first_reader, stale_finished_notebooks
    assert [first_reader(k) for k in ("data.mt_noise", "vlp.steps", "run.seeds", "run.eval_split",
                                      "explore.umap_neighbors", "cma.lr", "future.key")] == \
        ["00", "01", "01", "04", "05", "03", "00"]
    assert stale_finished_notebooks(["run.kfold: 0 -> 5"], ["00", "01", "04", "05"], ["04"]) == ["05"]
    assert stale_finished_notebooks([], ["00"], []) == []
