"""What config.load_params checks once the parameters are built, and the paths it resolves:
words from a short list (CHOICES), ranges (RANGES), the inputs a run cannot start without
(check_paths, before notebook 00), relative paths made absolute against the project root
(resolve_paths). Below config (it reads parameters by section and key, never builds them),
so config imports it and not the other way round.
"""
from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Sequence

TARGET_LANGS = ["de", "fr", "cs", "ja", "zh"]


class ConfigError(ValueError):
    """A parameter file or override that does not fit the config schema."""


# path-valued keys. One rule: a relative path means the project root (the folder holding
# notebooks/ and params/), wherever the kernel or command runs; load_params makes them
# absolute, so params.yaml of a run names its files wherever it is read from. Inputs that may
# also be hub ids are resolved only when the folder exists under the root.
PATH_KEYS = [(s, k) for s in ("data", "web") for k in ("root", "path", "english_path")] + \
    [("run", "reports_dir"), ("run", "shared_dir")]
HUB_OR_PATH_KEYS = [("hf", "clip_path"), ("hf", "mbert_path")]


def resolve_paths(params: Any, root: Path) -> Any:
    """`params` with every relative path of PATH_KEYS (and HUB_OR_PATH_KEYS that exist under
    `root`) made absolute against the project root; "" (unset) stays ""."""
    sections = {}
    for section, key in [*PATH_KEYS, *HUB_OR_PATH_KEYS]:
        value = getattr(getattr(params, section), key)
        if not value or Path(value).expanduser().is_absolute():
            continue
        target = root / Path(value)
        if (section, key) in HUB_OR_PATH_KEYS and not target.exists():
            continue  # a hub id such as openai/clip-vit-base-patch16
        sections.setdefault(section, {})[key] = str(target.resolve())
    return dataclasses.replace(params, **{s: dataclasses.replace(getattr(params, s), **changes)
                                          for s, changes in sections.items()})


# keys whose value must be one of a few words: checked when parameters are loaded, so a typo
# stops the run before anything starts
SETTINGS = ("finetune", "zeroshot")
STAGES = ("vlp", "cla", "cma")
TARGET_STAGES = ("cla", "cma")  # the stages with loss weights (config.TargetStageConfig)
CHOICES = {("run", "i2t_protocol"): ("standard", "official"),
           ("model", "compat"): ("method", "official"),
           ("model", "backbone"): ("tiny", "hf"),
           ("model", "f_sa_pool"): ("real", "all"),
           ("model", "generator_act"): ("gelu", "quick_gelu"),
           ("run", "eval_split"): ("test", "val"),
           ("run", "device"): ("auto", "cpu", "cuda"),
           **{(s, "source"): ("synthetic", "release", "manifest") for s in ("data", "web")},
           **{(s, "corpus"): ("downstream", "web") for s in ("data", "web")},
           **{(s, "on_missing"): ("error", "skip") for s in ("data", "web")},
           **{(s, "precision"): ("auto", "fp32", "bf16") for s in STAGES}}
# fp16 autocast needs a gradient scaler, which the training step does not have: without one,
# small gradients (the 0.001-weighted adversarial term, lr 6e-6 updates) underflow to zero
FP16_REFUSED = ("'fp16' is refused: fp16 autocast needs a gradient scaler, which this workbook's "
                "training step does not have, and without one small gradients (the 0.001-weighted "
                "adversarial term, CMA's lr 6e-6 updates) underflow to zero. Use bf16 (fp32's "
                "range; what 'auto' picks on CUDA) or fp32")
# ranges: (keys, test, what the message says the value must be)
_STAGE_COUNTS = ("steps", "epochs", "checkpoint_every", "log_every", "num_workers")
RANGES = [
    ([(s, k) for s in STAGES for k in _STAGE_COUNTS] + [("run", "bootstrap_samples"), ("run", "kfold"), ("run", "workers")]
     + [(s, k) for s in ("data", "web") for k in ("n_train", "n_val", "n_test")],
     lambda v: v >= 0, "0 or more"),
    ([(s, "batch_size") for s in STAGES] + [("run", "eval_batch_size"), ("explore", "max_captions"),
                                            ("explore", "search_k")]
     + [(s, k) for s in ("data", "web") for k in ("image_size", "captions_per_image",
                                                  "train_captions_per_image", "max_caption_tokens")],
     lambda v: v >= 1, "at least 1"),
    ([(s, "lr") for s in STAGES] + [(s, "disc_lr") for s in TARGET_STAGES], lambda v: v > 0, "more than 0"),
    ([(s, k) for s in STAGES for k in ("weight_decay", "grad_clip")]
     + [(s, k) for s in TARGET_STAGES for k in ("lambda_sc", "lambda_adv", "lambda_mse", "logit_scale")],
     lambda v: v >= 0, "0 or more"),
    ([(s, "warmup_frac") for s in STAGES] + [(s, k) for s in ("data", "web") for k in ("mt_noise", "mt_native_share")],
     lambda v: 0 <= v <= 1, "between 0 and 1"),
    ([("explore", "probe_test_frac")], lambda v: 0 < v < 1, "strictly between 0 and 1"),
    ([("explore", "umap_neighbors")], lambda v: v >= 2, "at least 2"),
]
# list-valued keys whose items come from a short list (the languages only for synthetic corpora:
# real data may hold others)
LIST_CHOICES = {("run", "settings"): SETTINGS, ("explore", "probe_style"): ("style", "variant")}


