"""Reading parallel text: alignment is never lost, and every bad input names file and line."""

from __future__ import annotations

import functools
import gzip
import json
import tempfile
from pathlib import Path

import pytest
from helpers import error_of
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_cli.core.config import CorpusConfig, DataConfig
from transformer_cli.core.errors import DataError
from transformer_cli.data import corpus

error_of = functools.partial(error_of, error=DataError)  # their one-line message


def lines_of(path: Path) -> list[str]:
    """One file's stripped lines, read as both sides of a corpus."""
    return [s for s, _ in corpus.read_text_files(path, path)]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- text files

# a side of pair i is "<i> <word>" or empty/whitespace, so any misalignment shows
side = st.one_of(st.just(""), st.just("  "), st.just("\t"), st.sampled_from(["a", "b c", "Ü ß"]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(side, side), max_size=30))
def test_pairs_stream_aligned_and_stripped_with_empty_sides_kept(sides):
    src = [f"{i} {s}" if s.strip() else s for i, (s, _) in enumerate(sides)]
    tgt = [f"{i} {t}" if t.strip() else t for i, (_, t) in enumerate(sides)]
    with tempfile.TemporaryDirectory() as d:
        pairs = list(
            corpus.read_text_files(
                write_lines(Path(d, "x.en"), src), write_lines(Path(d, "x.de"), tgt)
            )
        )
    assert pairs == [(s.strip(), t.strip()) for s, t in zip(src, tgt, strict=True)]


def test_line_count_mismatch_names_both_files_and_counts(tmp_path):
    a = write_lines(tmp_path / "train.en", ["x"] * 5)
    b = write_lines(tmp_path / "train.de", ["y"] * 4)
    message = error_of(lambda: list(corpus.read_text_files(a, b)))
    assert str(a) in message
    assert str(b) in message
    assert "5" in message
    assert "4" in message


@settings(max_examples=30, deadline=None)
@given(
    lines=st.lists(
        st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\n\r"), min_size=1),
        min_size=1,
        max_size=8,
    ),
    data=st.data(),
)
def test_invalid_utf8_reports_file_line_and_column(lines, data):
    row = data.draw(st.integers(0, len(lines) - 1))
    encoded = [line.encode("utf-8") for line in lines]
    chars = data.draw(st.integers(0, len(lines[row])))  # at a character boundary
    column = len(lines[row][:chars].encode("utf-8"))  # columns count bytes
    bad = data.draw(st.sampled_from([b"\xff", b"\xc3(", b"\x80"]))
    encoded[row] = encoded[row][:column] + bad + encoded[row][column:]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d, "train.de")
        path.write_bytes(b"\n".join(encoded) + b"\n")
        message = error_of(lambda: lines_of(path))
    assert message.startswith(f"{path}:{row + 1}: invalid UTF-8")
    assert f"column {column + 1})" in message


def test_gzip_plain_and_crlf_read_the_same(tmp_path):
    lines = ["Der Hund schläft.", "Heute liest die Frau ein Buch."]
    plain = write_lines(tmp_path / "a.de", lines)
    packed = tmp_path / "b.de.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    crlf = tmp_path / "c.de"
    crlf.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode())  # BOM, CRLF, no final newline

    assert lines_of(plain) == lines_of(packed) == lines_of(crlf) == lines


def test_corrupt_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "train.en.gz"
    path.write_bytes(b"not gzip at all")
    assert error_of(lambda: lines_of(path)).startswith(f"{path}: not a valid gzip file")


def read(data: DataConfig, role: str = "train") -> list[tuple[str, str]]:
    return [pair for source in corpus.corpora(data, role) for pair in corpus.read_pairs(source)]


