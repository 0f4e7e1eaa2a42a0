"""`tfx train --init-from`: a head start on a shifted corpus, a fresh optimizer, schedule and
step count, complete checkpoints, and refusals of a config or cache that does not fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import assert_only_error, cli, error_of, tiny_raw, toy_splits, write_splits

from transformer_cli.core import checkpoint
from transformer_cli.core.config import Config
from transformer_cli.core.config_file import config_from_dict, to_yaml
from transformer_cli.core.errors import ConfigError, DataError
from transformer_cli.data import prepare, store, toy
from transformer_cli.data.tokenizer import Tokenizer
from transformer_cli.training import finetune, schedule
from transformer_cli.training import loop as train
from transformer_cli.training.distributed import World
from transformer_cli.training.finetune import Start
from transformer_cli.training.records import Progress

REPO = Path(__file__).resolve().parents[2]
# A recipe under which the tiny model of helpers.BASE learns in a few seconds.
RECIPE = {
    "model": {"dropout": 0.0},
    "train": {
        "schedule": "inverse_sqrt",
        "lr": 3e-3,
        "warmup": 20,
        "log_every": 1,
        "max_steps": 150,
        "eval_every": 150,
    },
}


@dataclass(frozen=True)
class Base:
    """A run trained on the toy corpus, and the shifted corpus (its questions) beside it."""

    root: Path
    ckpt: Path
    shifted: Path

    def config(self, name: str, *overrides: str, **sections: dict) -> Config:
        """A config for run dir `root/name/run` on the shifted corpus, in the base's shape."""
        raw = tiny_raw(self.root / name, **{**RECIPE, **sections})
        raw["data"]["dir"] = str(self.shifted)
        return config_from_dict(raw, ["train.max_steps=1", "train.eval_every=1", *overrides])


@pytest.fixture(scope="module")
def base(tmp_path_factory, toy_pairs) -> Base:
    root = tmp_path_factory.mktemp("finetune")
    write_splits(root / "data", toy_splits(toy_pairs))
    shifted = root / "questions"
    write_splits(shifted, toy_splits(toy.generate(300, seed=8, variant="questions")))
    cfg = config_from_dict(tiny_raw(root, **RECIPE))
    prepare.run(cfg)
    train.run(cfg)
    return Base(root, checkpoint.last_path(cfg.run_dir), shifted)


def records(cfg: Config, kind: str) -> list[dict]:
    lines = Path(cfg.run_dir, "metrics.jsonl").read_text("utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def prepared(cfg: Config, base: Base) -> Config:
    prepare.run(cfg, tokenizer_from=base.ckpt)
    return cfg


# ----------------------------------------------------------------------------- the head start


def test_fine_tuning_starts_below_training_from_scratch(base):
    """Same cache, config and step: only the starting weights differ."""
    tuned = prepared(base.config("tuned"), base)
    scratch = prepared(base.config("scratch"), base)
    train.run(tuned, init_from=base.ckpt)
    train.run(scratch)
    (first_tuned,) = records(tuned, "valid")
    (first_scratch,) = records(scratch, "valid")
    assert first_tuned["step"] == first_scratch["step"] == 1
    assert first_tuned["loss"] < first_scratch["loss"]


def test_the_run_starts_from_the_weights_with_a_fresh_optimizer_and_count(base, capsys):
    cfg = prepared(base.config("setup"), base)
    start = Start(init_from=base.ckpt)
    session = train.setup(cfg, Path(cfg.run_dir), start, World(), torch.device("cpu"))
    weights = checkpoint.load_checkpoint(base.ckpt)["model"]
    state = session.model.state_dict()
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[name], weights[name]) for name in weights)
    assert session.trainer.optimizer.state_dict()["state"] == {}
    assert session.progress == Progress()
    assert f"starting from the weights of {base.ckpt}" in capsys.readouterr().err


def test_the_schedule_and_step_count_start_again(base):
    cfg = prepared(base.config("fresh", "train.max_steps=3", "train.eval_every=3"), base)
    summary = train.run(cfg, init_from=base.ckpt)
    assert summary["steps"] == 3
    logged = records(cfg, "train")
    assert [r["step"] for r in logged] == [1, 2, 3]
    for r in logged:
        assert r["lr"] == pytest.approx(schedule.learning_rate(r["step"], cfg.train, 32))
    state = checkpoint.load_checkpoint(checkpoint.last_path(cfg.run_dir))
    assert state["progress"]["step"] == 3
    steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {3.0}  # Adam's own count: three updates, none of the base's


def test_a_fine_tuned_checkpoint_is_complete_and_resumes(base):
    cfg = prepared(base.config("complete"), base)
    train.run(cfg, init_from=base.ckpt)
    last = checkpoint.last_path(cfg.run_dir)
    state = checkpoint.load_state(last)
    base_state = checkpoint.load_state(base.ckpt)
    assert state["tokenizer"] == base_state["tokenizer"]
    assert state["config"]["model"] == base_state["config"]["model"]
    result = cli("translate", last, "Does the man see the dog?")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1
    more = config_from_dict({**_plain(cfg), "train": {**_plain(cfg)["train"], "max_steps": 2}})
    assert train.run(more, resume=True)["steps"] == 2  # --resume alone continues it


