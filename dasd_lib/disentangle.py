"""Notebook 05's disentanglement analysis of the caption features (explorer.collect_features):
2-D UMAP of f_sr, f_sa and r_T coloured by language, content and style; linear probes of
content and style (probes.csv); how the generated adapter matrices W_z vary with style
vs with content. Each with its figure.

Figure text stays ASCII/Latin (see dasd_lib.plots).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .config import ExploreConfig, Params
from .explorer import CaptionFeatures
from .plots import _empty, _palette
from .storage import atomic_csv

FEATURES = ("f_sr", "f_sa", "r_T")
PROBES_COLUMNS = ["method", "feature", "target", "kind", "accuracy", "chance", "n_samples"]
COLOUR_BY = ("lang", "content", "style")


# ----------------------------------------------------------------------------- UMAP

def umap_embed(X: np.ndarray, cfg: ExploreConfig | None = None, seed: int = 0) -> np.ndarray:
    """2-D UMAP of the rows of X (cosine metric, fixed random_state: the same input gives
    the same picture)."""
    import umap
    cfg = cfg or ExploreConfig()
    X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    n_neighbors = int(max(2, min(cfg.umap_neighbors, len(X) - 1)))
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=cfg.umap_min_dist, metric="cosine",
                        random_state=seed, n_jobs=1, init="spectral" if len(X) > n_neighbors + 2
                        else "random")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample / spectral-init notices
        return reducer.fit_transform(X)


def umap_coords(features: CaptionFeatures, method: str, cfg: ExploreConfig | None = None,
                names: Sequence[str] = FEATURES, seed: int = 0, lang: str | None = None
                ) -> dict[str, np.ndarray]:
    """UMAP coordinates of each of `names` the method has; `lang`: that language's
    captions only (rows where features.captions.lang == lang, in order)."""
    rows = (features.captions["lang"] == lang).to_numpy() if lang else slice(None)
    return {name: umap_embed(features.get(method, name)[rows], cfg, seed)
            for name in names if features.has(method, name)}


def _scatter(ax, xy: np.ndarray, labels: pd.Series, title: str, max_legend: int = 32) -> None:
    labels = labels.astype(str).to_numpy()
    order = pd.Series(labels).value_counts().index.tolist()
    colours = dict(zip(order, _palette(len(order))))
    for value in order:
        sel = labels == value
        ax.scatter(xy[sel, 0], xy[sel, 1], s=7, color=colours[value], alpha=0.8, linewidths=0,
                   label=value)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(order) <= max_legend:
        ax.legend(fontsize=6 if len(order) <= 12 else 5.5, markerscale=1.5, loc="center left",
                  bbox_to_anchor=(1.0, 0.5), frameon=False, ncol=1 if len(order) <= 12 else 2,
                  handletextpad=0.1, columnspacing=0.6)
    else:
        ax.text(0.01, 0.01, f"{len(order)} classes (legend omitted)", fontsize=6,
                transform=ax.transAxes)


def plot_umap_grid(coords: dict[str, np.ndarray], captions: pd.DataFrame, method: str = "",
                   colour_by: Sequence[str] = COLOUR_BY):
    """Rows: features (f_sr, f_sa, r_T); columns: colouring by language, content label and
    style id. Disentangled: f_sr groups by content across languages and styles; f_sa by
    style (and language) and not by content."""
    import matplotlib.pyplot as plt
    names = list(coords)
    fig, axes = plt.subplots(max(1, len(names)), len(colour_by),
                             figsize=(4.6 * len(colour_by), 3.6 * max(1, len(names))), squeeze=False)
    if not names:
        _empty(axes[0][0], f"{method}: no features to show")
    for r, name in enumerate(names):
        for c, key in enumerate(colour_by):
            _scatter(axes[r][c], coords[name], captions[key], f"{name} · by {key}")
    fig.suptitle(f"UMAP of test-caption features ({method})" if method else "UMAP", fontsize=11)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- probes

def _split(labels: np.ndarray, seed: int, test_frac: float, groups: np.ndarray | None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Train/test indices: held-out groups (e.g. images) when given, stratified by label
    when every class has two members; otherwise a plain random split."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split
    n = len(labels)
    idx = np.arange(n)
    _, counts = np.unique(labels, return_counts=True)
    n_test = max(1, int(round(test_frac * n)))
    if groups is not None and len(np.unique(groups)) >= 2:
        n_splits = int(np.clip(round(1 / test_frac), 2, len(np.unique(groups))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # classes smaller than n_splits: best effort
            splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            train, test = next(splitter.split(idx, labels, groups))
        return train, test
    stratify = labels if counts.min() >= 2 and n_test >= len(counts) and n - n_test >= len(counts) else None
    return train_test_split(idx, test_size=n_test, random_state=seed, stratify=stratify)


def probe_accuracy(features: np.ndarray, labels: Sequence, seed: int = 0, *,
                   test_frac: float = 0.3, groups: Sequence | None = None) -> tuple[float, float]:
    """Held-out accuracy of a linear probe (standardised features, multinomial logistic
    regression) predicting `labels` from `features`, and chance = the majority-class rate
    of the held-out part. `groups` (e.g. image ids) keeps each group on one side."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    X = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    y = np.asarray([str(v) for v in labels])
    if len(X) != len(y):
        raise ValueError(f"{len(X)} feature rows but {len(y)} labels")
    if len(y) < 4:
        raise ValueError(f"a probe needs at least 4 samples, got {len(y)}")
    train, test = _split(y, seed, test_frac, None if groups is None else np.asarray(groups))
    _, test_counts = np.unique(y[test], return_counts=True)
    chance = float(test_counts.max() / len(test))
    classes = np.unique(y[train])
    if len(classes) == 1:  # nothing to learn: the probe predicts the only class it saw
        return float(np.mean(y[test] == classes[0])), chance
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    # one BLAS thread: these fits are tiny, and a thread pool per fit costs more than it
    # saves (10x slower on a busy 2-core machine)
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")  # convergence notices on tiny smoke samples
        clf.fit(X[train], y[train])
    return float(np.mean(clf.predict(X[test]) == y[test])), chance


