"""Japanese: native styles (に/が, は, counter つ, の) and the MT rendering with its
flaws (particles, counters, literal articles)."""
from __future__ import annotations

from ..world import Obj
from .base import Grammar, _has, _join

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
