"""What the runner stands on: its errors, executing one notebook with papermill (and
naming the cell that failed), finding and selecting the numbered notebooks, the record
of the environment a run ran in (env.json), the run folder's lock, and the kernel hook
that keeps a run's report.html in step with the files it shows."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

from filelock import FileLock, Timeout

from .parallel import die_with_parent
from .report_html import REPORT_FILE, stale_report_inputs, write_report
from .storage import PROGRESS_ENV, atomic_write, read_progress

# the runner's pid, for its kernels: bind_kernel_to_runner makes a kernel die with it
RUNNER_ENV = "DASD_RUNNER_PID"

KERNEL_NAME = "python3"
NOTEBOOK_RE = re.compile(r"^(\d{2})_[\w.-]+\.ipynb$")
# notebooks that compare several run folders (dasd-sweep runs them on a sweep folder):
# never part of a run, so find_notebooks leaves them out
COMPARE_NOTEBOOK = "07_compare_runs.ipynb"
CROSS_RUN_NOTEBOOKS = (COMPARE_NOTEBOOK,)
# versions recorded in env.json (import names differ; these are distribution names)
PACKAGES = ("dasd_lib", "torch", "transformers", "tokenizers", "safetensors", "accelerate",
            "numpy", "pandas", "scikit-learn", "umap-learn", "matplotlib", "pillow",
            "papermill", "nbconvert", "nbformat", "ipykernel", "ipywidgets", "jupyterlab",
            "pyyaml", "tqdm")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- errors

class RunError(RuntimeError):
    """The runner cannot start or continue; the message says what to do."""


class RunLockedError(RunError):
    """Another runner holds the run folder's lock."""


class RunExistsError(RunError):
    """The run folder already holds a run and --resume was not given."""


class NotebookFailed(RunError):
    """A notebook raised; names the notebook, the cell and the error."""

    def __init__(self, *, notebook: str, output_path: Path, ename: str, evalue: str,
                 cell_index: int | None = None, exec_count: int | None = None,
                 first_line: str = "", run_dir: Path | None = None):
        self.notebook, self.output_path = notebook, output_path
        self.ename, self.evalue = ename, evalue
        self.cell_index, self.exec_count, self.first_line = cell_index, exec_count, first_line
        self.run_dir = run_dir
        self.remaining: list[str] = []  # numbers of this and the later notebooks of the run
        super().__init__(self.describe())

    def describe(self) -> str:
        if self.cell_index is not None:
            where = (f"cell {self.cell_index} (0-based, in notebooks/{self.notebook}; "
                     f"In [{self.exec_count}] in the executed copy): {self.first_line}")
        elif self.first_line:
            where = f"the parameters papermill injected: {self.first_line}"
        else:
            where = "before or outside any cell (kernel or papermill error)"
        return (f"notebook {self.notebook} failed in {where}\n"
                f"  {self.ename}: {self.evalue}\n"
                f"  executed notebook with the full traceback: {self.output_path}")


# ----------------------------------------------------------------------------- notebooks

def find_notebooks(notebooks_dir: str | Path) -> list[Path]:
    """A run's notebooks/NN_name.ipynb in number order (not the CROSS_RUN_NOTEBOOKS);
    an error when there are none."""
    folder = Path(notebooks_dir)
    if not folder.is_dir():
        raise RunError(f"notebook folder {folder} does not exist; pass --notebooks-dir")
    found = sorted(p for p in folder.iterdir()
                   if NOTEBOOK_RE.match(p.name) and p.name not in CROSS_RUN_NOTEBOOKS)
    if not found:
        raise RunError(f"no notebooks named NN_name.ipynb in {folder}")
    return found


def find_compare_notebook(notebooks_dir: str | Path) -> Path:
    """notebooks/07_compare_runs.ipynb, the cross-run comparison dasd-sweep executes."""
    path = Path(notebooks_dir) / COMPARE_NOTEBOOK
    if not path.is_file():
        raise RunError(f"no {COMPARE_NOTEBOOK} in {notebooks_dir}; pass --notebooks-dir")
    return path


def select_notebooks(notebooks: Sequence[Path], only: Sequence[str] | str | None) -> list[Path]:
    """Keep the notebooks whose number or name starts with one of `only` ("02", "2",
    "02_train_cla"; comma-separated strings allowed); None keeps all. Order stays numeric."""
    if only is None:
        return list(notebooks)
    if isinstance(only, str):
        only = [only]
    wanted = [w.strip() for item in only for w in str(item).split(",") if w.strip()]
    if not wanted:
        return list(notebooks)
    keys = [w.zfill(2) if w.isdigit() else w for w in wanted]
    missing = [w for w, k in zip(wanted, keys) if not any(p.name.startswith(k) for p in notebooks)]
    if missing:
        have = ", ".join(p.name for p in notebooks)
        raise RunError(f"--only {','.join(missing)}: no such notebook; available: {have}")
    return [p for p in notebooks if any(p.name.startswith(k) for k in keys)]


