"""Notebook 05's model inference and retrieval explorer: a deterministic sample of
target-language test captions embedded by each method's trained tower (CaptionFeatures:
r_T, f_sr, f_sa, W_z; dasd_lib.disentangle analyses them), the test images with their
frozen embeddings (ImageBank), ranked search for a caption in any language, static
retrieval examples and an ipywidgets explorer, with warnings for a query the model cannot
read (mostly unknown words, or a script the chosen language is not written in).

Figure text stays ASCII/Latin: matplotlib's default font has no CJK glyphs, so captions
in Japanese or Chinese go into tables, never into figures (figure_text).
"""
from __future__ import annotations

import base64
import io
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from html import escape
from typing import Sequence

import numpy as np
import pandas as pd

from .config import ExploreConfig, Params, SOURCE_LANG
from .data import content_labels, load_images
from .evaluate import embed_target, similarity, unique_images
from .features import frozen_features
from .model import METHODS
from .context import Run
from .pipeline import load_trained_model
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


def collect_features(run: Run, methods: Sequence[str],
                     setting: str = "finetune", max_captions: int | None = None,
                     seed: int | None = None) -> CaptionFeatures:
    """Embed a deterministic sample of target-language test captions (native and mt_clean)
    with each method's trained tower; keep r_T, f_sr, f_sa and the generated W_z."""

    params = run.params
    cfg: ExploreConfig = params.explore
    max_captions = max_captions or cfg.max_captions
    seed = params.run.seeds[0] if seed is None else seed
    test = run.test_table()
    sample = sample_captions(test, params.data.langs, max_captions, seed=seed)
    labels = content_labels(sample)
    captions = pd.concat([sample[["caption_id", "image_id", "lang", "variant", "style", "caption"]],
                          labels], axis=1)
    colour_label = cfg.colour_content if cfg.colour_content in labels else labels.columns[0]
    captions["content"] = labels[colour_label].to_numpy()
    backbone = run.backbone(setting)
    device = run.device
    features = CaptionFeatures(captions=captions, setting=setting)
    for method in methods:
        if method not in METHODS or METHODS[method].oracle:
            continue  # the oracle has no target tower
        model = load_trained_model(run, setting, method, seed).to(device)
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


def image_bank(run: Run, setting: str = "finetune") -> ImageBank:
    """The downstream test images with the setting's frozen image embeddings (cached)."""
    params = run.params
    test = run.test_table()
    backbone = run.backbone(setting)
    feats = frozen_features(backbone, test, image_size=params.data.image_size,
                            cache_dir=run.cache_dir, device=run.device)
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


# ----------------------------------------------------------------------------- query checks

# The scripts each language's captions are written in: the first word of the Unicode name
# of their letters (IDEOGRAPHIC: marks such as 々 that go with Han characters).
LANG_SCRIPTS = {"en": {"LATIN"}, "de": {"LATIN"}, "fr": {"LATIN"}, "cs": {"LATIN"},
                "ja": {"CJK", "IDEOGRAPHIC", "HIRAGANA", "KATAKANA"},
                "zh": {"CJK", "IDEOGRAPHIC"}}
KANA = {"HIRAGANA", "KATAKANA"}
UNSPACED_SCRIPTS = {"CJK", "IDEOGRAPHIC", *KANA}  # no spaces between words
UNKNOWN_SHARE = 0.5  # warn when more of the query's words than this are unknown


def letter_scripts(text: str) -> Counter:
    """How many letters of `text` each script has (LATIN, CJK, HIRAGANA, CYRILLIC, ...)."""
    counts: Counter = Counter()
    for ch in text:
        if not ch.isalpha():
            continue
        words = unicodedata.name(ch, "UNKNOWN").replace("FULLWIDTH ", "").replace(
            "HALFWIDTH ", "").split()
        counts[words[0].split("-")[0]] += 1  # KATAKANA-HIRAGANA PROLONGED SOUND MARK: KATAKANA
    return counts


