"""Reading parallel text as a stream: the toy corpus, local files (text, tsv, jsonl) and
the HF hub.

A split is one or more `Corpus`es. Each is read by `read_pairs` (or `read_chunks`, a
list of pairs at a time), which yields its (source, target) lines stripped, empty sides
included: the caller drops pairs, never one side, so the two sides can never drift apart.
Nothing here holds more than a block of a file's lines. Every problem a user can cause is
a `DataError` naming the file and, where there is one, the line.

Text, tsv and jsonl are parsed here line by line, so an error can point at its line and
byte; hub datasets go through `datasets`' streaming mode, imported only here and only
when needed, so a training machine may lack it.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformer_cli.core.config import CorpusConfig, DataConfig
from transformer_cli.core.errors import DataError

_BOM = b"\xef\xbb\xbf"
Pair = tuple[str, str]


@dataclass(frozen=True)
class Corpus:
    """One corpus of a split, resolved from the config: where it is and how to read it."""

    name: str  # the file name's stem in dir, or the hub dataset's split
    source: str  # toy | files | hub
    dir: str
    format: str  # text | tsv | jsonl
    src_lang: str
    tgt_lang: str
    src_field: str  # a tsv/jsonl/hub field; dotted = nested
    tgt_field: str
    hub_name: str = ""
    hub_config: str = ""
    weight: float = 1.0  # expected passes per epoch
    tag: str = ""  # the piece put before each source sentence ("" = none)


def corpora(data: DataConfig, role: str) -> tuple[Corpus, ...]:
    """The corpora of one split ('train', 'valid' or 'test'), in the config's order."""
    if role == "train" and isinstance(data.train, tuple):
        return tuple(_resolve(data, c) for c in data.train)
    return (_resolve(data, CorpusConfig(name=split_name(data, role))),)


def _resolve(data: DataConfig, c: CorpusConfig) -> Corpus:
    return Corpus(
        name=c.name,
        source=c.source or data.source,
        dir=c.dir or data.dir,
        format=c.format or data.format,
        src_lang=data.src_lang,
        tgt_lang=data.tgt_lang,
        src_field=c.src_field or data.src_field or data.src_lang,
        tgt_field=c.tgt_field or data.tgt_field or data.tgt_lang,
        hub_name=c.hub_name or data.hub_name,
        hub_config=c.hub_config or data.hub_config,
        weight=c.weight,
        tag=c.tag,
    )


def split_name(data: DataConfig, role: str) -> str:
    """The configured name of a role's split; a list of training corpora joins theirs."""
    name = getattr(data, role)
    return "+".join(c.name for c in name) if isinstance(name, tuple) else name


def input_paths(corpus: Corpus) -> list[Path]:
    """The local files a corpus is read from (none for the hub); DataError if missing."""
    if corpus.source == "hub":
        return []
    directory = Path(corpus.dir)
    if not directory.is_dir():
        hint = _toy_hint(corpus) or " (set data.dir in the config, or --set data.dir=PATH)"
        raise DataError(f"data directory not found: {directory}{hint}")
    if corpus.format != "text":
        path = directory / f"{corpus.name}.{corpus.format}"
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        return [path]
    return [_text_path(directory / f"{corpus.name}.{lang}", corpus) for lang in _langs(corpus)]


def _langs(corpus: Corpus) -> tuple[str, str]:
    return corpus.src_lang, corpus.tgt_lang


def _text_path(path: Path, corpus: Corpus) -> Path:
    if path.is_file():
        return path
    gz = path.with_name(path.name + ".gz")
    if gz.is_file():
        return gz
    raise DataError(f"{path}: file not found (nor {gz.name}){_toy_hint(corpus)}")


def _toy_hint(corpus: Corpus) -> str:
    if corpus.source != "toy":
        return ""
    return (
        " (the toy corpus ships in data/toy of the tfx repository: run tfx from there, "
        "or regenerate it with `python -m transformer_cli.data.toy data/toy`)"
    )


def origin(corpus: Corpus) -> str:
    """Where a corpus's pairs come from, for messages: data/x/train.{en,de}, a file, a hub split."""
    if corpus.source == "hub":
        config = f"/{corpus.hub_config}" if corpus.hub_config else ""
        return f"{corpus.hub_name}{config}[{corpus.name}]"
    paths = input_paths(corpus)
    return _common_name(*paths) if len(paths) == 2 else str(paths[0])


