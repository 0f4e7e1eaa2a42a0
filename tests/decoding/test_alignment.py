"""Word alignments: pieces to words by hand-built cases and on a real tokenizer, links
from attention, and `tfx translate --alignments` on greedy, beam and n-best output."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_one_line_error, cli, trained_tiny

from transformer_cli.core.errors import ConfigError
from transformer_cli.decoding import ct2_backend
from transformer_cli.decoding.alignment import (
    SPACE,
    chosen_layer,
    output_words,
    pharaoh,
    piece_words,
    word_links,
)
from transformer_cli.decoding.loading import load_model

S = SPACE


@pytest.mark.parametrize(
    ("pieces", "words"),
    [
        ([f"{S}The", f"{S}house", "s", f"{S}is", f"{S}big"], [0, 1, 1, 2, 3]),
        ([f"{S}un", "believ", "able", f"{S}!"], [0, 0, 0, 1]),
        ([f"{S}", ".", f"{S}a"], [0, 0, 1]),  # a bare mark belongs to the word after it
        ([f"{S}is", f"{S}", "."], [0, 1, 1]),
        (["Hello", f"{S}world"], [0, 1]),  # no mark on the first piece
        ([f"{S}a"], [0]),
        ([f"{S}is", f"{S}"], [0, 0]),  # a bare mark at the end starts no word
        ([f"{S}"], [-1]),  # no word at all
        ([f"{S}a", "<unk>", "s"], [0, 0, 0]),  # in an input, <unk> is part of its word
        ([], []),
    ],
)
def test_pieces_map_to_the_words_they_decode_to(pieces, words):
    assert piece_words(pieces) == words


def test_an_unknown_piece_is_a_word_of_its_own_in_an_output_line():
    """SentencePiece decodes <unk> as " ⁇ ": the pieces around it are other words."""
    assert output_words([f"{S}a", "<unk>", "s", f"{S}b"]) == [0, 1, 2, 3]
    assert word_links(torch.eye(2), [0, -1], [-1, 0]) == []  # pieces of no word link nothing


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, toy_pairs):
    return trained_tiny(tmp_path_factory, toy_pairs, "pre-norm")


def test_piece_words_agree_with_sentencepieces_own_decoding(checkpoint, toy_pairs):
    """For real pieces: each word's pieces, joined, are that word of the decoded text."""
    _, tokenizer, _ = load_model(checkpoint, torch.device("cpu"))
    for src, _ in toy_pairs[:200]:
        ids = tokenizer.encode_src([src])[0]
        pieces = tokenizer.src_id_pieces(ids)
        words = " ".join(src.split()).split()
        owner = piece_words(pieces)
        assert owner == sorted(owner)
        for w, word in enumerate(words):
            joined = "".join(p for p, o in zip(pieces, owner, strict=True) if o == w)
            assert joined.replace(S, "") == word


def test_links_take_each_target_pieces_most_attended_source_piece():
    attention = torch.tensor(
        [
            [0.7, 0.2, 0.1, 0.0],  # target piece 0 -> source piece 0
            [0.1, 0.1, 0.8, 0.0],  # 1 -> 2
            [0.0, 0.1, 0.2, 0.7],  # 2 -> 3
        ]
    )
    src_words, tgt_words = [0, 1, 1, 2], [0, 1, 1]  # source pieces 1, 2 are one word
    links = word_links(attention, src_words, tgt_words)
    assert links == [(0, 0), (1, 1), (2, 1)]  # target word 1 links to two source words
    assert pharaoh(links) == "0-0 1-1 2-1"
    repeated = word_links(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), [0, 0], [0, 0])
    assert repeated == [(0, 0)]  # no repeats


def test_the_default_layer_is_the_second_to_last_and_bad_ones_are_refused():
    assert chosen_layer(6, None) == 4
    assert chosen_layer(1, None) == 0
    assert chosen_layer(3, -1) == 2
    with pytest.raises(ConfigError, match="--align-layer 3: the decoder has 3 layers"):
        chosen_layer(3, 3)


def parsed(line: str) -> tuple[str, list[tuple[int, int]]]:
    text, links = line.rsplit("\t", 1)
    return text, [tuple(map(int, link.split("-"))) for link in links.split()]


SENTENCES = ["the old man sees a dog", "a small cat", "the woman reads the book"]


