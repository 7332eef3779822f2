"""German: native styles (fronted adverb, 'befindet sich', definite, count) with case
and gender agreement, and the MT rendering with its flaws."""
from __future__ import annotations

from ..world import Obj
from .base import EnItem, Grammar, _cap, _has, _join
from .english import EN_SIZE_OF

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
