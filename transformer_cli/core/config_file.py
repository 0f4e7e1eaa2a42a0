"""A YAML config file -> the frozen dataclasses of config.py, strictly, with `--set a.b=v`
overrides; and a config back to YAML.

A misspelled key is an error with a suggestion, a key given twice is an error naming
both lines, a value is converted by its field's declared type (PyYAML reads `1e-3` as a
string; tfx reads it as the float the field asks for), and all problems are reported
together, each with its file and line or its `--set`.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from transformer_cli.core.config import Config, to_dict
from transformer_cli.core.config_rules import validate
from transformer_cli.core.errors import ConfigError

_MISSING = object()


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `a.b=v` overrides, convert, validate; raise ConfigError."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"config path is a directory, not a YAML file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    raw, lines, repeated = parse_yaml(text, str(path))
    return config_from_dict(raw, overrides, source=str(path), lines=lines, problems=repeated)


def parse_yaml(text: str, source: str) -> tuple[dict, dict[str, int], list[str]]:
    """Safe-load YAML text into a dict, with the line number of every dotted key.

    The third item names each key given twice in one mapping (`file:9: model: key given
    twice (first at line 3)`): YAML would silently keep the last one.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else "?"
        raise ConfigError(
            f"{source}:{line}: YAML tag not allowed ({e.problem}); tfx reads plain YAML only"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    lines: dict[str, int] = {}
    repeated: list[str] = []
    _key_lines(node, "", lines, repeated)
    return raw, lines, [f"{source}:{problem}" for problem in repeated]


def _key_lines(node: Any, prefix: str, out: dict[str, int], repeated: list[str]) -> None:
    """Each dotted key's line into `out` (a repeated key's last, the one YAML keeps), and a
    `LINE: key: key given twice` message into `repeated` for each repeat within a mapping."""
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}  # this mapping's keys, at their first line
        for key_node, value_node in node.value:
            dotted = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line + 1
            if dotted in first:
                was = first[dotted]
                repeated.append(f"{line}: {dotted}: key given twice (first at line {was})")
            else:
                first[dotted] = line
            out[dotted] = line
            _key_lines(value_node, dotted + ".", out, repeated)
    elif isinstance(node, yaml.SequenceNode):  # a list of mappings: data.train.0.weight
        for index, item in enumerate(node.value):
            _key_lines(item, f"{prefix}{index}.", out, repeated)


def config_from_dict(
    raw: dict,
    overrides: list[str] | tuple[str, ...] = (),
    source: str = "config",
    lines: dict[str, int] | None = None,
    problems: list[str] | tuple[str, ...] = (),
) -> Config:
    """Build a validated Config from plain data; every problem is reported in one error.

    `problems` are the reader's own (keys given twice), reported first with the rest.
    """
    lines = lines or {}
    errors: list[str] = list(problems)
    raw = _apply_overrides(raw, overrides, errors)
    override_keys = {o.split("=", 1)[0].strip() for o in overrides if "=" in o}

    def where(dotted: str) -> str:
        if dotted in override_keys:
            return f"--set {dotted}"
        if dotted in lines:
            return f"{source}:{lines[dotted]}: {dotted}"
        return f"{source}: {dotted}"

    cfg = _build(Config, raw, "", errors, where)
    if not errors:
        errors.extend(validate(cfg))
    if errors:
        shown = "; ".join(errors[:8])
        more = f" (and {len(errors) - 8} more)" if len(errors) > 8 else ""
        raise ConfigError(shown + more)
    return cfg


def _apply_overrides(raw: dict, overrides: Sequence[str], errors: list[str]) -> dict:
    raw = _deep_copy(raw)
    for item in overrides:
        if "=" not in item:
            errors.append(f"--set {item}: expected KEY=VALUE, e.g. train.lr=3e-4")
            continue
        key, value = (s.strip() for s in item.split("=", 1))
        if not key:
            errors.append(f"--set {item}: empty key")
            continue
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        node: Any = raw
        parts = key.split(".")
        done = 0  # the parts walked so far, for the message
        try:
            for part in parts[:-1]:
                node = _child(node, part)
                done += 1
            _put(node, parts[-1], parsed)
        except LookupError:
            where = ".".join(parts[:done])
            errors.append(f"--set {key}: {where} has no item {parts[done]}")
    return raw


def _child(node: Any, part: str) -> Any:
    """The mapping (or list) under `part` of `node`, made an empty mapping if it is not one;
    a list is indexed by number (`data.train.1.weight`), and only within its items."""
    if isinstance(node, list):
        return node[_index(node, part)]
    if not isinstance(node, dict):
        raise LookupError(part)
    child = node.get(part)
    if not isinstance(child, (dict, list)):
        child = node[part] = {}
    return child


