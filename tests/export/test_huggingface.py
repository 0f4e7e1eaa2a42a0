"""The Hugging Face export computes tfx's function: logits within 1e-4 on a padded batch,
greedy `generate` equal to tfx's greedy lines, and under transformers 4 (5 has no such task)
`pipeline("translation", model=OUT_DIR)` too, for post-norm (MarianMT) and pre-norm
(Pegasus) models; what cannot be exported exactly is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import SHAPES, assert_one_line_error, cli, trained_tiny

from transformer_cli.core.specials import BOS_ID, EOS_ID, PAD_ID
from transformer_cli.data import store
from transformer_cli.decoding.limits import output_cap
from transformer_cli.decoding.loading import load_model
from transformer_cli.decoding.runner import decode_all

transformers = pytest.importorskip("transformers")
pytest.importorskip("google.protobuf")
from transformer_cli.export import huggingface as hf_export  # noqa: E402

CLASSES = {"post-norm": "MarianMTModel", "pre-norm": "PegasusForConditionalGeneration"}


def exported(tmp_path, tmp_path_factory, toy_pairs, shape):
    checkpoint = trained_tiny(tmp_path_factory, toy_pairs, shape)
    out = hf_export.export(checkpoint, tmp_path / "hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    ours, our_tokenizer, cfg = load_model(checkpoint, torch.device("cpu"))
    lines = store.load_text(cfg.run_dir, "valid", "src")
    return model, tokenizer, ours, our_tokenizer, cfg, lines


@pytest.mark.parametrize("name", list(CLASSES.values()))
def test_the_residual_permutation_maps_tfxs_positions_onto_theirs(name):
    from transformer_cli.model.positions import sinusoidal_table

    d = 16
    cls = getattr(transformers, name)
    config = cls.config_class(
        d_model=d,
        max_position_embeddings=12,
        vocab_size=8,
        pad_token_id=0,
        decoder_start_token_id=0,
        eos_token_id=1,
        forced_eos_token_id=1,
    )
    model = cls(config).model  # the table each stack computes when it is built
    ours = sinusoidal_table(12, d)[:, hf_export.residual_permutation(d)]
    for stack in (model.encoder, model.decoder):
        torch.testing.assert_close(ours, stack.embed_positions.weight, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", list(CLASSES))
def test_logits_and_greedy_lines_are_tfxs(tmp_path, tmp_path_factory, toy_pairs, shape):
    model, tokenizer, ours, our_tokenizer, cfg, lines = exported(
        tmp_path, tmp_path_factory, toy_pairs, shape
    )
    assert type(model).__name__ == CLASSES[shape]
    batch = tokenizer(lines, return_tensors="pt", padding=True)
    sources = our_tokenizer.encode_src(lines)
    assert [
        row[: len(s)].tolist() for row, s in zip(batch["input_ids"], sources, strict=True)
    ] == sources
    assert int(batch["attention_mask"].sum()) == sum(map(len, sources))  # no EOS added
    assert set(batch) == {"input_ids", "attention_mask"}  # 4.x would add token_type_ids
    saved = json.loads((Path(tokenizer.name_or_path) / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "PreTrainedTokenizerFast"  # 4.x has no TokenizersBackend
    hyps = decode_all(ours, sources, cfg.decode, "cpu")
    decoder_in = torch.full((len(hyps), max(map(len, hyps)) + 1), PAD_ID)
    decoder_in[:, 0] = BOS_ID
    for row, h in enumerate(hyps):
        decoder_in[row, 1 : 1 + len(h)] = torch.tensor(h, dtype=torch.long)
    with torch.no_grad():
        theirs = model(**batch, decoder_input_ids=decoder_in).logits
        mine = ours(batch["input_ids"], decoder_in)
    real = decoder_in != PAD_ID
    torch.testing.assert_close(theirs[real], mine[real], atol=1e-4, rtol=0)
    caps = [output_cap(len(s), cfg.decode, cfg.model.max_positions) for s in sources]
    with torch.no_grad():
        generated = model.generate(**batch, num_beams=1, max_new_tokens=max(caps))
    # a greedy output cut to a sentence's own cap is the output under that cap
    theirs_ids = [
        _until_eos(row[1:].tolist())[:cap] for row, cap in zip(generated, caps, strict=True)
    ]
    assert theirs_ids == hyps
    texts = tokenizer.batch_decode(theirs_ids, skip_special_tokens=True)
    # as `tfx translate` prints a line; runs of "▁" decode to spaces here, to "" in SentencePiece
    ours_texts = our_tokenizer.decode_tgt(hyps)
    assert [" ".join(t.split()) for t in texts] == [" ".join(t.split()) for t in ours_texts]


def _until_eos(ids: list[int]) -> list[int]:
    return ids[: ids.index(EOS_ID)] if EOS_ID in ids else [i for i in ids if i != PAD_ID]


@pytest.mark.parametrize("shape", list(CLASSES))
def test_the_translation_pipeline_prints_tfxs_greedy_lines(
    tmp_path, tmp_path_factory, toy_pairs, shape
):
    from transformers.pipelines import SUPPORTED_TASKS

    if "translation" not in SUPPORTED_TASKS:  # 5.0 removed it, and no other task fits a seq2seq
        version = transformers.__version__
        pytest.skip(f"transformers {version} has no translation pipeline: make test-transformers4")
    checkpoint = trained_tiny(tmp_path_factory, toy_pairs, shape)
    out = hf_export.export(checkpoint, tmp_path / "hf")
    translate = transformers.pipeline("translation", model=str(out))
    assert type(translate.model).__name__ == CLASSES[shape]
    ours, our_tokenizer, cfg = load_model(checkpoint, torch.device("cpu"))
    lines = store.load_text(cfg.run_dir, "valid", "src")
    sources = our_tokenizer.encode_src(lines)
    expected = our_tokenizer.decode_tgt(decode_all(ours, sources, cfg.decode, "cpu"))
    for line, source, want in zip(lines, sources, expected, strict=True):
        cap = output_cap(len(source), cfg.decode, cfg.model.max_positions)  # tfx's own cap
        got = translate(line, max_new_tokens=cap, num_beams=1)[0]["translation_text"]
        assert " ".join(got.split()) == " ".join(want.split()), line


@pytest.mark.parametrize("shape", ["separate-learned", "rope", "relative"])
def test_what_would_translate_differently_is_refused(tmp_path, tmp_path_factory, toy_pairs, shape):
    checkpoint = trained_tiny(tmp_path_factory, toy_pairs, shape)
    refused = cli("export", checkpoint, tmp_path / "hf", "--to", "huggingface")
    kind = SHAPES[shape]["positional"]
    assert_one_line_error(
        refused, f"cannot export to huggingface exactly: model.positional is {kind}"
    )
    assert not (tmp_path / "hf").exists()  # nothing written
