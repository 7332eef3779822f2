"""Notebook 05's model inference and retrieval explorer: a deterministic sample of
target-language test captions embedded by each method's trained tower (CaptionFeatures:
r_T, f_sr, f_sa, W_z; dasd_lib.disentangle analyses them), the test images with their
frozen embeddings (ImageBank), ranked search for a caption in any language, static
retrieval examples and an ipywidgets explorer.

Figure text stays ASCII/Latin: matplotlib's default font has no CJK glyphs, so captions
in Japanese or Chinese go into tables, never into figures (figure_text).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .config import ExploreConfig, Params, SOURCE_LANG
from .data import content_labels, load_images
from .evaluate import embed_target, similarity, unique_images
from .features import frozen_features
from .model import METHODS
from .pipeline import cache_dir, get_backbone, load_trained_model, test_table
from .train import resolve_device
from .plots import VARIANTS


# ----------------------------------------------------------------------------- figure text

def _has_cjk(text: str) -> bool:
    return any(ord(ch) >= 0x2E80 for ch in text)


def figure_text(text: str, width: int = 90) -> str:
    """`text` for a figure title: shortened, and replaced by a pointer to the table when it
    holds CJK characters (the default font has no glyphs for them)."""
    if _has_cjk(text):
        return "(caption in the table above)"
    return text if len(text) <= width else text[:width - 1] + "…"


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


# ----------------------------------------------------------------------------- retrieval explorer

@dataclass
class ImageBank:
    """The test images a query is ranked against: ids, frozen embeddings, pixels."""
    image_ids: list[str]
    image_emb: np.ndarray     # (N, d) frozen VLP image embeddings
    images: np.ndarray        # (N, S, S, 3) uint8


def image_bank(params: Params, run_dir: str | Path, setting: str = "finetune") -> ImageBank:
    """The downstream test images with the setting's frozen image embeddings (cached)."""
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
