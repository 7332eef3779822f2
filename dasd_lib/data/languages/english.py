"""English, the source language: its caption styles (en:<frame>), rendering and the parser
the translator reads English captions back with."""
from __future__ import annotations

import random
import re
from typing import Sequence

from ..world import COLOURS as _EN_COLOURS, SHAPES as _EN_SHAPES, Obj
from .base import CaptionError, EnItem, EnParse, _cap, _join

EN_SIZE_WORDS = {"large": ("large", "big"), "small": ("small", "little")}
EN_SIZE_OF = {w: s for s, ws in EN_SIZE_WORDS.items() for w in ws}
EN_POS = {"left": "on the left", "right": "on the right", "top": "at the top",
          "bottom": "at the bottom", "middle": "in the middle"}
EN_NUM = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
EN_FRAMES = ("plain", "there", "with", "count", "see")
EN_STYLES = tuple(f"en:{f}" for f in EN_FRAMES)
EN_BG = {"striped": "striped", "checkered": "checkered", "dotted": "dotted"}
_EN_FRAME_PREFIX = {"plain": "", "there": "there is ", "with": "a picture with ", "see": "we see "}


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
