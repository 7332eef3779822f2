"""Run-level workflow behind the notebooks: which corpus and backbone each setting uses,
where artifacts live in the run folder, and the loops over settings, methods and seeds.

Settings (method.md): "finetune" trains the target side on the downstream corpus's
machine-translated captions; "zeroshot" trains it on the web corpus; both are tested
on the downstream test set.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from filelock import FileLock

from .backbones import build_tiny_backbone, load_backbone, load_hf_backbone
from .backbones.hf import clip_image_preprocess
from .checkpoint import (PRETRAINED_FILES, CheckpointError, atomic_dir, check_record, fingerprint,
                         from_pretrained, make_record, read_meta)
from .config import CHOICES, SOURCE_LANG, ConfigError, DataConfig, Params, canonical_stage, check_paths
from .evaluate import (RESULT_COLUMNS, SCORE_KEYS, compare_methods, embed_target, kfold_for,
                       score_captions, score_captions_with_hits, unique_images)
from .metrics import chance_sumr
from .data import load_corpus
from .model import METHODS, build_target_model
from .official import check_imported_methods, imported_backbone_dir, load_imported_tower
from .report import COMPARISONS_FILE, write_results_markdown
from .storage import atomic_csv, atomic_write, report_progress
from .train import (StreamedImages, TrainingError, file_fingerprint, features_key, frozen_features,
                    apply_determinism, is_main_process, make_target_data, on_main, process_rank,
                    resolve_device, stage_inputs, stage_records, target_data_key,
                    train_target_stage, train_vlp_stage, training_rows, wait_for_everyone)

log = logging.getLogger("dasd_lib.pipeline")
SETTINGS = ("finetune", "zeroshot")


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def artifacts(self) -> Path: return self.root / "artifacts"
    @property
    def cache(self) -> Path: return self.artifacts / "cache"
    @property
    def figures(self) -> Path: return self.root / "figures"
    @property
    def losses(self) -> Path: return self.root / "losses"

    @property
    def backbone(self) -> Path:  # the tiny VLP notebook 01 trains
        return self.artifacts / "backbone"
    @property
    def finetuned_backbone(self) -> Path:  # hf: the English-fine-tuned CLIP
        return self.artifacts / "backbone_finetune"

    def checkpoint(self, setting: str, method: str, seed: int, stage: str) -> Path:
        return self.artifacts / "checkpoints" / setting / method / f"seed{seed}" / canonical_stage(stage)


def cache_dir(params: Params, run_dir: str | Path) -> Path:
    """Where frozen-feature caches go: run.shared_dir/cache when runs share one (a sweep),
    else the run's artifacts/cache. Keys cover backbone, images, texts and preprocessing,
    so sharing never mixes up two runs' features."""
    if params.run.shared_dir:
        return Path(params.run.shared_dir) / "cache"
    return RunPaths(Path(run_dir)).cache


def corpus_config(params: Params, setting: str) -> DataConfig:
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting '{setting}'; use one of {SETTINGS}")
    return params.data if setting == "finetune" else params.web


def files_stamp(*paths: str | Path) -> str:
    """file_fingerprint (path, size, mtime) of each file, and of the files directly inside
    each folder: what a memo keys on besides the config, so a file rewritten on disk (a
    manifest edited, a corpus regenerated, a backbone retrained in the same folder) is read
    again. Paths that do not exist (yet) add nothing."""
    files = []
    for path in map(Path, filter(None, paths)):
        if path.is_dir():
            files += sorted(str(p) for p in path.iterdir() if p.is_file())
        elif path.exists():
            files.append(str(path))
    return file_fingerprint(files)


@lru_cache(maxsize=8)
def _load_table_cached(cfg_json: str, stamp: str) -> pd.DataFrame:
    return load_corpus(DataConfig(**json.loads(cfg_json)))


def load_table(cfg: DataConfig) -> pd.DataFrame:
    """The corpus table (generated on first use for synthetic corpora); memoised per config
    and per the corpus files' stamp (files_stamp), so an edited or regenerated corpus is
    never served from memory."""
    corpus_files = (cfg.path, cfg.english_path) if cfg.source != "synthetic" else (Path(cfg.root) / cfg.name,)
    return _load_table_cached(json.dumps(asdict(cfg), sort_keys=True), files_stamp(*corpus_files)).copy()


EVAL_SPLITS = CHOICES[("run", "eval_split")]  # one list: config checks it when parameters load


