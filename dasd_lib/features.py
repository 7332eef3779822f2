"""What the target stages train on. The frozen VLP's outputs, computed once per corpus and
cached: image embeddings r_V per image id and English caption embeddings r_S per text
(`frozen_features`; the cache key covers the backbone weights, the image files (path,
size, mtime), the texts and the preprocessing, so a cache is never used for inputs it was
not made from). And the target captions, tokenized once, with their references
(`TargetData`, `make_target_data`)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .storage import CheckpointError, fingerprint, load_state, save_state

log = logging.getLogger("dasd_lib.features")


class FeaturesError(ValueError):
    """A corpus whose frozen features cannot be computed (e.g. one image id, two files)."""


@dataclass
class FrozenFeatures:
    """Frozen VLP outputs for one corpus: r_V per image id, r_S per English caption text."""
    image_index: dict[str, int]
    image_emb: torch.Tensor          # (N_img, d)
    text_index: dict[str, int]
    text_emb: torch.Tensor           # (N_txt, d)
    key: str = ""
    from_cache: bool = False

    def images(self, ids) -> torch.Tensor:
        return self.image_emb[[self.image_index[i] for i in ids]]

    def texts(self, texts) -> torch.Tensor:
        return self.text_emb[[self.text_index[t] for t in texts]]


def file_fingerprint(paths: list[str]) -> str:
    """Path, size and mtime of every image: any change to an image file changes the key."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(backbone, image_paths: list[str], texts: list[str], image_size: int) -> str:
    ident = backbone.identity()
    preprocess = {"image_size": image_size, "context_length": backbone.context_length}
    image = backbone.image_preprocessing()  # hf: the CLIP folder's processor settings
    if image is not None:
        preprocess["image"] = image
    payload = {
        "backbone": ident["name"], "weights": ident["weights_hash"],
        "images": file_fingerprint(image_paths),
        "texts": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
        "preprocess": preprocess,
        "version": 2,  # 2: the English texts run the last block at the end token only
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


@torch.no_grad()
def encode_images(backbone, images: np.ndarray, device, batch_size: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch_size):
        pixels = backbone.preprocess_images(images[i:i + batch_size]).to(device)
        out.append(backbone.encode_image(pixels).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, backbone.embed_dim)


@torch.no_grad()
def encode_source_texts(backbone, texts: list[str], device, batch_size: int = 512) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), batch_size):
        ids, mask = backbone.tokenize_source(texts[i:i + batch_size])
        out.append(backbone.encode_source_text(ids.to(device), mask.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, backbone.embed_dim)


def _features_inputs(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The images (image_id, image_path) and English texts whose frozen outputs `table` needs."""
    images = table.drop_duplicates(["image_id", "image_path"])[["image_id", "image_path"]]
    if images.image_id.duplicated().any():
        clash = images[images.image_id.duplicated(keep=False)].head(2).image_path.tolist()
        raise FeaturesError(f"image id '{images.image_id[images.image_id.duplicated()].iloc[0]}' names "
                            f"different files ({clash}); image ids must be unique within a corpus")
    texts = sorted(set(table.loc[table.lang == "en", "caption"]) |
                   set(t for t in table.source_caption if t))
    return images, texts


def features_key(backbone, table: pd.DataFrame, image_size: int) -> str:
    """The cache key `frozen_features` uses for `table`, without computing anything."""
    images, texts = _features_inputs(table)
    return cache_key(backbone, images.image_path.tolist(), texts, image_size)


def frozen_features(backbone, table: pd.DataFrame, *, image_size: int, cache_dir: str | Path | None,
                    device: torch.device, use_cache: bool = True) -> FrozenFeatures:
    """r_V for every image of `table` and r_S for every English caption it holds (captions
    with lang 'en' and every non-empty source_caption), cached under a key of the
    backbone weights hash, the image files, the texts and the preprocessing."""
    images, texts = _features_inputs(table)
    key = cache_key(backbone, images.image_path.tolist(), texts, image_size)
    path = Path(cache_dir) / key if cache_dir else None
    image_ids = images.image_id.tolist()
    if use_cache and path is not None and (path / "state.json").exists():
        try:
            tensors, meta = load_state(path)
            if meta.get("kind", "frozen_features") == "frozen_features" and meta.get("key") == key \
                    and meta.get("image_ids") == image_ids and meta.get("texts") == texts:
                log.info("frozen features: cache hit %s", path)
                return FrozenFeatures({i: n for n, i in enumerate(image_ids)}, tensors["image_emb"],
                                      {t: n for n, t in enumerate(texts)}, tensors["text_emb"],
                                      key=key, from_cache=True)
            log.warning("frozen features: cache %s does not match its key; recomputing", path)
        except CheckpointError as err:
            log.warning("frozen features: cache %s unusable (%s); recomputing", path, err)
    backbone.to(device).eval()
    # in chunks: real corpora (CC300K: 300K images x 224 x 224 x 3 bytes = 45 GB) never fit at once
    paths_all, chunk = images.image_path.tolist(), 4096
    image_emb = torch.cat([encode_images(backbone, backbone.read_images(paths_all[i:i + chunk], image_size), device)
                           for i in range(0, len(paths_all), chunk)]) if paths_all \
        else torch.zeros(0, backbone.embed_dim)
    text_emb = encode_source_texts(backbone, texts, device)
    if use_cache and path is not None:
        save_state(path, {"image_emb": image_emb, "text_emb": text_emb},
                   {"kind": "frozen_features", "key": key, "image_ids": image_ids, "texts": texts})
    return FrozenFeatures({i: n for n, i in enumerate(image_ids)}, image_emb,
                          {t: n for n, t in enumerate(texts)}, text_emb, key=key)


# ----------------------------------------------------------------------------- target data

@dataclass
class TargetData:
    """Pre-tokenised target-language training captions with their frozen references."""
    ids: torch.Tensor                 # (N, T_max) multilingual token ids, right-padded
    lengths: torch.Tensor             # (N,) real tokens per caption
    lang_rows: dict[str, torch.Tensor]  # lang -> row indices
    r_S: torch.Tensor                 # (N, d) frozen source-caption embedding
    r_V: torch.Tensor | None          # (N, d) frozen image embedding (cma only)
    key: str = ""                     # fingerprint of the rows and their frozen features

    def batch(self, rows: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad to the batch's longest caption, not to the context length."""
        lengths = self.lengths[rows]
        width = int(lengths.max())
        ids = self.ids[rows, :width]
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        return ids.to(device), mask.to(device)


def training_rows(table: pd.DataFrame, langs: list[str]) -> pd.DataFrame:
    """Target-language training captions that carry their English source caption."""
    rows = table[(table.split == "train") & table.lang.isin(langs) & (table.source_caption != "")]
    if rows.empty:
        raise FeaturesError(f"no training captions for languages {langs} with an English source "
                            "caption; check data.langs and the corpus")
    missing = sorted(set(langs) - set(rows.lang))
    if missing:
        raise FeaturesError(f"no training captions for language(s) {missing} in the corpus")
    return rows.reset_index(drop=True)


def target_data_key(rows: pd.DataFrame, feats_key: str) -> str:
    """What a target stage's data is: its caption rows and the key of their frozen features."""
    lines = (rows.lang + "\t" + rows.caption + "\t" + rows.source_caption + "\t" + rows.image_id.astype(str))
    return fingerprint({"rows": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
                        "features": feats_key})


def make_target_data(backbone, rows: pd.DataFrame, feats: FrozenFeatures, with_images: bool) -> TargetData:
    ids, mask = backbone.tokenize_target(rows.caption.tolist())
    lengths = mask.sum(1)
    lang_rows = {lang: torch.as_tensor(np.flatnonzero(rows.lang.values == lang))
                 for lang in sorted(rows.lang.unique())}
    return TargetData(ids=ids.cpu(), lengths=lengths.cpu(), lang_rows=lang_rows,
                      r_S=feats.texts(rows.source_caption.tolist()),
                      r_V=feats.images(rows.image_id.tolist()) if with_images else None,
                      key=target_data_key(rows, feats.key))
