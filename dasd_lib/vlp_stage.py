"""Notebook 01's stage: the frozen VLP the target stages stand on (`source_vlp`). tiny:
tokenizers and a CLIP-style VLP trained on English; hf: a real CLIP, optionally fine-tuned
on English. Its record (`vlp_record`) says what it was made from; a run folder or a sweep's
shared folder holding a VLP made from other inputs is refused or reused accordingly.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from filelock import FileLock

from .backbones import build_tiny_backbone, load_backbone, load_hf_backbone
from .backbones.hf import clip_image_preprocess
from .checkpoint import (PRETRAINED_FILES, CheckpointError, atomic_dir, check_record, fingerprint,
                         make_record, read_meta)
from .config import SOURCE_LANG, HFConfig, Params, TinyConfig
from .context import Run, check_image_size
from .pipeline import english_oracle
from .storage import atomic_csv, atomic_write
from .train import TrainingError, apply_determinism, file_fingerprint, on_main, process_rank, stage_inputs
from .train_vlp import StreamedImages, train_vlp_stage

log = logging.getLogger("dasd_lib.vlp_stage")


@dataclass
class VLPResult:
    backbone: object
    losses: pd.DataFrame
    english_test: dict
    seconds: float
    samples_per_s: float


# (section, key) of the parameters that shape the VLP (and the tokenizers the target tower
# uses): the backbone selector and every key of tiny: and hf:; model's other keys size the
# target tower only, so sweeping them reuses one VLP. Recorded as one mapping key -> value
# (the record's "model" entry)
VLP_MODEL_FIELDS = (("model", "backbone"), *(("hf", f.name) for f in dataclasses.fields(HFConfig)),
                    *(("tiny", f.name) for f in dataclasses.fields(TinyConfig)))


def vlp_training_texts(run: Run) -> tuple[pd.DataFrame, list[str]]:
    """The English (image, caption) training rows of the VLP stage, and (tiny) the
    target-language training texts its multilingual tokenizer is built from."""
    params = run.params
    down = run.table(params.data)
    tables = [down]
    if params.model.backbone == "tiny" and params.web.n_train > 0:
        tables.append(run.table(params.web))
    train = pd.concat([t[(t.split == "train") & (t.lang == SOURCE_LANG)] for t in tables],
                      ignore_index=True)
    if params.model.backbone != "tiny":  # hf: the English fine-tune uses the downstream corpus
        return train[train.corpus == down.corpus.iloc[0]] if "corpus" in train else train, []
    everything = pd.concat(tables, ignore_index=True)
    train_all = everything[everything.split == "train"]
    return train, train_all.loc[train_all.lang != SOURCE_LANG, "caption"].tolist()


def vlp_record(params: Params, train: pd.DataFrame, multilingual_texts: list[str]) -> dict:
    """The record of the VLP stage: its config, the VLP's model fields, run.vlp_seed, the
    image size and the data (captions, image files, tokenizer texts)."""
    data = fingerprint({
        "captions": fingerprint(train.caption.tolist()),
        "images": file_fingerprint(train.image_path.tolist()),
        "tokenizer_texts": fingerprint(multilingual_texts)})
    inputs = {"vlp": stage_inputs(params.vlp),
              "model": {k: getattr(getattr(params, s), k) for s, k in VLP_MODEL_FIELDS},
              "seed": params.run.vlp_seed, "image_size": params.data.image_size, "data": data}
    if params.vlp.epochs > 0:  # what an epoch is (train_vlp.vlp_epoch_batches)
        inputs["epoch"] = "every (image, caption) pair once, one caption per image per batch"
    if params.model.backbone == "hf":  # the CLIP folder's image processor settings
        inputs["image_preprocess"] = clip_image_preprocess(params.hf.clip_path)
    return make_record({"kind": "vlp", "backbone": params.model.backbone}, inputs)


def _vlp_remedy() -> str:
    return ("Use a new run id, or retrain the VLP (dasd-run --restart-stage vlp, the notebook "
            "parameter restart = True in 01_source_vlp, or source_vlp(..., restart=True)); every "
            "target stage trained on the old VLP is then retrained too.")


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a folder through checkpoint.atomic_dir (which also replaces an existing `dst`),
    hard-linking files where the file system allows: they are never modified in place,
    every write replaces the whole folder."""
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, copy_function=link, dirs_exist_ok=True)


