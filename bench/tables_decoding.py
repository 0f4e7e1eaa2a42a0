"""The tables of docs/results.md about decoding and what it is used for, for
bench/readme_tables.py: sampling's speed beside greedy search (bench/sampling_speed.py)
and the back-translation recipe (bench/backtranslation.sh)."""

from __future__ import annotations

from tables_cpu import flags_of

_NAMES = {
    "greedy": "greedy search",
    "sample": "`--sample` (the full distribution)",
    "sample_topk10": "`--sample --topk 10`",
    "sample_topp0.9": "`--sample --topp 0.9`",
    "sample_nbest4": "`--sample --nbest 4` (4 samples, scored)",
}


def sampling_speed(d: dict) -> list[str]:
    """Sampling's decode time against greedy search's, round by round."""
    lines = [
        f"`python bench/sampling_speed.py {d['checkpoint']} --split {d['split']}` "
        f"({d['date'][:10]}, commit {d['commit']}, {d['machine']}, {flags_of(d)}; CPU flags "
        f"{' '.join(d['cpu_flags'])}; {d['threads']} threads). The split's sources, encoded "
        f"beforehand, decoded at batch {d['batch_sentences']} by `decode_all`'s strategy, "
        "every configuration once per round; time against greedy is the median of the "
        "rounds' ratios, sentences/s the fastest round's. BLEU is of the first sample.",
        "",
        "| precision | decoding | sentences/s | time against greedy | BLEU |",
        "|---|---|---|---|---|",
    ]
    for run in d["runs"]:
        for name, row in run["configs"].items():
            lines.append(
                f"| {run['precision']} | {_NAMES.get(name, name)} | {row['sentences_per_s']:,.0f} "
                f"| {row['time_vs_greedy']:.2f}x | {row['bleu']:.2f} |"
            )
    return lines


def backtranslation(d: dict) -> list[str]:
    """The recipe's five de -> en runs on test_2016_flickr, and its three synthetic sets."""
    lines = [
        f"`bash bench/backtranslation.sh` ({d['date'][:10]}, commit {d['commit']}, "
        f"{d['machine']}, {flags_of(d)}; CPU flags {' '.join(d['cpu_flags'])}; "
        f"{d['threads']} threads). Multi30k de -> en; {d['updates_per_run']:,} updates per "
        "run, every run the same model and recipe; the checkpoint with the best validation "
        "BLEU, on test_2016_flickr (1,000 sentences), sacreBLEU. What each run is: "
        "[backtranslation.md](backtranslation.md).",
        "",
        "| training data | greedy BLEU | greedy chrF | beam 5 BLEU | beam 5 chrF "
        "| best validation BLEU (step) |",
        "|---|---|---|---|---|---|",
    ]
    for row in d["runs"].values():
        lines.append(
            f"| {row['data']} | {row['greedy_bleu']:.2f} | {row['greedy_chrf']:.2f} "
            f"| {row['beam5_bleu']:.2f} | {row['beam5_chrf']:.2f} "
            f"| {row['best_valid_bleu']:.2f} ({row['step']:,}) |"
        )
    lines += [
        "",
        "The synthetic German of the 14,500 monolingual English sentences, scored by the "
        "reverse model that wrote it (`tfx score --json`, mean log-probability per token). "
        "That en -> de model, trained on the parallel half for the same 1,000 updates, "
        f"reached validation BLEU {d['reverse_model']['best_valid_bleu']:.2f}:",
        "",
        "| back-translation | mean log-prob per token | mean tokens (pieces + EOS) |",
        "|---|---|---|",
    ]
    for row in d["synthetic_sets"].values():
        lines.append(
            f"| {row['method']} | {row['mean_log_prob_per_token']:.3f} | {row['mean_tokens']:.1f} |"
        )
    return lines + [
        "",
        "(The script records each back-translation's wall time too, in the JSON; the "
        "machine was not kept idle for them, so decoding speed is measured apart, paired: "
        "the table above.)",
    ]
