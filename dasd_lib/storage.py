"""Storage, the bottom layer every other one writes through: atomic files and folders,
fingerprints and the records that say what made an artefact, and state folders of
safetensors weights plus a JSON file.

- `atomic_write(path, text_or_bytes)`: the one way the workbook writes a file: into a
  temporary sibling, flushed to disk (fsync), then `os.replace`d over the destination,
  so a crash or a full disk leaves the old file or the new one, never a truncated one.
- `atomic_dir(path)`: the same for a folder (the old one is renamed aside and removed
  after the swap, since rename(2) cannot replace a non-empty folder).
- `save_state(dir, tensors, meta)` / `load_state(dir)`: a folder holding
  `state.safetensors` and `state.json` (the caller's `meta`, a format version and the
  sha256 of the safetensors file, checked on load). Optimizer state, caches, backbones
  and target models (dasd_lib.checkpoint, with save_pretrained's file names) use it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
STATE_FILES = ("state.safetensors", "state.json")        # save_state / load_state
PRETRAINED_FILES = ("model.safetensors", "config.json")  # save_pretrained, Backbone.save


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, corrupt, or does not fit what it is loaded onto."""


class StaleStageError(CheckpointError):
    """A checkpoint, model or finished stage was made by other inputs than the ones asked for."""


# ----------------------------------------------------------------------------- fingerprints

def fingerprint(values: Any) -> str:
    """sha256 (24 hex digits) of `values` as canonical JSON."""
    text = json.dumps(values, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def make_record(identity: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """What an artefact is (`identity`: kind, stage, method, setting, seed...) and everything
    that determined it (`inputs`: configs, seed, backbone identity, data key, the record of
    what it started from), with a fingerprint of both. Stored in the artefact's JSON."""
    return {"identity": identity, "inputs": inputs,
            "fingerprint": fingerprint({"identity": identity, "inputs": inputs})}


def _flat(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict) and values:
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): values}


