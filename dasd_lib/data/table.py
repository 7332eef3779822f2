"""What every loader shares: the table's value sets, its validation, skip counting and
small file helpers. Loaders raise DataError (or DataFileNotFoundError) naming the file and
the problem; with on_missing="skip" the items listed in dataset/README.md are dropped
instead and counted in one warning per source on the "dasd_lib.data" log."""
from __future__ import annotations

import json
import logging
import os
import re
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


def check_test_rows(table: pd.DataFrame, langs: Iterable[str], where: str) -> None:
    """The downstream corpus is evaluated on its test split, in every language of data.langs:
    no test rows at all, or none for one language (which would drop out of the averages
    without a word), is an error at load."""
    langs = list(langs)
    test_langs = set(table.loc[table["split"] == "test", "lang"])
    if not test_langs:
        found = ", ".join(f"{s} {n}" for s, n in table["split"].value_counts().sort_index().items())
        raise DataError(f"{where}: no test rows at all (rows per split: {found or 'none'}); the "
                        f"downstream corpus (data section) is evaluated on its test split: add "
                        f"captions with split 'test' (a train-only corpus belongs in the web section)")
    missing = [lang for lang in langs if lang not in test_langs]
    if missing:
        raise DataError(f"{where}: no test rows for language(s) {missing} of data.langs {langs}; "
                        f"every language is evaluated on the test split, and one without test "
                        f"captions would drop out of the averages: add its test captions, or "
                        f"remove it from data.langs")


def _pre_token_counter():
    """A tokenizers.Tokenizer that maps each BERT pre-token to one id (WordLevel, all
    [UNK]): its encodings' lengths are the pre-token counts, computed in batches in Rust.
    Built per call (it holds one word; building it takes microseconds)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=False, lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def token_lower_bounds(captions: list[str]) -> list[int]:
    """A lower bound on each caption's token count for the BERT-style tokenizers (the tiny
    backbone's WordPiece, mBERT): its BERT pre-tokens (words, single punctuation marks, single
    CJK ideographs; WordPiece only splits these further) plus [CLS] and [SEP]. CLIP's BPE
    (English captions with backbone hf) mostly agrees, but reads a run of punctuation as one
    piece, so for it this is an estimate."""
    encodings = _pre_token_counter().encode_batch(list(captions), add_special_tokens=False)
    return [len(e.ids) + 2 for e in encodings]


# a CJK character (a superset of BERT's ranges) or "_" alone | a run of other word
# characters | any other non-space character alone
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff"
_SPLIT_UPPER = re.compile(f"[_{_CJK}]|[^\\W_{_CJK}]+|[^\\w\\s]")


def token_lower_bound(caption: str) -> int:
    """token_lower_bounds for one caption."""
    return token_lower_bounds([caption])[0]


def long_captions(table: pd.DataFrame, max_tokens: int) -> pd.DataFrame:
    """Per language: captions, and how many have more than `max_tokens` tokens by
    token_lower_bounds (the text towers cut those at their context length)."""
    captions = table["caption"].tolist()
    # only captions that could be over are tokenized: _SPLIT_UPPER never finds fewer pieces
    # than BERT's pre-tokenizer (it splits at least wherever BERT does), so the rest cannot be
    # (and never more pieces than characters: the cheap test first)
    check = [i for i, c in enumerate(captions) if len(c) + 2 > max_tokens
             and len(_SPLIT_UPPER.findall(c)) + 2 > max_tokens]
    over = [False] * len(captions)
    for i, n in zip(check, token_lower_bounds([captions[i] for i in check])):
        over[i] = n > max_tokens
    return (table.assign(over_max_tokens=over).groupby("lang", sort=True)
            .agg(captions=("caption", "size"), over_max_tokens=("over_max_tokens", "sum"))
            .astype(int).reset_index())


def log_long_captions(table: pd.DataFrame, max_tokens: int, where: str) -> pd.DataFrame:
    """long_captions, logged in one line (a warning when any caption is over)."""
    counts = long_captions(table, max_tokens)
    detail = ", ".join(f"{r.lang} {r.over_max_tokens} of {r.captions}" for r in counts.itertuples())
    log.log(logging.WARNING if counts["over_max_tokens"].any() else logging.INFO,
            "%s: captions longer than data.max_caption_tokens=%d tokens (lower bound: BERT "
            "pre-tokens + [CLS]/[SEP]), per language: %s; tokenization cuts captions at the "
            "text tower's context length", where, max_tokens, detail)
    return counts
