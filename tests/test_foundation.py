"""The workbook's foundation (issue 2): pins agree, notebooks are clean, config errors are
clear, the Makefile pins torch, CI cannot hide a failure, generated folders are ignored.

Each check is a small function that returns a list of problems; the tests run it on the
real files and on a synthetic bad case, so a check that silently passes everything fails.
"""
from __future__ import annotations

import ast
import os
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dasd_lib.config import ConfigError, Params, load_params, save_params

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_PARAMETERS = {"params_file", "run_dir", "overrides"}
CROSS_RUN_PARAMETERS = {"sweep_dir", "run_dirs"}  # notebooks comparing several runs (07)


# ----------------------------------------------------------------------------- pins

def _requirement(spec: str) -> tuple[str, str]:
    """'Scikit_Learn==1.9.1' -> ('scikit-learn', '==1.9.1') (PEP 503 name normalisation)."""
    m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$", spec)
    assert m, f"cannot parse requirement {spec!r}"
    return re.sub(r"[-_.]+", "-", m.group(1)).lower(), m.group(3).replace(" ", "")


def pin_problems(pyproject_text: str, environment_text: str) -> list[str]:
    """Where environment.yml and pyproject.toml (dependencies + dev extras) disagree."""
    project = tomllib.loads(pyproject_text)["project"]
    wanted = [*project["dependencies"], *project.get("optional-dependencies", {}).get("dev", [])]
    env = yaml.safe_load(environment_text)
    pip = next((d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d), [])
    py = dict(_requirement(s) for s in wanted)
    conda = dict(_requirement(s) for s in pip if not s.startswith("-"))
    problems = [f"{n}: unpinned in pyproject.toml ({py[n] or 'no version'})"
                for n in py if not py[n].startswith("==")]
    problems += [f"{n}: pyproject {py[n]} vs environment.yml {conda[n]}"
                 for n in py if n in conda and py[n] != conda[n]]
    problems += [f"{n}: in pyproject.toml, missing from environment.yml" for n in py if n not in conda]
    problems += [f"{n}: in environment.yml, not in pyproject.toml" for n in conda if n not in py]
    if "-e ." not in pip:
        problems.append("environment.yml does not install the package itself (- -e .)")
    if "python=3.11" not in [str(d).replace(" ", "") for d in env["dependencies"]]:
        problems.append("environment.yml does not pin python=3.11 (pyproject requires 3.11)")
    return problems


def test_environment_yml_matches_pyproject():
    assert pin_problems((ROOT / "pyproject.toml").read_text(),
                        (ROOT / "environment.yml").read_text()) == []


def test_pin_check_catches_disagreement():
    pyproject = ('[project]\ndependencies = ["torch==2.13.0", "pandas==3.1.1", "tqdm"]\n'
                 '[project.optional-dependencies]\ndev = ["pytest==9.2.0"]\n')
    env = ("dependencies:\n  - python=3.11\n  - pip:\n      - torch==2.12.0\n"
           "      - pandas==3.1.1\n      - tqdm\n      - umap-learn==0.5.12\n")
    problems = "\n".join(pin_problems(pyproject, env))
    for expected in ("torch: pyproject ==2.13.0 vs environment.yml ==2.12.0", "tqdm: unpinned",
                     "pytest: in pyproject.toml, missing", "umap-learn: in environment.yml, not",
                     "-e ."):
        assert expected in problems


# ----------------------------------------------------------------------------- notebooks

