"""Views of the caption table for notebook 00 and the probes: content labels, style
frequencies, token coverage, caption statistics and a sample grid."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .languages import content_forms, word_forms
from .loaders import load_images
from .world import POSITIONS, SIZES

LABEL_COLUMNS = ["n_objects", "background", "main_shape", "main_colour", "main_size", "main_pos",
                 "shapes", "colours", "twin_group"]


def _labels_of(content: str) -> tuple[str, ...]:
    if not content:
        return ("",) * len(LABEL_COLUMNS)
    d = json.loads(content)
    objs = d["objects"]
    # main object: the largest, ties broken by slot order (left, top, middle, bottom, right);
    # recomputed here so a hand-written content JSON needs no particular object order
    main = min(objs, key=lambda o: (SIZES.index(o["size"]), POSITIONS.index(o["pos"])))
    return (str(len(objs)), d.get("background", ""), main["shape"], main["colour"], main["size"],
            main["pos"], "+".join(sorted(o["shape"] for o in objs)),
            "+".join(sorted(o["colour"] for o in objs)), str(d.get("group", "")))


def content_labels(table: pd.DataFrame) -> pd.DataFrame:
    """Categorical content targets per row (same index as `table`), as strings:

    n_objects; background; main_shape / main_colour / main_size / main_pos of the main
    object = the largest one, ties broken by slot order left, top, middle, bottom, right
    (binding twins differ here, so a probe needs binding to predict it); shapes and
    colours = the sorted sets joined by '+'; twin_group. Empty strings where a row has no
    content (imported data)."""
    parsed = {c: _labels_of(c) for c in set(table["content"])}  # a scene's captions share it
    labels = [parsed[c] for c in table["content"]]
    return pd.DataFrame(labels, columns=LABEL_COLUMNS, index=table.index)


def _object_set(content: str) -> str:
    """A scene's objects as one canonical string (order-free): what binding_key compares."""
    if not content:
        return ""
    objs = json.loads(content)["objects"]
    return "|".join(sorted(f"{o['shape']},{o['colour']},{o['size']},{o['pos']}" for o in objs))


def held_out_overlap(table: pd.DataFrame) -> pd.DataFrame:
    """Per held-out split (val, test): images, and how many show the same objects as some
    training image (differing only in render noise and background). The generator drops
    such scenes, so its corpora show 0; rows without content (imported data) are not counted."""
    images = table.drop_duplicates("image_id")[["split", "image_id", "content"]]
    images = images[images.content != ""]
    keys = images.content.map(_object_set)
    seen = set(keys[images.split == "train"])
    rows = []
    for split in ("val", "test"):
        part = keys[images.split == split]
        if len(part):
            rows.append({"split": split, "images": len(part),
                         "same_objects_as_train": int(part.isin(seen).sum())})
    return pd.DataFrame(rows, columns=["split", "images", "same_objects_as_train"])


