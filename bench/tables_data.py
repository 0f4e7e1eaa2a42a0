"""The tables of docs/results.md about the data pipeline, for bench/readme_tables.py:
`tfx prepare` at scale (bench/corpus_scale.py)."""

from __future__ import annotations

import re

from tables_cpu import flags_of

_STAGE = re.compile(r"^(.*): ([0-9.]+) s$")  # prepare's "encoding train: 2.5 s"


def stages(lines: list) -> dict[str, float]:
    """prepare's stage times from its timed stderr lines: fingerprint, sample, spm, encode."""
    out = {}
    for _, text in lines:
        found = _STAGE.match(text)
        if not found:
            continue
        name, seconds = found.group(1), float(found.group(2))
        key = next((k for k, word in _KEYS if word in name), None)
        if key:
            out[key] = out.get(key, 0.0) + seconds
    return out


_KEYS = (
    ("fingerprint", "fingerprinting"),
    ("sample", "sampling"),
    ("spm", "training"),
    ("encode_train", "encoding train"),
    ("encode_eval", "encoding"),  # valid and test, after "encoding train" matched
)


def _mib(value: float) -> str:
    return f"{value / 1024:.2f} GiB" if value >= 1024 else f"{value:.0f} MiB"


def corpus_scale(d: dict) -> list[str]:
    """prepare's time and memory from 1M pairs up, beside `datasets` and SentencePiece alone."""
    lines = [
        f"`python bench/corpus_scale.py --sizes {' '.join(r['size'] for r in d['records'])}` "
        f"({d['date'][:10]}, commit {d['commit']}, {d['machine']}, {flags_of(d)}; CPU flags "
        f"{' '.join(d['cpu_flags'])}). Distinct de-en pairs, each two Multi30k pairs joined "
        f"(about twice Multi30k's length), `{d['config']}` (vocabulary 8,000, so uint16 ids), "
        "the default cleaning on. Anonymous memory is RssAnon polled every 50 ms (memory-"
        "mapped pages count in RSS, not in it). The encoding stage is prepare's `encoding "
        "train` (reading, cleaning, SentencePiece, filtering, writing), against SentencePiece "
        "alone encoding the same lines with the same 2 threads and holding nothing. The "
        "`datasets` route is `Dataset.from_generator` and `.map(batched=True, num_proc=2)` "
        "with the same SentencePiece model, to Arrow; its memory is summed over its processes.",
        "",
        "| pairs | prepare | sample / SentencePiece / encode train | peak RSS | peak anon "
        "| cache bytes a piece | encode train / SentencePiece alone | `datasets.map` "
        "| its peak anon | its bytes a piece | train: first step | train: anon at step 10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["records"]:
        p, s = r["prepare"], stages(r["prepare"]["stderr_lines"])
        sample, spm, encode = (s.get(k, 0.0) for k in ("sample", "spm", "encode_train"))
        alone = r["spm"]["work_s"]
        ds, train = r["datasets"], r["train"]
        lines.append(
            f"| {r['pairs']:,} | {p['seconds']:.0f} s "
            f"| {sample:.1f} / {spm:.1f} / {encode:.1f} s "
            f"| {_mib(p['peak_rss_mib'])} | **{_mib(p['peak_anon_mib'])}** "
            f"| {p['bytes_per_piece']:.2f} "
            f"| {encode:.1f} / {alone:.1f} s = **{encode / alone:.2f}x** "
            f"| {ds['seconds']:.0f} s | {_mib(ds['peak_anon_mib'])} | {ds['bytes_per_piece']:.2f} "
            f"| {train['first_step_s']:.1f} s | {_mib(train['step10_anon_mib'])} |"
        )
    return lines


def prepare_encode(d: dict) -> list[str]:
    """The encoding stage beside SentencePiece alone, by turns in one process."""
    lines = [
        f"`python bench/prepare_encode.py --pairs {d['pairs']}` ({d['date'][:10]}, commit "
        f"{d['commit']}, {d['machine']}, {flags_of(d)}; CPU flags {' '.join(d['cpu_flags'])}). "
        f"The training split of bench/corpus_scale.py's corpus, {d['threads']} threads for "
        "SentencePiece; each round runs the three in turn. `encode_corpus` reads, cleans, "
        "encodes, filters and writes; SentencePiece alone only reads and encodes.",
        "",
        "| round | " + " | ".join(d["rounds"][0]) + " |",
        "|---|" + "---|" * len(d["rounds"][0]),
    ]
    for i, row in enumerate(d["rounds"], start=1):
        lines.append(f"| {i} | " + " | ".join(f"{v:.1f} s" for v in row.values()) + " |")
    return lines
