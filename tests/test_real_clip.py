"""Real-CLIP correctness (issue 14, item 4), on tiny random CLIP and BERT folders written
with save_pretrained (tests/test_backbones_hf.py builds them):

(a) the hf backbone's images equal transformers' CLIPImageProcessor from the CLIP folder
    (its PIL path, the one transformers takes without torchvision), and the processor's
    settings enter the frozen-feature cache key and the English fine-tune's record;
(b) precision fp16 is refused (no gradient scaler);
(c) an English fine-tune epoch is one pass over the (image, caption) pairs, one caption
    per image in a batch;
(d) the English fine-tune reads its images in chunks, not all at once;
(e) the finetune setting without its fine-tuned CLIP stops instead of using the raw one;
(f) the paper finetune parameter files hold the full-distillation row.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import ROOT, smoke_params
from test_backbones_hf import EN, make_hf_folders
from dasd_lib import vlp_stage
from dasd_lib.context import Run, RunPaths
from dasd_lib import train as T
from dasd_lib import train_vlp as TV
from dasd_lib.backbones import BackboneError, load_backbone, load_hf_backbone
from dasd_lib.config import ConfigError, StageConfig, load_params
from dasd_lib.features import features_key, frozen_features
from dasd_lib.model import METHODS

CPU = torch.device("cpu")
# width x height: wider and taller than square, smaller and larger than the 32-pixel crop,
# and sizes where the longer side's int(...) and round(...) differ (229 x 200 -> 36.64 / 45.8)
SIZES = [(57, 23), (19, 45), (300, 201), (229, 200), (40, 40), (32, 32), (33, 100)]


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """(root, ModelConfig) of a tiny CLIP (32-pixel images) and BERT; no preprocessor_config."""
    root = tmp_path_factory.mktemp("hf_real_clip")
    cfg, _, _ = make_hf_folders(root)
    return root, cfg


def clip_copy(root: Path, cfg, name: str, processor: dict | None):
    """A copy of the CLIP folder with `processor` as its preprocessor_config.json."""
    folder = root / name
    root.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(Path(cfg.clip_path), folder)
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return dataclasses.replace(cfg, clip_path=str(folder))


def reference_processor(folder):
    """CLIPImageProcessor.from_pretrained(folder). Without torchvision (as here) that is the
    PIL path; where torchvision is installed, transformers resizes with it instead (antialiased
    tensors, about 1e-2 away), so the PIL processor is asked for by name."""
    from transformers import CLIPImageProcessor
    proc = CLIPImageProcessor.from_pretrained(str(folder))
    if getattr(proc, "backend", "pil") != "pil":
        from transformers import CLIPImageProcessorPil
        proc = CLIPImageProcessorPil.from_pretrained(str(folder))
    return proc


# modern (CLIPImageProcessor.save_pretrained) and legacy (openai/clip-vit-base-patch16's own
# file: ints for size and crop_size) layouts, with a shorter side larger than the crop and a
# mean and std other than OpenAI's, so both matter
PROCESSORS = {
    "modern": {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
               "size": {"shortest_edge": 40}, "resample": 3, "do_center_crop": True,
               "crop_size": {"height": 32, "width": 32}, "do_rescale": True,
               "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.3, 0.5, 0.6],
               "image_std": [0.2, 0.25, 0.3], "do_convert_rgb": True},
    "legacy": {"feature_extractor_type": "CLIPFeatureExtractor", "crop_size": 32,
               "do_center_crop": True, "do_normalize": True, "do_resize": True,
               "image_mean": [0.48145466, 0.4578275, 0.40821073],
               "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 32},
}


def write_images(folder: Path, seed: int = 0) -> list[Path]:
    """Random RGB images of SIZES, plus one RGBA with partial transparency, one greyscale
    and one palette image with a transparent colour."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k, (w, h) in enumerate(SIZES):
        paths.append(folder / f"rgb_{k}_{w}x{h}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    rgba = rng.integers(0, 256, (37, 51, 4), dtype=np.uint8)
    rgba[:10, :, 3] = 0                                   # a fully transparent band
    paths.append(folder / "rgba.png")
    Image.fromarray(rgba, "RGBA").save(paths[-1])
    paths.append(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (50, 35), dtype=np.uint8), "L").save(paths[-1])
    pal = Image.fromarray(rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)).convert("P")
    paths.append(folder / "palette.png")
    pal.save(paths[-1], transparency=int(np.asarray(pal)[0, 0]))
    return paths