def read_pairs(corpus: Corpus) -> Iterator[Pair]:
    """Every (source, target) pair of a corpus in order, stripped; empty sides included."""
    if corpus.source == "hub":
        return read_hub(corpus)
    if corpus.format == "text":
        return read_text_files(*input_paths(corpus))
    (path,) = input_paths(corpus)
    reader = read_tsv if corpus.format == "tsv" else read_jsonl
    return reader(path, corpus.src_field, corpus.tgt_field)


# ----------------------------------------------------------------------------- plain text


@contextlib.contextmanager
def _lines(path: Path) -> Iterator[Iterator[bytes]]:
    """A file's raw lines (gunzipped if it ends in .gz); DataError if missing or corrupt."""
    try:
        f = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        yield _checked(f, path)


def _checked(f: Iterable[bytes], path: Path) -> Iterator[bytes]:
    try:
        yield from f  # binary lines end at b"\n" only, as every other tool counts them
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def decode_line(raw: bytes, path: Path | str, number: int) -> str:
    """One line as text (a BOM on line 1 is ignored); the error names file, line and column."""
    if number == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}:{number}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
        ) from None


def _decoded(block: list[bytes], path: Path, before: int) -> list[str]:
    """Raw lines `before + 1 ...` of a file, decoded in one call and stripped."""
    try:
        text = b"".join(block).decode("utf-8")
    except UnicodeDecodeError:
        for i, raw in enumerate(block, start=before + 1):
            decode_line(raw, path, i)  # raises, naming the line
        raise
    if before == 0 and text.startswith("\ufeff"):
        text = text[1:]
    return list(map(str.strip, text.split("\n")[: len(block)]))


def read_text_files(src_path: Path, tgt_path: Path) -> Iterator[Pair]:
    """Two line-aligned text files, stripped; their line counts must match exactly, and a
    final newline is optional."""
    for chunk in text_chunks(src_path, tgt_path, 4096):
        yield from chunk


def text_chunks(src_path: Path, tgt_path: Path, size: int) -> Iterator[list[Pair]]:
    """The pairs of two line-aligned text files, `size` at a time: lists built in C, not a
    pair at a time (what makes reading cheap beside SentencePiece)."""
    with _lines(src_path) as src, _lines(tgt_path) as tgt:
        count = 0
        while True:
            a, b = list(itertools.islice(src, size)), list(itertools.islice(tgt, size))
            if len(a) != len(b):
                rest = sum(1 for _ in src) if len(a) > len(b) else sum(1 for _ in tgt)
                counts = (len(a) + rest, len(b)) if len(a) > len(b) else (len(a), len(b) + rest)
                _mismatch(src_path, count + counts[0], tgt_path, count + counts[1])
            if not a:
                return
            yield list(zip(_decoded(a, src_path, count), _decoded(b, tgt_path, count), strict=True))
            count += len(a)


def read_chunks(corpus: Corpus, size: int) -> Iterator[list[Pair]]:
    """`read_pairs`, `size` pairs at a time (the last chunk shorter)."""
    if corpus.source != "hub" and corpus.format == "text":
        src_path, tgt_path = input_paths(corpus)
        return text_chunks(src_path, tgt_path, size)
    return _chunks(read_pairs(corpus), size)


def _chunks(pairs: Iterator[Pair], size: int) -> Iterator[list[Pair]]:
    while chunk := list(itertools.islice(pairs, size)):
        yield chunk


def _mismatch(src_path: Path, src_count: int, tgt_path: Path, tgt_count: int) -> None:
    raise DataError(
        f"{src_path} has {src_count} lines but {tgt_path} has {tgt_count}; "
        "the two sides of a split must be line-aligned"
    )


def _common_name(a: Path, b: Path) -> str:
    """data/x/train.{en,de} for data/x/train.en + data/x/train.de."""
    sa, sb = str(a), str(b)
    n = 0
    while n < min(len(sa), len(sb)) and sa[n] == sb[n]:
        n += 1
    n = sa.rfind(".", 0, n) + 1 if "." in sa[:n] else n
    return f"{sa[:n]}{{{sa[n:]},{sb[n:]}}}" if n else f"{sa} + {sb}"


