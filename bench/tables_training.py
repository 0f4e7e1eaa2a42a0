"""The tables of docs/results.md about the whole training loop, for bench/readme_tables.py:
variants and source trees of `tfx train`, alternating (bench/loop_speed.py)."""

from __future__ import annotations

from tables_cpu import flags_of


def loop_speed(d: dict) -> list[str]:
    """Each variant's target tokens/s, every round, and its ratio to the first variant."""
    names = list(d["variants"])
    lines = [
        f"`python bench/loop_speed.py --config {d['config']} --steps {d['steps']}` "
        f"({d['date'][:10]}, commit {d['commit']}, {d['machine']}, {flags_of(d)}; CPU flags "
        f"{' '.join(d['cpu_flags'])}). Whole `tfx train` runs of {d['steps']} updates, "
        "every variant once per round in a rotating order, each in a fresh run dir; "
        "target tokens/s from the closing summary (validation left out). A tree other "
        "than this one runs the same config with its own code.",
        "",
        f"| variant | what | target tokens/s (median) | rounds | against {names[0]} |",
        "|---|---|---|---|---|",
    ]
    for name, v in d["variants"].items():
        what = " ".join(v["sets"]) or "the config as it is"
        if v["tree_commit"] != d["commit"]:
            what = f"{what}, tfx at commit {v['tree_commit']}"
        rounds = ", ".join(f"{x:,}" for x in v["rounds"])
        lines.append(
            f"| {name} | {what} | {v['tokens_per_s']:,} | {rounds} | {v['vs_first']:.3f}x |"
        )
    return lines
