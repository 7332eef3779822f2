"""Czech: native styles (fronted position, 'nachází se', count, 'zachycuje') with case
and gender endings, and the MT rendering with its flaws."""
from __future__ import annotations

from ..world import Obj
from .base import EnItem, Grammar, _cap, _has, _join
from .english import EN_SIZE_OF

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