def test_table(params: Params) -> pd.DataFrame:
    """The rows of the evaluation split (run.eval_split: test, or val for runs that choose)."""
    split = params.run.eval_split
    if split not in EVAL_SPLITS:
        raise ConfigError(f"run.eval_split: '{split}' is not a split to evaluate on; use "
                          f"{' or '.join(EVAL_SPLITS)}")
    table = load_table(params.data)
    rows = table[table.split == split].reset_index(drop=True)
    if rows.empty:
        raise ConfigError(f"run.eval_split: the corpus has no '{split}' rows"
                          + (" (data.n_val is 0)" if split == "val" else ""))
    return rows


# ----------------------------------------------------------------------------- backbones

def check_image_size(params: Params, backbone) -> None:
    """hf: data.image_size (web.image_size for the zero-shot corpus) must be at least the
    CLIP's input size. The CLIP reads images with its own processor settings
    (HFBackbone.read_images), whatever data.image_size is; the explorer shows them at
    data.image_size, and a smaller value is a parameter file meant for another backbone."""
    if params.model.backbone != "hf" and not params.run.imported:
        return
    sections = ["data"] + (["web"] if "zeroshot" in params.run.settings else [])
    for section in sections:
        size = getattr(params, section).image_size
        if size < backbone.image_size:
            raise ConfigError(f"{section}.image_size is {size} but the CLIP at model.clip_path takes "
                              f"{backbone.image_size} x {backbone.image_size} images; set "
                              f"{section}.image_size: {backbone.image_size}")


_BACKBONES: dict[tuple, object] = {}


def get_backbone(params: Params, run_dir: str | Path, setting: str):
    """The frozen VLP a setting uses. tiny: the VLP notebook 01 trained (both settings).
    hf: the English-fine-tuned CLIP in the finetune setting when notebook 01 made one,
    else the CLIP from model.clip_path."""
    paths = RunPaths(Path(run_dir))
    if params.run.imported:  # a DASD release converted by dasd-import-official
        where = imported_backbone_dir(params.run.imported)
    elif params.model.backbone == "tiny":
        where = paths.backbone
        if not (where / "config.json").exists():
            raise TrainingError(f"no tiny VLP in {where}; run notebook 01_source_vlp first")
    elif params.model.backbone == "hf":
        where = paths.finetuned_backbone
        if setting == "finetune" and (params.vlp.steps > 0 or params.vlp.epochs > 0) \
                and not (where / "config.json").exists():
            # the raw CLIP in its place would make every finetune result a zero-shot one
            raise TrainingError(
                f"the finetune setting uses the English-fine-tuned CLIP (vlp.epochs "
                f"{params.vlp.epochs}, vlp.steps {params.vlp.steps}), but {where} holds none; run "
                f"notebook 01_source_vlp first, or set vlp.epochs: 0 and vlp.steps: 0 to use the "
                f"CLIP at model.clip_path as it is")
        if setting != "finetune" or not (where / "config.json").exists():
            where = None
    else:
        raise ValueError(f"unknown model.backbone '{params.model.backbone}'; use tiny or hf")
    # the folder's files are part of the key: a backbone retrained in place is loaded afresh
    key = (str(run_dir), str(where), files_stamp(where) if where is not None else "")
    if key not in _BACKBONES:
        backbone = load_backbone(where) if where is not None else load_hf_backbone(params.model)
        check_image_size(params, backbone)
        backbone.freeze()
        _BACKBONES[key] = backbone.to(resolve_device(params.run.device)).eval()
    return _BACKBONES[key]


def forget_backbones() -> None:
    _BACKBONES.clear()


# ----------------------------------------------------------------------------- VLP (notebook 01)

@dataclass
class VLPResult:
    backbone: object
    losses: pd.DataFrame
    english_test: dict
    seconds: float
    samples_per_s: float


# model fields that shape the VLP (and the tokenizers the target tower uses); the others
# size the target tower only, so sweeping them reuses one VLP
VLP_MODEL_FIELDS = ("backbone", "clip_path", "mbert_path", "embed_dim", "text_width", "text_layers",
                    "text_heads", "context_length", "vision_width", "vision_layers",
                    "english_vocab_size", "multilingual_vocab_size", "mbert_dim", "train_all_positions")