def test_missing_files_are_named(tmp_path):
    write_lines(tmp_path / "train.en", ["a"])
    data = DataConfig(source="files", dir=str(tmp_path))
    assert f"{tmp_path / 'train.de'}: file not found" in error_of(read, data)
    data = DataConfig(source="files", dir=str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in error_of(read, data)
    data = DataConfig(source="toy", dir=str(tmp_path / "nope"))
    assert "python -m transformer_cli.data.toy" in error_of(read, data)


def test_gz_is_found_when_the_plain_file_is_absent(tmp_path):
    (tmp_path / "val.en.gz").write_bytes(gzip.compress(b"one\ntwo\n"))
    write_lines(tmp_path / "val.de", ["eins", "zwei"])
    data = DataConfig(source="files", dir=str(tmp_path), valid="val")
    assert read(data, "valid") == [("one", "eins"), ("two", "zwei")]


def test_each_corpus_of_a_list_reads_its_own_dir_and_format(tmp_path):
    (tmp_path / "a").mkdir()
    write_lines(tmp_path / "a" / "web.en", ["x"])
    write_lines(tmp_path / "a" / "web.de", ["y"])
    write_lines(tmp_path / "bt.tsv", ["de\ten", "z\tw"])
    listed = (
        CorpusConfig(name="web", dir=str(tmp_path / "a")),
        CorpusConfig(name="bt", format="tsv", weight=0.5, tag="<bt>"),
    )
    data = DataConfig(source="files", dir=str(tmp_path), train=listed)
    web, bt = corpus.corpora(data, "train")
    assert (web.weight, web.tag, bt.weight, bt.tag) == (1.0, "", 0.5, "<bt>")
    assert read(data) == [("x", "y"), ("w", "z")]
    assert corpus.split_name(data, "train") == "web+bt"


# ----------------------------------------------------------------------------- tsv / jsonl


def test_jsonl_nested_fields_with_datasets(tmp_path):
    rows = [{"translation": {"en": f"sentence {i}", "de": f"Satz {i}"}, "id": i} for i in range(5)]
    rows[2]["translation"]["de"] = "  "  # an empty side drops the pair
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    data = DataConfig(
        source="files",
        dir=str(tmp_path),
        format="jsonl",
        src_field="translation.en",
        tgt_field="translation.de",
    )
    pairs = read(data)
    assert pairs[2] == ("sentence 2", "")  # an empty side: the caller drops the pair
    del pairs[2]
    assert pairs == [(f"sentence {i}", f"Satz {i}") for i in (0, 1, 3, 4)]


def test_jsonl_missing_field_names_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    # a blank line before the bad row: the reported line must still be the file's line
    path.write_text('{"en": "a", "de": "b"}\n\n{"en": "c", "de": "d"}\n{"en": "e"}\n', "utf-8")
    message = error_of(lambda: list(corpus.read_jsonl(path, "en", "de")))
    assert message.startswith(f"{path}:4: field 'de' is missing")
    message = error_of(lambda: list(corpus.read_jsonl(path, "en", "fr")))
    assert message.startswith(f"{path}:1: no field 'fr'")
    assert "en, de" in message


def test_jsonl_broken_json_names_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"en": "a", "de": "b"}\n{"en": "c", "de": \n', "utf-8")
    assert error_of(lambda: list(corpus.read_jsonl(path, "en", "de"))).startswith(f"{path}:2:")


def test_tsv_keeps_quotes_and_na_as_text(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text('de\ten\n"Hallo\tNA\n1\tnull\nja\t"yes" she said\n', "utf-8")
    data = DataConfig(source="files", dir=str(tmp_path), format="tsv")
    # src_lang en is the en column
    assert read(data) == [("NA", '"Hallo'), ("null", "1"), ('"yes" she said', "ja")]


def test_tsv_rows_must_have_every_field(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("en\tde\na\tb\n\nc\n", "utf-8")
    message = error_of(lambda: list(corpus.read_tsv(path, "en", "de")))
    assert message.startswith(f"{path}:4: expected 2 tab-separated fields")


def test_table_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"en\tde\na\tb\nc\t\xfe\n")
    assert error_of(lambda: list(corpus.read_tsv(path, "en", "de"))).startswith(
        f"{path}:3: invalid UTF-8"
    )


# ----------------------------------------------------------------------------- hub


def test_hub_rows_go_through_the_same_extraction(monkeypatch):
    datasets = pytest.importorskip("datasets")
    rows = [{"en": "a b", "de": "c d"}, {"en": "two\nlines", "de": "zwei"}, {"en": "x", "de": None}]
    calls = []

    def fake_load(name, config=None, split=None, streaming=False):
        calls.append((name, config, split, streaming))
        return datasets.Dataset.from_list(rows[: 2 if split == "train" else 3])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    data = DataConfig(source="hub", hub_name="someone/corpus", train="train", test="test")
    assert read(data) == [("a b", "c d"), ("two lines", "zwei")]
    assert calls == [("someone/corpus", None, "train", True)]  # streamed, never downloaded whole
    message = error_of(read, data, "test")
    assert message == "someone/corpus[test] row 3: field 'de' is missing"


def test_hub_load_failure_is_a_data_error(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*_args, **_kwargs):
        raise ConnectionError("Couldn't reach 'x/y' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    data = DataConfig(source="hub", hub_name="x/y", hub_config="de-en", valid="validation")
    message = error_of(read, data, "valid")
    assert message.startswith("cannot load x/y/de-en[validation] from the Hugging Face hub")
