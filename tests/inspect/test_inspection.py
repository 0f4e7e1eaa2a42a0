"""`tfx inspect ...` and `tfx plot`: every grid and number is the training code's own."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from helpers import assert_only_error, assert_png, cli, toy_splits, write_splits

from transformer_cli.core.config_file import load_config
from transformer_cli.core.specials import BOS_ID, EOS_ID, PAD_ID
from transformer_cli.data import batching, prepare, store
from transformer_cli.decoding.loading import load_model
from transformer_cli.inspect import attention_maps, batch, curves
from transformer_cli.inspect import views as inspection
from transformer_cli.model.masks import causal_mask, decoder_mask, padding_mask
from transformer_cli.training import loop as train
from transformer_cli.training.schedule import learning_rate

TINY = {
    "data": {"source": "files", "max_len": 30},
    "tokenizer": {"vocab_size": 100},
    "model": {"d_model": 16, "heads": 2, "enc_layers": 1, "dec_layers": 2, "d_ff": 32},
    "train": {
        "batch_tokens": 300,
        "max_steps": 3,
        "warmup": 2,
        "log_every": 1,
        "eval_every": 1000,
        "threads": 1,
    },
    "decode": {"max_len_a": 1.0, "max_len_b": 4},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, toy_pairs) -> Path:
    """A prepared run dir with a 3-step model; returns its YAML config file."""
    root = tmp_path_factory.mktemp("inspect")
    write_splits(
        root / "data",
        toy_splits(toy_pairs),
    )
    raw = json.loads(json.dumps(TINY))
    raw["run_dir"] = str(root / "run")
    raw["data"]["dir"] = str(root / "data")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    cfg = load_config(path)
    prepare.run(cfg)
    train.run(cfg)
    return path


def ok_json(*args: str) -> dict:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def bits(mask: torch.Tensor) -> list:
    return mask.int().tolist()


# ----------------------------------------------------------------------------- batch


@pytest.mark.parametrize(("split", "index"), [("train", 1), ("valid", 0), ("test", 2)])
def test_batch_grids_are_the_masks_of_the_batch_training_builds(tiny, split, index):
    cfg = load_config(tiny)
    view = ok_json(
        "inspect", "batch", "--config", tiny, "--split", split, "--index", index, "--rows", 3
    )
    data = store.load_split(cfg.run_dir, split)
    if split == "train":
        groups = batching.epoch_batches(data, cfg.train.batch_tokens, cfg.train.seed, 0)
        batch = batching.collate(data, groups[index])
    else:
        truncate = cfg.model.max_positions - 1
        groups = batching.eval_order(data, cfg.train.batch_tokens, truncate=truncate)
        batch = batching.collate(data, groups[index], truncate)
    rows = view["shown_rows"]
    assert len(rows) == min(3, len(batch))
    assert rows[0] == 0
    assert rows[-1] == len(batch) - 1
    assert view["batches"] == len(groups)
    assert view["n_tokens"] == batch.n_tokens
    assert view["sentences"] == batch.indices[rows].tolist()
    assert view["src_ids"] == batch.src[rows].tolist()
    assert view["tgt_in_ids"] == batch.tgt_in[rows].tolist()
    assert view["tgt_out_ids"] == batch.tgt_out[rows].tolist()
    assert view["source_padding"] == bits(padding_mask(batch.src)[rows, 0, 0])
    assert view["look_ahead"] == bits(causal_mask(batch.tgt_in.size(1)))
    assert view["target_padding"] == bits(padding_mask(batch.tgt_in)[rows, 0, 0])
    assert view["decoder"] == bits(decoder_mask(batch.tgt_in)[rows, 0])
    assert view["loss"] == bits(batch.tgt_out[rows] != PAD_ID)


def test_batch_shows_the_shift_and_the_union(tiny):
    view = ok_json("inspect", "batch", "--config", tiny, "--split", "valid", "--rows", 5)
    for k in range(len(view["shown_rows"])):
        tgt_in, tgt_out = view["tgt_in_ids"][k], view["tgt_out_ids"][k]
        n = sum(view["loss"][k])  # real target positions: y1..yn EOS
        assert tgt_in[0] == BOS_ID
        assert tgt_out[n - 1] == EOS_ID
        assert tgt_in[1:n] == tgt_out[: n - 1]  # the decoder input is the target shifted right
        assert len(view["tgt_in_pieces"][k]) == len(tgt_in)
        look, pad, union = view["look_ahead"], view["target_padding"][k], view["decoder"][k]
        for i, row in enumerate(union):
            assert row == [int(look[i][j] and pad[j]) for j in range(len(row))]


def test_batch_text_prints_the_same_grids(tiny):
    cfg = load_config(tiny)
    result = cli("inspect", "batch", "--config", tiny, "--split", "valid")
    assert result.exit_code == 0, result.output
    view = batch.batch_view(cfg, "valid", 0, 4)
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("look-ahead mask"))
    size = len(view["look_ahead"])
    printed = [[int(v) for v in line.split()[1:]] for line in lines[start + 2 : start + 2 + size]]
    assert printed == view["look_ahead"]
    for pieces in view["tgt_out_pieces"]:
        assert "</s>" in pieces
    assert "decoder input (tgt_in)" in result.stdout
    assert "loss mask" in result.stdout


def test_batch_plot_writes_a_png(tiny, tmp_path):
    out = tmp_path / "masks.png"
    result = cli("inspect", "batch", "--config", tiny, "--split", "valid", "--plot", out)
    assert result.exit_code == 0, result.output
    assert_png(out)


def test_batch_errors_are_one_line(tiny, tmp_path):
    assert_only_error(
        cli("inspect", "batch", "--config", tiny, "--index", 10_000),
        "--index 10000: the train split has",
    )
    assert_only_error(cli("inspect", "batch", "--config", tiny, "--split", "dev"), "--split")
    assert_only_error(cli("inspect", "batch", "--config", tiny, "--rows", 0), "--rows")
    empty = tmp_path / "nothing"
    assert_only_error(
        cli("inspect", "batch", "--config", tiny, "--set", f"run_dir={empty}"), "no prepared data"
    )


# ----------------------------------------------------------------------------- positions


def test_positions_shift_is_a_fixed_linear_map():
    view = ok_json(
        "inspect", "positions", "--d-model", 32, "--length", 200, "--k", 1, "--k", 7, "--k", 150
    )
    assert [c["k"] for c in view["checks"]] == [1, 7, 150]
    for check in view["checks"]:
        assert check["max_error"] < inspection.POSITION_TOLERANCE
        assert check["positions"] == 200 - check["k"]


def test_positions_check_can_fail(monkeypatch):
    class NotSinusoidal(torch.nn.Module):
        def __init__(self, d_model, max_positions):
            super().__init__()
            self.table = torch.randn(max_positions, d_model).clamp(-1, 1)

        def forward(self, length, offset=0):
            return self.table[offset : offset + length]

    monkeypatch.setattr("transformer_cli.model.positions.SinusoidalPositions", NotSinusoidal)
    view = inspection.positions_view(16, 50, (1, 3))
    assert all(c["max_error"] > 0.1 for c in view["checks"])


def test_positions_plot_and_bad_sizes(tmp_path):
    out = tmp_path / "pe.png"
    result = cli("inspect", "positions", "--plot", out)
    assert result.exit_code == 0, result.output
    assert "holds" in result.stdout
    assert_png(out)
    assert_only_error(cli("inspect", "positions", "--d-model", 15), "--d-model")
    assert_only_error(cli("inspect", "positions", "--length", 1), "--length")


# ----------------------------------------------------------------------------- scaling


@pytest.mark.parametrize("d_k", [16, 64])
def test_scaling_statistics_match_theory(d_k):
    view = ok_json("inspect", "scaling", "--d-k", d_k, "--samples", 500, "--keys", 40)
    raw, scaled = view["unscaled"], view["scaled"]
    n = 500 * 40
    assert raw["var"] == pytest.approx(d_k, rel=0.1)
    assert scaled["var"] == pytest.approx(1.0, rel=0.1)
    for s in (raw, scaled):
        assert abs(s["mean"]) < 5 * math.sqrt(s["var"] / n)
        assert s["row_sum_error"] < 1e-5  # attend_math's probabilities are distributions
    # without the scaling the softmax is peakier and more of its rows saturate
    assert raw["max_prob"] > scaled["max_prob"]
    assert raw["saturated"] > scaled["saturated"] == 0.0
    assert raw["grad_p10"] < scaled["grad_p10"]


def test_scaling_takes_d_k_from_a_config(tiny):
    cfg = load_config(tiny)
    view = ok_json("inspect", "scaling", "--config", tiny, "--samples", 50)
    assert view["d_k"] == cfg.model.d_model // cfg.model.heads
    result = cli("inspect", "scaling", "--samples", 50)
    assert result.exit_code == 0
    assert "conclusion:" in result.stdout
    assert_only_error(cli("inspect", "scaling", "--keys", 1), "--keys")


# ----------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("name", ["noam", "inverse_sqrt"])
def test_schedule_peaks_at_the_end_of_warmup(tiny, name):
    cfg = load_config(tiny, [f"train.schedule={name}", "train.warmup=30"])
    view = ok_json(
        "inspect",
        "schedule",
        "--config",
        tiny,
        "--set",
        f"train.schedule={name}",
        "--set",
        "train.warmup=30",
        "--steps",
        120,
    )
    lrs = view["lr"]
    assert len(lrs) == 120
    assert view["peak_step"] == 30
    assert view["peak_lr"] == learning_rate(30, cfg.train, cfg.model.d_model)
    assert all(a < b for a, b in zip(lrs[:29], lrs[1:30], strict=True))  # warm-up: rising
    assert all(a > b for a, b in zip(lrs[29:-1], lrs[30:], strict=True))  # then decaying


def test_schedule_defaults_to_the_runs_steps(tiny, tmp_path):
    assert len(ok_json("inspect", "schedule", "--config", tiny)["lr"]) == 3  # train.max_steps
    view = ok_json("inspect", "schedule", "--config", tiny, "--set", "train.max_steps=0")
    assert len(view["lr"]) == 4 * view["warmup"]
    assert view["note"]
    out = tmp_path / "lr.png"
    result = cli("inspect", "schedule", "--config", tiny, "--steps", 50, "--plot", out)
    assert result.exit_code == 0
    assert "<- peak" in result.stdout
    assert_png(out)
    assert_only_error(cli("inspect", "schedule", "--config", tiny, "--steps", -1), "--steps")


# ----------------------------------------------------------------------------- tfx plot


def test_plot_draws_a_real_run(tiny, tmp_path):
    run_dir = load_config(tiny).run_dir
    train_records, valid_records = curves.read_metrics(run_dir)
    assert [r["step"] for r in train_records] == [1, 2, 3]
    assert len(valid_records) == 1
    out = tmp_path / "curves.png"
    result = cli("plot", run_dir, "--output", out)
    assert result.exit_code == 0, result.output
    assert_png(out)


def test_plot_keeps_the_latest_record_of_a_step_and_skips_a_cut_last_line(tmp_path):
    record = {"kind": "train", "loss": 2.0, "nll": 1.9, "ppl": 6.7, "lr": 1e-3}
    lines = [json.dumps({**record, "step": s}) for s in (1, 2, 3)]
    lines.append(json.dumps({**record, "step": 2, "loss": 1.0}))  # logged again after a resume
    lines.append('{"kind": "valid", "st')  # training killed mid-write
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines), encoding="utf-8")
    train_records, valid_records = curves.read_metrics(tmp_path)
    assert [r["step"] for r in train_records] == [1, 2, 3]
    assert valid_records == []
    assert train_records[1]["loss"] == 1.0
    result = cli("plot", tmp_path)
    assert result.exit_code == 0, result.output
    assert_png(tmp_path / "curves.png")


def test_plot_errors_are_one_line(tmp_path):
    assert_only_error(cli("plot", tmp_path / "missing"), "no such run dir")
    assert_only_error(cli("plot", tmp_path), "no metrics yet")
    (tmp_path / "metrics.jsonl").write_text("", encoding="utf-8")
    assert_only_error(cli("plot", tmp_path), "no training records yet")
    (tmp_path / "metrics.jsonl").write_text('oops\n{"kind": "train", "step": 1}\n', "utf-8")
    assert_only_error(cli("plot", tmp_path), "metrics.jsonl:1: not a tfx metrics record")


# ----------------------------------------------------------------------------- attention


@pytest.fixture(scope="module")
def loaded(tiny):
    ckpt = Path(load_config(tiny).run_dir) / "checkpoints" / "last.pt"
    model, tokenizer, cfg = load_model(ckpt, "cpu")
    return ckpt, model, tokenizer, cfg


SENTENCE = "the old man sees the small dog ."


@pytest.mark.parametrize("head", [None, 0, -1])
def test_cross_attention_rows_are_distributions_over_the_source(loaded, head):
    _, model, tokenizer, cfg = loaded
    view = attention_maps.attention_map(
        model, tokenizer, SENTENCE, layer=0, head=head, decode_cfg=cfg.decode
    )
    src = tokenizer.src_pieces(SENTENCE)
    assert view.src_pieces == src
    assert view.weights.shape == (len(view.out_pieces), len(src))
    assert torch.allclose(view.weights.sum(-1), torch.ones(len(view.out_pieces)), atol=1e-5)
    assert (view.weights >= 0).all()
    # row t predicts output piece t + 1: the greedy output, then the piece it stopped on
    hyp = view.hypothesis
    assert view.out_pieces[: len(hyp)] == tokenizer.tgt_pieces(hyp)
    assert len(view.out_pieces) == min(len(hyp) + 1, model.cfg.max_positions)
    assert view.translation == tokenizer.decode_tgt([hyp])[0]
    assert not any(m._forward_hooks for m in model.modules())  # the recording hooks removed


def test_self_attention_is_causal_and_sums_to_one(loaded):
    _, model, tokenizer, cfg = loaded
    view = attention_maps.attention_map(
        model, tokenizer, SENTENCE, self_attention=True, decode_cfg=cfg.decode
    )
    t = len(view.out_pieces)
    assert view.weights.shape == (t, t)
    assert view.src_pieces[0] == "<s>"
    assert torch.allclose(view.weights.sum(-1), torch.ones(t), atol=1e-5)
    assert torch.equal(view.weights.triu(1), torch.zeros(t, t))  # nothing from the future


def test_attention_is_the_teacher_forced_models_own(loaded):
    _, model, tokenizer, cfg = loaded
    view = attention_maps.attention_map(
        model, tokenizer, SENTENCE, layer=-1, head=1, decode_cfg=cfg.decode
    )
    src = torch.tensor(tokenizer.encode_src([SENTENCE]))
    tgt_in = torch.tensor([[BOS_ID, *view.hypothesis]])[:, : model.cfg.max_positions]
    with torch.no_grad(), attention_maps.recorded_attention(model) as weights:
        model(src, tgt_in)
    expected = weights[model.decoder.layers[-1].cross_attn][0, 1]  # (T, S) of head 1
    assert torch.equal(view.weights, expected)


def test_inspect_attention_writes_a_png_and_rejects_bad_choices(loaded, tmp_path):
    ckpt = loaded[0]
    out = tmp_path / "att.png"
    result = cli("inspect", "attention", ckpt, SENTENCE, "--plot", out, "--head", "1")
    assert result.exit_code == 0, result.output
    assert_png(out)
    base = ("inspect", "attention", ckpt, SENTENCE, "--plot", out)
    assert_only_error(cli(*base, "--layer", 5), "--layer 5: the decoder has 2 layers")
    assert_only_error(cli(*base, "--head", "7"), "--head 7")
    assert_only_error(cli(*base, "--head", "first"), "--head first")
    assert_only_error(cli("inspect", "attention", ckpt, "  ", "--plot", out), "empty")
    assert_only_error(
        cli("inspect", "attention", tmp_path / "no.pt", SENTENCE, "--plot", out), "no.pt"
    )


def test_translate_plot_attention_draws_the_first_sentence(loaded, tmp_path):
    ckpt = loaded[0]
    out = tmp_path / "att.png"
    result = cli("translate", ckpt, SENTENCE, "a dog .", "--plot-attention", out, "--layer", 0)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2  # stdout still holds the translations only
    assert_png(out)
    self_out = tmp_path / "self.png"
    result = cli("translate", ckpt, SENTENCE, "--plot-attention", self_out, "--self-attention")
    assert result.exit_code == 0, result.output
    assert_png(self_out)
    assert_only_error(cli("translate", ckpt, "--plot-attention", out), "TEXT argument")
