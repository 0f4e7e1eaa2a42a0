"""Streaming prepare: the ids of the in-memory way, compact arrays, cleaning that counts
right, weighted and tagged corpora, and bad input refused with nothing half-written."""

from __future__ import annotations

import gc
import gzip
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import error_of
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_cli.core.config_file import load_config
from transformer_cli.core.errors import ConfigError, DataError
from transformer_cli.data import batching, clean, prepare, store, stream
from transformer_cli.data.store import SPLITS
from transformer_cli.data.tokenizer import Tokenizer, train_tokenizer

REPO = Path(__file__).resolve().parents[2]
MULTI30K = REPO.parent / "shared/data/multi30k"


def lines_of(path: Path) -> list[str]:
    """A text file's stripped lines, read whole: the in-memory way, for reference."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig") as f:
        return [line.strip() for line in f.read().split("\n")[:-1]]


def in_memory_ids(cfg, tokenizer: Tokenizer, role: str) -> tuple[list, list]:
    """A split's ids the way prepare made them before it streamed: every line in a list,
    pairs with an empty side dropped, then encoded and (train) length-filtered."""
    d = cfg.data
    name = getattr(d, role)
    src, tgt = (
        lines_of(next(Path(d.dir).glob(f"{name}.{lang}*"))) for lang in (d.src_lang, d.tgt_lang)
    )
    pairs = [(s, t) for s, t in zip(src, tgt, strict=True) if s and t]
    src_ids = tokenizer.encode_src([s for s, _ in pairs])
    tgt_ids = tokenizer.encode_tgt([t for _, t in pairs])
    if role == "train":
        keep, _ = clean.filter_lengths(src_ids, tgt_ids, d.max_len, d.max_ratio)
        src_ids = [ids for ids, k in zip(src_ids, keep, strict=True) if k]
        tgt_ids = [ids for ids, k in zip(tgt_ids, keep, strict=True) if k]
    return src_ids, tgt_ids


def assert_same_ids_as_in_memory(cfg) -> None:
    prepare.run(cfg)
    tokenizer = Tokenizer.load(cfg.run_dir)
    # the tokenizer trained on the whole corpus, in memory, is the one trained on the sample
    d = cfg.data
    src, tgt = (
        lines_of(next(Path(d.dir).glob(f"{d.train}.{lang}*"))) for lang in (d.src_lang, d.tgt_lang)
    )
    pairs = [(s, t) for s, t in zip(src, tgt, strict=True) if s and t]
    whole = train_tokenizer(cfg.tokenizer, [s for s, _ in pairs], [t for _, t in pairs])
    assert whole.fingerprint() == tokenizer.fingerprint()
    for role in SPLITS:
        split = store.load_split(cfg.run_dir, role)
        src_ids, tgt_ids = in_memory_ids(cfg, tokenizer, role)
        assert len(split) == len(src_ids)
        assert split.src.tolist() == [i for ids in src_ids for i in ids]
        assert split.tgt.tolist() == [i for ids in tgt_ids for i in ids]
        assert split.src_lengths.tolist() == [len(ids) for ids in src_ids]
        assert split.tgt_lengths.tolist() == [len(ids) for ids in tgt_ids]


def test_streaming_gives_the_in_memory_ids_on_the_toy_corpus(make_config):
    assert_same_ids_as_in_memory(make_config("data.dedup=false", "data.drop_copies=false"))


def test_tiny_chunks_and_blocks_give_the_same_ids(make_config, monkeypatch):
    """Chunks of 7 pairs: every boundary of the pipeline is crossed."""
    monkeypatch.setattr(stream, "CHUNK", 7)
    assert_same_ids_as_in_memory(make_config("data.dedup=false", "data.drop_copies=false"))


@pytest.mark.skipif(not (MULTI30K / "train.de.gz").exists(), reason="no Multi30k in ../shared")
def test_streaming_gives_the_in_memory_ids_on_multi30k(tmp_path):
    cfg = load_config(
        REPO / "configs/multi30k_de_en.yaml",
        [f"data.dir={MULTI30K}", f"run_dir={tmp_path}", "data.dedup=false"],
    )
    assert_same_ids_as_in_memory(cfg)


# ----------------------------------------------------------------------------- the arrays


def test_ids_are_uint16_when_the_vocabulary_fits_and_load_as_int64_batches(make_config):
    cfg = make_config()
    prepare.run(cfg)
    split = store.load_split(cfg.run_dir, "train")
    assert split.src.dtype == split.tgt.dtype == torch.uint16
    assert store.load_meta(cfg.run_dir)["splits"]["train"]["arrays"] == {
        "ids": "uint16",
        "lengths": "uint16",
    }
    batch = batching.collate(split, torch.arange(4))
    assert batch.src.dtype == batch.tgt_out.dtype == torch.int64
    assert store.id_type(1 << 16) == "uint16"  # ids 0 .. 65535
    assert store.id_type((1 << 16) + 1) == "int32"
    assert store.length_type(65535) == "uint16"
    assert store.length_type(None) == store.length_type(65536) == "int32"


@settings(max_examples=20, deadline=None)
@given(st.lists(st.lists(st.integers(0, 70_000), max_size=6), min_size=1, max_size=12))
def test_the_writer_and_the_loader_round_trip_int32_ids(tmp_path_factory, seqs):
    run_dir = tmp_path_factory.mktemp("run")
    directory = store.cache_dir(run_dir)
    directory.mkdir()
    with store.SplitWriter(directory, "train", "int32", "int32") as writer:
        writer.append(seqs, seqs[::-1])
    arrays = {"ids": "int32", "lengths": "int32"}
    store.write_meta(run_dir, {"format": 2, "splits": {"train": {"arrays": arrays}}})
    split = store.load_split(run_dir, "train")
    assert [split.src_ids(i).tolist() for i in range(len(split))] == seqs
    assert [split.tgt_ids(i).tolist() for i in range(len(split))] == seqs[::-1]


def test_a_cache_of_the_previous_format_still_loads(make_config):
    """Format 1 kept each split as torch.save of int32 ids and int64 offsets."""
    cfg = make_config()
    prepare.run(cfg)
    new = store.load_split(cfg.run_dir, "train")
    directory = store.cache_dir(cfg.run_dir)
    old = {
        "src": new.src.to(torch.int32),
        "src_offsets": new.src_offsets,
        "tgt": new.tgt.to(torch.int32),
        "tgt_offsets": new.tgt_offsets,
    }
    torch.save(old, directory / "train.pt")
    meta = store.load_meta(cfg.run_dir)
    store.write_meta(cfg.run_dir, {**meta, "format": 1})
    loaded = store.load_split(cfg.run_dir, "train")
    assert loaded.src.dtype == torch.int32
    assert torch.equal(loaded.src.long(), new.src.long())
    assert torch.equal(loaded.tgt_offsets, new.tgt_offsets)
    assert prepare.run(cfg)["reused"] is False  # and the next prepare rebuilds it


# ----------------------------------------------------------------------------- cleaning


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(0, 40), max_size=30), max_size=8))
def test_seen_pairs_agrees_with_a_set(chunks):
    seen, reference = clean.SeenPairs(), set()
    for keys in chunks:
        expected = []
        for k in keys:
            expected.append(k not in reference)
            reference.add(k)
        assert seen.first_seen(keys) == expected
    assert len(seen) == len(reference)


def write_pairs(directory: Path, name: str, pairs: list[tuple[str, str]]) -> None:
    for side, lang in enumerate(("en", "de")):
        text = "".join(pair[side] + "\n" for pair in pairs)
        (directory / f"{name}.{lang}").write_text(text, "utf-8")


def test_duplicates_copies_and_empty_pairs_are_counted_by_reason(make_config, corpus_dir):
    originals = list(
        zip(
            (corpus_dir / "train.en").read_text("utf-8").splitlines(),
            (corpus_dir / "train.de").read_text("utf-8").splitlines(),
            strict=True,
        )
    )
    pairs = originals + originals[:7] + [(en, en) for en, _ in originals[:5]] + [("", "x")] * 2
    write_pairs(corpus_dir, "train", pairs)
    cfg = make_config("data.max_ratio=0", "data.max_len=200")
    meta = prepare.run(cfg)
    train = meta["splits"]["train"]
    assert train["dropped"]["duplicate"] == 7
    assert train["dropped"]["copy"] == 5
    assert train["dropped"]["empty"] == 2
    assert train["kept"] == len(set(originals)) == len(store.load_split(cfg.run_dir, "train"))
    off = prepare.run(
        make_config(
            "data.max_ratio=0", "data.max_len=200", "data.dedup=false", "data.drop_copies=false"
        )
    )
    assert off["splits"]["train"]["kept"] == len(pairs) - 2
    # valid and test are never cleaned beyond empty sides: their scores stay comparable
    write_pairs(corpus_dir, "valid", originals[:10] * 2)
    meta = prepare.run(cfg)
    assert meta["splits"]["valid"]["kept"] == 20


# ----------------------------------------------------------------------------- corpora


def two_corpora(make_config, corpus_dir, *overrides, weight=0.5, tag="<bt>"):
    """The corpus's train split, plus a second corpus ("extra": the same pairs reversed)."""
    en = (corpus_dir / "train.en").read_text("utf-8").splitlines()
    de = (corpus_dir / "train.de").read_text("utf-8").splitlines()
    write_pairs(corpus_dir, "extra", list(zip(en[::-1][:60], de[::-1][:60], strict=True)))
    listed = f"data.train=[{{name: train}}, {{name: extra, weight: {weight}, tag: '{tag}'}}]"
    return make_config(listed, "data.dedup=false", *overrides)


