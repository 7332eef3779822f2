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
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Sequence

from .world import COLOURS as _EN_COLOURS, SHAPES as _EN_SHAPES, Obj

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


# ============================================================================ English
EN_SIZE_WORDS = {"large": ("large", "big"), "small": ("small", "little")}
EN_SIZE_OF = {w: s for s, ws in EN_SIZE_WORDS.items() for w in ws}
EN_POS = {"left": "on the left", "right": "on the right", "top": "at the top",
          "bottom": "at the bottom", "middle": "in the middle"}
EN_NUM = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
EN_FRAMES = ("plain", "there", "with", "count", "see")
EN_STYLES = tuple(f"en:{f}" for f in EN_FRAMES)
EN_BG = {"striped": "striped", "checkered": "checkered", "dotted": "dotted"}
_EN_FRAME_PREFIX = {"plain": "", "there": "there is ", "with": "a picture with ", "see": "we see "}


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


def render_english(p: EnParse) -> str:
    items = [f"a {it.size_word} {it.colour} {it.shape} {EN_POS[it.pos]}" for it in p.items]
    body = _join(items, ", ", " and ")
    if p.frame == "count":
        n = len(p.items)
        head = f"{EN_NUM[n]} shape{'s' if n > 1 else ''}: "
    else:
        head = _EN_FRAME_PREFIX[p.frame]
    tail = f", on a {EN_BG[p.background]} background" if p.background else ""
    return _cap(head + body + tail) + "."


def english_caption(objs: Sequence[Obj], style: str, rng: random.Random,
                    background: str | None = None) -> str:
    """English caption of `objs` (in mention order) in style 'en:<frame>'."""
    frame = style.split(":", 1)[1] if style.startswith("en:") else style
    if frame not in EN_FRAMES:
        raise CaptionError(f"unknown English style '{style}'; valid: {', '.join(EN_STYLES)}")
    items = tuple(EnItem(rng.choice(EN_SIZE_WORDS[o.size]), o.colour, o.shape, o.pos)
                  for o in objs)
    return render_english(EnParse(frame, items, background))


_EN_ITEM = re.compile(r"^an? (large|big|small|little) (\w+) (\w+) "
                      r"(on the left|on the right|at the top|at the bottom|in the middle)$")
_EN_POS_OF = {v: k for k, v in EN_POS.items()}
_EN_NUM_OF = {v: k for k, v in EN_NUM.items()}


def parse_english(text: str) -> EnParse:
    """Read an English caption of this world back into frame + items (the translator's
    input). Raises CaptionError naming the part it could not read."""
    s = text.strip().rstrip(".")
    s = s[:1].lower() + s[1:]
    background = None
    m = re.search(r", on an? (\w+) background$", s)
    if m:
        background = {v: k for k, v in EN_BG.items()}.get(m.group(1))
        if background is None:
            raise CaptionError(f"unknown background '{m.group(1)}' in caption {text!r}")
        s = s[:m.start()]
    frame = "plain"
    m = re.match(r"^(one|two|three|four|five) shapes?: ", s)
    if m:
        frame, s = "count", s[m.end():]
    else:
        for f, prefix in _EN_FRAME_PREFIX.items():
            if prefix and s.startswith(prefix):
                frame, s = f, s[len(prefix):]
                break
    items = []
    for part in re.split(r", | and ", s):
        m = _EN_ITEM.match(part)
        if not m or m.group(2) not in _EN_COLOURS or m.group(3) not in _EN_SHAPES:
            raise CaptionError(f"cannot translate {part!r} in caption {text!r}")
        items.append(EnItem(m.group(1), m.group(2), m.group(3), _EN_POS_OF[m.group(4)]))
    return EnParse(frame, tuple(items), background)



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


# ============================================================================ base class
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


# ============================================================================ German
DE_NOUNS = {  # gender, nominative/accusative singular, dative singular, plural
    "circle": ("m", "Kreis", "Kreis", "Kreise"),
    "square": ("n", "Quadrat", "Quadrat", "Quadrate"),
    "triangle": ("n", "Dreieck", "Dreieck", "Dreiecke"),
    "star": ("m", "Stern", "Stern", "Sterne"),
    "heart": ("n", "Herz", "Herzen", "Herzen"),   # weak-ish noun: dative "dem Herzen"
    "ellipse": ("f", "Ellipse", "Ellipse", "Ellipsen"),
}
DE_ADJ = {"large": "groß", "small": "klein", "red": "rot", "green": "grün", "blue": "blau",
          "yellow": "gelb", "white": "weiß", "black": "schwarz"}
