"""Evaluation: embed test captions with each method, rank the test images, write the
comparison table (results.csv in long form, results.md)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .config import Params, SOURCE_LANG
from .metrics import chance_sumr, kfold_recall_metrics

log = logging.getLogger("dasd_lib.evaluate")

RESULT_COLUMNS = ["setting", "method", "variant", "lang", "seed", "i2t_R1", "i2t_R5", "i2t_R10",
                  "t2i_R1", "t2i_R5", "t2i_R10", "SumR", "AR", "i2t_medr", "t2i_medr",
                  "i2t_meanr", "t2i_meanr", "n_images", "n_captions", "trainable_params"]


@dataclass
class TargetEmbeddings:
    r_T: np.ndarray                # (N, d)
    f_sr: np.ndarray | None        # (N, d)
    f_sa: np.ndarray | None        # (N, w)
    w_z: np.ndarray | None = None  # (N, L, r, r) generated adapter matrices, when asked for


@torch.no_grad()
def embed_target(model, backbone, texts: list[str], lang: str, *, device=None, batch_size: int = 512,
                 keep_w_z: bool = False) -> TargetEmbeddings:
    """Target-tower outputs for `texts` in one language. Captions are sorted by length so
    each batch pads only to its own longest caption; outputs come back in input order."""
    device = device or next(backbone.parameters()).device
    model.to(device).eval()
    ids_all, mask_all = backbone.tokenize_target(list(texts))
    lengths = mask_all.sum(1)
    order = torch.argsort(lengths, stable=True)
    parts: dict[str, list] = {"r_T": [], "f_sr": [], "f_sa": [], "w_z": []}
    for i in range(0, len(texts), batch_size):
        rows = order[i:i + batch_size]
        width = int(lengths[rows].max())
        out = model(ids_all[rows, :width].to(device), mask_all[rows, :width].to(device), lang)
        parts["r_T"].append(out.r_T.float().cpu())
        if out.f_sr is not None:
            parts["f_sr"].append(out.f_sr.float().cpu())
            parts["f_sa"].append(out.f_sa.float().cpu())
        if keep_w_z and out.w_z is not None:
            parts["w_z"].append(torch.stack([w.float().cpu() for w in out.w_z], dim=1))
    inverse = torch.argsort(order)

    def gather(name):
        return torch.cat(parts[name])[inverse].numpy() if parts[name] else None

    return TargetEmbeddings(r_T=gather("r_T"), f_sr=gather("f_sr"), f_sa=gather("f_sa"),
                            w_z=gather("w_z"))


def similarity(text_emb, image_emb) -> np.ndarray:
    """Cosine similarities (n_texts, n_images)."""
    t = F.normalize(torch.as_tensor(np.asarray(text_emb), dtype=torch.float32), dim=-1)
    v = F.normalize(torch.as_tensor(np.asarray(image_emb), dtype=torch.float32), dim=-1)
    return (t @ v.T).numpy()


def unique_images(test: pd.DataFrame) -> pd.DataFrame:
    """One row per image (image_id, image_path), in table order."""
    return test.drop_duplicates("image_id")[["image_id", "image_path"]].reset_index(drop=True)


def score_captions(text_emb, captions: pd.DataFrame, image_ids: list[str], image_emb,
                   kfold: int = 0) -> dict:
    """Metrics for caption rows (with image_id) against the image set (in image_ids order)."""
    index = {i: n for n, i in enumerate(image_ids)}
    caption_image = np.array([index[i] for i in captions.image_id])
    keep = np.unique(caption_image)
    if len(keep) < len(image_ids):  # images without captions in this set cannot be retrieved
        remap = {old: new for new, old in enumerate(keep)}
        image_emb = np.asarray(image_emb)[keep]
        caption_image = np.array([remap[c] for c in caption_image])
    metrics = kfold_recall_metrics(similarity(text_emb, image_emb), caption_image, kfold)
    return metrics | {"n_images": int(len(keep)), "n_captions": int(len(captions))}


def kfold_for(params: Params, lang: str) -> int:
    """run.kfold for languages in run.kfold_langs (all when it is empty), else 0: MSCOCO's
    ja (and en) test is 5 folds of 1K images, its zh test (COCO-CN) one 1K set."""
    langs = params.run.kfold_langs
    return params.run.kfold if not langs or lang in langs else 0


def english_oracle(params: Params, run_dir, *, backbone=None, setting: str = "finetune") -> dict:
    """Translate-test oracle / English sanity check: the frozen VLP on the English test
    captions. Uses the run's frozen-feature cache, which evaluation and exploration share."""
    from .pipeline import cache_dir, get_backbone, test_table
    from .train import frozen_features, resolve_device

    backbone = backbone or get_backbone(params, run_dir, setting)
    test = test_table(params)
    feats = frozen_features(backbone, test, image_size=params.data.image_size,
                            cache_dir=cache_dir(params, run_dir),
                            device=resolve_device(params.run.device))
    image_ids = unique_images(test).image_id.tolist()
    english = test[(test.lang == SOURCE_LANG)].reset_index(drop=True)
    metrics = score_captions(feats.texts(english.caption.tolist()).numpy(), english, image_ids,
                             feats.images(image_ids).numpy(), kfold_for(params, SOURCE_LANG))
    cpi = max(1, round(len(english) / max(1, len(image_ids))))
    metrics["chance_SumR"] = chance_sumr(len(image_ids), cpi)
    return metrics


