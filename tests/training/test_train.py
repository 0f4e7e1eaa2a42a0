"""The training loop: exact resume, Ctrl-C, accumulation, non-finite steps, overfitting, CLI."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAINING, nan_on, write_splits
from typer.testing import CliRunner

from transformer_cli.cli.app import app
from transformer_cli.core import checkpoint, runtime
from transformer_cli.core.config_file import config_from_dict
from transformer_cli.core.errors import TrainingError
from transformer_cli.data import batching, prepare, store
from transformer_cli.model.transformer import Transformer
from transformer_cli.training import loop as train
from transformer_cli.training import step
from transformer_cli.training.loss import LossParts

TINY = (
    *TINY_TRAINING,
    "model.dropout=0.1",  # dropout on, so that resume must restore the RNG to be exact
    "train.batch_tokens=600",
    "train.warmup=5",
    "train.eval_every=1000",
    "train.log_every=1",
)


def metrics(run_dir) -> list[dict]:
    """The records of a run's metrics.jsonl."""
    text = Path(run_dir, "metrics.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines()]


def weights(run_dir) -> dict[str, torch.Tensor]:
    return checkpoint.load_checkpoint(checkpoint.last_path(run_dir))["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# two corpora: a new half of the train split each epoch, and the valid split 1.5 times, tagged
TWO_CORPORA = "data.train=[{name: train, weight: 0.5}, {name: valid, weight: 1.5, tag: <v>}]"


@pytest.mark.parametrize("corpora", [(), (TWO_CORPORA,)], ids=["one corpus", "two corpora"])
def test_resume_is_exact_across_an_epoch_boundary(make_config, tmp_path, corpora):
    overrides = (*TINY, "train.accum_steps=2", *corpora)
    straight = make_config(*overrides, "train.max_steps=12", f"run_dir={tmp_path / 'a'}")
    prepare.run(straight)
    summary = train.run(straight)
    assert summary["steps"] == 12
    assert summary["epochs"] >= 1  # crossed into epoch 2

    broken = make_config(*overrides, "train.max_steps=5", f"run_dir={tmp_path / 'b'}")
    prepare.run(broken)
    train.run(broken)
    resumed = make_config(*overrides, "train.max_steps=12", f"run_dir={tmp_path / 'b'}")
    assert train.run(resumed, resume=True)["steps"] == 12

    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))


def test_sigint_saves_a_checkpoint_and_resume_continues_exactly(make_config, tmp_path, monkeypatch):
    straight = make_config(*TINY, "train.max_steps=6", f"run_dir={tmp_path / 'a'}")
    prepare.run(straight)
    train.run(straight)

    cfg = make_config(*TINY, "train.max_steps=6", f"run_dir={tmp_path / 'b'}")
    prepare.run(cfg)
    real_step = train.train_step
    calls = []

    def step_then_ctrl_c(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C mid-step
        return out

    monkeypatch.setattr(train, "train_step", step_then_ctrl_c)
    summary = train.run(cfg)
    assert summary["steps"] == 3
    assert "SIGINT" in summary["stopped"]
    assert checkpoint.load_checkpoint(checkpoint.last_path(cfg.run_dir))["progress"]["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored

    monkeypatch.setattr(train, "train_step", real_step)
    assert train.run(cfg, resume=True)["steps"] == 6
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))


def test_accumulated_micro_batches_give_the_gradient_of_one_big_batch(make_config):
    cfg = make_config(*TINY, "model.dropout=0")
    prepare.run(cfg)
    cfg = config_from_dict(
        {**_plain(cfg), "model": {**_plain(cfg)["model"], "src_vocab": 100, "tgt_vocab": 100}}
    )
    split = store.load_split(cfg.run_dir, "train")
    first, second = batching.epoch_batches(split, 600, seed=1, epoch=0)[:2]
    results = []
    for group in ([first, second], [torch.cat([first, second])]):
        torch.manual_seed(0)
        model = Transformer(cfg.model)
        sgd = torch.optim.SGD(model.parameters(), lr=1.0)  # params move by exactly -grad
        trainer = step.build_trainer(model, sgd, None, split, cfg, torch.device("cpu"), "fp32")
        step.train_step(trainer, group, 1.0)
        results.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-5, atol=1e-6)


