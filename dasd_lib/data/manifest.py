"""The CSV / JSONL manifest loader (dataset/README.md: the caption table as a file)."""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pandas as pd

from .errors import DataError, DataFileNotFoundError
from .image_files import check_image_files
from .languages import LANGS
from .synthetic import COLUMNS
from .table import SPLITS, VARIANTS, Skips, read_utf8, resolve, validate_table

log = logging.getLogger("dasd_lib.data")

REQUIRED = ("image_path", "lang", "caption", "split")
SOURCE_LANG = "en"


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(io.StringIO(read_utf8(path)), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: malformed CSV ({err})") from err
    return df.assign(_line=range(2, len(df) + 2))  # the header is line 1


def _read_jsonl(path: Path) -> pd.DataFrame:
    records = []
    # split on "\n" only: str.splitlines would also split at U+2028, which JSON strings may hold
    for n, line in enumerate(read_utf8(path).split("\n"), 1):
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
    return pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=[*REQUIRED, "_line"])


def _check_value(df: pd.DataFrame, col: str, valid, path: Path) -> None:
    bad = ~df[col].isin(valid)
    if bad.any():
        i = bad.idxmax()
        raise DataError(f"{path}: unknown {col} {df.loc[i, col]!r} on line {df.loc[i, '_line']}; "
                        f"valid: {', '.join(valid)}")


def _check_one_id_per_image(df: pd.DataFrame, path: Path) -> None:
    """One image file under two image ids would be two gallery entries showing the same
    picture: retrieval could never tell them apart, and each would count as a miss."""
    ids = df.groupby("image_path", sort=False)["image_id"].nunique()
    if (ids > 1).any():
        image = ids.index[(ids > 1).argmax()]
        rows = df[df["image_path"] == image].drop_duplicates("image_id")
        named = ", ".join(f"{i!r} (line {n})" for i, n in zip(rows["image_id"][:3], rows["_line"][:3]))
        raise DataError(f"{path}: image file {image} is listed under {len(rows)} image ids: {named}; "
                        f"give each image file one image_id (or leave image_id empty: it defaults "
                        f"to the file name)")


def _pair_source_captions(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """For a manifest without a source_caption column: every non-English training caption
    takes the English caption of the same image at the same index (the k-th German caption
    of an image gets its k-th English one), as the release loader does. The alignment
    stage (notebook 02) distils from that English caption; rows whose image has no English
    caption stay unpaired and are left out of training, with a count in the log."""
    english = df[(df["lang"] == SOURCE_LANG) & (df["split"] == "train")]
    by_image = english.groupby("image_path", sort=False)["caption"].apply(list).to_dict()
    target = (df["lang"] != SOURCE_LANG) & (df["split"] == "train")
    index = df[target].groupby(["image_path", "lang", "variant"], sort=False).cumcount()
    sources = [by_image.get(p, [])[k] if k < len(by_image.get(p, [])) else ""
               for p, k in zip(df.loc[target, "image_path"], index)]
    df.loc[target, "source_caption"] = sources
    unpaired = int((df.loc[target, "source_caption"] == "").sum())
    paired = int(target.sum()) - unpaired
    if paired:
        log.info("%s: no source_caption column; %d training caption(s) in %s paired with the "
                 "English caption of the same image at the same index", path, paired,
                 ", ".join(sorted(set(df.loc[target, "lang"]))))
    if unpaired:
        log.warning("%s: %d non-English training caption(s) have no English caption of their "
                    "image at the same index to pair with; the alignment stage (notebook 02) "
                    "leaves them out. Add a source_caption column, or English captions of "
                    "those images", path, unpaired)
    return df


def load_manifest(path: str | Path, *, on_missing: str = "error", corpus: str | None = None,
                  check_images: bool = True) -> pd.DataFrame:
    """A CSV or JSONL manifest with the table's columns (at least image_path, lang, caption,
    split; relative image paths are read relative to the manifest's folder). Without a
    source_caption column, translated rows are paired with English ones
    (_pair_source_captions). check_images: every image file must exist and be readable
    (image_files.check_image_files)."""
    path = Path(path)
    skips = Skips(path, on_missing)
    if not path.is_file():
        raise DataFileNotFoundError(f"manifest {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        df = _read_csv(path)
    elif suffix in (".jsonl", ".json", ".ndjson"):
        df = _read_jsonl(path)
    else:
        raise DataError(f"{path}: manifest must be .csv or .jsonl, got '{path.suffix}'")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing required column(s) {missing}; "
                        f"a manifest needs {list(REQUIRED)} (optional: the other table columns)")
    if df.empty:
        raise DataError(f"{path}: the manifest holds no caption rows")
    has_source = "source_caption" in df.columns
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = ""
    # object first: fillna("") on a float column (numbers in JSON) is deprecated in pandas
    df = df.astype(object).fillna("").astype({c: str for c in COLUMNS})
    bad_lang = ~df["lang"].isin(LANGS)
    if bad_lang.any():
        i = bad_lang.idxmax()
        raise DataError(f"{path}: unknown language code(s) {sorted(set(df.loc[bad_lang, 'lang']))} "
                        f"(first on line {df.loc[i, '_line']}); valid: {', '.join(LANGS)}")
    _check_value(df, "split", SPLITS, path)
    df.loc[df["variant"] == "", "variant"] = "native"
    _check_value(df, "variant", VARIANTS, path)
    empty = df["caption"].str.strip() == ""
    if empty.any():
        i = empty.idxmax()
        skips("empty caption(s)", f"{path}: empty caption on line {df.loc[i, '_line']}", n=int(empty.sum()))
        df = df[~empty]
    base = path.parent.resolve()
    # normpath: "imgs/./a.png" and "imgs/a.png" are one file, for the one-id check and the
    # cache; resolved once per file (a corpus has several captions per image)
    absolute = {p: os.path.normpath(resolve(p, base)) for p in df["image_path"].unique()}
    df["image_path"] = df["image_path"].map(absolute)
    no_id = df["image_id"] == ""
    df.loc[no_id, "image_id"] = [Path(p).stem for p in df.loc[no_id, "image_path"]]
    _check_one_id_per_image(df, path)
    if not has_source:
        df = _pair_source_captions(df, path)
    no_cid = df["caption_id"] == ""
    if no_cid.any():
        k = df.groupby(["image_id", "lang", "variant"]).cumcount().astype(str)
        df.loc[no_cid, "caption_id"] = (df["image_id"] + ":" + df["lang"] + ":" + df["variant"]
                                        + ":" + k)[no_cid]
    if corpus is not None:
        df.loc[df["corpus"] == "", "corpus"] = corpus
    if check_images:
        df = check_image_files(df, skips, str(path))
    skips.report()
    return validate_table(df.drop(columns="_line"), str(path))
