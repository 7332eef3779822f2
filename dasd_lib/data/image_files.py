"""Image files: the check every loader runs when a table loads (missing, empty, truncated or
undecodable files; transparency), and reading images into uint8 RGB arrays."""
from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from .table import Skips

log = logging.getLogger("dasd_lib.data")

# what Pillow raises on damaged files (verify reads PNG chunks with struct)
_DAMAGED = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error)
# a complete JPEG ends with the end-of-image marker; some writers pad a few bytes after it
_JPEG_END, _JPEG_TAIL = b"\xff\xd9", 1024


def image_file_problem(path: str) -> tuple[str, bool]:
    """(problem, has_transparency) for one image file; problem is "" when the file looks
    readable. Cheap: the header is parsed and PNG chunks are checksummed (Image.verify),
    but nothing is decoded. Pillow's verify does not read JPEG data, so a JPEG must also
    end with its end-of-image marker, which a cut-off download lacks."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return "missing", False
    if size == 0:
        return "an empty (0-byte) file", False
    try:
        with Image.open(path) as im:
            transparent = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
            fmt = im.format
            im.verify()
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, size - _JPEG_TAIL))
                if _JPEG_END not in f.read():
                    return "a truncated JPEG (no end-of-image marker)", transparent
    except Image.DecompressionBombError as err:  # not an OSError: Pillow's size guard
        return f"too large to decode safely ({err})", False
    except _DAMAGED as err:
        return f"truncated, corrupt or not an image ({type(err).__name__}: {err})", False
    return "", transparent


def check_image_files(df: pd.DataFrame, skips: Skips, where: str) -> pd.DataFrame:
    """Rows of `df` whose image file exists and is readable (image_file_problem); other
    rows raise DataError (DataFileNotFoundError when missing) or, with on_missing skip, are
    dropped and counted. Images with transparency are counted in a warning: reading them
    drops the alpha channel."""
    problems, transparent = {}, []
    for path in df["image_path"].unique():
        problem, alpha = image_file_problem(path)
        if problem:
            problems[path] = problem
        elif alpha:
            transparent.append(path)
    for reason, selected in (("missing image(s)", lambda pr: pr == "missing"),
                             ("unreadable image(s)", lambda pr: pr != "missing")):
        bad = sorted(p for p, pr in problems.items() if selected(pr))
        if not bad:
            continue
        rows = int(df["image_path"].isin(bad).sum())
        if reason.startswith("missing"):
            skips(reason, f"{where}: image file {bad[0]} does not exist "
                  f"({len(bad)} missing image file(s))", n=rows)
        else:
            skips(reason, f"{where}: image file {bad[0]} is {problems[bad[0]]} "
                  f"({len(bad)} unreadable image file(s)); replace the file(s)", n=rows)
    if transparent:
        log.warning("%s: %d image file(s) have transparency (e.g. %s); they are read as RGB: the "
                    "tiny backbone has the alpha channel dropped, so transparent areas show "
                    "whatever colour is stored under them; the hf backbone composites them onto "
                    "white, as transformers' CLIPImageProcessor does", where, len(transparent),
                    transparent[0])
    return df[~df["image_path"].isin(list(problems))]


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB. 16-bit greyscale (I;16*) is scaled to 8 bits first: Pillow's convert
    clips it at 255, which turns all but the darkest pixels white."""
    if im.mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float32)   # (H, W) 0..65535
        im = Image.fromarray(np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8))  # L
    return im.convert("RGB")


def _shorter_side_crop(im: Image.Image, size: int) -> np.ndarray:
    """RGB, the shorter side resized to `size` (bicubic), centre-cropped to (size, size, 3)."""
    im = _to_rgb(im)
    if im.size != (size, size):
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.resize((nw, nh), Image.Resampling.BICUBIC).crop((left, top, left + size, top + size))
    return np.asarray(im)


def load_images(paths: Sequence[str | Path], size: int, *, on_missing: str = "error",
                return_kept: bool = False,
                transform: Callable[[Image.Image], np.ndarray] | None = None):
    """Read images as uint8 RGB (N, size, size, 3), resizing where needed: the shorter
    side to `size` (bicubic), then a centre crop, as CLIP's own preprocessing does, so
    photos keep their aspect ratio (square images are simply resized). Transparency is
    dropped (alpha ignored), with a count in the log.

    `transform` replaces that conversion: it gets the opened file and returns its
    (size, size, 3) uint8 pixels (the hf backbone's exact CLIPImageProcessor steps).

    Missing or unreadable files raise DataError naming the file; with on_missing="skip"
    they are left out and counted in the log, and return_kept=True also returns the
    indices of the paths that were loaded."""
    skips = Skips("load_images", on_missing)
    out = np.zeros((len(paths), size, size, 3), np.uint8)   # (N, H, W, 3)
    kept, transparent = [], 0
    for i, p in enumerate(paths):
        p = Path(p)
        if not p.is_file():
            skips("missing image(s)", f"image file {p} does not exist")
            continue
        try:
            with Image.open(p) as im:
                transparent += im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
                out[len(kept)] = transform(im) if transform is not None else _shorter_side_crop(im, size)
        except Image.DecompressionBombError as err:  # not an OSError: Pillow's size guard
            skips("oversized image(s)", f"image file {p} is too large to decode safely ({err})")
            continue
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            skips("corrupt image(s)", f"image file {p} is corrupt or not an image ({err})")
            continue
        kept.append(i)
    skips.report()
    if transparent:
        log.info("load_images: %d of %d image(s) had transparency; converted to RGB %s",
                 transparent, len(kept),
                 "by the backbone's preprocessing" if transform is not None else "without it")
    out = out[:len(kept)]
    return (out, np.array(kept, dtype=np.int64)) if return_kept else out