def _plain(cfg):
    from transformer_cli.core.config import to_dict

    return to_dict(cfg)


def test_non_finite_steps_are_skipped_and_counted(make_config, monkeypatch):
    cfg = make_config(*TINY, "train.max_steps=6")
    prepare.run(cfg)
    nan_on({2, 4}, monkeypatch)
    summary = train.run(cfg)
    assert summary["steps"] == 6
    assert summary["skipped_steps"] == 2
    for name, tensor in weights(cfg.run_dir).items():
        assert torch.isfinite(tensor).all(), name
    records = metrics(cfg.run_dir)
    assert all(r["loss"] == r["loss"] for r in records)  # NaN never reaches the log


def nan_gradients_on(steps: set[int], monkeypatch):
    """Keep the loss finite on the given 1-based update numbers but make its gradient NaN."""
    real = step.batch_loss
    counter = {"n": 0}

    def nan_backward(*args, **kwargs):
        counter["n"] += 1
        parts = real(*args, **kwargs)
        if counter["n"] in steps:
            loss = parts.loss.clone()
            loss.register_hook(lambda grad: grad * float("nan"))
            return LossParts(loss, parts.nll, parts.n_tokens)
        return parts

    monkeypatch.setattr(step, "batch_loss", nan_backward)


@pytest.mark.parametrize("clip_norm", [0.0, 1.0])
def test_a_non_finite_gradient_under_a_finite_loss_is_skipped(make_config, monkeypatch, clip_norm):
    cfg = make_config(*TINY, "model.dropout=0", f"train.clip_norm={clip_norm}")
    prepare.run(cfg)
    split = store.load_split(cfg.run_dir, "train")
    group = batching.epoch_batches(split, 600, seed=1, epoch=0)[:1]
    cfg = config_from_dict(
        {**_plain(cfg), "model": {**_plain(cfg)["model"], "src_vocab": 100, "tgt_vocab": 100}}
    )
    model = Transformer(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = train.make_optimizer(model, cfg, torch.device("cpu"))
    trainer = step.build_trainer(model, optimizer, None, split, cfg, torch.device("cpu"), "fp32")
    nan_gradients_on({1}, monkeypatch)
    result = step.train_step(trainer, group, 1e-3)
    assert torch.isfinite(result.loss)
    assert not result.finite
    assert_same_weights(before, model.state_dict())
    assert all(p.grad is None for p in model.parameters())  # nothing carried to the next step
    assert step.train_step(trainer, group, 1e-3).finite  # the next update goes ahead


@pytest.mark.parametrize("clip_norm", [0.0, 1.0])
def test_runs_count_non_finite_gradients_as_skipped_steps(make_config, monkeypatch, clip_norm):
    cfg = make_config(*TINY, "train.max_steps=6", f"train.clip_norm={clip_norm}")
    prepare.run(cfg)
    nan_gradients_on({2, 4}, monkeypatch)
    summary = train.run(cfg)
    assert summary["steps"] == 6
    assert summary["skipped_steps"] == 2
    for name, tensor in weights(cfg.run_dir).items():
        assert torch.isfinite(tensor).all(), name


def test_too_many_bad_steps_stop_with_the_last_good_checkpoint_intact(make_config, monkeypatch):
    cfg = make_config(*TINY, "train.max_steps=4")
    prepare.run(cfg)
    train.run(cfg)
    good = weights(cfg.run_dir)
    more = make_config(*TINY, "train.max_steps=20", "train.max_bad_steps=3")
    nan_on(set(range(3, 100)), monkeypatch)
    with pytest.raises(TrainingError, match=r"3 non-finite updates \(loss or gradients\) in a row"):
        train.run(more, resume=True)
    assert_same_weights(good, weights(cfg.run_dir))
    assert not (Path(cfg.run_dir) / "train.lock").exists()  # the lock is released


def test_bf16_autocast_on_cpu_trains(make_config):
    cfg = make_config(*TINY, "train.max_steps=3", "train.precision=bf16")
    prepare.run(cfg)
    summary = train.run(cfg)
    assert summary["steps"] == 3
    assert summary["skipped_steps"] == 0
    state = checkpoint.load_checkpoint(checkpoint.last_path(cfg.run_dir))
    assert all(t.dtype == torch.float32 for t in state["model"].values() if t.is_floating_point())


def test_a_tiny_model_overfits_a_tiny_corpus(tmp_path, toy_pairs):
    pairs = toy_pairs[:12]
    write_splits(tmp_path / "data", {"train": pairs, "valid": pairs, "test": pairs})
    cfg = config_from_dict(
        {
            "run_dir": str(tmp_path / "run"),
            "data": {"source": "files", "dir": str(tmp_path / "data")},
            "tokenizer": {"vocab_size": 60, "model_type": "bpe"},
            "model": {
                "d_model": 64,
                "heads": 2,
                "enc_layers": 1,
                "dec_layers": 1,
                "d_ff": 128,
                "dropout": 0.0,
            },
            "train": {
                "batch_tokens": 400,
                "schedule": "constant",
                "lr": 3e-3,
                "threads": 1,
                "max_steps": 250,
                "eval_every": 50,
                "log_every": 10,
                "label_smoothing": 0,
            },
        }
    )
    prepare.run(cfg)
    summary = train.run(cfg)
    records = metrics(tmp_path / "run")
    losses = [r["nll"] for r in records if r["kind"] == "train"]
    assert losses[-1] < 0.1 * losses[0]
    assert summary["best_bleu"] > 90  # it reproduces the sentences it memorised


def test_cli_prepare_and_train_a_few_steps(make_config, tmp_path):
    cfg = make_config()
    config_path = tmp_path / "c.yaml"
    from transformer_cli.core.config_file import to_yaml

    config_path.write_text(to_yaml(cfg))
    runner = CliRunner()
    sets = [arg for o in (*TINY, "train.max_steps=3") for arg in ("--set", o)]
    result = runner.invoke(app, ["prepare", "--config", str(config_path), *sets])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--config", str(config_path), *sets])
    assert result.exit_code == 0, result.output
    assert "steps 3" in result.output
    if runtime.pick_device().type == "cpu":  # the first line says what `auto` chose, and why
        chosen, why = runtime.cpu_auto_precision(runtime.cpu_math())
        assert f"on cpu ({chosen}, {why}; " in result.output
    run_dir = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
    kinds = [r["kind"] for r in metrics(run_dir)]
    assert kinds.count("train") == 3
    assert kinds.count("valid") == 1


def test_train_without_prepare_is_a_one_line_error(make_config):
    result = CliRunner().invoke(app, ["train", "--config", "/nonexistent.yaml"])
    assert result.exit_code == 2
    cfg = make_config(*TINY)
    from transformer_cli.core.errors import DataError

    with pytest.raises(DataError, match="run `tfx prepare"):
        train.run(cfg)


@pytest.mark.slow
def test_compiled_training_matches_eager(make_config, tmp_path):
    runs = {}
    for compiled in (False, True):
        cfg = make_config(
            *TINY,
            "model.dropout=0",
            "train.max_steps=2",
            "train.precision=fp32",  # the tolerance below is fp32's, whatever `auto` picks
            f"train.compile={str(compiled).lower()}",
            f"run_dir={tmp_path / str(compiled)}",
        )
        prepare.run(cfg)
        train.run(cfg)
        runs[compiled] = weights(cfg.run_dir)
    # compiled kernels round differently; Adam divides by sqrt(v), so a weight whose
    # gradient is near zero can move a little on that noise alone
    for name in runs[False]:
        torch.testing.assert_close(runs[True][name], runs[False][name], rtol=1e-4, atol=1e-4)


def test_a_fresh_run_refuses_a_run_dir_that_already_has_one(make_config):
    cfg = make_config(*TINY, "train.max_steps=2")
    prepare.run(cfg)
    train.run(cfg)
    before = weights(cfg.run_dir)
    with pytest.raises(TrainingError, match="already holds a training run.*--resume"):
        train.run(cfg)
    assert_same_weights(before, weights(cfg.run_dir))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_fused_and_plain_batch_loss_agree_on_a_model(precision, label_smoothing):
    """The chunked projection + loss is the same objective as full logits + masked CE."""
    from transformer_cli.core.config import ModelConfig
    from transformer_cli.training.loss import batch_loss

    torch.manual_seed(0)
    cfg = ModelConfig(
        src_vocab=40,
        tgt_vocab=40,
        d_model=16,
        heads=2,
        enc_layers=1,
        dec_layers=1,
        d_ff=32,
        dropout=0.0,
        share_embeddings=True,
        tie_output=True,
    )
    model = Transformer(cfg)
    lengths = [5, 2, 7, 3]
    src = [torch.randint(4, 40, (n + 1,)).tolist() for n in lengths]
    tgt = [torch.randint(4, 40, (n,)).tolist() for n in lengths]
    split = store.EncodedSplit.from_lists(src, tgt)
    batch = batching.collate(split, list(range(len(lengths))))
    results = []
    for fused in (False, True):
        model.zero_grad()
        parts = batch_loss(model, batch, label_smoothing, torch.device("cpu"), precision, fused)
        parts.loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((parts, grads))
    (plain, plain_grads), (fused, fused_grads) = results
    tol = {"rtol": 1e-5, "atol": 1e-6} if precision == "fp32" else {"rtol": 2e-2, "atol": 2e-2}
    assert int(plain.n_tokens) == int(fused.n_tokens) == batch.n_tokens == sum(lengths) + 4
    torch.testing.assert_close(fused.loss, plain.loss, **tol)
    torch.testing.assert_close(fused.nll, plain.nll, **tol)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want, **tol)


