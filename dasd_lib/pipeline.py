"""The loops behind notebooks 02-04, on a run object (`context.Run`): the target stages
(CLA, CMA) for every setting, trained method and seed; the trained models; the evaluation
that writes results.csv, comparisons.csv and results.md; and the checks a run's method
names pass before it starts. Notebook 01's stage is dasd_lib.vlp_stage.
"""
from __future__ import annotations

import difflib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .checkpoint import from_pretrained
from .config import SOURCE_LANG, ConfigError, Params, canonical_stage, check_paths
from .context import Run, RunPaths, corpus_config
from .evaluate import (RESULT_COLUMNS, SCORE_KEYS, compare_methods, embed_target, kfold_for,
                       score_captions, score_captions_with_hits, unique_images)
from .metrics import chance_sumr
from .parallel import resolve_workers, run_jobs
from .model import METHODS, build_target_model
from .official import check_imported_methods, load_imported_tower
from .report import COMPARISONS_FILE, write_results_markdown
from .storage import atomic_csv, report_progress
from .train import (TrainingError, features_key, frozen_features, is_main_process,
                    make_target_data, on_main, process_rank, stage_records, target_data_key,
                    train_target_stage, training_rows, wait_for_everyone)


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


def train_stage_all(run: Run, stage: str, resume: bool = True,
                    restart: bool = False) -> pd.DataFrame:
    """Train `stage` (cla/cma) for every setting, trained method and seed of the run.
    CMA starts from the same method's CLA weights. Returns one summary row per run.
    A stage folder trained with other inputs raises StaleStageError unless `restart`.
    The (setting, method, seed) jobs run in run.workers processes (dasd_lib.parallel)."""
    stage = canonical_stage(stage)
    params, paths = run.params, run.paths
    paths.losses.mkdir(parents=True, exist_ok=True)
    jobs = []
    for setting in params.run.settings:
        methods = trained_methods(params, setting)
        if not methods:
            continue
        on_main(lambda: _write_feature_cache(run, setting))
        for method in methods:
            for seed in params.run.seeds:
                init = paths.checkpoint(setting, method, seed, "cla") / "model" if stage == "cma" else None
                if init is not None and not (init / "config.json").exists():
                    raise TrainingError(f"CMA for {setting}/{method}/seed{seed} needs the CLA model "
                                        f"in {init}; run notebook 02_train_cla first")
                jobs.append((setting, method, seed))
    summary = run_jobs(_train_job, jobs, workers=_workers(run), context_fn=_StageJobs,
                       context_args=(run, stage, resume, restart))
    frame = pd.DataFrame(summary)
    if is_main_process():
        atomic_csv(frame, paths.root / f"train_{stage}_summary.csv")
    wait_for_everyone()
    return frame


def _workers(run: Run) -> int:
    """Processes for a notebook's jobs (run.workers); under a multi-process launch
    (accelerate) every process takes part in every job instead."""
    return 1 if process_rank()[1] > 1 else resolve_workers(run.params.run.workers, run.device.type)


def _write_feature_cache(run: Run, setting: str) -> None:
    """Encode the setting's training images and English captions once (on the main
    process), so that every job reads them from the cache."""
    _stage_inputs(run, setting)


def _stage_inputs(run: Run, setting: str):
    """(backbone, training rows of the target languages, their frozen features)."""
    backbone = run.backbone(setting)
    corpus = corpus_config(run.params, setting)
    rows = training_rows(run.table(corpus), run.params.data.langs)
    feats = frozen_features(backbone, rows, image_size=corpus.image_size, cache_dir=run.cache_dir,
                            device=run.device)
    return backbone, rows, feats


class _StageJobs:
    """What the jobs of one stage share, built once per worker: per setting, the backbone
    and the tokenized training captions with their frozen references. In-process it uses the
    caller's run (its loaded tables and backbones); a worker gets a copy without them."""

    def __init__(self, run: Run, stage: str, resume: bool, restart: bool):
        self.run, self.stage, self.resume, self.restart = run, stage, resume, restart
        self._data: dict[str, object] = {}

    def data(self, setting: str):
        if setting not in self._data:
            backbone, rows, feats = _stage_inputs(self.run, setting)
            self._data[setting] = make_target_data(backbone, rows, feats,
                                                   with_images=(self.stage == "cma"))
        return self._data[setting]