def content_oracle_recall(table: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """The best R@1 any model can reach on `split`: a reader that gets every caption's
    content right still cannot tell apart images with the same objects (they differ
    only in noise and background), so it picks one of them at random. Per language:
    text-to-image R@1 = mean over captions of 1 / (images with its image's objects), in %;
    `tied_images` = images that share their objects with another image of the split."""
    rows = table[(table.split == split) & (table.content != "")]
    if rows.empty:
        return pd.DataFrame(columns=["lang", "captions", "tied_images", "oracle_R@1"])
    images = rows.drop_duplicates("image_id")
    per_key = images.content.map(_object_set).value_counts()
    image_key = dict(zip(images.image_id, images.content.map(_object_set)))
    out = []
    for lang, part in rows.groupby("lang", sort=False):
        ties = part.image_id.map(image_key).map(per_key)
        out.append({"lang": lang, "captions": len(part),
                    "tied_images": int((per_key[per_key > 1]).sum()),
                    "oracle_R@1": round(100.0 * float((1.0 / ties).mean()), 2)})
    return pd.DataFrame(out)


def style_frequencies(table: pd.DataFrame, *, wide: bool = False) -> pd.DataFrame:
    """Caption counts by split, variant, language and style, with each style's share
    within its (split, variant, lang). wide=True: shares as a (variant, style) x
    (split, lang) table, the view that shows native and MT styles never overlap."""
    counts = (table.groupby(["split", "variant", "lang", "style"], sort=True).size()
              .rename("count").reset_index())
    totals = counts.groupby(["split", "variant", "lang"])["count"].transform("sum")
    counts["share"] = (counts["count"] / totals).round(4)
    if wide:
        return counts.pivot_table(index=["variant", "style"], columns=["split", "lang"],
                                  values="share", fill_value=0.0)
    return counts


def token_coverage(table: pd.DataFrame, *, split: str = "test", variant: str = "native") -> pd.DataFrame:
    """Per language: how many distinct content word forms of its native test captions appear
    somewhere in the training text of that language (train split, any variant).

    content_*: forms of the synthetic world's content words (shapes, colours, sizes,
    positions, numerals; see languages.content_inventory). word_*: all word forms (words;
    characters for ja/zh), including style words that only native captions use."""
    train = table[table["split"] == "train"]
    test = table[(table["split"] == split) & (table["variant"] == variant)]
    rows = []
    for lang in sorted(test["lang"].unique()):
        tr_caps = train.loc[train["lang"] == lang, "caption"]
        te_caps = test.loc[test["lang"] == lang, "caption"]
        tr_content = {f for c in tr_caps for f in content_forms(c, lang)}
        te_content = {f for c in te_caps for f in content_forms(c, lang)}
        tr_words = {w for c in tr_caps for w in word_forms(c, lang)}
        te_words = {w for c in te_caps for w in word_forms(c, lang)}
        missing = sorted(te_content - tr_content)
        rows.append({
            "lang": lang, "content_forms": len(te_content),
            "content_covered": len(te_content) - len(missing),
            "content_coverage": 1.0 if not te_content else 1 - len(missing) / len(te_content),
            "missing_content": " ".join(missing),
            "word_forms": len(te_words), "word_covered": len(te_words & tr_words),
            "word_coverage": 1.0 if not te_words else len(te_words & tr_words) / len(te_words),
            "missing_words": " ".join(sorted(te_words - tr_words)),
        })
    return pd.DataFrame(rows)


def caption_stats(table: pd.DataFrame) -> pd.DataFrame:
    """Images, captions and mean caption length (words; characters for ja/zh) per split,
    language and variant."""
    length = [len(word_forms(c, lang)) for c, lang in zip(table["caption"], table["lang"])]
    t = table.assign(length=length)
    return (t.groupby(["split", "lang", "variant"], sort=True)
            .agg(images=("image_id", "nunique"), captions=("caption", "size"),
                 mean_length=("length", "mean"))
            .round(2).reset_index())


@dataclass
class SampleGrid:
    image_ids: list[str]
    images: np.ndarray            # (N, H, W, 3) uint8
    captions: pd.DataFrame        # image_id, lang, variant, style, caption (long format)

    def by_image(self, image_id: str) -> dict[str, list[str]]:
        """lang -> ['<variant> <style>: caption', ...] for one image."""
        rows = self.captions[self.captions["image_id"] == image_id]
        return {lang: [f"{r.variant} {r.style}: {r.caption}" for r in g.itertuples()]
                for lang, g in rows.groupby("lang", sort=False)}

    def figure(self, cols: int = 4):
        """The images with their ids (captions go in a table: matplotlib's default font has
        no CJK glyphs)."""
        import matplotlib.pyplot as plt
        n = len(self.image_ids)
        rows = max(1, -(-n // cols))
        fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, img, iid in zip(axes.flat, self.images, self.image_ids):
            ax.imshow(img)
            ax.set_title(iid, fontsize=8)
        fig.tight_layout()
        return fig


def sample_grid(table: pd.DataFrame, n: int = 4, *, split: str = "test", seed: int = 0,
                size: int | None = None, per_lang: int = 2) -> SampleGrid:
    """n random images of a split with up to `per_lang` captions per (language, variant)."""
    part = table[table["split"] == split]
    if part.empty:
        part = table
    ids = sorted(part["image_id"].unique())
    rng = np.random.default_rng(seed)
    pick = [ids[i] for i in sorted(rng.choice(len(ids), size=min(n, len(ids)), replace=False))]
    caps = part[part["image_id"].isin(pick)]
    caps = caps.groupby(["image_id", "lang", "variant"], sort=False).head(per_lang)
    lang_order = {lang: k for k, lang in enumerate(["en", "de", "fr", "cs", "ja", "zh"])}
    caps = caps.sort_values(["image_id", "lang", "variant"], key=lambda s: s.map(lang_order)
                            if s.name == "lang" else s, kind="stable")
    paths = [part.loc[part["image_id"] == i, "image_path"].iloc[0] for i in pick]
    if size is None:
        from PIL import Image
        with Image.open(paths[0]) as im:
            size = im.size[0]
    images = load_images(paths, size)
    return SampleGrid(pick, images, caps[["image_id", "lang", "variant", "style", "caption"]]
                      .reset_index(drop=True))
