"""Loaders into the one caption table (see COLUMNS) and the DASD release layout writer.

Sources: the synthetic generator's folder, the DASD authors' release layout (path JSON
with per-split parallel lists anno_file / feature / name_file / langs) and a plain CSV or
JSONL manifest. Bad input raises DataError (or DataFileNotFoundError) naming the file and
the problem; with on_missing="skip", missing images, names without captions and empty
captions are dropped instead and counted in the "dasd_lib.data" log.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from ..config import DataConfig
from .errors import DataError, DataFileNotFoundError
from .languages import LANGS
from .synthetic import COLUMNS, generate_corpus

log = logging.getLogger("dasd_lib.data")

SPLITS = ("train", "val", "test")
VARIANTS = ("native", "mt", "mt_clean")
_REQUIRED = ("image_path", "lang", "caption", "split")


def _check_on_missing(on_missing: str) -> None:
    if on_missing not in ("error", "skip"):
        raise DataError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")


class _Skips:
    """Counts what on_missing='skip' dropped, by reason, and logs one line per source."""

    def __init__(self, source: str | Path, on_missing: str):
        _check_on_missing(on_missing)
        self.source, self.on_missing = str(source), on_missing
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def __call__(self, reason: str, message: str, n: int = 1) -> None:
        """Raise in 'error' mode; count in 'skip' mode."""
        if self.on_missing == "error":
            raise (DataFileNotFoundError if "image" in reason and "missing" in reason else DataError)(
                f"{message} (set on_missing: skip to drop such items and count them)")
        self.counts[reason] += n
        self.examples.setdefault(reason, message)

    def report(self) -> None:
        if self.counts:
            detail = "; ".join(f"{n} {r} (e.g. {self.examples[r]})" for r, n in self.counts.items())
            log.warning("%s: skipped %d item(s): %s", self.source, sum(self.counts.values()), detail)


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DataFileNotFoundError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON ({err.msg} at line {err.lineno}, "
                        f"column {err.colno})") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from err
    except RecursionError:
        raise DataError(f"{path}: malformed JSON (nested too deeply to read)") from None


def _resolve(p: str | Path, base: Path) -> Path:
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else base / p


def _check_langs(langs: Iterable[str], where: str) -> None:
    bad = sorted({str(lang) for lang in langs} - set(LANGS))
    if bad:
        raise DataError(f"{where}: unknown language code(s) {bad}; valid: {', '.join(LANGS)}")


# ============================================================================ the table
def validate_table(table: pd.DataFrame, where: str = "table") -> pd.DataFrame:
    """Check the contract columns and values; return the table with columns in order."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; expected {COLUMNS}")
    _check_langs(table["lang"].unique(), where)
    for col, valid in (("split", SPLITS), ("variant", VARIANTS)):
        bad = sorted(set(table[col].unique()) - set(valid))
        if bad:
            raise DataError(f"{where}: unknown {col} value(s) {bad}; valid: {', '.join(valid)}")
    empty = table["caption"].str.strip() == ""
    if empty.any():
        raise DataError(f"{where}: {int(empty.sum())} empty caption(s), e.g. caption_id "
                        f"{table.loc[empty, 'caption_id'].iloc[0]!r}")
    dup = table["caption_id"].duplicated()
    if dup.any():
        raise DataError(f"{where}: duplicate caption_id(s), e.g. {table.loc[dup, 'caption_id'].iloc[0]!r}")
    return table[COLUMNS + [c for c in table.columns if c not in COLUMNS]].reset_index(drop=True)


def _drop_missing_images(df: pd.DataFrame, skips: _Skips, where: str) -> pd.DataFrame:
    exists = {p: os.path.isfile(p) for p in df["image_path"].unique()}
    ok = df["image_path"].map(exists).astype(bool)
    if not ok.all():
        lost = sorted(p for p, e in exists.items() if not e)
        skips("missing image(s)", f"{where}: image file {lost[0]} does not exist "
              f"({len(lost)} missing image file(s))", n=int((~ok).sum()))
    return df[ok]


