"""The CTranslate2 export translates as tfx does: greedy line for line, token scores within
1e-4, beam search mostly the same (its length penalty differs), on post- and pre-norm
models, shared or separate embeddings, sinusoidal or learned positions."""

from __future__ import annotations

import builtins
import dataclasses
from pathlib import Path

import pytest
import torch
from helpers import SHAPES, assert_one_line_error, cli, trained_tiny

from transformer_cli.core.specials import BOS_ID, EOS_ID
from transformer_cli.data import store
from transformer_cli.decoding import ct2_backend as ct2
from transformer_cli.decoding.loading import load_model
from transformer_cli.decoding.runner import decode_all

pytest.importorskip("ctranslate2")
from transformer_cli.export import ctranslate2 as ct2_export


def sources_of(checkpoint: Path):
    model, tokenizer, cfg = load_model(checkpoint, torch.device("cpu"))
    lines = store.load_text(cfg.run_dir, "valid", "src") + store.load_text(
        cfg.run_dir, "test", "src"
    )
    return model, tokenizer, cfg, tokenizer.encode_src(lines)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_greedy_outputs_and_token_scores_are_tfxs(tmp_path, tmp_path_factory, toy_pairs, shape):
    checkpoint = trained_tiny(tmp_path_factory, toy_pairs, shape)
    out = ct2_export.export(checkpoint, tmp_path / "ct2")
    model, tokenizer, cfg, sources = sources_of(checkpoint)
    exported = ct2.load_export(out)
    assert ct2.decode_exported(exported, sources, cfg.decode) == decode_all(
        model, sources, cfg.decode, "cpu"
    )
    targets = tokenizer.encode_tgt(store.load_text(cfg.run_dir, "valid", "tgt"))
    theirs = ct2.target_log_probs(exported, sources[: len(targets)], targets)
    with torch.no_grad():
        for src, tgt, log_probs in zip(sources, targets, theirs, strict=False):
            logits = model(torch.tensor([src]), torch.tensor([[BOS_ID, *tgt]]))[0]
            ours = torch.log_softmax(logits, -1)[torch.arange(len(tgt) + 1), [*tgt, EOS_ID]]
            torch.testing.assert_close(torch.tensor(log_probs), ours, atol=1e-4, rtol=0)


def test_beam_search_agrees_on_most_lines(tmp_path, tmp_path_factory, toy_pairs):
    """With alpha 0 both rank by the log-probability alone, and the two beam searches
    still differ in which candidates they keep (CTranslate2's finds a better one now and
    then); with alpha > 0 their length penalties differ too (see decoding/ct2_backend.py)."""
    checkpoint = trained_tiny(tmp_path_factory, toy_pairs, "post-norm")
    exported = ct2.load_export(ct2_export.export(checkpoint, tmp_path / "ct2"))
    model, _, cfg, sources = sources_of(checkpoint)
    beam = dataclasses.replace(cfg.decode, beam=5, alpha=0.0)
    ours = decode_all(model, sources, beam, "cpu")
    theirs = ct2.decode_exported(exported, sources, beam)
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    assert same >= 0.9 * len(sources), (same, len(sources))


def test_an_int8_export_translates(tmp_path, tmp_path_factory, toy_pairs):
    checkpoint = trained_tiny(tmp_path_factory, toy_pairs, "post-norm")
    out = ct2_export.export(checkpoint, tmp_path / "int8", quantization="int8")
    model, _, cfg, sources = sources_of(checkpoint)
    hyps = ct2.decode_exported(ct2.load_export(out), sources, cfg.decode)
    assert len(hyps) == len(sources)
    assert all(hyps)  # every line gets an output
    full = ct2_export.export(checkpoint, tmp_path / "fp32")
    assert (out / "model.bin").stat().st_size < (full / "model.bin").stat().st_size


def test_translate_and_evaluate_take_the_export_directory(tmp_path, tmp_path_factory, toy_pairs):
    checkpoint = trained_tiny(tmp_path_factory, toy_pairs, "pre-norm")
    exported = cli("export", checkpoint, tmp_path / "ct2", "--to", "ctranslate2")
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "ct2" / "README.md").read_text().count("ctranslate2.Translator") == 1
    text = ["the dog sees the cat", "", "a small bird sings"]
    # the export computes in fp32; so does the checkpoint here, whatever `auto` picks
    ours = cli("translate", checkpoint, "--precision", "fp32", *text)
    theirs = cli("translate", tmp_path / "ct2", *text)
    assert theirs.exit_code == 0, theirs.output
    assert theirs.stdout == ours.stdout
    assert len(theirs.stdout.splitlines()) == 3
    both = cli("evaluate", checkpoint, tmp_path / "ct2", "--split", "valid", "--json",
               "--precision", "fp32", "--output-dir", tmp_path / "eval")  # fmt: skip
    assert both.exit_code == 0, both.output
    import json

    rows = json.loads(both.stdout[: both.stdout.rindex("}") + 1])["results"]
    assert len(rows) == 2
    assert rows[0]["bleu"] == rows[1]["bleu"]  # the same hypotheses
    assert abs(rows[0]["loss"] - rows[1]["loss"]) < 1e-3


def test_export_errors_are_one_line(tmp_path, tmp_path_factory, toy_pairs, monkeypatch):
    checkpoint = trained_tiny(tmp_path_factory, toy_pairs, "post-norm")
    bad_to = cli("export", checkpoint, tmp_path / "x", "--to", "onnx")
    assert_one_line_error(bad_to, "--to must be ctranslate2 or huggingface")
    args = ("export", checkpoint, tmp_path / "x", "--to", "ctranslate2")
    bad_q = cli(*args, "--quantization", "int3")
    assert_one_line_error(bad_q, "--quantization must be one of")
    real_import = builtins.__import__

    def no_ctranslate2(name, *args, **kwargs):
        if name == "ctranslate2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ctranslate2)
    missing = cli(*args)
    assert_one_line_error(missing, "pip install 'tfx[export]'")


def test_a_ctranslate2_without_rotary_specs_is_one_line(tmp_path, tmp_path_factory, toy_pairs):
    """Where the installed CTranslate2's specs lack an option, the export says which."""
    import ctranslate2

    checkpoint = trained_tiny(tmp_path_factory, toy_pairs, "rope")
    real = ctranslate2.specs.TransformerEncoderSpec

    def older(*args, rotary_dim=None, **kwargs):  # a spec from before rotary encoders
        if rotary_dim is not None:
            raise TypeError("unexpected keyword argument 'rotary_dim'")
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ctranslate2.specs, "TransformerEncoderSpec", older)
        refused = cli("export", checkpoint, tmp_path / "ct2", "--to", "ctranslate2")
    assert_one_line_error(refused, "model.positional rope: CTranslate2")
    assert not (tmp_path / "ct2").exists()