# ----------------------------------------------------------------------------- tsv / jsonl


def read_tsv(path: Path, src_field: str, tgt_field: str) -> Iterator[Pair]:
    """A tsv file: a header row of field names, then rows of as many tab-separated fields.

    Quotes and words such as NA are text, never syntax or missing values; blank lines
    are skipped.
    """
    header: list[str] = []
    columns = (0, 0)
    with _lines(path) as lines:
        for number, raw in enumerate(lines, start=1):
            line = decode_line(raw, path, number).rstrip("\r\n")
            if number == 1:
                header = line.split("\t")
                columns = _tsv_columns(header, (src_field, tgt_field), path)
                continue
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != len(header):
                raise DataError(
                    f"{path}:{number}: expected {len(header)} tab-separated fields "
                    f"({', '.join(header)}), found {len(fields)}"
                )
            yield fields[columns[0]].strip(), fields[columns[1]].strip()
    if not header:
        raise DataError(f"{path}:1: empty header (a tsv file starts with a row of field names)")


def _tsv_columns(header: list[str], fields: tuple[str, str], path: Path) -> tuple[int, int]:
    if header == [""]:
        raise DataError(f"{path}:1: empty header (a tsv file starts with a row of field names)")
    for field in fields:
        if field not in header:
            raise DataError(f"{path}:1: no field '{field}' (fields: {', '.join(header)})")
    return header.index(fields[0]), header.index(fields[1])


def read_jsonl(path: Path, src_field: str, tgt_field: str) -> Iterator[Pair]:
    """A jsonl file: one JSON object a line; a dotted field names a nested one."""
    with _lines(path) as lines:
        first = True
        for number, raw in enumerate(lines, start=1):
            line = decode_line(raw, path, number)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path}:{number}: not valid JSON ({e.args[0]})") from None
            if not isinstance(row, dict):
                kind = type(row).__name__
                raise DataError(f"{path}:{number}: expected a JSON object, got {kind}")
            yield row_pair(row, (src_field, tgt_field), f"{path}:{number}", first)
            first = False


def row_pair(row: dict, fields: tuple[str, str], where: str, first: bool) -> Pair:
    """The two text fields of one row; a field missing from the first row is a wrong name."""
    out = []
    for field in fields:
        value = _field(row, field)
        if value is _ABSENT and first:
            shown = ", ".join(_flat_keys(row)) or "none"
            raise DataError(f"{where}: no field '{field}' (fields: {shown})")
        if value is _ABSENT or value is None:
            raise DataError(f"{where}: field '{field}' is missing")
        if not isinstance(value, str):
            kind = "a mapping" if isinstance(value, dict) else type(value).__name__
            raise DataError(f"{where}: field '{field}' is {kind}, expected text")
        # a newline inside a field would split one sentence over two cache lines
        out.append(" ".join(value.splitlines()).strip())
    return out[0], out[1]


_ABSENT = object()


def _field(row: dict, field: str) -> Any:
    if field in row:
        return row[field]
    node: Any = row
    for part in field.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _flat_keys(row: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in row.items():
        if isinstance(value, dict) and value:
            keys.extend(_flat_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


# ----------------------------------------------------------------------------- hub


def read_hub(corpus: Corpus) -> Iterator[Pair]:
    """A Hugging Face hub dataset split, streamed; rows are read exactly as jsonl rows."""
    datasets = _import_datasets()
    where = origin(corpus)
    fields = (corpus.src_field, corpus.tgt_field)
    rows = _hub_rows(datasets, corpus, where)
    for number, row in enumerate(rows, start=1):
        yield row_pair(row, fields, f"{where} row {number}", number == 1)


def _hub_rows(datasets: Any, corpus: Corpus, where: str) -> Iterator[dict]:
    """The rows as they stream in; a failure to load or to fetch more is a DataError."""
    try:
        stream = datasets.load_dataset(
            corpus.hub_name, corpus.hub_config or None, split=corpus.name, streaming=True
        )
        yield from stream
    except Exception as e:  # offline, unknown name, unknown split, a dropped connection ...
        raise DataError(
            f"cannot load {where} from the Hugging Face hub ({_first_line(e)})"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(
            "reading a hub dataset needs the `datasets` package (pip install datasets)"
        ) from None
    return datasets