def load_manifest(path: str | Path, *, on_missing: str = "error", corpus: str | None = None,
                  check_images: bool = True) -> pd.DataFrame:
    """A CSV or JSONL manifest with the table's columns (at least image_path, lang, caption,
    split; relative image paths are read relative to the manifest's folder)."""
    path = Path(path)
    skips = _Skips(path, on_missing)
    if not path.is_file():
        raise DataFileNotFoundError(f"manifest {path} does not exist")
    if path.suffix.lower() == ".csv":
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: malformed CSV ({err})") from err
        line_of = lambda i: i + 2  # noqa: E731  (header is line 1)
    elif path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        records = []
        try:
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}: malformed JSON on line {n} ({err.msg}, column {err.colno})") from err
                    except RecursionError:
                        raise DataError(f"{path}: malformed JSON on line {n} (nested too deeply)") from None
                    if not isinstance(rec, dict):
                        raise DataError(f"{path}: line {n} is not a JSON object")
                    rec["_line"] = n
                    records.append(rec)
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text ({err})") from err
        df = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=[*_REQUIRED, "_line"])
        line_of = None
    else:
        raise DataError(f"{path}: manifest must be .csv or .jsonl, got '{path.suffix}'")
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing required column(s) {missing}; "
                        f"a manifest needs {list(_REQUIRED)} (optional: the other table columns)")
    lines = df.pop("_line") if "_line" in df.columns else pd.Series(
        [line_of(i) for i in range(len(df))], index=df.index)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = ""
    # object first: fillna("") on a float column (numbers in JSON) is deprecated in pandas
    df = df.astype(object).fillna("").astype({c: str for c in COLUMNS})
    bad_lang = ~df["lang"].isin(LANGS)
    if bad_lang.any():
        i = bad_lang.idxmax()
        raise DataError(f"{path}: unknown language code(s) {sorted(set(df.loc[bad_lang, 'lang']))} "
                        f"(first on line {lines[i]}); valid: {', '.join(LANGS)}")
    for col, valid in (("split", SPLITS),):
        bad = ~df[col].isin(valid)
        if bad.any():
            i = bad.idxmax()
            raise DataError(f"{path}: unknown {col} {df.loc[i, col]!r} on line {lines[i]}; "
                            f"valid: {', '.join(valid)}")
    df.loc[df["variant"] == "", "variant"] = "native"
    bad = ~df["variant"].isin(VARIANTS)
    if bad.any():
        i = bad.idxmax()
        raise DataError(f"{path}: unknown variant {df.loc[i, 'variant']!r} on line {lines[i]}; "
                        f"valid: {', '.join(VARIANTS)}")
    empty = df["caption"].str.strip() == ""
    if empty.any():
        i = empty.idxmax()
        skips("empty caption(s)", f"{path}: empty caption on line {lines[i]}", n=int(empty.sum()))
        df = df[~empty]
    base = path.parent.resolve()
    df["image_path"] = [str(_resolve(p, base)) for p in df["image_path"]]
    no_id = df["image_id"] == ""
    df.loc[no_id, "image_id"] = [Path(p).stem for p in df.loc[no_id, "image_path"]]
    no_cid = df["caption_id"] == ""
    if no_cid.any():
        k = df.groupby(["image_id", "lang", "variant"]).cumcount().astype(str)
        df.loc[no_cid, "caption_id"] = (df["image_id"] + ":" + df["lang"] + ":" + df["variant"]
                                        + ":" + k)[no_cid]
    if corpus is not None:
        df.loc[df["corpus"] == "", "corpus"] = corpus
    if check_images:
        df = _drop_missing_images(df, skips, str(path))
    skips.report()
    return validate_table(df, str(path))


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
    data = _read_json(path, "annotation file")
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
    skips = _Skips(path_json, on_missing)
    spec = _read_json(path_json, "path file")
    base = path_json.parent
    if not isinstance(spec, dict) or not spec:
        raise DataError(f"{path_json}: expected a JSON object with splits {list(SPLITS)}")
    english: dict[str, list[str]] = {}
    if english_json:
        english = _load_anno(_resolve(english_json, Path.cwd()))
    if langs is not None:
        _check_langs(langs, "langs")
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
        _check_langs(lists["langs"], where)
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
                    en_path = _resolve(anno_f, base)
                    if en_path not in anno_cache:
                        anno_cache[en_path] = _load_anno(en_path)
                    for name, caps in anno_cache[en_path].items():
                        source_en.setdefault(name, caps)
        split_names: list[str] = []
        for anno_f, feat, name_f, lang, variant in zip(lists["anno_file"], lists["feature"],
                                                       lists["name_file"], lists["langs"], variants):
            if langs is not None and lang != "en" and lang not in langs:
                continue
            anno_path = _resolve(anno_f, base)
            name_paths = [_resolve(f, base) for f in (name_f if isinstance(name_f, list) else [name_f])]
            name_path = name_paths[0] if len(name_paths) == 1 else \
                f"{name_paths[0]} (+{len(name_paths) - 1} more fold files)"
            if anno_path not in anno_cache:
                anno_cache[anno_path] = _load_anno(anno_path)
            anno = anno_cache[anno_path]
            names = [n for path in name_paths for n in _load_names(path)]
            split_names += names
            image_dir = _resolve(feat, base).resolve()
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
            image_dir = _resolve(lists["feature"][0], base).resolve()
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
        df = _drop_missing_images(df, skips, str(path_json))
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


