"""Loaders: synthetic folder, DASD release layout (round trip), CSV/JSONL manifest, images,
and the errors bad input must give (naming the file and the problem)."""
import dataclasses
import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest

from dasd_lib.config import DataConfig
from dasd_lib.data import (COLUMNS, DataError, DataFileNotFoundError, generate_corpus, load_corpus,
                           load_images, load_manifest, load_release, write_release_layout)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    cfg = DataConfig(root=str(tmp_path_factory.mktemp("data")), name="tiny", n_train=12, n_val=4,
                     n_test=8, captions_per_image=2, image_size=32)
    return cfg, load_corpus(cfg)


def _key(t: pd.DataFrame) -> pd.DataFrame:
    cols = ["split", "image_id", "lang", "variant", "caption", "source_caption", "image_path"]
    return t[cols].sort_values(cols[:5]).reset_index(drop=True)


def test_load_corpus_gives_the_contract_table(corpus):
    cfg, table = corpus
    assert list(table.columns) == COLUMNS
    assert set(table["lang"]) == {"en", "de", "fr", "cs", "ja", "zh"}
    assert table["image_path"].map(lambda p: p.startswith("/")).all()
    assert set(table["corpus"]) == {"downstream"}
    only = load_corpus(dataclasses.replace(cfg, langs=["fr"]))       # same files, filtered
    assert set(only["lang"]) == {"en", "fr"}


@pytest.mark.parametrize("copy_images", [False, True])
def test_release_layout_round_trip(corpus, tmp_path, copy_images):
    _, table = corpus
    path_json = write_release_layout(table, tmp_path / "release", copy_images=copy_images)
    spec = json.loads(path_json.read_text())
    assert set(spec) == {"train", "val", "test"}
    for entry in spec.values():
        assert len({len(entry[k]) for k in ("anno_file", "feature", "name_file", "langs")}) == 1
    names = np.load(tmp_path / "release" / spec["test"]["name_file"][0])
    anno = json.loads((tmp_path / "release" / spec["test"]["anno_file"][0]).read_text())
    assert set(anno) == set(names.tolist()) and all(isinstance(v, list) for v in anno.values())
    back = load_release(path_json, tmp_path / "release" / "english.json")
    if copy_images:
        back["image_path"] = back["image_path"].str.replace(str(tmp_path / "release" / "images"),
                                                            str(table["image_path"].iloc[0].rsplit("/", 1)[0]))
    pd.testing.assert_frame_equal(_key(back), _key(table))


def test_release_without_en_entries_takes_english_from_the_english_json(corpus, tmp_path):
    _, table = corpus
    path_json = write_release_layout(table, tmp_path / "r")
    spec = json.loads(path_json.read_text())
    for entry in spec.values():       # drop "en" and the "variants" extension: the authors' format
        keep = [i for i, lang in enumerate(entry["langs"]) if lang != "en"]
        for k in list(entry):
            entry[k] = [entry[k][i] for i in keep]
        del entry["variants"]
    path_json.write_text(json.dumps(spec))
    back = load_release(path_json, tmp_path / "r" / "english.json", langs=["de"])
    assert set(back["lang"]) == {"en", "de"}
    assert (back.loc[back["split"] == "train", "variant"].isin(["native", "mt"])).all()
    assert set(back.loc[(back["split"] == "test") & (back["lang"] == "de"), "variant"]) == {"native"}
    assert len(back[back["lang"] == "en"]) == len(table[table["lang"] == "en"])


@pytest.fixture
def release(corpus, tmp_path):
    _, table = corpus
    path_json = write_release_layout(table, tmp_path / "rel", copy_images=True)
    return path_json, tmp_path / "rel"


def _edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data, ensure_ascii=False))


def test_release_errors_name_the_file(release, tmp_path):
    path_json, root = release
    with pytest.raises(FileNotFoundError, match="path file .*nope.json does not exist"):
        load_release(root / "nope.json")
    (tmp_path / "bad.json").write_text('{"train": {"anno_file": [}')
    with pytest.raises(DataError, match=r"bad.json: malformed JSON .*line 1"):
        load_release(tmp_path / "bad.json")
    anno = root / "annotations" / "test_de_native.json"
    anno.write_text(anno.read_text()[:-5])
    with pytest.raises(DataError, match="test_de_native.json: malformed JSON"):
        load_release(path_json)