def source_vlp(run: Run, resume: bool = True, restart: bool = False) -> VLPResult:
    """tiny: train tokenizers and the CLIP-style VLP on the English captions of the
    downstream and web training sets. hf: load CLIP and, when vlp.steps or vlp.epochs > 0,
    fine-tune it on the downstream English captions (the cross-lingual finetune setting).
    Ends with an English retrieval check on the downstream test set.

    The VLP draws every random number from run.vlp_seed. Its record (vlp_record) is saved
    with it: a run folder holding a VLP made from other inputs raises StaleStageError unless
    `restart`. With run.shared_dir, a VLP with the same record is taken from (or put into)
    <shared_dir>/vlp/<fingerprint>/, under a file lock, so runs differing only on the
    target side (a sweep) train it once."""
    params, paths = run.params, run.paths
    device = run.device
    train, multilingual_texts = vlp_training_texts(run)
    record = vlp_record(params, train, multilingual_texts)
    tiny = params.model.backbone == "tiny"
    trains_vlp = tiny or params.vlp.steps > 0 or params.vlp.epochs > 0
    out = paths.backbone if tiny else paths.finetuned_backbone
    t0 = time.perf_counter()
    # under `accelerate launch --multi_gpu` the main process alone reuses, builds (the
    # tokenizers are trained once) and saves; the others load what it wrote
    rank, world = process_rank()
    main = rank == 0
    initial = paths.artifacts / "vlp_training" / "initial_vlp"  # the built VLP, for the other processes
    shared = Path(params.run.shared_dir) / "vlp" / record["fingerprint"] if params.run.shared_dir else None
    lock = FileLock(str(shared) + ".lock") if shared is not None and trains_vlp and main else None
    if lock is not None:
        shared.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    try:
        built = []

        def reuse_or_build() -> str:
            if trains_vlp and (out / PRETRAINED_FILES[1]).exists() and resume and not restart:
                try:
                    saved = read_meta(out, PRETRAINED_FILES).get("record")
                except CheckpointError as err:
                    raise TrainingError(f"the run's VLP in {out} cannot be read ({err}). "
                                        + _vlp_remedy()) from err
                check_record(saved, record, f"the VLP in {out}", _vlp_remedy())
                return "run"
            if trains_vlp and shared is not None and not restart and (shared / "backbone" / PRETRAINED_FILES[1]).exists():
                check_record(read_meta(shared / "backbone", PRETRAINED_FILES).get("record"), record,
                             f"the shared VLP in {shared}")
                _copy_tree(shared / "backbone", out)
                paths.losses.mkdir(parents=True, exist_ok=True)
                if (shared / "vlp.csv").exists():
                    shutil.copyfile(shared / "vlp.csv", paths.losses / "vlp.csv")
                log.info("VLP: reused %s (fingerprint %s)", shared, record["fingerprint"])
                return "shared"
            with torch.random.fork_rng(devices=[]):  # the VLP's initial weights come from vlp_seed
                torch.manual_seed(params.run.vlp_seed)
                built.append(build_tiny_backbone(
                    params.tiny, english_texts=train.caption.tolist(),
                    multilingual_texts=multilingual_texts,
                    image_size=params.data.image_size) if tiny else load_hf_backbone(params.hf))
            if world > 1 and tiny:
                built[0].save(initial)
            return ""

        reused = on_main(reuse_or_build)
        losses_frame, samples_per_s = pd.DataFrame(), 0.0
        if reused:
            backbone = load_backbone(out)
            if (paths.losses / "vlp.csv").exists():
                losses_frame = pd.read_csv(paths.losses / "vlp.csv")
        else:
            if built:
                backbone = built[0]
            else:  # another process: the main process's tokenizers and initial weights
                backbone = load_backbone(initial) if tiny else load_hf_backbone(params.hf)
                log.info("VLP: process %d of %d loaded the main process's %s", rank, world,
                         initial if tiny else "CLIP")
            check_image_size(params, backbone)
        if trains_vlp and not reused:
            apply_determinism(params.run.deterministic)
            # keyed by file path: image ids repeat across corpora (both start at train_00000);
            # read as training needs them (train_vlp.StreamedImages), not all at once
            image_paths, image_rows = np.unique(train.image_path.values, return_inverse=True)
            images = StreamedImages(image_paths.tolist(),
                                    lambda paths: backbone.read_images(paths, params.data.image_size))
            result = train_vlp_stage(backbone=backbone, images=images, captions=train.caption.tolist(),
                                     image_rows=image_rows, cfg=params.vlp, seed=params.run.vlp_seed,
                                     device_name=params.run.device, out_dir=paths.artifacts / "vlp_training",
                                     resume=resume and not restart, record=record)
            losses_frame, samples_per_s = result.losses, result.samples_per_s
            if main:
                backbone.save(out, record=record)
                paths.losses.mkdir(parents=True, exist_ok=True)
                atomic_csv(losses_frame, paths.losses / "vlp.csv")
                if shared is not None:
                    _copy_tree(out, shared / "backbone")
                    atomic_csv(losses_frame, shared / "vlp.csv")
                if initial.exists():
                    shutil.rmtree(initial)
    finally:
        if lock is not None:
            lock.release()
    backbone.freeze()
    run.forget_backbones()

    def check_english() -> dict:  # it writes the frozen-feature cache: once, on the main process
        english = english_oracle(run, backbone=backbone.to(device).eval())
        atomic_write(paths.root / "vlp_english_test.json", json.dumps(english, indent=2))
        return english

    english = on_main(check_english)
    return VLPResult(backbone=backbone, losses=losses_frame, english_test=english,
                     seconds=time.perf_counter() - t0, samples_per_s=samples_per_s)
