"""Config strictness: unknown keys, types, did-you-mean, overrides, cross-field rules."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest
import yaml
from helpers import error_of
from hypothesis import given
from hypothesis import strategies as st

from transformer_cli.core.config import Config, to_dict
from transformer_cli.core.config_file import all_keys, config_from_dict, load_config, to_yaml
from transformer_cli.core.errors import ConfigError

error_of = functools.partial(error_of, error=ConfigError)  # their one-line message

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_config_gets_every_default():
    cfg = config_from_dict({"run_dir": "runs/x"})
    assert cfg == Config(run_dir="runs/x")


def test_unknown_key_names_path_line_and_suggestion(tmp_path):
    path = write(tmp_path, "run_dir: r\ntrain:\n  warmup: 10\n  lrr: 0.1\n")
    message = error_of(load_config, path)
    assert f"{path}:4: train.lrr: unknown key" in message
    assert "did you mean train.lr?" in message


def test_key_in_the_wrong_section_points_to_the_right_one():
    message = error_of(config_from_dict, {"run_dir": "r", "train": {"d_model": 8}})
    assert "train.d_model: unknown key (did you mean model.d_model?)" in message


def test_all_problems_are_reported_at_once(tmp_path):
    path = write(
        tmp_path,
        "run_dir: r\nmodel:\n  d_modl: 8\ntrain:\n  warmup: soon\n  compile: 3\nbogus: 1\n",
    )
    message = error_of(load_config, path)
    for fragment in (
        "model.d_modl: unknown key",
        "train.warmup: expected an integer, got 'soon'",
        "train.compile: expected a boolean, got 3",
        "bogus: unknown key",
    ):
        assert fragment in message


def test_missing_required_key():
    assert "run_dir: required key missing" in error_of(config_from_dict, {})


def test_yaml_strings_convert_by_declared_type():
    # PyYAML 1.1 reads these as strings; the declared field type decides.
    raw = yaml.safe_load("run_dir: r\ntrain:\n  lr: 1e-3\n  eps: 1e-9\n  batch_tokens: 4e3\n")
    assert isinstance(raw["train"]["lr"], str)
    cfg = config_from_dict(raw)
    assert cfg.train.lr == 1e-3
    assert isinstance(cfg.train.lr, float)
    assert cfg.train.eps == 1e-9
    assert cfg.train.batch_tokens == 4000
    assert isinstance(cfg.train.batch_tokens, int)


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("train", "batch_tokens", 1.5, "expected an integer"),
        ("train", "batch_tokens", True, "expected an integer"),
        ("train", "lr", "fast", "expected a number"),
        ("model", "norm", "middle", "expected one of post|pre"),
        ("train", "betas", [0.9], "expected a list [a number, a number]"),
        ("data", "dir", 3, "expected a string"),
        ("tokenizer", "joint", "yes", "expected a boolean"),
    ],
)
def test_wrong_type_names_path_expected_type_and_value(section, key, value, expected):
    message = error_of(config_from_dict, {"run_dir": "r", section: {key: value}})
    assert f"{section}.{key}: {expected}, got {value!r}" in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"model": {"d_model": 10, "heads": 4}}, "model.heads: must divide model.d_model"),
        ({"model": {"dropout": -0.1}}, "model.dropout: must be in [0, 1)"),
        ({"train": {"warmup": 0}}, "train.warmup: must be >= 1"),
        ({"train": {"label_smoothing": 1.0}}, "train.label_smoothing: must be in [0, 1)"),
        ({"tokenizer": {"joint": False}}, "model.share_embeddings: needs a joint vocabulary"),
        ({"data": {"max_len": 2000}}, "model.max_positions: must be >= data.max_len + 2"),
        ({"data": {"source": "hub"}}, "data.hub_name: required when source is hub"),
        (
            {"model": {"positional": "rope", "d_model": 12, "heads": 4}},
            "model.positional: rope rotates pairs of dimensions: the head size",
        ),
        ({"model": {"max_relative_distance": 0}}, "model.max_relative_distance: must be >= 1"),
        ({"model": {"embedding_init": "kaiming"}}, "model.embedding_init: expected one of"),
    ],
)
def test_cross_field_and_range_rules(overrides, expected):
    assert expected in error_of(config_from_dict, {"run_dir": "r", **overrides})


def test_set_overrides_convert_and_win():
    cfg = config_from_dict(
        {"run_dir": "r", "train": {"lr": 0.1}},
        ["train.lr=3e-4", "model.norm=pre", "train.betas=[0.9, 0.99]", "run_dir=runs/y"],
    )
    assert cfg.train.lr == 3e-4
    assert cfg.model.norm == "pre"
    assert cfg.train.betas == (0.9, 0.99)
    assert cfg.run_dir == "runs/y"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lr", "--set train.lr: expected KEY=VALUE"),
        ("train.lrr=1", "--set train.lrr: unknown key (did you mean train.lr?)"),
        ("train.warmup=x", "--set train.warmup: expected an integer, got 'x'"),
    ],
)
def test_bad_overrides(override, expected):
    assert expected in error_of(config_from_dict, {"run_dir": "r"}, [override])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("run_dir: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping of sections"),
        ("run_dir: !!python/object/apply:os.system ['true']\n", "YAML tag not allowed"),
        ("run_dir: r\nmodel: 3\n", "model: expected a mapping"),
    ],
)
def test_malformed_yaml(tmp_path, text, expected):
    assert expected in error_of(load_config, write(tmp_path, text))


def test_missing_and_directory_config(tmp_path):
    assert "config file not found" in error_of(load_config, tmp_path / "nope.yaml")
    assert "is a directory" in error_of(load_config, tmp_path)


@given(
    lr=st.floats(min_value=1e-8, max_value=10, allow_nan=False),
    steps=st.integers(min_value=0, max_value=10**7),
    norm=st.sampled_from(["pre", "post"]),
)
def test_resolved_yaml_round_trips(lr, steps, norm):
    cfg = config_from_dict(
        {"run_dir": "r", "train": {"lr": lr, "max_steps": steps}, "model": {"norm": norm}}
    )
    again = config_from_dict(yaml.safe_load(to_yaml(cfg)))
    assert again == cfg


def test_every_key_is_documented_by_a_typed_field():
    # all_keys walks the dataclasses: each leaf has a default except run_dir
    leaves = [k for k in all_keys() if "." in k]
    assert len(leaves) == len(set(leaves)) > 50
    for f in dataclasses.fields(Config):
        if f.name != "run_dir":
            assert f.default_factory is not dataclasses.MISSING


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)
    assert to_dict(cfg)["run_dir"].startswith("runs/")


# ----------------------------------------------------------------------------- keys given twice

TWO_MODELS = """\
run_dir: r
model:
  d_model: 64
  heads: 4
train:
  warmup: 10
  lrr: 0.1
model:
  heads: 2
"""


def test_a_section_given_twice_is_an_error_with_both_lines(tmp_path):
    path = write(tmp_path, TWO_MODELS)
    message = error_of(load_config, path)
    assert f"{path}:8: model: key given twice (first at line 2)" in message
    assert f"{path}:7: train.lrr: unknown key" in message  # reported together


def test_a_nested_key_given_twice_is_an_error(tmp_path):
    path = write(tmp_path, "run_dir: r\ntrain:\n  lr: 0.1\n  warmup: 10\n  lr: 0.2\n")
    message = error_of(load_config, path)
    assert f"{path}:5: train.lr: key given twice (first at line 3)" in message
    assert message.count("given twice") == 1


def test_the_same_key_in_different_sections_is_not_given_twice(tmp_path):
    path = write(tmp_path, "run_dir: r\ndata:\n  max_len: 50\ndecode:\n  beam: 2\n")
    cfg = load_config(path)
    assert cfg.data.max_len == 50
    assert cfg.decode.beam == 2
