"""What every loader shares: the table's value sets, its validation, skip counting and
small file helpers. Loaders raise DataError (or DataFileNotFoundError) naming the file and
the problem; with on_missing="skip" the items listed in dataset/README.md are dropped
instead and counted in one warning per source on the "dasd_lib.data" log."""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .errors import DataError, DataFileNotFoundError
from .languages import LANGS
from .synthetic import COLUMNS

log = logging.getLogger("dasd_lib.data")

SPLITS = ("train", "val", "test")
VARIANTS = ("native", "mt", "mt_clean")


def check_on_missing(on_missing: str) -> None:
    if on_missing not in ("error", "skip"):
        raise DataError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")


class Skips:
    """Counts what on_missing='skip' dropped, by reason, and logs one line per source."""

    def __init__(self, source: str | Path, on_missing: str):
        check_on_missing(on_missing)
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


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DataFileNotFoundError(f"{what} {path} does not exist")
    try:
        return json.loads(read_utf8(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON ({err.msg} at line {err.lineno}, "
                        f"column {err.colno})") from err
    except RecursionError:
        raise DataError(f"{path}: malformed JSON (nested too deeply to read)") from None


def read_utf8(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 raise DataError with their line number
    (Python's own error gives only a byte offset). A leading byte-order mark is dropped:
    editors on Windows write one, and it would otherwise stick to the first column name."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(f"{path}: not UTF-8 text: line {line}, byte {column} "
                        f"({raw[err.start:err.end]!r}: {err.reason}); save the file as UTF-8 "
                        f"(e.g. iconv -f latin1 -t utf-8)") from err


def resolve(p: str | Path, base: Path) -> Path:
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else base / p


def check_langs(langs: Iterable[str], where: str) -> None:
    bad = sorted({str(lang) for lang in langs} - set(LANGS))
    if bad:
        raise DataError(f"{where}: unknown language code(s) {bad}; valid: {', '.join(LANGS)}")


def validate_table(table: pd.DataFrame, where: str = "table") -> pd.DataFrame:
    """Check the contract columns and values; return the table with columns in order."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; expected {COLUMNS}")
    check_langs(table["lang"].unique(), where)
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
