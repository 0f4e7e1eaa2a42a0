"""A CTranslate2 export samples from the distribution tfx samples from, reports its
samples as tfx does, and scores pairs as tfx scores them (within fp32 rounding)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import cli, make_tiny_run, trained_tiny

from transformer_cli.core.specials import BOS_ID, PAD_ID
from transformer_cli.decoding import ct2_backend as ct2
from transformer_cli.decoding.loading import load_model
from transformer_cli.decoding.runner import decode_all
from transformer_cli.decoding.scoring import score_pairs

pytest.importorskip("ctranslate2")
from transformer_cli.export import ctranslate2 as ct2_export


@pytest.fixture(scope="module")
def both(tmp_path_factory, toy_pairs):
    """The tiny pre-norm checkpoint, its model and tokenizer, and its export, loaded."""
    checkpoint = trained_tiny(tmp_path_factory, toy_pairs, "pre-norm")
    out = ct2_export.export(checkpoint, tmp_path_factory.mktemp("ct2") / "ct2")
    model, tokenizer, cfg = load_model(checkpoint, torch.device("cpu"))
    return checkpoint, out, model, tokenizer, cfg, ct2.load_export(out)


def data_of(checkpoint: Path) -> Path:
    return checkpoint.parents[2] / "data"


def test_score_agrees_between_the_checkpoint_and_its_export(both):
    checkpoint, out, *_ = both
    data = data_of(checkpoint)
    files = ("--src", data / "valid.en", "--tgt", data / "valid.de", "--json")
    ours = cli("score", checkpoint, *files, "--precision", "fp32")
    theirs = cli("score", out, *files)
    assert ours.exit_code == 0, ours.output
    assert theirs.exit_code == 0, theirs.output

    a = [json.loads(line) for line in ours.stdout.splitlines()]
    b = [json.loads(line) for line in theirs.stdout.splitlines()]
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x["log_prob"] == pytest.approx(y["log_prob"], abs=1e-3 * x["tokens"])


def test_topk_one_is_greedy_and_a_seed_repeats_its_samples(both):
    checkpoint, _, model, tokenizer, cfg, exported = both
    sources = tokenizer.encode_src((data_of(checkpoint) / "test.en").read_text().splitlines())
    sample = dataclasses.replace(cfg.decode, sample=True)
    greedy = decode_all(model, sources, cfg.decode, "cpu")
    assert ct2.decode_exported(exported, sources, dataclasses.replace(sample, topk=1)) == greedy
    hot = dataclasses.replace(sample, temperature=2.0)
    export_dir = exported.path

    def fresh(seed: int) -> list:  # the stream is seeded when an export is loaded
        return ct2.decode_exported(ct2.load_export(export_dir, seed=seed), sources, hot)

    first = fresh(0)
    assert fresh(0) == first
    assert fresh(1) != first
    pieces = {p for out in first for p in out}
    assert not pieces & {PAD_ID, BOS_ID}


def test_nbest_samples_are_scored_as_tfx_scores_them(both):
    checkpoint, _, model, tokenizer, cfg, exported = both
    sources = tokenizer.encode_src((data_of(checkpoint) / "test.en").read_text().splitlines())[:10]
    hot = dataclasses.replace(cfg.decode, sample=True, temperature=2.0)
    lists = ct2.decode_exported(exported, sources, hot, nbest=3)
    assert [len(hyps) for hyps in lists] == [3] * len(sources)
    pairs = [(s, ids, score) for s, hyps in zip(sources, lists, strict=True) for ids, score in hyps]
    with torch.no_grad():
        ours = score_pairs(model, [p[0] for p in pairs], [p[1] for p in pairs], 10_000, "cpu")
    assert [p[2] for p in pairs] == pytest.approx([s.mean for s in ours], abs=1e-4)


def chi_square_bound(df: int) -> float:
    """The chi-square distribution's 99.9% quantile, by Wilson and Hilferty's approximation."""
    z = 3.0902  # the standard normal's 99.9% quantile
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


OPTIONS = [{}, {"topk": 5}, {"topp": 0.9}, {"topk": 8, "topp": 0.8, "temperature": 1.5}]


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_both_backends_draw_the_first_piece_from_the_models_distribution(both, options):
    checkpoint, _, model, tokenizer, cfg, exported = both
    source = tokenizer.encode_src(["the old man sees the dog ."])[0]
    one = dataclasses.replace(cfg.decode, sample=True, max_len_a=0.0, max_len_b=1, **options)
    n = 3000
    with torch.no_grad():
        logits = model(torch.tensor([source]), torch.tensor([[BOS_ID]]))[0, 0].double()
    logits[[PAD_ID, BOS_ID]] = -math.inf
    logits /= one.temperature
    if one.topk:
        logits[logits < logits.topk(one.topk).values[-1]] = -math.inf
    probs = logits.softmax(-1)
    if one.topp < 1:  # the fewest most probable pieces that reach topp, renormalised
        ranked = probs.sort(descending=True)
        before = ranked.values.cumsum(0) - ranked.values
        probs[ranked.indices[before >= one.topp]] = 0.0
        probs /= probs.sum()
    common = [int(i) for i in (probs * n >= 5).nonzero()]  # bins of at least 5 expected
    for name, drawn in [
        ("tfx", decode_all(model, [source] * n, one, "cpu")),
        ("ctranslate2", ct2.decode_exported(exported, [source] * n, one)),
    ]:
        firsts = [out[0] if out else -1 for out in drawn]  # -1: EOS at once
        assert set(firsts) - {-1} <= {int(i) for i in (probs > 0).nonzero()}, name
        expected = [float(probs[i]) * n for i in common]
        observed = [firsts.count(i) for i in common]
        rest_expected, rest_observed = n - sum(expected), n - sum(observed)
        statistic = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
        if rest_expected >= 5:
            statistic += (rest_observed - rest_expected) ** 2 / rest_expected
        df = len(common) - (0 if rest_expected >= 5 else 1)
        assert df >= 1, "a single piece allowed: nothing to compare"
        assert statistic < chi_square_bound(df), (name, statistic, df)


def test_translate_samples_with_an_export(both):
    _, out, *_ = both
    result = cli("translate", out, "the dog .", "", "a cat .", "--sample", "--nbest", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 6
    assert all(len(line.split("\t")) == 2 for line in lines)
    assert lines[2:4] == ["\t0.0000", "\t0.0000"]  # an empty line: empty samples
    greedy = cli("translate", out, "the dog .", "--precision", "fp32").stdout.splitlines()
    topk1 = cli("translate", out, "the dog .", "--sample", "--topk", "1", "--nbest", "3")
    assert topk1.exit_code == 0, topk1.output
    assert [line.split("\t")[0] for line in topk1.stdout.splitlines()] == greedy * 3


def test_tag_works_on_an_export_as_on_its_checkpoint(tmp_path, tmp_path_factory, toy_pairs):
    corpora = [{"name": "train"}, {"name": "valid", "tag": "<v>"}]
    run = make_tiny_run(tmp_path_factory.mktemp("tagged_ct2"), toy_pairs, train=corpora)
    checkpoint = Path(run.run_dir) / "checkpoints" / "ckpt_00000010.pt"
    out = ct2_export.export(checkpoint, tmp_path / "ct2")
    lines = ["the old man sees the dog .", "a cat"]
    ours = cli("translate", checkpoint, *lines, "--tag", "<v>", "--precision", "fp32")
    theirs = cli("translate", out, *lines, "--tag", "<v>")
    assert ours.exit_code == 0, ours.output
    assert theirs.stdout == ours.stdout
    unknown = cli("translate", out, "x", "--tag", "<w>")
    assert unknown.exit_code == 2
    assert "its tags: <v>" in unknown.stderr
