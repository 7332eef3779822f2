"""What the notebooks show: figures saved into the run folder, the embedding exploration of
notebook 05 (features, UMAP, linear probes, the generated W_z matrices, a retrieval
explorer) and the plots of notebooks 00-04. Notebooks hold no `def`, so every helper a
notebook needs lives here.

Figure text stays ASCII/Latin: matplotlib's default font has no CJK glyphs, so captions
in Japanese or Chinese go into tables, never into figures.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .config import ExploreConfig, Params, SOURCE_LANG

FEATURES = ("f_sr", "f_sa", "r_T")
PROBES_COLUMNS = ["method", "feature", "target", "kind", "accuracy", "chance", "n_samples"]
COLOUR_BY = ("lang", "content", "style")
VARIANTS = ("native", "mt_clean")


# ----------------------------------------------------------------------------- figures

def save_figure(fig, run_dir: str | Path, name: str, dpi: int = 120) -> Path:
    """Save `fig` as run_dir/figures/<name>.png (the report collects these) and return the
    path. The figure stays open, so the notebook still shows it inline."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "figure"
    out = Path(run_dir) / "figures" / f"{stem}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight", facecolor="white")
    return out


def _palette(n: int) -> list:
    """n categorical colours: tab10, tab20, then tab20 + tab20b + tab20c (60 distinct)."""
    import matplotlib.pyplot as plt
    if n <= 20:
        cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
        return [cmap(i % cmap.N) for i in range(n)]
    colours = [plt.get_cmap(name)(i) for name in ("tab20", "tab20b", "tab20c") for i in range(20)]
    return [colours[i % len(colours)] for i in range(n)]


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, color="0.4",
            transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def config_frame(cfg) -> pd.DataFrame:
    """A dataclass config (e.g. params.data) as a two-column table for display."""
    import dataclasses
    return pd.DataFrame([{"key": f.name, "value": str(getattr(cfg, f.name))}
                         for f in dataclasses.fields(cfg)])


def disk_usage(path: str | Path) -> int:
    """Bytes of all files under `path` (0 when it does not exist)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _has_cjk(text: str) -> bool:
    return any(ord(ch) >= 0x2E80 for ch in text)


def figure_text(text: str, width: int = 90) -> str:
    """`text` for a figure title: shortened, and replaced by a pointer to the table when it
    holds CJK characters (the default font has no glyphs for them)."""
    if _has_cjk(text):
        return "(caption in the table above)"
    return text if len(text) <= width else text[:width - 1] + "…"


# ----------------------------------------------------------------------------- notebook 00

def style_table(table: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Style shares (%) per language x style for one split, variants side by side, from
    data.style_frequencies: MT-style and native captions use disjoint style sets."""
    from .data import style_frequencies
    freq = style_frequencies(table)
    freq = freq[freq["split"] == split]
    if freq.empty:
        return pd.DataFrame()
    wide = freq.pivot_table(index=["variant", "style"], columns="lang", values="share",
                            aggfunc="sum", fill_value=0.0, sort=True)
    langs = [lang for lang in [SOURCE_LANG, "de", "fr", "cs", "ja", "zh"] if lang in wide.columns]
    return (wide[langs] * 100).round(1).reset_index().rename_axis(None, axis=1)


def _style_family(style: str) -> str:
    return style if style.startswith("mt:") or ":" not in style else style.split(":", 1)[1]