def _train_job(ctx: _StageJobs, job: tuple[str, str, int]) -> dict:
    """One setting, method and seed of the context's stage: train it, copy its losses to
    the run's losses/ folder, return its summary row."""
    (setting, method, seed), stage, paths = job, ctx.stage, ctx.run.paths
    out = paths.checkpoint(setting, method, seed, stage)
    init = paths.checkpoint(setting, method, seed, "cla") / "model" if stage == "cma" else None
    data = ctx.data(setting)
    result = train_target_stage(params=ctx.run.params, stage=stage, method=method, seed=seed,
                                backbone=ctx.run.backbone(setting), data=data, out_dir=out,
                                init_from=init, resume=ctx.resume, restart=ctx.restart,
                                setting=setting)
    if is_main_process():  # the main process alone wrote losses.csv
        shutil.copyfile(out / "losses.csv", paths.losses / f"{setting}__{method}__seed{seed}__{stage}.csv")
    last = result.losses.iloc[-1] if len(result.losses) else {}
    return {"setting": setting, "method": method, "seed": seed, "stage": stage,
            "steps": result.steps, "seconds": round(result.seconds, 1),
            "samples_per_s": round(result.samples_per_s, 1),
            "final_loss": float(last.get("total", float("nan"))) if len(result.losses) else float("nan"),
            "trainable_params": result.extra["trainable_params"]}


def load_losses(run_dir: str | Path, stage: str) -> pd.DataFrame:
    """All loss CSVs of a stage in long form with setting/method/seed columns."""
    frames = []
    for path in sorted(RunPaths(Path(run_dir)).losses.glob(f"*__{canonical_stage(stage)}.csv")):
        setting, method, seed, _ = path.stem.split("__")
        frames.append(pd.read_csv(path).assign(setting=setting, method=method, seed=int(seed[4:])))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_trained_model(run: Run, setting: str, method: str, seed: int):
    """The model a method ends with: CMA weights for trained methods; for untrained ones
    (the floor) a fresh target tower built with the seed."""
    params = run.params
    backbone = run.backbone(setting)
    spec = METHODS[method]
    if not spec.trained:
        torch.manual_seed(seed)
        return build_target_model(backbone, params.model, method, params.data.langs)
    if params.run.imported:
        return load_imported_tower(params.run.imported, backbone, method, params.data.langs)
    path = run.paths.checkpoint(setting, method, seed, "cma") / "model"
    if not (path / "config.json").exists():
        raise TrainingError(f"no trained model for {setting}/{method}/seed{seed} at {path}; "
                            "run notebooks 02 and 03 first")
    expect = stage_records(params, setting=setting, method=method, seed=seed, backbone=backbone,
                           data_key=setting_data_key(run, setting, backbone))["cma"]
    return from_pretrained(path, backbone, expect=expect, remedy=(
        "Retrain it (dasd-run --restart-stage cla, or restart = True in notebooks 02 and 03) or "
        "evaluate the run folder with the parameters it was trained with."))


def setting_data_key(run: Run, setting: str, backbone) -> str:
    """The data key (train.target_data_key) of a setting's target-side training data."""
    corpus = corpus_config(run.params, setting)
    rows = training_rows(run.table(corpus), run.params.data.langs)
    return target_data_key(rows, features_key(backbone, rows, corpus.image_size))


# ----------------------------------------------------------------------------- evaluation (04)

def english_oracle(run: Run, *, backbone=None, setting: str = "finetune") -> dict:
    """Translate-test oracle / English sanity check: the frozen VLP on the English test
    captions. Uses the run's frozen-feature cache, which evaluation and exploration share."""
    params = run.params
    backbone = backbone or run.backbone(setting)
    test = run.test_table()
    feats = frozen_features(backbone, test, image_size=params.data.image_size,
                            cache_dir=run.cache_dir, device=run.device)
    image_ids = unique_images(test).image_id.tolist()
    english = test[(test.lang == SOURCE_LANG)].reset_index(drop=True)
    metrics = score_captions(feats.texts(english.caption.tolist()).numpy(), english, image_ids,
                             feats.images(image_ids).numpy(), kfold_for(params, SOURCE_LANG),
                             params.run.i2t_protocol)
    cpi = max(1, round(len(english) / max(1, len(image_ids))))
    metrics["chance_SumR"] = chance_sumr(len(image_ids), cpi)
    return metrics


@dataclass
class _EvalJobs:
    """What every model's evaluation job shares, built once per worker: the test captions
    and images; per VLP the frozen features, per (VLP, language, variant) the
    tokenized captions (every method on one VLP shares its tokenizer; with the tiny VLP both
    settings do)."""
    run: Run
    test: pd.DataFrame
    image_ids: list
    n_models: int
    features: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)