# (case, gender) -> (article, adjective ending): mixed declension after "ein" ...
DE_INDEF = {("nom", "m"): ("ein", "er"), ("acc", "m"): ("einen", "en"), ("dat", "m"): ("einem", "en"),
            ("nom", "n"): ("ein", "es"), ("acc", "n"): ("ein", "es"), ("dat", "n"): ("einem", "en"),
            ("nom", "f"): ("eine", "e"), ("acc", "f"): ("eine", "e"), ("dat", "f"): ("einer", "en")}
# ... and weak declension after the definite article
DE_DEF = {("nom", "m"): ("der", "e"), ("acc", "m"): ("den", "en"), ("dat", "m"): ("dem", "en"),
          ("nom", "n"): ("das", "e"), ("acc", "n"): ("das", "e"), ("dat", "n"): ("dem", "en"),
          ("nom", "f"): ("die", "e"), ("acc", "f"): ("die", "e"), ("dat", "f"): ("der", "en")}
DE_POS = {"left": "links", "right": "rechts", "top": "oben", "bottom": "unten",
          "middle": "in der Mitte"}
# literal renderings of the English position idioms (the translator's odd word choice)
DE_POS_ODD = {"left": "auf der linken Seite", "right": "auf der rechten Seite",
              "top": "an der Spitze", "bottom": "am Boden", "middle": "im Zentrum"}
DE_NUM = {1: "eine", 2: "zwei", 3: "drei", 4: "vier", 5: "fünf"}
DE_BG = {"striped": "gestreiften", "checkered": "karierten", "dotted": "gepunkteten"}


class German(Grammar):
    code = "de"
    styles = ("de:fronted", "de:befindet", "de:definite", "de:count")

    @staticmethod
    def np(o: Obj | EnItem, case: str, definite: bool = False, agree: tuple | None = None,
           article: str | None = None) -> str:
        gender, nom, dat, _ = DE_NOUNS[o.shape]
        size = o.size if isinstance(o, Obj) else EN_SIZE_OF[o.size_word]
        art, end = (DE_DEF if definite else DE_INDEF)[agree or (case, gender)]
        noun = dat if case == "dat" else nom
        words = [art if article is None else article,
                 DE_ADJ[size] + end, DE_ADJ[o.colour] + end, noun]
        return " ".join(w for w in words if w)

    # --- native styles
    def _fronted(self, objs):
        # adverb first, verb second: "Links gibt es einen großen roten Kreis ..." (accusative)
        parts = [f"{DE_POS[objs[0].pos]} gibt es {self.np(objs[0], 'acc')}"]
        parts += [f"{DE_POS[o.pos]} {self.np(o, 'acc')}" for o in objs[1:]]
        return _cap(_join(parts, ", ", " und ")) + "."

    def _befindet(self, objs):
        parts = [f"{self.np(objs[0], 'nom')} befindet sich {DE_POS[objs[0].pos]}"]
        parts += [f"{self.np(o, 'nom')} {DE_POS[o.pos]}" for o in objs[1:]]
        return _cap(_join(parts, ", ", " und ")) + "."

    def _definite(self, objs):
        parts = [f"{self.np(objs[0], 'nom', definite=True)} ist {DE_POS[objs[0].pos]}"]
        parts += [f"{self.np(o, 'nom', definite=True)} {DE_POS[o.pos]}" for o in objs[1:]]
        return _cap(_join(parts, ", ", " und ")) + "."

    def _count(self, objs):
        n = len(objs)
        head = f"Zu sehen {'ist' if n == 1 else 'sind'} {DE_NUM[n]} {'Form' if n == 1 else 'Formen'}: "
        parts = [f"{DE_POS[o.pos]} {self.np(o, 'nom')}" for o in objs]
        return head + _join(parts, ", ", " und ") + "."

    # --- MT
    def flaw_options(self, p):
        n, f = len(p.items), p.frame
        opts = self._per_item(p, "agreement", "np") + self._per_item(p, "drop", "article")
        opts += self._per_item(p, "untranslated", "article") + self._per_item(p, "word_choice", "pos")
        if f == "there":
            opts += [("drop", "es", -1), ("word_choice", "frame", -1)]
        if f in ("with", "see"):
            opts += [("word_choice", "frame", -1)]
        if f == "with":
            opts += [("untranslated", "with", -1)]
        if n > 1:
            opts += [("untranslated", "conj", -1), ("word_choice", "conj", -1)]
        return opts

    def mt(self, p, flaws=()):
        n = len(p.items)
        case = {"plain": "nom", "there": "acc", "with": "dat", "count": "nom", "see": "acc"}[p.frame]
        odd_frame = _has(flaws, "word_choice", "frame")
        head = {
            "plain": "",
            "there": ("da ist " if odd_frame else "gibt " if _has(flaws, "drop", "es") else "es gibt "),
            "with": ("ein Foto " if odd_frame else "ein Bild ")
                    + ("with " if _has(flaws, "untranslated", "with") else "mit "),
            "count": f"{DE_NUM[n]} {'Form' if n == 1 else 'Formen'}: ",
            "see": "wir schauen " if odd_frame else "wir sehen ",
        }[p.frame]
        parts = []
        for i, it in enumerate(p.items):
            gender = DE_NOUNS[it.shape][0]
            agree, article = None, None
            if f := _has(flaws, "agreement", "np", i):
                wrong = [k for k, v in DE_INDEF.items() if v != DE_INDEF[(case, gender)]]
                agree = wrong[f.pick % len(wrong)]
            if _has(flaws, "drop", "article", i):
                article = ""
            elif _has(flaws, "untranslated", "article", i):
                article = "a"
            pos = DE_POS_ODD[it.pos] if _has(flaws, "word_choice", "pos", i) else DE_POS[it.pos]
            parts.append(f"{self.np(it, case, agree=agree, article=article)} {pos}")
        conj = (" and " if _has(flaws, "untranslated", "conj")
                else " sowie " if _has(flaws, "word_choice", "conj") else " und ")
        tail = f", auf einem {DE_BG[p.background]} Hintergrund" if p.background else ""
        return _cap(head + _join(parts, ", ", conj) + tail) + "."

    def inventory(self):
        forms = {w.lower() for _, a, b, c in DE_NOUNS.values() for w in (a, b, c)}
        forms |= {a + e for a in DE_ADJ.values() for e in ("e", "er", "es", "en")}
        forms |= {"links", "rechts", "oben", "unten", "mitte", "form", "formen"}
        forms |= set(DE_NUM.values())
        return frozenset(forms)