def test_logged_throughput_leaves_validation_time_out(make_config, monkeypatch):
    import time

    real = train.validation

    def slow_validation(*args, **kwargs):
        time.sleep(1.0)  # many times the few ms that the tiny model's 4 steps take
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "validation", slow_validation)
    cfg = make_config(*TINY, "train.max_steps=12", "train.log_every=4", "train.eval_every=6")
    prepare.run(cfg)
    train.run(cfg)
    records = metrics(cfg.run_dir)
    rates = [r["tokens_per_s"] for r in records if r["kind"] == "train"]
    # the window of steps 5-8 holds the validation at step 6; with it counted, its rate
    # would be a small fraction of the others'
    assert len(rates) == 3
    assert rates[1] > 0.3 * min(rates[0], rates[2])


def test_train_evaluate_and_translate_run_without_the_datasets_package(make_config, tmp_path):
    """A GPU box may lack `datasets`: only `tfx prepare` may need it."""
    import subprocess
    import sys

    from transformer_cli.core.config_file import to_yaml

    cfg = make_config(*TINY, "train.max_steps=2")
    prepare.run(cfg)
    config_path = tmp_path / "c.yaml"
    config_path.write_text(to_yaml(cfg))
    blocked = (
        "import sys; sys.modules['datasets'] = None\n"  # any `import datasets` now fails
        "from transformer_cli.cli.app import app\n"
        "app(sys.argv[1:])\n"
    )
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.pt")
    for args in (
        ["train", "--config", str(config_path)],
        ["evaluate", ckpt, "--split", "test"],
        ["translate", ckpt, "a short sentence"],
    ):
        done = subprocess.run(
            [sys.executable, "-c", blocked, *args], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (args[0], done.stderr[-2000:])
    assert "datasets" not in done.stderr


@pytest.mark.parametrize("nll_per_token", [0.5, 4.0, 120.0, 5000.0])
def test_train_records_report_exp_of_their_nll_uncapped(nll_per_token):
    """A train record's perplexity is exp(nll): no cap, inf only where exp overflows."""
    import math
    import sys

    window = train.Window(loss=torch.tensor(1.0), nll=torch.tensor(nll_per_token * 40), tokens=40)
    record = train.train_record(train.Progress(step=3), window, lr=1e-3)
    assert record["nll"] == pytest.approx(nll_per_token)
    overflows = nll_per_token > math.log(sys.float_info.max)
    expected = math.inf if overflows else pytest.approx(math.exp(nll_per_token))
    assert record["ppl"] == expected
