"""The synthetic benchmark: determinism, reuse, binding twins, MT noise, style gap,
token coverage, web corpus."""
import dataclasses
import json
import random
from collections import defaultdict

import pandas as pd
import pytest

from dasd_lib.config import DataConfig
from dasd_lib.data import (COLUMNS, DataError, build_rows, build_scenes, content_oracle_recall,
                           generate_corpus, held_out_overlap, parse_english, token_coverage,
                           translate)
from dasd_lib.data.synthetic import build_scenes_counted, train_overlap
from dasd_lib.data.languages import EN_SIZE_OF
from dasd_lib.data.world import binding_key

SMALL = dict(n_train=40, n_val=8, n_test=24, captions_per_image=3, image_size=32)


def small_cfg(tmp_path, **kw) -> DataConfig:
    return DataConfig(root=str(tmp_path), name="small", **(SMALL | kw))


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = generate_corpus(small_cfg(tmp_path / "a"))
    b = generate_corpus(small_cfg(tmp_path / "b"), workers=2)   # also: parallel == serial
    fa, fb = _files(a), _files(b)
    assert len([k for k in fa if k.endswith(".png")]) == 40 + 8 + 24
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)
    c = generate_corpus(small_cfg(tmp_path / "c", seed=1))
    assert _files(c)["captions.jsonl"] != fa["captions.jsonl"]


def test_reuses_matching_corpus_and_regenerates_on_change(tmp_path):
    cfg = small_cfg(tmp_path)
    out = generate_corpus(cfg)
    stamp = (out / "meta.json").stat().st_mtime_ns
    assert generate_corpus(dataclasses.replace(cfg, on_missing="skip")) == out   # loading option only
    assert (out / "meta.json").stat().st_mtime_ns == stamp
    generate_corpus(dataclasses.replace(cfg, mt_noise=0.0))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["mt_noise"] == 0.0
    (out / "images" / "val_00000.png").unlink()            # damaged folder -> regenerated
    generate_corpus(dataclasses.replace(cfg, mt_noise=0.0))
    assert (out / "images" / "val_00000.png").is_file()


@pytest.mark.fault
def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "mine.txt").write_text("user data")
    with pytest.raises(DataError, match="not made by the generator"):
        generate_corpus(small_cfg(tmp_path))


def test_bad_config_is_named():
    with pytest.raises(DataError, match="data.langs.*'xx'"):
        build_scenes(DataConfig(langs=["de", "xx"]))
    with pytest.raises(DataError, match="data.corpus"):
        build_scenes(DataConfig(corpus="news"))


def test_binding_twins_share_attributes_and_differ_in_binding():
    cfg = DataConfig(n_train=200, n_val=0, n_test=200, twin_group_size=4)
    for split, scenes in build_scenes(cfg).items():
        groups = defaultdict(list)
        for sc in scenes:
            groups[sc.group].append(sc)
        in_twins = 0
        for gid, members in groups.items():
            for field in ("shape", "colour", "size", "pos"):   # same multiset in every twin
                assert len({tuple(sorted(getattr(o, field) for o in sc.objects)) for sc in members}) == 1
            assert len({binding_key(sc) for sc in members}) == len(members), "bound differently"
            if len(members[0].objects) > 1:
                in_twins += len(members)
                # full groups except the cut last one (and, held out, twins of a training scene)
                assert len(members) == 4 or gid == max(groups) or split != "train"
        assert in_twins / len(scenes) > 0.7, split


def test_captions_carry_the_binding():
    """Every caption determines its image's content, so twins are distinguishable from text."""
    cfg = DataConfig(n_train=80, n_val=0, n_test=80, captions_per_image=5)
    table = pd.DataFrame(build_rows(cfg))
    for row in table[table["lang"] == "en"].itertuples():
        objs = {(o["size"], o["colour"], o["shape"], o["pos"]) for o in json.loads(row.content)["objects"]}
        parsed = {(EN_SIZE_OF[i.size_word], i.colour, i.shape, i.pos) for i in parse_english(row.caption).items}
        assert parsed == objs
    # in every language and variant, one caption text never describes two different contents
    contents_per_text = table.groupby(["lang", "caption"])["content"].apply(
        lambda s: s.map(lambda c: str(sorted(map(str, json.loads(c)["objects"])))).nunique())
    assert contents_per_text.max() == 1


