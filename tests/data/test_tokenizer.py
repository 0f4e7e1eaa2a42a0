"""SentencePiece: fixed special ids, deterministic training, lossless round trips."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_cli.core.config import TokenizerConfig
from transformer_cli.core.errors import DataError
from transformer_cli.core.specials import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from transformer_cli.data.tokenizer import Tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def sides(toy_pairs):
    return [en for en, _ in toy_pairs], [de for _, de in toy_pairs]


@pytest.fixture(scope="module")
def joint(sides) -> Tokenizer:
    return train_tokenizer(TokenizerConfig(vocab_size=100), *sides)


@pytest.fixture(scope="module")
def separate(sides) -> Tokenizer:
    return train_tokenizer(TokenizerConfig(vocab_size=80, joint=False), *sides)


def test_special_ids_are_fixed(joint, separate):
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    for tok in (joint, separate):
        assert tok.tgt_pieces([PAD_ID, UNK_ID, BOS_ID, EOS_ID]) == ["<pad>", "<unk>", "<s>", "</s>"]


def test_training_is_deterministic(sides, joint):
    again = train_tokenizer(TokenizerConfig(vocab_size=100), *sides)
    assert again.to_bytes() == joint.to_bytes()
    other = train_tokenizer(TokenizerConfig(vocab_size=100), sides[0][:200], sides[1][:200])
    assert other.to_bytes() != joint.to_bytes()


def test_vocab_sizes_and_files(joint, separate):
    assert joint.joint
    assert joint.src_vocab_size == joint.tgt_vocab_size == 100
    assert set(joint.to_bytes()) == {"spm.model"}
    assert not separate.joint
    assert separate.src_vocab_size == separate.tgt_vocab_size == 80
    assert set(separate.to_bytes()) == {"spm.src.model", "spm.tgt.model"}


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_encode_decode_round_trip(joint, separate, sides, data):
    lines = data.draw(st.lists(st.sampled_from(sides[1]), min_size=1, max_size=6))
    for tok in (joint, separate):
        ids = tok.encode_tgt(lines)
        assert all(PAD_ID not in s and BOS_ID not in s and EOS_ID not in s for s in ids)
        assert tok.decode_tgt(ids) == lines


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_decode_stops_at_eos_and_skips_pad_and_bos(joint, sides, data):
    line = data.draw(st.sampled_from(sides[1]))
    (ids,) = joint.encode_tgt([line])
    tail = data.draw(st.lists(st.integers(0, joint.tgt_vocab_size - 1), max_size=5))
    padded = [BOS_ID, *ids, EOS_ID, *tail, *[PAD_ID] * data.draw(st.integers(0, 3))]
    assert joint.decode_tgt([padded]) == [line]
    assert joint.decode_tgt([[PAD_ID, BOS_ID, *ids]]) == [line]  # no EOS: decode it all


def test_decode_accepts_tensor_rows(joint, sides):
    torch = pytest.importorskip("torch")
    ids = joint.encode_tgt(sides[1][:3])
    width = max(map(len, ids)) + 1
    batch = torch.full((3, width), PAD_ID)
    for i, s in enumerate(ids):
        batch[i, : len(s) + 1] = torch.tensor([*s, EOS_ID])
    assert joint.decode_tgt(batch) == sides[1][:3]


def test_separate_models_see_only_their_own_side(separate):
    # ß and ä occur only in the German side, so the English model cannot spell them
    assert UNK_ID in separate.encode_src(["Großmutter Mädchen"])[0]
    assert UNK_ID not in separate.encode_tgt(["Großmutter Mädchen"])[0]


def test_pieces_for_display(joint):
    pieces = joint.src_pieces("The dog sleeps.")
    assert "".join(pieces).replace("\u2581", " ").strip() == "The dog sleeps."
    (ids,) = joint.encode_src(["The dog sleeps."])
    assert joint.tgt_pieces(ids) == pieces  # joint: one vocabulary for both sides


def test_bytes_and_files_round_trip(tmp_path, joint, separate, sides):
    for tok in (joint, separate):
        again = Tokenizer.from_bytes(tok.to_bytes())
        assert again.encode_src(sides[0][:20]) == tok.encode_src(sides[0][:20])
        assert again.encode_tgt(sides[1][:20]) == tok.encode_tgt(sides[1][:20])
        run_dir = tmp_path / ("joint" if tok.joint else "separate")
        tok.save(run_dir / "cache")
        loaded = Tokenizer.load(run_dir)
        assert loaded.joint == tok.joint
        assert loaded.to_bytes() == tok.to_bytes()


def test_bad_model_bytes_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not a valid SentencePiece model"):
        Tokenizer.from_bytes({"spm.model": b"garbage"})
    with pytest.raises(DataError, match="expected spm.model"):
        Tokenizer.from_bytes({"spm.src.model": b""})
    with pytest.raises(DataError, match="tfx prepare"):
        Tokenizer.load(tmp_path)


def test_too_large_vocab_suggests_one_that_works(sides):
    src, tgt = sides[0][:40], sides[1][:40]
    with pytest.raises(DataError) as e:
        train_tokenizer(TokenizerConfig(vocab_size=5000), src, tgt)
    message = str(e.value)
    suggested = int(re.search(r"--set tokenizer.vocab_size=(\d+)", message).group(1))
    assert 16 <= suggested < 5000
    assert "\n" not in message
    tok = train_tokenizer(TokenizerConfig(vocab_size=suggested), src, tgt)
    assert tok.src_vocab_size == suggested


def test_too_small_vocab_names_the_characters(sides):
    with pytest.raises(DataError, match="character_coverage"):
        train_tokenizer(TokenizerConfig(vocab_size=20), *sides)


def test_tokenizer_and_corpus_do_not_import_torch():
    code = (
        "import sys, transformer_cli.data.tokenizer, transformer_cli.data.corpus; "
        "import transformer_cli.data.toy; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