def english_table(paths: list[Path]) -> pd.DataFrame:
    return pd.DataFrame({"image_id": [f"img{i}" for i in range(len(paths))],
                         "image_path": [str(p) for p in paths], "lang": "en",
                         "caption": [EN[i % len(EN)] for i in range(len(paths))],
                         "source_caption": "", "split": "train"})


# ----------------------------------------------------------------------------- (a) preprocessing

@pytest.mark.parametrize("layout", sorted(PROCESSORS))
def test_hf_images_equal_clip_image_processor(hf_folders, tmp_path, layout):
    root, cfg = hf_folders
    cfg = clip_copy(tmp_path, cfg, "clip", PROCESSORS[layout])
    bb = load_hf_backbone(cfg)
    proc = reference_processor(cfg.clip_path)
    paths = write_images(tmp_path / "images")

    def reference(files):
        opened = [Image.open(p) for p in files]
        try:
            return proc(opened, return_tensors="pt")["pixel_values"]
        finally:
            for im in opened:
                im.close()

    # the files as the workbook reads them (frozen features, the English fine-tune)
    ref = reference(paths)
    ours = bb.preprocess_images(bb.read_images([str(p) for p in paths], 64))  # 64: not used by hf
    assert ours.shape == ref.shape == (len(paths), 3, 32, 32)
    assert (ours - ref).abs().max().item() <= 1e-6
    # uint8 arrays of other sizes go through the same resize and crop
    for p in paths[:len(SIZES)]:
        with Image.open(p) as im:
            if im.size == (32, 32):
                continue  # S x S arrays are taken as already read (resized and cropped)
            arr = np.asarray(im.convert("RGB"))
        assert (bb.preprocess_images(arr[None]) - reference([p])).abs().max().item() <= 1e-6
    # and the frozen image embeddings are the CLIP's on the processor's pixels
    feats = frozen_features(bb, english_table(paths), image_size=64, cache_dir=None, device=CPU)
    with torch.no_grad():
        expect = bb.clip.get_image_features(pixel_values=ref)
    expect = getattr(expect, "pooler_output", expect)
    assert torch.allclose(feats.image_emb, expect, atol=1e-5)


def test_hf_default_preprocessing_is_the_processors_default_at_the_clip_size(hf_folders, tmp_path):
    """No preprocessor_config.json: CLIPImageProcessor's own defaults (OpenAI's mean and
    std, bicubic, shorter side and crop at the vision tower's input size)."""
    root, cfg = hf_folders
    assert not (Path(cfg.clip_path) / "preprocessor_config.json").exists()
    bb = load_hf_backbone(cfg)
    from transformers import CLIPImageProcessor
    defaults = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    defaults.save_pretrained(tmp_path / "proc")
    paths = write_images(tmp_path / "images", seed=1)
    opened = [Image.open(p) for p in paths]
    ref = reference_processor(tmp_path / "proc")(opened, return_tensors="pt")["pixel_values"]
    ours = bb.preprocess_images(bb.read_images([str(p) for p in paths], 32))
    assert (ours - ref).abs().max().item() <= 1e-6
    # a saved backbone keeps its settings and writes them as a processor file transformers reads
    bb.save(tmp_path / "saved")
    again = load_backbone(tmp_path / "saved")
    assert again.image_preprocessing() == bb.image_preprocessing()
    saved_ref = reference_processor(tmp_path / "saved" / "clip")(opened, return_tensors="pt")["pixel_values"]
    assert (saved_ref - ref).abs().max().item() <= 1e-6