def _put(node: Any, part: str, value: Any) -> None:
    if isinstance(node, list):
        node[_index(node, part)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise LookupError(part)


def _index(items: list, part: str) -> int:
    if not (part.isascii() and part.isdecimal()) or int(part) >= len(items):
        raise LookupError(part)
    return int(part)


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def _build(cls: type, raw: Any, prefix: str, errors: list[str], where: Callable[[str], str]) -> Any:
    """Convert a mapping into dataclass `cls`, appending problems to `errors`."""
    if not isinstance(raw, dict):
        errors.append(f"{where(prefix.rstrip('.'))}: expected a mapping, got {_show(raw)}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            hint = _suggest(str(key), prefix, list(fields))
            errors.append(f"{where(prefix + str(key))}: unknown key{hint}")
    values = {}
    for name, f in fields.items():
        dotted = prefix + name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.append(f"{where(dotted)}: required key missing")
            continue
        tp = hints[name]
        items = _listed_dataclass(tp)
        if items is not None and isinstance(raw[name], list):
            values[name] = tuple(
                _build(items, item, f"{dotted}.{i}.", errors, where)
                for i, item in enumerate(raw[name])
            )
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            values[name] = _build(
                tp, raw[name] if raw[name] is not None else {}, dotted + ".", errors, where
            )
        else:
            value = _convert(raw[name], tp)
            if value is _MISSING:
                errors.append(f"{where(dotted)}: expected {_type_name(tp)}, got {_show(raw[name])}")
            else:
                values[name] = value
    if errors:  # keep checking the other sections, but build nothing half-valid
        return None
    return cls(**values)


def _listed_dataclass(tp: Any) -> type | None:
    """The dataclass D of a field typed `X | tuple[D, ...]` (a list of mappings), else None."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    for option in typing.get_args(tp):
        args = typing.get_args(option)
        listed = typing.get_origin(option) is tuple and len(args) == 2 and args[1] is Ellipsis
        if listed and isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def _convert(value: Any, tp: Any) -> Any:
    """Convert a YAML value to the declared type, or return _MISSING."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        return value if isinstance(value, str) and value in choices else _MISSING
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return _MISSING
        out = tuple(_convert(v, a) for v, a in zip(value, args, strict=True))
        return _MISSING if any(v is _MISSING for v in out) else out
    if origin in (typing.Union, types.UnionType):  # the first plain option that fits
        for option in typing.get_args(tp):
            if option in (bool, int, float, str):
                converted = _convert(value, option)
                if converted is not _MISSING:
                    return converted
        return _MISSING
    if tp is bool:
        return value if isinstance(value, bool) else _MISSING
    if tp is int:
        if isinstance(value, bool):
            return _MISSING
        if isinstance(value, int):
            return value
        number = _number(value)
        if number is not None and float(number).is_integer():
            return int(number)
        return _MISSING
    if tp is float:
        if isinstance(value, bool):
            return _MISSING
        number = _number(value)
        return float(number) if number is not None else _MISSING
    if tp is str:
        return value if isinstance(value, str) else _MISSING
    raise TypeError(f"config field type {tp!r} is not supported")


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.replace("_", ""))
        except ValueError:
            return None
    return None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + "|".join(typing.get_args(tp))
    if origin is tuple:
        return "a list [" + ", ".join(_type_name(a) for a in typing.get_args(tp)) + "]"
    if origin in (typing.Union, types.UnionType):
        listed = _listed_dataclass(tp)
        plain = [_type_name(a) for a in typing.get_args(tp) if typing.get_origin(a) is not tuple]
        return " or ".join(plain + (["a list of mappings"] if listed else []))
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key a config may have."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(all_keys(hints[f.name], prefix + f.name + "."))
    return keys


def _suggest(key: str, prefix: str, siblings: list[str]) -> str:
    """A did-you-mean hint: first among the same mapping's keys, then anywhere."""
    keys = all_keys()
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {prefix}{close[0]}?)"
    elsewhere = [k for k in keys if k.rsplit(".", 1)[-1] == key]
    if elsewhere:
        return f" (did you mean {elsewhere[0]}?)"
    close = difflib.get_close_matches(prefix + key, keys, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


RESOLVED_HEADER = "# The resolved config of this run, written by tfx prepare and tfx train.\n"


def write_resolved(cfg: Config, run_dir: Path) -> Path:
    """Write the fully resolved config into RUN_DIR/config.yaml (atomically), unless a
    file tfx did not write is there (a user's own config, say): that one is left as it is."""
    from transformer_cli.core.fileio import atomic_write_text

    path = Path(run_dir) / "config.yaml"
    if not _resolved_or_missing(path):
        print(f"note: {path} is not a config tfx wrote; left as it is", file=sys.stderr)
        return path
    atomic_write_text(path, RESOLVED_HEADER + to_yaml(cfg))
    return path


def _resolved_or_missing(path: Path) -> bool:
    """True if nothing is at `path`, or a config that write_resolved wrote: one that starts
    with its header, or (written before the header) every key of the schema and no other."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return True
    except (OSError, UnicodeDecodeError):
        return False
    if text.startswith(RESOLVED_HEADER):
        return True
    try:
        return _shape(yaml.safe_load(text)) == _shape(to_dict(Config(run_dir="")))
    except yaml.YAMLError:
        return False


def _shape(value: object) -> object:
    """The nested keys of a YAML mapping, without the values."""
    if not isinstance(value, dict):
        return None
    return {key: _shape(item) for key, item in value.items()}