def plot_style_shares(table: pd.DataFrame):
    """Stacked bars: share of each style per (split, variant, language). MT-style captions
    (train 'mt', test 'mt_clean') use the translator's styles, native ones their own."""
    import matplotlib.pyplot as plt
    from .data import style_frequencies
    freq = style_frequencies(table[table["lang"] != SOURCE_LANG])
    freq = freq.assign(group=freq["split"] + " " + freq["variant"])
    groups = [g for g in ("train mt", "test mt_clean", "test native") if g in set(freq["group"])]
    if not groups:
        groups = sorted(freq["group"].unique())
    families = sorted({_style_family(s) for s in freq["style"]}, key=lambda f: (f.startswith("mt:"), f))
    colours = dict(zip(families, _palette(len(families))))
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(4.2 * max(1, len(groups)), 3.6),
                             squeeze=False, sharey=True)
    for ax, group in zip(axes[0], groups):
        part = freq[freq["group"] == group]
        wide = part.pivot_table(index="lang", columns="style", values="share", aggfunc="sum",
                                fill_value=0.0)
        wide = wide.reindex([lang for lang in ["de", "fr", "cs", "ja", "zh"] if lang in wide.index]
                            + [lang for lang in wide.index if lang not in ["de", "fr", "cs", "ja", "zh"]])
        # native styles are per language ('de:befindet'): bars are per language already, so
        # they are labelled by the part after ':'; MT styles keep 'mt:' (shared by all)
        family = wide.T.groupby(_style_family).sum().T
        bottom = np.zeros(len(family))
        for style in family.columns:
            ax.bar(family.index, family[style].to_numpy() * 100, bottom=bottom,
                   color=colours[style], label=style, edgecolor="white", linewidth=0.5)
            bottom += family[style].to_numpy() * 100
        ax.set_title(group, fontsize=10)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3,
                  frameon=False)
    axes[0][0].set_ylabel("share of captions (%)")
    fig.suptitle("Expression styles of target-language captions by split and variant "
                 "(native style ids without their language prefix)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_coverage(coverage: pd.DataFrame):
    """Bars of content-word and all-word coverage of native test captions by training text."""
    import matplotlib.pyplot as plt
    order = {lang: k for k, lang in enumerate([SOURCE_LANG, "de", "fr", "cs", "ja", "zh"])}
    coverage = coverage.sort_values("lang", key=lambda s: s.map(order).fillna(99), kind="stable")
    fig, ax = plt.subplots(figsize=(6, 3))
    x = np.arange(len(coverage))
    ax.bar(x - 0.2, coverage["content_coverage"] * 100, 0.4, label="content word forms")
    ax.bar(x + 0.2, coverage["word_coverage"] * 100, 0.4, label="all word forms")
    ax.set_xticks(x, coverage["lang"])
    ax.set_ylim(0, 105)
    ax.set_ylabel("covered by training text (%)")
    ax.set_title("Token coverage of native test captions", fontsize=10)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def plot_split_counts(stats: pd.DataFrame):
    """Captions per split, language and variant (from data.caption_stats)."""
    import matplotlib.pyplot as plt
    splits = [s for s in ("train", "val", "test") if s in set(stats["split"])]
    fig, axes = plt.subplots(1, max(1, len(splits)), figsize=(3.6 * max(1, len(splits)), 3),
                             squeeze=False)
    for ax, split in zip(axes[0], splits):
        wide = stats[stats["split"] == split].pivot_table(index="lang", columns="variant",
                                                          values="captions", fill_value=0)
        wide = wide.reindex([lang for lang in ["en", "de", "fr", "cs", "ja", "zh"]
                             if lang in wide.index])
        bottom = np.zeros(len(wide))
        for colour, variant in zip(_palette(len(wide.columns)), wide.columns):
            ax.bar(wide.index, wide[variant], bottom=bottom, label=variant, color=colour)
            bottom += wide[variant].to_numpy()
        ax.set_title(split, fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3,
                  frameon=False)
    axes[0][0].set_ylabel("captions")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- notebooks 01-03

def _smooth(values: pd.Series, window: int) -> pd.Series:
    return values.rolling(window, min_periods=1).mean() if window > 1 else values


def plot_vlp_losses(losses: pd.DataFrame):
    """The VLP's contrastive loss per step (raw and smoothed)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3))
    if losses is None or losses.empty or "total" not in losses:
        _empty(ax, "no VLP losses recorded\n(the backbone was loaded, not trained)")
        return fig
    window = max(1, len(losses) // 40)
    ax.plot(losses["step"], losses["total"], color="0.75", lw=0.8, label="per step")
    ax.plot(losses["step"], _smooth(losses["total"], window), color="C0",
            label=f"mean of {window}" if window > 1 else "loss")
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE")
    ax.set_title("Source VLP training loss", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def english_table(metrics: dict) -> pd.DataFrame:
    """English retrieval of the frozen VLP (notebook 01): R@K both ways and SumR beside
    the expected value of a random ranking."""
    n_images = int(metrics.get("n_images", 0))
    n_captions = int(metrics.get("n_captions", 0))
    cpi = max(1, round(n_captions / max(1, n_images)))
    rows = []
    for direction, label in (("i2t", "image -> text"), ("t2i", "text -> image")):
        for k in (1, 5, 10):
            if direction == "t2i":
                chance = 100.0 * min(k, n_images) / max(1, n_images)
            else:  # at least one of the image's cpi captions among the top k of n_captions
                p_none = np.prod([max(0.0, (n_captions - k - j) / max(1, n_captions - j))
                                  for j in range(cpi)])
                chance = 100.0 * (1.0 - p_none)
            rows.append({"metric": f"{label} R@{k}", "VLP": metrics.get(f"{direction}_R{k}"),
                         "chance": chance})
    rows.append({"metric": "SumR", "VLP": metrics.get("SumR"),
                 "chance": metrics.get("chance_SumR", sum(r["chance"] for r in rows))})
    frame = pd.DataFrame(rows)
    frame[["VLP", "chance"]] = frame[["VLP", "chance"]].astype(float).round(1)
    return frame


def final_losses(losses: pd.DataFrame, last: int = 20) -> pd.DataFrame:
    """Each loss term averaged over the last `last` steps, per setting and method (mean
    over seeds): the numbers behind the curves' end points."""
    if losses is None or losses.empty:
        return pd.DataFrame()
    terms = loss_terms(losses)
    tail = losses[losses["step"] > losses.groupby(["setting", "method", "seed"])["step"]
                  .transform("max") - last]
    out = tail.groupby(["setting", "method"], sort=False)[terms].mean()
    return out.round(4).reset_index()


def loss_terms(losses: pd.DataFrame) -> list[str]:
    """The loss columns a stage logged, in a fixed order (d_* are the discriminator's)."""
    order = ["total", "infonce", "mse", "sc", "adv", "d_loss", "d_acc"]
    have = [c for c in losses.columns if c not in ("step", "lr", "setting", "method", "seed")]
    return [c for c in order if c in have] + [c for c in have if c not in order]


def plot_stage_losses(losses: pd.DataFrame, stage: str, terms: Sequence[str] | None = None):
    """One panel per loss term (rows: settings), one line per method (mean over seeds,
    smoothed). Terms a method does not use are simply absent for it."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    if losses is None or losses.empty:
        fig, ax = plt.subplots(figsize=(5, 2.5))
        _empty(ax, f"no {stage} losses in this run")
        return fig
    terms = [t for t in (terms or loss_terms(losses)) if not t.startswith("d_")]
    settings = list(dict.fromkeys(losses["setting"]))
    methods = list(dict.fromkeys(losses["method"]))
    colours = dict(zip(methods, _palette(len(methods))))
    # at most 3 panels a row, so the figure stays readable at page width; each setting
    # starts a new row
    ncols = min(3, len(terms))
    per_setting = -(-len(terms) // ncols)
    fig, axes = plt.subplots(per_setting * len(settings), ncols,
                             figsize=(3.6 * ncols, 2.5 * per_setting * len(settings)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")  # switched back on for panels that hold a term
    n_steps = int(losses["step"].max()) + 1
    window = max(1, n_steps // 30)
    for r, setting in enumerate(settings):
        part = losses[losses["setting"] == setting]
        for c, term in enumerate(terms):
            ax = axes[r * per_setting + c // ncols][c % ncols]
            ax.axis("on")
            for method in methods:
                m = part[part["method"] == method]
                if m.empty or term not in m or m[term].isna().all():
                    continue
                curve = m.groupby("step")[term].mean()
                ax.plot(curve.index, _smooth(curve, window), color=colours[method], lw=1.2,
                        label=method)
            ax.set_title(f"{setting} · {term}", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(5, len(handles)),
               fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.02))
    how = f"running mean over {window} steps" if window > 1 else "per step"
    fig.suptitle(f"{stage.upper()} training losses (weighted terms, {how}, mean over seeds)",
                 fontsize=10)
    rows = -(-len(handles) // 5)
    fig.tight_layout(rect=(0, min(0.3, 0.35 * rows / fig.get_figheight()), 1, 1))
    return fig


def plot_discriminator(losses: pd.DataFrame, stage: str):
    """The discriminator's accuracy (d_acc) for methods with the adversarial loss: near 0.5
    means f_sa carries no information the discriminator can use to tell a caption's own
    semantics from another's."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3))
    if losses is None or losses.empty or "d_acc" not in losses or losses["d_acc"].isna().all():
        _empty(ax, "no discriminator in this stage's methods")
        return fig
    part = losses.dropna(subset=["d_acc"])
    keys = list(dict.fromkeys(zip(part["setting"], part["method"])))
    window = max(1, (int(part["step"].max()) + 1) // 30)
    for colour, (setting, method) in zip(_palette(len(keys)), keys):
        m = part[(part["setting"] == setting) & (part["method"] == method)]
        curve = m.groupby("step")["d_acc"].mean()
        ax.plot(curve.index, _smooth(curve, window), color=colour, lw=1.2,
                ls="-" if setting == "finetune" else "--", label=f"{setting} · {method}")
    ax.axhline(0.5, color="0.5", lw=0.8, ls=":")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("discriminator accuracy")
    ax.set_title(f"{stage.upper()}: discriminator accuracy on f_sa (0.5 = chance)", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- notebook 04

def plot_sumr_bars(results: pd.DataFrame):
    """SumR per method (mean over target languages; the oracle: English), one panel per
    setting, bars for native and MT-style (mt_clean) test captions; error bars: the 95 %
    t-interval over seeds where there are several (report.seed_summary)."""
    import matplotlib.pyplot as plt
    from .report import headline_rows, seed_summary
    summary = headline_rows(seed_summary(results))
    settings = list(dict.fromkeys(summary["setting"]))
    variants = [v for v in (*VARIANTS, *sorted(set(summary["variant"]) - set(VARIANTS)))
                if v in set(summary["variant"])]
    fig, axes = plt.subplots(len(settings), 1, figsize=(max(6, 0.9 * summary["method"].nunique() + 2),
                                                        3.2 * len(settings)), squeeze=False)
    colours = dict(zip(variants, _palette(len(variants))))
    for ax, setting in zip(axes[:, 0], settings):
        part = summary[summary["setting"] == setting]
        methods = list(dict.fromkeys(part["method"]))
        x = np.arange(len(methods))
        width = 0.8 / max(1, len(variants))
        for k, variant in enumerate(variants):
            sub = part[part["variant"] == variant].set_index("method").reindex(methods)
            mean = sub["SumR"].to_numpy(float)
            half = (sub["SumR_ci_high"] - sub["SumR"]).fillna(0).to_numpy(float)
            pos = x + (k - (len(variants) - 1) / 2) * width
            bars = ax.bar(pos, mean, width, yerr=half, color=colours[variant], label=variant,
                          capsize=2)
            for b, v in zip(bars, mean):
                if np.isfinite(v):
                    ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.0f}", ha="center",
                            va="bottom", fontsize=6)
        ax.set_xticks(x, methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("SumR (max 600)")
        ax.set_title(f"{setting}: mean SumR over target languages (oracle: English captions)",
                     fontsize=10)
        ax.legend(fontsize=8, title="test captions", title_fontsize=8)
    fig.tight_layout()
    return fig


def per_language_table(results: pd.DataFrame, setting: str, variant: str = "native") -> pd.DataFrame:
    """Method x language SumR (mean over seeds; 'avg' over target languages) for one
    setting and test variant, from report.seed_summary like the report's tables."""
    from .report import seed_summary
    summary = seed_summary(results)
    sub = summary[(summary["setting"] == setting) & (summary["variant"] == variant)]
    if sub.empty:
        return pd.DataFrame()
    table = sub.pivot_table(index="method", columns="lang", values="SumR", aggfunc="first",
                            sort=False)
    langs = [lang for lang in [SOURCE_LANG, "de", "fr", "cs", "ja", "zh"] if lang in table.columns]
    others = [c for c in table.columns if c not in langs and c != "avg"]
    table = table.reindex(columns=[*langs, *others, "avg"])  # avg NaN for the English-only oracle
    return table.round(1).reset_index().rename_axis(None, axis=1)


def style_gap(results: pd.DataFrame) -> pd.DataFrame:
    """SumR (mean over target languages and seeds) on native and on MT-style (mt_clean) test
    captions per setting and method, and the gap: how much a method loses when captions
    are written natively rather than in the translator's style."""
    from .report import seed_summary
    summary = seed_summary(results)
    sub = summary[(summary["lang"] == "avg") & summary["variant"].isin(VARIANTS)]
    if sub.empty:
        return pd.DataFrame()
    table = sub.pivot_table(index=["setting", "method"], columns="variant", values="SumR",
                            aggfunc="first", sort=False)
    table = table[[v for v in VARIANTS if v in table.columns]]
    if {"native", "mt_clean"} <= set(table.columns):
        table["gap (mt_clean - native)"] = table["mt_clean"] - table["native"]
    return table.round(1).reset_index().rename_axis(None, axis=1)


def plot_language_heatmap(results: pd.DataFrame, variant: str = "native"):
    """Heatmaps of SumR per method x target language, one per setting."""
    import matplotlib.pyplot as plt
    settings = list(dict.fromkeys(results["setting"]))
    tables = [per_language_table(results, s, variant) for s in settings]
    fig, axes = plt.subplots(1, len(settings), figsize=(4.5 * len(settings), 0.35 * max(
        (len(t) for t in tables), default=4) + 1.6), squeeze=False)
    for ax, setting, table in zip(axes[0], settings, tables):
        table = table[table["method"] != "oracle"] if "method" in table else table
        cols = [c for c in table.columns if c not in ("method", SOURCE_LANG, "avg")]
        if table.empty or not cols:
            _empty(ax, f"{setting}: no target-language rows")
            continue
        values = table[cols].to_numpy(float)
        im = ax.imshow(values, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_yticks(range(len(table)), table["method"], fontsize=8)
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                if np.isfinite(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if values[i, j] < np.nanmean(values) else "black")
        ax.set_title(f"{setting} · {variant}: SumR", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    return fig


def plot_differences(comparisons: pd.DataFrame | None, leave_out: Sequence[str] = ("floor",)):
    """SumR difference (compare_to - baseline, mean over target languages) with its
    paired-bootstrap 95 % interval, one panel per setting, a row per baseline and a marker
    per test variant; hollow markers: the interval includes 0 (not significant).
    `leave_out`: baselines not drawn (the untrained floor, hundreds of SumR away, would
    squeeze every other interval to a dot; the tables keep it)."""
    import matplotlib.pyplot as plt
    avg = None if comparisons is None else comparisons[
        (comparisons["lang"] == "avg") & ~comparisons["baseline"].isin(list(leave_out))]
    if avg is None or avg.empty:
        fig, ax = plt.subplots(figsize=(5, 2))
        _empty(ax, "no method comparisons in this run")
        return fig
    settings = list(dict.fromkeys(avg["setting"]))
    rows = max(avg.groupby("setting")["baseline"].nunique())
    fig, axes = plt.subplots(1, len(settings), figsize=(4.8 * len(settings), 0.45 * rows + 1.8),
                             squeeze=False)
    variants = list(dict.fromkeys(avg["variant"]))
    colours = dict(zip(variants, _palette(len(variants))))
    for ax, setting in zip(axes[0], settings):
        part = avg[avg["setting"] == setting]
        baselines = list(dict.fromkeys(part["baseline"]))
        y = np.arange(len(baselines))
        for k, variant in enumerate(variants):
            sub = part[part["variant"] == variant].set_index("baseline").reindex(baselines)
            diff = sub["diff_SumR"].to_numpy(float)
            err = np.vstack([diff - sub["ci_low"].to_numpy(float),
                             sub["ci_high"].to_numpy(float) - diff])
            pos = y + (k - (len(variants) - 1) / 2) * 0.25
            ax.errorbar(diff, pos, xerr=np.nan_to_num(err), fmt="none", ecolor=colours[variant],
                        capsize=3)
            significant = sub["significant"].astype(str).str.lower().eq("true").to_numpy()
            ax.scatter(diff[significant], pos[significant], color=colours[variant], zorder=3,
                       label=variant if significant.any() else None)
            ax.scatter(diff[~significant], pos[~significant], facecolors="white",
                       edgecolors=colours[variant], zorder=3,
                       label=f"{variant} (n.s.)" if (~significant).any() else None)
        ax.axvline(0, color="0.5", linewidth=0.8)
        ax.set_yticks(y, baselines, fontsize=8)
        ax.set_ylim(len(baselines) - 0.5, -0.5)  # first baseline on top
        method = part["method"].iloc[0]
        ax.set_xlabel(f"SumR difference, {method} - baseline")
        ax.set_title(f"{setting}: mean over target languages, 95 % bootstrap interval",
                     fontsize=9)
        ax.legend(fontsize=7, title="test captions", title_fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- notebook 05: features

@dataclass
class CaptionFeatures:
    """Test captions of the exploration sample and each method's target-tower outputs.

    captions: one row per caption (caption_id, image_id, lang, variant, style, caption,
    content labels of data.content_labels, and `content` = the label used for colouring).
    arrays[method][name]: (N, ...) arrays in `captions` row order, name in r_T, f_sr, f_sa,
    w_z (w_z: (N, L, r, r)); f_sr/f_sa/w_z only for methods that have them."""
    captions: pd.DataFrame
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    setting: str = "finetune"

    def has(self, method: str, name: str) -> bool:
        return self.arrays.get(method, {}).get(name) is not None

    def get(self, method: str, name: str) -> np.ndarray:
        if not self.has(method, name):
            raise KeyError(f"no '{name}' for method '{method}'; it has "
                           f"{sorted(self.arrays.get(method, {}))} (methods: {sorted(self.arrays)})")
        return self.arrays[method][name]


def explore_setting(params: Params) -> str:
    """The setting notebook 05 explores: finetune when the run has it."""
    return "finetune" if "finetune" in params.run.settings else params.run.settings[0]


def explore_methods(params: Params, setting: str) -> list[str]:
    """The methods notebook 05 embeds: explore.umap_methods then explore.probe_methods,
    those the run has in `setting` and that have a target tower (not the oracle)."""
    from .model import METHODS
    have = params.run.methods.get(setting, [])
    wanted = dict.fromkeys([*params.explore.umap_methods, *params.explore.probe_methods])
    missing = [m for m in wanted if m not in have]
    if missing:
        print(f"note: explore methods {missing} are not in run.methods.{setting}; skipped")
    return [m for m in wanted if m in have and m in METHODS and not METHODS[m].oracle]


def pick_method(features: "CaptionFeatures", name: str, preferred: Sequence[str] = ()) -> str:
    """The first of `preferred` (then any method) whose features include `name`; '' if none."""
    for method in [*preferred, *features.arrays]:
        if features.has(method, name):
            return method
    return ""


def sample_captions(test: pd.DataFrame, langs: Sequence[str], max_captions: int, seed: int = 0,
                    variants: Sequence[str] = VARIANTS) -> pd.DataFrame:
    """A deterministic sample of target-language test captions: whole images are drawn, and
    each keeps up to two captions per (language, variant), so the sample holds captions
    that share content and differ in style, and the other way round."""
    part = test[test["lang"].isin(langs) & test["variant"].isin(variants)]
    if part.empty:
        raise ValueError(f"no test captions in languages {list(langs)} with variants {list(variants)}")
    per_cell = part.groupby(["image_id", "lang", "variant"]).size()
    per_image = int(min(2, per_cell.min()))
    cells = max(1, part["lang"].nunique() * part["variant"].nunique() * per_image)
    images = np.array(sorted(part["image_id"].unique()))
    n_images = int(np.clip(max_captions // cells, min(2, len(images)), len(images)))
    rng = np.random.default_rng(seed)
    chosen = set(images[np.sort(rng.choice(len(images), n_images, replace=False))])
    sample = part[part["image_id"].isin(chosen)].sort_values(["image_id", "lang", "variant",
                                                              "caption_id"], kind="stable")
    sample = sample.groupby(["image_id", "lang", "variant"], sort=False).head(per_image)
    return sample.reset_index(drop=True)


def collect_features(params: Params, run_dir: str | Path, methods: Sequence[str],
                     setting: str = "finetune", max_captions: int | None = None,
                     seed: int | None = None) -> CaptionFeatures:
    """Embed a deterministic sample of target-language test captions (native and mt_clean)
    with each method's trained tower; keep r_T, f_sr, f_sa and the generated W_z."""
    from .data import content_labels
    from .evaluate import embed_target
    from .model import METHODS
    from .pipeline import get_backbone, load_trained_model, test_table
    from .train import resolve_device

    cfg: ExploreConfig = params.explore
    max_captions = max_captions or cfg.max_captions
    seed = params.run.seeds[0] if seed is None else seed
    test = test_table(params)
    sample = sample_captions(test, params.data.langs, max_captions, seed=seed)
    labels = content_labels(sample)
    captions = pd.concat([sample[["caption_id", "image_id", "lang", "variant", "style", "caption"]],
                          labels], axis=1)
    colour_label = cfg.colour_content if cfg.colour_content in labels else labels.columns[0]
    captions["content"] = labels[colour_label].to_numpy()
    backbone = get_backbone(params, run_dir, setting)
    device = resolve_device(params.run.device)
    features = CaptionFeatures(captions=captions, setting=setting)
    for method in methods:
        if method not in METHODS or METHODS[method].oracle:
            continue  # the oracle has no target tower
        model = load_trained_model(params, run_dir, setting, method, seed).to(device)
        parts: dict[str, list] = {}
        for lang, rows in captions.groupby("lang", sort=False):
            emb = embed_target(model, backbone, rows["caption"].tolist(), lang, device=device,
                               batch_size=params.run.eval_batch_size, keep_w_z=True)
            for name in ("r_T", "f_sr", "f_sa", "w_z"):
                value = getattr(emb, name)
                if value is not None:
                    parts.setdefault(name, []).append((rows.index.to_numpy(), value))
        arrays = {}
        for name, chunks in parts.items():
            index = np.concatenate([i for i, _ in chunks])
            stacked = np.concatenate([v for _, v in chunks])
            out = np.empty_like(stacked)
            out[index] = stacked  # back into captions row order
            arrays[name] = out
        features.arrays[method] = arrays
    return features


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
        frame.to_csv(Path(run_dir) / "probes.csv", index=False)
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


# ----------------------------------------------------------------------------- retrieval explorer

@dataclass
class ImageBank:
    """The test images a query is ranked against: ids, frozen embeddings, pixels."""
    image_ids: list[str]
    image_emb: np.ndarray     # (N, d) frozen VLP image embeddings
    images: np.ndarray        # (N, S, S, 3) uint8


def image_bank(params: Params, run_dir: str | Path, setting: str = "finetune") -> ImageBank:
    """The downstream test images with the setting's frozen image embeddings (cached)."""
    from .data import load_images
    from .evaluate import unique_images
    from .pipeline import cache_dir, get_backbone, test_table
    from .train import frozen_features, resolve_device
    test = test_table(params)
    backbone = get_backbone(params, run_dir, setting)
    feats = frozen_features(backbone, test, image_size=params.data.image_size,
                            cache_dir=cache_dir(params, run_dir),
                            device=resolve_device(params.run.device))
    images = unique_images(test)
    ids = images["image_id"].tolist()
    return ImageBank(image_ids=ids, image_emb=feats.images(ids).numpy(),
                     images=load_images(images["image_path"].tolist(), params.data.image_size))


def embed_query(model, backbone, texts: Sequence[str], lang: str, device=None) -> np.ndarray:
    """Joint-space embeddings of queries: the target tower for target languages, the
    frozen English text tower for 'en' (translate-test)."""
    import torch
    from .evaluate import embed_target
    if lang == SOURCE_LANG:
        device = device or next(backbone.parameters()).device
        with torch.no_grad():
            ids, mask = backbone.tokenize_source(list(texts))
            return backbone.encode_source_text(ids.to(device), mask.to(device)).float().cpu().numpy()
    return embed_target(model, backbone, list(texts), lang, device=device).r_T


def search_images(model, backbone, query: str, lang: str, image_ids: Sequence[str],
                  image_emb: np.ndarray, k: int = 8, device=None) -> list[tuple[str, int, float]]:
    """The k test images closest to a caption in `lang` (cosine similarity), best first,
    as (image_id, rank starting at 1, score)."""
    from .evaluate import similarity
    if not isinstance(query, str) or not query.strip():
        raise ValueError("search_images: the query is empty; type a caption")
    if len(image_ids) != len(image_emb):
        raise ValueError(f"{len(image_ids)} image ids but {len(image_emb)} image embeddings")
    scores = similarity(embed_query(model, backbone, [query.strip()], lang, device), image_emb)[0]
    order = np.argsort(-scores, kind="stable")[:k]
    return [(str(image_ids[i]), rank, float(scores[i])) for rank, i in enumerate(order, 1)]


def plot_search_results(results: list[tuple[str, int, float]], bank: ImageBank, title: str = "",
                        target: str | None = None):
    """The ranked images in a row; the one with id `target` (the query's own image) framed."""
    import matplotlib.pyplot as plt
    index = {i: n for n, i in enumerate(bank.image_ids)}
    fig, axes = plt.subplots(1, max(1, len(results)), figsize=(1.7 * max(1, len(results)), 2.3),
                             squeeze=False)
    for ax, (image_id, rank, score) in zip(axes[0], results):
        ax.imshow(bank.images[index[image_id]])
        ax.set_title(f"#{rank} {image_id}\n{score:.3f}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        if image_id == target:
            for side in ax.spines.values():
                side.set_edgecolor("red")
                side.set_linewidth(3)
    if title:
        fig.suptitle(figure_text(title), fontsize=9)
    fig.tight_layout()
    return fig


def example_queries(features: CaptionFeatures, langs: Sequence[str] | None = None,
                    n_per_lang: int = 1) -> pd.DataFrame:
    """Native captions per language from the exploration sample, in `langs` order (for the
    static retrieval examples and the explorer's first query)."""
    caps = features.captions
    native = caps[caps["variant"] == "native"]
    out = native.groupby("lang", sort=False).head(n_per_lang)[["lang", "image_id", "caption"]]
    if langs is not None:
        order = {lang: k for k, lang in enumerate(langs)}
        out = out[out["lang"].isin(order)].sort_values("lang", key=lambda s: s.map(order),
                                                        kind="stable")
    return out.reset_index(drop=True)


def search_table(model, backbone, queries: pd.DataFrame, bank: ImageBank, k: int = 5) -> pd.DataFrame:
    """For each query row (lang, image_id, caption): the rank of its own image and the top k."""
    rows = []
    for q in queries.itertuples():
        results = search_images(model, backbone, q.caption, q.lang, bank.image_ids,
                                bank.image_emb, k=len(bank.image_ids))
        rank = next(r for i, r, _ in results if i == q.image_id)
        rows.append({"lang": q.lang, "caption": q.caption, "image_id": q.image_id,
                     "rank_of_own_image": rank, "top": " ".join(i for i, _, _ in results[:k])})
    return pd.DataFrame(rows)


def _png(image: np.ndarray, size: int = 96) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def retrieval_explorer(model, backbone, bank: ImageBank, langs: Sequence[str], k: int = 8,
                       query: str = "", lang: str | None = None):
    """An ipywidgets explorer: caption box + language picker + button -> the top k test
    images with their ranks and scores. Runs the initial query once, so a static render
    (papermill, nbconvert) shows a result too."""
    import ipywidgets as widgets
    langs = list(langs)
    text = widgets.Text(value=query, placeholder="a caption in any language",
                        description="caption", layout=widgets.Layout(width="70%"))
    pick = widgets.Dropdown(options=langs, value=lang if lang in langs else langs[0],
                            description="language", layout=widgets.Layout(width="180px"))
    button = widgets.Button(description="search", button_style="primary")
    status = widgets.HTML()
    grid = widgets.GridBox(layout=widgets.Layout(grid_template_columns="repeat(8, 110px)"))
    index = {i: n for n, i in enumerate(bank.image_ids)}

    def show(_=None):
        try:
            results = search_images(model, backbone, text.value, pick.value, bank.image_ids,
                                    bank.image_emb, k=k)
        except Exception as err:  # shown in the widget, never raised from a callback
            status.value = f"<span style='color:#b00'>{type(err).__name__}: {err}</span>"
            grid.children = ()
            return
        status.value = f"top {len(results)} of {len(bank.image_ids)} test images ({pick.value})"
        grid.children = tuple(widgets.VBox([
            widgets.Image(value=_png(bank.images[index[i]]), format="png", width=96, height=96),
            widgets.HTML(f"<small>#{rank} {i}<br>{score:.3f}</small>")]) for i, rank, score in results)

    button.on_click(show)
    if query:
        show()
    return widgets.VBox([widgets.HBox([text, pick, button]), status, grid])
