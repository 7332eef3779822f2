"""The small world of the synthetic benchmark: objects, scenes and their labels.

An image shows 1..max_objects objects; each object has a shape, a colour, a size and a
position slot. Within one image shapes, colours and slots are all different, so every
object can be named unambiguously by a caption.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

SHAPES = ("circle", "square", "triangle", "star", "heart", "ellipse")
COLOURS = ("red", "green", "blue", "yellow", "white", "black")
SIZES = ("large", "small")
# slot order is also the tie-break order for the "main" object (see Scene.main)
POSITIONS = ("left", "top", "middle", "bottom", "right")
# downstream backgrounds are flat tones (never named in captions); web backgrounds are
# textures that web captions name ("on a striped background")
BACKGROUNDS = {
    "downstream": ("gray", "sand", "slate"),
    "web": ("striped", "checkered", "dotted"),
}
CORPORA = tuple(BACKGROUNDS)


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    pos: str


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]     # stored main object first (see `main`)
    background: str
    group: int = -1              # binding-twin group id; twins share all attributes

    @property
    def main(self) -> Obj:
        """The largest object; ties go to the first slot in POSITIONS order."""
        return self.objects[0]

    def to_json(self) -> str:
        return json.dumps({
            "n_objects": len(self.objects),
            "background": self.background,
            "group": self.group,
            "objects": [{"shape": o.shape, "colour": o.colour, "size": o.size, "pos": o.pos}
                        for o in self.objects],
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Scene":
        d = json.loads(text)
        return cls(tuple(Obj(**o) for o in d["objects"]), d["background"], d.get("group", -1))


def make_scene(objects, background: str, group: int = -1) -> Scene:
    """A scene with its objects in canonical order: large before small, then by slot."""
    objs = sorted(objects, key=lambda o: (SIZES.index(o.size), POSITIONS.index(o.pos)))
    return Scene(tuple(objs), background, group)


def binding_key(scene: Scene) -> frozenset:
    """What makes two scenes the same image content (object order does not matter)."""
    return frozenset(scene.objects)