def probe_table(params: Params, features: CaptionFeatures, run_dir: str | Path | None = None,
                methods: Sequence[str] | None = None, seed: int | None = None) -> pd.DataFrame:
    """Linear-probe accuracy of content and style from f_sr, f_sa and r_T for each method.

    Content targets (explore.probe_content, columns of data.content_labels) are probed on
    all languages together with held-out images; style targets (explore.probe_style:
    'style' id, 'variant' native vs MT-style) within each language, held-out images too,
    then averaged over languages, so knowing the language alone does not count as
    knowing the style. Written to run_dir/probes.csv when run_dir is given."""
    cfg = params.explore
    seed = params.run.seeds[0] if seed is None else seed
    caps = features.captions
    groups = caps["image_id"].to_numpy()
    rows = []
    if methods is None:
        methods = [m for m in cfg.probe_methods if m in features.arrays]
    for method in methods:
        for name in FEATURES:
            if not features.has(method, name):
                continue
            X = features.get(method, name)
            for target in cfg.probe_content:
                if target not in caps or caps[target].astype(str).eq("").all():
                    continue
                acc, chance = probe_accuracy(X, caps[target].to_numpy(), seed,
                                             test_frac=cfg.probe_test_frac, groups=groups)
                rows.append({"method": method, "feature": name, "target": target,
                             "kind": "content", "accuracy": acc, "chance": chance,
                             "n_samples": len(caps)})
            for target in cfg.probe_style:
                if target not in caps:
                    continue
                accs, chances = [], []
                for _, part in caps.groupby("lang", sort=False):
                    if part[target].nunique() < 2 or len(part) < 4:
                        continue
                    idx = part.index.to_numpy()
                    acc, chance = probe_accuracy(X[idx], part[target].to_numpy(), seed,
                                                 test_frac=cfg.probe_test_frac,
                                                 groups=groups[idx])
                    accs.append(acc)
                    chances.append(chance)
                if accs:
                    rows.append({"method": method, "feature": name, "target": target,
                                 "kind": "style", "accuracy": float(np.mean(accs)),
                                 "chance": float(np.mean(chances)), "n_samples": len(caps)})
    frame = pd.DataFrame(rows, columns=PROBES_COLUMNS)
    if run_dir is not None:
        atomic_csv(frame, Path(run_dir) / "probes.csv")
    return frame


def probe_pivot(probes: pd.DataFrame) -> pd.DataFrame:
    """probes.csv as method x feature rows and target columns (accuracy; chance in brackets)."""
    if probes.empty:
        return pd.DataFrame()
    cell = probes.assign(value=[f"{a:.2f} ({c:.2f})" for a, c in zip(probes["accuracy"],
                                                                       probes["chance"])])
    table = cell.pivot_table(index=["method", "feature"], columns="target", values="value",
                             aggfunc="first", sort=False)
    order = list(dict.fromkeys(probes["target"]))
    return table[order].reset_index().rename_axis(None, axis=1)


