"""The embedded benchmark: procedurally rendered scenes with binding twins, captions in six
languages, written to dataset/<name>/ (images/*.png, captions.jsonl, meta.json).

Everything is a function of the DataConfig: the same config gives byte-identical files.
Randomness comes from generators seeded by (seed, corpus, split, image, purpose), so
changing e.g. the language list leaves the other languages' captions unchanged.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..config import DataConfig
from .errors import DataError
from .languages import (EN_FRAMES, EN_STYLES, LANGS, MT_STYLES, NATIVE_STYLES, TARGET_LANGS,
                        english_caption, native_caption, translate)
from .world import (BACKGROUNDS, COLOURS, CORPORA, POSITIONS, SHAPES, SIZES, Obj, Scene,
                    binding_key, make_scene)

log = logging.getLogger("dasd_lib.data")

# bump when the generator's output changes for the same config (invalidates reuse)
# 2: val/test scenes never repeat a training scene's objects; data.mt_native_share
GENERATOR_VERSION = 2
COLUMNS = ["corpus", "split", "image_id", "image_path", "lang", "caption_id", "caption",
           "source_caption", "variant", "style", "content"]
# config fields that change the generated files (root, name, loading options do not)
_GEN_FIELDS = ("corpus", "seed", "image_size", "n_train", "n_val", "n_test", "captions_per_image",
               "train_captions_per_image", "twin_group_size", "max_objects", "mt_noise", "mt_native_share", "langs")
MAX_WEB_OBJECTS = len(POSITIONS)


def _rng(*parts: Any) -> random.Random:
    # str seeds are hashed with sha512 by `random`, stable across runs and platforms
    return random.Random("|".join(map(str, parts)))


def generator_config(cfg: DataConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in _GEN_FIELDS}


def config_hash(cfg: DataConfig) -> str:
    text = json.dumps({"version": GENERATOR_VERSION, **generator_config(cfg)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_config(cfg: DataConfig) -> None:
    """Reject configs the generator cannot honour, naming the field."""
    if cfg.corpus not in CORPORA:
        raise DataError(f"data.corpus: unknown corpus '{cfg.corpus}'; valid: {', '.join(CORPORA)}")
    bad = [lang for lang in cfg.langs if lang not in TARGET_LANGS]
    if bad:
        raise DataError(f"data.langs: unknown language code(s) {bad}; valid: {', '.join(TARGET_LANGS)}")
    if not 1 <= cfg.max_objects <= len(POSITIONS):
        raise DataError(f"data.max_objects must be 1..{len(POSITIONS)}, got {cfg.max_objects}")
    for key in ("n_train", "n_val", "n_test", "captions_per_image", "train_captions_per_image",
                "twin_group_size", "image_size"):
        if getattr(cfg, key) < (0 if key.startswith("n_") else 1):
            raise DataError(f"data.{key} must be positive, got {getattr(cfg, key)}")
    for key in ("mt_noise", "mt_native_share"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise DataError(f"data.{key} must be in [0, 1], got {getattr(cfg, key)}")


def object_range(cfg: DataConfig) -> tuple[int, int]:
    """Objects per image: downstream 1..max_objects; web (shifted) 2..max_objects + 2."""
    if cfg.corpus == "web":
        return 2, min(cfg.max_objects + 2, MAX_WEB_OBJECTS)
    return 1, cfg.max_objects


# ============================================================================ scenes
def twin_group(k: int, rng: random.Random, background: str, group: int, size: int) -> list[Scene]:
    """`size` scenes with the same shapes, colours, sizes and slots, bound differently
    (colours, sizes and slots permuted between the shapes). Fewer if k is too small to
    give that many distinct bindings (k = 1 gives a single scene)."""
    shapes = rng.sample(SHAPES, k)
    colours = rng.sample(COLOURS, k)
    slots = rng.sample(POSITIONS, k)
    sizes = [rng.choice(SIZES) for _ in range(k)]
    scenes, seen = [], set()
    if k == 1:
        size = 1
    for attempt in range(20 * size):
        if attempt:
            colours, slots, sizes = (rng.sample(x, k) for x in (colours, slots, sizes))
        sc = make_scene([Obj(s, c, z, p) for s, c, z, p in zip(shapes, colours, sizes, slots)],
                        background, group)
        if binding_key(sc) not in seen:
            seen.add(binding_key(sc))
            scenes.append(sc)
        if len(scenes) == size:
            break
    return scenes


def sample_scenes(cfg: DataConfig, split: str, n: int,
                  exclude: frozenset | set = frozenset()) -> tuple[list[Scene], int]:
    """n scenes of a split, in twin groups of cfg.twin_group_size (single-object images
    cannot have twins and stand alone); the last group may be cut short. Scenes whose
    objects (binding_key) are in `exclude` are drawn and dropped, and more are drawn in
    their place; returns (scenes, number dropped)."""
    rng = _rng(cfg.seed, cfg.corpus, split, "scenes")
    lo, hi = object_range(cfg)
    backgrounds = BACKGROUNDS[cfg.corpus]
    scenes: list[Scene] = []
    group, dropped = 0, 0
    while len(scenes) < n:
        if dropped > 100 * n + 1000:
            raise DataError(f"data: cannot draw {n} {split} scenes that differ from every training "
                            f"scene ({dropped} drawn and dropped); raise data.max_objects or "
                            f"lower data.n_train")
        k = rng.randint(lo, hi)
        twins = twin_group(k, rng, rng.choice(backgrounds), group, cfg.twin_group_size)
        kept = [sc for sc in twins if binding_key(sc) not in exclude]
        dropped += len(twins) - len(kept)
        scenes += kept
        group += 1
    return scenes[:n], dropped


# ============================================================================ rendering
_RGB = {"red": (220, 45, 40), "green": (40, 165, 65), "blue": (45, 85, 225),
        "yellow": (240, 210, 35), "white": (245, 245, 240), "black": (20, 20, 25)}
_BG_RGB = {"gray": (150, 150, 150), "sand": (190, 172, 132), "slate": (105, 120, 138),
           "striped": (160, 150, 170), "checkered": (150, 165, 150), "dotted": (175, 160, 140)}
_SLOT_XY = {"left": (0.2, 0.5), "right": (0.8, 0.5), "top": (0.5, 0.2), "bottom": (0.5, 0.8),
            "middle": (0.5, 0.5)}
_RADIUS = {"large": 0.13, "small": 0.08}


def _unit_polygon(shape: str) -> np.ndarray | None:
    """Outline of a shape of 'radius' 1 centred at 0 (y down); None for ellipse-drawn ones."""
    if shape == "square":
        return np.array([(-.85, -.85), (.85, -.85), (.85, .85), (-.85, .85)])
    if shape == "triangle":
        a = np.deg2rad([-90, 30, 150])
        return np.stack([1.2 * np.cos(a), 1.2 * np.sin(a) + 0.2], 1)
    if shape == "star":
        a = np.deg2rad(-90 + 36 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.25, 0.52)
        return np.stack([r * np.cos(a), r * np.sin(a) + 0.1], 1)
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return np.stack([x, -y + 2], 1) / 15.0
    return None


_POLY = {s: _unit_polygon(s) for s in SHAPES}


def _background(kind: str, s: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array(_BG_RGB[kind], float) + rng.uniform(-12, 12, 3)
    yy, xx = np.mgrid[0:s, 0:s] / s
    img = np.broadcast_to(base, (s, s, 3)).copy()
    img += (yy[..., None] - 0.5) * rng.uniform(-20, 20)           # soft light gradient
    if kind in BACKGROUNDS["web"]:
        other = base + rng.choice([-1, 1]) * rng.uniform(35, 55)
        period = rng.uniform(0.09, 0.16)
        if kind == "striped":
            ang = rng.uniform(0, np.pi)
            mask = ((xx * np.cos(ang) + yy * np.sin(ang)) / period + rng.uniform()) % 1 < 0.5
        elif kind == "checkered":
            mask = ((np.floor(xx / period) + np.floor(yy / period)) % 2) == 0
        else:  # dotted
            fx, fy = (xx / period) % 1 - 0.5, (yy / period) % 1 - 0.5
            mask = fx ** 2 + fy ** 2 < 0.09
        img[mask] = other
    return np.clip(img, 0, 255).astype(np.uint8)


def render_scene(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw at 2x and box-downsample (cheap anti-aliasing)."""
    s = 2 * size
    img = Image.fromarray(_background(scene.background, s, rng))
    draw = ImageDraw.Draw(img)
    # large objects first, so a small one is never hidden behind a large one
    for o in sorted(scene.objects, key=lambda o: SIZES.index(o.size)):
        cx, cy = (np.array(_SLOT_XY[o.pos]) + rng.uniform(-0.03, 0.03, 2)) * s
        r = _RADIUS[o.size] * s * rng.uniform(0.92, 1.08)
        colour = tuple(int(v) for v in np.clip(np.array(_RGB[o.colour]) + rng.uniform(-15, 15, 3), 0, 255))
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif o.shape == "ellipse":
            draw.ellipse([cx - 1.35 * r, cy - 0.7 * r, cx + 1.35 * r, cy + 0.7 * r], fill=colour)
        else:
            pts = _POLY[o.shape] * r + (cx, cy)
            draw.polygon([tuple(p) for p in pts.tolist()], fill=colour)
    return img.resize((size, size), Image.Resampling.BOX)


