"""Retrieval metrics on a caption x image similarity matrix.

Conventions (as in the CCR papers): an image retrieves text correctly at K when *any*
of its captions is among the top K captions; a caption retrieves its one image.
Ranks are 1-based; ties count against the ground truth (an item scored equal to the
correct one is ranked before it), so a constant similarity matrix scores at chance.
"""
from __future__ import annotations

import numpy as np

KS = (1, 5, 10)
RECALL_KEYS = [f"i2t_R{k}" for k in KS] + [f"t2i_R{k}" for k in KS]


def _ranks_of_truth(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """1-based rank of scores[i, truth[i]] in row i (ties count against the truth)."""
    target = scores[np.arange(len(truth)), truth][:, None]
    return (scores >= target).sum(axis=1)


def retrieval_ranks(sim: np.ndarray, caption_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sim: (n_captions, n_images); caption_image[j] = index of caption j's image.

    Returns (t2i_ranks (n_captions,), i2t_ranks (n_images,)): the rank of the true image
    for each caption, and for each image the best rank among its captions."""
    sim = np.asarray(sim, dtype=np.float64)
    caption_image = np.asarray(caption_image)
    n_captions, n_images = sim.shape
    if caption_image.shape != (n_captions,):
        raise ValueError(f"caption_image has shape {caption_image.shape}, expected ({n_captions},)")
    if n_captions == 0 or n_images == 0:
        raise ValueError("cannot compute retrieval metrics on an empty similarity matrix")
    if caption_image.min() < 0 or caption_image.max() >= n_images:
        raise ValueError("caption_image holds an image index outside the similarity matrix")
    t2i = _ranks_of_truth(sim, caption_image)
    # rank of every caption in every image's list; keep each image's best own caption
    sim_t = sim.T  # (n_images, n_captions)
    own = sim_t[caption_image, np.arange(n_captions)]  # score of caption j with its image
    caption_rank = (sim_t[caption_image] >= own[:, None]).sum(axis=1)  # (n_captions,)
    i2t = np.full(n_images, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(i2t, caption_image, caption_rank)
    if (i2t == np.iinfo(np.int64).max).any():
        missing = int((i2t == np.iinfo(np.int64).max).sum())
        raise ValueError(f"{missing} images have no caption; drop them before evaluating")
    return t2i, i2t


def recall_metrics(sim: np.ndarray, caption_image: np.ndarray) -> dict[str, float]:
    """R@1/5/10 both ways (percent), SumR, AR, median/mean ranks, and clip_benchmark keys."""
    t2i, i2t = retrieval_ranks(sim, caption_image)
    out: dict[str, float] = {}
    for k in KS:
        out[f"i2t_R{k}"] = 100.0 * float((i2t <= k).mean())
        out[f"t2i_R{k}"] = 100.0 * float((t2i <= k).mean())
    out["SumR"] = sum(out[k] for k in RECALL_KEYS)
    out["AR"] = out["SumR"] / len(RECALL_KEYS)
    out["i2t_medr"] = float(np.median(i2t))
    out["t2i_medr"] = float(np.median(t2i))
    out["i2t_meanr"] = float(i2t.mean())
    out["t2i_meanr"] = float(t2i.mean())
    for k in KS:  # clip_benchmark's names, as fractions
        out[f"image_retrieval_recall@{k}"] = out[f"t2i_R{k}"] / 100.0
        out[f"text_retrieval_recall@{k}"] = out[f"i2t_R{k}"] / 100.0
    return out


def kfold_recall_metrics(sim: np.ndarray, caption_image: np.ndarray, folds: int) -> dict[str, float]:
    """Average of recall_metrics over `folds` consecutive blocks of images (MSCOCO 1K
    protocol: 5 folds of 1,000 images each), each caption kept with its image."""
    n_images = sim.shape[1]
    if folds <= 1:
        return recall_metrics(sim, caption_image)
    if n_images % folds:
        raise ValueError(f"{n_images} images do not split into {folds} equal folds")
    size = n_images // folds
    results = []
    for f in range(folds):
        lo, hi = f * size, (f + 1) * size
        rows = np.flatnonzero((caption_image >= lo) & (caption_image < hi))
        results.append(recall_metrics(sim[np.ix_(rows, np.arange(lo, hi))], caption_image[rows] - lo))
    return {k: float(np.mean([r[k] for r in results])) for k in results[0]}


def chance_sumr(n_images: int, captions_per_image: int) -> float:
    """Expected SumR of a random ranking (for reporting how far above chance a model is)."""
    n_captions = n_images * captions_per_image
    total = 0.0
    for k in KS:
        total += 100.0 * min(k, n_images) / n_images  # t2i
        # i2t: probability that at least one of c own captions is in the top k of n_captions
        p_none = 1.0
        for j in range(captions_per_image):
            p_none *= max(0.0, (n_captions - k - j) / (n_captions - j))
        total += 100.0 * (1.0 - p_none)
    return total