def plot_probes(probes: pd.DataFrame):
    """Probe accuracy (bars) against chance (black ticks) per target; one panel per method,
    bars grouped by feature. Disentangled: content high from f_sr and low from f_sa, style
    the other way round."""
    import matplotlib.pyplot as plt
    methods = list(dict.fromkeys(probes["method"])) if not probes.empty else []
    fig, axes = plt.subplots(max(1, len(methods)), 1, figsize=(7.5, 2.8 * max(1, len(methods))),
                             squeeze=False)
    if not methods:
        _empty(axes[0][0], "no probes: no explored method has features")
        return fig
    for ax, method in zip(axes[:, 0], methods):
        part = probes[probes["method"] == method]
        targets = list(dict.fromkeys(part["target"]))
        feats = list(dict.fromkeys(part["feature"]))
        width = 0.8 / len(feats)
        x = np.arange(len(targets))
        for k, (feat, colour) in enumerate(zip(feats, _palette(len(feats)))):
            sub = part[part["feature"] == feat].set_index("target").reindex(targets)
            pos = x + (k - (len(feats) - 1) / 2) * width
            ax.bar(pos, sub["accuracy"], width, color=colour, label=feat)
            ax.scatter(pos, sub["chance"], marker="_", s=120, color="black", zorder=3,
                       label="chance" if k == 0 else None)
        kinds = part.drop_duplicates("target").set_index("target")["kind"].reindex(targets)
        ax.set_xticks(x, [f"{t}\n({k})" for t, k in zip(targets, kinds)], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("held-out accuracy")
        ax.set_title(f"{method}: linear probes", fontsize=10)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- W_z

WZ_SAME_CONTENT = "same content, other style"
WZ_SAME_STYLE = "same style, other content"


def _pairs(mask_fn, n: int, max_pairs: int, rng) -> np.ndarray:
    """Up to max_pairs index pairs (i < j) of n rows satisfying mask_fn(i_rows, j_rows)."""
    i, j = np.triu_indices(n, k=1)
    keep = mask_fn(i, j)
    i, j = i[keep], j[keep]
    if len(i) > max_pairs:
        pick = rng.choice(len(i), max_pairs, replace=False)
        i, j = i[pick], j[pick]
    return np.stack([i, j], axis=1)


def wz_variation(w_z: np.ndarray, content: Sequence, style: Sequence, group: Sequence | None = None,
                 *, max_pairs: int = 5000, seed: int = 0) -> pd.DataFrame:
    """How much the generated matrices move with style and with content, per layer.

    w_z: (N, L, r, r). Pairs of captions in the same `group` (language): 'same content,
    other style' (same content key, e.g. image id; different style) and 'same style,
    other content'. Per layer and pair kind: mean over pairs of the mean |W_a - W_b|
    entry, and `relative` = that divided by the layer's mean |W| entry."""
    W = np.asarray(w_z, dtype=np.float64)
    if W.ndim != 4:
        raise ValueError(f"w_z must be (N, L, r, r), got shape {W.shape}")
    content = np.asarray([str(c) for c in content])
    style = np.asarray([str(s) for s in style])
    group = np.zeros(len(W), dtype=int) if group is None else np.asarray([str(g) for g in group])
    if not (len(content) == len(style) == len(group) == len(W)):
        raise ValueError("w_z, content, style and group must have the same length")
    rng = np.random.default_rng(seed)
    same_g = lambda i, j: group[i] == group[j]  # noqa: E731
    kinds = {
        WZ_SAME_CONTENT: lambda i, j: same_g(i, j) & (content[i] == content[j]) & (style[i] != style[j]),
        WZ_SAME_STYLE: lambda i, j: same_g(i, j) & (style[i] == style[j]) & (content[i] != content[j]),
    }
    scale = np.abs(W).mean(axis=(0, 2, 3))  # (L,)
    rows = []
    for kind, fn in kinds.items():
        pairs = _pairs(fn, len(W), max_pairs, rng)
        for layer in range(W.shape[1]):
            if len(pairs):
                diff = np.abs(W[pairs[:, 0], layer] - W[pairs[:, 1], layer]).mean(axis=(1, 2))
                value = float(diff.mean())
            else:
                value = float("nan")
            rows.append({"layer": layer, "pair": kind, "mean_abs_diff": value,
                         "relative": value / scale[layer] if scale[layer] > 0 else float("nan"),
                         "n_pairs": int(len(pairs))})
    return pd.DataFrame(rows)


def wz_table(features: CaptionFeatures, methods: Sequence[str] | None = None,
             max_pairs: int = 5000, seed: int = 0) -> pd.DataFrame:
    """wz_variation for every method with generated matrices (content key: image id;
    pairs within one language)."""
    caps = features.captions
    frames = []
    for method in methods or list(features.arrays):
        if not features.has(method, "w_z"):
            continue
        frame = wz_variation(features.get(method, "w_z"), caps["image_id"], caps["style"],
                             caps["lang"], max_pairs=max_pairs, seed=seed)
        frames.append(frame.assign(method=method))
    if not frames:
        return pd.DataFrame(columns=["method", "layer", "pair", "mean_abs_diff", "relative", "n_pairs"])
    out = pd.concat(frames, ignore_index=True)
    return out[["method", "layer", "pair", "mean_abs_diff", "relative", "n_pairs"]]


def plot_wz_variation(table: pd.DataFrame):
    """Grouped bars per layer: relative change of W_z between captions that share content
    and differ in style, and between captions that share style and differ in content."""
    import matplotlib.pyplot as plt
    methods = list(dict.fromkeys(table["method"])) if not table.empty else []
    fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(3.6 * max(1, len(methods)), 3.2),
                             squeeze=False, sharey=True)
    if not methods:
        _empty(axes[0][0], "no method with generated W_z")
        return fig
    for ax, method in zip(axes[0], methods):
        part = table[table["method"] == method]
        layers = sorted(part["layer"].unique())
        x = np.arange(len(layers))
        for k, (kind, colour) in enumerate(zip((WZ_SAME_CONTENT, WZ_SAME_STYLE), ("C1", "C0"))):
            sub = part[part["pair"] == kind].set_index("layer").reindex(layers)
            ax.bar(x + (k - 0.5) * 0.4, sub["relative"], 0.4, color=colour, label=kind)
        ax.set_xticks(x, [f"layer {i}" for i in layers], fontsize=8)
        ax.set_title(method, fontsize=10)
    axes[0][0].set_ylabel("mean |W_a - W_b| / mean |W|")
    axes[0][-1].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False)
    fig.suptitle("Generated adapter matrices W_z: change with style vs with content", fontsize=10)
    fig.tight_layout()
    return fig


