"""Training curves: reading a run's metrics.jsonl, and `tfx plot`."""

from __future__ import annotations

import json
from pathlib import Path

from transformer_cli.core.errors import DataError


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(train records, valid records) of RUN_DIR/metrics.jsonl, one per step, by step.

    A resumed run logs again the steps after its checkpoint; the later record wins. A
    last line cut short (training killed mid-write) is skipped.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run dir")
    path = run_dir / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no metrics yet (train first: tfx train --config ...)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    kinds: dict[str, dict[int, dict]] = {"train": {}, "valid": {}}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            kinds[record["kind"]][int(record["step"])] = record
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                continue
            raise DataError(f"{path}:{number}: not a tfx metrics record") from None
    if not kinds["train"] and not kinds["valid"]:
        raise DataError(f"{path}: no training records yet")
    return tuple([r[s] for s in sorted(r)] for r in (kinds["train"], kinds["valid"]))  # type: ignore[return-value]


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Draw RUN_DIR's training curves (default: RUN_DIR/curves.png)."""
    from transformer_cli.inspect.plots import plot_curves

    train, valid = read_metrics(run_dir)
    output = Path(output) if output is not None else Path(run_dir) / "curves.png"
    return plot_curves(train, valid, output, f"training curves of {run_dir}")
