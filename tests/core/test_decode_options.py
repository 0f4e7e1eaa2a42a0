"""Decode options: one `DecodeOverrides` from the flags, checked once by the config's rules."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import typer
from helpers import cli, error_of

from transformer_cli.cli.app import app
from transformer_cli.core import runtime
from transformer_cli.core.config import (
    DECODE_FLAGS,
    DEVICES,
    NO_OVERRIDES,
    DecodeConfig,
    DecodeOverrides,
)
from transformer_cli.core.config_file import config_from_dict
from transformer_cli.core.config_rules import apply_decode_overrides
from transformer_cli.core.errors import ConfigError
from transformer_cli.decoding import translate
from transformer_cli.evaluation import evaluate

error_of = functools.partial(error_of, error=ConfigError)  # their one-line message

# a value for each option that is valid and differs from DecodeConfig's default
GIVEN = {
    "beam": 4,
    "alpha": 0.5,
    "early_stop": True,
    "max_len_a": 2.0,
    "max_len_b": 3,
    "batch_sentences": 7,
    "precision": "bf16",
    "sync_every": 3,
}
FLAG_ARGS = ["--beam", "4", "--alpha", "0.5", "--early-stop", "--max-len-a", "2",
             "--max-len-b", "3", "--batch-size", "7", "--precision", "bf16",
             "--sync-every", "3"]  # fmt: skip
# an out-of-range value for each option that has a range rule
BAD = [("beam", 0), ("alpha", -1.0), ("max_len_a", -1.0), ("max_len_b", -1), ("batch_sentences", 0),
       ("sync_every", -1)]  # fmt: skip


def names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def flags_of(command: str) -> set[str]:
    click_app = typer.main.get_command(app)
    params = click_app.commands[command].params  # type: ignore[attr-defined]
    return {opt.split("/")[0] for p in params for opt in p.opts}


def test_every_decode_setting_has_one_override_and_one_flag_on_each_command():
    assert names(DecodeOverrides) == names(DecodeConfig) | {"nbest"}
    assert set(DECODE_FLAGS) == names(DecodeOverrides)
    assert set(DECODE_FLAGS.values()) <= flags_of("translate")
    assert set(DECODE_FLAGS.values()) - {"--nbest"} <= flags_of("evaluate")


def test_no_overrides_keep_the_config_and_each_given_one_replaces_its_setting():
    base = DecodeConfig(beam=2, alpha=0.7, batch_sentences=16)
    assert apply_decode_overrides(base, NO_OVERRIDES) == base
    for name, value in GIVEN.items():
        applied = apply_decode_overrides(base, DecodeOverrides(**{name: value}))
        assert applied == dataclasses.replace(base, **{name: value})


@pytest.mark.parametrize("command", ["translate", "evaluate"])
def test_the_cli_passes_its_flags_as_one_overrides_object(command, monkeypatch, tmp_path):
    seen = []
    module = {"translate": translate, "evaluate": evaluate}[command]
    monkeypatch.setattr(module, "run", lambda *_args, decode, **_kwargs: seen.append(decode))
    text = ["a dog ."] if command == "translate" else []
    nbest = ["--nbest", "2"] if command == "translate" else []
    result = cli(command, str(tmp_path / "c.pt"), *text, *FLAG_ARGS, *nbest)
    assert result.exit_code == 0, result.output
    assert seen == [DecodeOverrides(**GIVEN, nbest=2 if nbest else 1)]
    assert cli(command, str(tmp_path / "c.pt"), *text).exit_code == 0
    assert seen[1] == NO_OVERRIDES


@pytest.mark.parametrize(("name", "value"), BAD, ids=[name for name, _ in BAD])
def test_a_flag_and_a_config_key_out_of_range_break_the_same_rule(name, value):
    overrides = DecodeOverrides(**{name: value})
    from_flag = error_of(apply_decode_overrides, DecodeConfig(), overrides)
    as_key = error_of(apply_decode_overrides, DecodeConfig(), overrides, flags=False)
    from_config = error_of(config_from_dict, {"run_dir": "r", "decode": {name: value}})
    flag, key = DECODE_FLAGS[name], f"decode.{name}"
    assert from_flag.startswith(f"{flag} must be ")
    assert f", got {value}" in from_flag
    assert as_key == from_config == from_flag.replace(f"{flag} ", f"{key}: ", 1)


def test_rules_across_options_name_the_flags_even_for_the_checkpoints_value():
    # the checkpoint's beam 1 and max_len_b 0 are fine alone; the flags make them clash
    checkpoint = DecodeConfig(beam=1, max_len_b=0)
    assert error_of(apply_decode_overrides, checkpoint, DecodeOverrides(nbest=2)) == (
        "--nbest must be between 1 and --beam (1), got 2"
    )
    assert error_of(apply_decode_overrides, checkpoint, DecodeOverrides(max_len_a=0)) == (
        "--max-len-a and --max-len-b cannot both be 0"
    )
    assert "decode.max_len_a and decode.max_len_b cannot both be 0" in error_of(
        config_from_dict, {"run_dir": "r", "decode": {"max_len_a": 0, "max_len_b": 0}}
    )


def test_every_problem_is_reported_at_once_without_knock_on_errors():
    bad = DecodeOverrides(beam=0, alpha=-1.0, batch_sentences=0, nbest=1)
    message = error_of(apply_decode_overrides, DecodeConfig(), bad)
    assert message.split("; ") == [
        "--beam must be >= 1, got 0",  # and no --nbest message about a beam of 0
        "--alpha must be >= 0, got -1.0",
        "--batch-size must be >= 1, got 0",
    ]


def test_the_device_flag_and_the_config_accept_the_same_devices():
    for name in DEVICES:
        assert config_from_dict({"run_dir": "r", "train": {"device": name}}).train.device == name
        try:
            runtime.device_option(name)
            message = ""
        except ConfigError as e:  # a device this machine lacks, but a known name
            message = str(e)
        assert message in ("", f"--device {name}: not available here")
    assert "train.device: expected one of auto|cpu|cuda|mps" in error_of(
        config_from_dict, {"run_dir": "r", "train": {"device": "tpu"}}
    )


SAMPLING_BAD = [("topk", -1, ">= 0"), ("topp", 0.0, "in (0, 1]"), ("topp", 1.5, "in (0, 1]"),
                ("temperature", 0.0, ">= 1e-06"), ("seed", -1, ">= 0")]  # fmt: skip


@pytest.mark.parametrize(("name", "value", "rule"), SAMPLING_BAD)
def test_sampling_options_out_of_range_are_refused_as_flag_and_as_key(name, value, rule):
    sampling = DecodeConfig(sample=True)
    from_flag = error_of(apply_decode_overrides, sampling, DecodeOverrides(**{name: value}))
    from_config = error_of(config_from_dict, {"run_dir": "r", "decode": {name: value}})
    assert from_flag.startswith(f"{DECODE_FLAGS[name]} must be {rule}")
    assert from_config.startswith(f"decode.{name}: must be {rule}")


def test_sampling_flags_need_sample_and_take_no_beam():
    plain = DecodeConfig()
    assert error_of(apply_decode_overrides, plain, DecodeOverrides(topk=5, topp=0.9)) == (
        "--topk needs --sample; --topp needs --sample"
    )
    both = DecodeOverrides(sample=True, beam=4)
    assert error_of(apply_decode_overrides, plain, both) == (
        "--sample draws one piece at a time: it takes no --beam"
    )
    # a checkpoint whose decode says beam 4 samples all the same, any number of samples
    sampled = apply_decode_overrides(DecodeConfig(beam=4), DecodeOverrides(sample=True, nbest=9))
    assert sampled.sample
    assert sampled.beam == 4
    with_options = DecodeOverrides(sample=True, topk=5, topp=0.9, temperature=0.7, seed=3)
    assert apply_decode_overrides(plain, with_options) == DecodeConfig(
        sample=True, topk=5, topp=0.9, temperature=0.7, seed=3
    )
