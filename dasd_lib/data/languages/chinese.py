"""Chinese: native styles (有, 在, count, list) with measure words, and the MT rendering
with its flaws (literal English order, measure words, 的)."""
from __future__ import annotations

from ..world import Obj
from .base import Grammar, _has, _join
from .english import EN_SIZE_OF

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
