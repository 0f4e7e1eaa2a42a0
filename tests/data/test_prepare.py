"""`tfx prepare`: a complete, reusable cache, honest filtering, and one-line errors."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from helpers import cli, error_of, toy_splits, write_splits
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_cli.core.checkpoint import load_state
from transformer_cli.core.config import to_dict
from transformer_cli.core.config_file import load_config
from transformer_cli.core.errors import ConfigError, DataError
from transformer_cli.core.specials import UNK_ID
from transformer_cli.data import clean, prepare, store, toy
from transformer_cli.data.store import SPLITS
from transformer_cli.data.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[2]
MULTI30K = Path(__file__).resolve().parents[2].parent / "shared/data/multi30k"
META_KEYS = {
    "format",
    "fingerprint",
    "created",
    "seconds",
    "inputs",
    "tokenizer",
    "special_ids",
    "splits",
    "files",
}


def stamps(run_dir) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in store.cache_dir(run_dir).iterdir()}


def test_prepare_writes_a_complete_cache(make_config, toy_pairs):
    cfg = make_config()
    result = prepare.run(cfg)
    assert result["reused"] is False
    meta = store.load_meta(cfg.run_dir)
    assert set(meta) == META_KEYS
    assert meta["fingerprint"] == result["fingerprint"]
    assert set(stamps(cfg.run_dir)) == {"meta.json", *meta["files"]}
    assert meta["tokenizer"]["src_vocab_size"] == meta["tokenizer"]["tgt_vocab_size"] == 100
    tokenizer = Tokenizer.load(cfg.run_dir)
    expected = toy_splits(toy_pairs)
    for role in SPLITS:
        stats = meta["splits"][role]
        assert (
            stats["kept"] + sum(stats["dropped"].values()) == stats["read"] == len(expected[role])
        )
        assert stats["src_len"]["p50"] <= stats["src_len"]["p99"] <= stats["src_len"]["max"]
    for role in ("valid", "test"):  # never filtered; ids decode back to the raw references
        split = store.load_split(cfg.run_dir, role)
        assert len(split) == len(expected[role])
        assert store.load_text(cfg.run_dir, role, "src") == [en for en, _ in expected[role]]
        refs = store.load_text(cfg.run_dir, role, "tgt")
        assert refs == [de for _, de in expected[role]]
        assert tokenizer.decode_tgt([split.tgt_ids(i) for i in range(len(split))]) == refs
    assert load_config(Path(cfg.run_dir) / "config.yaml") == cfg


def test_train_filter_applies_to_train_only(make_config):
    first = prepare.run(make_config())
    median = first["splits"]["train"]["src_len"]["p50"]
    cfg = make_config(f"data.max_len={median}", "data.max_ratio=1.25")
    meta = prepare.run(cfg)
    train = store.load_split(cfg.run_dir, "train")
    src, tgt = train.src_lengths.tolist(), train.tgt_lengths.tolist()
    assert len(src) == meta["splits"]["train"]["kept"] > 0
    assert all(0 < s <= median and 0 < t <= median for s, t in zip(src, tgt, strict=True))
    assert all(max(s, t) <= 1.25 * min(s, t) for s, t in zip(src, tgt, strict=True))
    dropped = meta["splits"]["train"]["dropped"]
    assert dropped["too_long"] > 0
    assert dropped["ratio"] > 0
    for role in ("valid", "test"):
        stats = meta["splits"][role]
        assert stats["kept"] == stats["read"]
        assert stats["src_len"]["max"] > median


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=40),
    max_len=st.integers(1, 30),
    max_ratio=st.sampled_from([0.0, 1.0, 1.5, 3.0]),
    src_extra=st.sampled_from([0, 1]),
)
def test_filter_pairs_keeps_exactly_the_pairs_within_limits(lengths, max_len, max_ratio, src_extra):
    """`src_extra` 1 is a corpus tag to come: it counts toward max_len on the source side,
    but not toward empty (a source of no pieces stays empty) or the ratio."""
    src = [[5] * s for s, _ in lengths]
    tgt = [[5] * t for _, t in lengths]
    keep, dropped = clean.filter_lengths(src, tgt, max_len, max_ratio, src_extra=src_extra)

    def ok(s: int, t: int) -> bool:  # the ratio on the untagged lengths
        ratio_ok = max_ratio == 0 or max(s, t) <= max_ratio * min(s, t)
        return 0 < s <= max_len - src_extra and 0 < t <= max_len and ratio_ok

    assert keep == [ok(s, t) for s, t in lengths]
    assert sum(keep) + sum(dropped.values()) == len(lengths)
    assert dropped["empty"] == sum(1 for s, t in lengths if s == 0 or t == 0)


@given(st.lists(st.integers(0, 500), min_size=1, max_size=200))
def test_percentiles_are_ordered_ranks(lengths):
    p = clean.percentiles(Counter(lengths))
    assert p["p50"] <= p["p90"] <= p["p99"] <= p["max"] == max(lengths)
    assert sum(1 for n in lengths if n <= p["p50"]) >= len(lengths) / 2
    assert all(v in lengths for v in p.values())


# ----------------------------------------------------------------------------- reuse


def test_second_run_reuses_the_cache(make_config, capsys):
    cfg = make_config()
    prepare.run(cfg)
    before = stamps(cfg.run_dir)
    capsys.readouterr()
    assert prepare.run(cfg)["reused"] is True
    assert "cache up to date" in capsys.readouterr().out
    assert stamps(cfg.run_dir) == before
    # model and training options do not touch the data
    assert prepare.run(make_config("model.d_model=64", "model.heads=2", "train.lr=1e-3"))["reused"]
    assert stamps(cfg.run_dir) == before


def test_changed_input_or_config_rebuilds(make_config, corpus_dir):
    cfg = make_config()
    fingerprints = {prepare.run(cfg)["fingerprint"]}
    path = corpus_dir / "train.de"
    lines = path.read_text("utf-8").splitlines()
    path.write_text("\n".join(["Ein ganz neuer Satz.", *lines[1:]]) + "\n", "utf-8")
    for overrides in ([], ["tokenizer.vocab_size=90"], ["data.max_ratio=2.5"]):
        result = prepare.run(make_config(*overrides))
        assert result["reused"] is False
        fingerprints.add(result["fingerprint"])
    assert len(fingerprints) == 4
    assert store.load_meta(cfg.run_dir)["tokenizer"]["src_vocab_size"] == 100
    assert "Ein ganz neuer Satz." in Tokenizer.load(cfg.run_dir).decode_tgt(
        [store.load_split(cfg.run_dir, "train").tgt_ids(0)]
    )


def test_a_missing_cache_file_forces_a_rebuild(make_config):
    cfg = make_config()
    prepare.run(cfg)
    (store.cache_dir(cfg.run_dir) / "valid.src.ids").unlink()
    assert prepare.run(cfg)["reused"] is False
    assert len(store.load_split(cfg.run_dir, "valid")) == 30


def test_switching_to_separate_vocabularies_leaves_no_joint_model(make_config):
    prepare.run(make_config())
    cfg = make_config("tokenizer.joint=false", "model.share_embeddings=false")
    prepare.run(cfg)
    names = set(stamps(cfg.run_dir))
    assert "spm.model" not in names
    assert {"spm.src.model", "spm.tgt.model"} <= names
    assert Tokenizer.load(cfg.run_dir).joint is False


def test_interrupted_write_leaves_no_meta(make_config, monkeypatch):
    cfg = make_config()
    prepare.run(cfg)  # a complete cache, then an interrupted rebuild over it
    real = store.SplitWriter.append
    calls = []

    def fail_on_second(self, src, tgt):
        calls.append(self.files)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real(self, src, tgt)

    monkeypatch.setattr(store.SplitWriter, "append", fail_on_second)
    with pytest.raises(DataError, match="cannot write the cache .No space left on device"):
        prepare.run(make_config("tokenizer.vocab_size=90"))
    with pytest.raises(DataError, match="no prepared data"):
        store.load_meta(cfg.run_dir)
    assert not [p for p in stamps(cfg.run_dir) if p.endswith(".tmp")]
    monkeypatch.undo()
    assert prepare.run(cfg)["reused"] is False  # not mistaken for the old, complete cache
    assert store.load_meta(cfg.run_dir)["tokenizer"]["src_vocab_size"] == 100


# ----------------------------------------------------------------------------- errors


def data_error(cfg) -> str:
    with pytest.raises(DataError) as e:
        prepare.run(cfg)
    message = str(e.value)
    assert "\n" not in message
    assert not (store.cache_dir(cfg.run_dir) / "meta.json").exists()
    return message


def test_line_count_mismatch(make_config, corpus_dir):
    path = corpus_dir / "test.de"
    path.write_text("".join(path.read_text("utf-8").splitlines(True)[:-2]), "utf-8")
    message = data_error(make_config())
    assert f"{corpus_dir / 'test.en'} has 30 lines but {path} has 28" in message


def test_invalid_utf8(make_config, corpus_dir):
    path = corpus_dir / "valid.de"
    lines = path.read_bytes().split(b"\n")
    lines[6] = lines[6][:4] + b"\xff" + lines[6][4:]
    path.write_bytes(b"\n".join(lines))
    assert data_error(make_config()) == f"{path}:7: invalid UTF-8 (byte 0xff at column 5)"


def test_missing_file(make_config, corpus_dir):
    (corpus_dir / "test.en").unlink()
    assert data_error(make_config()).startswith(f"{corpus_dir / 'test.en'}: file not found")


def test_empty_corpus_after_dropping_empty_pairs(make_config, corpus_dir):
    path = corpus_dir / "train.en"
    path.write_text("\n" * 240, "utf-8")
    message = data_error(make_config())
    assert "train.{en,de}: no sentence pairs" in message
    assert "240" in message


def test_nothing_left_after_filtering(make_config):
    message = data_error(make_config("data.max_len=1"))
    assert "no training pairs left" in message
    assert "data.max_len=1" in message


def test_jsonl_with_nested_fields_and_a_missing_one(tmp_path, make_config, toy_pairs):
    directory = tmp_path / "jsonl"
    directory.mkdir()
    chunks = toy_splits(toy_pairs)
    for name, pairs in chunks.items():
        rows = [{"translation": {"en": en, "de": de}} for en, de in pairs]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (directory / f"{name}.jsonl").write_text(text, "utf-8")
    fields = ["data.format=jsonl", f"data.dir={directory}"]
    cfg = make_config(*fields, "data.src_field=translation.en", "data.tgt_field=translation.de")
    meta = prepare.run(cfg)
    assert [meta["splits"][r]["kept"] for r in SPLITS] == [240, 30, 30]
    assert store.load_text(cfg.run_dir, "test", "tgt") == [de for _, de in toy_pairs[270:]]
    message = data_error(
        make_config(*fields, "data.src_field=translation.en", "data.tgt_field=translation.fr")
    )
    assert message.startswith(f"{directory / 'train.jsonl'}:1: no field 'translation.fr'")


# ----------------------------------------------------------------------------- --tokenizer-from


def shift(corpus_dir: Path) -> None:
    """Replace the corpus with the toy grammar's questions: a tokenizer trained on it differs."""
    write_splits(corpus_dir, toy_splits(toy.generate(300, seed=8, variant="questions")))