def test_release_unknown_language_and_mismatched_lists(release):
    path_json, _ = release
    _edit_json(path_json, lambda d: d["val"]["langs"].__setitem__(1, "xx"))
    with pytest.raises(DataError, match=r"path.json \[val\]: unknown language code\(s\) \['xx'\]"):
        load_release(path_json)
    _edit_json(path_json, lambda d: d["val"]["langs"].pop())
    with pytest.raises(DataError, match=r"\[val\]: the lists must have the same length"):
        load_release(path_json)


def test_release_names_without_captions_error_or_skip(release, caplog):
    path_json, root = release
    anno = root / "annotations" / "test_fr_native.json"
    _edit_json(anno, lambda d: d.pop(sorted(d)[0]))
    with pytest.raises(DataError, match=r"test.npy: 1 image name\(s\) have no captions in .*test_fr_native.json"):
        load_release(path_json)
    with caplog.at_level(logging.WARNING, logger="dasd_lib.data"):
        t = load_release(path_json, on_missing="skip")
    assert "skipped 1 item(s): 1 name(s) without captions" in caplog.text
    fr = t[(t["lang"] == "fr") & (t["split"] == "test")]
    assert fr[fr["variant"] == "native"]["image_id"].nunique() == 7
    assert fr[fr["variant"] == "mt_clean"]["image_id"].nunique() == 8


def test_release_empty_caption_error_or_skip(release, caplog):
    path_json, root = release
    anno = root / "annotations" / "train_cs_mt.json"
    _edit_json(anno, lambda d: d[sorted(d)[0]].__setitem__(0, "  "))
    with pytest.raises(DataError, match=r"train_cs_mt.json: empty caption #0"):
        load_release(path_json)
    with caplog.at_level(logging.WARNING, logger="dasd_lib.data"):
        t = load_release(path_json, on_missing="skip")
    assert "1 empty caption(s)" in caplog.text and len(t[(t["lang"] == "cs") & (t["split"] == "train")]) == 11