def test_table_rows_follow_the_contract():
    cfg = DataConfig(n_train=30, n_val=6, n_test=10, captions_per_image=5, langs=["de", "ja"])
    t = pd.DataFrame(build_rows(cfg))
    assert list(t.columns) == COLUMNS and t["caption_id"].is_unique
    counts = t.groupby(["split", "lang", "variant"]).size().to_dict()
    assert counts == {("train", "en", "native"): 30, ("train", "de", "mt"): 30, ("train", "ja", "mt"): 30,
                      ("val", "en", "native"): 30, ("val", "de", "native"): 30, ("val", "de", "mt_clean"): 30,
                      ("val", "ja", "native"): 30, ("val", "ja", "mt_clean"): 30,
                      ("test", "en", "native"): 50, ("test", "de", "native"): 50,
                      ("test", "de", "mt_clean"): 50, ("test", "ja", "native"): 50, ("test", "ja", "mt_clean"): 50}
    mt = t[t["variant"].isin(["mt", "mt_clean"])]
    assert (mt["source_caption"] != "").all() and (t.loc[t["variant"] == "native", "source_caption"] == "").all()
    # per test image, each language's 5 native captions cover all its 4 styles
    natives = t[(t["split"] == "test") & (t["variant"] == "native") & (t["lang"] == "de")]
    assert natives.groupby("image_id")["style"].nunique().min() == 4
    # mt_clean is exactly the noise-free translation of its English source
    for r in mt[mt["variant"] == "mt_clean"].head(20).itertuples():
        assert translate(r.source_caption, r.lang)[0] == r.caption


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_mt_noise_rate(noise):
    cfg = DataConfig(n_train=500, n_val=0, n_test=0, mt_noise=noise)
    t = pd.DataFrame(build_rows(cfg))
    mt = t[t["variant"] == "mt"]
    changed = [translate(s, lang)[0] != c for s, lang, c in zip(mt["source_caption"], mt["lang"], mt["caption"])]
    rate = sum(changed) / len(changed)
    assert abs(rate - noise) < 0.04, rate


def test_native_test_captions_never_look_like_translations():
    t = pd.DataFrame(build_rows(DataConfig(n_train=50, n_val=0, n_test=100)))
    test = t[t["split"] == "test"]
    for lang in ("de", "fr", "cs", "ja", "zh"):
        native = set(test.loc[(test["lang"] == lang) & (test["variant"] == "native"), "caption"])
        mt = set(t.loc[(t["lang"] == lang) & t["variant"].isin(["mt", "mt_clean"]), "caption"])
        assert native and mt and not native & mt
        assert not set(test.loc[test["variant"] == "native", "style"]) & set(t.loc[t["variant"] != "native", "style"])


def test_token_coverage_is_complete_with_default_params():
    """Every content word form of the native test captions occurs in the training text."""
    table = pd.DataFrame(build_rows(DataConfig()))
    cov = token_coverage(table)
    assert set(cov["lang"]) == {"en", "de", "fr", "cs", "ja", "zh"}
    assert (cov["content_coverage"] == 1.0).all(), cov[["lang", "missing_content"]]
    assert (cov["content_forms"] >= 20).all()
    # the style words of native captions are the part that is not covered
    de = cov.set_index("lang").loc["de"]
    assert "befindet" in de["missing_words"].split()


def test_web_corpus_is_shifted():
    down = pd.DataFrame(build_rows(DataConfig(n_train=300, n_val=0, n_test=0)))
    web = pd.DataFrame(build_rows(DataConfig(corpus="web", n_train=300)))
    assert set(web["split"]) == {"train"}
    assert set(map(tuple, web[["lang", "variant"]].drop_duplicates().values)) == \
        {("en", "native")} | {(lang, "mt") for lang in ("de", "fr", "cs", "ja", "zh")}
    n_obj = lambda t: t["content"].map(lambda c: json.loads(c)["n_objects"])  # noqa: E731
    bg = lambda t: set(t["content"].map(lambda c: json.loads(c)["background"]))  # noqa: E731
    assert n_obj(web).min() >= 2 and n_obj(web).max() == 5 and n_obj(web).mean() > n_obj(down).mean() + 0.8
    assert not bg(web) & bg(down)
    en_len = lambda t: t.loc[t["lang"] == "en", "caption"].str.split().str.len().mean()  # noqa: E731
    assert en_len(web) > en_len(down) + 5
    assert web.loc[web["lang"] == "en", "caption"].str.contains("background").all()


def test_changing_languages_keeps_other_captions():
    a = pd.DataFrame(build_rows(DataConfig(n_train=20, n_val=0, n_test=5, langs=["de", "zh"])))
    b = pd.DataFrame(build_rows(DataConfig(n_train=20, n_val=0, n_test=5, langs=["zh"])))
    za, zb = (x[x["lang"].isin(["en", "zh"])].reset_index(drop=True) for x in (a, b))
    pd.testing.assert_frame_equal(za, zb)


def test_random_state_is_not_shared():
    random.seed(123)
    rows1 = build_rows(DataConfig(n_train=5, n_val=0, n_test=2))
    random.seed(456)
    assert build_rows(DataConfig(n_train=5, n_val=0, n_test=2)) == rows1


