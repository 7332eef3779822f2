"""Figures and tables of notebooks 00-04 (corpus statistics, training losses, retrieval
results) and the helpers every figure uses: save_figure (into the run folder, where the
report collects it), the categorical palette and the empty-panel note. Notebooks hold no
`def`, so every helper a notebook needs lives in dasd_lib.

Figure text stays ASCII/Latin: matplotlib's default font has no CJK glyphs, so captions
in Japanese or Chinese go into tables, never into figures.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .config import SOURCE_LANG
from .metrics import KS, chance_recall
from .data import style_frequencies
from .report import headline_rows, seed_summary
from .storage import atomic_file

VARIANTS = ("native", "mt_clean")


# ----------------------------------------------------------------------------- figures

def save_figure(fig, run_dir: str | Path, name: str, dpi: int = 120) -> Path:
    """Save `fig` as run_dir/figures/<name>.png (the report collects these) and return the
    path. The figure stays open, so the notebook still shows it inline."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "figure"
    out = Path(run_dir) / "figures" / f"{stem}.png"
    with atomic_file(out) as tmp:  # a full disk leaves no 0-byte figure for the report
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", facecolor="white", format="png")
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


# ----------------------------------------------------------------------------- notebook 00

def style_table(table: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Style shares (%) per language x style for one split, variants side by side, from
    data.style_frequencies: MT-style and native captions use disjoint style sets."""
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
    chance = chance_recall(n_images, cpi)
    rows = [{"metric": f"{label} R@{k}", "VLP": metrics.get(f"{direction}_R{k}"),
             "chance": chance[f"{direction}_R{k}"]}
            for direction, label in (("i2t", "image -> text"), ("t2i", "text -> image"))
            for k in KS]
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