@pytest.mark.fault
def test_release_missing_image_error_or_skip(release, caplog):
    path_json, root = release
    (root / "images" / "test_00003.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"image file .*test_00003.png does not exist"):
        load_release(path_json)
    with caplog.at_level(logging.WARNING, logger="dasd_lib.data"):
        t = load_release(path_json, on_missing="skip")
    assert "missing image(s)" in caplog.text and "test_00003" not in set(t["image_id"])


def test_release_rejects_pickled_name_files(release):
    path_json, root = release
    np.save(root / "names" / "val.npy", np.array(["a.png", 3], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="val.npy: cannot read .* without pickle"):
        load_release(path_json)


# ---------------------------------------------------------------- manifest
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_manifest_round_trip_with_relative_paths(corpus, tmp_path, fmt):
    _, table = corpus
    folder = tmp_path / "m"
    shutil.copytree(table["image_path"].iloc[0].rsplit("/", 1)[0], folder / "imgs")
    t = table.assign(image_path="imgs/" + table["image_path"].str.rsplit("/", n=1).str[-1])
    path = folder / f"manifest.{fmt}"
    if fmt == "csv":
        t.to_csv(path, index=False)
    else:
        t.to_json(path, orient="records", lines=True, force_ascii=False)
    back = load_manifest(path)
    assert list(back.columns) == COLUMNS
    assert back["image_path"].str.startswith(str(folder / "imgs")).all()
    pd.testing.assert_frame_equal(back.drop(columns="image_path"), table.drop(columns="image_path"))


def test_minimal_manifest_gets_defaults(tmp_path, corpus):
    _, table = corpus
    img = table["image_path"].iloc[0]
    (tmp_path / "m.csv").write_text(f"image_path,lang,caption,split\n{img},de,Ein Kreis.,test\n"
                                    f"{img},en,A circle.,test\n{img},en,A round thing.,test\n")
    t = load_manifest(tmp_path / "m.csv", corpus="mine")
    assert list(t["caption_id"]) == [f"{t.image_id[0]}:de:native:0", f"{t.image_id[0]}:en:native:0",
                                     f"{t.image_id[0]}:en:native:1"]
    assert set(t["variant"]) == {"native"} and set(t["corpus"]) == {"mine"} and set(t["style"]) == {""}


def test_manifest_errors_name_file_and_line(tmp_path, corpus, caplog):
    _, table = corpus
    img = table["image_path"].iloc[0]
    p = tmp_path / "m.jsonl"
    good = json.dumps({"image_path": img, "lang": "de", "caption": "Ein Kreis.", "split": "test"})
    p.write_text(good + "\n" + good.replace('"de"', '"xx"') + "\n")
    with pytest.raises(DataError, match=r"m.jsonl: unknown language code\(s\) \['xx'\] \(first on line 2\)"):
        load_manifest(p)
    p.write_text(good + "\n{not json}\n")
    with pytest.raises(DataError, match=r"m.jsonl: malformed JSON on line 2"):
        load_manifest(p)
    p.write_text(good + "\n" + good.replace("Ein Kreis.", " ") + "\n")
    with pytest.raises(DataError, match=r"m.jsonl: empty caption on line 2"):
        load_manifest(p)
    p.write_text(good + "\n" + good.replace(img, img + ".gone") + "\n")
    with pytest.raises(DataFileNotFoundError, match=r"\.gone does not exist"):
        load_manifest(p)
    with caplog.at_level(logging.WARNING, logger="dasd_lib.data"):
        assert len(load_manifest(p, on_missing="skip")) == 1
    assert "skipped 1 item(s): 1 missing image(s)" in caplog.text
    (tmp_path / "m.csv").write_text("image_path,caption,split\nx.png,hi,test\n")
    with pytest.raises(DataError, match=r"m.csv: missing required column\(s\) \['lang'\]"):
        load_manifest(tmp_path / "m.csv")
    with pytest.raises(FileNotFoundError, match="manifest .*none.csv does not exist"):
        load_manifest(tmp_path / "none.csv")


# ---------------------------------------------------------------- images and dispatch
@pytest.mark.fault
def test_load_images_resizes_and_reports_bad_files(corpus, tmp_path, caplog):
    _, table = corpus
    paths = list(table["image_path"].unique()[:3])
    imgs = load_images(paths, 32)
    assert imgs.shape == (3, 32, 32, 3) and imgs.dtype == np.uint8 and imgs.std() > 5
    assert load_images(paths, 16).shape == (3, 16, 16, 3)
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"corrupt.png is corrupt or not an image"):
        load_images([paths[0], bad], 32)
    with pytest.raises(FileNotFoundError, match=r"missing.png does not exist"):
        load_images([tmp_path / "missing.png"], 32)
    with caplog.at_level(logging.WARNING, logger="dasd_lib.data"):
        imgs, kept = load_images([paths[0], bad, tmp_path / "missing.png", paths[1]], 32,
                                 on_missing="skip", return_kept=True)
    assert list(kept) == [0, 3] and imgs.shape[0] == 2
    assert (imgs[1] == load_images([paths[1]], 32)[0]).all()
    assert "skipped 2 item(s)" in caplog.text


def test_load_corpus_reads_release_and_manifest_sources(corpus, tmp_path):
    cfg, table = corpus
    path_json = write_release_layout(table, tmp_path / "rel")
    rel = load_corpus(DataConfig(source="release", path=str(path_json), name="m30k",
                                 english_path=str(tmp_path / "rel" / "english.json"), langs=["de", "cs"]))
    assert set(rel["lang"]) == {"en", "de", "cs"} and set(rel["corpus"]) == {"m30k"}
    man = load_corpus(DataConfig(source="manifest", path=str(generate_corpus(cfg) / "captions.jsonl")))
    pd.testing.assert_frame_equal(man, table)
    with pytest.raises(DataError, match="data.source: unknown source 'hub'"):
        load_corpus(DataConfig(source="hub"))
    with pytest.raises(DataError, match="data.path"):
        load_corpus(DataConfig(source="release"))
    with pytest.raises(DataError, match=r"data.langs: unknown language code\(s\) \['es'\]"):
        load_corpus(DataConfig(source="manifest", path="x.csv", langs=["es"]))


# ---------------------------------------------------------------- issue 16: load-time checks
def _png(path, mode="RGB", size=4):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), (10, 20, 30, 128)[:len(mode)]).save(path)
    return path