# ============================================================================ French
FR_NOUNS = {"circle": ("m", "cercle"), "square": ("m", "carré"), "triangle": ("m", "triangle"),
            "star": ("f", "étoile"), "heart": ("m", "cœur"), "ellipse": ("f", "ellipse")}
FR_COLOUR = {"red": ("rouge", "rouge"), "green": ("vert", "verte"), "blue": ("bleu", "bleue"),
             "yellow": ("jaune", "jaune"), "white": ("blanc", "blanche"), "black": ("noir", "noire")}
FR_SIZE = {"large": ("grand", "grande"), "small": ("petit", "petite")}   # placed before the noun
FR_POS = {"left": "à gauche", "right": "à droite", "top": "en haut", "bottom": "en bas",
          "middle": "au milieu"}
FR_POS_ODD = {"left": "sur la gauche", "right": "sur la droite", "top": "au sommet",
              "bottom": "au fond", "middle": "dans le centre"}
FR_NUM = {1: "une", 2: "deux", 3: "trois", 4: "quatre", 5: "cinq"}
FR_BG = {"striped": "rayé", "checkered": "à carreaux", "dotted": "à pois"}
_VOWEL = tuple("aeiouyhéèêàâîôûœAEIOUYHÉ")


def _fr_article(definite: bool, gender: str, nxt: str) -> str:
    if definite:
        if nxt.startswith(_VOWEL):
            return "l'"          # elision: l'étoile, l'image
        return "le " if gender == "m" else "la "
    return "un " if gender == "m" else "une "


