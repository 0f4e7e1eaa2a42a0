"""Render the benchmark results into docs/results.md and the README's headline table, so
that no figure in either is typed by hand.

    python bench/readme_tables.py            # rewrite both from bench/results/*.json
    python bench/readme_tables.py --check    # exit 1, naming each file that is out of date

The benchmark scripts write JSON to bench/out/ (not committed); copy a run worth keeping
to bench/results/ (committed), then run this. In each file it replaces the text between
`<!-- results:begin -->` and `<!-- results:end -->`; the prose around it is kept.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # its sibling tables_cpu, however it is loaded
from tables_cpu import cpu12_recipe, cpu_precision, decode_precision, flags_of  # noqa: E402
from tables_data import corpus_scale, prepare_encode  # noqa: E402
from tables_decoding import backtranslation, sampling_speed  # noqa: E402
from tables_positions import embedding_init, positional_kinds  # noqa: E402
from tables_training import loop_speed  # noqa: E402

ROOT = HERE.parent
README = ROOT / "README.md"
RESULTS_PAGE = ROOT / "docs" / "results.md"
RESULTS = HERE / "results"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
# peer_onmt.json does not record it: the peers' onmt_w400.yaml sets `model_dtype: fp32`
ONMT_PRECISION = "fp32"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def settings(overrides: list[str]) -> str:
    """A benchmark's config overrides, less where it wrote (the run dir says nothing of speed)."""
    return "".join(f" {o}" for o in overrides if not o.startswith("run_dir="))


def train_speed(d: dict) -> list[str]:
    peak = d.get("matmul_peak_gflops")  # absent from runs whose peak was not the device's
    mfu = (
        " MFU = achieved matmul FLOP/s (weights only, "
        f"{d['rows'][0]['flops_per_token'] / 1e6:.1f} MFLOP per target token) over the "
        "measured matmul peak of the precision the variant ran in (fp32 "
        f"{peak['fp32']:.0f}, bf16 {peak['bf16']:.0f} GFLOP/s)."
        if peak
        else ""
    )
    # runs since the datasheet peaks were added, on a GPU whose peaks are known
    sheet = d.get("datasheet_peak_tflops")
    if sheet:
        mfu += (
            " MFU (datasheet) = the same FLOP/s over the GPU's datasheet dense peak of that "
            "precision (" + ", ".join(f"{k} {x:g}" for k, x in sheet.items()) + " TFLOP/s)."
        )
    lines = [
        f"Training throughput (`bench/train_speed.py`, {d['date']}, commit {d['commit']}, "
        f"{d['machine']}; `{d['config']}`{settings(d['overrides'])}). Best of the "
        f"alternating rounds.{mfu}"
        + (f" CPU: {flags_of(d)}." if "cpu_flags" in d else "")
        + (f" {d['note']}" if "note" in d else ""),
        "",
        "| variant | malloc | real target tokens/s | all rounds | step (median) "
        "| target tokens/step | peak RSS |"
        + (" MFU |" if peak else "")
        + (" MFU (datasheet) |" if sheet else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if peak else "") + ("---|" if sheet else ""),
    ]
    for r in d["rows"]:
        lines.append(
            f"| {r['variant']} | {r.get('malloc', 'glibc')} | **{r['tokens_per_s']:.0f}** "
            f"| {r['tokens_per_s_all_rounds']} "
            f"| {r['step_ms_median']:.0f} ms | {r['target_tokens_per_step']:.0f} "
            f"| {r['peak_rss_gib']:.2f} GiB |"
            + (f" {100 * r['mfu_vs_own_peak']:.0f}% |" if peak else "")
            + (f" {100 * r['mfu_vs_datasheet_peak']:.1f}% |" if sheet else "")
        )
    return lines


