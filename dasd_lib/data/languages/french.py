"""French: native styles (inversion after the position, 'situé(e)', 'on voit', count)
with gender agreement and elision, and the MT rendering with its flaws."""
from __future__ import annotations

from ..world import Obj
from .base import EnItem, Grammar, _cap, _has, _join
from .english import EN_SIZE_OF

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