class French(Grammar):
    code = "fr"
    styles = ("fr:se-trouve", "fr:situe", "fr:on-voit", "fr:count")

    @staticmethod
    def np(o: Obj | EnItem, definite: bool = False, art_gender: str | None = None,
           size_gender: str | None = None, colour_gender: str | None = None,
           colour_first: bool = False, article: str | None = None) -> str:
        gender, noun = FR_NOUNS[o.shape]
        size = o.size if isinstance(o, Obj) else EN_SIZE_OF[o.size_word]
        gi = lambda g: 0 if (g or gender) == "m" else 1  # noqa: E731
        sz = FR_SIZE[size][gi(size_gender)]
        col = FR_COLOUR[o.colour][gi(colour_gender)]
        core = f"{sz} {col} {noun}" if colour_first else f"{sz} {noun} {col}"
        if article is None:
            article = _fr_article(definite, art_gender or gender, core)
        return article + core

    def _se_trouve(self, objs):
        # inversion after a fronted position: "À gauche se trouve un grand cercle rouge"
        parts = [f"{FR_POS[objs[0].pos]} se trouve {self.np(objs[0])}"]
        parts += [f"{FR_POS[o.pos]} {self.np(o)}" for o in objs[1:]]
        return _cap(_join(parts, ", ", " et ")) + "."

    def _situe(self, objs):
        # the participle agrees with the subject: "situé" / "située"
        parts = [f"{self.np(o, definite=True)} est {'situé' if FR_NOUNS[o.shape][0] == 'm' else 'située'} "
                 f"{FR_POS[o.pos]}" for o in objs]
        return _cap(_join(parts, ", ", " et ")) + "."

    def _on_voit(self, objs):
        parts = [f"{FR_POS[o.pos]} {self.np(o)}" for o in objs]
        return "On voit " + _join(parts, ", ", " et ") + "."

    def _count(self, objs):
        n = len(objs)
        parts = [f"{FR_POS[o.pos]} {self.np(o)}" for o in objs]
        return f"Il y a {FR_NUM[n]} forme{'s' if n > 1 else ''} : " + _join(parts, ", ", " et ") + "."

    def flaw_options(self, p):
        opts = self._per_item(p, "agreement", "article") + self._per_item(p, "agreement", "size")
        opts += [("agreement", "colour", i) for i, it in enumerate(p.items)
                 if FR_COLOUR[it.colour][0] != FR_COLOUR[it.colour][1]]
        opts += self._per_item(p, "order", "colour-first") + self._per_item(p, "drop", "article")
        opts += self._per_item(p, "untranslated", "article") + self._per_item(p, "word_choice", "pos")
        if p.frame in ("there", "with", "see"):
            opts += [("word_choice", "frame", -1)]
        if p.frame == "with":
            opts += [("untranslated", "with", -1)]
        if len(p.items) > 1:
            opts += [("untranslated", "conj", -1), ("word_choice", "conj", -1)]
        return opts

    def mt(self, p, flaws=()):
        n = len(p.items)
        odd = _has(flaws, "word_choice", "frame")
        head = {
            "plain": "",
            "there": "là est " if odd else "il y a ",
            "with": ("une photo " if odd else "une image ")
                    + ("with " if _has(flaws, "untranslated", "with") else "avec "),
            "count": f"{FR_NUM[n]} forme{'s' if n > 1 else ''} : ",
            "see": "nous regardons " if odd else "nous voyons ",
        }[p.frame]
        flip = {"m": "f", "f": "m"}
        parts = []
        for i, it in enumerate(p.items):
            g = FR_NOUNS[it.shape][0]
            kw = {}
            if _has(flaws, "agreement", "article", i):
                kw["art_gender"] = flip[g]
            if _has(flaws, "agreement", "size", i):
                kw["size_gender"] = flip[g]
            if _has(flaws, "agreement", "colour", i):
                kw["colour_gender"] = flip[g]
            if _has(flaws, "order", "colour-first", i):
                kw["colour_first"] = True   # literal English order: "un grand rouge cercle"
            if _has(flaws, "drop", "article", i):
                kw["article"] = ""
            elif _has(flaws, "untranslated", "article", i):
                kw["article"] = "a "
            pos = FR_POS_ODD[it.pos] if _has(flaws, "word_choice", "pos", i) else FR_POS[it.pos]
            parts.append(f"{self.np(it, **kw)} {pos}")
        conj = (" and " if _has(flaws, "untranslated", "conj")
                else " ainsi que " if _has(flaws, "word_choice", "conj") else " et ")
        tail = f", sur un fond {FR_BG[p.background]}" if p.background else ""
        return _cap(head + _join(parts, ", ", conj) + tail) + "."

    def inventory(self):
        forms = {n for _, n in FR_NOUNS.values()} | {n + "s" for _, n in FR_NOUNS.values()}
        forms |= {w for pair in list(FR_COLOUR.values()) + list(FR_SIZE.values()) for w in pair}
        forms |= {"gauche", "droite", "haut", "bas", "milieu", "forme", "formes"}
        forms |= {FR_NUM[k] for k in (2, 3, 4, 5)}
        return frozenset(forms)


