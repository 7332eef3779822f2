"""One config per part (issue 13 item 3): the tiny VLP's sizes (tiny:), the hf backbone's
folders (hf:), the backbone selector and target tower (model:), the VLP stage (vlp:, no
loss weights) and the target stages (cla:, cma:, with them). A key in the wrong part is
refused by the schema, naming where it belongs; every shipped parameter file and sweep point
loads to the values it had before the split (tests/data/params_before_split.json, written
by the last commit with one model: section), each in its new place."""
from __future__ import annotations

import dataclasses
import json

import pytest

from conftest import ROOT
from dasd_lib.config import (ConfigError, HFConfig, ModelConfig, Params, StageConfig,
                             TargetStageConfig, TinyConfig, load_params, params_from_dict)
from dasd_lib.sweep_definition import load_sweep

BEFORE = json.loads((ROOT / "tests" / "data" / "params_before_split.json").read_text(encoding="utf-8")
                    .replace("<ROOT>", str(ROOT.resolve())))
# where the keys of the old model: section went (written out here, not read from the library)
TINY_KEYS = ("embed_dim", "text_width", "text_layers", "text_heads", "context_length", "vision_width",
             "vision_layers", "english_vocab_size", "multilingual_vocab_size", "mbert_dim",
             "train_all_positions")
HF_KEYS = ("clip_path", "mbert_path")
# keys the old vlp: section had and the VLP stage never read
VLP_DROPPED = ("lambda_sc", "lambda_adv", "lambda_mse", "disc_lr", "logit_scale")


def old_layout(new: dict) -> dict:
    """A new Params.to_dict() in the old layout: tiny: and hf: back in model:. Fails unless
    tiny: and hf: hold exactly their keys."""
    new = json.loads(json.dumps(new))
    tiny, hf = new.pop("tiny"), new.pop("hf")
    assert tuple(tiny) == TINY_KEYS and tuple(hf) == HF_KEYS
    assert not set(new["model"]) & set(TINY_KEYS + HF_KEYS)
    assert not set(new["vlp"]) & set(VLP_DROPPED)
    new["model"].update(tiny | hf)
    return new


# defaults changed on purpose since the split: key -> (value before, value now)
CHANGED_DEFAULTS = {("run", "workers"): (0, 1)}  # in-process by default (README "Performance")


def without_vlp_loss_keys(old: dict) -> dict:
    """The recorded values without the VLP's loss keys and with CHANGED_DEFAULTS applied
    (no shipped file sets those keys to anything but the old default or the new one)."""
    old = json.loads(json.dumps(old))
    for key in VLP_DROPPED:
        old["vlp"].pop(key)
    for (section, key), (before, now) in CHANGED_DEFAULTS.items():
        assert old[section][key] in (before, now)
        old[section][key] = now
    return old


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value and key != "methods":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("name", sorted(BEFORE["files"]))
def test_parameter_files_load_to_their_old_values_in_new_places(name):
    new = load_params(ROOT / name).to_dict()
    assert old_layout(new) == without_vlp_loss_keys(BEFORE["files"][name])


def test_overrides_set_the_new_keys_as_the_old_ones_did():
    new = load_params(ROOT / BEFORE["overrides"]["base"],
                      ["tiny.text_width=64", "hf.clip_path=x", "cla.lambda_adv=0.5"])
    assert (new.tiny.text_width, new.hf.clip_path, new.cla.lambda_adv) == (64, "x", 0.5)
    assert old_layout(new.to_dict()) == without_vlp_loss_keys(BEFORE["overrides"]["params"])


def test_every_sweep_point_loads_to_its_old_values():
    sweeps = sorted({name.split("::")[0] for name in BEFORE["sweeps"]})
    assert sweeps == sorted(p.relative_to(ROOT).as_posix() for pattern in ("sweeps", "study")
                            for p in (ROOT / "params" / pattern).glob("*.yaml"))
    seen = set()
    for file in sweeps:
        sweep = load_sweep(ROOT / file)
        for point in sweep.points():
            key = f"{file}::{point.name}"
            old = BEFORE["sweeps"][key]
            want = _flat(without_vlp_loss_keys(BEFORE["files"][old["base"]]))
            want.update({k: v for k, v in old["differs"].items() if not k.startswith("vlp.lambda")})
            new = load_params(sweep.params, [*sweep.overrides, *point.overrides]).to_dict()
            assert _flat(old_layout(new)) == want, key
            seen.add(key)
    assert seen == set(BEFORE["sweeps"])


