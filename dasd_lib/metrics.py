"""Retrieval metrics on a caption x image similarity matrix.

Conventions (as in the CCR papers): an image retrieves text correctly at K when *any*
of its captions is among the top K captions; a caption retrieves its one image.
Ranks are 1-based; ties count against the ground truth (an item of another image scored
equal to the correct one is ranked before it), so a constant similarity matrix scores
R@K = 0 wherever K is below the number of candidates. An image's own other captions never
count against it.

Image-to-text protocols (run.i2t_protocol):
- standard: an image's rank is 1 + the number of *other images' captions* scoring at least
  its best own caption (clip_benchmark's recall agrees on continuous scores);
- official: the DASD authors' evaluation, which ranks the image's best own caption among
  every other image's *best* caption: 1 + the number of other images whose best caption
  scores at least as high. More lenient: another image's five captions take one place, not
  five. Text-to-image is the same in both.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

KS = (1, 5, 10)
RECALL_KEYS = [f"i2t_R{k}" for k in KS] + [f"t2i_R{k}" for k in KS]
I2T_PROTOCOLS = ("standard", "official")
CHUNK = 256  # images per block when ranking captions: memory is captions x CHUNK, not x images


def _ranks_of_truth(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """1-based rank of scores[i, truth[i]] in row i (ties count against the truth)."""
    target = scores[np.arange(len(truth)), truth][:, None]
    return (scores >= target).sum(axis=1)


def retrieval_ranks(sim: np.ndarray, caption_image: np.ndarray,
                    protocol: str = "standard") -> tuple[np.ndarray, np.ndarray]:
    """sim: (n_captions, n_images); caption_image[j] = index of caption j's image.

    Returns (t2i_ranks (n_captions,), i2t_ranks (n_images,)): the rank of the true image
    for each caption, and for each image the rank of its best caption under `protocol`
    (module docstring). Non-finite scores are refused."""
    sim = np.asarray(sim)
    if not np.issubdtype(sim.dtype, np.floating):
        sim = sim.astype(np.float64)
    caption_image = np.asarray(caption_image)
    n_captions, n_images = sim.shape
    if protocol not in I2T_PROTOCOLS:
        raise ValueError(f"run.i2t_protocol: '{protocol}' is not one of {', '.join(I2T_PROTOCOLS)}")
    if caption_image.shape != (n_captions,):
        raise ValueError(f"caption_image has shape {caption_image.shape}, expected ({n_captions},)")
    if n_captions == 0 or n_images == 0:
        raise ValueError("cannot compute retrieval metrics on an empty similarity matrix")
    if caption_image.min() < 0 or caption_image.max() >= n_images:
        raise ValueError("caption_image holds an image index outside the similarity matrix")
    if not np.isfinite(sim).all():
        bad = int((~np.isfinite(sim)).sum())
        raise ValueError(f"the similarity matrix holds {bad} non-finite scores (NaN or inf): the "
                         f"embeddings are broken (a diverged model?); nothing can be ranked")
    t2i = _ranks_of_truth(sim, caption_image)
    own = sim[np.arange(n_captions), caption_image]  # score of caption j with its image
    best_own = np.full(n_images, -np.inf, dtype=sim.dtype)
    np.maximum.at(best_own, caption_image, own)
    if np.isneginf(best_own).any():
        missing = int(np.isneginf(best_own).sum())
        raise ValueError(f"{missing} images have no caption; drop them before evaluating")
    i2t = np.empty(n_images, dtype=np.int64)
    if protocol == "official":  # captions grouped by image, for reduceat
        order = np.argsort(caption_image, kind="stable")
        starts = np.searchsorted(caption_image[order], np.arange(n_images))
    for lo in range(0, n_images, CHUNK):
        cols = np.arange(lo, min(lo + CHUNK, n_images))
        block = sim[:, cols]                                   # (n_captions, chunk)
        other = caption_image[:, None] != cols[None, :]        # captions of other images
        if protocol == "standard":
            i2t[cols] = 1 + ((block >= best_own[cols]) & other).sum(axis=0)
        else:  # each other image once, by its best caption for this query image
            best_per_image = np.maximum.reduceat(block[order], starts, axis=0)  # (n_images, chunk)
            best_per_image[cols, np.arange(len(cols))] = -np.inf  # the image itself
            i2t[cols] = 1 + (best_per_image >= best_own[cols]).sum(axis=0)
    return t2i, i2t


def _metrics_from_ranks(t2i: np.ndarray, i2t: np.ndarray) -> dict[str, float]:
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


def recall_metrics(sim: np.ndarray, caption_image: np.ndarray,
                   protocol: str = "standard") -> dict[str, float]:
    """R@1/5/10 both ways (percent), SumR, AR, median/mean ranks, and clip_benchmark keys."""
    return _metrics_from_ranks(*retrieval_ranks(sim, caption_image, protocol))


def kfold_ranks(sim: np.ndarray, caption_image: np.ndarray,
                folds: int, protocol: str = "standard") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks within `folds` consecutive blocks of images (MSCOCO 1K protocol), each caption
    kept with its image: a caption ranks only its fold's images, an image only its fold's
    captions. folds <= 1: one block, the whole set.

    Returns (t2i_ranks (n_captions,), i2t_ranks (n_images,), image_fold (n_images,))."""
    sim = np.asarray(sim)
    caption_image = np.asarray(caption_image)
    n_images = sim.shape[1]
    if folds <= 1:
        t2i, i2t = retrieval_ranks(sim, caption_image, protocol)
        return t2i, i2t, np.zeros(n_images, dtype=np.int64)
    if n_images % folds:
        raise ValueError(f"{n_images} images do not split into {folds} equal folds")
    size = n_images // folds
    t2i = np.empty(len(caption_image), dtype=np.int64)
    i2t = np.empty(n_images, dtype=np.int64)
    for f in range(folds):
        lo, hi = f * size, (f + 1) * size
        rows = np.flatnonzero((caption_image >= lo) & (caption_image < hi))
        t2i[rows], i2t[lo:hi] = retrieval_ranks(sim[np.ix_(rows, np.arange(lo, hi))],
                                                caption_image[rows] - lo, protocol)
    return t2i, i2t, np.arange(n_images) // size