def test_tags_reach_the_source_as_one_piece_each(make_config, corpus_dir):
    cfg = two_corpora(make_config, corpus_dir)
    meta = prepare.run(cfg)
    tokenizer = Tokenizer.load(cfg.run_dir)
    tag_id = tokenizer.src_piece_id("<bt>")
    split = store.load_split(cfg.run_dir, "train")
    first, extra = meta["splits"]["train"]["corpora"]
    assert (first["kept"], extra["kept"], extra["tag"], extra["weight"]) == (240, 60, "<bt>", 0.5)
    starts = [int(split.src_ids(i)[0]) for i in range(len(split))]
    assert starts[240:] == [tag_id] * 60
    assert tag_id not in starts[:240]
    assert (split.src == tag_id).sum() == 60  # nowhere else either
    assert split.weights == ((240, 1.0), (60, 0.5))
    assert Counter(tokenizer.src_pieces("<bt> a"))["<bt>"] == 1


@pytest.mark.parametrize("weight", [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0])
def test_each_pair_is_drawn_as_often_as_its_corpus_weight(weight):
    spans = ((30, weight), (20, 1.0))
    epochs = 300
    counts, fractions = Counter(), set()
    for epoch in range(epochs):
        chosen = batching.epoch_pairs(spans, seed=4, epoch=epoch)
        if chosen is None:
            assert weight == 1.0
            return
        torch.manual_seed(epoch)  # the global generator plays no part
        assert torch.equal(chosen, batching.epoch_pairs(spans, seed=4, epoch=epoch))
        counts.update(chosen.tolist())
        extra = Counter(i for i in chosen.tolist() if i < 30)
        fractions.add(frozenset(i for i in range(30) if extra[i] > int(weight)))
    assert all(counts[i] == epochs for i in range(30, 50))  # the other corpus: once each
    for i in range(30):  # each pair: int(weight) passes, plus the fraction drawn anew
        assert counts[i] / epochs == pytest.approx(weight, abs=0.1)
    if weight % 1:
        assert len(fractions) > epochs // 2  # a new random part, not the same one each epoch


