"""Render the benchmark results into README.md, so that no figure there is typed by hand.

    .venv/bin/python bench/readme_tables.py            # reads bench/results/*.json

The benchmark scripts write JSON to bench/out/ (not committed); copy a run worth keeping
to bench/results/ (committed), then run this. It replaces the text between
`<!-- results:begin -->` and `<!-- results:end -->` in README.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
RESULTS = HERE / "results"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def train_speed(d: dict) -> list[str]:
    peak = d.get("matmul_peak_gflops")  # absent from runs whose peak was not the device's
    mfu = (
        " MFU = achieved matmul FLOP/s (weights only, "
        f"{d['rows'][0]['flops_per_token'] / 1e6:.1f} MFLOP per target token) over the "
        f"measured matmul peak (fp32 {peak['fp32']:.0f}, bf16 {peak['bf16']:.0f} GFLOP/s)."
        if peak
        else ""
    )
    lines = [
        f"Training throughput (`bench/train_speed.py`, {d['date']}, commit {d['commit']}, "
        f"{d['machine']}; `{d['config']}` {' '.join(d['overrides'])}). Best of the "
        f"alternating rounds.{mfu}" + (f" {d['note']}" if "note" in d else ""),
        "",
        "| variant | malloc | real target tokens/s | all rounds | step (median) "
        "| target tokens/step | peak RSS |" + (" MFU vs fp32 peak |" if peak else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if peak else ""),
    ]
    for r in d["rows"]:
        lines.append(
            f"| {r['variant']} | {r.get('malloc', 'glibc')} | **{r['tokens_per_s']:.0f}** "
            f"| {r['tokens_per_s_all_rounds']} "
            f"| {r['step_ms_median']:.0f} ms | {r['target_tokens_per_step']:.0f} "
            f"| {r['peak_rss_gib']:.2f} GiB |"
            + (f" {100 * r['mfu_vs_fp32_peak']:.0f}% |" if peak else "")
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
        f"{d['commit']}; `{d['config']}` {' '.join(d['overrides'])}): the same real training "
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
        f"({onmt['date']}): `bash bench/multi30k.sh de_en 12 {tfx.get('overrides', '')}` and "
        f"`bash bench/peer_onmt.sh` ({onmt['config']}). Same data, model size, batch and "
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
        peak = speed["matmul_peak_gflops"]["fp32"]
        lines += [
            "",
            f"MFU of the 12-minute run against the measured fp32 matmul peak ({peak:.0f} "
            f"GFLOP/s, {flops / 1e6:.1f} MFLOP per target token): tfx "
            f"{tfx['tokens_per_s_mean'] * flops / 1e9 / peak:.0%}, OpenNMT-py "
            f"{onmt_rate * flops / 1e9 / peak:.0%}.",
        ]
    return lines


# The peers' figures on this kind of machine, from ../shared/bench/peers/RESULTS.md
# (OpenNMT-py 3.5.1, same model and data, 2 threads; ranges over its two runs).
PEER_TOKENS_PER_S = (2056, 2297)
PEER_PEAK_RSS_GIB = 2.41
PEER_GREEDY_BLEU_12MIN = 16.88  # warmup 400, test_2016, greedy
PEER_GREEDY_SENT_PER_S = (244, 357)
PEER_GREEDY_MEAN_PIECES = 10.1  # of the 357 sent/s run
PEER_BEAM5_SENT_PER_S = (60, 141)


def goals(
    speed: dict | None,
    m30k: dict | None,
    decode: dict | None,
    onmt: dict | None = None,
    race: dict | None = None,
) -> list[str]:
    """Each goal of the issues, the measured figure, and met or missed by how much."""
    rows = []
    peer_rss = min(PEER_PEAK_RSS_GIB, onmt["time"]["rss_gib"] if onmt else PEER_PEAK_RSS_GIB)

    def row(goal: str, measured: float, target: float, unit: str, higher_is_better=True):
        met = measured >= target if higher_is_better else measured <= target
        gap = measured / target - 1 if higher_is_better else target / measured - 1
        if met:
            verdict = "met"
        elif higher_is_better:
            verdict = f"missed by {abs(gap):.0%}"
        else:
            verdict = f"missed: {measured / target:.1f}x the target"
        rows.append(f"| {goal} | {measured:,.2f} {unit} | {target:,.2f} {unit} | {verdict} |")

    if speed:
        means = [
            sum(r["tokens_per_s_all_rounds"]) / len(r["tokens_per_s_all_rounds"])
            for r in speed["rows"]
        ]
        row(
            "training throughput, fastest variant, mean of rounds (>= 2x OpenNMT-py)",
            max(means),
            4400,
            "tok/s",
        )
    if m30k and onmt:
        row(
            "training throughput of the 12-minute run (>= 2x OpenNMT-py beside it)",
            m30k["tokens_per_s_mean"],
            2 * onmt["tok_s"],
            "tok/s",
        )
    if m30k:
        row(
            "peak memory of the 12-minute run (< OpenNMT-py)",
            m30k["peak_rss_gib"],
            peer_rss,
            "GiB",
            higher_is_better=False,
        )
        bleu = max(r["bleu"] for r in m30k["test"]["beam1"]["results"])
        row(
            "test_2016 greedy BLEU after 12 minutes (> OpenNMT-py's best run)",
            bleu,
            max(PEER_GREEDY_BLEU_12MIN, onmt["beam1"]["bleu"] if onmt else 0.0),
            "BLEU",
        )
        beam = max(r["bleu"] for r in m30k["test"]["beam5"]["results"])
        row("beam 5 BLEU above greedy", beam, bleu, "BLEU")
    if decode:
        full = {
            (r["search"], r["batch"], r["kv_cache"]): r
            for r in decode["results"]
            if r["set"] == "full"
        }
        # each decoding row of decode_speed.py against OpenNMT-py's best figure
        for search, goal, peer in [
            ("greedy", "greedy decoding, batch 64 (> OpenNMT-py's best)", PEER_GREEDY_SENT_PER_S),
            ("beam5", "beam-5 decoding, batch 64 (> OpenNMT-py's best)", PEER_BEAM5_SENT_PER_S),
            ("beam5_early", "beam-5 decoding, batch 64, with OpenNMT-py's stopping rule "
             "(> its best)", PEER_BEAM5_SENT_PER_S),
            ("greedy_bf16", "greedy decoding, batch 64, --precision bf16 (> OpenNMT-py's "
             "best, which is fp32)", PEER_GREEDY_SENT_PER_S),
            ("beam5_bf16", "beam-5 decoding, batch 64, --precision bf16 (> OpenNMT-py's "
             "best, which is fp32)", PEER_BEAM5_SENT_PER_S),
        ]:  # fmt: skip
            if (search, 64, True) in full:
                row(goal, full[(search, 64, True)]["sentences_per_s"], peer[1], "sent/s")
        # the peers' own decoding, for output length: OpenNMT-py's fastest greedy run
        # emitted 10.1 pieces per sentence on average (RESULTS.md, warmup-400 run)
        if ("greedy", 64, True) in full:
            row(
                "greedy decoding, batch 64, output pieces/s (> OpenNMT-py's best: 357 "
                "sent/s x 10.1 pieces)",
                full[("greedy", 64, True)]["pieces_per_s"],
                PEER_GREEDY_SENT_PER_S[1] * PEER_GREEDY_MEAN_PIECES,
                "pieces/s",
            )
        if race:
            row(
                "greedy decoding, batch 64, by turns with OpenNMT-py (faster)",
                race["speedup_sentences"],
                1.0,
                "x",
            )
        row(
            "KV cache speed-up, greedy batch 64, whole test set (>= 3x)",
            decode["checks"]["greedy_full_b64_cache_speedup"],
            3.0,
            "x",
        )
    if not rows:
        return []
    return [
        "Goals from the issues against these results (OpenNMT-py: the run beside tfx below, "
        "or the best figure in `../shared/bench/peers/RESULTS.md` where that is higher):",
        "",
        "| goal | measured | target | |",
        "|---|---|---|---|",
        *rows,
    ]


def main() -> None:
    blocks = []
    for name, render in [
        ("train_speed", train_speed),
        ("train_memory", train_memory),
        ("model_step", model_step),
        ("model_step_bf16", model_step),
        ("train_speed_paths", train_speed),
        ("train_speed_cuda", train_speed),
        ("model_step_cuda", model_step),
        ("model_step_bf16_cuda", model_step),
        ("decode_speed", decode_speed),
        ("linear_packing", linear_packing),
        ("peer_decode", peer_decode),
        ("multi30k_de_en", multi30k),
        ("multi30k_en_de", multi30k),
    ]:
        d = load(name)
        if d is not None:
            blocks.append("\n".join(render(d)))
    tfx, onmt = load("multi30k_de_en"), load("peer_onmt")
    if tfx and onmt:
        blocks.insert(0, "\n".join(side_by_side(tfx, onmt, load("train_speed"))))
    goal_rows = goals(load("train_speed"), tfx, load("decode_speed"), onmt, load("peer_decode"))
    if goal_rows:
        blocks.insert(0, "\n".join(goal_rows))
    text = README.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        sys.exit(f"{README}: no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + BEGIN + "\n" + "\n\n".join(blocks) + "\n" + END + tail)
    print(f"updated {README} from {len(blocks)} result files")


if __name__ == "__main__":
    main()