def script_warning(text: str, lang: str) -> str | None:
    """A warning when `text` is not written in the script of `lang`'s captions (Latin for
    en/de/fr/cs, Han and kana for ja, Han for zh); None when it fits or there is no rule."""
    expected = LANG_SCRIPTS.get(lang)
    counts = letter_scripts(text)
    total = sum(counts.values())
    if not expected or not total:
        return None
    if sum(counts[s] for s in expected) / total < 0.5:
        main = counts.most_common(1)[0][0]
        main = "Han (CJK)" if main in ("CJK", "IDEOGRAPHIC") else main.title()
        return (f"the caption is written mostly in {main} script, which {lang} captions do not "
                f"use: the model has hardly seen these characters as {lang}, so the ranking "
                f"says little. Pick the caption's language.")
    kana = sum(counts[s] for s in KANA)
    if lang == "zh" and kana:
        return ("the caption holds kana (Japanese script), which zh captions do not use: "
                "is it Japanese? Pick ja.")
    if lang == "ja" and not kana and counts["CJK"] >= 4:
        return ("the caption has Han characters but no kana, like Chinese rather than "
                "Japanese text: is it Chinese? Pick zh.")
    return None


def unknown_words(text: str, tokenizer) -> tuple[list[str], int]:
    """(the words of `text` the tokenizer does not know, how many words it has). Unknown: a
    word with an [UNK] piece, or a spaced-script word of 3+ letters that falls apart into
    single characters (the tiny tokenizers hold every character, so an unseen word becomes
    characters rather than [UNK]). Words without letters (numbers, punctuation) are left out."""
    enc = tokenizer(text, add_special_tokens=False)
    pieces: dict[int, list[str]] = {}
    for token, word in zip(enc.tokens(), enc.word_ids()):
        if word is not None:
            pieces.setdefault(word, []).append(token)
    words, unknown = [], []
    for word_index, parts in pieces.items():
        start, end = enc.word_to_chars(word_index)
        word = text[start:end]
        if not any(ch.isalpha() for ch in word):
            continue
        words.append(word)
        spaced = not (set(letter_scripts(word)) & UNSPACED_SCRIPTS)
        fell_apart = spaced and len(word) >= 3 and all(len(p.removeprefix("##")) == 1
                                                       for p in parts)
        if tokenizer.unk_token in parts or fell_apart:
            unknown.append(word)
    return unknown, len(words)


def query_warnings(text: str, lang: str, tokenizer=None) -> list[str]:
    """What to tell the user before trusting the ranking of `text` as a `lang` caption: a
    script that does not fit the language, most words unknown to `tokenizer` (the one that
    embeds the query; None skips that check)."""
    warnings = [w for w in [script_warning(text, lang)] if w]
    if tokenizer is not None and text.strip():
        unknown, n_words = unknown_words(text, tokenizer)
        if n_words and len(unknown) / n_words > UNKNOWN_SHARE:
            shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            warnings.append(f"{len(unknown)} of {n_words} words are unknown to the {lang} "
                            f"tokenizer ({shown}): the model never learnt them, so the "
                            f"ranking says little.")
    return warnings


def query_tokenizer(backbone, lang: str):
    """The tokenizer that embeds a `lang` query (embed_query); None if the backbone has none."""
    return getattr(backbone, "tokenizer_source" if lang == SOURCE_LANG else "tokenizer_target",
                   None)


