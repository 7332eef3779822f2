"""dasd_lib.disentangle, dasd_lib.explorer and dasd_lib.plots on hand-made inputs: the linear
probe, the retrieval explorer's backing search, the W_z variation measure, the caption
sample and figure saving."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dasd_lib import disentangle, explorer, plots
from dasd_lib.model import TargetOutput


# ----------------------------------------------------------------------------- probes

def test_probe_separable_labels_are_decoded():
    rng = np.random.default_rng(0)
    labels = np.repeat(["circle", "square", "star"], 50)
    X = np.eye(3)[np.repeat([0, 1, 2], 50)] * 3 + rng.normal(scale=0.3, size=(150, 3))
    X = np.hstack([X, rng.normal(size=(150, 5))])  # plus uninformative dimensions
    accuracy, chance = disentangle.probe_accuracy(X, labels, seed=0)
    assert accuracy >= 0.95
    assert chance == pytest.approx(1 / 3, abs=0.05)  # stratified: the classes stay balanced


def test_probe_random_labels_stay_near_chance():
    rng = np.random.default_rng(1)
    gaps = []
    for seed in range(5):
        X = rng.normal(size=(200, 10))
        labels = rng.integers(0, 2, size=200)
        accuracy, chance = disentangle.probe_accuracy(X, labels, seed=seed)
        assert 0.5 <= chance <= 0.65
        gaps.append(accuracy - chance)
    assert abs(float(np.mean(gaps))) < 0.12


def test_probe_hand_made_case():
    # the sign of the first coordinate is the label; 10 + 10 samples, stratified 30 % test
    # split = 3 + 3: a perfect probe and a chance of exactly one half
    x = np.array([-5, -4, -3, -2, -1.5, -1, -0.8, -0.6, -0.4, -0.2,
                  0.2, 0.4, 0.6, 0.8, 1, 1.5, 2, 3, 4, 5])
    X = np.stack([x, np.zeros_like(x)], axis=1)
    labels = np.where(x > 0, "pos", "neg")
    assert disentangle.probe_accuracy(X, labels, seed=3) == (1.0, 0.5)
    # one class only: nothing to learn, everything right, chance 1
    assert disentangle.probe_accuracy(X, ["same"] * 20, seed=0) == (1.0, 1.0)


def test_probe_groups_stop_memorising():
    # features identify the group (image) only, labels are random per group: without
    # held-out groups the probe memorises them; with groups it cannot beat chance by much
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(40), 6)
    group_label = rng.integers(0, 2, size=40)
    X = np.eye(40)[groups] + rng.normal(scale=0.01, size=(240, 40))
    labels = group_label[groups]
    mixed, _ = disentangle.probe_accuracy(X, labels, seed=0)
    held_out, chance = disentangle.probe_accuracy(X, labels, seed=0, groups=groups)
    assert mixed >= 0.9
    assert held_out < chance + 0.2


def test_probe_rejects_mismatched_input():
    with pytest.raises(ValueError, match="labels"):
        disentangle.probe_accuracy(np.zeros((10, 2)), [0] * 9)
    with pytest.raises(ValueError, match="at least 4"):
        disentangle.probe_accuracy(np.zeros((3, 2)), [0, 1, 0])


# ----------------------------------------------------------------------------- search

# A four-word world: every word is one axis of a 4-d joint space, in English and German.
AXES = {"red": 0, "blue": 1, "circle": 2, "square": 3,
        "rot": 0, "roter": 0, "blau": 1, "blauer": 1, "kreis": 2, "quadrat": 3}


class StubBackbone(nn.Module):
    """tokenize_* map words to axis + 1 (0 pads); the English tower is a bag of words."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))  # embed_target reads the device from here

    @staticmethod
    def _tokenize(texts):
        rows = [[AXES[w] + 1 for w in t.lower().split() if w in AXES] or [0] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        return ids, (ids > 0).long()

    def tokenize_target(self, texts):
        return self._tokenize(texts)

    def tokenize_source(self, texts):
        return self._tokenize(texts)

    def encode_source_text(self, ids, mask):
        return bag_of_words(ids)


def bag_of_words(ids: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(ids, 5)[..., 1:].sum(1).float()  # (B, 4)


class StubModel(nn.Module):
    """The target tower: a bag of words, for German only (English must not reach it)."""

    def forward(self, ids, mask, lang, end_only=False):
        assert lang == "de", f"the target tower was asked for '{lang}'"
        return TargetOutput(r_T=bag_of_words(ids))


IMAGE_IDS = ["red_circle", "red_square", "blue_circle", "blue_square"]
IMAGE_EMB = np.array([[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1]], dtype=float)


def test_search_ranks_the_described_image_first():
    results = explorer.search_images(StubModel(), StubBackbone(), "ein blauer Kreis", "de",
                                     IMAGE_IDS, IMAGE_EMB, k=4, device="cpu")
    assert [r[0] for r in results][:1] == ["blue_circle"]
    assert [r[1] for r in results] == [1, 2, 3, 4]
    assert results[0][2] == pytest.approx(1.0)
    assert results[-1] == ("red_square", 4, pytest.approx(0.0))  # shares no word
    scores = [r[2] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert {r[0] for r in results[1:3]} == {"red_circle", "blue_square"}  # one word in common


def test_search_english_uses_the_frozen_source_tower_and_k():
    results = explorer.search_images(StubModel(), StubBackbone(), "red square", "en",
                                     IMAGE_IDS, IMAGE_EMB, k=2, device="cpu")
    assert len(results) == 2 and results[0][:2] == ("red_square", 1)


def test_search_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        explorer.search_images(StubModel(), StubBackbone(), "  ", "de", IMAGE_IDS, IMAGE_EMB)
    with pytest.raises(ValueError, match="image ids"):
        explorer.search_images(StubModel(), StubBackbone(), "rot", "de", IMAGE_IDS[:3], IMAGE_EMB)


def test_retrieval_explorer_renders_the_first_query():
    bank = explorer.ImageBank(image_ids=IMAGE_IDS, image_emb=IMAGE_EMB,
                              images=np.zeros((4, 8, 8, 3), np.uint8))
    widget = explorer.retrieval_explorer(StubModel(), StubBackbone(), bank, ["en", "de"], k=3,
                                         query="blauer Kreis", lang="de")
    controls, status, grid = widget.children
    assert len(grid.children) == 3
    assert "#1 blue_circle" in grid.children[0].children[1].value
    controls.children[0].value = ""  # an empty query: a message, not an exception
    controls.children[2].click()
    assert "empty" in status.value and grid.children == ()


def _bank() -> explorer.ImageBank:
    images = np.zeros((4, 8, 8, 3), np.uint8)
    images[2] = 200  # blue_circle: a distinguishable thumbnail
    return explorer.ImageBank(image_ids=IMAGE_IDS, image_emb=IMAGE_EMB, images=images)


def test_enter_and_a_new_language_search_without_the_button():
    widget = explorer.retrieval_explorer(StubModel(), StubBackbone(), _bank(), ["de", "en"], k=2)
    controls, status, grid = widget.children
    text, pick, _ = controls.children
    assert grid.children == () and text.continuous_update is False  # value syncs on Enter
    text.value = "roter Kreis"  # what the front end sends when Enter is pressed
    assert "#1 red_circle" in grid.children[0].children[1].value and len(grid.children) == 2
    pick.value = "en"  # a new language searches again, now with the English tower
    assert "(en)" in status.value and "#1 red_circle" in grid.children[0].children[1].value
    text.value = "blue square"
    assert "#1 blue_square" in grid.children[0].children[1].value
    assert "(en)" in status.value and "warning" not in status.value


def test_the_explorer_warns_when_the_script_does_not_fit_the_language():
    widget = explorer.retrieval_explorer(StubModel(), StubBackbone(), _bank(), ["de"], k=2,
                                         query="青い円", lang="de")
    status = widget.children[1]
    assert "warning: the caption is written mostly in Han (CJK) script" in status.value
    assert len(widget.children[2].children) == 2  # still ranked, but with the warning


@pytest.mark.parametrize("text, lang, expected", [
    ("ein blauer Kreis links", "de", None),
    ("un petit cœur à gauche", "fr", None),
    ("malý modrý čtverec", "cs", None),
    ("左に赤い丸があります。", "ja", None),
    ("左边有一个红色的圆。", "zh", None),
    ("a red circle", "ja", "mostly in Latin script"),
    ("a red circle", "zh", "mostly in Latin script"),
    ("左边有一个红色的圆", "de", "mostly in Han (CJK) script"),
    ("あかいまる", "fr", "mostly in Hiragana script"),
    ("Привет мир", "cs", "mostly in Cyrillic script"),
    ("左に赤い丸", "zh", "holds kana"),
    ("左边有一个红色的圆", "ja", "no kana"),
    ("42 !", "ja", None),  # no letters: nothing to judge
    ("a red circle", "xx", None),  # a language without a rule
])
def test_script_warning(text, lang, expected):
    warning = explorer.script_warning(text, lang)
    assert warning is None if expected is None else expected in warning


def test_unknown_words_by_unk_or_by_falling_apart_into_characters():
    from dasd_lib.backbones.wordpiece import train_wordpiece
    tok = train_wordpiece(["ein blauer kreis", "ein roter kreis", "ein blauer stern"] * 3,
                          vocab_size=200, context_length=16)
    assert explorer.unknown_words("Ein blauer Kreis.", tok) == ([], 3)
    # 'stein': its letters are known, the word is not (single characters); 'quux': [UNK]
    assert explorer.unknown_words("ein stein quux", tok) == (["stein", "quux"], 3)
    assert explorer.unknown_words("ein 42 kreis", tok) == ([], 2)  # numbers are not words
    warnings = explorer.query_warnings("ein stein quux", "de", tok)
    assert warnings == ["2 of 3 words are unknown to the de tokenizer (stein, quux): the model "
                        "never learnt them, so the ranking says little."]
    assert explorer.query_warnings("ein blauer quux", "de", tok) == []  # 1 of 3: a minority
    assert explorer.query_warnings("ein stein quux", "de") == []  # no tokenizer, no word check


def test_search_result_is_a_static_table_with_the_images():
    from bs4 import BeautifulSoup
    found = explorer.run_search(StubModel(), StubBackbone(), _bank(), " blauer Kreis ", "de", k=3)
    assert found.query == "blauer Kreis" and found.warnings == [] and found.n_images == 4
    rows = [[td.get_text(strip=True) for td in tr.find_all("td")]
            for tr in BeautifulSoup(found._repr_html_(), "html.parser").find_all("tr")[1:]]
    assert [r[0] for r in rows] == ["#1", "#2", "#3"]
    assert rows[0][2:] == ["blue_circle", "1.000"]
    images = BeautifulSoup(found._repr_html_(), "html.parser").find_all("img")
    assert images[0]["src"].startswith("data:image/png;base64,")
    assert images[0]["alt"] == "test image blue_circle" and images[0]["src"] != images[1]["src"]
    assert "blue_circle     1" in repr(found) and "top 3 of 4 test images" in repr(found)


# ----------------------------------------------------------------------------- W_z

def test_wz_variation_hand_made():
    # 1 layer of 1 x 1 matrices: (content, style) -> value; the last caption is in another
    # language and must not be paired with the others
    W = np.array([0.0, 1.0, 10.0, 100.0]).reshape(4, 1, 1, 1)
    content, style, lang = ["a", "a", "b", "a"], ["s", "t", "s", "t"], ["de", "de", "de", "fr"]
    table = disentangle.wz_variation(W, content, style, lang).set_index("pair")
    same_content = table.loc[disentangle.WZ_SAME_CONTENT]
    same_style = table.loc[disentangle.WZ_SAME_STYLE]
    assert same_content.mean_abs_diff == 1.0 and same_content.n_pairs == 1
    assert same_style.mean_abs_diff == 10.0 and same_style.n_pairs == 1
    assert same_style.relative == pytest.approx(10.0 / (111.0 / 4))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(style_scale=st.floats(4.0, 10.0), seed=st.integers(0, 10_000))
def test_wz_variation_finds_the_dominant_factor(style_scale, seed):
    rng = np.random.default_rng(seed)
    n_content, n_style, L, r = 6, 3, 2, 4
    content_part = rng.normal(size=(n_content, L, r, r))
    style_part = rng.normal(size=(n_style, L, r, r)) * style_scale
    c, s = np.meshgrid(np.arange(n_content), np.arange(n_style), indexing="ij")
    c, s = c.ravel(), s.ravel()
    W = content_part[c] + style_part[s]  # (N, L, r, r)
    table = disentangle.wz_variation(W, c, s)
    by = table.pivot(index="layer", columns="pair", values="mean_abs_diff")
    assert (by[disentangle.WZ_SAME_CONTENT] > by[disentangle.WZ_SAME_STYLE]).all()
    swapped = disentangle.wz_variation(W, s, c).pivot(index="layer", columns="pair",
                                                       values="mean_abs_diff")
    assert (swapped[disentangle.WZ_SAME_STYLE] > swapped[disentangle.WZ_SAME_CONTENT]).all()


def test_wz_variation_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, L, r, r\)"):
        disentangle.wz_variation(np.zeros((3, 4, 4)), [0, 1, 2], [0, 1, 2])


# ----------------------------------------------------------------------------- sample, figures

def _test_table() -> pd.DataFrame:
    rows = []
    for i in range(30):
        for lang in ("de", "ja"):
            for variant, styles in (("native", (f"{lang}:a", f"{lang}:b")), ("mt_clean", ("mt:x", "mt:y"))):
                for j, style in enumerate(styles * 2):
                    rows.append({"image_id": f"img{i:02d}", "lang": lang, "variant": variant,
                                 "caption_id": f"{i}-{lang}-{variant}-{j}", "style": style,
                                 "caption": f"caption {i} {j}"})
        rows.append({"image_id": f"img{i:02d}", "lang": "en", "variant": "native",
                     "caption_id": f"{i}-en", "style": "en:a", "caption": "english"})
    return pd.DataFrame(rows)


def test_sample_captions_is_deterministic_and_keeps_pairs():
    table = _test_table()
    a = explorer.sample_captions(table, ["de", "ja"], max_captions=40, seed=5)
    b = explorer.sample_captions(table.sample(frac=1, random_state=1), ["de", "ja"], 40, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert set(a.lang) == {"de", "ja"} and len(a) == 40  # 5 images x 2 langs x 2 variants x 2
    per_cell = a.groupby(["image_id", "lang", "variant"]).size()
    assert (per_cell == 2).all()
    assert a.image_id.nunique() == 5
    assert not a.image_id.isin(explorer.sample_captions(table, ["de", "ja"], 40, seed=6)
                                .image_id).all()


def test_save_figure_writes_png(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = plots.save_figure(fig, tmp_path, "05 umap/dasd")
    plt.close(fig)
    assert path == tmp_path / "figures" / "05_umap_dasd.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