def test_a_list_of_one_corpus_keeps_its_weight(make_config):
    cfg = make_config("data.train=[{name: train, weight: 2}]")
    prepare.run(cfg)
    split = store.load_split(cfg.run_dir, "train")
    drawn = Counter(torch.cat(batching.epoch_batches(split, 300, seed=1, epoch=0)).tolist())
    assert set(drawn.values()) == {2}
    assert len(drawn) == len(split)


def test_a_weighted_epoch_batches_only_drawn_pairs(make_config, corpus_dir):
    cfg = two_corpora(make_config, corpus_dir, weight=2.0)
    prepare.run(cfg)
    split = store.load_split(cfg.run_dir, "train")
    batches = batching.epoch_batches(split, 300, seed=3, epoch=1)
    drawn = Counter(torch.cat(batches).tolist())
    assert all(drawn[i] == 1 for i in range(240))
    assert all(drawn[i] == 2 for i in range(240, 300))
    assert [b.tolist() for b in batching.epoch_batches(split, 300, 3, 1)] == [
        b.tolist() for b in batches
    ]


# ----------------------------------------------------------------------------- bad input


def refused(cfg) -> str:
    """The one-line error of a prepare that must fail; it leaves no cache that looks
    complete, no temp file, and where there was no cache, nothing at all."""
    directory = store.cache_dir(cfg.run_dir)
    existed = directory.exists()
    with pytest.raises(DataError) as e:
        prepare.run(cfg)
    assert "\n" not in str(e.value)
    assert not (directory / "meta.json").exists()
    assert not [p for p in directory.glob("*") if p.name.endswith(".tmp")]
    assert gc.isenabled()  # streaming turned the collector off, and back on
    if not existed:
        assert not directory.exists()
    return str(e.value)


def test_a_line_count_mismatch_is_found_while_streaming(make_config, corpus_dir):
    cfg = make_config()
    prepare.run(cfg)
    with (corpus_dir / "train.de").open("a", encoding="utf-8") as f:
        f.write("eine Zeile mehr\n")
    message = refused(make_config("data.max_len=90"))
    assert (
        f"{corpus_dir / 'train.en'} has 240 lines but {corpus_dir / 'train.de'} has 241" in message
    )