def _render_job(job: tuple) -> None:
    scene_json, size, seed_parts, path = job
    rng = np.random.default_rng(seed_parts)
    render_scene(Scene.from_json(scene_json), size, rng).save(path, format="PNG")


# ============================================================================ captions
def _row(cfg, split, image_id, lang, variant, j, caption, style, source, content):
    return {"corpus": cfg.corpus, "split": split, "image_id": image_id,
            "image_path": f"images/{image_id}.png", "lang": lang,
            "caption_id": f"{image_id}:{lang}:{variant}:{j}", "caption": caption,
            "source_caption": source, "variant": variant, "style": style, "content": content}


def _cycle(styles: tuple[str, ...], n: int, rng: random.Random) -> list[str]:
    """n styles: shuffled rounds through all styles, so every style shows up per image."""
    out: list[str] = []
    while len(out) < n:
        out += rng.sample(styles, len(styles))
    return out[:n]


def image_captions(cfg: DataConfig, split: str, i: int, image_id: str, scene: Scene) -> list[dict]:
    """All caption rows of one image (see the contract's data table).

    Training translations: with probability data.mt_native_share a caption is written in
    one of the language's native styles (a fluent translator; variant "mt", source the
    English caption), else in translationese (the English frame, with mt_noise flaws).
    0 (the default) keeps every native test style unseen in training: the widest style gap."""
    content = scene.to_json()
    bg = scene.background if cfg.corpus == "web" else None   # only web captions name it
    objs = scene.objects
    rows = []
    rng = _rng(cfg.seed, cfg.corpus, split, i, "en")
    if split == "train":
        for j in range(cfg.train_captions_per_image):
            frame = rng.choice(EN_FRAMES)
            en = english_caption(rng.sample(objs, len(objs)), frame, rng, bg)
            rows.append(_row(cfg, split, image_id, "en", "native", j, en, f"en:{frame}", "", content))
            for lang in cfg.langs:
                lrng = _rng(cfg.seed, cfg.corpus, split, i, lang, j)
                text, style, _ = translate(en, lang, lrng, cfg.mt_noise)
                # its own generator, so mt_native_share = 0 leaves the other captions as they were
                frng = _rng(cfg.seed, cfg.corpus, split, i, lang, j, "fluent")
                if cfg.mt_native_share > 0 and frng.random() < cfg.mt_native_share:
                    style = frng.choice(NATIVE_STYLES[lang])
                    text = native_caption(frng.sample(objs, len(objs)), lang, style)
                rows.append(_row(cfg, split, image_id, lang, "mt", j, text, style, en, content))
        return rows
    ens = []
    for j, style in enumerate(_cycle(EN_STYLES, cfg.captions_per_image, rng)):
        ens.append(english_caption(rng.sample(objs, len(objs)), style, rng, bg))
        rows.append(_row(cfg, split, image_id, "en", "native", j, ens[-1], style, "", content))
    for lang in cfg.langs:
        lrng = _rng(cfg.seed, cfg.corpus, split, i, lang)
        for j, style in enumerate(_cycle(NATIVE_STYLES[lang], cfg.captions_per_image, lrng)):
            text = native_caption(lrng.sample(objs, len(objs)), lang, style)
            rows.append(_row(cfg, split, image_id, lang, "native", j, text, style, "", content))
        for j, en in enumerate(ens):
            text, style, _ = translate(en, lang, None, 0.0)
            rows.append(_row(cfg, split, image_id, lang, "mt_clean", j, text, style, en, content))
    return rows