def wz_examples(features: CaptionFeatures, method: str, lang: str | None = None) -> pd.DataFrame:
    """Three captions of one language for the heatmaps: A (native) and B (MT-style, when
    there is one) describe the same image in different styles, C another image in A's
    style. Rows in that order (label A/B/C; `row` indexes the feature arrays)."""
    caps = features.captions.reset_index(drop=True)
    langs = [lang] if lang else list(dict.fromkeys(caps["lang"]))
    for lg in langs:
        part = caps[caps["lang"] == lg]
        for image_id, same in part.groupby("image_id", sort=True):
            same = same.sort_values("variant", key=lambda v: v != "native", kind="stable")
            a = same.index[0]
            others = same[same["style"] != caps.at[a, "style"]]
            if others.empty:
                continue
            mt = others[others["variant"] != caps.at[a, "variant"]]
            b = (mt if not mt.empty else others).index[0]
            other = part[(part["style"] == caps.at[a, "style"]) & (part["image_id"] != image_id)]
            if other.empty:
                continue
            picked = caps.loc[[a, b, other.index[0]]].copy()
            picked.insert(0, "label", ["A", "B", "C"])
            picked["row"] = [a, b, other.index[0]]
            return picked[["label", "row", "lang", "image_id", "variant", "style", "caption"]]
    return pd.DataFrame(columns=["label", "row", "lang", "image_id", "variant", "style", "caption"])


def plot_wz_examples(features: CaptionFeatures, method: str, examples: pd.DataFrame,
                     layer: int = 0):
    """Heatmaps of W_z (one layer) for captions A, B, C of `wz_examples`, then |A - B|
    (style changed) and |A - C| (content changed) on one colour scale."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 5, figsize=(14, 3.4), layout="constrained")
    if examples.empty or not features.has(method, "w_z"):
        for ax in axes:
            ax.axis("off")
        _empty(axes[2], "no caption triple for the W_z view")
        return fig
    W = features.get(method, "w_z")[examples["row"].to_numpy(), layer]  # (3, r, r)
    lim = float(np.abs(W).max()) or 1.0
    titles = [f"{r.label}: {r.image_id}\n{r.style}" for r in examples.itertuples()]
    for ax, mat, title in zip(axes[:3], W, titles):
        im = ax.imshow(mat, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(title, fontsize=8)
    diffs = [np.abs(W[0] - W[1]), np.abs(W[0] - W[2])]
    dlim = float(max(d.max() for d in diffs)) or 1.0
    for ax, d, title in zip(axes[3:], diffs, ["|A - B| (style changed)", "|A - C| (content changed)"]):
        dim = ax.imshow(d, cmap="magma", vmin=0, vmax=dlim)
        ax.set_title(f"{title}\nmean {d.mean():.3f}", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes[:3]), fraction=0.02, pad=0.01)
    fig.colorbar(dim, ax=list(axes[3:]), fraction=0.03, pad=0.01)
    fig.suptitle(f"{method}: generated W_z of layer {layer} ({examples['lang'].iloc[0]})", fontsize=10)
    return fig