def per_image_hits(t2i: np.ndarray, i2t: np.ndarray, caption_image: np.ndarray,
                   image_fold: np.ndarray | None = None) -> np.ndarray:
    """Per-image query and hit counts, from which recall on any reweighting of the images
    follows (the bootstrap): array (n_images, n_folds, 2, 1 + len(KS)), where [i, f] is
    zero unless image i is in fold f, [..., 0, :] is image-to-text (1 query per image,
    1 if its best caption rank is <= k) and [..., 1, :] text-to-image (the image's number
    of captions, how many of them rank it <= k); the last axis is (queries, hits@1, @5, @10)."""
    t2i, i2t, caption_image = (np.asarray(a) for a in (t2i, i2t, caption_image))
    n_images = len(i2t)
    image_fold = np.zeros(n_images, dtype=np.int64) if image_fold is None else np.asarray(image_fold)
    counts = np.zeros((n_images, 2, 1 + len(KS)))
    counts[:, 0, 0] = 1.0
    counts[:, 0, 1:] = i2t[:, None] <= np.array(KS)
    counts[:, 1, 0] = np.bincount(caption_image, minlength=n_images)
    for j, k in enumerate(KS, start=1):
        counts[:, 1, j] = np.bincount(caption_image, weights=t2i <= k, minlength=n_images)
    hits = np.zeros((n_images, int(image_fold.max()) + 1, *counts.shape[1:]))
    hits[np.arange(n_images), image_fold] = counts
    return hits


