"""Views for notebook 00 and the probes: content labels, style frequencies, coverage, samples."""
import json

import numpy as np
import pandas as pd
import pytest

from dasd_lib.config import DataConfig
from dasd_lib.data import (LABEL_COLUMNS, build_rows, caption_stats, content_labels, load_corpus,
                           sample_grid, style_frequencies, token_coverage)


def _content(objs, bg="gray", group=3):
    return json.dumps({"n_objects": len(objs), "background": bg, "group": group,
                       "objects": [dict(zip(("shape", "colour", "size", "pos"), o)) for o in objs]})


def test_content_labels_main_object_is_largest_then_slot_order():
    t = pd.DataFrame({"content": [
        _content([("circle", "red", "small", "left"), ("star", "blue", "large", "right")]),
        _content([("heart", "white", "large", "right"), ("square", "green", "large", "top")], bg="sand"),
        "",
    ]}, index=[10, 11, 12])
    lab = content_labels(t)
    assert list(lab.columns) == LABEL_COLUMNS and list(lab.index) == [10, 11, 12]
    assert lab.loc[10, ["main_shape", "main_colour", "main_size", "main_pos"]].tolist() == \
        ["star", "blue", "large", "right"]
    assert lab.loc[11, "main_shape"] == "square", "tie between large objects: top comes before right"
    assert lab.loc[11, ["n_objects", "background", "shapes", "colours", "twin_group"]].tolist() == \
        ["2", "sand", "heart+square", "green+white", "3"]
    assert (lab.loc[12] == "").all()


def test_content_labels_separate_binding_twins():
    t = pd.DataFrame(build_rows(DataConfig(n_train=0, n_val=0, n_test=200, langs=["de"])))
    t = t[t["lang"] == "en"].drop_duplicates("image_id")
    lab = content_labels(t)
    twins = lab[lab["n_objects"] != "1"].groupby("twin_group")
    # same shape/colour sets within a group, but the main object's binding varies
    assert (twins["shapes"].nunique() == 1).all() and (twins["colours"].nunique() == 1).all()
    assert (twins["main_colour"].nunique() > 1).mean() > 0.5


def test_style_frequencies_by_split_variant_language():
    t = pd.DataFrame(build_rows(DataConfig(n_train=50, n_val=0, n_test=20, langs=["fr", "zh"])))
    sf = style_frequencies(t)
    assert list(sf.columns) == ["split", "variant", "lang", "style", "count", "share"]
    assert sf["count"].sum() == len(t)
    np.testing.assert_allclose(sf.groupby(["split", "variant", "lang"])["share"].sum(), 1.0, atol=1e-3)
    native_fr = sf[(sf["split"] == "test") & (sf["lang"] == "fr") & (sf["variant"] == "native")]
    assert set(native_fr["style"]) == {"fr:se-trouve", "fr:situe", "fr:on-voit", "fr:count"}
    assert sf.loc[sf["variant"] != "native", "style"].str.startswith("mt:").all()
    wide = style_frequencies(t, wide=True)
    assert wide.loc[("native", "fr:situe"), ("test", "fr")] > 0
    assert wide.loc[("native", "fr:situe"), ("train", "fr")] == 0
    assert wide.loc[("mt", "mt:with"), ("test", "zh")] == 0


def test_token_coverage_names_uncovered_forms():
    t = pd.DataFrame({
        "split": ["train", "train", "test", "test"], "lang": ["de", "zh", "de", "zh"],
        "variant": ["mt", "mt", "native", "native"],
        "caption": ["Ein roter Kreis links.", "一个红色的圆形在左边。",
                    "Links liegt ein blauer Kreis.", "左边有一个红色的圆形。"]})
    cov = token_coverage(t).set_index("lang")
    assert cov.loc["de", "missing_content"] == "blauer"
    assert cov.loc["de", "content_coverage"] == pytest.approx(2 / 3)       # kreis, links covered
    assert set(cov.loc["de", "missing_words"].split()) == {"blauer", "liegt"}
    assert cov.loc["zh", "content_coverage"] == 1.0 and cov.loc["zh", "missing_words"] == "有"


def test_caption_stats_and_sample_grid(tmp_path):
    cfg = DataConfig(root=str(tmp_path), name="s", n_train=8, n_val=0, n_test=8, captions_per_image=2,
                     image_size=32)
    table = load_corpus(cfg)
    cs = caption_stats(table)
    row = cs[(cs["split"] == "test") & (cs["lang"] == "de") & (cs["variant"] == "native")].iloc[0]
    assert row["images"] == 8 and row["captions"] == 16 and row["mean_length"] > 5
    grid = sample_grid(table, 3, seed=1, per_lang=1)
    assert grid.images.shape == (3, 32, 32, 3) and len(grid.image_ids) == 3
    by = grid.by_image(grid.image_ids[0])
    assert list(by) == ["en", "de", "fr", "cs", "ja", "zh"]
    assert len(by["de"]) == 2 and by["de"][0].startswith(("native", "mt_clean"))
    assert sample_grid(table, 3, seed=1).image_ids == grid.image_ids     # deterministic
    fig = grid.figure(cols=3)
    assert len(fig.axes) == 3
