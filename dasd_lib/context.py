"""The run object: one run's parameters, its folder's layout (`RunPaths`) and what its
notebooks read from disk (the corpus tables and the frozen backbones), memoised on the
object and nowhere else.

`run.prepare_run` returns a `Run` in every notebook; the pipeline, the VLP stage and the
explorer take it. Its memos key on the files' stamps (`files_stamp`: path, size, mtime),
so a corpus regenerated or a backbone retrained in the same folder is read again, and two
`Run` objects never share state: a test, a notebook or a sweep point that builds its own
`Run` sees only what is on disk.

Settings (method.md): "finetune" trains the target side on the downstream corpus's
machine-translated captions; "zeroshot" trains it on the web corpus; both are tested on
the downstream test set.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from .backbones import load_backbone, load_hf_backbone
from .config import CHOICES, SETTINGS, ConfigError, DataConfig, Params, canonical_stage
from .data import load_corpus
from .official import imported_backbone_dir
from .train import TrainingError, file_fingerprint, resolve_device

EVAL_SPLITS = CHOICES[("run", "eval_split")]  # one list: config checks it when parameters load


@dataclass(frozen=True)
class RunPaths:
    """Where a run folder keeps what: its layout, nothing else."""
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


def corpus_config(params: Params, setting: str) -> DataConfig:
    """The corpus a setting trains its target side on: data (finetune) or web (zeroshot)."""
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


def corpus_files(cfg: DataConfig) -> tuple:
    """The files a corpus table is read from (a synthetic corpus: its generated folder)."""
    if cfg.source != "synthetic":
        return (cfg.path, cfg.english_path)
    return (Path(cfg.root) / cfg.name,)


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
            raise ConfigError(f"{section}.image_size is {size} but the CLIP at hf.clip_path takes "
                              f"{backbone.image_size} x {backbone.image_size} images; set "
                              f"{section}.image_size: {backbone.image_size}")


class Run:
    """One run: `params`, its folder (`dir`, laid out as `paths`) and, memoised on this
    object, the corpus tables (`table`) and the frozen backbones (`backbone`) it reads.

    Building one reads nothing and creates nothing; `run.prepare_run` builds the one a
    notebook uses (and creates the folder). A memo entry is used only while its files'
    stamp is unchanged, and is replaced when it changes."""

    def __init__(self, params: Params, folder: str | Path):
        self.params = params
        self.paths = RunPaths(Path(folder))
        # corpus config (JSON) -> (files stamp, table); backbone folder -> (stamp, backbone)
        self._tables: dict[str, tuple[str, pd.DataFrame]] = {}
        self._backbones: dict[str, tuple[str, object]] = {}

    def __repr__(self) -> str:
        return f"Run({self.params.run.run_id or ''!r}, {str(self.dir)!r})"

    def __getstate__(self) -> dict:
        """Pickled (to a worker process, dasd_lib.parallel): the parameters and the folder,
        without the memos; the copy reads what it needs again."""
        return {"params": self.params, "folder": str(self.dir)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["params"], state["folder"])

    @property
    def dir(self) -> Path:
        """The run folder."""
        return self.paths.root

    @property
    def device(self) -> torch.device:
        return resolve_device(self.params.run.device)

    @property
    def cache_dir(self) -> Path:
        """Where frozen-feature caches go: run.shared_dir/cache when runs share one (a
        sweep), else the run's artifacts/cache. Keys cover backbone, images, texts and
        preprocessing, so sharing never mixes up two runs' features."""
        if self.params.run.shared_dir:
            return Path(self.params.run.shared_dir) / "cache"
        return self.paths.cache

    # ------------------------------------------------------------------------- corpus tables

    def table(self, cfg: DataConfig) -> pd.DataFrame:
        """The corpus table of `cfg` (params.data or params.web; generated on first use for
        synthetic corpora), a copy of the memoised one: read again when the corpus files'
        stamp changed, so an edited or regenerated corpus is never served from memory."""
        key = json.dumps(asdict(cfg), sort_keys=True)
        stamp = files_stamp(*corpus_files(cfg))
        if key not in self._tables or self._tables[key][0] != stamp:
            self._tables[key] = (stamp, load_corpus(cfg))
        return self._tables[key][1].copy()

    def test_table(self) -> pd.DataFrame:
        """The rows of the evaluation split (run.eval_split: test, or val for runs that choose)."""
        split = self.params.run.eval_split
        if split not in EVAL_SPLITS:
            raise ConfigError(f"run.eval_split: '{split}' is not a split to evaluate on; use "
                              f"{' or '.join(EVAL_SPLITS)}")
        table = self.table(self.params.data)
        rows = table[table.split == split].reset_index(drop=True)
        if rows.empty:
            raise ConfigError(f"run.eval_split: the corpus has no '{split}' rows"
                              + (" (data.n_val is 0)" if split == "val" else ""))
        return rows

    # ------------------------------------------------------------------------- backbones

    def backbone_dir(self, setting: str) -> Path | None:
        """The folder the setting's frozen VLP is loaded from; None: the CLIP at
        hf.clip_path. tiny: the VLP notebook 01 trained (both settings). hf: the
        English-fine-tuned CLIP in the finetune setting when notebook 01 made one."""
        params = self.params
        if params.run.imported:  # a DASD release converted by dasd-import-official
            return imported_backbone_dir(params.run.imported)
        if params.model.backbone == "tiny":
            where = self.paths.backbone
            if not (where / "config.json").exists():
                raise TrainingError(f"no tiny VLP in {where}; run notebook 01_source_vlp first")
            return where
        if params.model.backbone == "hf":
            where = self.paths.finetuned_backbone
            if setting == "finetune" and (params.vlp.steps > 0 or params.vlp.epochs > 0) \
                    and not (where / "config.json").exists():
                # the raw CLIP in its place would make every finetune result a zero-shot one
                raise TrainingError(
                    f"the finetune setting uses the English-fine-tuned CLIP (vlp.epochs "
                    f"{params.vlp.epochs}, vlp.steps {params.vlp.steps}), but {where} holds none; run "
                    f"notebook 01_source_vlp first, or set vlp.epochs: 0 and vlp.steps: 0 to use the "
                    f"CLIP at hf.clip_path as it is")
            return where if setting == "finetune" and (where / "config.json").exists() else None
        raise ValueError(f"unknown model.backbone '{params.model.backbone}'; use tiny or hf")

    def backbone(self, setting: str):
        """The frozen VLP a setting uses (backbone_dir), loaded once, frozen, on the run's
        device in eval mode; loaded afresh when its folder's files changed (retrained in
        place)."""
        where = self.backbone_dir(setting)
        key = str(where) if where is not None else "hf.clip_path"
        stamp = files_stamp(where) if where is not None else ""
        if key not in self._backbones or self._backbones[key][0] != stamp:
            backbone = load_backbone(where) if where is not None else load_hf_backbone(self.params.hf)
            check_image_size(self.params, backbone)
            backbone.freeze()
            self._backbones[key] = (stamp, backbone.to(self.device).eval())
        return self._backbones[key][1]

    def forget_backbones(self) -> None:
        """Drop the loaded backbones (the VLP stage calls it after training one)."""
        self._backbones.clear()
