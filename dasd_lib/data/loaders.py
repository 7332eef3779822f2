"""Loaders into the one caption table (see COLUMNS) and the DASD release layout writer.

Sources: the synthetic generator's folder, the DASD authors' release layout (path JSON
with per-split parallel lists anno_file / feature / name_file / langs; here) and a plain
CSV or JSONL manifest (manifest.py). Bad input raises DataError (or
DataFileNotFoundError) naming the file and the problem; with on_missing="skip", missing
or unreadable images, names without captions and empty captions are dropped instead and
counted in the "dasd_lib.data" log. Shared checks live in table.py, image checks and
reading in image_files.py.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..config import DataConfig
from .errors import DataError, DataFileNotFoundError
from .image_files import check_image_files, load_images
from .manifest import load_manifest
from .synthetic import COLUMNS, generate_corpus
from .table import (SPLITS, VARIANTS, Skips, check_langs, check_test_rows, log_long_captions,
                    long_captions, read_json, resolve, token_lower_bound, validate_table)

__all__ = ["SPLITS", "VARIANTS", "load_corpus", "load_images", "load_manifest", "load_release",
           "long_captions", "token_lower_bound", "validate_table", "write_release_layout"]


# ============================================================================ release layout
def _load_names(path: Path) -> list[str]:
    if not path.is_file():
        raise DataFileNotFoundError(f"name file {path} does not exist")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as err:   # object arrays need pickle: refuse them, they can run code
        raise DataError(f"{path}: cannot read the .npy of image names without pickle ({err}); "
                        f"save it as a string array (np.save(path, np.array(names)))") from err
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: not a valid .npy file ({err})") from err
    if arr.dtype.kind not in "US":
        raise DataError(f"{path}: expected an array of image file names, got dtype {arr.dtype}")
    return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1).tolist()]


def _load_anno(path: Path) -> dict[str, list[str]]:
    data = read_json(path, "annotation file")
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object mapping image file name -> list of captions, "
                        f"got {type(data).__name__}")
    out = {}
    for name, caps in data.items():
        if isinstance(caps, str):
            caps = [caps]
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise DataError(f"{path}: entry {name!r} must be a list of caption strings")
        out[name] = caps
    return out


def _stem(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0]


def load_release(path_json: str | Path, english_json: str | Path = "", *,
                 langs: Sequence[str] | None = None, on_missing: str = "error",
                 corpus: str = "release", check_images: bool = True) -> pd.DataFrame:
    """Read the DASD release layout into the table.

    path_json: {split: {"anno_file": [...], "feature": [...], "name_file": [...],
    "langs": [...], optional "variants": [...]}}; relative paths are relative to the
    path JSON's folder. A name_file entry may also be a list of .npy files (the authors'
    MSCOCO 1K test folds): their names are read in order, fold after fold.
    english_json (optional): image file name -> English captions; it gives English rows
    for splits whose langs lack "en", and the source caption of translated rows (same
    index). Without it, translated rows take their source caption from the split's own
    "en" entries (same index). Variant defaults: train target captions "mt", everything
    else "native". `langs` keeps only those target languages (English stays).
    """
    path_json = Path(path_json)
    skips = Skips(path_json, on_missing)
    spec = read_json(path_json, "path file")
    base = path_json.parent
    if not isinstance(spec, dict) or not spec:
        raise DataError(f"{path_json}: expected a JSON object with splits {list(SPLITS)}")
    english: dict[str, list[str]] = {}
    if english_json:
        english = _load_anno(resolve(english_json, Path.cwd()))
    if langs is not None:
        check_langs(langs, "langs")
    rows: list[dict] = []
    anno_cache: dict[Path, dict] = {}
    for split, entry in spec.items():
        where = f"{path_json} [{split}]"
        if split not in SPLITS:
            raise DataError(f"{where}: unknown split '{split}'; valid: {', '.join(SPLITS)}")
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an object with anno_file, feature, name_file, langs")
        keys = ["anno_file", "feature", "name_file", "langs"]
        lists = {}
        for k in keys + ["variants"]:
            if k not in entry:
                if k == "variants":
                    continue
                raise DataError(f"{where}: missing key '{k}' (need parallel lists {keys})")
            if not isinstance(entry[k], list):
                raise DataError(f"{where}: '{k}' must be a list")
            lists[k] = entry[k]
        lengths = {k: len(v) for k, v in lists.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"{where}: the lists must have the same length, got {lengths}")
        check_langs(lists["langs"], where)
        variants = lists.get("variants") or [
            "mt" if (split == "train" and lang != "en") else "native" for lang in lists["langs"]]
        bad = sorted({str(v) for v in variants} - set(VARIANTS))
        if bad:
            raise DataError(f"{where}: unknown variant(s) {bad}; valid: {', '.join(VARIANTS)}")
        for k, item in enumerate(lists["name_file"]):
            if not (isinstance(item, str) or (isinstance(item, list) and item
                                              and all(isinstance(f, str) for f in item))):
                raise DataError(f"{where}: name_file[{k}] must be a .npy path or a list of them "
                                f"(folds), got {item!r}")
        source_en = english
        if not english:  # the split's own English entries give translated rows their source
            source_en = {}
            for anno_f, lang in zip(lists["anno_file"], lists["langs"]):
                if lang == "en":
                    en_path = resolve(anno_f, base)
                    if en_path not in anno_cache:
                        anno_cache[en_path] = _load_anno(en_path)
                    for name, caps in anno_cache[en_path].items():
                        source_en.setdefault(name, caps)
        split_names: list[str] = []
        for anno_f, feat, name_f, lang, variant in zip(lists["anno_file"], lists["feature"],
                                                       lists["name_file"], lists["langs"], variants):
            if langs is not None and lang != "en" and lang not in langs:
                continue
            anno_path = resolve(anno_f, base)
            name_paths = [resolve(f, base) for f in (name_f if isinstance(name_f, list) else [name_f])]
            name_path = name_paths[0] if len(name_paths) == 1 else \
                f"{name_paths[0]} (+{len(name_paths) - 1} more fold files)"
            if anno_path not in anno_cache:
                anno_cache[anno_path] = _load_anno(anno_path)
            anno = anno_cache[anno_path]
            names = [n for path in name_paths for n in _load_names(path)]
            split_names += names
            image_dir = resolve(feat, base).resolve()
            no_caps = [n for n in names if n not in anno]
            if no_caps:
                skips("name(s) without captions",
                      f"{name_path}: {len(no_caps)} image name(s) have no captions in {anno_path}, "
                      f"e.g. {no_caps[:3]}", n=len(no_caps))
            for name in names:
                if name not in anno:
                    continue
                image_id = _stem(name)
                en_caps = source_en.get(name, [])
                for j, cap in enumerate(anno[name]):
                    if not cap.strip():
                        skips("empty caption(s)", f"{anno_path}: empty caption #{j} for {name!r}")
                        continue
                    src = en_caps[j] if (variant != "native" and lang != "en" and j < len(en_caps)) else ""
                    rows.append({"corpus": corpus, "split": split, "image_id": image_id,
                                 "image_path": str(image_dir / name), "lang": lang,
                                 "caption_id": f"{image_id}:{lang}:{variant}:{j}",
                                 "caption": cap.strip(), "source_caption": src, "variant": variant,
                                 "style": "", "content": ""})
        if english and "en" not in lists["langs"] and lists["feature"]:
            # English rows come from the English JSON for the split's images
            image_dir = resolve(lists["feature"][0], base).resolve()
            for name in dict.fromkeys(split_names):
                image_id = _stem(name)
                for j, cap in enumerate(english.get(name, [])):
                    if cap.strip():
                        rows.append({"corpus": corpus, "split": split, "image_id": image_id,
                                     "image_path": str(image_dir / name), "lang": "en",
                                     "caption_id": f"{image_id}:en:native:{j}", "caption": cap.strip(),
                                     "source_caption": "", "variant": "native", "style": "",
                                     "content": ""})
    df = pd.DataFrame.from_records(rows, columns=COLUMNS)
    if df.empty:
        raise DataError(f"{path_json}: no captions found (check the splits, langs and name files)")
    df = df.drop_duplicates("caption_id")
    if check_images:
        df = check_image_files(df, skips, str(path_json))
    skips.report()
    return validate_table(df, str(path_json))


def write_release_layout(table: pd.DataFrame, out_dir: str | Path, *, copy_images: bool = False) -> Path:
    """Write the table in the DASD release layout; return the path JSON.

    out_dir/path.json, out_dir/english.json, out_dir/annotations/<split>_<lang>[_<variant>].json,
    out_dir/names/<split>.npy. "feature" points at the images' folder (relative to
    out_dir), or at out_dir/images when copy_images or the images live in several folders.
    A "variants" list records native / mt / mt_clean (the authors' files do not have it)."""
    out = Path(out_dir)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "names").mkdir(exist_ok=True)
    table = table.assign(_name=[os.path.basename(p) for p in table["image_path"]])
    clash = table.drop_duplicates("image_path").duplicated("_name")
    if clash.any():
        raise DataError(f"write_release_layout: image file name {table.loc[clash, '_name'].iloc[0]!r} "
                        f"occurs in several folders; the release layout keys captions by file name")
    folders = {os.path.dirname(p) for p in table["image_path"]}
    if copy_images or len(folders) != 1:
        (out / "images").mkdir(exist_ok=True)
        for src, name in table[["image_path", "_name"]].drop_duplicates().itertuples(index=False):
            shutil.copyfile(src, out / "images" / name)
        feature = "images"
    else:
        feature = os.path.relpath(folders.pop(), out.resolve())

    def dump(obj, path: Path):
        path.write_text(json.dumps(obj, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")

    def captions_by_name(rows: pd.DataFrame) -> dict[str, list[str]]:
        rows = rows.assign(_k=rows["caption_id"].str.rsplit(":", n=1).str[-1])
        rows = rows.assign(_k=pd.to_numeric(rows["_k"], errors="coerce")).sort_values(["_name", "_k"], kind="stable")
        return {n: list(g["caption"]) for n, g in rows.groupby("_name", sort=True)}

    spec: dict[str, dict[str, list]] = {}
    for split in [s for s in SPLITS if s in set(table["split"])]:
        part = table[table["split"] == split]
        names = sorted(part["_name"].unique())
        np.save(out / "names" / f"{split}.npy", np.array(names))
        entry: dict[str, list] = {"anno_file": [], "feature": [], "name_file": [], "langs": [], "variants": []}
        for (lang, variant), rows in part.groupby(["lang", "variant"], sort=False):
            fname = f"{split}_{lang}.json" if lang == "en" else f"{split}_{lang}_{variant}.json"
            dump(captions_by_name(rows), out / "annotations" / fname)
            for k, v in (("anno_file", f"annotations/{fname}"), ("feature", feature),
                         ("name_file", f"names/{split}.npy"), ("langs", lang), ("variants", variant)):
                entry[k].append(v)
        spec[split] = entry
    dump(captions_by_name(table[table["lang"] == "en"]), out / "english.json")
    path_json = out / "path.json"
    path_json.write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    return path_json


# ============================================================================ entry point
def load_corpus(cfg: DataConfig) -> pd.DataFrame:
    """The table for a DataConfig: synthetic (generated if missing or stale), release or
    manifest. Only English and cfg.langs are kept. The downstream corpus must have test rows
    in every language of cfg.langs (check_test_rows); captions longer than
    cfg.max_caption_tokens tokens are counted per language in the log (log_long_captions)."""
    check_langs(cfg.langs, "data.langs")
    where = cfg.path
    if cfg.source == "synthetic":
        folder = generate_corpus(cfg)
        where = str(folder / "captions.jsonl")
        table = load_manifest(where, on_missing=cfg.on_missing)
    elif cfg.source == "release":
        if not cfg.path:
            raise DataError("data.path: set it to the release layout's path JSON (data.source is 'release')")
        table = load_release(cfg.path, cfg.english_path, langs=cfg.langs, on_missing=cfg.on_missing,
                             corpus=cfg.name)
    elif cfg.source == "manifest":
        if not cfg.path:
            raise DataError("data.path: set it to the CSV/JSONL manifest (data.source is 'manifest')")
        table = load_manifest(cfg.path, on_missing=cfg.on_missing, corpus=cfg.name)
    else:
        raise DataError(f"data.source: unknown source '{cfg.source}'; valid: synthetic, release, manifest")
    table = table[table["lang"].isin(["en", *cfg.langs])].reset_index(drop=True)
    # the web corpus (corpus: web) is train-only; a synthetic one with n_test 0 has no test split
    if cfg.corpus != "web" and not (cfg.source == "synthetic" and cfg.n_test == 0):
        check_test_rows(table, cfg.langs, where)
    log_long_captions(table, cfg.max_caption_tokens, where)
    return table