def _python(source: str) -> str:
    """Cell source with IPython magics and shell escapes blanked, so ast can parse it."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                     for line in source.splitlines())


def notebook_problems(nb: nbformat.NotebookNode, required: set[str] = NOTEBOOK_PARAMETERS) -> list[str]:
    """A committed notebook: no outputs, exactly one literal-only `parameters` cell holding
    `required` (params_file, run_dir and overrides for a run's notebooks), and no def or
    class anywhere."""
    problems = []
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    for i, cell in code:
        if cell.get("outputs") or cell.get("execution_count") is not None:
            problems.append(f"cell {i} carries outputs or an execution count")
        try:
            tree = ast.parse(_python(cell.source))
        except SyntaxError as err:
            problems.append(f"cell {i} is not valid Python ({err.msg})")
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                problems.append(f"cell {i} defines {node.name}: move it into dasd_lib")
    tagged = [(i, c) for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        return problems + [f"{len(tagged)} cells tagged 'parameters'; exactly one is needed"]
    i, cell = tagged[0]
    if cell.cell_type != "code":
        return problems + [f"the parameters cell {i} is not a code cell"]
    try:
        body = ast.parse(cell.source).body
    except SyntaxError:
        return problems
    names = set()
    for stmt in body:
        value = stmt.value if isinstance(stmt, (ast.Assign, ast.AnnAssign)) else None
        targets = (stmt.targets if isinstance(stmt, ast.Assign)
                   else [stmt.target] if isinstance(stmt, ast.AnnAssign) else [])
        if value is None or not all(isinstance(t, ast.Name) for t in targets):
            problems.append(f"parameters cell: '{ast.unparse(stmt)}' is not `name = literal`")
            continue
        try:
            ast.literal_eval(value)
        except ValueError:
            problems.append(f"parameters cell: '{ast.unparse(stmt)}' is not a literal")
        names.update(t.id for t in targets)
    if not required <= names:
        problems.append(f"parameters cell lacks {sorted(required - names)}")
    return problems


def _nb(*cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return nb


PARAMS = nbformat.v4.new_code_cell('params_file = "params/default.yaml"  # the run\nrun_dir = ""\n'
                                   "overrides: list = []", metadata={"tags": ["parameters"]})


def test_committed_notebooks_are_clean():
    paths = sorted((ROOT / "notebooks").glob("*.ipynb"))
    from dasd_lib.run import CROSS_RUN_NOTEBOOKS
    problems = {p.name: notebook_problems(nbformat.read(p, as_version=4),
                                          CROSS_RUN_PARAMETERS if p.name in CROSS_RUN_NOTEBOOKS
                                          else NOTEBOOK_PARAMETERS) for p in paths}
    assert {k: v for k, v in problems.items() if v} == {}
    bad_names = [p.name for p in paths if not re.match(r"^\d{2}_[a-z0-9_]+\.ipynb$", p.name)]
    assert bad_names == [], "notebooks are named NN_verb_object.ipynb"


def test_notebook_check_catches_each_problem():
    body = nbformat.v4.new_code_cell("%matplotlib inline\nfrom dasd_lib.run import prepare_run\n"
                                     "run = prepare_run(params_file, run_dir, overrides)\n"
                                     "params = run.params")
    assert notebook_problems(_nb(nbformat.v4.new_markdown_cell("# 02"), PARAMS, body)) == []

    executed = nbformat.v4.new_code_cell("x = 1", execution_count=3,
                                         outputs=[nbformat.v4.new_output("stream", text="1")])
    assert "outputs" in " ".join(notebook_problems(_nb(PARAMS, executed)))
    assert "2 cells tagged" in " ".join(notebook_problems(_nb(PARAMS, PARAMS)))
    assert "0 cells tagged" in " ".join(notebook_problems(_nb(body)))
    computed = nbformat.v4.new_code_cell('params_file = "a"\nrun_dir = str(1)\noverrides = []',
                                         metadata={"tags": ["parameters"]})
    assert "not a literal" in " ".join(notebook_problems(_nb(computed)))
    call = nbformat.v4.new_code_cell('params_file = "a"\nrun_dir = ""\noverrides = []\nprint(1)',
                                     metadata={"tags": ["parameters"]})
    assert "not `name = literal`" in " ".join(notebook_problems(_nb(call)))
    missing = nbformat.v4.new_code_cell('params_file = "a"', metadata={"tags": ["parameters"]})
    assert "lacks ['overrides', 'run_dir']" in " ".join(notebook_problems(_nb(missing)))
    for source in ("def f():\n    pass", "class A:\n    pass", "async def g():\n    pass"):
        assert "into dasd_lib" in " ".join(
            notebook_problems(_nb(PARAMS, nbformat.v4.new_code_cell(source))))


def test_notebooks_are_stripped_on_commit():
    attributes = (ROOT / ".gitattributes").read_text()
    assert re.search(r"^\*\.ipynb\s+.*filter=nbstripout", attributes, re.M)


def _jupyterlab_save(template: dict) -> dict:
    """`template` as JupyterLab 4 saves it after Run All: outputs, counts, random cell ids,
    the kernel's language_info and cell metadata of collapsed outputs and timings."""
    import copy
    import uuid
    nb = copy.deepcopy(template)
    nb["metadata"]["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python",
                                    "name": "python3"}
    nb["metadata"]["language_info"] = {
        "codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
        "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
        "pygments_lexer": "ipython3", "version": "3.11.2"}
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    for i, cell in enumerate(nb["cells"]):
        cell["id"] = str(uuid.uuid4())
        if cell["cell_type"] == "code":
            cell["execution_count"] = i + 1
            cell["outputs"] = [{"name": "stdout", "output_type": "stream", "text": ["x\n"]}]
            cell["metadata"]["jupyter"] = {"outputs_hidden": False}
            cell["metadata"]["execution"] = {"iopub.status.busy": "2026-12-03T10:00:00Z"}
            cell["metadata"]["scrolled"] = True
            cell["metadata"]["trusted"] = True
    return nb


def test_a_template_saved_in_jupyterlab_is_unchanged_after_the_commit_filter(tmp_path):
    """nbstripout with the Makefile's NBSTRIPOUT_KEYS (the commit filter's extrakeys and
    `make lint`'s) turns a JupyterLab-saved notebook back into its template, byte for byte."""
    import sys
    keys = re.search(r"^NBSTRIPOUT_KEYS = (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    strip = [sys.executable, "-m", "nbstripout", "--extra-keys", keys]
    templates = sorted((ROOT / "notebooks").glob("*.ipynb"))
    saved = [tmp_path / t.name for t in templates]
    for template, path in zip(templates, saved):
        path.write_text(json.dumps(_jupyterlab_save(json.loads(template.read_text())), indent=1))
    # one process per check: nbstripout's start-up is most of the cost
    assert subprocess.run([*strip, "--verify", *map(str, saved[:1])], capture_output=True).returncode != 0
    subprocess.run([*strip, *map(str, saved)], check=True)
    for template, path in zip(templates, saved):
        assert path.read_text() == template.read_text(), template.name
    # and the templates themselves pass `make lint`'s check
    assert subprocess.run([*strip, "--verify", *map(str, templates)], capture_output=True).returncode == 0


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("name", ["smoke", "default", "full"])
def test_parameter_files_load_and_round_trip(name, tmp_path):
    params = load_params(ROOT / "params" / f"{name}.yaml")
    assert isinstance(params, Params)
    save_params(params, tmp_path / "params.yaml")
    assert load_params(tmp_path / "params.yaml") == params


def test_typo_key_names_key_file_and_closest_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("cla: {stpes: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert "'stpes'" in str(err.value) and str(path) in str(err.value)
    assert "did you mean 'steps'" in str(err.value)
    path.write_text("explor: {umap_neighbors: 3}\n")
    with pytest.raises(ConfigError, match="did you mean 'explore'"):
        load_params(path)


def test_wrong_type_names_key(tmp_path):
    path = tmp_path / "type.yaml"
    path.write_text('cla: {steps: "many"}\n')
    with pytest.raises(ConfigError, match="'steps' must be int") as err:
        load_params(path)
    assert str(path) in str(err.value) and "many" in str(err.value)


def test_overrides(tmp_path):
    params = load_params(ROOT / "params" / "smoke.yaml", ["cla.steps=5", "data.langs=[de, zh]"])
    assert params.cla.steps == 5 and params.data.langs == ["de", "zh"]
    assert params.cma.steps == load_params(ROOT / "params" / "smoke.yaml").cma.steps
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        load_params(None, ["cla.stpes=5"])
    with pytest.raises(ConfigError, match="'steps'"):
        load_params(None, ["cla.steps=many"])


@settings(max_examples=30, deadline=None)
@given(steps=st.integers(0, 10**6), lr=st.floats(1e-8, 1.0, allow_nan=False))
def test_overrides_round_trip(steps, lr):
    params = load_params(None, [f"cma.steps={steps}", f"cma.lr={lr!r}"])
    assert (params.cma.steps, params.cma.lr) == (steps, pytest.approx(lr))


@settings(max_examples=30, deadline=None)
@given(key=st.from_regex(r"[a-z_]{1,12}", fullmatch=True))
def test_unknown_keys_always_rejected(key):
    from dataclasses import fields

    from dasd_lib.config import TargetStageConfig
    if key in {f.name for f in fields(TargetStageConfig)}:
        return
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_params(None, [f"cla.{key}=1"])


# ----------------------------------------------------------------------------- Makefile, CI

def torch_pin_problems(makefile: str, pin: str = "torch==2.13.0") -> list[str]:
    """Every pip install of torch in the Makefile names exactly `pin`, and one does."""
    problems, pinned = [], False
    for line in makefile.replace("\\\n", " ").splitlines():
        if not re.search(r"\bpip\b.*\binstall\b", line):
            continue
        for token in line.split():
            token = token.strip("'\"")
            if re.match(r"^torch(?![\w-])", token):
                if token == pin:
                    pinned = True
                else:
                    problems.append(f"unpinned or other torch: {line.strip()}")
    if not pinned:
        problems.append(f"no `pip install {pin}`")
    return problems


def test_makefile_pins_torch():
    assert torch_pin_problems((ROOT / "Makefile").read_text()) == []
    assert "torch==2.13.0" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def test_torch_pin_check_catches_unpinned():
    good = "\t$(BIN)/pip install --quiet torch==2.13.0\n\t$(BIN)/pip install torchvision==0.28.0\n"
    assert torch_pin_problems(good) == []
    for bad in ("\tpip install torch\n", "\tpip install 'torch>=2'\n", "\tpip install -q \\\n\t  torch\n"):
        assert any("unpinned" in p for p in torch_pin_problems(good + bad)), bad
    assert torch_pin_problems("\tpip install -e .\n") == ["no `pip install torch==2.13.0`"]


def ci_problems(script: str) -> list[str]:
    """.ci/run: bash with errexit, runs `make test`, nothing that swallows its status."""
    problems = []
    lines = [ln.strip() for ln in script.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not script.startswith("#!") or "bash" not in script.splitlines()[0]:
        problems.append("no bash shebang")
    if not any(re.match(r"^set\s+-\w*e", ln) for ln in lines):
        problems.append("no `set -e`")
    if not any(re.search(r"(^|\s|;|&&)make\s+test\b", ln) for ln in lines):
        problems.append("does not call `make test`")
    for ln in lines:
        if re.search(r"\|\|\s*(true|:|exit 0)|set\s+\+e|;\s*(true|exit 0)\s*$|^exit 0$", ln):
            problems.append(f"may hide a failure: {ln}")
        if re.search(r"make\s+test\b.*\|", ln) and "pipefail" not in script:
            problems.append(f"pipes make test without pipefail: {ln}")
    return problems


def test_ci_runs_make_test_with_errexit():
    path = ROOT / ".ci" / "run"
    assert ci_problems(path.read_text()) == []
    assert os.access(path, os.X_OK), ".ci/run must be executable"


def test_ci_check_catches_hidden_failures():
    ok = "#!/usr/bin/env bash\nset -euo pipefail\nmake test\n"
    assert ci_problems(ok) == []
    assert "no `set -e`" in ci_problems(ok.replace("set -euo pipefail", "set -u"))
    assert any("hide" in p for p in ci_problems(ok.replace("make test", "make test || true")))
    assert "does not call `make test`" in ci_problems(ok.replace("make test", "make demo"))


# ----------------------------------------------------------------------------- generated folders

def test_generated_contents_are_git_ignored():
    reports, dataset = "reports/20261128-073512-default/report.html", "dataset/synth/images/0.png"
    if shutil.which("git") and (ROOT / ".git").exists():
        def ignored(path: str) -> bool:
            return subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", path]).returncode == 0
        assert ignored(reports) and ignored(dataset)
        assert not ignored("reports/README.md") and not ignored("dataset/README.md")
    else:  # an exported copy without git: the rules themselves
        rules = (ROOT / ".gitignore").read_text().split()
        assert {"/reports/*", "!/reports/README.md", "/dataset/*", "!/dataset/README.md"} <= set(rules)
    assert (ROOT / "reports" / "README.md").is_file()


def test_the_fault_table_is_current():
    """docs/reliability.md lists exactly the tests marked `fault`; regenerate it with
    `python tests/fault_table.py` after adding or renaming one."""
    from fault_table import OUT, fault_tests, render
    rows = fault_tests()
    assert len(rows) >= 40 and any(r["file"] == "test_faults.py" for r in rows)
    assert OUT.read_text(encoding="utf-8") == render(rows), "run: python tests/fault_table.py"


def test_a_parameter_file_can_start_from_a_base(tmp_path):
    (tmp_path / "base.yaml").write_text("cla: {steps: 7, lr: 0.5}\nrun: {methods: {finetune: [dasd], zeroshot: [static]}}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ncla: {steps: 9}\nrun: {methods: {finetune: [static]}}\n")
    params = load_params(tmp_path / "child.yaml")
    # keys merge within a section; a key's value (here run.methods) is replaced whole
    assert (params.cla.steps, params.cla.lr) == (9, 0.5)
    assert params.run.methods == {"finetune": ["static"]}
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="leads back to itself"):
        load_params(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"gone.yaml does not exist.*the base of .*orphan.yaml"):
        load_params(tmp_path / "orphan.yaml")
    # the shipped files that use it hold only what differs from default.yaml
    default = load_params(ROOT / "params" / "default.yaml")
    full = load_params(ROOT / "params" / "full.yaml")
    assert full.model == default.model and full.cla.lr == default.cla.lr and full.cla.steps == 600


def test_a_key_in_a_part_that_does_not_read_it_is_refused(tmp_path):
    """The VLP stage's schema has no loss weights (every part: test_config_parts.py)."""
    with pytest.raises(ConfigError, match=r"\[vlp\]: unknown key 'lambda_adv'.*adversarial term.*cla.lambda_adv"):
        load_params(None, ["vlp.lambda_adv=0.1"])
    (tmp_path / "p.yaml").write_text("vlp: {disc_lr: 0.1}\n")
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'p.yaml'} \[vlp\]: unknown key 'disc_lr'"):
        load_params(tmp_path / "p.yaml")
    assert load_params(None, ["cla.lambda_adv=0.1"]).cla.lambda_adv == 0.1