def _failed_cell(src: Path, cell_index: int) -> int | None:
    """Map papermill's cell index (in the notebook with the injected parameters cell) back
    to the cell index of the source notebook; None for the injected cell itself."""
    import nbformat
    nb = nbformat.read(src, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells)
              if "parameters" in c.get("metadata", {}).get("tags", [])]
    injected_at = tagged[0] + 1 if tagged else 0
    if cell_index == injected_at:
        return None
    return cell_index - 1 if cell_index > injected_at else cell_index


def _kernel_config() -> dict[str, Any]:
    """Encrypt the kernel's TCP channels where pyzmq supports it (ipykernel warns otherwise)."""
    try:
        import zmq
        from traitlets.config import Config
    except ImportError:  # pragma: no cover
        return {}
    if not zmq.has("curve"):
        return {}
    return {"config": Config({"KernelManager": {"transport_encryption": "auto"}})}


def show_papermill_log() -> None:
    """papermill writes a notebook's outputs (log_output) to its 'papermill' logger at INFO,
    which has no handler of its own: give it one on stderr, once, so --log-output shows the
    cells' prints and progress as they come."""
    logger = logging.getLogger("papermill")
    if not any(getattr(h, "_dasd", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("  %(message)s"))
        handler._dasd = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def execute_notebook(src: Path, dst: Path, *, parameters: dict[str, Any], cwd: Path,
                     log_output: bool = False, progress: bool = False) -> None:
    """Run one notebook with papermill into `dst`; raise NotebookFailed naming the cell."""
    import papermill as pm  # imported here: notebooks import this module and need no papermill
    from papermill.exceptions import PapermillExecutionError

    if log_output:
        show_papermill_log()
    try:
        pm.execute_notebook(str(src), str(dst), parameters=parameters, kernel_name=KERNEL_NAME,
                            cwd=str(cwd), log_output=log_output, progress_bar=progress,
                            **_kernel_config())
    except PapermillExecutionError as err:
        index = _failed_cell(src, err.cell_index)
        lines = [ln for ln in (err.source or "").splitlines() if ln.strip()]
        raise NotebookFailed(notebook=src.name, output_path=dst, ename=err.ename,
                             evalue=err.evalue, cell_index=index, exec_count=err.exec_count,
                             first_line=lines[0].strip() if lines else "") from err
    except Exception as err:  # kernel died, bad notebook JSON, ...: still name the notebook
        raise NotebookFailed(notebook=src.name, output_path=dst, ename=type(err).__name__,
                             evalue=str(err)) from err


@contextmanager
def heartbeat(label: str, progress_file: Path, every_s: float = 30.0):
    """While the block runs: point the kernel at `progress_file` (PROGRESS_ENV; the kernel
    inherits the runner's environment) and print `label: running N s; <progress>` every
    `every_s` seconds, so a long notebook never leaves the terminal silent. every_s <= 0
    prints nothing (the progress file is still written)."""
    progress_file = Path(progress_file)
    progress_file.unlink(missing_ok=True)  # the last notebook's progress is not this one's
    before = {k: os.environ.get(k) for k in (PROGRESS_ENV, RUNNER_ENV)}
    os.environ[PROGRESS_ENV] = str(progress_file)
    os.environ[RUNNER_ENV] = str(os.getpid())
    stop = threading.Event()
    t0 = time.monotonic()

    def beat():
        while not stop.wait(every_s):
            line = f"{label}: running {time.monotonic() - t0:.0f} s"
            if (p := read_progress(progress_file)) is not None:
                line += f"; {p.get('what', '?')}: {p.get('done', '?')}/{p.get('total', '?')}"
            print(line, flush=True)

    thread = threading.Thread(target=beat, daemon=True, name="dasd-heartbeat")
    if every_s > 0:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(timeout=5)
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        progress_file.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- environment

def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def collect_env(root: Path, command: Sequence[str] | None = None) -> dict[str, Any]:
    """What produced a run: Python, package versions, git commit and dirty flag, machine."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {
        "created": _now(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "packages": versions,
        "git": {"commit": _git(root, "rev-parse", "HEAD"),  # None: no commit / not a repo
                "dirty": bool(status) if status is not None else None},
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "host": socket.gethostname(),
        "cwd": str(root),
        "command": shlex.join(command if command is not None else sys.argv),
    }


# ----------------------------------------------------------------------------- the lock

class RunLock:
    """Exclusive ownership of a run folder: an flock on `.lock` (filelock), which the kernel
    drops when the holder exits or is killed, so no lock outlives its process and none has
    to be reclaimed. The holder's pid, host, start time and command are kept in
    `.lock.json` for the message another runner gets."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self.owner_path = Path(run_dir) / ".lock.json"
        self._lock = FileLock(self.path, timeout=0, thread_local=False, is_singleton=False)
        self.reclaimed_from: dict[str, Any] | None = None  # set by acquire

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def acquire(self, command: str = "") -> "RunLock":
        try:
            self._lock.acquire()
        except Timeout:
            raise RunLockedError(self._held_message(self._owner())) from None
        # a name left behind by a holder that no longer holds the flock: it was killed
        self.reclaimed_from = self._owner() or None
        atomic_write(self.owner_path, json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
             "command": command}))
        return self

    def _owner(self) -> dict[str, Any]:
        try:
            owner = json.loads(self.owner_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def _held_message(self, owner: dict[str, Any]) -> str:
        who = (f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}"
               if owner else "a process that has not written its name yet")
        return (f"run folder {self.path.parent} is in use by another dasd-run ({who}); "
                f"wait for it to finish or pick another --run-id")

    def held_elsewhere(self) -> bool:
        """Whether another holder (a dasd-run in another process) has the folder now. Probes
        by taking the flock and dropping it at once; .lock.json is left alone."""
        if self.held or not self.path.parent.is_dir():
            return False
        try:
            self._lock.acquire()
        except Timeout:
            return True
        self._lock.release()
        return False

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        self.owner_path.unlink(missing_ok=True)
        self._lock.release()

    def __enter__(self) -> "RunLock":
        return self.acquire() if not self.held else self

    def __exit__(self, *exc) -> None:
        self.release()