def model_step(d: dict) -> list[str]:
    c = d["config"]
    lines = [
        f"Forward + backward of the model alone (`bench/model_step.py`, {d['date']}, "
        + (
            f"{d['cpus']} CPUs, {d['threads']} threads"
            if d.get("device", "cpu") == "cpu"
            else d["device"]
        )
        + f", torch {d['torch']}): d_model {c['d_model']}, "
        f"{c['enc_layers']}+{c['dec_layers']} layers, {c['heads']} heads, ffn {c['d_ff']}, "
        f"vocab {c['tgt_vocab']}, {d['real_tgt_tokens_per_batch']:.0f} real target tokens per "
        f"batch, {d.get('precision', 'fp32')}, the two attention paths alternated step by step.",
        "",
        "| attention path | real target tokens/s | median s/batch | attention core, fwd+bwd |",
        "|---|---|---|---|",
    ]
    for name, r in d["results"].items():
        core = r.get("attention_core_fwd_bwd_ms")
        lines.append(
            f"| {name} | **{r['tgt_tokens_per_s']:.0f}** | {r['median_s_per_batch']:.3f} "
            f"| {'-' if core is None else f'{core:.1f} ms'} |"
        )
    ratios = d["paired_ratios_math_over_sdpa"]
    lines += [
        "",
        f"Paired median speed-up of SDPA over math: {d['sdpa_speedup_paired_median']:.2f}x "
        f"for the whole step (SDPA faster in {sum(r > 1 for r in ratios)} of {len(ratios)} "
        "pairs)"
        + (
            f", {d['sdpa_attention_speedup_paired_median']:.2f}x for one layer's three "
            f"attentions with their projections, {d['sdpa_core_speedup_paired_median']:.2f}x "
            "for their core alone (softmax(QK^T / sqrt(d_k)) V and the heads' concatenation)."
            if "sdpa_attention_speedup_paired_median" in d
            else "."
        ),
    ]
    if "sdpa_kernels_in_training_step" in d:
        kernels = ", ".join(
            f"`{k.removeprefix('aten::')}`" for k in d["sdpa_kernels_in_training_step"]
        )
        lines[-1] += f" SDPA's kernels in a training step: {kernels}."
    if "note" in d:
        lines[-1] += f" {d['note']}"
    return lines


def train_memory(d: dict) -> list[str]:
    lines = [
        f"Host memory over a long run (`bench/train_memory.py`, {d['date']}, commit "
        f"{d['commit']}; `{d['config']}`{settings(d['overrides'])}): the same real training "
        "steps, over as many epochs as they take, under each malloc in turn.",
        "",
        "| malloc | peak RSS | tokens/s | RSS by step |",
        "|---|---|---|---|",
    ]
    for r in d["runs"]:
        trace = ", ".join(f"{t['step']}: {t['rss_gib']:.2f}" for t in r["trace"])
        lines.append(
            f"| {r['malloc']} | **{r['peak_rss_gib']:.2f} GiB** | {r['tokens_per_s']} "
            f"| {trace} GiB |"
        )
    return lines