# ============================================================================ Czech
CS_NOUNS = {  # gender, nominative, accusative, instrumental (singular)
    "circle": ("m", "kruh", "kruh", "kruhem"),
    "square": ("m", "čtverec", "čtverec", "čtvercem"),
    "triangle": ("m", "trojúhelník", "trojúhelník", "trojúhelníkem"),
    "star": ("f", "hvězda", "hvězdu", "hvězdou"),
    "heart": ("n", "srdce", "srdce", "srdcem"),
    "ellipse": ("f", "elipsa", "elipsu", "elipsou"),
}
CS_ADJ = {"large": "velk", "small": "mal", "red": "červen", "green": "zelen", "blue": "modr",
          "yellow": "žlut", "white": "bíl", "black": "čern"}
# hard adjective endings by (case, gender); masculine nouns here are inanimate
CS_END = {("nom", "m"): "ý", ("acc", "m"): "ý", ("ins", "m"): "ým",
          ("nom", "f"): "á", ("acc", "f"): "ou", ("ins", "f"): "ou",
          ("nom", "n"): "é", ("acc", "n"): "é", ("ins", "n"): "ým"}
CS_POS = {"left": "vlevo", "right": "vpravo", "top": "nahoře", "bottom": "dole",
          "middle": "uprostřed"}
CS_POS_ODD = {"left": "na levé straně", "right": "na pravé straně", "top": "na vrcholu",
              "bottom": "na dně", "middle": "ve středu"}
CS_NUM = {1: "jeden", 2: "dva", 3: "tři", 4: "čtyři", 5: "pět"}
CS_BG = {"striped": "pruhovaném", "checkered": "kostkovaném", "dotted": "puntíkovaném"}


def cs_count_phrase(n: int) -> str:
    """Numeral + 'tvar' (shape): 1 nominative singular, 2-4 nominative plural, 5+ genitive plural."""
    noun = "tvar" if n == 1 else "tvary" if n <= 4 else "tvarů"
    return f"{CS_NUM[n]} {noun}"


