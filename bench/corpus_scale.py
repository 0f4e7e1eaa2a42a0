"""`tfx prepare` at scale: time, memory and cache size over corpora of N distinct pairs,
beside what a user would do instead (Hugging Face `datasets`) and the limit (SentencePiece
alone); and how long `tfx train` takes to start on the cache.

    .venv/bin/python bench/corpus_scale.py --sizes 1M 4M 16M [--work /big/disk]
    .venv/bin/python bench/corpus_scale.py --sizes 20k        # a quick check, end to end

For each size, offline, in a temp dir under --work (removed after the size, unless --keep):
  - the corpus: N distinct de-en pairs written as train.{de,en}, each pair two Multi30k
    pairs joined (pair a with pair a+1+k for block k), so the text is real and lines are
    about twice Multi30k's length; val and test_2016_flickr are Multi30k's own;
  - `tfx prepare` (configs/multi30k_de_en.yaml): wall time, peak RSS (the kernel's VmHWM,
    from wait4), peak RssAnon (polled every 50 ms, summed over the process tree), its
    stderr lines with the second each appeared (its stages), and the cache's bytes per
    piece: the encoded split files (neither spm*, meta.json nor the raw .txt references)
    over meta.json's splits.*.pieces;
  - `tfx train` with a tiny model for 10 steps (log_every 1): the time from the process's
    start to its first metrics.jsonl record, RssAnon when the step-10 record appears,
    and the peak over the run (the final validation included);
  - `datasets`: `Dataset.from_generator` over the same lines, then `.map(batched=True,
    num_proc=os.cpu_count())` with the cache's SentencePiece model, to Arrow in a temp dir;
  - SentencePiece alone: `encode(chunk, num_threads=os.cpu_count())` over chunks of 20,000
    lines, the ids discarded.
Every route runs in its own process, measured alike. Sums over processes count shared
(copy-on-write) pages once per process: an upper bound. Only the CLI and the cache's files
are used, never tfx's internals. Writes bench/results/corpus_scale.json (or --out) after
each size, and prints a markdown table. Disk: 16M pairs need about 25 GB free under --work
(text 4.5 GB, tfx's cache 4 GB, `datasets`' Arrow 12 GB). --multi30k: where
{train,val,test_2016_flickr}.{de,en}.gz are (default ../shared/data/multi30k).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gzip
import itertools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from machine import cpu_record  # noqa: E402

MULTI30K = REPO.parent / "shared" / "data" / "multi30k"
CHUNK = 20_000
DEFAULT = ("1M", "4M", "16M")
SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
TINY = ["model.d_model=64", "model.heads=2", "model.enc_layers=1", "model.dec_layers=1",
        "model.d_ff=128", "train.max_steps=10", "train.log_every=1", "train.eval_every=1000",
        "decode.max_len_a=0", "decode.max_len_b=8"]  # fmt: skip


def sized(text: str) -> tuple[str, int]:
    """1M, 250k, 1.5m, 10000 -> (the label, a count of pairs)."""
    found = re.fullmatch(r"([0-9.]+)([kKmM]?)", text)
    if not found:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 10000, 250k, 1M)")
    scale = {"": 1, "k": 10**3, "m": 10**6}[found.group(2).lower()]
    return text, int(float(found.group(1)) * scale)


def read_gz(source: Path, stem: str, lang: str) -> list[str]:
    with gzip.open(source / f"{stem}.{lang}.gz", "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def write_corpus(data: Path, n: int, source: Path) -> None:
    """train.{de,en}: n distinct pairs, one block of len(base) pairs at a time."""
    train = (read_gz(source, "train", "de"), read_gz(source, "train", "en"))
    base = sorted(set(zip(*train, strict=True)))
    m = len(base)
    assert n <= m * (m - 1), f"at most {m * (m - 1)} distinct pairs"
    with open(data / "train.de", "w") as de, open(data / "train.en", "w") as en:
        for k in range(-(-n // m)):
            pairs = [(base[a], base[(a + 1 + k) % m]) for a in range(min(m, n - k * m))]
            de.write("".join(f"{x[0]} {y[0]}\n" for x, y in pairs))
            en.write("".join(f"{x[1]} {y[1]}\n" for x, y in pairs))
    for stem in ("val", "test_2016_flickr"):
        for lang in ("de", "en"):
            text = "".join(f"{s}\n" for s in read_gz(source, stem, lang))
            (data / f"{stem}.{lang}").write_text(text)


def status_kib(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {
        k: int(v.split()[0])
        for k, v in (line.split(":", 1) for line in text.splitlines())
        if k in ("VmRSS", "RssAnon")
    }


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):  # the task or process has ended
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def watch(cmd: list[str], logs: Path, on_tick=None, timeout: float = 0) -> dict:
    """Run `cmd` (stdout/stderr to logs.*), polling its process tree's memory every 50 ms,
    and timing its stderr lines (prepare's stages) as they come."""
    mib = 1 / 1024
    peak_anon = peak_rss = 0
    lines: list = []
    pending = ""
    with (
        open(f"{logs}.out", "w") as out,
        open(f"{logs}.err", "w") as err,
        open(f"{logs}.err", errors="replace") as reader,
    ):
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, start_new_session=True)
        while True:
            pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            seen = {p: status_kib(p) for p in tree(proc.pid)}
            anon = sum(s.get("RssAnon", 0) for s in seen.values())
            peak_anon = max(peak_anon, anon)
            peak_rss = max(peak_rss, sum(s.get("VmRSS", 0) for s in seen.values()))
            elapsed = time.perf_counter() - started
            *done, pending = (pending + reader.read()).split("\n")
            lines += [[round(elapsed, 2), x[:200]] for x in done if x.strip()][: 40 - len(lines)]
            if on_tick:
                on_tick(elapsed, round(anon * mib))
            if timeout and elapsed > timeout:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this run started
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(code)
    return {
        "rc": proc.returncode,
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mib": round(usage.ru_maxrss * mib),  # VmHWM of the largest one process
        "peak_tree_rss_mib": round(peak_rss * mib),  # VmRSS summed over the tree
        "peak_anon_mib": round(peak_anon * mib),
        "stderr_lines": lines,  # [seconds since the start when seen, line], the first 40
        "stderr_tail": Path(f"{logs}.err").read_text(errors="replace")[-1500:],
    }