def vlp_training_texts(params: Params) -> tuple[pd.DataFrame, list[str]]:
    """The English (image, caption) training rows of the VLP stage, and (tiny) the
    target-language training texts its multilingual tokenizer is built from."""
    down = load_table(params.data)
    tables = [down]
    if params.model.backbone == "tiny" and params.web.n_train > 0:
        tables.append(load_table(params.web))
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
              "model": {k: getattr(params.model, k) for k in VLP_MODEL_FIELDS},
              "seed": params.run.vlp_seed, "image_size": params.data.image_size, "data": data}
    if params.vlp.epochs > 0:  # what an epoch is (train.vlp_epoch_batches)
        inputs["epoch"] = "every (image, caption) pair once, one caption per image per batch"
    if params.model.backbone == "hf":  # the CLIP folder's image processor settings
        inputs["image_preprocess"] = clip_image_preprocess(params.model.clip_path)
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


def source_vlp(params: Params, run_dir: str | Path, resume: bool = True,
               restart: bool = False) -> VLPResult:
    """tiny: train tokenizers and the CLIP-style VLP on the English captions of the
    downstream and web training sets. hf: load CLIP and, when vlp.steps or vlp.epochs > 0,
    fine-tune it on the downstream English captions (the cross-lingual finetune setting).
    Ends with an English retrieval check on the downstream test set.

    The VLP draws every random number from run.vlp_seed. Its record (vlp_record) is saved
    with it: a run folder holding a VLP made from other inputs raises StaleStageError unless
    `restart`. With run.shared_dir, a VLP with the same record is taken from (or put into)
    <shared_dir>/vlp/<fingerprint>/, under a file lock, so runs differing only on the
    target side (a sweep) train it once."""
    paths = RunPaths(Path(run_dir))
    device = resolve_device(params.run.device)
    train, multilingual_texts = vlp_training_texts(params)
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
                    params.model, english_texts=train.caption.tolist(),
                    multilingual_texts=multilingual_texts,
                    image_size=params.data.image_size) if tiny else load_hf_backbone(params.model))
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
                backbone = load_backbone(initial) if tiny else load_hf_backbone(params.model)
                log.info("VLP: process %d of %d loaded the main process's %s", rank, world,
                         initial if tiny else "CLIP")
            check_image_size(params, backbone)
        if trains_vlp and not reused:
            apply_determinism(params.run.deterministic)
            # keyed by file path: image ids repeat across corpora (both start at train_00000);
            # read as training needs them (train.StreamedImages), not all at once
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
    forget_backbones()

    def check_english() -> dict:  # it writes the frozen-feature cache: once, on the main process
        english = english_oracle(params, run_dir, backbone=backbone.to(device).eval())
        atomic_write(paths.root / "vlp_english_test.json", json.dumps(english, indent=2))
        return english

    english = on_main(check_english)
    return VLPResult(backbone=backbone, losses=losses_frame, english_test=english,
                     seconds=time.perf_counter() - t0, samples_per_s=samples_per_s)


# ----------------------------------------------------------------------------- target stages (02, 03)

def check_methods(params: Params) -> None:
    """Every name in run.methods is a method of dasd_lib.model.METHODS (checked before a run
    starts, so a typo fails at once, not in notebook 02)."""
    for setting, names in params.run.methods.items():
        for name in names:
            if name not in METHODS:
                close = difflib.get_close_matches(name, list(METHODS), n=1, cutoff=0.5)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise ConfigError(f"run.methods.{setting}: unknown method '{name}'; {hint}"
                                  f"known: {', '.join(sorted(METHODS))}")
    check_imported_methods(params)


def check_run(params: Params) -> None:
    """What must hold before notebook 00 starts, beyond load_params' checks: method names and
    the paths of real inputs."""
    check_methods(params)
    check_paths(params)


def trained_methods(params: Params, setting: str) -> list[str]:
    names = params.run.methods.get(setting, [])
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"run.methods.{setting}: unknown method(s) {unknown}; "
                         f"known: {sorted(METHODS)}")
    return [m for m in names if METHODS[m].trained]


