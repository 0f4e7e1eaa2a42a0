"""The tables of docs/results.md about CPU kinds and precision, for bench/readme_tables.py:
auto's choice of precision, the 12-minute recipe's tries, bf16 against fp32 decoding."""

from __future__ import annotations


def flags_of(d: dict) -> str:
    """A run's CPU as the tables name it: model, bf16 flags, and any emulation."""
    if "cpu_flags" not in d:  # recorded before runs named their CPU
        return d["machine"]
    flags = [f for f in d["cpu_flags"] if "bf16" in f or f.startswith("amx")]
    cpu = d.get("cpu_model") or "CPU"
    if d.get("cpu_emulation"):
        caps = " ".join(f"{k}={v}" for k, v in d["cpu_emulation"].items())
        return f"{cpu} emulating an AVX2-only CPU (`{caps}`)"
    has = ", ".join(flags) if flags else "no bf16 units"
    return f"{cpu}, {has}" if "avx512f" in d.get("cpu_flags", []) else f"{cpu}, AVX2, {has}"


def cpu_precision(d: dict) -> list[str]:
    """fp32 against bf16 on the 12-minute protocol, paired, two seeds each."""
    lines = [
        "`bash bench/multi30k.sh de_en 12 --set model.norm=pre --set train.precision=P --set "
        "train.seed=S`: `configs/multi30k_de_en.yaml` pre-norm, warmup 400, peak learning rate "
        "1.98e-3, 2 threads, `train.max_minutes=12`. One run at a time, alternating fp32 and "
        f"bf16 ({d['date']}, {d['machine']}, CPU flags {' '.join(d['cpu_flags'])}, torch "
        f"{d['torch']}); test_2016_flickr BLEU of `best.pt`. Validation loss is compared at "
        "equal update counts.",
        "",
        "| precision | seed | updates | tokens/s | valid loss @200 | @400 | last valid BLEU "
        "| test greedy (best.pt) | test beam 5 (best.pt) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["runs"]:
        loss = r["valid_loss_by_step"]
        lines.append(
            f"| {r['precision']} | {r['seed']} | {r['updates']} | {r['tokens_per_s']:,} | "
            f"{loss['200']} | {loss['400']} | {r['valid_bleu_last']} | "
            f"{r['test_bleu_greedy']['best.pt']} | {r['test_bleu_beam5']['best.pt']} |"
        )
    return lines


def ran_on(t: dict) -> str:
    """A try's CPU and training precision, as the recipe's tables name them."""
    cpu = "AVX2 (emulated)" if t["avx2_emulated"] else "native"
    return f"{cpu} | {t.get('precision') or 'fp32'}"


def cpu12_recipe(d: dict) -> list[str]:
    """The tries of the 12-minute recipe by validation BLEU, then the chosen one's test."""
    lines = [
        "`bash bench/cpu12_try.sh NAME --set ...` (`AVX2=1` for the emulated AVX2-only CPU): "
        "`configs/multi30k_de_en_cpu12.yaml` with the settings shown, 12 minutes of "
        f"`train.max_minutes` on 2 threads, judged on the validation set only ({d['date']}, "
        f"{d['machine']}, CPU flags {' '.join(d['cpu_flags'])}, torch {d['torch']}). "
        f"Chosen: **{d['chosen']}**. The AVX2 rows are an emulation, not an AVX2-only CPU: "
        "this CPU with `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 "
        "MKL_ENABLE_INSTRUCTIONS=AVX2`, under which `auto` picks fp32.",
        "",
        "| try | CPU | precision | settings | updates | tokens/s | valid loss | valid BLEU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in sorted(d["tries"], key=lambda t: -t["valid_bleu"]):
        sets = f"`{t['sets'].replace('--set ', '')}`" if t["sets"] else "(see below)"
        lines.append(
            f"| {t['name']} | {ran_on(t)} | {sets} | {t['updates']} | "
            f"{t['tokens_per_s']:,.0f} | {t['valid_loss']:.3f} | {t['valid_bleu']:.2f} |"
        )
    notes = [f"- {t['name']}: {t['note']}" for t in d["tries"] if t.get("note")]
    lines += ["", *notes] if notes else []
    tested = [t for t in d["tries"] if "test" in t]
    if tested:
        lines += [
            "",
            "test_2016_flickr, scored once, for the chosen recipe on each CPU kind (`best.pt`):",
            "",
            "| try | CPU | precision | updates | decoded in | test BLEU greedy "
            "| test BLEU beam 5 |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in tested:
            lines.append(
                f"| {t['name']} | {ran_on(t)} | {t['updates']} | "
                f"{t.get('test_decode_precision', 'fp32')} (auto) | "
                f"**{t['test']['beam1']:.2f}** | {t['test']['beam5']:.2f} |"
            )
    return lines


def decode_precision(d: dict) -> list[str]:
    """bf16 against fp32 decoding: the BLEU difference `auto` is held to, and the speed."""
    lines = [
        f"{d['what']} ({d['date']}, commit {d['commit']}, {d['machine']['cpus']} cores, CPU "
        f"flags {' '.join(d['cpu_flags'])}, torch {d['machine']['torch']}). `decode.precision: "
        f"auto` takes bf16 where training's does only if bf16 stays within "
        f"{d['threshold_bleu']} BLEU of fp32 here.",
        "",
        "| split | search | fp32 BLEU | bf16 BLEU | bf16 - fp32 | fp32 sentences/s "
        "| bf16 sentences/s | bf16 / fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split, got in d["splits"].items():
        rows = {r["search"]: r for r in got["results"]}
        for search in ("greedy", "beam5"):
            a, b = rows[search], rows[f"{search}_bf16"]
            lines.append(
                f"| {split} | {search} | {a['bleu']:.2f} | {b['bleu']:.2f} | "
                f"{b['bleu'] - a['bleu']:+.2f} | {a['sentences_per_s']:.0f} | "
                f"{b['sentences_per_s']:.0f} | {b['sentences_per_s'] / a['sentences_per_s']:.2f}x |"
            )
    return lines