def _manifest(tmp_path, rows, name="m.csv"):
    """A CSV manifest of (image, lang, split, caption[, variant]) rows; images made as needed."""
    for row in rows:
        if not (tmp_path / row[0]).exists():
            _png(tmp_path / row[0])
    header = "image_path,lang,split,caption,variant\n"
    (tmp_path / name).write_text(header + "".join(",".join([*r, "native"][:5]) + "\n" for r in rows),
                                 encoding="utf-8")
    return tmp_path / name


def _corpus_cfg(path, langs=("de",), **kw):
    return DataConfig(source="manifest", path=str(path), name="mine", langs=list(langs), **kw)


@pytest.mark.fault
def test_no_test_rows_at_all_is_an_error_at_load(tmp_path):            # issue 16 (a)
    path = _manifest(tmp_path, [("a.png", "en", "train", "A dog."), ("a.png", "de", "train", "Ein Hund.", "mt")])
    with pytest.raises(DataError, match=r"m.csv: no test rows at all \(rows per split: train 2\).*"
                                        r"add captions with split 'test'"):
        load_corpus(_corpus_cfg(path))
    web = load_corpus(_corpus_cfg(path, corpus="web"))   # the web corpus is train-only
    assert set(web["split"]) == {"train"}


@pytest.mark.fault
def test_no_test_rows_for_one_language_is_an_error_naming_it(tmp_path):  # issue 16 (b)
    path = _manifest(tmp_path, [("a.png", "en", "test", "A dog."), ("a.png", "de", "test", "Ein Hund."),
                                ("b.png", "fr", "train", "Un chien.", "mt")])
    with pytest.raises(DataError, match=r"m.csv: no test rows for language\(s\) \['fr'\] of data.langs "
                                        r"\['de', 'fr'\].*add its test captions, or remove it from data.langs"):
        load_corpus(_corpus_cfg(path, langs=["de", "fr"]))
    assert set(load_corpus(_corpus_cfg(path, langs=["de"]))["lang"]) == {"en", "de"}


@pytest.mark.fault
def test_long_captions_are_counted_per_language(tmp_path, caplog):     # issue 16 (c)
    from dasd_lib.data import long_captions, token_lower_bound
    assert token_lower_bound("A dog, running.") == 7         # [CLS] A dog , running . [SEP]
    assert token_lower_bound("一只狗") == 5                   # one per CJK character
    long_de = " ".join(["Hund"] * 5000)                       # 25,000 characters
    path = _manifest(tmp_path, [("a.png", "en", "test", "A dog."), ("a.png", "de", "test", long_de),
                                ("a.png", "de", "test", "Ein Hund."),
                                ("a.png", "zh", "test", "狗" * 20)])
    with caplog.at_level(logging.INFO, logger="dasd_lib.data"):
        table = load_corpus(_corpus_cfg(path, langs=["de", "zh"], max_caption_tokens=20))
    line = [r for r in caplog.records if "max_caption_tokens" in r.getMessage()]
    assert len(line) == 1 and line[0].levelno == logging.WARNING
    assert "de 1 of 2, en 0 of 1, zh 1 of 1" in line[0].getMessage()
    counts = long_captions(table, 20).set_index("lang")
    assert counts.loc["de", "over_max_tokens"] == 1 and counts.loc["en", "over_max_tokens"] == 0
    assert counts.loc["zh", "over_max_tokens"] == 1 and counts.loc["de", "captions"] == 2
    assert long_captions(table, 23).set_index("lang").loc["zh", "over_max_tokens"] == 0  # 20 + 2 = 22
    assert long_captions(table, 21).set_index("lang").loc["zh", "over_max_tokens"] == 1