def train_stage_all(params: Params, run_dir: str | Path, stage: str, resume: bool = True,
                    restart: bool = False) -> pd.DataFrame:
    """Train `stage` (cla/cma) for every setting, trained method and seed of the run.
    CMA starts from the same method's CLA weights. Returns one summary row per run.
    A stage folder trained with other inputs raises StaleStageError unless `restart`."""
    stage = canonical_stage(stage)
    paths = RunPaths(Path(run_dir))
    paths.losses.mkdir(parents=True, exist_ok=True)
    device = resolve_device(params.run.device)
    summary = []
    for setting in params.run.settings:
        methods = trained_methods(params, setting)
        if not methods:
            continue
        backbone = get_backbone(params, run_dir, setting)
        corpus = corpus_config(params, setting)
        rows = training_rows(load_table(corpus), params.data.langs)
        def features():
            return frozen_features(backbone, rows, image_size=corpus.image_size,
                                   cache_dir=cache_dir(params, run_dir), device=device)
        kept: list = []
        on_main(lambda: kept.append(features()))  # the main process encodes, writes the cache,
        feats = kept[0] if kept else features()  # and the others then read it
        data = make_target_data(backbone, rows, feats, with_images=(stage == "cma"))
        for method in methods:
            for seed in params.run.seeds:
                out = paths.checkpoint(setting, method, seed, stage)
                init = paths.checkpoint(setting, method, seed, "cla") / "model" if stage == "cma" else None
                if init is not None and not (init / "config.json").exists():
                    raise TrainingError(f"CMA for {setting}/{method}/seed{seed} needs the CLA model "
                                        f"in {init}; run notebook 02_train_cla first")
                result = train_target_stage(params=params, stage=stage, method=method, seed=seed,
                                            backbone=backbone, data=data, out_dir=out,
                                            init_from=init, resume=resume, restart=restart,
                                            setting=setting)
                if is_main_process():  # the main process alone wrote losses.csv
                    shutil.copyfile(out / "losses.csv",
                                    paths.losses / f"{setting}__{method}__seed{seed}__{stage}.csv")
                last = result.losses.iloc[-1] if len(result.losses) else {}
                summary.append({"setting": setting, "method": method, "seed": seed, "stage": stage,
                                "steps": result.steps, "seconds": round(result.seconds, 1),
                                "samples_per_s": round(result.samples_per_s, 1),
                                "final_loss": float(last.get("total", float("nan"))) if len(result.losses) else float("nan"),
                                "trainable_params": result.extra["trainable_params"]})
    frame = pd.DataFrame(summary)
    if is_main_process():
        atomic_csv(frame, paths.root / f"train_{stage}_summary.csv")
    wait_for_everyone()
    return frame


def load_losses(run_dir: str | Path, stage: str) -> pd.DataFrame:
    """All loss CSVs of a stage in long form with setting/method/seed columns."""
    frames = []
    for path in sorted(RunPaths(Path(run_dir)).losses.glob(f"*__{canonical_stage(stage)}.csv")):
        setting, method, seed, _ = path.stem.split("__")
        frames.append(pd.read_csv(path).assign(setting=setting, method=method, seed=int(seed[4:])))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_trained_model(params: Params, run_dir: str | Path, setting: str, method: str, seed: int):
    """The model a method ends with: CMA weights for trained methods; for untrained ones
    (the floor) a fresh target tower built with the seed."""
    backbone = get_backbone(params, run_dir, setting)
    spec = METHODS[method]
    if not spec.trained:
        torch.manual_seed(seed)
        return build_target_model(backbone, params.model, method, params.data.langs)
    if params.run.imported:
        return load_imported_tower(params.run.imported, backbone, method, params.data.langs)
    path = RunPaths(Path(run_dir)).checkpoint(setting, method, seed, "cma") / "model"
    if not (path / "config.json").exists():
        raise TrainingError(f"no trained model for {setting}/{method}/seed{seed} at {path}; "
                            "run notebooks 02 and 03 first")
    expect = stage_records(params, setting=setting, method=method, seed=seed, backbone=backbone,
                           data_key=setting_data_key(params, setting, backbone))["cma"]
    return from_pretrained(path, backbone, expect=expect, remedy=(
        "Retrain it (dasd-run --restart-stage cla, or restart = True in notebooks 02 and 03) or "
        "evaluate the run folder with the parameters it was trained with."))


def setting_data_key(params: Params, setting: str, backbone) -> str:
    """The data key (train.target_data_key) of a setting's target-side training data."""
    corpus = corpus_config(params, setting)
    rows = training_rows(load_table(corpus), params.data.langs)
    return target_data_key(rows, features_key(backbone, rows, corpus.image_size))


# ----------------------------------------------------------------------------- evaluation (04)