@pytest.mark.parametrize(
    ("flags", "layer"), [((), ()), (("--beam", "3"), ()), ((), ("--align-layer", "-1"))]
)
def test_translate_with_alignments_links_real_words(checkpoint, flags, layer):
    plain = cli("translate", checkpoint, *SENTENCES, *flags)
    aligned = cli("translate", checkpoint, *SENTENCES, *flags, *layer, "--alignments")
    assert aligned.exit_code == 0, aligned.output
    rows = aligned.stdout.splitlines()
    assert [parsed(r)[0] for r in rows] == plain.stdout.splitlines()  # the same translations
    for source, row in zip(SENTENCES, rows, strict=True):
        text, links = parsed(row)
        assert links, row
        assert all(0 <= i < len(source.split()) for i, _ in links)
        assert {j for _, j in links} == set(range(len(text.split())))  # every target word


def test_beam_one_aligns_as_greedy_and_nbest_lines_each_align(checkpoint):
    greedy = cli("translate", checkpoint, *SENTENCES, "--alignments").stdout
    assert cli("translate", checkpoint, *SENTENCES, "--alignments", "--beam", "1").stdout == greedy
    nbest = cli(
        "translate", checkpoint, SENTENCES[0], "--beam", "3", "--nbest", "2", "--alignments"
    )
    rows = nbest.stdout.splitlines()
    assert len(rows) == 2
    assert all(len(r.split("\t")) == 3 for r in rows)  # hypothesis, score, links


def test_alignments_match_the_attention_map_learners_see(checkpoint):
    """Two paths to one number: inspect's recorded attention and the aligner's."""
    from transformer_cli.inspect.attention_maps import attention_map

    model, tokenizer, cfg = load_model(checkpoint, torch.device("cpu"))
    text = SENTENCES[0]
    layer = chosen_layer(cfg.model.dec_layers, None)
    view = attention_map(model, tokenizer, text, layer=layer, decode_cfg=cfg.decode)
    weights = torch.as_tensor(view.weights)[: len(view.hypothesis)]  # EOS's row left out
    src_words = piece_words(view.src_pieces)
    tgt_words = piece_words(tokenizer.tgt_pieces(view.hypothesis))
    expected = pharaoh(word_links(weights, src_words, tgt_words))
    row = cli("translate", checkpoint, text, "--alignments", "--precision", "fp32").stdout
    assert row.rstrip("\n").split("\t")[1] == expected


def test_a_batch_aligns_each_line_as_alone_and_sampled_nbest_aligns_each_sample(checkpoint):
    flags = ("--alignments", "--precision", "fp32")
    together = cli("translate", checkpoint, *SENTENCES, *flags).stdout.splitlines()
    alone = [cli("translate", checkpoint, s, *flags).stdout.strip() for s in SENTENCES]
    assert together == alone
    sampled = cli("translate", checkpoint, SENTENCES[1], "--sample", "--nbest", "3", *flags)
    rows = sampled.stdout.splitlines()
    assert len(rows) == 3
    assert all(len(r.split("\t")) == 3 for r in rows)


def test_a_line_longer_than_the_model_aligns_its_cut_source(tmp_path, toy_pairs):
    """The source is cut as the search cuts it; an output at the cap still aligns."""
    from helpers import TINY_RUN_POSITIONS, make_tiny_run

    cfg = make_tiny_run(tmp_path, toy_pairs)
    ckpt = next((tmp_path / "run" / "checkpoints").glob("*.pt"))
    line = " ".join(["the old man sees a dog"] * 10)  # far more than 24 pieces
    result = cli("translate", ckpt, line, "--alignments", "--max-len-b", TINY_RUN_POSITIONS)
    assert result.exit_code == 0, result.output
    _, links = parsed(result.stdout.strip())
    assert max(i for i, _ in links) < len(line.split())
    assert cfg.model.max_positions == TINY_RUN_POSITIONS


def test_alignment_errors_are_one_line(checkpoint, tmp_path):
    bad = cli("translate", checkpoint, "a dog", "--alignments", "--align-layer", "9")
    assert_one_line_error(bad, "--align-layer 9: the decoder has")
    alone = cli("translate", checkpoint, "a dog", "--align-layer", "0")
    assert_one_line_error(alone, "--align-layer picks the layer of --alignments")
    pytest.importorskip("ctranslate2")
    from transformer_cli.export import ctranslate2 as ct2_export

    out = ct2_export.export(checkpoint, tmp_path / "ct2")
    assert ct2_backend.is_export_dir(out)
    refused = cli("translate", out, "a dog", "--alignments")
    assert_one_line_error(refused, "--alignments reads tfx's cross-attention")