def _plain(cfg: Config) -> dict:
    from transformer_cli.core.config import to_dict

    return to_dict(cfg)


def test_a_checkpoint_without_optimizer_state_is_a_start(base):
    state = checkpoint.load_checkpoint(base.ckpt)
    for key in ("optimizer", "scaler", "progress", "rng"):
        del state[key]
    weights_only = base.root / "weights_only.pt"
    checkpoint.save_checkpoint(weights_only, state)
    cfg = prepared(base.config("weights_only"), base)
    assert train.run(cfg, init_from=weights_only)["steps"] == 1


# ----------------------------------------------------------------------------- refusals


def test_another_model_shape_is_refused_naming_every_field(base):
    cfg = prepared(base.config("shape", "model.d_model=64", "model.d_ff=128"), base)
    message = error_of(finetune.base_for, cfg, Path(cfg.run_dir), base.ckpt, error=ConfigError)
    assert message.startswith(f"--init-from {base.ckpt}: ")
    assert "model.d_model: 64 in the config, 32 in the checkpoint" in message
    assert "model.d_ff: 128 in the config, 64 in the checkpoint" in message
    assert "model.heads" not in message


def test_dropout_and_the_attention_kernel_may_differ(base):
    cfg = prepared(base.config("free", "model.dropout=0.3", "model.attention=sdpa"), base)
    assert finetune.base_for(cfg, Path(cfg.run_dir), base.ckpt).path == base.ckpt


def test_a_cache_of_another_tokenizer_of_the_same_size_is_refused(base):
    cfg = base.config("other_tokenizer")
    prepare.run(cfg)  # SentencePiece trained on the shifted corpus, with the same config
    ours = store.load_meta(cfg.run_dir)["tokenizer"]
    theirs = Tokenizer.from_bytes(checkpoint.load_state(base.ckpt)["tokenizer"])
    assert ours["src_vocab_size"] == theirs.src_vocab_size  # a size check would pass
    message = error_of(train.run, cfg, init_from=base.ckpt, error=DataError)
    assert "was prepared with another tokenizer" in message
    assert f"--tokenizer-from {base.ckpt}" in message
    assert not checkpoint.step_checkpoints(cfg.run_dir)


def test_another_tokenizer_section_is_refused(base):
    cfg = prepared(base.config("section"), base)
    changed = base.config("section", "tokenizer.sample_size=5000")
    message = error_of(train.run, changed, init_from=base.ckpt, error=ConfigError)
    assert "tokenizer.sample_size: 5000 in the config, 300000 in the checkpoint" in message
    assert not checkpoint.step_checkpoints(cfg.run_dir)


def test_init_from_with_resume_is_refused(base):
    cfg = base.config("both")
    message = error_of(train.run, cfg, resume=True, init_from=base.ckpt, error=ConfigError)
    assert "--init-from and --resume do not go together" in message
    assert not Path(cfg.run_dir).exists()  # refused before anything was made


# ----------------------------------------------------------------------------- --nproc


def config_file(cfg: Config) -> Path:
    path = Path(cfg.run_dir).parent / "c.yaml"
    path.write_text(to_yaml(cfg), encoding="utf-8")
    return path


def test_the_launcher_refuses_a_misfit_before_any_rank_starts(base):
    cfg = prepared(base.config("launch_shape", "model.d_model=64", "model.d_ff=128"), base)
    result = cli("train", "-c", config_file(cfg), "--nproc", "2", "--init-from", base.ckpt)
    assert_only_error(result, "model.d_model: 64 in the config, 32 in the checkpoint")
    both = cli(
        "train", "-c", config_file(cfg), "--nproc", "2", "--init-from", base.ckpt, "--resume"
    )
    assert_only_error(both, "--init-from and --resume do not go together")


def test_every_rank_of_a_launched_job_starts_from_the_weights(base):
    cfg = prepared(base.config("launched", "train.schedule=constant", "train.lr=1e-9"), base)
    args = ["train", "-c", config_file(cfg), "--nproc", "2", "--init-from", base.ckpt]
    env = {k: v for k, v in os.environ.items() if k != "TFX_DEBUG"} | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "transformer_cli", *map(str, args)],
        capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # rank 0 alone says so
    assert done.stderr.count("starting from the weights of") == 1, done.stderr[-3000:]
    tuned = checkpoint.load_checkpoint(checkpoint.last_path(cfg.run_dir))
    assert tuned["world_size"] == 2
    weights = checkpoint.load_checkpoint(base.ckpt)["model"]
    for name, tensor in tuned["model"].items():  # one update at lr 1e-9 moves nothing visible
        torch.testing.assert_close(tensor, weights[name], rtol=0, atol=1e-6, msg=name)
