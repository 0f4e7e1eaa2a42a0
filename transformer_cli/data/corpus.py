"""Reading parallel text: the toy corpus, local files (text, tsv, jsonl) and the HF hub.

Every split comes back as a `Pairs`: aligned source/target lists with pairs that are
empty on either side already dropped together, so the two sides can never drift apart.
Every problem a user can cause is a `DataError` naming the file and, where there is
one, the line.

Plain text is read directly (faster than `datasets`, and it can point at the byte
that is not UTF-8); tsv, jsonl and hub datasets go through `datasets`, which is
imported only here and only when needed, so a training machine may lack it.
"""

from __future__ import annotations

import gzip
import json
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformer_cli.core.config import DataConfig
from transformer_cli.core.errors import DataError

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Pairs:
    """One split's aligned sentence pairs, after dropping pairs with an empty side."""

    src: list[str]
    tgt: list[str]
    read: int  # pairs in the input, before dropping
    dropped_empty: int
    origin: str  # where the pairs came from, for messages

    def __len__(self) -> int:
        return len(self.src)


def split_name(data: DataConfig, role: str) -> str:
    """The configured split name for a role ('train', 'valid' or 'test')."""
    return getattr(data, role)


def input_paths(data: DataConfig, role: str) -> list[Path]:
    """The local files one split is read from (none for the hub); DataError if missing."""
    name = split_name(data, role)
    if data.source == "hub":
        return []
    directory = Path(data.dir)
    if not directory.is_dir():
        hint = _toy_hint(data) or " (set data.dir in the config, or --set data.dir=PATH)"
        raise DataError(f"data directory not found: {directory}{hint}")
    if data.source == "files" and data.format != "text":
        path = directory / f"{name}.{data.format}"
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        return [path]
    return [
        _text_path(directory / f"{name}.{lang}", data) for lang in (data.src_lang, data.tgt_lang)
    ]


def _text_path(path: Path, data: DataConfig) -> Path:
    if path.is_file():
        return path
    gz = path.with_name(path.name + ".gz")
    if gz.is_file():
        return gz
    raise DataError(f"{path}: file not found (nor {gz.name}){_toy_hint(data)}")


def _toy_hint(data: DataConfig) -> str:
    if data.source != "toy":
        return ""
    return (
        " (the toy corpus ships in data/toy of the tfx repository: run tfx from there, "
        "or regenerate it with `python -m transformer_cli.data.toy data/toy`)"
    )


def read_split(data: DataConfig, role: str) -> Pairs:
    """Read one split ('train', 'valid' or 'test') as configured; DataError if no pairs."""
    src_field = data.src_field or data.src_lang
    tgt_field = data.tgt_field or data.tgt_lang
    if data.source == "hub":
        pairs = read_hub(
            data.hub_name, data.hub_config, split_name(data, role), src_field, tgt_field
        )
    elif data.source == "files" and data.format != "text":
        (path,) = input_paths(data, role)
        pairs = read_table(path, data.format, src_field, tgt_field)
    else:  # toy and text files: {dir}/{split}.{lang}[.gz]
        src_path, tgt_path = input_paths(data, role)
        pairs = read_text_files(src_path, tgt_path)
    if not pairs.src:
        why = f"all {pairs.read} pairs have an empty side" if pairs.read else "the input is empty"
        raise DataError(f"{pairs.origin}: no sentence pairs ({why})")
    return pairs


# ----------------------------------------------------------------------------- plain text


def read_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped if it ends in .gz; DataError if missing or corrupt."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def decode_utf8(data: bytes, path: Path | str) -> str:
    """Decode UTF-8 (a leading BOM is ignored); the error names file, line and column."""
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = e.start + skip
        line = data.count(b"\n", 0, at) + 1
        column = at - (data.rfind(b"\n", 0, at) + 1) + 1  # 1-based, in bytes
        raise DataError(
            f"{path}:{line}: invalid UTF-8 (byte 0x{data[at]:02x} at column {column})"
        ) from None