def test_hf_preprocessing_settings_enter_the_frozen_cache_key_and_the_vlp_record(hf_folders, tmp_path):
    root, cfg = hf_folders
    # same folder name (the backbone's name holds it), same weights: only the processor differs
    cfg_a = clip_copy(tmp_path / "a", cfg, "clip", PROCESSORS["modern"])
    other = dict(PROCESSORS["modern"], image_mean=[0.5, 0.5, 0.5])
    cfg_b = clip_copy(tmp_path / "b", cfg, "clip", other)
    a, a2, b = load_hf_backbone(cfg_a), load_hf_backbone(cfg_a), load_hf_backbone(cfg_b)
    assert a.identity() == b.identity()
    table = english_table(write_images(tmp_path / "images")[:4])
    assert features_key(a, table, 32) == features_key(a2, table, 32)
    assert features_key(a, table, 32) != features_key(b, table, 32)
    cache = tmp_path / "cache"
    fa = frozen_features(a, table, image_size=32, cache_dir=cache, device=CPU)
    fb = frozen_features(b, table, image_size=32, cache_dir=cache, device=CPU)
    assert not fb.from_cache and not torch.allclose(fa.image_emb, fb.image_emb)
    assert frozen_features(a2, table, image_size=32, cache_dir=cache, device=CPU).from_cache

    # the English fine-tune's record follows the folder's processor file, same path
    params = smoke_params(tmp_path, "model.backbone=hf", f"hf.clip_path={cfg_a.clip_path}",
                          f"hf.mbert_path={cfg.mbert_path}")
    before = vlp_stage.vlp_record(params, table, [])
    assert vlp_stage.vlp_record(params, table, []) == before
    (Path(cfg_a.clip_path) / "preprocessor_config.json").write_text(json.dumps(other))
    after = vlp_stage.vlp_record(params, table, [])
    assert after["fingerprint"] != before["fingerprint"]
    assert after["inputs"]["image_preprocess"]["mean"] == [0.5, 0.5, 0.5]


def test_hf_preprocessing_that_misses_the_clip_input_size_is_refused(hf_folders, tmp_path):
    root, cfg = hf_folders
    bad = clip_copy(tmp_path, cfg, "clip", dict(PROCESSORS["modern"], crop_size={"height": 24, "width": 24}))
    with pytest.raises(BackboneError, match=r"preprocessor_config.json.*32 x 32"):
        load_hf_backbone(bad)


# ----------------------------------------------------------------------------- (b) precision

@pytest.mark.parametrize("stage", ["vlp", "cla", "cma"])
def test_fp16_is_refused_with_the_key_and_what_to_use(tmp_path, stage):
    with pytest.raises(ConfigError, match=rf"{stage}\.precision 'fp16' is refused: .*gradient scaler"
                                          rf".*Use bf16 .* or fp32"):
        smoke_params(tmp_path, f"{stage}.precision=fp16")
    # a value in a parameter file goes through the same check as an override
    yaml_file = tmp_path / "fp16.yaml"
    yaml_file.write_text(f"{stage}:\n  precision: fp16\n")
    with pytest.raises(ConfigError, match=rf"{stage}\.precision 'fp16'"):
        load_params(yaml_file)
    assert getattr(smoke_params(tmp_path, f"{stage}.precision=bf16"), stage).precision == "bf16"
    assert getattr(smoke_params(tmp_path, f"{stage}.precision=fp32"), stage).precision == "fp32"


def test_fp16_is_refused_by_the_training_step_too():
    """A StageConfig built in code, past load_params, cannot train in fp16 either."""
    with pytest.raises(ConfigError, match="fp16.*gradient scaler"):
        T.autocast_dtype(StageConfig(precision="fp16"), CPU)
    assert T.autocast_dtype(StageConfig(precision="bf16"), CPU) is torch.bfloat16
    assert T.autocast_dtype(StageConfig(precision="fp32"), CPU) is None


# ----------------------------------------------------------------------------- (c) epochs