def _closest(value: Any, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(value), list(allowed), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def check_choices(params: Any, where: str = "parameters") -> None:
    """Values no dataclass type can refuse: words from a short list (run.device also takes
    'cuda:<n>'), the settings of run.settings and run.methods, ranges (counts >= 0, sizes >= 1,
    learning rates > 0, fractions in [0, 1]), run.seeds not empty, and a synthetic corpus's
    languages. Method names are checked against dasd_lib.model.METHODS by pipeline.check_methods,
    paths that must exist by check_paths (both before a run starts)."""
    def value(section, key):
        return getattr(getattr(params, section), key)

    for section in STAGES:
        if value(section, "precision") == "fp16":
            raise ConfigError(f"{where}: {section}.precision {FP16_REFUSED}: set {section}.precision: bf16")
    for (section, key), allowed in CHOICES.items():
        v = value(section, key)
        if v not in allowed and not (key == "device" and str(v).startswith("cuda:")):
            raise ConfigError(f"{where}: {section}.{key} is '{v}', not one of "
                              f"{', '.join(allowed)}{_closest(v, allowed)}")
    lists = dict(LIST_CHOICES)
    lists.update({(s, "langs"): TARGET_LANGS for s in ("data", "web") if value(s, "source") == "synthetic"})
    for (section, key), allowed in lists.items():
        for item in value(section, key):
            if item not in allowed:
                raise ConfigError(f"{where}: {section}.{key} names '{item}', not one of "
                                  f"{', '.join(allowed)}{_closest(item, allowed)}")
    for setting in params.run.methods:
        if setting not in SETTINGS:
            raise ConfigError(f"{where}: run.methods names setting '{setting}', not "
                              f"one of {', '.join(SETTINGS)}{_closest(setting, SETTINGS)}")
    for keys, ok, must in RANGES:
        for section, key in keys:
            if not ok(value(section, key)):
                hint = "; it counts training steps" if key == "steps" else ""
                raise ConfigError(f"{where}: {section}.{key} is {value(section, key)}{hint}; "
                                  f"it must be {must}")
    if params.data.source == "synthetic" and params.data.n_test < 1:
        raise ConfigError(f"{where}: data.n_test is {params.data.n_test}; the downstream corpus is "
                          f"what every method is tested on, so it must be at least 1")
    if not params.run.seeds:
        raise ConfigError(f"{where}: run.seeds is empty; give at least one seed, e.g. [0]")


def check_paths(params: Any) -> None:
    """Inputs a run cannot start without: data.path (and a release's english_path, when given) for real
    corpora, a CLIP folder for backbone hf, and run.imported. Checked before notebook 00 (not
    at load: a finished run's params.yaml must stay readable after its data moved)."""
    def missing(section, key, what):
        path = getattr(getattr(params, section), key)
        if not path:
            raise ConfigError(f"{section}.{key} is empty; {what}")
        if not Path(path).expanduser().exists():
            raise ConfigError(f"{section}.{key}: {path} does not exist; {what}")

    for section in ("data", "web"):
        cfg = getattr(params, section)
        if section == "web" and not _web_used(params):
            continue
        if cfg.source in ("manifest", "release"):
            missing(section, "path", f"a {cfg.source} corpus needs its file (docs/real_data.md)")
        if cfg.source == "release" and cfg.english_path:  # optional: it adds English rows
            missing(section, "english_path", "it names the English captions' JSON; leave it empty "
                                             "to run without English rows (docs/real_data.md)")
    if params.model.backbone == "hf" and not params.run.imported:
        path = params.hf.clip_path
        if not path:
            raise ConfigError("hf.clip_path is empty; backbone hf needs a CLIP folder "
                              "(docs/real_data.md)")
        # a hub id (org/name) cannot be checked offline; anything that looks like a path must exist
        looks_local = Path(path).expanduser().is_absolute() or path.startswith(".") or path.count("/") != 1
        if looks_local and not Path(path).expanduser().exists():
            raise ConfigError(f"hf.clip_path: {path} does not exist; point it at a saved CLIP "
                              f"folder (config.json and weights)")
    if params.run.imported and not Path(params.run.imported).expanduser().is_dir():
        raise ConfigError(f"run.imported: {params.run.imported} is not a folder; write it with "
                          f"dasd-import-official PATH --out {params.run.imported}")


def _web_used(params: Any) -> bool:
    """The web corpus is read for the zero-shot setting, and by the tiny VLP's pretraining."""
    return "zeroshot" in params.run.settings or (params.model.backbone == "tiny" and params.web.n_train > 0)