class Czech(Grammar):
    code = "cs"
    styles = ("cs:fronted", "cs:nachazi", "cs:count", "cs:zachycuje")

    @staticmethod
    def np(o: Obj | EnItem, case: str, agree: tuple | None = None) -> str:
        gender = CS_NOUNS[o.shape][0]
        size = o.size if isinstance(o, Obj) else EN_SIZE_OF[o.size_word]
        end = CS_END[agree or (case, gender)]
        noun = CS_NOUNS[o.shape][{"nom": 1, "acc": 2, "ins": 3}[case]]
        return f"{CS_ADJ[size]}{end} {CS_ADJ[o.colour]}{end} {noun}"

    def _fronted(self, objs):
        parts = [f"{CS_POS[objs[0].pos]} je {self.np(objs[0], 'nom')}"]
        parts += [f"{CS_POS[o.pos]} {self.np(o, 'nom')}" for o in objs[1:]]
        return _cap(_join(parts, ", ", " a ")) + "."

    def _nachazi(self, objs):
        parts = [f"{self.np(objs[0], 'nom')} se nachází {CS_POS[objs[0].pos]}"]
        parts += [f"{self.np(o, 'nom')} {CS_POS[o.pos]}" for o in objs[1:]]
        return _cap(_join(parts, ", ", " a ")) + "."

    def _count(self, objs):
        n = len(objs)
        verb = "jsou" if 2 <= n <= 4 else "je"   # 5+ takes a singular verb + genitive plural
        parts = [f"{CS_POS[o.pos]} {self.np(o, 'nom')}" for o in objs]
        return f"Na obrázku {verb} {cs_count_phrase(n)}: " + _join(parts, ", ", " a ") + "."

    def _zachycuje(self, objs):
        parts = [f"{CS_POS[o.pos]} {self.np(o, 'acc')}" for o in objs]
        return "Obrázek zachycuje " + _join(parts, ", ", " a ") + "."

    def flaw_options(self, p):
        opts = self._per_item(p, "agreement", "adj") + self._per_item(p, "word_choice", "pos")
        if p.frame == "there":
            opts += [("drop", "tam", -1), ("untranslated", "tam", -1), ("word_choice", "frame", -1)]
        if p.frame == "with":
            opts += [("drop", "s", -1), ("untranslated", "with", -1), ("word_choice", "frame", -1)]
        if p.frame == "see":
            opts += [("word_choice", "frame", -1)]
        if len(p.items) > 1:
            opts += [("drop", "conj", -1), ("untranslated", "conj", -1), ("word_choice", "conj", -1)]
        return opts

    def mt(self, p, flaws=()):
        n = len(p.items)
        case = {"plain": "nom", "there": "nom", "with": "ins", "count": "nom", "see": "acc"}[p.frame]
        odd = _has(flaws, "word_choice", "frame")
        parts = []
        for i, it in enumerate(p.items):
            agree = None
            if f := _has(flaws, "agreement", "adj", i):
                right = CS_END[(case, CS_NOUNS[it.shape][0])]
                wrong = [k for k, v in CS_END.items() if v != right]
                agree = wrong[f.pick % len(wrong)]
            pos = CS_POS_ODD[it.pos] if _has(flaws, "word_choice", "pos", i) else CS_POS[it.pos]
            parts.append(f"{self.np(it, case, agree)} {pos}")
        if p.frame == "with":
            first = parts[0]
            prep = "" if _has(flaws, "drop", "s") else "with " if _has(flaws, "untranslated", "with") \
                else ("se " if first[0] in "szšž" else "s ")
            head = ("obraz " if odd else "obrázek ") + prep
        else:
            tam = "" if _has(flaws, "drop", "tam") else "there " if _has(flaws, "untranslated", "tam") \
                else "tam "
            head = {
                "plain": "",
                "there": "existuje " if odd else "je " + tam,
                "count": f"{cs_count_phrase(n)}: ",
                "see": "my vidíme " if odd else "vidíme ",
            }[p.frame]
        conj = (", " if _has(flaws, "drop", "conj") else " and " if _has(flaws, "untranslated", "conj")
                else " a také " if _has(flaws, "word_choice", "conj") else " a ")
        tail = f", na {CS_BG[p.background]} pozadí" if p.background else ""
        return _cap(head + _join(parts, ", ", conj) + tail) + "."

    def inventory(self):
        forms = {w for _, a, b, c in CS_NOUNS.values() for w in (a, b, c)}
        forms |= {a + e for a in CS_ADJ.values() for e in set(CS_END.values())}
        forms |= set(CS_POS.values()) | set(CS_NUM.values()) | {"tvar", "tvary", "tvarů"}
        return frozenset(forms)


# ============================================================================ Japanese
JA_SHAPE = {"circle": "丸", "square": "四角", "triangle": "三角", "star": "星",
            "heart": "ハート", "ellipse": "楕円"}
JA_COLOUR = {"red": "赤い", "green": "緑の", "blue": "青い", "yellow": "黄色い",
             "white": "白い", "black": "黒い"}
# attributive size forms: 大きな/小さな (natural in running text), 大きい/小さい (plain)
JA_SIZE_NA = {"large": "大きな", "small": "小さな"}
JA_SIZE_I = {"large": "大きい", "small": "小さい"}
JA_SIZE_MT = {"large": "大きい", "big": "大きな", "small": "小さい", "little": "小さな"}
JA_POS = {"left": "左", "right": "右", "top": "上", "bottom": "下", "middle": "真ん中"}
JA_POS_ODD = {"left": "左側", "right": "右側", "top": "トップ", "bottom": "底", "middle": "中間"}
JA_COUNT = {1: "一つ", 2: "二つ", 3: "三つ", 4: "四つ", 5: "五つ"}   # native counter つ
JA_WRONG_COUNTER = ("一匹の", "一本の", "一枚の")   # animal / long / flat counters: wrong here
JA_BG = {"striped": "縞模様の", "checkered": "チェック柄の", "dotted": "水玉模様の"}