def _captions_per_image(counts: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def test_an_epoch_is_every_image_caption_pair_once_one_caption_per_image_per_batch():
    rng = np.random.default_rng(0)
    image_rows = _captions_per_image([5] * 280 + [1] * 10 + [7] * 10)  # 1,480 pairs
    image_rows = image_rows[rng.permutation(len(image_rows))]
    B = 32
    for epoch in range(3):
        batches = TV.vlp_epoch_batches(image_rows, B, seed=0, epoch=epoch)
        flat = np.concatenate(batches)
        assert np.array_equal(np.sort(flat), np.arange(len(image_rows)))   # each pair once
        for b in batches:
            assert len(set(image_rows[b].tolist())) == len(b)              # one caption per image
        assert math.ceil(len(image_rows) / B) <= len(batches) <= math.ceil(len(image_rows) / B) + 1
        assert all(len(b) == B for b in batches[:-2])                     # full but for the end
    # shuffled per epoch, the same for the same (seed, epoch)
    e0, e1 = (np.concatenate(TV.vlp_epoch_batches(image_rows, B, 0, e)) for e in (0, 1))
    assert not np.array_equal(e0, e1)
    assert np.array_equal(e0, np.concatenate(TV.vlp_epoch_batches(image_rows, B, 0, 0)))
    # an image with more captions than fit one per batch still has all of them seen
    lopsided = _captions_per_image([40, 1, 1, 1])
    batches = TV.vlp_epoch_batches(lopsided, 4, 0, 0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(43))
    assert all(len(set(lopsided[b].tolist())) == len(b) for b in batches)


def test_five_epochs_of_mscoco_are_about_22k_steps_at_batch_128():
    """MSCOCO's training split: 113,287 images x 5 English captions = 566,435 pairs."""
    image_rows = _captions_per_image([5] * 113_287)
    one_epoch = len(TV.vlp_epoch_batches(image_rows, 128, seed=0, epoch=0))
    assert one_epoch in (4426, 4427)          # ceil(566,435 / 128) = 4,426, not 113,287 / 128 = 886
    assert 22_000 <= 5 * one_epoch <= 22_200


def _vlp_cfg(**kw) -> StageConfig:
    return StageConfig(**{"steps": 0, "batch_size": 4, "lr": 1e-5, "precision": "fp32",
                          "log_every": 0, "warmup_frac": 0.0, **kw})


def test_english_fine_tune_runs_epochs_over_pairs(hf_folders, tmp_path, monkeypatch):
    root, cfg = hf_folders
    bb = load_hf_backbone(cfg)
    image_rows = _captions_per_image([3] * 6)                     # 6 images, 18 pairs
    captions = [EN[i % len(EN)] + (" there is a big star" * (i % 2)) for i in range(len(image_rows))]
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    seen = []
    real = TV.rank_slice
    monkeypatch.setattr(TV, "rank_slice", lambda *a: seen.append(real(*a)) or seen[-1])
    result = TV.train_vlp_stage(backbone=bb, images=images, captions=captions, image_rows=image_rows,
                               cfg=_vlp_cfg(epochs=2), seed=0, device_name="cpu",
                               out_dir=tmp_path / "vlp")
    per_epoch = [len(TV.vlp_epoch_batches(image_rows, 4, 0, e)) for e in (0, 1)]
    assert result.steps == len(seen) == sum(per_epoch) == len(result.losses)
    assert result.steps >= 2 * math.ceil(18 / 4)                  # not 2 x ceil(6 images / 4) = 4
    start = 0
    for n in per_epoch:                                           # every pair once per epoch
        epoch_rows = torch.cat(seen[start:start + n]).tolist()
        assert sorted(epoch_rows) == list(range(18))
        start += n
    for rows in seen:
        assert len(set(image_rows[rows.numpy()].tolist())) == len(rows)


# ----------------------------------------------------------------------------- (d) streaming

def test_english_fine_tune_streams_images_in_chunks(hf_folders, tmp_path):
    """Read in chunks (a byte budget of two batches), the fine-tune trains exactly as with
    every image in memory, and no read holds more than a chunk's images."""
    root, cfg = hf_folders
    rng = np.random.default_rng(1)
    paths = []
    for i in range(12):
        paths.append(str(tmp_path / f"im{i:02d}.png"))
        Image.fromarray(rng.integers(0, 256, (30 + i, 45, 3), dtype=np.uint8)).save(paths[-1])
    image_rows = _captions_per_image([2] * 12)
    captions = [EN[i % len(EN)] for i in range(len(image_rows))]
    vlp = _vlp_cfg(epochs=1)

    whole = load_hf_backbone(cfg)
    in_memory = whole.read_images(paths, 32)
    ref = TV.train_vlp_stage(backbone=whole, images=in_memory, captions=captions, image_rows=image_rows,
                            cfg=vlp, seed=3, device_name="cpu", out_dir=tmp_path / "whole")

    streamed = load_hf_backbone(cfg)
    reads = []

    def read(batch_paths):
        reads.append(len(batch_paths))
        return streamed.read_images(batch_paths, 32)

    per_image = 32 * 32 * 3
    source = TV.StreamedImages(paths, read, max_bytes=2 * 4 * per_image)   # chunk: one step
    out = TV.train_vlp_stage(backbone=streamed, images=source, captions=captions, image_rows=image_rows,
                            cfg=dataclasses.replace(vlp, num_workers=2), seed=3, device_name="cpu",
                            out_dir=tmp_path / "streamed")
    assert out.steps == ref.steps == len(TV.vlp_epoch_batches(image_rows, 4, 3, 0))
    assert np.array_equal(out.losses.total.to_numpy(), ref.losses.total.to_numpy())
    assert streamed.identity()["weights_hash"] == whole.identity()["weights_hash"]
    assert whole.identity()["weights_hash"] != load_hf_backbone(cfg).identity()["weights_hash"]  # it trained
    assert len(reads) > out.steps and max(reads) <= 4 and sum(reads) >= len(image_rows)


def test_source_vlp_gives_the_fine_tune_files_to_stream(tmp_path, monkeypatch):
    """notebook 01's source_vlp hands train_vlp_stage the image files, not decoded images."""
    from test_real_data import make_models, make_multi30k, real_overrides
    clip, bert, hidden = make_models(tmp_path / "weights")
    path = make_multi30k(tmp_path / "data")
    params = load_params(ROOT / "params" / "smoke.yaml", real_overrides(
        tmp_path, path, ["de", "fr"], clip, bert, hidden, "run.settings=[finetune]"))
    got = {}

    class Stop(Exception):
        pass

    def fake(**kw):
        got.update(kw)
        raise Stop

    monkeypatch.setattr(vlp_stage, "train_vlp_stage", fake)
    with pytest.raises(Stop):
        vlp_stage.source_vlp(Run(params, tmp_path / "reports" / "run"))
    images = got["images"]
    assert isinstance(images, TV.StreamedImages) and len(images) == 8      # 8 training images
    assert all(Path(p).is_file() for p in images.paths)
    first = images.read(images.paths[:2])
    assert first.shape == (2, 32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, got["backbone"].read_images(images.paths[:2], 32))


# ----------------------------------------------------------------------------- (e) finetune backbone

def test_finetune_without_its_fine_tuned_clip_stops(hf_folders, tmp_path):
    root, cfg = hf_folders
    hf = ["model.backbone=hf", f"hf.clip_path={cfg.clip_path}", f"hf.mbert_path={cfg.mbert_path}",
          "data.image_size=32", "web.image_size=32"]
    run_dir = tmp_path / "reports" / "run"
    params = smoke_params(tmp_path, *hf, "vlp.epochs=5", "vlp.steps=0")
    with pytest.raises(T.TrainingError, match=r"fine-tuned CLIP.*holds none.*01_source_vlp"):
        Run(params, run_dir).backbone("finetune")
    with pytest.raises(T.TrainingError, match="01_source_vlp"):   # steps count as well
        Run(smoke_params(tmp_path, *hf, "vlp.epochs=0", "vlp.steps=3"), run_dir).backbone("finetune")
    raw = load_hf_backbone(cfg).identity()["weights_hash"]
    # zero-shot uses the CLIP as it is; so does finetune when no fine-tune is asked for
    assert Run(params, run_dir).backbone("zeroshot").identity()["weights_hash"] == raw
    none = smoke_params(tmp_path, *hf, "vlp.epochs=0", "vlp.steps=0")
    assert Run(none, run_dir).backbone("finetune").identity()["weights_hash"] == raw
    # with the fine-tuned CLIP in the run folder, finetune takes it
    tuned = load_hf_backbone(cfg)
    with torch.no_grad():
        tuned.clip.logit_scale.add_(0.5)
    tuned.save(RunPaths(run_dir).finetuned_backbone)
    got = Run(params, run_dir).backbone("finetune").identity()["weights_hash"]
    assert got == tuned.identity()["weights_hash"] != raw


# ----------------------------------------------------------------------------- (f) paper files

def test_paper_finetune_files_hold_the_full_distillation_row():
    files = sorted((ROOT / "params").glob("paper_*finetune.yaml"))
    assert [f.stem for f in files] == ["paper_mscoco_finetune", "paper_multi30k_finetune"]
    for path in files:
        methods = load_params(path).run.methods["finetune"]
        assert {"floor", "oracle", "full_distill", "static", "dasd"} <= set(methods), path.name
        spec = METHODS["full_distill"]
        assert spec.trained and spec.train_tower and spec.adapter == "none", path.name
