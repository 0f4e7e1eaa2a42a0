"""The tables of docs/results.md about positions, for bench/readme_tables.py: the
embedding initialisation and the four kinds of position (bench/positions.sh, summarised
by bench/positions_summary.py)."""

from __future__ import annotations

import statistics

from tables_cpu import flags_of


def _header(d: dict, what: str) -> str:
    return (
        f"`{d['benchmark']}` ({d['date'][:10]}, commit {d['commit']}, {d['machine']}, "
        f"{flags_of(d)}; CPU flags {' '.join(d['cpu_flags'])}; {d['threads']} threads). "
        f"Multi30k de -> en, the model and recipe of configs/multi30k_de_en_cpu12.yaml; {what} "
        "Test: test_2016_flickr (1,000 sentences), greedy, the best-validation checkpoint, "
        "sacreBLEU."
    )


def _groups(d: dict) -> dict[str, list[tuple[str, dict]]]:
    """Runs named KIND_seedN, grouped by KIND, in the order the summary wrote them."""
    groups: dict[str, list[tuple[str, dict]]] = {}
    for name, run in d["runs"].items():
        kind, _, seed = name.rpartition("_seed")
        groups.setdefault(kind, []).append((seed, run))
    return groups


def _mean(values: list[float]) -> str:
    spread = f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else ""
    return f"**{statistics.fmean(values):.2f}**{spread}"


def embedding_init(d: dict) -> list[str]:
    """xavier against normal: validation curve, best validation BLEU, test BLEU, per seed."""
    groups = _groups(d)
    steps = [r["step"] for r in next(iter(d["runs"].values()))["valid"]]
    lines = [
        _header(
            d, "updates fixed at the recipe's 12-minute count, so that load does not change them."
        ),
        "",
        f"| model.embedding_init | seed | valid loss at {', '.join(map(str, steps))} "
        "| best valid BLEU | test BLEU | test chrF |",
        "|---|---|---|---|---|---|",
    ]
    for init, runs in groups.items():
        for seed, r in runs:
            losses = " / ".join(f"{v['loss']:.3f}" for v in r["valid"])
            lines.append(
                f"| {init} | {seed} | {losses} | {r['best_valid_bleu']:.2f} "
                f"| {r['test']['bleu']:.2f} | {r['test']['chrf']:.2f} |"
            )
        last = [r["valid"][-1]["loss"] for _, r in runs]
        lines.append(
            f"| {init} | mean (range) | last {statistics.fmean(last):.3f} "
            f"| {_mean([r['best_valid_bleu'] for _, r in runs])} "
            f"| {_mean([r['test']['bleu'] for _, r in runs])} "
            f"| {_mean([r['test']['chrf'] for _, r in runs])} |"
        )
    return lines


def positional_kinds(d: dict) -> list[str]:
    """Each kind: best validation BLEU, test BLEU whole and by source length, per seed."""
    groups = _groups(d)
    first = next(iter(d["runs"].values()))
    buckets = first["test_by_source_length"]
    updates = first["updates"]
    lines = [
        _header(
            d,
            f"trained on the pairs of at most 20 pieces a side (data.max_len 20), "
            f"{updates:,} updates per run.",
        ),
        "",
        "| model.positional | seed | best valid BLEU | test BLEU | "
        + " | ".join(f"source {b} pieces ({v['sentences']:,})" for b, v in buckets.items())
        + " |",
        "|---|---|---|---|" + "---|" * len(buckets),
    ]
    for kind, runs in groups.items():
        for seed, r in runs:
            cells = " | ".join(f"{v['bleu']:.2f}" for v in r["test_by_source_length"].values())
            lines.append(
                f"| {kind} | {seed} | {r['best_valid_bleu']:.2f} "
                f"| {r['test']['bleu']:.2f} | {cells} |"
            )
        means = [_mean([r["test_by_source_length"][b]["bleu"] for _, r in runs]) for b in buckets]
        lines.append(
            f"| {kind} | mean (range) | {_mean([r['best_valid_bleu'] for _, r in runs])} "
            f"| {_mean([r['test']['bleu'] for _, r in runs])} | {' | '.join(means)} |"
        )
    return lines