def _eval_context(run: Run, n_models: int) -> _EvalJobs:
    test = run.test_table()
    return _EvalJobs(run, test, unique_images(test).image_id.tolist(), n_models)


def _vlp_key(run: Run, setting: str) -> str:
    """The folder of the setting's frozen VLP: settings that share one share its test
    features and tokens."""
    return str(run.backbone_dir(setting))


def _test_features(ctx: _EvalJobs, setting: str):
    """The setting's frozen features of the test set, from the run's cache."""
    run = ctx.run
    key = _vlp_key(run, setting)
    if key not in ctx.features:
        ctx.features[key] = frozen_features(run.backbone(setting), ctx.test,
                                            image_size=run.params.data.image_size,
                                            cache_dir=run.cache_dir, device=run.device)
    return ctx.features[key]


def _eval_job(ctx: _EvalJobs, job: tuple[int, str, str, int]) -> tuple[list, list, list]:
    """One model on every target language and test variant: its results rows, the keys of
    its per-image hit arrays, and the arrays."""
    index, setting, method, seed = job
    run, test, image_ids = ctx.run, ctx.test, ctx.image_ids
    params = run.params
    report_progress(f"evaluate {setting} {method} s{seed}", index, ctx.n_models, every_s=0)
    backbone, vlp = run.backbone(setting), _vlp_key(run, setting)
    image_emb = _test_features(ctx, setting).images(image_ids).numpy()
    spec = METHODS[method]
    model = load_trained_model(run, setting, method, seed).to(run.device)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) if spec.trained else 0
    base = {"setting": setting, "method": method, "seed": seed}
    rows, scored, hits = [], [], []
    for lang in params.data.langs:
        for variant in params.run.eval_variants:
            caps = test[(test.lang == lang) & (test.variant == variant)]
            if caps.empty:
                continue
            key = (vlp, lang, variant)
            if key not in ctx.tokens:
                ctx.tokens[key] = backbone.tokenize_target(caps.caption.tolist())
            emb = embed_target(model, backbone, caps.caption.tolist(), lang, device=run.device,
                               batch_size=params.run.eval_batch_size, tokens=ctx.tokens[key])
            m, h = score_captions_with_hits(emb.r_T, caps, image_ids, image_emb,
                                            kfold_for(params, lang), params.run.i2t_protocol)
            rows.append(base | {"variant": variant, "lang": lang, "trainable_params": n_trainable} | m)
            scored.append(base | {"variant": variant, "lang": lang})
            hits.append(h)
    return rows, scored, hits


def evaluate_run(run: Run, *, write: bool = True) -> pd.DataFrame:
    """Every (setting, method, seed, target language, test variant) of the run, in long
    form; the oracle is reported once per seed list under lang 'en'. With `write`:
    results.csv, comparisons.csv (compare_methods on the same ranks) and results.md.
    The models are evaluated in run.workers processes (dasd_lib.parallel)."""
    params, run_dir = run.params, run.dir
    n_models = sum(len(params.run.seeds[:1] if METHODS[m].oracle else params.run.seeds)
                   for s in params.run.settings for m in params.run.methods.get(s, []))
    ctx = _eval_context(run, n_models)
    parts: list = []  # in the run's order: the oracle's rows, or the index of a model's job
    jobs: list = []
    for setting in params.run.settings:
        for method in params.run.methods.get(setting, []):
            if not METHODS[method].oracle:
                for seed in params.run.seeds:
                    parts.append(len(jobs))
                    jobs.append((len(jobs), setting, method, seed))
                continue
            # the frozen VLP on English, from the feature cache; no hits kept: scored on
            # English, it is no baseline for the target languages
            feats = _test_features(ctx, setting)
            english = ctx.test[ctx.test.lang == SOURCE_LANG]
            m = score_captions(feats.texts(english.caption.tolist()).numpy(), english, ctx.image_ids,
                               feats.images(ctx.image_ids).numpy(), kfold_for(params, SOURCE_LANG),
                               params.run.i2t_protocol)
            parts.append([{"setting": setting, "method": method, "seed": params.run.seeds[0],
                           "variant": "native", "lang": SOURCE_LANG, "trainable_params": 0} | m])
    done = run_jobs(_eval_job, jobs, workers=_workers(run), context_fn=_eval_context,
                    context_args=(run, n_models))
    rows, scored, hits = [], [], []
    for part in parts:
        if isinstance(part, list):
            rows += part
        else:
            rows += done[part][0]
            scored += done[part][1]
            hits += done[part][2]
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