def test_held_out_scenes_never_repeat_a_training_scene(tmp_path):
    # the default sizes: before the exclusion 112 of 1,000 test and 17 of 200 val scenes
    # showed a training scene's objects (79 of them one-object scenes)
    cfg = DataConfig()
    scenes, dropped = build_scenes_counted(cfg)
    assert train_overlap(scenes) == {"val": 0, "test": 0}
    assert dropped["test"] > 50 and dropped["val"] > 5, dropped     # there was something to drop
    assert {k: len(v) for k, v in scenes.items()} == {"train": 4000, "val": 200, "test": 1000}
    # the training split is drawn as before: excluding held-out scenes never touches it
    unfiltered = DataConfig(n_val=0, n_test=0)
    assert build_scenes(unfiltered)["train"] == scenes["train"]
    # the table view (what notebook 00 shows) agrees, and counts overlap when there is one
    out = generate_corpus(small_cfg(tmp_path, n_train=200, n_test=100, max_objects=1))
    table = pd.read_json(out / "captions.jsonl", lines=True)
    assert held_out_overlap(table).same_objects_as_train.tolist() == [0, 0]
    assert json.loads((out / "meta.json").read_text())["dropped_train_overlap"]["test"] > 0
    leaked = table.copy()
    test_ids = leaked.split == "test"
    first_train = leaked[leaked.split == "train"].content.iloc[0]
    leaked.loc[test_ids & (leaked.image_id == leaked[test_ids].image_id.iloc[0]), "content"] = first_train
    assert held_out_overlap(leaked).set_index("split").loc["test", "same_objects_as_train"] == 1


def test_content_oracle_recall_counts_images_with_the_same_objects():
    scene = lambda objs: json.dumps({"objects": [dict(zip(("shape", "colour", "size", "pos"), o)) for o in objs]})
    a, b = scene([("circle", "red", "large", "left")]), scene([("star", "blue", "small", "top")])
    rows = [  # images 0 and 1 show the same object; 2 stands alone; two captions each
        {"split": "test", "image_id": str(i), "lang": "de", "content": c}
        for i, c in enumerate([a, a, b]) for _ in range(2)]
    got = content_oracle_recall(pd.DataFrame(rows)).iloc[0]
    assert got["oracle_R@1"] == pytest.approx(100 * (0.5 * 4 + 1 * 2) / 6, abs=0.01)
    assert got["tied_images"] == 2 and got["captions"] == 6


def test_mt_native_share_is_the_style_gap():
    base = dict(n_train=300, n_val=0, n_test=0, langs=["de", "ja"])
    def train_styles(share):
        rows = pd.DataFrame(build_rows(DataConfig(mt_native_share=share, **base)))
        return rows[(rows.split == "train") & (rows.lang != "en")]
    closed, half, fluent = train_styles(0.0), train_styles(0.5), train_styles(1.0)
    native = lambda t: t["style"].str.startswith(("de:", "ja:")).mean()
    assert native(closed) == 0.0 and native(fluent) == 1.0
    assert 0.4 < native(half) < 0.6
    # only the style changes: same images, English sources, variant and content per row
    for col in ("image_id", "source_caption", "variant", "content", "caption_id"):
        assert closed[col].tolist() == half[col].tolist(), col
    # a native-style training caption is exactly what the native grammar writes
    from dasd_lib.data import native_caption
    from dasd_lib.data.world import Scene
    row = fluent.iloc[0]
    objs = Scene.from_json(row.content).objects
    assert row.caption in {native_caption(p, row.lang, row["style"]) for p in __import__("itertools").permutations(objs)}
    # translationese captions are untouched where the share leaves them
    kept = half["style"].str.startswith("mt:")
    assert (half[kept].caption == closed[kept].caption).all()
    with pytest.raises(DataError, match="data.mt_native_share"):
        build_scenes(DataConfig(mt_native_share=1.5))


_GENERATE = """
import json, sys
from dasd_lib.config import DataConfig
from dasd_lib.data import generate_corpus
cfg = DataConfig(**json.loads(sys.argv[1]))
print(generate_corpus(cfg))
"""


@pytest.mark.fault
def test_two_processes_generating_one_corpus_both_succeed_with_identical_files(tmp_path):
    import subprocess
    import sys
    cfg = dataclasses.asdict(small_cfg(tmp_path / "shared"))
    procs = [subprocess.Popen([sys.executable, "-c", _GENERATE, json.dumps(cfg)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    folder = tmp_path / "shared" / "small"
    assert {o.strip() for o, _ in outs} == {str(folder)}
    reference = _files(generate_corpus(small_cfg(tmp_path / "alone")))
    together = _files(folder)
    assert together.keys() == reference.keys()
    assert all(together[k] == reference[k] for k in reference)
    leftovers = [p.name for p in (tmp_path / "shared").iterdir() if p.name not in ("small", ".small.lock")]
    assert leftovers == []  # no temporary copy left behind