class Japanese(Grammar):
    code = "ja"
    styles = ("ja:ni-ga", "ja:wa", "ja:count", "ja:no")

    @staticmethod
    def np(o: Obj, plain_size: bool = False) -> str:
        size = (JA_SIZE_I if plain_size else JA_SIZE_NA)[o.size]
        return f"{size}{JA_COLOUR[o.colour]}{JA_SHAPE[o.shape]}"

    def _ni_ga(self, objs):
        # location に, subject が, "あり" joins clauses, "あります" ends the sentence
        clauses = [f"{JA_POS[o.pos]}に{self.np(o)}があり" for o in objs]
        return "、".join(clauses) + "ます。"

    def _wa(self, objs):
        # topic は per object; the shared verb comes once at the end
        return "、".join(f"{self.np(o)}は{JA_POS[o.pos]}に" for o in objs) + "あります。"

    def _count(self, objs):
        parts = "、".join(f"{JA_POS[o.pos]}に{self.np(o, plain_size=True)}" for o in objs)
        return f"図形が{JA_COUNT[len(objs)]}あります：{parts}。"

    def _no(self, objs):
        return "と、".join(f"{JA_POS[o.pos]}の{self.np(o)}" for o in objs) + "が描かれています。"

    def flaw_options(self, p):
        opts = self._per_item(p, "agreement", "particle") + self._per_item(p, "agreement", "counter")
        opts += self._per_item(p, "drop", "particle") + self._per_item(p, "drop", "ni")
        opts += self._per_item(p, "drop", "article") + self._per_item(p, "untranslated", "article")
        opts += self._per_item(p, "word_choice", "pos")
        if p.frame in ("with", "see"):
            opts += [("word_choice", "frame", -1)]
        if p.frame == "with":
            opts += [("untranslated", "with", -1)]
        if len(p.items) > 1:
            opts += [("untranslated", "conj", -1), ("word_choice", "conj", -1)]
        return opts

    def mt(self, p, flaws=()):
        n = len(p.items)
        particle = "を" if p.frame == "see" else "が"
        odd = _has(flaws, "word_choice", "frame")
        parts = []
        for i, it in enumerate(p.items):
            art = "一つの"       # the literal "a" of the English noun phrase
            if f := _has(flaws, "agreement", "counter", i):
                art = JA_WRONG_COUNTER[f.pick % len(JA_WRONG_COUNTER)]
            if _has(flaws, "drop", "article", i):
                art = ""
            elif _has(flaws, "untranslated", "article", i):
                art = "a "
            prt = particle
            if _has(flaws, "agreement", "particle", i):
                prt = "が" if particle == "を" else "を"
            if _has(flaws, "drop", "particle", i):
                prt = " "
            ni = "" if _has(flaws, "drop", "ni", i) else "に"
            pos = JA_POS_ODD[it.pos] if _has(flaws, "word_choice", "pos", i) else JA_POS[it.pos]
            np = f"{JA_SIZE_MT[it.size_word]}{JA_COLOUR[it.colour]}{JA_SHAPE[it.shape]}"
            parts.append(f"{art}{np}{prt}{pos}{ni}")
        conj = ("、and " if _has(flaws, "untranslated", "conj")
                else "、および" if _has(flaws, "word_choice", "conj") else "、そして")
        body = _join(parts, "、", conj)
        if p.background:
            body += f"、一つの{JA_BG[p.background]}背景の上に"
        if p.frame == "plain":
            return body + "。"
        if p.frame == "there":
            return "そこに" + body + "あります。"
        if p.frame == "with":
            w = "with" if _has(flaws, "untranslated", "with") else "と一緒に"
            return ("写真" if odd else "絵") + w + "、" + body + "。"
        if p.frame == "count":
            return f"{JA_COUNT[n]}の図形：" + body + "。"
        return ("私たちは観察します、" if odd else "私たちは見ます、") + body + "。"

    def inventory(self):
        forms = set(JA_SHAPE.values()) | {"赤い", "緑", "青い", "黄色い", "白い", "黒い"}
        forms |= set(JA_SIZE_NA.values()) | set(JA_SIZE_I.values())
        forms |= set(JA_POS.values()) | set(JA_COUNT.values()) | {"図形"}
        return frozenset(forms)


# ============================================================================ Chinese
ZH_SHAPE = {"circle": ("圆形", "个"), "square": ("正方形", "个"), "triangle": ("三角形", "个"),
            "star": ("星星", "颗"), "heart": ("爱心", "颗"), "ellipse": ("椭圆", "个")}
ZH_COLOUR = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色",
             "white": "白色", "black": "黑色"}