def test_tokenizer_from_encodes_with_the_checkpoints_model(make_config, corpus_dir, base_ckpt):
    shift(corpus_dir)
    cfg = make_config()
    meta = prepare.run(cfg, tokenizer_from=base_ckpt)
    theirs = Tokenizer.from_bytes(load_state(base_ckpt)["tokenizer"])
    ours = Tokenizer.load(cfg.run_dir)
    assert ours.to_bytes() == theirs.to_bytes()
    assert meta["tokenizer"]["sha256"] == theirs.fingerprint()
    assert meta["tokenizer"]["from"] == str(base_ckpt)
    valid = store.load_split(cfg.run_dir, "valid")
    src = store.load_text(cfg.run_dir, "valid", "src")
    assert [valid.src_ids(i).tolist() for i in range(len(valid))] == theirs.encode_src(src)
    trained = prepare.run(make_config(f"run_dir={cfg.run_dir}_trained"))
    assert trained["tokenizer"]["sha256"] != theirs.fingerprint()  # the test can tell them apart
    assert trained["tokenizer"]["from"] is None


def test_tokenizer_from_joins_the_fingerprint(make_config, base_ckpt):
    cfg = make_config()
    borrowed = prepare.run(cfg, tokenizer_from=base_ckpt)
    assert prepare.run(cfg, tokenizer_from=base_ckpt)["reused"] is True
    trained = prepare.run(cfg)  # same inputs and config, the tokenizer trained here
    assert trained["reused"] is False
    assert trained["fingerprint"] != borrowed["fingerprint"]
    assert prepare.run(cfg, tokenizer_from=base_ckpt)["reused"] is False


