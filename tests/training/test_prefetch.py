"""Batches collated ahead (fast/prefetch.py) and padded to a multiple (train.pad_multiple)
change no number: the same batches in the same order, the same weights, the same loss."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAINING

from transformer_cli.core import checkpoint
from transformer_cli.core.specials import PAD_ID
from transformer_cli.data import batching, prepare, store
from transformer_cli.fast.prefetch import Prefetcher
from transformer_cli.model.transformer import Transformer
from transformer_cli.training import loop as train
from transformer_cli.training import step
from transformer_cli.training.loss import batch_loss

TINY = (
    *TINY_TRAINING,
    "model.dropout=0.1",
    "train.batch_tokens=400",
    "train.accum_steps=2",
    "train.warmup=5",
    "train.eval_every=1000",
    "train.log_every=1",
)


def same_batches(a: list[batching.Batch], b: list[batching.Batch]) -> bool:
    fields = ("src", "tgt_in", "tgt_out", "indices")
    return len(a) == len(b) and all(
        x.n_tokens == y.n_tokens and all(torch.equal(getattr(x, f), getattr(y, f)) for f in fields)
        for x, y in zip(a, b, strict=True)
    )


def test_prefetched_batches_are_the_ones_collated_in_place(make_config):
    cfg = make_config(*TINY)
    prepare.run(cfg)
    split = store.load_split(cfg.run_dir, "train")
    groups = [g[None] if g.dim() == 0 else [g] for g in batching.epoch_batches(split, 400, 1, 0)]

    def collate(group):
        return [batching.collate(split, g) for g in group]

    prefetch = Prefetcher(collate)
    try:
        for now, upcoming in zip(groups, [*groups[1:], []], strict=True):
            got = prefetch.take(now)
            prefetch.ahead(upcoming)
            assert same_batches(got, collate(now))
        prefetch.ahead(groups[0])
        assert same_batches(prefetch.take(groups[1]), collate(groups[1]))  # a wrong guess
    finally:
        prefetch.close()


def last_weights(run_dir: str) -> dict[str, torch.Tensor]:
    return checkpoint.load_checkpoint(checkpoint.last_path(run_dir))["model"]


def test_training_with_prefetch_gives_the_same_weights(make_config, tmp_path, monkeypatch):
    threads = []
    real = step.Trainer.collate

    def collate(self, group):
        threads.append(threading.current_thread().name)
        return real(self, group)

    monkeypatch.setattr(step.Trainer, "collate", collate)
    runs = []
    for mode in ("never", "always"):
        cfg = make_config(
            *TINY, "train.max_steps=13", f"train.prefetch={mode}", f"run_dir={tmp_path / mode}"
        )
        prepare.run(cfg)
        summary = train.run(cfg)
        assert summary["epochs"] > 1  # the look-ahead crosses an epoch boundary
        runs.append(last_weights(cfg.run_dir))
        metrics = Path(cfg.run_dir, "metrics.jsonl").read_text("utf-8")
        runs.append([line.split('"tokens_per_s"')[0] for line in metrics.splitlines()])
    assert "tfx-collate_0" in threads  # the batches of "always" were collated ahead
    assert runs[1] == runs[3]  # the same losses, step for step
    for name, tensor in runs[0].items():
        assert torch.equal(tensor, runs[2][name]), name


@pytest.mark.parametrize("multiple", [1, 8, 5])
def test_padding_to_a_multiple_changes_no_real_position(make_config, multiple):
    cfg = make_config(*TINY, "model.dropout=0")
    prepare.run(cfg)
    split = store.load_split(cfg.run_dir, "train")
    group = batching.epoch_batches(split, 400, 1, 0)[0]
    plain, padded = (
        batching.collate(split, group),
        batching.collate(split, group, multiple=multiple),
    )
    assert padded.src.size(1) % multiple == 0
    assert padded.tgt_in.size(1) % multiple == 0
    assert padded.n_tokens == plain.n_tokens
    s, t = plain.src.size(1), plain.tgt_in.size(1)
    assert torch.equal(padded.src[:, :s], plain.src)
    assert torch.equal(padded.tgt_out[:, :t], plain.tgt_out)
    assert (padded.src[:, s:] == PAD_ID).all()
    assert (padded.tgt_in[:, t:] == PAD_ID).all()
    torch.manual_seed(0)
    vocab = int(split.src.long().max()) + 1
    model = Transformer(
        type(cfg.model)(**{**cfg.model.__dict__, "src_vocab": vocab, "tgt_vocab": vocab})
    ).eval()
    cpu = torch.device("cpu")
    losses = [batch_loss(model, b, 0.1, cpu, "fp32").loss for b in (plain, padded)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)


def test_padding_to_a_multiple_trains_a_model_with_just_the_positions_it_needs(
    make_config, tmp_path
):
    """`model.max_positions = data.max_len + 2`, what the config's rule asks, trains with
    `train.pad_multiple` 8, although a batch's width rounded up to 8 would pass it."""
    from helpers import cli

    from transformer_cli.core.config_file import to_yaml

    sets = (*TINY, "data.max_len=28", "model.max_positions=30", "train.pad_multiple=8")
    cfg = make_config(*sets, "train.max_steps=3")
    config = tmp_path / "c.yaml"
    config.write_text(to_yaml(cfg), encoding="utf-8")
    prepared = cli("prepare", "--config", config)
    assert prepared.exit_code == 0, prepared.output
    split = store.load_split(cfg.run_dir, "train")
    longest = int(max(split.src_lengths.max(), split.tgt_lengths.max() + 1))
    assert -(-longest // 8) * 8 > 30  # without the cap, padding would pass the positions
    result = cli("train", "--config", config)
    assert result.exit_code == 0, result.output
    assert "steps 3" in result.stdout