ZH_SIZE = {"large": "大", "small": "小"}
ZH_POS = {"left": "左边", "right": "右边", "top": "上面", "bottom": "下面", "middle": "中间"}
ZH_POS_ODD = {"left": "左侧", "right": "右侧", "top": "顶部", "bottom": "底部", "middle": "中央"}
# numerals before a measure word: 两 (not 二) for two
ZH_NUM = {1: "一", 2: "两", 3: "三", 4: "四", 5: "五"}
ZH_BG = {"striped": "条纹", "checkered": "格子", "dotted": "圆点"}


class Chinese(Grammar):
    code = "zh"
    styles = ("zh:you", "zh:zai", "zh:count", "zh:list")

    @staticmethod
    def np(o: Obj) -> str:
        # native order: colour + 的 + size + noun ("红色的大圆形")
        return f"{ZH_COLOUR[o.colour]}的{ZH_SIZE[o.size]}{ZH_SHAPE[o.shape][0]}"

    def _you(self, objs):
        return "，".join(f"{ZH_POS[o.pos]}有一{ZH_SHAPE[o.shape][1]}{self.np(o)}" for o in objs) + "。"

    def _zai(self, objs):
        return "，".join(f"{self.np(o)}在{ZH_POS[o.pos]}" for o in objs) + "。"

    def _count(self, objs):
        parts = "，".join(f"{ZH_POS[o.pos]}是一{ZH_SHAPE[o.shape][1]}{self.np(o)}" for o in objs)
        return f"图中有{ZH_NUM[len(objs)]}个图形：{parts}。"

    def _list(self, objs):
        return "；".join(f"{ZH_POS[o.pos]}：{self.np(o)}" for o in objs) + "。"

    def flaw_options(self, p):
        opts = self._per_item(p, "agreement", "measure") + self._per_item(p, "drop", "de")
        opts += self._per_item(p, "drop", "zai") + self._per_item(p, "drop", "measure")
        opts += self._per_item(p, "word_choice", "pos")
        if p.frame == "count" and len(p.items) == 2:
            opts += [("agreement", "liang", -1)]
        if p.frame in ("there", "with", "see"):
            opts += [("word_choice", "frame", -1)]
        if p.frame == "with":
            opts += [("untranslated", "with", -1)]
        if len(p.items) > 1:
            opts += [("untranslated", "conj", -1), ("word_choice", "conj", -1)]
        return opts

    def mt(self, p, flaws=()):
        n = len(p.items)
        odd = _has(flaws, "word_choice", "frame")
        parts = []
        for i, it in enumerate(p.items):
            noun, mw = ZH_SHAPE[it.shape]
            if f := _has(flaws, "agreement", "measure", i):
                wrong = [m for m in ("个", "颗", "张", "条") if m != mw]
                mw = wrong[f.pick % len(wrong)]
            if _has(flaws, "drop", "measure", i):
                mw = ""
            de = "" if _has(flaws, "drop", "de", i) else "的"
            zai = "" if _has(flaws, "drop", "zai", i) else "在"
            pos = ZH_POS_ODD[it.pos] if _has(flaws, "word_choice", "pos", i) else ZH_POS[it.pos]
            size = ZH_SIZE[EN_SIZE_OF[it.size_word]]
            # literal English order: size before colour, each with its own 的
            parts.append(f"一{mw}{size}{de}{ZH_COLOUR[it.colour]}的{noun}{zai}{pos}")
        conj = ("and" if _has(flaws, "untranslated", "conj")
                else "以及" if _has(flaws, "word_choice", "conj") else "和")
        body = _join(parts, "，", conj)
        if p.background:
            body += f"，在{ZH_BG[p.background]}背景上"
        num = "二" if _has(flaws, "agreement", "liang") else ZH_NUM[n]
        head = {
            "plain": "",
            "there": "在那里有" if odd else "那里有",
            "with": ("一张照片" if odd else "一张图片") + ("with" if _has(flaws, "untranslated", "with") else "带有"),
            "count": f"{num}个图形：",
            "see": "我们看见" if odd else "我们看到",
        }[p.frame]
        return head + body + "。"

    def inventory(self):
        forms = {s for s, _ in ZH_SHAPE.values()} | set(ZH_COLOUR.values()) | set(ZH_SIZE.values())
        forms |= set(ZH_POS.values()) | set(ZH_NUM.values()) | {"二", "图形"}
        return frozenset(forms)


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


_LONGEST: dict[str, tuple[frozenset, int]] = {}


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