def test_round_trip_through_to_dict():
    params = load_params(ROOT / "params" / "paper_mscoco_finetune.yaml", ["tiny.text_width=64"])
    assert params_from_dict(params.to_dict()) == params
    assert isinstance(params.cla, TargetStageConfig) and type(params.vlp) is StageConfig
    assert list(params.to_dict())[:6] == ["data", "web", "model", "tiny", "hf", "vlp"]


# ----------------------------------------------------------------------------- misplaced keys

MOVED = [(f"model.{k}", f"tiny.{k}") for k in TINY_KEYS] + [(f"model.{k}", f"hf.{k}") for k in HF_KEYS]


@pytest.mark.parametrize("old,new", MOVED)
def test_an_old_model_key_names_its_new_place(old, new, tmp_path):
    with pytest.raises(ConfigError, match=rf"override '{old}=1' \[model\]: unknown key .*{old} moved to {new}$"):
        load_params(None, [f"{old}=1"])
    section, key = old.split(".")
    (tmp_path / "p.yaml").write_text(f"{section}:\n  {key}: 1\n")
    with pytest.raises(ConfigError, match=rf"p.yaml \[model\]: unknown key '{key}'; {old} moved to {new}"):
        load_params(tmp_path / "p.yaml")


@pytest.mark.parametrize("key", VLP_DROPPED)
def test_a_loss_weight_in_the_vlp_stage_is_an_unknown_key(key, tmp_path):
    with pytest.raises(ConfigError, match=rf"\[vlp\]: unknown key '{key}'; .*belong to cla and cma.*"
                                          rf"set cla.{key} or cma.{key}"):
        load_params(None, [f"vlp.{key}=0.1"])
    (tmp_path / "p.yaml").write_text(f"vlp: {{{key}: 0.1}}\n")
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'p.yaml'} \[vlp\]: unknown key '{key}'"):
        load_params(tmp_path / "p.yaml")
    assert getattr(load_params(None, [f"cla.{key}=0.1", f"cma.{key}=0.1"]).cma, key) == 0.1


@pytest.mark.parametrize("override,home", [
    ("tiny.adapter_rank=4", "model.adapter_rank"),     # a target-tower key in tiny:
    ("tiny.clip_path=x", "hf.clip_path"),              # an hf key in tiny:
    ("hf.text_width=64", "tiny.text_width"),           # a tiny key in hf:
    ("hf.freeze_embedding=true", "model.freeze_embedding"),
    ("model.steps=5", "vlp.steps or cla.steps or cma.steps"),
    ("cla.text_layers=2", "tiny.text_layers"),         # a part's key in a stage
    ("vlp.sdm_hidden=8", "model.sdm_hidden"),
])
def test_a_key_of_another_part_is_refused_naming_where_it_belongs(override, home):
    section = override.split(".")[0]
    with pytest.raises(ConfigError, match=rf"\[{section}\]: unknown key .*belongs in {home}$"):
        load_params(None, [override])


def test_each_part_holds_only_its_own_keys():
    """No key is in two parts, except the stage keys every stage has."""
    parts = [ModelConfig, TinyConfig, HFConfig, StageConfig]
    names = [{f.name for f in dataclasses.fields(c)} for c in parts]
    assert all(not a & b for i, a in enumerate(names) for b in names[i + 1:])
    target_only = {f.name for f in dataclasses.fields(TargetStageConfig)} - names[3]
    assert target_only == set(VLP_DROPPED)
    sections = {f.name: f.type for f in dataclasses.fields(Params)}
    assert [sections[s] for s in ("model", "tiny", "hf", "vlp", "cla", "cma")] == [
        "ModelConfig", "TinyConfig", "HFConfig", "StageConfig", "TargetStageConfig", "TargetStageConfig"]


def test_a_folder_saved_with_the_one_model_section_still_loads():
    """Backbone and model folders record their config; one saved before the split holds the
    old model: keys in one mapping, and each part takes its own from it."""
    from dasd_lib.config import saved_model_config
    old = BEFORE["files"]["params/smoke.yaml"]["model"]
    assert saved_model_config(TinyConfig, old, "old") == TinyConfig(**{k: old[k] for k in TINY_KEYS})
    assert saved_model_config(HFConfig, old, "old") == HFConfig(**{k: old[k] for k in HF_KEYS})
    tower = saved_model_config(ModelConfig, old, "old")
    assert dataclasses.asdict(tower) == {k: v for k, v in old.items() if k not in TINY_KEYS + HF_KEYS}
    with pytest.raises(ConfigError, match="unknown key 'nonsense'"):
        saved_model_config(TinyConfig, {**old, "nonsense": 1}, "old")
