"""`tfx score`: a pair's score is log p(target | source) summed by hand from the model's
forward pass; a split's scores sum to `tfx evaluate`'s loss; order, batching, --json,
--filter, and one-line errors."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path

import pytest
import torch
from helpers import assert_only_error, cli, trained_tiny

from transformer_cli.core.checkpoint import load_checkpoint, save_checkpoint
from transformer_cli.core.specials import BOS_ID, EOS_ID
from transformer_cli.data.corpus import read_tsv
from transformer_cli.decoding.loading import load_model
from transformer_cli.decoding.scoring import score_pairs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, toy_pairs) -> Path:
    return trained_tiny(tmp_path_factory, toy_pairs, "pre-norm")


@pytest.fixture(scope="module")
def data(checkpoint) -> Path:
    return checkpoint.parents[2] / "data"  # the corpus the tiny model trained on


def scores_of(result) -> list[tuple[float, int, float]]:
    assert result.exit_code == 0, result.output
    return [
        (float(a), int(b), float(c))
        for a, b, c in (line.split("\t") for line in result.stdout.splitlines())
    ]


def test_a_pairs_score_is_the_sum_of_log_softmax_at_the_gold_tokens(checkpoint, data):
    model, tokenizer, _ = load_model(checkpoint, torch.device("cpu"))
    src_lines = (data / "test.en").read_text().splitlines()
    tgt_lines = (data / "test.de").read_text().splitlines()
    got = scores_of(
        cli("score", checkpoint, "--src", data / "test.en", "--tgt", data / "test.de",
            "--precision", "fp32", "--batch-tokens", 64)
    )  # fmt: skip
    assert len(got) == len(src_lines)
    sources, targets = tokenizer.encode_src(src_lines), tokenizer.encode_tgt(tgt_lines)
    with torch.no_grad():
        for (log_prob, tokens, mean), src, tgt in zip(got, sources, targets, strict=True):
            logits = model(torch.tensor([src]), torch.tensor([[BOS_ID, *tgt]]))[0]  # (T, V)
            gold = torch.log_softmax(logits.double(), -1)[
                torch.arange(len(tgt) + 1), [*tgt, EOS_ID]
            ]
            assert tokens == len(tgt) + 1
            assert log_prob == pytest.approx(float(gold.sum()), abs=2e-4)  # 4 decimals printed
            assert mean == pytest.approx(log_prob / tokens, abs=1e-4)


def test_a_splits_scores_sum_to_the_loss_tfx_evaluate_prints(checkpoint, data, tmp_path):
    args = ("--precision", "fp32")
    report = cli("evaluate", checkpoint, "--split", "test", "--json", *args,
                 "--output-dir", tmp_path / "eval")  # fmt: skip
    assert report.exit_code == 0, report.output
    loss = json.loads(report.stdout)["results"][0]["loss"]  # per token, 4 decimals
    got = scores_of(
        cli("score", checkpoint, "--src", data / "test.en", "--tgt", data / "test.de", *args)
    )
    total, tokens = sum(s[0] for s in got), sum(s[1] for s in got)
    assert -total / tokens == pytest.approx(loss, abs=1e-4)


def test_scores_come_back_in_input_order_whatever_the_batches(checkpoint):
    model, tokenizer, _ = load_model(checkpoint, torch.device("cpu"))
    sources = [[5, 6, 7], [8], [9, 10, 11, 12, 13, 14], [15, 16]]
    targets = [[7, 8], [9, 10, 11, 12], [13], []]
    with torch.no_grad():
        one_by_one = [
            score_pairs(model, [s], [t], 1_000, "cpu")[0]
            for s, t in zip(sources, targets, strict=True)
        ]
        small = score_pairs(model, sources, targets, 8, "cpu")  # several batches
        large = score_pairs(model, sources, targets, 1_000, "cpu")  # one, sorted by length
    for a, b, c in zip(one_by_one, small, large, strict=True):
        assert a.tokens == b.tokens == c.tokens
        assert a.log_prob == pytest.approx(b.log_prob, abs=1e-4)
        assert a.log_prob == pytest.approx(c.log_prob, abs=1e-4)
    assert [s.tokens for s in large] == [3, 5, 2, 1]  # an empty target: EOS alone


def test_json_and_filter_write_what_they_say(checkpoint, data, tmp_path):
    files = ("--src", data / "test.en", "--tgt", data / "test.de", "--precision", "fp32")
    plain = scores_of(cli("score", checkpoint, *files))
    records = [
        json.loads(line) for line in cli("score", checkpoint, *files, "--json").stdout.splitlines()
    ]
    assert [r["line"] for r in records] == list(range(1, len(plain) + 1))
    assert [round(r["mean"], 4) for r in records] == [p[2] for p in plain]
    cut = sorted(p[2] for p in plain)[len(plain) // 2]  # the median: about half are kept
    kept = cli("score", checkpoint, *files, "--filter", cut, "-o", tmp_path / "kept.tsv")
    assert kept.exit_code == 0, kept.output
    pairs = list(
        zip(
            (data / "test.en").read_text().splitlines(),
            (data / "test.de").read_text().splitlines(),
            strict=True,
        )
    )
    wanted = [f"{s}\t{t}" for (s, t), r in zip(pairs, records, strict=True) if r["mean"] >= cut]
    assert (tmp_path / "kept.tsv").read_text().splitlines() == ["en\tde", *wanted]
    as_corpus = list(read_tsv(tmp_path / "kept.tsv", "en", "de"))
    assert [f"{s}\t{t}" for s, t in as_corpus] == wanted  # a tsv corpus prepare reads
    assert 0 < len(wanted) < len(pairs)
    assert f"kept {len(wanted)} of {len(pairs)} pairs" in kept.stderr
    as_json = cli("score", checkpoint, *files, "--filter", cut, "--json")
    assert [json.loads(line)["src"] for line in as_json.stdout.splitlines()] == [
        w.split("\t")[0] for w in wanted
    ]


def test_an_empty_source_line_has_no_score_and_is_never_kept(checkpoint, tmp_path):
    (tmp_path / "s").write_text("the dog .\n\n")
    (tmp_path / "t").write_text("der Hund .\nder Hund .\n")
    result = cli("score", checkpoint, "--src", tmp_path / "s", "--tgt", tmp_path / "t")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == "nan\t0\tnan"
    assert "line 2: empty source" in result.stderr
    kept = cli(
        "score", checkpoint, "--src", tmp_path / "s", "--tgt", tmp_path / "t", "--filter", -1e9
    )
    assert kept.stdout.splitlines() == ["en\tde", "the dog .\tder Hund ."]


def test_bad_input_is_one_line(checkpoint, tmp_path):
    (tmp_path / "two").write_text("a\nb\n")
    (tmp_path / "three").write_text("a\nb\nc\n")
    (tmp_path / "empty").write_text("")
    mismatch = cli("score", checkpoint, "--src", tmp_path / "two", "--tgt", tmp_path / "three")
    assert_only_error(
        mismatch, f"--src {tmp_path / 'two'} has 2 lines but --tgt {tmp_path / 'three'} has 3"
    )
    empty = cli("score", checkpoint, "--src", tmp_path / "empty", "--tgt", tmp_path / "empty")
    assert_only_error(empty, f"--src {tmp_path / 'empty'}: empty file")
    state = load_checkpoint(checkpoint)
    del state["tokenizer"]
    save_checkpoint(tmp_path / "bare.pt", state)
    bare = cli("score", tmp_path / "bare.pt", "--src", tmp_path / "two", "--tgt", tmp_path / "two")
    assert_only_error(bare, "missing tokenizer")
    missing = cli("score", checkpoint, "--src", tmp_path / "nope", "--tgt", tmp_path / "two")
    assert_only_error(missing, "no such input file")


def test_a_pipe_that_runs_out_first_is_refused_and_the_output_kept(checkpoint, tmp_path):
    (tmp_path / "three").write_text("the dog .\na cat .\nthe man .\n")
    (tmp_path / "out").write_text("the user's\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(
        target=lambda: fifo.write_text("der Hund .\neine Katze .\n"), daemon=True
    )
    writer.start()
    result = cli(
        "score", checkpoint, "--src", tmp_path / "three", "--tgt", fifo, "-o", tmp_path / "out"
    )
    writer.join(timeout=10)
    assert not writer.is_alive()  # the pipe was read
    assert_only_error(result, f"--src {tmp_path / 'three'} has 3 lines but --tgt {fifo} has 2")
    assert (tmp_path / "out").read_text() == "the user's\n"


def test_filter_refuses_a_tsv_whose_two_fields_would_share_a_name(
    checkpoint, tmp_path, monkeypatch
):
    from transformer_cli.evaluation import score

    real = score.load_scorer
    monkeypatch.setattr(
        score, "load_scorer", lambda job: dataclasses.replace(real(job), langs=("en", "en"))
    )
    (tmp_path / "s").write_text("the dog .\n")
    args = ("score", checkpoint, "--src", tmp_path / "s", "--tgt", tmp_path / "s", "--filter", -9)
    assert_only_error(cli(*args), "both are 'en': use --json")
    assert cli(*args, "--json").exit_code == 0
