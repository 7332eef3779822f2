"""What every caption grammar shares: the languages, CaptionError, the parse of an English
caption (EnItem, EnParse: what the translator reads and every grammar renders), the
translator's flaws (Flaw) and the base class of the target-language grammars."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..world import Obj

LANGS = ("en", "de", "fr", "cs", "ja", "zh")
TARGET_LANGS = LANGS[1:]
FLAW_KINDS = ("agreement", "order", "drop", "untranslated", "word_choice")


class CaptionError(ValueError):
    """An English caption the translator cannot read, or an unknown style/language."""


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _join(parts: Sequence[str], sep: str, last: str) -> str:
    """['a', 'b', 'c'] -> 'a, b and c' (with sep=', ', last=' and ')."""
    if len(parts) == 1:
        return parts[0]
    return sep.join(parts[:-1]) + last + parts[-1]


@dataclass(frozen=True)
class EnItem:
    size_word: str      # "large"/"big"/"small"/"little" (the translator keeps the nuance)
    colour: str
    shape: str
    pos: str


@dataclass(frozen=True)
class EnParse:
    frame: str                  # one of EN_FRAMES
    items: tuple[EnItem, ...]   # in the order the caption mentions them
    background: str | None = None


@dataclass(frozen=True)
class Flaw:
    kind: str           # one of FLAW_KINDS
    what: str           # which function word / rule it hits (language specific)
    item: int = -1      # index of the item it hits, -1 for caption-level flaws
    pick: int = 0       # random number for sub-choices (e.g. which wrong ending)

    def hits(self, kind: str, what: str, item: int = -1) -> bool:
        return self.kind == kind and self.what == what and self.item == item


def _has(flaws, kind, what, item=-1) -> Flaw | None:
    for f in flaws:
        if f.hits(kind, what, item):
            return f
    return None


class Grammar:
    """One target language: native styles, MT rendering, flaw options, content forms."""
    code = ""
    styles: tuple[str, ...] = ()

    def native(self, objs: Sequence[Obj], style: str) -> str:
        fn = getattr(self, "_" + style.split(":", 1)[1].replace("-", "_"), None)
        if not style.startswith(self.code + ":") or fn is None or style not in self.styles:
            raise CaptionError(f"unknown {self.code} style '{style}'; valid: {', '.join(self.styles)}")
        return fn(list(objs))

    def flaw_options(self, p: EnParse) -> list[tuple[str, str, int]]:
        raise NotImplementedError

    def mt(self, p: EnParse, flaws: Sequence[Flaw] = ()) -> str:
        raise NotImplementedError

    def inventory(self) -> frozenset[str]:
        raise NotImplementedError

    # shared option builders
    @staticmethod
    def _per_item(p, kind, what):
        return [(kind, what, i) for i in range(len(p.items))]
