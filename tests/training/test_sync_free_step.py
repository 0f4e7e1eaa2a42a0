"""The step that needs no host sync equals the one that decides on the host.

On CUDA a training step keeps its sums and its skip decision on the device: the fused
optimizer skips a non-finite update itself (`found_inf`), and the loop reads the counts
at log steps only (`loop.settle_interval`). The CPU runs the same code with a read every
step; forcing the CUDA interval here shows both give the same run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAINING, nan_on

from transformer_cli.core import checkpoint
from transformer_cli.core.errors import TrainingError
from transformer_cli.data import prepare
from transformer_cli.training import loop as train
from transformer_cli.training import step

TINY = (
    *TINY_TRAINING,
    "train.batch_tokens=600",
    "train.warmup=5",
    "train.eval_every=1000",
    "train.log_every=4",
)


def finished_run(cfg, monkeypatch, nan: set[int], every: int | None) -> tuple[dict, list, dict]:
    """(summary, metrics records without timings, last weights) of a run whose counts are
    read every `every` updates (None: as the device decides)."""
    if every is not None:
        monkeypatch.setattr(train, "settle_interval", lambda *_: every)
    nan_on(nan, monkeypatch)
    summary = train.run(cfg)
    text = Path(cfg.run_dir, "metrics.jsonl").read_text("utf-8")
    timeless = ("tokens_per_s", "elapsed", "seconds", "time")
    records = [
        {k: v for k, v in json.loads(line).items() if k not in timeless}
        for line in text.splitlines()
    ]
    state = checkpoint.load_checkpoint(checkpoint.last_path(cfg.run_dir))
    return summary, records, {"weights": state["model"], "progress": state["progress"]}


def test_reading_the_counts_at_log_steps_gives_the_same_run(make_config, tmp_path, monkeypatch):
    runs = []
    for i, every in enumerate((None, 4)):
        cfg = make_config(*TINY, "train.max_steps=10", f"run_dir={tmp_path / str(i)}")
        prepare.run(cfg)
        with monkeypatch.context() as patched:
            runs.append(finished_run(cfg, patched, {2, 5, 6}, every))
    (summary_a, records_a, last_a), (summary_b, records_b, last_b) = runs
    assert summary_a["skipped_steps"] == summary_b["skipped_steps"] == 3
    assert records_a == records_b
    progress_a, progress_b = last_a["progress"], last_b["progress"]
    assert {k: v for k, v in progress_a.items() if k != "elapsed"} == {
        k: v for k, v in progress_b.items() if k != "elapsed"
    }
    for name, tensor in last_a["weights"].items():
        assert torch.equal(tensor, last_b["weights"][name]), name


def test_a_late_read_still_names_the_step_that_reached_the_limit(make_config, monkeypatch):
    cfg = make_config(*TINY, "train.max_steps=20", "train.max_bad_steps=3", "train.log_every=8")
    prepare.run(cfg)
    monkeypatch.setattr(train, "settle_interval", lambda *_: 8)
    updates = nan_on(set(range(3, 40)), monkeypatch)  # 3, 4, 5 reach the limit
    with pytest.raises(TrainingError, match=r"3 non-finite updates .* at step 5 "):
        train.run(cfg)
    assert updates["n"] == 8  # read at the log step, the bounded lag
    assert not list(Path(cfg.run_dir, "checkpoints").glob("ckpt_*.pt"))  # nothing saved


def stepped(params: list[torch.nn.Parameter], on_device: bool, monkeypatch) -> list:
    """Three Adam updates (the second with NaN gradients) through `apply_if_finite`."""
    optimizer = torch.optim.Adam(params, lr=1e-2, fused=True)
    monkeypatch.setattr(step, "skips_on_device", lambda _: on_device)
    for update in range(3):
        for p in params:
            p.grad = torch.full_like(p, float("nan")) if update == 1 else torch.ones_like(p) * p
        finite = torch.tensor(update != 1)
        step.apply_if_finite(optimizer, None, finite)
    moments = [optimizer.state[p][key] for p in params for key in ("exp_avg", "step")]
    return [p.detach().clone() for p in params] + moments


def test_skipping_on_the_device_equals_not_stepping(monkeypatch):
    def fresh() -> list[torch.nn.Parameter]:
        gen = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter(torch.randn(4, 3, generator=gen)) for _ in range(2)]

    on_device = stepped(fresh(), True, monkeypatch)
    on_host = stepped(fresh(), False, monkeypatch)
    for a, b in zip(on_device, on_host, strict=True):
        assert torch.equal(a, b)
    assert float(on_device[3]) == 2.0  # two updates counted in Adam's step, not three


def test_the_fused_optimizers_skip_on_the_device():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert step.skips_on_device(torch.optim.Adam(params, fused=True))
    assert not step.skips_on_device(torch.optim.Adam(params, foreach=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_step_makes_no_host_sync(make_config):
    cfg = make_config(*TINY, "train.device=cuda")
    prepare.run(cfg)
    from transformer_cli.data import batching, store
    from transformer_cli.model.transformer import Transformer

    split = store.load_split(cfg.run_dir, "train")
    groups = batching.epoch_batches(split, 600, seed=1, epoch=0)
    shape = {"src_vocab": 100, "tgt_vocab": 100}
    import dataclasses

    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **shape))
    device = torch.device("cuda")
    model = Transformer(cfg.model).to(device)
    optimizer = train.make_optimizer(model, cfg, device)
    trainer = step.build_trainer(model, optimizer, None, split, cfg, device, "fp32")
    step.train_step(trainer, [groups[0]], 1e-4)  # warm-up: allocations, kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step.train_step(trainer, [groups[1]], 1e-4)
    finally:
        torch.cuda.set_sync_debug_mode("default")
