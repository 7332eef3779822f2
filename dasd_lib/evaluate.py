"""Evaluation: embed test captions with a target model, rank the test images, score them
(recall, per-image hits), and the differences between run.compare_to and every other
method with paired-bootstrap intervals (comparisons.csv). The loop over a run's settings,
methods and seeds that writes results.csv is dasd_lib.pipeline.evaluate_run."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .config import Params
from .metrics import (bootstrap_weights, paired_differences, recall_metrics_and_hits,
                      sumr_replicates)
from .report import headline_rows, seed_summary

log = logging.getLogger("dasd_lib.evaluate")

RESULT_COLUMNS = ["setting", "method", "variant", "lang", "seed", "i2t_R1", "i2t_R5", "i2t_R10",
                  "t2i_R1", "t2i_R5", "t2i_R10", "SumR", "AR", "i2t_medr", "t2i_medr",
                  "i2t_meanr", "t2i_meanr", "n_images", "n_captions", "trainable_params", "split",
                  "i2t_protocol"]
COMPARISON_COLUMNS = ["setting", "variant", "lang", "method", "baseline", "diff_SumR", "ci_low",
                      "ci_high", "significant", "SumR", "SumR_baseline", "n_seeds", "n_images",
                      "n_boot", "split"]
SCORE_KEYS = ["setting", "method", "seed", "lang", "variant"]


@dataclass
class TargetEmbeddings:
    r_T: np.ndarray                # (N, d)
    f_sr: np.ndarray | None        # (N, d)
    f_sa: np.ndarray | None        # (N, w)
    w_z: np.ndarray | None = None  # (N, L, r, r) generated adapter matrices, when asked for


@torch.inference_mode()
def embed_target(model, backbone, texts: list[str], lang: str, *, device=None, batch_size: int = 512,
                 keep_w_z: bool = False, tokens: tuple | None = None,
                 end_only: bool = True) -> TargetEmbeddings:
    """Target-tower outputs for `texts` in one language. Captions are sorted by length so
    each batch pads only to its own longest caption; outputs come back in input order.
    `tokens`: backbone.tokenize_target(texts), when the caller already has it. With
    `end_only` the last block runs at the pooled token only (TargetTextModel.forward)."""
    device = device or next(backbone.parameters()).device
    model.to(device).eval()
    ids_all, mask_all = tokens if tokens is not None else backbone.tokenize_target(list(texts))
    lengths = mask_all.sum(1)
    order = torch.argsort(lengths, stable=True)
    parts: dict[str, list] = {"r_T": [], "f_sr": [], "f_sa": [], "w_z": []}
    for i in range(0, len(texts), batch_size):
        rows = order[i:i + batch_size]
        width = int(lengths[rows].max())
        out = model(ids_all[rows, :width].to(device), mask_all[rows, :width].to(device), lang,
                    end_only=end_only)
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


def score_captions_with_hits(text_emb, captions: pd.DataFrame, image_ids: list[str], image_emb,
                             kfold: int = 0, protocol: str = "standard") -> tuple[dict, np.ndarray]:
    """score_captions' metrics and the per-image hit counts of the same ranks
    (metrics.per_image_hits), indexed like `image_ids`: images without captions in this set
    are left out of the gallery and have zero counts, so hit arrays of every language and
    method line up for the paired bootstrap."""
    index = {i: n for n, i in enumerate(image_ids)}
    caption_image = np.array([index[i] for i in captions.image_id])
    keep = np.unique(caption_image)
    if len(keep) < len(image_ids):  # images without captions in this set cannot be retrieved
        # another language's extra images (e.g. COCO-CN's beside MSCOCO's) before or after
        # this set's are fine; a gap inside it would shift every later fold's boundary
        if kfold > 1 and keep.max() - keep.min() + 1 != len(keep):
            raise ValueError(f"{len(image_ids) - len(keep)} of {len(image_ids)} test images have no "
                             f"caption in this set, some between images that do; with run.kfold "
                             f"{kfold} leaving them out would shift the fold boundaries. Give every "
                             f"test image a caption in each language, or set run.kfold_langs "
                             f"without this language")
        remap = {old: new for new, old in enumerate(keep)}
        image_emb = np.asarray(image_emb)[keep]
        caption_image = np.array([remap[c] for c in caption_image])
    metrics, hits = recall_metrics_and_hits(similarity(text_emb, image_emb), caption_image, kfold,
                                            protocol)
    all_images = np.zeros((len(image_ids), *hits.shape[1:]))
    all_images[keep] = hits
    return metrics | {"n_images": int(len(keep)), "n_captions": int(len(captions))}, all_images


def score_captions(text_emb, captions: pd.DataFrame, image_ids: list[str], image_emb,
                   kfold: int = 0, protocol: str = "standard") -> dict:
    """Metrics for caption rows (with image_id) against the image set (in image_ids order)."""
    return score_captions_with_hits(text_emb, captions, image_ids, image_emb, kfold, protocol)[0]


def kfold_for(params: Params, lang: str) -> int:
    """run.kfold for languages in run.kfold_langs (all when it is empty), else 0: MSCOCO's
    ja (and en) test is 5 folds of 1K images, its zh test (COCO-CN) one 1K set."""
    langs = params.run.kfold_langs
    return params.run.kfold if not langs or lang in langs else 0


def compare_methods(scored: pd.DataFrame, hits: list[np.ndarray], *, compare_to: str = "dasd",
                    n_boot: int = 1000, seed: int = 0, split: str = "test") -> pd.DataFrame:
    """SumR differences `compare_to` - every other method, per setting and variant, per
    target language and averaged over them ('avg'), with paired-bootstrap 95 % intervals.

    scored: one row per hit array (columns setting, method, seed, lang, variant); hits:
    per_image_hits arrays over the same test images. Every replicate reweights the test
    images by one set of draws (bootstrap_weights(n_images, n_boot, seed)) shared by every
    method, language and seed. Columns: COMPARISON_COLUMNS. A setting without `compare_to`
    is skipped with a logged note."""
    if not hits:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    n_images = hits[0].shape[0]
    weights = np.vstack([np.ones((1, n_images)),  # row 0: the full test set
                         bootstrap_weights(n_images, max(0, int(n_boot)), seed)])
    sumr = pd.DataFrame(sumr_replicates(weights, hits).T,
                        index=pd.MultiIndex.from_frame(scored[SCORE_KEYS].astype({"seed": int})))
    parts = []
    for setting, in_setting in sumr.groupby(level="setting", sort=False):
        methods = list(dict.fromkeys(in_setting.index.get_level_values("method")))
        if compare_to not in methods:
            log.info("no comparisons in setting %s: run.compare_to=%s is not among its "
                     "methods %s", setting, compare_to, methods)
            continue
        for variant, part in in_setting.groupby(level="variant", sort=False):
            part = part.droplevel(["setting", "variant"]).reorder_levels(["method", "lang", "seed"])
            present = set(part.index.get_level_values("method"))
            for baseline in methods:
                if baseline == compare_to or baseline not in present or compare_to not in present:
                    continue
                parts.append(paired_differences(part, compare_to, baseline).assign(
                    setting=setting, variant=variant, method=compare_to, baseline=baseline))
    if not parts:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    out = pd.concat(parts, ignore_index=True).assign(n_images=n_images, n_boot=max(0, int(n_boot)),
                                                     split=split)
    return out[COMPARISON_COLUMNS]


def summary_table(results: pd.DataFrame, variant: str = "native") -> pd.DataFrame:
    """SumR per setting and method, averaged over target languages (the oracle: English):
    mean, sample std and 95 % t-interval over seeds (report.seed_summary, which the
    report's tables use too), with R@1 both ways and the trainable parameters."""
    summary = headline_rows(seed_summary(results, ["SumR", "t2i_R1", "i2t_R1"]))
    summary = summary[summary["variant"] == variant]
    return summary[["setting", "method", "SumR", "SumR_std", "SumR_ci_low", "SumR_ci_high",
                    "t2i_R1", "i2t_R1", "seeds", "trainable_params"]].reset_index(drop=True)