def decode_speed(d: dict) -> list[str]:
    dec = d["decode"]
    lines = [
        f"Decoding speed (`bench/decode_speed.py`, {d['date'][:10]}, commit "
        f"{d.get('commit', '?')}, {d['machine']['cpus']} "
        f"CPUs, {d['threads']} threads; checkpoint `{d['checkpoint']}`, {d['data']}; "
        f"alpha {dec['alpha']}, output cap {dec['max_len_a']} x source + {dec['max_len_b']}). "
        "Generation time only, model loading excluded.",
        "",
        "| sentences | search | precision | batch | KV cache | sentences/s | output pieces/s "
        "| test BLEU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in d["results"]:
        bleu = f"{r['bleu']:.2f}" if "bleu" in r else ""
        lines.append(
            f"| {r['sentences']} | {r['search']} | {r.get('precision', 'fp32')} | {r['batch']} | "
            f"{'yes' if r['kv_cache'] else 'no'} | **{r['sentences_per_s']:.0f}** | "
            f"{r['pieces_per_s']:.0f} | {bleu} |"
        )
    c = d["checks"]
    if "greedy_b1_packing_speedup" in c:
        same = all(v for k, v in c.items() if isinstance(v, bool))
        lines += [
            "",
            "Speed-ups, each the median of round-by-round ratios of two configs run one after "
            f"the other: the KV cache, greedy batch 64, {c['greedy_full_b64_cache_speedup']}x "
            f"on the whole set ({c['greedy_b64_cache_speedup']}x on the subset, batch 1 "
            f"{c['greedy_b1_cache_speedup']}x; beam 5 {c['beam5_b64_cache_speedup']}x and "
            f"{c['beam5_b1_cache_speedup']}x); packed linear layers (fp32), greedy "
            f"{c['greedy_b64_packing_speedup']}x at batch 64 and "
            f"{c['greedy_b1_packing_speedup']}x at batch 1 (every layer packed against only the "
            f"output projection: {c['greedy_b64_packing_all_vs_output_only']}x and "
            f"{c['greedy_b1_packing_all_vs_output_only']}x; bf16 packed against autocast: "
            f"{c.get('greedy_bf16_b64_packing_speedup', '?')}x and "
            f"{c.get('greedy_bf16_b1_packing_speedup', '?')}x). Every pair's outputs identical: "
            f"{'yes' if same else 'NO'}.",
        ]
    return lines


def linear_packing(d: dict) -> list[str]:
    rows = sorted({r["rows"] for r in d["results"]})
    lines = [
        f"One linear layer's product, `F.linear` against the weight packed for oneDNN "
        f"(`bench/linear_packing.py`, {d['date']}, {d['cpus']} CPUs, {d['threads']} "
        f"threads, median of {d['reps']}; cold: cache flushed before each call, warm: "
        "the weight in the cache): how many times faster the packed product is, by rows "
        "per product.",
        "",
        "| precision | layer (in -> out) | cache | " + " | ".join(f"{n} rows" for n in rows) + " |",
        "|---|---|---|" + "---|" * len(rows),
    ]
    shapes: dict[tuple, dict[int, dict]] = {}
    for r in d["results"]:
        shapes.setdefault((r["precision"], r["in"], r["out"], r["cache"]), {})[r["rows"]] = r
    for (precision, d_in, d_out, cache), by_rows in shapes.items():
        cells = []
        for n in rows:
            r = by_rows[n]
            cells.append(f"{r['speedup']:.2f}x ({r['linear_us']:.0f} / {r['packed_us']:.0f} us)")
        lines.append(f"| {precision} | {d_in} -> {d_out} | {cache} | " + " | ".join(cells) + " |")
    return lines


def peer_decode(d: dict) -> list[str]:
    t, o = d["tfx"], d["onmt"]
    return [
        f"Greedy decoding by turns with OpenNMT-py 3.5.1 (`bench/peer_decode.py`, {d['date']}, "
        f"commit {d['commit']}, {d['machine']}): {d['rounds']} rounds, each decoding "
        f"test_2016 once per tool at batch {d['batch']}, each in a fresh process, model "
        "loading excluded; tfx's time includes SentencePiece in and out, OpenNMT-py's is its "
        "own `-report_time`. Figures at the median round; ratios are medians of the rounds' "
        "ratios.",
        "",
        "| | tfx | OpenNMT-py | tfx / OpenNMT-py |",
        "|---|---|---|---|",
        f"| sentences/s | {t['sentences_per_s_median']:,.0f} | {o['sentences_per_s_median']:,.0f} "
        f"| {d['speedup_sentences']}x |",
        f"| output pieces/s | {t['pieces_per_s_median']:,.0f} | {o['pieces_per_s_median']:,.0f} "
        f"| {d['speedup_pieces']}x |",
        f"| output pieces per sentence | {t['mean_output_pieces']} | {o['mean_output_pieces']} | |",
        f"| seconds, every round | {', '.join(f'{x:.2f}' for x in t['seconds_all_rounds'])} "
        f"| {', '.join(f'{x:.2f}' for x in o['seconds_all_rounds'])} | |",
    ]


def multi30k(d: dict) -> list[str]:
    lines = [
        f"Multi30k {d['direction'].replace('_', '->')}, `bash bench/multi30k.sh "
        f"{d['direction']} {d['budget_minutes']:g} {d.get('overrides', '')}` ({d['date']}, "
        f"commit {d['commit']}, {d['machine']}): `tfx prepare` {d.get('prepare_seconds', 0):.1f} s "
        f"(29,000 pairs, 8k joint SentencePiece); {d['steps']} updates in "
        f"{d['train_seconds']:.0f} s of training, "
        f"peak RSS {d['peak_rss_gib']:.2f} GiB, last logged throughput "
        f"{d['tokens_per_s_last_logs']} real target tokens/s.",
        "",
        "| checkpoint | search | BLEU | chrF | test loss | ppl | decode | sentences/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    signature = ""
    for name, report in d["test"].items():
        for row in report["results"]:
            signature = report.get("bleu_signature", signature)
            lines.append(
                f"| {Path(row['checkpoint']).name} | {name} | **{row['bleu']:.2f}** | "
                f"{row['chrf']:.2f} | {row.get('loss', float('nan')):.3f} | "
                f"{row.get('ppl', float('nan')):.2f} | {row['decode_seconds']:.1f} s | "
                f"{row['sentences_per_s']:.0f} |"
            )
    if signature:
        lines += ["", f"sacreBLEU: `{signature}`"]
    return lines


def emulated(d: dict) -> str:
    """The emulation variables a run had, as a command's prefix ("" for none)."""
    return "".join(f"{k}={v} " for k, v in d.get("cpu_emulation", {}).items())


def side_by_side(tfx: dict, onmt: dict, speed: dict | None) -> list[str]:
    """tfx's 12-minute run next to OpenNMT-py's, run on the same machine the same day."""
    best = {b: max(tfx["test"][b]["results"], key=lambda r: r["bleu"]) for b in ("beam1", "beam5")}
    onmt_rate = onmt["tok_s"]
    rows = [
        ("updates in the 12-minute budget", tfx["steps"], onmt["steps"], "{:,.0f}"),
        ("real target tokens/s (training loop)", tfx["tokens_per_s_mean"], onmt_rate, "{:,.0f}"),
        ("peak RSS of training (GiB)", tfx["peak_rss_gib"], onmt["time"]["rss_gib"], "{:.2f}"),
        ("test_2016 BLEU, greedy", best["beam1"]["bleu"], onmt["beam1"]["bleu"], "{:.2f}"),
        ("test_2016 BLEU, beam 5", best["beam5"]["bleu"], onmt["beam5"]["bleu"], "{:.2f}"),
        (
            "greedy decoding, batch 64 (sentences/s)",
            best["beam1"]["sentences_per_s"],
            1000 / onmt["beam1"]["gen_s"],
            "{:,.0f}",
        ),
        (
            "beam-5 decoding, batch 64 (sentences/s)",
            best["beam5"]["sentences_per_s"],
            1000 / onmt["beam5"]["gen_s"],
            "{:,.0f}",
        ),
    ]
    lines = [
        f"tfx next to OpenNMT-py {onmt['version']} on the same machine, one after the other "
        f"({onmt['date']}): `{emulated(tfx)}bash bench/multi30k.sh de_en 12 "
        f"{tfx.get('overrides', '')}` and `{emulated(onmt)}bash bench/peer_onmt.sh` "
        f"({onmt['config']}). Same data, model size, batch and "
        "schedule; decoding times are generation only, best checkpoint for tfx.",
        "",
        "| | tfx | OpenNMT-py | tfx / OpenNMT-py |",
        "|---|---|---|---|",
    ]
    for name, ours, theirs, spec in rows:
        ratio = f"{ours / theirs:.2f}x" if theirs else "n/a"
        lines.append(f"| {name} | {spec.format(ours)} | {spec.format(theirs)} | {ratio} |")
    if speed:
        flops = speed["rows"][0]["flops_per_token"]
        peaks = speed["matmul_peak_gflops"]
        ours = tfx.get("precision") or precision_of(tfx.get("overrides", ""))

        def mfu(rate: float, precision: str) -> str:
            return f"{rate * flops / 1e9 / peaks[precision]:.0%} ({precision})"

        lines += [
            "",
            "MFU of the 12-minute runs, each against the measured matmul peak of the precision "
            f"it trained in (fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s, from "
            f"`bench/train_speed.py`; {flops / 1e6:.1f} MFLOP per target token): tfx "
            f"{mfu(tfx['tokens_per_s_mean'], ours)}, OpenNMT-py "
            f"{mfu(onmt_rate, ONMT_PRECISION)}.",
        ]
    return lines


def precision_of(overrides: str) -> str:
    """The training precision a benchmark's --set overrides asked for: a result recorded
    before runs named their precision, when `auto` was fp32 on the CPU."""
    match = re.search(r"train\.precision=(\w+)", overrides)
    return match.group(1) if match and match.group(1) != "auto" else "fp32"


# the 12-minute protocol on each CPU kind: (tfx's result, OpenNMT-py's, run right after it)
PAIRS = [("multi30k_de_en", "peer_onmt"), ("multi30k_de_en_avx2", "peer_onmt_avx2")]


def pairs() -> list[tuple[dict, dict]]:
    """The protocol's pairs that have both results."""
    loaded = [(load(t), load(o)) for t, o in PAIRS]
    return [(t, o) for t, o in loaded if t and o]


def tfx_precision(tfx: dict) -> str:
    """The precision a protocol run trained in, and whether `auto` chose it."""
    if tfx.get("precision"):
        return tfx["precision"] + (" (auto)" if tfx.get("precision_reason") else "")
    return precision_of(tfx.get("overrides", ""))


def headline(
    runs: list[tuple[dict, dict]], race: dict | None, gpu: dict | None, recipe: dict | None
) -> list[str]:
    """The README's table: tfx beside OpenNMT-py on the 12-minute CPU protocol, per CPU."""
    tfx, onmt = runs[0]
    lines = [
        f"Multi30k de->en, 12 minutes of training on 2 CPU cores ({tfx['date']}), one tool "
        "right after the other on the same machine: tfx with its defaults (`bash "
        f"bench/multi30k.sh de_en {tfx['budget_minutes']:g} {tfx.get('overrides', '')}`, "
        f"commit {tfx['commit']}) and OpenNMT-py {onmt['version']} in {ONMT_PRECISION} "
        "(`bash bench/peer_onmt.sh`), with the same data, model (that of "
        "`configs/multi30k_de_en.yaml`), batch and schedule.",
        "",
        "| CPU | tfx precision | tfx tokens/s | OpenNMT-py tokens/s | tfx / OpenNMT-py "
        "| test_2016 BLEU, tfx | OpenNMT-py |",
        "|---|---|---|---|---|---|---|",
    ]
    for tfx, onmt in runs:
        greedy = max(tfx["test"]["beam1"]["results"], key=lambda r: r["bleu"])
        ours, theirs = tfx["tokens_per_s_mean"], onmt["tok_s"]
        lines.append(
            f"| {flags_of(tfx)} | {tfx_precision(tfx)} | {ours:,.0f} | {theirs:,.0f} | "
            f"**{ours / theirs:.2f}x** | {greedy['bleu']:.2f} | {onmt['beam1']['bleu']:.2f} |"
        )
    tfx, onmt = runs[0]
    lines += [
        "",
        "Tokens/s are real (non-pad) target tokens per second of training; BLEU is greedy, "
        f"`best.pt`. Peak RSS of training (first row): tfx {tfx['peak_rss_gib']:.2f} GiB"
        + (f" under {tfx['malloc']} malloc" if tfx.get("malloc") else "")
        + f", OpenNMT-py {onmt['time']['rss_gib']:.2f} GiB"
        + (
            "; where jemalloc is installed, tfx runs under it and peaks lower "
            "([why](docs/performance.md#the-allocator-fastallocatorpy))."
            if tfx.get("malloc") == "glibc"
            else "."
        )
        + (
            f" Greedy decoding of test_2016 by turns, batch {race['batch']}, each tool in a "
            f"fresh process (`bench/peer_decode.py`, commit {race['commit']}, {race['date']}): "
            f"tfx {race['tfx']['sentences_per_s_median']:,.0f} sentences/s, OpenNMT-py "
            f"{race['onmt']['sentences_per_s_median']:,.0f} ({race['speedup_sentences']}x)."
            if race
            else ""
        ),
    ]
    tested = [t for t in (recipe or {}).get("tries", []) if "test" in t]
    if tested:
        got = ", ".join(
            f"{t['test']['beam1']:.2f} on the "
            + ("emulated AVX2-only CPU" if t["avx2_emulated"] else "first row's CPU")
            + f" ({t.get('precision') or 'fp32'}, {t['updates']} updates)"
            for t in tested
        )
        lines += [
            "",
            "The 12-minute recipe, `configs/multi30k_de_en_cpu12.yaml` (tuned on the validation "
            f"set), reaches test_2016 greedy BLEU {got}.",
        ]
    if gpu:
        best = max(gpu["rows"], key=lambda r: r["tokens_per_s"])
        lines += [
            "",
            f"On a GPU, {gpu['machine']}, with `bench/train_speed.py` ({gpu['date']}, commit "
            f"{gpu['commit']}): tfx trains the model of `{gpu['config']}` at "
            f"{best['tokens_per_s']:,.0f} real target tokens/s ({best['variant']}, its fastest "
            "variant there); OpenNMT-py was not run on it.",
        ]
    return lines


# docs/results.md: (heading, result file, renderer), in the page's order
PAGE = [
    ("Multi30k, 12 minutes on the CPU: de->en", "multi30k_de_en", multi30k),
    ("Multi30k, 12 minutes on the CPU: en->de", "multi30k_en_de", multi30k),
    ("Greedy decoding by turns with OpenNMT-py", "peer_decode", peer_decode),
    ("Training throughput on the CPU", "train_speed", train_speed),
    ("Training throughput on the CPU, by attention path", "train_speed_paths", train_speed),
    ("Host memory over a long run", "train_memory", train_memory),
    ("The model step alone on the CPU, fp32", "model_step", model_step),
    ("The model step alone on the CPU, bf16", "model_step_bf16", model_step),
    ("Training throughput on the GPU", "train_speed_cuda", train_speed),
    ("The model step alone on the GPU, fp32", "model_step_cuda", model_step),
    ("The model step alone on the GPU, bf16", "model_step_bf16_cuda", model_step),
    ("Decoding speed on the CPU", "decode_speed", decode_speed),
    ("Packed linear layers", "linear_packing", linear_packing),
    ("Training throughput on the CPU, by precision", "train_speed_precision", train_speed),
    ("The CPU's precision in the 12-minute protocol", "cpu_precision_12min", cpu_precision),
    ("The 12-minute CPU recipe", "cpu12_recipe", cpu12_recipe),
    ("Decoding in bf16 against fp32", "decode_precision", decode_precision),
    ("Prepare at scale", "corpus_scale", corpus_scale),
    ("Prepare's encoding stage, paired", "prepare_encode", prepare_encode),
    ("Sampling against greedy search, paired", "sampling_speed", sampling_speed),
    ("Back-translation on Multi30k", "backtranslation", backtranslation),
    ("Embedding initialisation", "positions_init", embedding_init),
    ("Positions: four kinds, and lengths past training", "positions_kinds", positional_kinds),
    ("Training throughput on the CPU, by kind of position", "train_speed_positions", train_speed),
    ("The training loop with TensorBoard, paired", "loop_speed_tensorboard", loop_speed),
]


def results_page() -> str:
    blocks = []
    for tfx, onmt in pairs():
        blocks.append(
            f"## tfx beside OpenNMT-py: {flags_of(tfx)}\n\n"
            + "\n".join(side_by_side(tfx, onmt, load("train_speed")))
        )
    for heading, name, render in PAGE:
        d = load(name)
        if d is not None:
            blocks.append(f"## {heading}\n\n" + "\n".join(render(d)))
    return "\n\n".join(blocks)


def readme_table() -> str:
    runs = pairs()
    if not runs:
        return "No results in bench/results/ yet."
    lines = headline(runs, load("peer_decode"), load("train_speed_cuda"), load("cpu12_recipe"))
    return "\n".join(
        lines + ["", "Every table, with how each was measured: [docs/results.md](docs/results.md)."]
    )


def with_block(path: Path, block: str) -> str:
    """The text of `path` with its results block replaced by `block`."""
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        sys.exit(f"{path}: no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + "\n" + block + "\n" + END + tail


def rendered() -> dict[Path, str]:
    """Each file this script writes, as it should read now."""
    return {
        README: with_block(README, readme_table()),
        RESULTS_PAGE: with_block(RESULTS_PAGE, results_page()),
    }


def stale() -> dict[Path, str]:
    """Each file whose committed text differs from what the results render to, with that text."""
    return {p: t for p, t in rendered().items() if p.read_text(encoding="utf-8") != t}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    out_of_date = stale()
    names = ", ".join(str(p.relative_to(ROOT)) for p in out_of_date)
    if args.check:
        if out_of_date:
            print(f"out of date: {names} (run python bench/readme_tables.py)")
        return 1 if out_of_date else 0
    for path, text in out_of_date.items():
        path.write_text(text, encoding="utf-8")
    print(f"updated {names or 'nothing: already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