def recall_metrics_and_hits(sim: np.ndarray, caption_image: np.ndarray, folds: int = 0,
                            protocol: str = "standard") -> tuple[dict[str, float], np.ndarray]:
    """recall_metrics averaged over `folds` (see kfold_ranks; folds <= 1: the whole set) and
    the per_image_hits of the same ranks, which are computed once."""
    caption_image = np.asarray(caption_image)
    t2i, i2t, image_fold = kfold_ranks(sim, caption_image, folds, protocol)
    caption_fold = image_fold[caption_image]
    per_fold = [_metrics_from_ranks(t2i[caption_fold == f], i2t[image_fold == f])
                for f in range(int(image_fold.max()) + 1)]
    metrics = per_fold[0] if len(per_fold) == 1 else {
        k: float(np.mean([m[k] for m in per_fold])) for k in per_fold[0]}
    return metrics, per_image_hits(t2i, i2t, caption_image, image_fold)


def kfold_recall_metrics(sim: np.ndarray, caption_image: np.ndarray, folds: int) -> dict[str, float]:
    """Average of recall_metrics over `folds` consecutive blocks of images (MSCOCO 1K
    protocol: 5 folds of 1,000 images each), each caption kept with its image."""
    return recall_metrics_and_hits(sim, caption_image, folds)[0]


# ----------------------------------------------------------------------------- uncertainty

def draws_to_weights(draws: np.ndarray, n_images: int) -> np.ndarray:
    """(B, n) image indices drawn with replacement -> (B, n_images) counts per image."""
    draws = np.atleast_2d(np.asarray(draws, dtype=np.int64))
    rows = len(draws)
    flat = (draws + n_images * np.arange(rows)[:, None]).ravel()  # one bincount for all rows
    return np.bincount(flat, minlength=rows * n_images).reshape(rows, n_images).astype(np.float64)


def bootstrap_weights(n_images: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n_images) bootstrap counts: each replicate draws n_images images with
    replacement (numpy Generator seeded with `seed`)."""
    draws = np.random.default_rng(seed).integers(0, n_images, size=(n_boot, n_images))
    return draws_to_weights(draws, n_images)


def sumr_replicates(weights: np.ndarray, hits: list[np.ndarray]) -> np.ndarray:
    """SumR of every per_image_hits array in `hits` under every row of image weights:
    (B, n_images) weights -> (B, len(hits)). Recall@k = sum_i w_i hits_i(k) / sum_i w_i
    queries_i per direction and fold, SumR = 100 x the sum of the six recalls, averaged
    over folds (a fold that drew no image is left out). All hit arrays go through one
    matmul; weights and hits are whole numbers, so the sums are exact in float64 and the
    result does not depend on the BLAS summation order."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n_images = weights.shape[1]
    if not hits:
        return np.empty((len(weights), 0))
    totals = weights @ np.concatenate([h.reshape(n_images, -1) for h in hits], axis=1)
    out = np.empty((len(weights), len(hits)))
    start = 0
    for j, h in enumerate(hits):
        block = totals[:, start:start + h[0].size].reshape(len(weights), *h.shape[1:])
        start += h[0].size
        with np.errstate(invalid="ignore", divide="ignore"):
            fold_sumr = 100.0 * (block[..., 1:] / block[..., :1]).sum(axis=(-2, -1))  # (B, folds)
        drawn = np.isfinite(fold_sumr)
        out[:, j] = np.where(drawn, fold_sumr, 0.0).sum(axis=1) / np.maximum(drawn.sum(axis=1), 1)
        out[~drawn.any(axis=1), j] = np.nan
    return out


