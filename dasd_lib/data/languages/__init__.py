"""Caption grammars: English (source), native German/French/Czech/Japanese/Chinese, and an
MT-like translator from English.

Every caption names every object with its size, colour, shape and position, so binding
twins (same attributes, bound differently) are distinguishable from the caption alone.

Native captions are composed from the image content in styles (ids "de:fronted", ...)
that the translator never produces. The translator (`translate`) reads an English
caption, keeps its constituent order (noun phrase, then position; English framing such
as "there is" / "we see" / "a picture with" translated literally) and, with probability
`noise` per caption, adds one or two flaws: wrong agreement, literal word order, dropped
or untranslated function words, odd word choice. Flaws never drop a content word
(shape, colour, size, position, number): they stay translatable.

`content_inventory(lang)` lists every content word form a grammar can produce; it is
what `token_coverage` checks the native test captions against.

One module per language (english, german, french, czech, japanese, chinese) and base
(what they share: CaptionError, the English parse, Flaw, the Grammar class); this
package is the entry point: the grammars by language code (GRAMMARS), native captions,
the translator and the content word forms.
"""
from __future__ import annotations

import random
import re
from typing import Sequence

from ..world import COLOURS as _EN_COLOURS, SHAPES as _EN_SHAPES, Obj
from .base import FLAW_KINDS, LANGS, TARGET_LANGS, CaptionError, EnItem, EnParse, Flaw, Grammar
from .chinese import Chinese
from .czech import Czech
from .english import EN_FRAMES, EN_NUM, EN_SIZE_OF, EN_STYLES, english_caption, parse_english, render_english
from .french import French
from .german import German
from .japanese import Japanese

__all__ = ["EN_FRAMES", "EN_SIZE_OF", "EN_STYLES", "FLAW_KINDS", "GRAMMARS", "LANGS", "MT_STYLES",
           "NATIVE_STYLES", "TARGET_LANGS", "CaptionError", "EnItem", "EnParse", "Flaw", "Grammar",
           "choose_flaws", "content_forms", "content_inventory", "english_caption", "native_caption",
           "parse_english", "render_english", "translate", "word_forms"]

# ============================================================================ API
GRAMMARS: dict[str, Grammar] = {g.code: g for g in (German(), French(), Czech(), Japanese(), Chinese())}
NATIVE_STYLES: dict[str, tuple[str, ...]] = {"en": EN_STYLES} | {k: g.styles for k, g in GRAMMARS.items()}
MT_STYLES = tuple(f"mt:{f}" for f in EN_FRAMES)


def _grammar(lang: str) -> Grammar:
    if lang not in GRAMMARS:
        raise CaptionError(f"unknown target language '{lang}'; valid: {', '.join(TARGET_LANGS)}")
    return GRAMMARS[lang]


def native_caption(objs: Sequence[Obj], lang: str, style: str) -> str:
    """A caption written natively in `lang` (target language) in `style`."""
    return _grammar(lang).native(objs, style)


def choose_flaws(p: EnParse, lang: str, rng: random.Random, noise: float) -> list[Flaw]:
    """With probability `noise`, one flaw (two with probability 0.3) of different kinds."""
    if noise <= 0 or rng.random() >= noise:
        return []
    opts = _grammar(lang).flaw_options(p)
    kinds = sorted({k for k, _, _ in opts})
    chosen = rng.sample(kinds, min(len(kinds), 2 if rng.random() < 0.3 else 1))
    flaws = []
    for kind in chosen:
        kind_opts = [o for o in opts if o[0] == kind]
        k, what, item = kind_opts[rng.randrange(len(kind_opts))]
        flaws.append(Flaw(k, what, item, rng.randrange(1 << 30)))
    return flaws


def translate(english: str, lang: str, rng: random.Random | None = None,
              noise: float = 0.0) -> tuple[str, str, list[Flaw]]:
    """MT-like translation of an English caption of this world into `lang`.

    Returns (caption, style id "mt:<english frame>", flaws applied)."""
    p = parse_english(english)
    flaws = choose_flaws(p, lang, rng or random.Random(0), noise)
    return _grammar(lang).mt(p, flaws), f"mt:{p.frame}", flaws


def content_inventory(lang: str) -> frozenset[str]:
    """Every content word form (lower case) the grammar of `lang` can produce: shapes,
    colours, sizes, positions, numerals and the word for "shape"."""
    if lang == "en":
        return frozenset(set(_EN_SHAPES) | set(_EN_COLOURS) | set(EN_SIZE_OF) | set(EN_NUM.values())
                         | {"left", "right", "top", "bottom", "middle", "shape", "shapes"})
    return _grammar(lang).inventory()


_WORD = re.compile(r"\w+", re.UNICODE)


def word_forms(text: str, lang: str) -> list[str]:
    """Words (lower case) for space-separated languages; characters for ja/zh."""
    if lang in ("ja", "zh"):
        return [c for c in text if c.strip() and _WORD.match(c)]
    return _WORD.findall(text.lower())


def content_forms(text: str, lang: str) -> list[str]:
    """The content word forms in a caption (inventory words; longest match for ja/zh)."""
    inv = content_inventory(lang)
    if lang not in ("ja", "zh"):
        return [w for w in _WORD.findall(text.lower()) if w in inv]
    longest = max(map(len, inv))
    out, i = [], 0
    while i < len(text):
        for k in range(min(longest, len(text) - i), 0, -1):
            if text[i:i + k] in inv:
                out.append(text[i:i + k])
                i += k
                break
        else:
            i += 1
    return out