def tfx(command: str, data: Path, run_dir: Path, config: str, more: list[str]) -> list[str]:
    sets = [f"data.{k}={v}" for k, v in SPLITS.items()]
    sets += ["data.source=files", "data.format=text", "data.src_lang=de", "data.tgt_lang=en"]
    sets += [f"data.dir={data}", f"run_dir={run_dir}", *more]
    cmd = [sys.executable, "-m", "transformer_cli", command, "--config", config]
    return cmd + [x for s in sets for x in ("--set", s)]


def cache_sizes(cache: Path) -> dict:
    """Bytes of the encoded split files per piece, and of the whole cache."""
    meta = json.loads((cache / "meta.json").read_text())
    pieces = sum(s["pieces"]["src"] + s["pieces"]["tgt"] for s in meta["splits"].values())
    files = [f for f in cache.iterdir() if f.is_file() and not f.name.startswith(".")]
    encoded = [f for f in files if f.name.split(".")[0] in meta["splits"]]
    split_bytes = sum(f.stat().st_size for f in encoded if f.suffix != ".txt")
    return {
        "kept": meta["splits"]["train"]["kept"],
        "pieces": pieces,
        "split_bytes": split_bytes,
        "cache_bytes": sum(f.stat().st_size for f in files),
        "bytes_per_piece": round(split_bytes / pieces, 3),
        "meta_seconds": meta.get("seconds"),
    }


def train_startup(data: Path, run_dir: Path, args) -> dict:
    """`tfx train` with a tiny model for 10 steps; its first record and its step 10."""
    seen: dict = {}
    log = run_dir / "metrics.jsonl"

    def tick(elapsed: float, anon_mib: int) -> None:
        if "step10_s" in seen or not log.exists():
            return
        steps = [json.loads(x).get("step", 0) for x in log.read_text().splitlines() if x]
        if steps:
            seen.setdefault("first_step_s", round(elapsed, 2))
        if max(steps, default=0) >= 10:
            seen.update(step10_s=round(elapsed, 2), step10_anon_mib=anon_mib)

    cmd = tfx("train", data, run_dir, args.config, [*args.set, *TINY])
    result = watch(cmd, run_dir.parent / "train", tick, args.timeout)
    return {**seen, **result}


def route(kind: str, data: Path, cache: Path, work: Path, timeout: float) -> dict:
    """One of the comparison routes, in its own process, measured as tfx is."""
    cmd = [sys.executable, __file__, "--route", kind, "--data", str(data), "--cache", str(cache)]
    result = watch([*cmd, "--work", str(work)], work / kind, timeout=timeout)
    if result["rc"] == 0:
        result.update(json.loads(Path(f"{work / kind}.out").read_text().splitlines()[-1]))
    return result


def spm_models(cache: Path) -> tuple[str, str]:
    joint = cache / "spm.model"
    if joint.exists():
        return str(joint), str(joint)
    return str(cache / "spm.src.model"), str(cache / "spm.tgt.model")


def chunks(path: Path | str):
    """The file's lines, CHUNK at a time, newlines stripped."""
    with open(path, encoding="utf-8") as f:
        while chunk := [line.rstrip("\n") for line in itertools.islice(f, CHUNK)]:
            yield chunk


def pairs(src: str, tgt: str):
    for s, t in zip(chunks(src), chunks(tgt), strict=True):
        yield from ({"src": a, "tgt": b} for a, b in zip(s, t, strict=True))


@functools.cache
def processor(model: str):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=model)


def encode_batch(batch: dict, models: tuple[str, str]) -> dict:
    sp = [processor(m) for m in models]  # loaded once per worker process
    return {"src_ids": sp[0].encode(batch["src"]), "tgt_ids": sp[1].encode(batch["tgt"])}