def percentile_interval(replicates: np.ndarray, level: float = 0.95,
                        axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval ((1 - level) / 2 and (1 + level) / 2 quantiles). NaN
    replicates (one that drew no image of a language, possible only on tiny test sets)
    are left out."""
    tail = 100.0 * (1.0 - level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN
        low, high = np.nanpercentile(replicates, [tail, 100.0 - tail], axis=axis)
    return low, high


def paired_differences(sumr: pd.DataFrame, method: str, baseline: str,
                       level: float = 0.95) -> pd.DataFrame:
    """Paired bootstrap of the SumR difference `method` - `baseline`.

    sumr: index (method, lang, seed); column 0 the full test set, columns 1..B the
    bootstrap replicates, the same image draws in every row (that is the pairing). Per
    replicate: each method's SumR is averaged over its seeds, differenced per language,
    and averaged over the languages both methods have ('avg'). Returns one row per 'avg'
    and language: diff_SumR (full set), ci_low, ci_high (percentile interval over the
    replicates; NaN without replicates), significant (the interval excludes 0), SumR and
    SumR_baseline (full set, mean over seeds), n_seeds (of `method`)."""
    over_seeds = sumr.groupby(level=["method", "lang"], sort=False).mean()
    ours, theirs = over_seeds.loc[method], over_seeds.loc[baseline]
    langs = [lang for lang in ours.index if lang in theirs.index]
    ours, theirs = ours.loc[langs], theirs.loc[langs]

    def with_average(frame: pd.DataFrame) -> pd.DataFrame:  # 'avg' row first, per replicate
        # NaN where a replicate drew no image of some language: averaged over the same languages
        return pd.concat([frame.mean(axis=0, skipna=False).to_frame("avg").T, frame])

    diff = with_average(ours - theirs)
    replicates = diff.to_numpy()[:, 1:]
    if replicates.shape[1]:
        low, high = percentile_interval(replicates, level, axis=1)
    else:
        low = high = np.full(len(diff), np.nan)
    return pd.DataFrame({
        "lang": diff.index, "diff_SumR": diff.iloc[:, 0].to_numpy(), "ci_low": low,
        "ci_high": high, "significant": (low > 0) | (high < 0),
        "SumR": with_average(ours).iloc[:, 0].to_numpy(),
        "SumR_baseline": with_average(theirs).iloc[:, 0].to_numpy(),
        "n_seeds": sumr.loc[method].index.get_level_values("seed").nunique()})


def t_halfwidth(std, n, level: float = 0.95):
    """Half-width of the Student-t interval of a mean of n values with sample std `std`
    (NaN for n < 2); works on scalars and arrays."""
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        quantile = stats.t.ppf(0.5 + level / 2.0, np.where(n > 1, n - 1, np.nan))
        return quantile * np.asarray(std, dtype=np.float64) / np.sqrt(n)


def seed_interval(values, level: float = 0.95) -> dict[str, float]:
    """Mean, sample std and the 95 % t-interval of per-seed values (NaN std and interval
    for one seed)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    mean = float(values.mean()) if values.size else float("nan")
    std = float(values.std(ddof=1)) if values.size > 1 else float("nan")
    half = float(t_halfwidth(std, values.size, level))
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half,
            "n": int(values.size)}


def chance_recall(n_images: int, captions_per_image: int) -> dict[str, float]:
    """Expected R@K (percent) of a random ranking, both ways: text-to-image k / n_images; an
    image's best caption ranks within k when one of its captions comes first among the
    top k of all captions (its own other captions never count against it)."""
    n_captions = n_images * captions_per_image
    out = {}
    for k in KS:
        out[f"t2i_R{k}"] = 100.0 * min(k, n_images) / max(1, n_images)
        p_none = 1.0
        for j in range(captions_per_image):
            p_none *= max(0.0, (n_captions - k - j) / max(1, n_captions - j))
        out[f"i2t_R{k}"] = 100.0 * (1.0 - p_none)
    return out


def chance_sumr(n_images: int, captions_per_image: int) -> float:
    """Expected SumR of a random ranking (for reporting how far above chance a model is)."""
    return sum(chance_recall(n_images, captions_per_image).values())