def english_oracle(params: Params, run_dir, *, backbone=None, setting: str = "finetune") -> dict:
    """Translate-test oracle / English sanity check: the frozen VLP on the English test
    captions. Uses the run's frozen-feature cache, which evaluation and exploration share."""
    backbone = backbone or get_backbone(params, run_dir, setting)
    test = test_table(params)
    feats = frozen_features(backbone, test, image_size=params.data.image_size,
                            cache_dir=cache_dir(params, run_dir),
                            device=resolve_device(params.run.device))
    image_ids = unique_images(test).image_id.tolist()
    english = test[(test.lang == SOURCE_LANG)].reset_index(drop=True)
    metrics = score_captions(feats.texts(english.caption.tolist()).numpy(), english, image_ids,
                             feats.images(image_ids).numpy(), kfold_for(params, SOURCE_LANG),
                             params.run.i2t_protocol)
    cpi = max(1, round(len(english) / max(1, len(image_ids))))
    metrics["chance_SumR"] = chance_sumr(len(image_ids), cpi)
    return metrics


def evaluate_run(params: Params, run_dir, *, write: bool = True) -> pd.DataFrame:
    """Every (setting, method, seed, target language, test variant) of the run, in long
    form; the oracle is reported once per seed list under lang 'en'. With `write`:
    results.csv, comparisons.csv (compare_methods on the same ranks) and results.md."""
    run_dir = Path(run_dir)
    device = resolve_device(params.run.device)
    test = test_table(params)
    images = unique_images(test)
    image_ids = images.image_id.tolist()
    rows, scored, hits = [], [], []
    tokens: dict[tuple, tuple] = {}
    n_models = sum(len(params.run.seeds[:1] if METHODS[m].oracle else params.run.seeds)
                   for s in params.run.settings for m in params.run.methods.get(s, []))
    n_done = 0
    for setting in params.run.settings:
        backbone = get_backbone(params, run_dir, setting)
        feats = frozen_features(backbone, test, image_size=params.data.image_size,
                                cache_dir=cache_dir(params, run_dir), device=device)
        image_emb = feats.images(image_ids).numpy()
        for method in params.run.methods.get(setting, []):
            spec = METHODS[method]
            seeds = params.run.seeds[:1] if spec.oracle else params.run.seeds
            for seed in seeds:
                report_progress(f"evaluate {setting} {method} s{seed}", n_done, n_models, every_s=0)
                n_done += 1
                base = {"setting": setting, "method": method, "seed": seed}
                if spec.oracle:
                    english = test[test.lang == SOURCE_LANG]
                    m = score_captions(feats.texts(english.caption.tolist()).numpy(), english,
                                       image_ids, image_emb, kfold_for(params, SOURCE_LANG),
                                       params.run.i2t_protocol)
                    rows.append(base | {"variant": "native", "lang": SOURCE_LANG,
                                        "trainable_params": 0} | m)
                    continue  # no hits kept: scored on English, it is no baseline for targets
                model = load_trained_model(params, run_dir, setting, method, seed).to(device)
                n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) if spec.trained else 0
                for lang in params.data.langs:
                    for variant in params.run.eval_variants:
                        caps = test[(test.lang == lang) & (test.variant == variant)]
                        if caps.empty:
                            continue
                        # every method of a setting shares the backbone's tokenizer: tokenize once
                        key = (id(backbone), lang, variant)
                        if key not in tokens:
                            tokens[key] = backbone.tokenize_target(caps.caption.tolist())
                        emb = embed_target(model, backbone, caps.caption.tolist(), lang, device=device,
                                           batch_size=params.run.eval_batch_size, tokens=tokens[key])
                        m, h = score_captions_with_hits(emb.r_T, caps, image_ids, image_emb,
                                                        kfold_for(params, lang),
                                                        params.run.i2t_protocol)
                        rows.append(base | {"variant": variant, "lang": lang,
                                            "trainable_params": n_trainable} | m)
                        scored.append(base | {"variant": variant, "lang": lang})
                        hits.append(h)
    frame = pd.DataFrame(rows).assign(split=params.run.eval_split,
                                      i2t_protocol=params.run.i2t_protocol)
    frame = frame[[c for c in RESULT_COLUMNS if c in frame] +
                  [c for c in frame if c not in RESULT_COLUMNS and "@" not in c]]
    if write:
        comparisons = compare_methods(pd.DataFrame(scored, columns=SCORE_KEYS), hits,
                                      compare_to=params.run.compare_to,
                                      n_boot=params.run.bootstrap_samples,
                                      seed=params.run.bootstrap_seed,
                                      split=params.run.eval_split)
        atomic_csv(frame, run_dir / "results.csv")
        atomic_csv(comparisons, run_dir / COMPARISONS_FILE)
        write_results_markdown(run_dir)
    return frame
