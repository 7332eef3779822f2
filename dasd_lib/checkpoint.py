"""Checkpoints: safetensors weights plus a JSON file, written atomically.

Two layers:

- `save_state(dir, tensors, meta)` / `load_state(dir)`: a generic folder holding
  `state.safetensors` and `state.json` (the caller's `meta`, a format version and the
  sha256 of the safetensors file, checked on load). The trainer reuses it for optimizer
  state and caches.
- `save_pretrained(model, dir)` / `from_pretrained(dir, backbone)`: a target-language
  model (dasd_lib.model.TargetTextModel) as `model.safetensors` + `config.json` (same
  format, save_pretrained names; backbone folders use them too). Only the model's own
  weights are stored, never the frozen backbone's; the backbone's identity (name and
  weights hash), the method, the model config and the language set are recorded, and
  loading onto another backbone or language set fails with an error that says which.

Atomic writes: everything is written into a temporary sibling folder which then
replaces the destination with `os.replace`, so a crash leaves either the old or the new
folder, never a half-written one (when an old folder exists it is first renamed aside
and removed after the swap).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:  # imported lazily at run time: model.py imports the backbones
    from dasd_lib.backbones.base import Backbone
    from dasd_lib.model import TargetTextModel

FORMAT_VERSION = 1
STATE_FILES = ("state.safetensors", "state.json")        # save_state / load_state
PRETRAINED_FILES = ("model.safetensors", "config.json")  # save_pretrained, Backbone.save
MODEL_KIND = "dasd_target_model"


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
    (folder / meta_name).write_text(text, encoding="utf-8")


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


# ----------------------------------------------------------------------------- target models

def save_pretrained(model: TargetTextModel, folder: str | Path,
                    extra_meta: dict[str, Any] | None = None,
                    record: dict[str, Any] | None = None) -> Path:
    """Save a target model's own weights, its config, method, languages and backbone identity,
    and the `record` (make_record) of the stage that trained it."""
    meta = {
        "record": record,
        "kind": MODEL_KIND,
        "method": model.method,
        "spec": dataclasses.asdict(model.spec),
        "model_config": dataclasses.asdict(model.cfg),
        "langs": list(model.langs),
        "backbone": model.backbone.identity(),
        "extra": extra_meta or {},
    }
    return save_state(folder, model.saved_state_dict(), meta, PRETRAINED_FILES)


def check_backbone(meta: dict[str, Any], backbone: Backbone, where: str) -> None:
    """Fail unless `backbone` is the one the checkpoint was trained on."""
    want, have = meta.get("backbone", {}), backbone.identity()
    if want.get("name") != have["name"]:
        raise CheckpointError(
            f"{where} was trained on backbone '{want.get('name')}', but the backbone given is "
            f"'{have['name']}'; load the run's own backbone (artifacts/backbone/)")
    if want.get("weights_hash") != have["weights_hash"]:
        raise CheckpointError(
            f"{where} was trained on backbone '{have['name']}' with weights hash "
            f"{str(want.get('weights_hash'))[:12]}..., but the given backbone's weights hash is "
            f"{have['weights_hash'][:12]}... (same architecture, other weights: another VLP "
            f"training or fine-tune); load the run's own backbone (artifacts/backbone/)")


def from_pretrained(folder: str | Path, backbone: Backbone, langs: list[str] | None = None,
                    device: str | torch.device = "cpu", expect: dict[str, Any] | None = None,
                    remedy: str = "") -> TargetTextModel:
    """Rebuild a target model from `folder` on `backbone`.

    `langs`, when given, must equal the checkpoint's language set (order ignored).
    `expect`, when given, is the record (make_record) of the stage asked for: a model made
    by another stage, method, seed or other inputs raises StaleStageError naming them."""
    from dasd_lib.config import ModelConfig, build_dataclass
    from dasd_lib.model import build_target_model

    folder = Path(folder)
    tensors, meta = load_state(folder, "cpu", PRETRAINED_FILES)
    if meta.get("kind") != MODEL_KIND:
        raise CheckpointError(f"{folder}: holds '{meta.get('kind')}', not a target-language model")
    check_backbone(meta, backbone, f"checkpoint {folder}")
    if expect is not None:
        check_record(meta.get("record"), expect, f"model {folder}", remedy)
    saved_langs = list(meta["langs"])
    if langs is not None and sorted(langs) != sorted(saved_langs):
        raise CheckpointError(
            f"checkpoint {folder} was trained for languages {saved_langs}, but languages "
            f"{list(langs)} were asked for; train a model for that language set or pass "
            f"langs={saved_langs}")
    cfg = build_dataclass(ModelConfig, meta["model_config"], f"{folder / PRETRAINED_FILES[1]} [model_config]")
    model = build_target_model(backbone, cfg, meta["method"], saved_langs)
    model.load_saved_state_dict(tensors, where=str(folder / PRETRAINED_FILES[0]))
    return model.to(device)