def test_the_summary_reports_the_share_of_unknown_pieces(
    make_config, corpus_dir, base_ckpt, capsys
):
    path = corpus_dir / "train.en"  # characters the checkpoint's tokenizer never saw
    lines = path.read_text("utf-8").splitlines()
    path.write_text("".join(f"{line} Ωμέγα\n" if i % 3 == 0 else f"{line}\n"
                            for i, line in enumerate(lines)), "utf-8")  # fmt: skip
    cfg = make_config()
    capsys.readouterr()
    stats = prepare.run(cfg, tokenizer_from=base_ckpt)["splits"]["train"]
    split = store.load_split(cfg.run_dir, "train")
    unk = int((split.src == UNK_ID).sum())
    assert stats["unk"] == {"src": unk, "tgt": int((split.tgt == UNK_ID).sum())}
    assert unk > 0
    assert stats["pieces"]["src"] == len(split.src)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("train"))
    assert row.split()[-1] == f"{100 * unk / len(split.src):.2f}%/0%"


def test_tokenizer_from_refuses_another_tokenizer_section(make_config, base_ckpt):
    cfg = make_config("tokenizer.vocab_size=90", "tokenizer.model_type=bpe")
    message = error_of(prepare.run, cfg, tokenizer_from=base_ckpt, error=ConfigError)
    assert message.startswith(f"--tokenizer-from {base_ckpt}: ")
    assert "tokenizer.vocab_size: 90 in the config, 100 in the checkpoint" in message
    assert "tokenizer.model_type: bpe in the config, unigram in the checkpoint" in message
    assert not store.cache_dir(cfg.run_dir).exists()