def split_sizes(cfg: DataConfig) -> dict[str, int]:
    """Images per split; the web corpus is train-only (zero-shot setting)."""
    if cfg.corpus == "web":
        return {"train": cfg.n_train}
    return {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}


def build_scenes(cfg: DataConfig) -> dict[str, list[Scene]]:
    return build_scenes_counted(cfg)[0]


def build_scenes_counted(cfg: DataConfig) -> tuple[dict[str, list[Scene]], dict[str, int]]:
    """The scenes of every split, and per held-out split how many drawn scenes were
    dropped for showing the same objects as a training scene (a test image that differs
    from a training image only in render noise and background would be recall by memory,
    not by reading the caption)."""
    check_config(cfg)
    sizes = split_sizes(cfg)
    scenes, dropped = {}, {}
    if sizes["train"] > 0:
        scenes["train"], _ = sample_scenes(cfg, "train", sizes["train"])
    seen = frozenset(binding_key(sc) for sc in scenes.get("train", []))
    for split, n in sizes.items():
        if split != "train" and n > 0:
            scenes[split], dropped[split] = sample_scenes(cfg, split, n, exclude=seen)
    return scenes, dropped


def train_overlap(scenes: dict[str, list[Scene]]) -> dict[str, int]:
    """Per held-out split: scenes with the same objects as some training scene (0 by
    construction for generated corpora; notebook 00 shows it)."""
    seen = {binding_key(sc) for sc in scenes.get("train", [])}
    return {split: sum(binding_key(sc) in seen for sc in scs)
            for split, scs in scenes.items() if split != "train"}