def record_differences(recorded: dict[str, Any] | None, expected: dict[str, Any]) -> list[str]:
    """'key: recorded -> expected' for every identity or input that differs (flattened keys)."""
    if not recorded or "fingerprint" not in recorded:
        return ["(no fingerprint recorded: written by an older dasd_lib or by hand)"]
    if recorded.get("fingerprint") == expected["fingerprint"]:
        return []
    have = _flat({"identity": recorded.get("identity", {}), "inputs": recorded.get("inputs", {})})
    want = _flat({"identity": expected["identity"], "inputs": expected["inputs"]})
    diffs = [f"{k.split('.', 1)[1]}: {_short(have.get(k))} -> {_short(want.get(k))}"
             for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
    return diffs or ["(fingerprint differs)"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_record(recorded: dict[str, Any] | None, expected: dict[str, Any], where: str,
                 remedy: str = "") -> None:
    """Raise StaleStageError naming what differs between an artefact's record and the one asked for."""
    diffs = record_differences(recorded, expected)
    if diffs:
        ident = expected["identity"]
        what = ", ".join(f"{k} {v}" for k, v in ident.items() if k != "kind" and v != "")
        stage = ident.get("stage", "vlp" if ident.get("kind") == "vlp" else "STAGE")
        raise StaleStageError(
            f"{where} does not hold what was asked for ({ident.get('kind')}: {what}); it was "
            f"made from other inputs: "
            + "; ".join(diffs[:8]) + (f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else "")
            + ". " + (remedy or RESTART_REMEDY.format(stage=stage)))


RESTART_REMEDY = ("Use a new run id (run folder), or retrain the stage from scratch: "
                  "dasd-run --resume --restart-stage {stage}, the notebook parameter restart = True, "
                  "or restart=True in a library call.")


# ----------------------------------------------------------------------------- helpers

def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: str | Path, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write `data` (text or bytes) to `path` atomically and durably: a temporary sibling,
    fsync, then os.replace; on any failure the temporary file is removed and `path` keeps
    its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode(encoding) if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path` for a writer that wants a file name (pandas,
    matplotlib, nbformat); on success it is fsynced and replaces `path`, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_csv(frame, path: str | Path, **to_csv) -> Path:
    """`frame.to_csv(path, index=False, **to_csv)`, atomically (atomic_file)."""
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, **({"index": False} | to_csv))
    return Path(path)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `path`; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):  # flush file contents before the rename makes them visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            # rename(2) cannot replace a non-empty folder: move the old one aside first
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_state(folder: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                files: tuple[str, str] = STATE_FILES) -> None:
    """Write the safetensors + JSON pair `files` into an existing folder (not atomic by itself)."""
    folder, (weights_name, meta_name) = Path(folder), files
    clean = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"save_state: '{name}' is a {type(t).__name__}, not a tensor")
        # clone: safetensors refuses tensors that share storage (tied or sliced weights)
        clean[name] = t.detach().to("cpu").contiguous().clone()
    save_file(clean, str(folder / weights_name), metadata={"format": "pt"})
    doc = {"format_version": FORMAT_VERSION, "sha256": file_sha256(folder / weights_name),
           "meta": meta}
    try:
        text = json.dumps(doc, indent=1, sort_keys=True)
    except TypeError as err:
        raise CheckpointError(f"save_state: meta is not JSON-serialisable ({err})") from err
    atomic_write(folder / meta_name, text)


def read_meta(folder: str | Path, files: tuple[str, str] | None = None) -> dict[str, Any]:
    """The `meta` dict of a folder, without loading (or checking) the tensors."""
    return _read_doc(Path(folder), files)["meta"]


def _files_of(folder: Path, files: tuple[str, str] | None) -> tuple[str, str]:
    """`files`, or whichever pair the folder holds (state.* first, then model/config)."""
    if files is not None:
        return files
    return PRETRAINED_FILES if not (folder / STATE_FILES[1]).exists() and \
        (folder / PRETRAINED_FILES[1]).exists() else STATE_FILES


def _read_doc(folder: Path, files: tuple[str, str] | None) -> dict[str, Any]:
    weights_name, meta_name = _files_of(folder, files)
    meta_path = folder / meta_name
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    if not meta_path.is_file() or not (folder / weights_name).is_file():
        raise CheckpointError(f"{folder}: expected {meta_name} and {weights_name}; this is not a "
                              f"folder written by dasd_lib (or the write was cut short)")
    try:
        doc = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path}: not valid JSON ({err})") from err
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format_version {doc.get('format_version')!r}, "
                              f"this dasd_lib reads {FORMAT_VERSION}")
    return doc


def save_state(folder: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
               files: tuple[str, str] = STATE_FILES) -> Path:
    """Atomically write `tensors` (safetensors) and `meta` (JSON) into `folder`."""
    with atomic_dir(folder) as tmp:
        write_state(tmp, tensors, meta, files)
    return Path(folder)


def load_state(folder: str | Path, device: str | torch.device = "cpu",
               files: tuple[str, str] | None = None, *, verify_only: bool = False
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a folder written by `save_state` (or save_pretrained / Backbone.save: found by
    its file names); the safetensors file's sha256 must match.
    `verify_only`: check the folder and its checksum, return ({}, meta) without the tensors."""
    folder = Path(folder)
    files = _files_of(folder, files)
    doc = _read_doc(folder, files)
    state_path = folder / files[0]
    digest = file_sha256(state_path)
    if digest != doc.get("sha256"):
        raise CheckpointError(f"{state_path}: sha256 {digest[:12]}... does not match the "
                              f"{doc.get('sha256', '')[:12]}... recorded in {files[1]}; the file "
                              f"is corrupt or was replaced; re-run the stage that wrote it")
    if verify_only:
        return {}, doc["meta"]
    try:
        return load_file(str(state_path), device=str(device)), doc["meta"]
    except Exception as err:  # noqa: BLE001 - SafetensorError and friends, from Rust
        # the hash matched, so this file was put there on purpose (e.g. a pickle renamed)
        raise CheckpointError(f"{state_path}: not a readable safetensors file ({err}); "
                              f"dasd_lib reads safetensors only, never pickles") from err


# ----------------------------------------------------------------------------- progress

# The runner sets this to a file in the run folder; the kernel inherits it and reports the
# training loop's and the evaluation's progress there, which the runner prints every 30 s.
PROGRESS_ENV = "DASD_PROGRESS_FILE"


def report_progress(what: str, done: int, total: int, *, every_s: float = 2.0) -> None:
    """Write {what, done, total, time} to $DASD_PROGRESS_FILE, at most every `every_s`
    seconds (the file's own mtime says when it was written last; always at the end); nothing
    without the variable. Progress is a courtesy: a write that fails is ignored, never the
    run's failure."""
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    now = time.time()
    if done < total and every_s > 0:
        try:
            if now - os.stat(path).st_mtime < every_s:
                return
        except OSError:
            pass  # not written yet
    try:
        atomic_write(path, json.dumps({"what": what, "done": done, "total": total, "time": now}))
    except OSError:
        pass


def read_progress(path: str | Path) -> dict[str, Any] | None:
    """What report_progress last wrote to `path`, or None (no file yet, or unreadable)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
