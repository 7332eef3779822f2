"""The VLP's own training loop (notebook 01's stage, called by dasd_lib.vlp_stage): the
tiny VLP's contrastive pretraining or the English fine-tune of an HF CLIP (`train_vlp_stage`),
its epochs over (image, caption) pairs (`vlp_epoch_batches`) and its images read as training
needs them (`StreamedImages`). Built on dasd_lib.train's step and loop; log records keep
its logger.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import losses
from .config import StageConfig
from .devices import autocast_dtype, make_accelerator
from .train import StageResult, TrainTask, make_optimizer, rank_slice, run_loop, stage_steps, step_generator

log = logging.getLogger("dasd_lib.train")


# the VLP stage holds at most this much decoded image data at once (the chunk being trained
# on and the one read ahead); corpora that fit are read once, as a whole
IMAGE_BUFFER_BYTES = 2 << 30


@dataclass
class StreamedImages:
    """The VLP stage's images as files, read when training needs them rather than all at
    once (MSCOCO's 113K training images are 17 GB at 224 x 224). `read(paths)` returns
    uint8 (n, S, S, 3) (Backbone.read_images). When all of them fit in `max_bytes`
    (IMAGE_BUFFER_BYTES when None) they are read once, as a whole; otherwise in chunks of
    steps, the next chunk read ahead in a background thread while the current one trains."""
    paths: list[str]
    read: Callable[[list[str]], np.ndarray]
    max_bytes: int | None = None

    def __len__(self) -> int:
        return len(self.paths)


class _ImageFeed:
    """The images of each step: indexed from an array, or read chunk by chunk (StreamedImages).
    `needed(step)` gives the step's image indices; it depends on the step only, so a chunk
    of steps can be read ahead and a resumed run reads what it needs."""

    def __init__(self, images, needed: Callable[[int], np.ndarray], steps: int, batch_size: int,
                 workers: int):
        self.needed, self.steps, self.workers = needed, steps, max(1, workers)
        self.array: np.ndarray | None = images if isinstance(images, np.ndarray) else None
        self.source, self.ahead, self.current = images, {}, None
        self.pool = self.decoders = None
        if self.array is not None:
            return
        if self.workers > 1:  # Pillow decodes and resizes without the GIL
            self.decoders = ThreadPoolExecutor(self.workers, thread_name_prefix="vlp-decode")
        per_image = max(1, self._read(images.paths[:1]).nbytes) if len(images) else 1
        budget = images.max_bytes if images.max_bytes is not None else IMAGE_BUFFER_BYTES
        if per_image * len(images) <= budget:
            self.array = self._read(images.paths)
            return
        # two chunks (this one and the one read ahead) within the budget
        self.chunk_steps = max(1, budget // 2 // (per_image * batch_size))
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="vlp-images")
        log.info("vlp: %d images do not fit in %.1f GB: read %d steps at a time", len(images),
                 budget / 1e9, self.chunk_steps)

    def _read(self, paths: list[str]) -> np.ndarray:
        if self.decoders is None or len(paths) < 2 * self.workers:
            return self.source.read(list(paths))
        parts = np.array_split(np.arange(len(paths)), self.workers)
        return np.concatenate(list(self.decoders.map(
            lambda part: self.source.read([paths[i] for i in part]), parts)))

    def _load_chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        first = chunk * self.chunk_steps
        steps = range(first, min(first + self.chunk_steps, self.steps))
        index = np.unique(np.concatenate([self.needed(s) for s in steps]))
        return index, self._read([self.source.paths[i] for i in index])

    def __call__(self, step: int, idx: np.ndarray) -> np.ndarray:
        """uint8 images idx (indices into the image list) of `step`."""
        if self.array is not None:
            return self.array[idx]
        chunk = step // self.chunk_steps
        if self.current is None or self.current[0] != chunk:
            ahead = self.ahead.pop(chunk, None) or self.pool.submit(self._load_chunk, chunk)
            self.ahead.clear()  # a resumed or out-of-order step: drop what was read for others
            self.current = (chunk, *ahead.result())
            if (chunk + 1) * self.chunk_steps < self.steps:
                self.ahead[chunk + 1] = self.pool.submit(self._load_chunk, chunk + 1)
        _, index, pixels = self.current
        return pixels[np.searchsorted(index, idx)]

    def close(self) -> None:
        for pool in (self.pool, self.decoders):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self.ahead.clear()
        self.current = None


def vlp_epoch_batches(image_rows: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """One epoch of the English fine-tune, as the authors' loader iterates it: every
    (image, caption) pair once, in an order shuffled from (seed, epoch), cut into batches of
    `batch_size`, except that a batch never holds two captions of one image (InfoNCE would
    count the second as a negative of its own image): such a pair waits, in order, for the
    next batch without its image. So an epoch is about ceil(pairs / batch_size) steps
    (MSCOCO: 566K pairs, 4.4K steps at batch 128; 5 epochs about 22K), and only the last
    batches can be smaller. Returns the batches as arrays of caption indices."""
    image_of = np.asarray(image_rows).tolist()
    pending = torch.randperm(len(image_of), generator=step_generator(seed, "vlp-epoch", epoch)).tolist()
    batches, waiting, i = [], [], 0
    while i < len(pending) or waiting:
        batch, seen, still = [], set(), []
        for j in waiting:  # pairs put off by earlier batches come first
            if len(batch) < batch_size and image_of[j] not in seen:
                batch.append(j)
                seen.add(image_of[j])
            else:
                still.append(j)
        while len(batch) < batch_size and i < len(pending):
            j, i = pending[i], i + 1
            if image_of[j] in seen:
                still.append(j)
            else:
                batch.append(j)
                seen.add(image_of[j])
        waiting = still
        batches.append(np.asarray(batch, dtype=np.int64))
    return batches


def train_vlp_stage(*, backbone, images: np.ndarray | StreamedImages, captions: list[str],
                    image_rows: np.ndarray, cfg: StageConfig, seed: int, device_name: str,
                    out_dir: Path, resume: bool = True, record: dict | None = None) -> StageResult:
    """Contrastive training of the VLP itself on English (image, caption) pairs: the tiny
    VLP's pretraining, or the English fine-tune of an HF CLIP. Every VLP weight trains.
    image_rows[j] is the index in `images` (an array, or StreamedImages read chunk by chunk)
    of caption j's image.

    Batches hold one caption per image. With cfg.epochs > 0 an epoch is one pass over the
    (image, caption) pairs (vlp_epoch_batches); with cfg.steps each step draws its own
    batch from (seed, step)."""
    ids_all, mask_all = backbone.tokenize_source(captions)
    lengths = mask_all.sum(1)
    image_rows = np.asarray(image_rows)
    accelerator = make_accelerator(device_name)
    device = accelerator.device
    dtype = autocast_dtype(cfg, device)
    backbone.to(device)
    for p in backbone.vlp_parameters():
        p.requires_grad_(True)
    named = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
    opt = make_optimizer(named, cfg)
    wrapped, opt = accelerator.prepare(backbone, opt)
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    plan = None
    if cfg.epochs > 0:  # the global batch (all processes) holds each image once
        plan = [b for epoch in range(cfg.epochs) for b in vlp_epoch_batches(
            image_rows, cfg.batch_size * accelerator.num_processes, seed, epoch)]

    def step_rows(step: int, gen: torch.Generator) -> torch.Tensor:
        """This process's caption rows of `step` (depends on the step only)."""
        if plan is not None:
            return rank_slice(torch.from_numpy(plan[step]), cfg.batch_size, accelerator)
        # one caption per image in a batch, so InfoNCE has no false negatives from duplicates
        order = torch.randperm(len(captions), generator=gen)
        _, first = np.unique(image_rows[order.numpy()], return_index=True)
        return rank_slice(order[np.sort(first)], cfg.batch_size, accelerator)

    steps = len(plan) if plan is not None else stage_steps(cfg, len(np.unique(image_rows)))
    feed = _ImageFeed(images, lambda s: image_rows[step_rows(s, step_generator(seed, "vlp", s)).numpy()],
                      steps, cfg.batch_size, cfg.num_workers)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        gen = step_generator(seed, "vlp", step)
        rows = step_rows(step, gen)
        width = int(lengths[rows].max())
        ids = ids_all[rows, :width].to(device)
        mask = mask_all[rows, :width].to(device)
        pixels = backbone.preprocess_images(feed(step, image_rows[rows.numpy()])).to(device)
        offset = 0
        if backbone.train_all_positions:  # random offsets so every position gets trained
            offset = backbone.sample_position_offset(mask.cpu(), generator=gen).to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = wrapped(pixels, ids, mask, position_offset=offset)
        loss = losses.info_nce(out.image_embeds.float(), out.text_embeds.float(), scale=out.logit_scale)
        return {"infonce": loss, "total": loss, "d_logit_scale": out.logit_scale.detach()}

    task = TrainTask(modules={"backbone": backbone}, optimizer=opt, step_fn=step_fn,
                     batch_size=cfg.batch_size, params_to_clip=[p for _, p in named],
                     accelerator=accelerator)
    try:
        result = run_loop(task, cfg, stage="vlp", steps=steps, out_dir=out_dir, resume=resume,
                          desc="vlp", record=record)
    finally:
        feed.close()
    backbone.freeze()
    return result