def run_datasets(data: Path, cache: Path, work: Path) -> dict:
    import datasets
    import pyarrow.compute as pc

    started = time.perf_counter()
    paths = {"src": str(data / "train.de"), "tgt": str(data / "train.en")}
    ds = datasets.Dataset.from_generator(pairs, gen_kwargs=paths, cache_dir=str(work / "hf"))
    ds = ds.map(encode_batch, batched=True, num_proc=os.cpu_count(),
                fn_kwargs={"models": spm_models(cache)}, remove_columns=["src", "tgt"])  # fmt: skip
    seconds = time.perf_counter() - started
    pieces = sum(pc.sum(pc.list_value_length(ds.data.column(c))).as_py() for c in ds.column_names)
    arrow = sum(os.path.getsize(f["filename"]) for f in ds.cache_files)
    return {"work_s": round(seconds, 2), "pieces": pieces, "arrow_bytes": arrow,
            "bytes_per_piece": round(arrow / pieces, 3)}  # fmt: skip


def run_spm(data: Path, cache: Path) -> dict:
    import sentencepiece

    started, pieces = time.perf_counter(), 0
    for model, name in zip(spm_models(cache), ("train.de", "train.en"), strict=True):
        sp = sentencepiece.SentencePieceProcessor(model_file=model)
        for chunk in chunks(data / name):
            pieces += sum(map(len, sp.encode(chunk, num_threads=os.cpu_count())))
    return {"work_s": round(time.perf_counter() - started, 2), "pieces": pieces}


def one_size(n: int, label: str, args) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"corpus_scale_{label}_", dir=args.work))
    try:
        return measure(n, label, work, args)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work)  # the temp dir this size made, and only it


def measure(n: int, label: str, work: Path, args) -> dict:
    data, run_dir = work / "data", work / "run"
    data.mkdir()
    started = time.perf_counter()
    write_corpus(data, n, Path(args.multi30k))
    record = {"size": label, "pairs": n, "generate_s": round(time.perf_counter() - started, 2)}
    print(f"{label}: {n:,} pairs written in {record['generate_s']} s", file=sys.stderr)
    cmd = tfx("prepare", data, run_dir, args.config, args.set)
    record["prepare"] = prepare = watch(cmd, work / "prepare", timeout=args.timeout)
    if prepare["rc"] == 0:
        prepare.update(cache_sizes(run_dir / "cache"))
        record["train"] = train_startup(data, run_dir, args)
        for kind in ("datasets", "spm"):
            record[kind] = route(kind, data, run_dir / "cache", work, args.timeout)
    return record


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO).stdout.strip()


def table(records: list[dict]) -> str:
    head = ("size | kept | prepare s | RSS MiB | anon MiB | B/piece | train 1st step s | "
            "train anon MiB | datasets s | datasets anon MiB | spm s")  # fmt: skip
    rows = [head, "|".join("---" for _ in head.split("|"))]
    for r in records:
        p, t, d, s = (r.get(k, {}) for k in ("prepare", "train", "datasets", "spm"))
        cells = [r["size"], p.get("kept", f"rc {p['rc']}"), p["seconds"], p["peak_rss_mib"],
                 p["peak_anon_mib"], p.get("bytes_per_piece"), t.get("first_step_s"),
                 t.get("peak_anon_mib"), d.get("seconds"), d.get("peak_anon_mib"),
                 s.get("seconds")]  # fmt: skip
        rows.append(" | ".join("-" if c is None else str(c) for c in cells))
    return "\n".join(f"| {row} |" for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=sized, default=[sized(s) for s in DEFAULT])
    parser.add_argument("--multi30k", default=str(MULTI30K), help="its {split}.{de,en}.gz")
    parser.add_argument("--config", default=str(REPO / "configs" / "multi30k_de_en.yaml"))
    parser.add_argument("--set", action="append", default=[], help="config override (all runs)")
    parser.add_argument("--work", default=None, help="where the temp dirs go (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep each size's corpus and caches")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per command")
    parser.add_argument("--out", default=str(HERE / "results" / "corpus_scale.json"))
    for hidden in ("--route", "--data", "--cache"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.route:
        data, cache, work = Path(args.data), Path(args.cache), Path(args.work)
        done = run_datasets(data, cache, work) if args.route == "datasets" else run_spm(data, cache)
        print(json.dumps(done))
        return
    args.config = str(Path(args.config).resolve())
    os.environ.update(
        HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1"
    )
    out, records = Path(args.out), []
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": git("status", "--porcelain", "--", "transformer_cli") != "",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        **cpu_record(),
        "config": os.path.relpath(args.config, REPO),
        "overrides": args.set,
        "train_overrides": TINY,
        "records": records,
    }
    for label, n in args.sizes:  # written after each size: a big one may run for hours
        records.append(one_size(n, label, args))
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(records))


if __name__ == "__main__":
    main()