# ----------------------------------------------------------------------------- the CLI


def write_config(tmp_path, cfg) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)), "utf-8")
    return str(path)


def test_cli_prepares_and_prints_a_summary(tmp_path, make_config):
    cfg = make_config()
    result = cli("prepare", "--config", write_config(tmp_path, cfg))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].split()[:3] == ["split", "read", "kept"]
    assert "cache:" in result.stdout
    again = cli("prepare", "--config", write_config(tmp_path, cfg))
    assert again.exit_code == 0
    assert "cache up to date" in again.stdout


@pytest.mark.parametrize("breakage", ["mismatch", "utf8", "missing_dir"])
def test_cli_data_errors_are_one_line_with_exit_code_2(tmp_path, make_config, corpus_dir, breakage):
    args = []
    if breakage == "mismatch":
        (corpus_dir / "train.de").write_text("nur eine Zeile\n", "utf-8")
        expected = "has 240 lines but"
    elif breakage == "utf8":
        (corpus_dir / "valid.en").write_bytes(b"ok\n\xc3(\n" + b"x\n" * 28)
        expected = f"{corpus_dir / 'valid.en'}:2: invalid UTF-8"
    else:
        args = ["--set", f"data.dir={tmp_path / 'nowhere'}"]
        expected = "data directory not found"
    result = cli("prepare", "--config", write_config(tmp_path, make_config()), *args)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0], result.stderr
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------- Multi30k


@pytest.mark.slow
@pytest.mark.skipif(not (MULTI30K / "train.de.gz").exists(), reason="no Multi30k in ../shared")
def test_multi30k_prepares_in_under_a_minute(tmp_path):
    cfg = load_config(
        REPO / "configs/multi30k_de_en.yaml", [f"data.dir={MULTI30K}", f"run_dir={tmp_path}/run"]
    )
    started = time.perf_counter()
    meta = prepare.run(cfg)
    elapsed = time.perf_counter() - started
    assert [meta["splits"][r]["read"] for r in SPLITS] == [29_000, 1_014, 1_000]
    assert meta["splits"]["valid"]["kept"] == 1_014
    assert meta["splits"]["test"]["kept"] == 1_000
    assert meta["tokenizer"]["src_vocab_size"] == 8000
    assert elapsed < 60, f"prepare took {elapsed:.1f} s"
    refs = store.load_text(cfg.run_dir, "valid", "tgt")
    valid = store.load_split(cfg.run_dir, "valid")
    decoded = Tokenizer.load(cfg.run_dir).decode_tgt([valid.tgt_ids(i) for i in range(len(valid))])
    same = sum(d == r for d, r in zip(decoded, refs, strict=True))
    assert same >= 0.95 * len(refs)  # SentencePiece's NFKC normalisation may change a few


@pytest.mark.skipif(not (MULTI30K / "train.de.gz").exists(), reason="no Multi30k in ../shared")
def test_multi30k_gz_files_read_aligned():
    from transformer_cli.data import corpus

    data = load_config(REPO / "configs/multi30k_en_de.yaml", [f"data.dir={MULTI30K}"]).data
    (source,) = corpus.corpora(data, "valid")
    pairs = list(corpus.read_pairs(source))
    assert len(pairs) == 1_014
    assert all(s and t for s, t in pairs)
    assert pairs[0][0].startswith("A group of men")  # en is the source in en_de