@pytest.mark.fault
def test_one_image_file_under_two_ids_is_an_error(tmp_path):          # issue 16 (d)
    _png(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("image_path,image_id,lang,split,caption\n"
                                    "a.png,one,en,test,A dog.\na.png,two,en,test,A hound.\n")
    with pytest.raises(DataError, match=r"m.csv: image file .*a.png is listed under 2 image ids: "
                                        r"'one' \(line 2\), 'two' \(line 3\); give each image file one image_id"):
        load_manifest(tmp_path / "m.csv")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.fault
def test_non_utf8_manifest_error_gives_the_line(tmp_path, fmt):        # issue 16 (e)
    _png(tmp_path / "a.png")
    lines = (["image_path,lang,split,caption", "a.png,en,test,A dog.", "a.png,fr,test,Un caf\xe9."]
             if fmt == "csv" else
             ['{"image_path": "a.png", "lang": "en", "split": "test", "caption": "A dog."}',
              '{"image_path": "a.png", "lang": "fr", "split": "test", "caption": "Un caf\xe9."}'])
    path = tmp_path / f"m.{fmt}"
    path.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    line = 3 if fmt == "csv" else 2
    with pytest.raises(DataError, match=rf"m.{fmt}: not UTF-8 text: line {line}, byte \d+ .*save the file as UTF-8"):
        load_manifest(path)


@pytest.mark.fault
def test_manifest_without_source_caption_pairs_by_index(tmp_path, caplog):  # issue 16 (f)
    path = _manifest(tmp_path, [("a.png", "en", "train", "A dog."), ("a.png", "en", "train", "A hound."),
                                ("a.png", "de", "train", "Ein Hund.", "mt"),
                                ("a.png", "de", "train", "Ein Jagdhund.", "mt"),
                                ("a.png", "de", "train", "Ein dritter.", "mt"),   # no 3rd English one
                                ("b.png", "de", "test", "Eine Katze."), ("b.png", "en", "test", "A cat.")])
    with caplog.at_level(logging.INFO, logger="dasd_lib.data"):
        t = load_manifest(path)
    de = t[(t["lang"] == "de") & (t["split"] == "train")].set_index("caption")["source_caption"]
    assert de.to_dict() == {"Ein Hund.": "A dog.", "Ein Jagdhund.": "A hound.", "Ein dritter.": ""}
    assert (t.loc[t["split"] == "test", "source_caption"] == "").all()
    assert "2 training caption(s) in de paired with the English caption" in caplog.text
    assert "1 non-English training caption(s) have no English caption" in caplog.text


@pytest.mark.parametrize("damage", ["empty", "truncated"])
@pytest.mark.fault
def test_empty_or_truncated_png_error_or_skip(tmp_path, caplog, damage):  # issue 16 (g)
    path = _manifest(tmp_path, [("a.png", "en", "test", "A dog."), ("b.png", "en", "test", "A cat."),
                                ("b.png", "de", "test", "Eine Katze.")])
    from PIL import Image
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "b.png")      # incompressible: half the file cuts the pixels
    raw = (tmp_path / "b.png").read_bytes()
    (tmp_path / "b.png").write_bytes(b"" if damage == "empty" else raw[:len(raw) // 2])
    problem = r"an empty \(0-byte\) file" if damage == "empty" else "truncated, corrupt or not an image"
    with pytest.raises(DataError, match=rf"m.csv: image file .*b.png is {problem}.*replace the file.*"
                                        r"set on_missing: skip"):
        load_manifest(path)
    with caplog.at_level(logging.WARNING, logger="dasd_lib.data"):
        t = load_manifest(path, on_missing="skip")
    assert set(t["image_id"]) == {"a"}
    assert "m.csv: skipped 2 item(s): 2 unreadable image(s)" in caplog.text and "b.png" in caplog.text


@pytest.mark.fault
def test_transparency_is_counted_in_the_log(tmp_path, caplog):         # issue 16 (h)
    path = _manifest(tmp_path, [("a.png", "en", "test", "A dog."), ("b.png", "en", "test", "A cat."),
                                ("c.png", "en", "test", "A cow.")])
    _png(tmp_path / "b.png", mode="RGBA")
    _png(tmp_path / "c.png", mode="LA")
    with caplog.at_level(logging.WARNING, logger="dasd_lib.data"):
        t = load_manifest(path)
    assert len(t) == 3
    assert "m.csv: 2 image file(s) have transparency (e.g. " in caplog.text and "alpha channel dropped" in caplog.text