def test_a_corpus_that_yields_no_pairs_is_refused(make_config, corpus_dir):
    write_pairs(corpus_dir, "extra", [("", "x"), ("y", "")])
    cfg = make_config("data.train=[{name: train}, {name: extra}]")
    assert "extra.{en,de}: no sentence pairs (all 2 pairs have an empty side)" in refused(cfg)


def test_bad_weights_and_tags_are_config_errors(make_config):
    cases = {
        "data.train=[{name: train, weight: -1}]": "data.train.0.weight: must be a number >= 0",
        "data.train=[{name: train, weight: .inf}]": "data.train.0.weight: must be a number >= 0",
        "data.train=[{name: a}]\0data.train.4.weight=2": "data.train has no item 4",
        "data.train=[{name: a, tag: <x>}, {name: b, tag: <x>}]": "already data.train.0.tag",
        "data.train=[{name: a, tag: </s>}]": "special piece",
        "data.train=[{name: a, tag: 'a b'}]": "without spaces",
        "data.train=[]": "names no corpus",
        "data.train=[{name: a, weight: 0}]": "nothing to train on",
    }
    for overrides, expected in cases.items():
        message = error_of(make_config, *overrides.split("\0"), error=ConfigError)
        assert expected in message, overrides


def test_a_tag_the_text_contains_is_refused_naming_its_line(make_config, corpus_dir):
    cfg = two_corpora(make_config, corpus_dir, tag="<zz>")
    path = corpus_dir / "extra.de"
    lines = path.read_text("utf-8").splitlines()
    lines[41] = "ein <zz> im Text"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    message = refused(cfg)
    assert message.startswith(f"{path}:42: contains <zz>, the tag of data.train.1.tag")


def test_a_tag_that_normalisation_makes_is_refused(make_config, corpus_dir):
    """Full-width brackets are not the tag's text, but NFKC makes them the tag's piece."""
    cfg = two_corpora(make_config, corpus_dir)
    path = corpus_dir / "train.en"
    lines = path.read_text("utf-8").splitlines()
    lines[100] = "a \uff1cbt\uff1e in the text"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    message = refused(cfg)
    assert "a \uff1cbt\uff1e in the text" in message
    assert "reads as <bt>, the tag of data.train.1.tag" in message


def test_a_borrowed_tokenizer_must_know_the_tag(make_config, corpus_dir, base_ckpt):
    cfg = two_corpora(make_config, corpus_dir)
    message = refused_with(cfg, base_ckpt)
    assert message.startswith(
        f"data.train.1.tag: <bt> is not one piece of the tokenizer of {base_ckpt}"
    )


def refused_with(cfg, tokenizer_from) -> str:
    with pytest.raises(DataError) as e:
        prepare.run(cfg, tokenizer_from=tokenizer_from)
    return str(e.value)


def test_a_refused_config_leaves_no_old_cache_that_passes_for_its(make_config, corpus_dir):
    """train must not take the cache of the last config for this one, which was refused."""
    cfg = make_config()
    prepare.run(cfg)
    write_pairs(corpus_dir, "extra", [("", "x")])
    message = refused(make_config("data.train=[{name: extra}]"))
    assert "extra.{en,de}: no sentence pairs" in message
    with pytest.raises(DataError, match="no prepared data"):
        store.load_split(cfg.run_dir, "train")


def test_duplicates_are_looked_for_within_each_corpus(make_config, corpus_dir):
    two_corpora(make_config, corpus_dir)  # writes extra: 60 of train's pairs, reversed
    cfg = make_config("data.train=[{name: train}, {name: extra, weight: 0.5}]")
    meta = prepare.run(cfg)
    first, extra = meta["splits"]["train"]["corpora"]
    assert extra["kept"] == 60  # its pairs are also in train, and stay: its weight is its own
    assert first["dropped"]["duplicate"] == extra["dropped"]["duplicate"] == 0


def test_the_reservoir_keeps_every_item_with_the_same_chance():
    """5 of 50 items offered in lists of 7, over 2,000 seeds: each item is kept
    Binomial(2000, 0.1) times, mean 200 and sd 13.4; six sd either side is the bound."""
    counts = Counter()
    for seed in range(2000):
        reservoir = stream.Reservoir(5, seed)
        for start in range(0, 50, 7):
            reservoir.offer(list(range(start, min(50, start + 7))))
        assert len(set(reservoir.items)) == 5
        counts.update(reservoir.items)
    assert set(counts) == set(range(50))
    assert all(120 <= n <= 280 for n in counts.values()), counts
    few = stream.Reservoir(100, seed=1)
    few.offer(list(range(30)))
    few.offer(list(range(30, 60)))
    assert few.items == list(range(60))  # no more than its size: all of them, in order