def text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (or .gz), stripped; a final newline is optional."""
    text = decode_utf8(read_bytes(path), path)
    # split("\n"), not splitlines(): the latter also breaks at \x0b, \x1c, \u2028 ...,
    # which would make this count disagree with the line numbers every other tool shows.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.strip() for line in lines]


def read_text_files(src_path: Path, tgt_path: Path) -> Pairs:
    """Two line-aligned text files; their line counts must match exactly."""
    src, tgt = text_lines(src_path), text_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
            "the two sides of a split must be line-aligned"
        )
    return drop_empty(src, tgt, origin=_common_name(src_path, tgt_path))


def _common_name(a: Path, b: Path) -> str:
    """data/x/train.{en,de} for data/x/train.en + data/x/train.de."""
    sa, sb = str(a), str(b)
    n = 0
    while n < min(len(sa), len(sb)) and sa[n] == sb[n]:
        n += 1
    n = sa.rfind(".", 0, n) + 1 if "." in sa[:n] else n
    return f"{sa[:n]}{{{sa[n:]},{sb[n:]}}}" if n else f"{sa} + {sb}"


def drop_empty(src: list[str], tgt: list[str], origin: str) -> Pairs:
    """Drop every pair with an empty (or whitespace-only) side: pairs, never one side."""
    if len(src) != len(tgt):
        raise ValueError(f"{len(src)} source vs {len(tgt)} target lines")
    keep_src, keep_tgt = [], []
    for s, t in zip(src, tgt, strict=True):
        s, t = s.strip(), t.strip()
        if s and t:
            keep_src.append(s)
            keep_tgt.append(t)
    return Pairs(keep_src, keep_tgt, len(src), len(src) - len(keep_src), origin)


# ----------------------------------------------------------------------------- tsv / jsonl


def read_table(path: Path, fmt: str, src_field: str, tgt_field: str) -> Pairs:
    """A tsv (with a header row) or jsonl file, read with `datasets`' local loaders."""
    raw = read_bytes(path)
    text = decode_utf8(raw, path)  # checked here: datasets' own error has no line number
    lines = text.split("\n")
    header_lines = 1 if fmt == "tsv" else 0
    if fmt == "tsv":
        columns = _check_tsv_shape(lines, path)
    datasets = _import_datasets()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    # A throwaway cache: local files are re-read each time anyway, and this keeps
    # the user's ~/.cache free of one arrow copy per prepared corpus.
    with tempfile.TemporaryDirectory(prefix="tfx-datasets-") as cache:
        try:
            if fmt == "tsv":
                features = datasets.Features({c: datasets.Value("string") for c in columns})
                ds = datasets.load_dataset(
                    "csv",
                    data_files=str(path),
                    split="train",
                    cache_dir=cache,
                    delimiter="\t",
                    quoting=3,  # csv.QUOTE_NONE: a quote is text, not a field delimiter
                    na_filter=False,  # "NA" and "null" are words, not missing values
                    encoding="utf-8-sig",
                    features=features,
                )
            else:
                ds = datasets.load_dataset(
                    "json", data_files=str(path), split="train", cache_dir=cache
                )
        except Exception as e:  # whatever the loader says, it is the file
            if fmt == "jsonl":
                _find_bad_json(lines, path)
            raise DataError(f"{path}: cannot read as {fmt} ({_first_line(e)})") from None

        def where(row: int) -> str:
            return f"{path}:{_row_line(lines, row, header_lines)}"

        src, tgt = dataset_columns(ds, src_field, tgt_field, where)
    return drop_empty(src, tgt, origin=str(path))


def _check_tsv_shape(lines: list[str], path: Path) -> list[str]:
    """The header's column names; every row must have as many tab-separated fields."""
    header = lines[0].lstrip("\ufeff").rstrip("\r").split("\t") if lines else [""]
    if header == [""]:
        raise DataError(f"{path}:1: empty header (a tsv file starts with a row of field names)")
    for number, line in enumerate(lines[1:], start=2):
        if line.strip() and line.count("\t") != len(header) - 1:
            raise DataError(
                f"{path}:{number}: expected {len(header)} tab-separated fields "
                f"({', '.join(header)}), found {line.count(chr(9)) + 1}"
            )
    return header


def _find_bad_json(lines: list[str], path: Path) -> None:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path}:{number}: not valid JSON ({e.args[0]})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")


def _row_line(lines: list[str], row: int, header_lines: int) -> int:
    """The 1-based line of data row `row`: the loaders skip blank lines, so count them."""
    seen = -1
    for number, line in enumerate(lines[header_lines:], start=header_lines + 1):
        if line.strip():
            seen += 1
            if seen == row:
                return number
    return header_lines + row + 1


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# ----------------------------------------------------------------------------- hub


def read_hub(name: str, config: str, split: str, src_field: str, tgt_field: str) -> Pairs:
    """A Hugging Face hub dataset split; rows are read exactly as for local jsonl."""
    datasets = _import_datasets()
    origin = f"{name}{'/' + config if config else ''}[{split}]"
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # offline, unknown name, unknown split, ...
        raise DataError(
            f"cannot load {origin} from the Hugging Face hub ({_first_line(e)})"
        ) from None
    src, tgt = dataset_columns(ds, src_field, tgt_field, lambda row: f"{origin} row {row + 1}")
    return drop_empty(src, tgt, origin=origin)


def dataset_columns(
    ds: Any, src_field: str, tgt_field: str, where: Callable[[int], str]
) -> tuple[list[str], list[str]]:
    """The two text columns of a `datasets.Dataset`; a dotted field names a nested one."""
    flat = ds.flatten()  # {"translation": {"de": ..}} -> a column "translation.de"
    columns = []
    for field in (src_field, tgt_field):
        if field not in flat.column_names:
            shown = ", ".join(flat.column_names) or "none"
            raise DataError(f"{where(0)}: no field '{field}' (fields: {shown})")
        values = flat.data.column(field).to_pylist()
        for row, value in enumerate(values):
            if not isinstance(value, str):
                if value is None:
                    raise DataError(f"{where(row)}: field '{field}' is missing")
                kind = "a mapping" if isinstance(value, dict) else type(value).__name__
                raise DataError(f"{where(row)}: field '{field}' is {kind}, expected text")
        # a newline inside a field would split one sentence over two cache lines
        columns.append([" ".join(v.splitlines()) for v in values])
    return columns[0], columns[1]


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError(
            "reading tsv, jsonl or hub data needs the `datasets` package (pip install datasets)"
        ) from None
    return datasets