def build_rows(cfg: DataConfig, scenes: dict[str, list[Scene]] | None = None) -> list[dict]:
    """The caption table as rows (image paths relative to the corpus folder); no images."""
    scenes = scenes if scenes is not None else build_scenes(cfg)
    rows = []
    for split, sc in scenes.items():
        for i, scene in enumerate(sc):
            rows += image_captions(cfg, split, i, f"{split}_{i:05d}", scene)
    return rows


# ============================================================================ writing
def corpus_dir(cfg: DataConfig) -> Path:
    return Path(cfg.root) / cfg.name


def _is_current(out: Path, cfg: DataConfig) -> bool:
    meta_path = out / "meta.json"
    if not (meta_path.is_file() and (out / "captions.jsonl").is_file()):
        return False
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if meta.get("config_hash") != config_hash(cfg):
        return False
    n_images = sum(meta.get("images", {}).values())
    images = out / "images"
    return images.is_dir() and sum(1 for _ in images.iterdir()) == n_images


def generate_corpus(cfg: DataConfig, *, force: bool = False, workers: int | None = None) -> Path:
    """Generate the synthetic corpus into cfg.root/cfg.name and return that folder.

    An existing folder whose meta.json holds the same config hash is reused as is; a
    folder made by an older config is replaced; a folder not made by this generator is
    never touched (DataError)."""
    from filelock import FileLock

    check_config(cfg)
    out = corpus_dir(cfg)
    if not force and _is_current(out, cfg):
        log.info("reusing %s (config hash %s)", out, config_hash(cfg))
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # two runs making the same corpus at once (a sweep's parallel points): one generates,
    # the other waits and then reuses it
    with FileLock(out.parent / f".{out.name}.lock"):
        if not force and _is_current(out, cfg):
            log.info("reusing %s (config hash %s), made while waiting", out, config_hash(cfg))
            return out
        return _generate_into(out, cfg, workers)


def _generate_into(out: Path, cfg: DataConfig, workers: int | None) -> Path:
    if out.exists() and any(out.iterdir()) and not (out / "meta.json").is_file():
        raise DataError(f"{out} exists and was not made by the generator (no meta.json); "
                        f"pick another data.name or remove the folder")
    t0 = time.perf_counter()
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    try:
        scenes, dropped = build_scenes_counted(cfg)
        rows = build_rows(cfg, scenes)
        codes = {name: k for k, name in enumerate(CORPORA)}
        jobs = [(sc.to_json(), cfg.image_size,
                 (cfg.seed, codes[cfg.corpus], ("train", "val", "test").index(split), i),
                 str(tmp / "images" / f"{split}_{i:05d}.png"))
                for split, scs in scenes.items() for i, sc in enumerate(scs)]
        _render_all(jobs, workers)
        with open(tmp / "captions.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        meta = {
            "generator": "dasd_lib.data.synthetic", "version": GENERATOR_VERSION,
            "config_hash": config_hash(cfg), "config": generator_config(cfg),
            "images": {split: len(scs) for split, scs in scenes.items()},
            # held-out scenes drawn and dropped for repeating a training scene's objects
            "dropped_train_overlap": dropped,
            "captions": len(rows), "columns": COLUMNS, "langs": ["en", *cfg.langs],
            "native_styles": {k: list(v) for k, v in NATIVE_STYLES.items() if k in ("en", *cfg.langs)},
            "mt_styles": list(MT_STYLES),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        shutil.rmtree(old)
    tmp.rename(out)
    log.info("generated %s: %d images, %d captions in %.1f s", out, len(jobs), len(rows),
             time.perf_counter() - t0)
    return out


def _render_all(jobs: list[tuple], workers: int | None) -> None:
    workers = workers if workers is not None else (min(2, os.cpu_count() or 1) if len(jobs) >= 2000 else 1)
    if workers <= 1:
        for job in jobs:
            _render_job(job)
        return
    import multiprocessing as mp
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as pool:
        for _ in pool.imap_unordered(_render_job, jobs, chunksize=64):
            pass


__all__ = ["COLUMNS", "GENERATOR_VERSION", "LANGS", "build_rows", "build_scenes",
           "build_scenes_counted", "check_config", "train_overlap",
           "config_hash", "corpus_dir", "generate_corpus", "render_scene", "sample_scenes",
           "split_sizes", "twin_group"]
