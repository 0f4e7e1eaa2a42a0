"""train.tensorboard: the event files say what metrics.jsonl says, read back by
TensorBoard's own EventAccumulator; a resumed run keeps one value per step."""

from __future__ import annotations

import builtins
import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import TINY_TRAINING, assert_one_line_error, cli

from transformer_cli.core import checkpoint
from transformer_cli.core.config import to_dict
from transformer_cli.data import prepare
from transformer_cli.inspect.curves import read_metrics
from transformer_cli.training import loop as train
from transformer_cli.training.tensorboard import SCALARS

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
event_file_loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")

TINY = (
    *TINY_TRAINING,
    "train.batch_tokens=600",
    "train.warmup=5",
    "train.log_every=2",
    "train.eval_every=4",
)


def metrics_lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def board(run_dir) -> event_accumulator.EventAccumulator:
    """TensorBoard's own reading of RUN_DIR/tensorboard, every event kept."""
    reader = event_accumulator.EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={event_accumulator.SCALARS: 0}
    )
    return reader.Reload()


def assert_board_is_the_log(run_dir) -> None:
    """Every scalar at every step equals metrics.jsonl's (the later of two records)."""
    train_records, valid_records = read_metrics(run_dir)
    events = board(run_dir)
    for kind, records in (("train", train_records), ("valid", valid_records)):
        assert records, kind
        for name in SCALARS[kind]:
            logged = {r["step"]: r[name] for r in records}
            seen = [(e.step, e.value) for e in events.Scalars(f"{kind}/{name}")]
            assert [step for step, _ in seen] == sorted(logged), f"{kind}/{name}: one per step"
            for step, value in seen:
                assert value == pytest.approx(logged[step], rel=1e-6, abs=1e-9), (name, step)


def test_the_event_files_say_what_metrics_jsonl_says(make_config):
    cfg = make_config(*TINY, "train.max_steps=8", "train.tensorboard=true")
    prepare.run(cfg)
    train.run(cfg)
    run_dir = Path(cfg.run_dir)
    assert_board_is_the_log(run_dir)
    records = read_metrics(run_dir)[0]
    assert all(r["grad_norm"] > 0 for r in records)
    text = board(run_dir).Tensors("valid/translations/text_summary")
    assert [t.step for t in text] == [4, 8]
    assert b"| reference | hypothesis |" in text[0].tensor_proto.string_val[0]


def test_a_resumed_run_keeps_one_value_per_step(make_config):
    """The first attempt logs steps 1-8; it resumes from its step-4 checkpoint and logs
    steps 5-8 again: TensorBoard keeps one value per step, as `tfx plot` does."""
    cfg = make_config(*TINY, "train.max_steps=8", "train.tensorboard=true", "train.keep_last=5")
    prepare.run(cfg)
    train.run(cfg)
    run_dir = Path(cfg.run_dir)
    ckpts = checkpoint.last_path(run_dir).parent
    shutil.copy(ckpts / "ckpt_00000004.pt", ckpts / "last.pt")
    train.run(cfg, resume=True)
    first, second = sorted((run_dir / "tensorboard").glob("events.*"))  # appended
    assert len([r for r in metrics_lines(run_dir) if r["step"] == 6]) == 2  # logged twice
    assert_board_is_the_log(run_dir)  # ... and shown once
    # what tells TensorBoard so: the resumed file's restart marker at its first step
    events = list(event_file_loader.EventFileLoader(str(second)).Load())
    starts = [e.step for e in events if e.session_log.status == e.session_log.START]
    assert starts == [5]
    assert first.stat().st_size > 0


def test_off_by_default_and_a_missing_package_is_one_line(make_config, tmp_path, monkeypatch):
    cfg = make_config(*TINY, "train.max_steps=2")
    prepare.run(cfg)
    train.run(cfg)
    assert not (Path(cfg.run_dir) / "tensorboard").exists()
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.split(".")[0] == "tensorboard":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    config = tmp_path / "tb.yaml"
    raw = to_dict(make_config(*TINY, "train.max_steps=2", "train.tensorboard=true"))
    config.write_text(yaml.safe_dump({**raw, "run_dir": str(tmp_path / "other")}))
    assert cli("prepare", "--config", config).exit_code == 0
    result = cli("train", "--config", config)
    assert_one_line_error(result, "train.tensorboard: the tensorboard package is not installed")
    assert "pip install 'tfx[tensorboard]'" in result.output