@dataclass
class SearchResult:
    """One query's ranking with its warnings; shows as an HTML table with the images, so a
    saved (executed) notebook keeps the result a widget would show only in a live kernel."""
    query: str
    lang: str
    results: list[tuple[str, int, float]]
    warnings: list[str]
    thumbnails: dict[str, bytes]  # image id -> PNG
    n_images: int

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.results, columns=["image_id", "rank", "score"])

    def _repr_html_(self) -> str:
        notes = "".join(f"<p style='color:#a15c00'>warning: {escape(w)}</p>" for w in self.warnings)
        rows = "".join(
            f"<tr><td>#{rank}</td><td><img alt='test image {escape(i)}' width=72 height=72 "
            f"src='data:image/png;base64,{base64.b64encode(self.thumbnails[i]).decode()}'>"
            f"</td><td>{escape(i)}</td><td>{score:.3f}</td></tr>" for i, rank, score in self.results)
        return (f"<p>{escape(self.lang)} query <q>{escape(self.query)}</q>: top "
                f"{len(self.results)} of {self.n_images} test images</p>{notes}<table><tr>"
                f"<th>rank</th><th>image</th><th>id</th><th>score</th></tr>{rows}</table>")

    def __repr__(self) -> str:
        notes = "".join(f"warning: {w}\n" for w in self.warnings)
        return (f"{self.lang} query {self.query!r}: top {len(self.results)} of {self.n_images} "
                f"test images\n{notes}{self.table().to_string(index=False)}")


def run_search(model, backbone, bank: "ImageBank", query: str, lang: str, k: int = 8,
               device=None) -> SearchResult:
    """search_images for one query, with query_warnings and the images' thumbnails."""
    results = search_images(model, backbone, query, lang, bank.image_ids, bank.image_emb, k=k,
                            device=device)
    index = {i: n for n, i in enumerate(bank.image_ids)}
    return SearchResult(query=query.strip(), lang=lang, results=results,
                        warnings=query_warnings(query, lang, query_tokenizer(backbone, lang)),
                        thumbnails={i: _png(bank.images[index[i]]) for i, _, _ in results},
                        n_images=len(bank.image_ids))


def _png(image: np.ndarray, size: int = 96) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def retrieval_explorer(model, backbone, bank: ImageBank, langs: Sequence[str], k: int = 8,
                       query: str = "", lang: str | None = None):
    """An ipywidgets explorer: caption box + language picker + button -> the top k test
    images with their ranks and scores, and query_warnings above them. Enter in the caption
    box searches (the box syncs its value on Enter, continuous_update=False), and so do the
    button and a change of language. Runs the initial query once; a saved copy of the
    notebook shows no widget, so display run_search's result beside it for that."""
    import ipywidgets as widgets
    langs = list(langs)
    text = widgets.Text(value=query, placeholder="a caption in any language; Enter searches",
                        description="caption", continuous_update=False,
                        layout=widgets.Layout(width="70%"))
    pick = widgets.Dropdown(options=langs, value=lang if lang in langs else langs[0],
                            description="language", layout=widgets.Layout(width="180px"))
    button = widgets.Button(description="search", button_style="primary")
    status = widgets.HTML()
    grid = widgets.GridBox(layout=widgets.Layout(grid_template_columns="repeat(8, 110px)"))

    def show(_=None):
        try:
            found = run_search(model, backbone, bank, text.value, pick.value, k=k)
        except Exception as err:  # shown in the widget, never raised from a callback
            status.value = f"<span style='color:#b00'>{escape(type(err).__name__)}: {escape(str(err))}</span>"
            grid.children = ()
            return
        notes = "".join(f"<br><span style='color:#a15c00'>warning: {escape(w)}</span>"
                        for w in found.warnings)
        status.value = (f"top {len(found.results)} of {found.n_images} test images "
                        f"({escape(found.lang)}){notes}")
        grid.children = tuple(widgets.VBox([
            widgets.Image(value=found.thumbnails[i], format="png", width=96, height=96),
            widgets.HTML(f"<small>#{rank} {escape(i)}<br>{score:.3f}</small>")])
            for i, rank, score in found.results)

    button.on_click(show)
    text.observe(show, names="value")  # Enter (or leaving the box) after an edit
    pick.observe(show, names="value")
    if query:
        show()
    return widgets.VBox([widgets.HBox([text, pick, button]), status, grid])