def evaluate_run(params: Params, run_dir, *, write: bool = True) -> pd.DataFrame:
    """Every (setting, method, seed, target language, test variant) of the run, in long
    form; the oracle is reported once per seed list under lang 'en'."""
    from .model import METHODS
    from .pipeline import cache_dir, get_backbone, load_trained_model, test_table
    from .train import frozen_features, resolve_device

    run_dir = Path(run_dir)
    device = resolve_device(params.run.device)
    test = test_table(params)
    images = unique_images(test)
    image_ids = images.image_id.tolist()
    rows = []
    for setting in params.run.settings:
        backbone = get_backbone(params, run_dir, setting)
        feats = frozen_features(backbone, test, image_size=params.data.image_size,
                                cache_dir=cache_dir(params, run_dir), device=device)
        image_emb = feats.images(image_ids).numpy()
        for method in params.run.methods.get(setting, []):
            spec = METHODS[method]
            seeds = params.run.seeds[:1] if spec.oracle else params.run.seeds
            for seed in seeds:
                base = {"setting": setting, "method": method, "seed": seed}
                if spec.oracle:
                    english = test[test.lang == SOURCE_LANG]
                    m = score_captions(feats.texts(english.caption.tolist()).numpy(), english,
                                       image_ids, image_emb, kfold_for(params, SOURCE_LANG))
                    rows.append(base | {"variant": "native", "lang": SOURCE_LANG,
                                        "trainable_params": 0} | m)
                    continue
                model = load_trained_model(params, run_dir, setting, method, seed).to(device)
                n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) if spec.trained else 0
                for lang in params.data.langs:
                    for variant in params.run.eval_variants:
                        caps = test[(test.lang == lang) & (test.variant == variant)]
                        if caps.empty:
                            continue
                        emb = embed_target(model, backbone, caps.caption.tolist(), lang, device=device,
                                           batch_size=params.run.eval_batch_size)
                        m = score_captions(emb.r_T, caps, image_ids, image_emb, kfold_for(params, lang))
                        rows.append(base | {"variant": variant, "lang": lang,
                                            "trainable_params": n_trainable} | m)
    frame = pd.DataFrame(rows)
    frame = frame[[c for c in RESULT_COLUMNS if c in frame] +
                  [c for c in frame if c not in RESULT_COLUMNS and "@" not in c]]
    if write:
        from .report import results_markdown
        frame.to_csv(run_dir / "results.csv", index=False)
        (run_dir / "results.md").write_text(results_markdown(frame), encoding="utf-8")
    return frame


def summary_table(results: pd.DataFrame, variant: str = "native") -> pd.DataFrame:
    """SumR per setting and method, averaged over target languages (the oracle: English),
    mean and std over seeds."""
    sub = results[results.variant == variant]
    per_seed = sub.groupby(["setting", "method", "seed"], sort=False).agg(
        SumR=("SumR", "mean"), t2i_R1=("t2i_R1", "mean"), i2t_R1=("i2t_R1", "mean"),
        trainable_params=("trainable_params", "first")).reset_index()
    return per_seed.groupby(["setting", "method"], sort=False).agg(
        SumR=("SumR", "mean"), SumR_std=("SumR", "std"), t2i_R1=("t2i_R1", "mean"),
        i2t_R1=("i2t_R1", "mean"), seeds=("seed", "count"),
        trainable_params=("trainable_params", "first")).reset_index()