# ============================================================================ images
def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB. 16-bit greyscale (I;16*) is scaled to 8 bits first: Pillow's convert
    clips it at 255, which turns all but the darkest pixels white."""
    if im.mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float32)   # (H, W) 0..65535
        im = Image.fromarray(np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8))  # L
    return im.convert("RGB")


def load_images(paths: Sequence[str | Path], size: int, *, on_missing: str = "error",
                return_kept: bool = False):
    """Read images as uint8 RGB (N, size, size, 3), resizing where needed: the shorter
    side to `size` (bicubic), then a centre crop, as CLIP's own preprocessing does, so
    photos keep their aspect ratio (square images are simply resized).

    Missing or unreadable files raise DataError naming the file; with on_missing="skip"
    they are left out and counted in the log, and return_kept=True also returns the
    indices of the paths that were loaded."""
    skips = _Skips("load_images", on_missing)
    out = np.zeros((len(paths), size, size, 3), np.uint8)   # (N, H, W, 3)
    kept = []
    for i, p in enumerate(paths):
        p = Path(p)
        if not p.is_file():
            skips("missing image(s)", f"image file {p} does not exist")
            continue
        try:
            with Image.open(p) as im:
                im = _to_rgb(im)
                if im.size != (size, size):
                    w, h = im.size
                    scale = size / min(w, h)
                    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                    left, top = (nw - size) // 2, (nh - size) // 2
                    im = im.resize((nw, nh), Image.Resampling.BICUBIC).crop(
                        (left, top, left + size, top + size))
                out[len(kept)] = np.asarray(im)
        except Image.DecompressionBombError as err:  # not an OSError: Pillow's size guard
            skips("oversized image(s)", f"image file {p} is too large to decode safely ({err})")
            continue
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            skips("corrupt image(s)", f"image file {p} is corrupt or not an image ({err})")
            continue
        kept.append(i)
    skips.report()
    out = out[:len(kept)]
    return (out, np.array(kept, dtype=np.int64)) if return_kept else out


# ============================================================================ entry point
def load_corpus(cfg: DataConfig) -> pd.DataFrame:
    """The table for a DataConfig: synthetic (generated if missing or stale), release or
    manifest. Only English and cfg.langs are kept."""
    _check_langs(cfg.langs, "data.langs")
    if cfg.source == "synthetic":
        folder = generate_corpus(cfg)
        table = load_manifest(folder / "captions.jsonl", on_missing=cfg.on_missing)
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
    keep = table["lang"].isin(["en", *cfg.langs])
    return table[keep].reset_index(drop=True)