# ----------------------------------------------------------------------------- in notebook kernels

def bind_kernel_to_runner() -> bool:
    """In a kernel dasd-run started: ask Linux to SIGKILL this process the moment the runner
    dies (prctl PR_SET_PDEATHSIG), so a killed runner leaves no kernel writing on into its
    run folder (ipykernel's own parent poller takes up to a second). Whether it was bound;
    a no-op outside dasd-run, off Linux, or when the parent is not the runner."""
    runner = os.environ.get(RUNNER_ENV, "")
    if not runner.isdigit() or os.getppid() != int(runner):
        return False
    return die_with_parent(int(runner))


REPORT_HOOK_MARK = "_dasd_keeps_report_fresh"  # on the post_run_cell callback keep_report_fresh registers


def keep_report_fresh(run_dir: str | Path, shell: Any = None) -> bool:
    """In a notebook kernel: after every cell, rewrite run_dir/report.html when a file it is
    made from (a figure, probes.csv, results.csv, ...) was written after it, so re-running a
    notebook of a finished run refreshes the report instead of leaving it stale. Nothing is
    done while another process holds the run folder's lock: that is a dasd-run, which
    rewrites the report itself when the run ends. A later call replaces the earlier hook.
    Returns whether a hook is registered (False outside IPython)."""
    if shell is None:
        from IPython import get_ipython  # optional: only notebooks have a shell
        shell = get_ipython()
    if shell is None:
        return False
    run_dir = Path(run_dir)

    def refresh(result: Any = None) -> None:
        if not (run_dir / REPORT_FILE).is_file() or RunLock(run_dir).held_elsewhere():
            return
        changed = stale_report_inputs(run_dir)
        if not changed:
            return
        try:
            write_report(run_dir)
        except Exception as err:  # noqa: BLE001 - said in the cell's output, not a traceback
            print(f"note: {run_dir / REPORT_FILE} is out of date and could not be rewritten "
                  f"({type(err).__name__}: {err}); run notebook 06 to rewrite it")
            return
        names = ", ".join(p.relative_to(run_dir).as_posix() for p in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        print(f"report: rewrote {run_dir / REPORT_FILE} ({names}{more} changed)")

    # the shell's callbacks say which hook an earlier call registered (marked below)
    for old in [f for f in shell.events.callbacks["post_run_cell"] if getattr(f, REPORT_HOOK_MARK, False)]:
        shell.events.unregister("post_run_cell", old)
    setattr(refresh, REPORT_HOOK_MARK, True)
    shell.events.register("post_run_cell", refresh)
    return True
