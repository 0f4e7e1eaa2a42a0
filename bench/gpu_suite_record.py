"""The record of one part of `bench/gpu_suite.sh`: what ran, for how long, how it ended,
on which machine and commit.

    python bench/gpu_suite_record.py part PART MODE STEPS_TSV RESULTS_DIR
    python bench/gpu_suite_record.py pending OUT_JSON

`part` reads the tab-separated lines (name, timeout s, seconds, exit status, output
file, command) that gpu_suite.sh appended for each measurement and writes
RESULTS_DIR/gpu_suite_PART.json. `pending` writes the note that stands in bench/results/
until the suite has run on a GPU: not measured, and what the suite will measure.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what the parts measure, for the pending note and each part's record
PLAN = {
    "part1": "prepare Multi30k de-en (if needed); bench/train_speed.py on "
    "configs/multi30k_de_en_gpu.yaml (fp32, bf16, bf16+compile) and "
    "configs/multi30k_de_en_base_gpu.yaml (bf16): real target tokens/s, step time, "
    "peak memory, MFU against the measured and the datasheet peak",
    "part2": "tfx train configs/multi30k_de_en_gpu.yaml for at most MINUTES minutes (early "
    "stopping on validation BLEU), then tfx evaluate best.pt on test_2016_flickr, greedy "
    "and beam 5 (sacreBLEU, chrF)",
    "part3": "bench/decode_speed.py --device cuda: greedy search, fp32 and bf16, at "
    "batch 64 and 512, on the first 10,000 training sentences, with part2's best.pt "
    "(or a 1.5-minute model when part2 did not run on this machine)",
}
STATUS = {0: "ok", 124: "timed out", 137: "killed at its time limit"}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def machine() -> dict:
    """CPU model and flags, cores, and the GPU as nvidia-smi and torch name it."""
    model, flags = platform.processor() or platform.machine(), []
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        if key.strip() == "flags":
            flags = sorted(value.split())
            break
    info = {"cpu": model, "cores": os.cpu_count(), "cpu_flags": flags, "gpu": None}
    if shutil.which("nvidia-smi"):
        query = ["--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        smi = subprocess.run(["nvidia-smi", *query], capture_output=True, text=True)
        info["gpu"] = smi.stdout.strip() or None
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_available"] = torch.cuda.is_available()
    except ImportError:
        info["torch"] = None
    return info


def stamp() -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "worktree_clean": not git("status", "--porcelain", "--untracked-files=no"),
    }


def part(name: str, mode: str, steps_tsv: Path, results: Path) -> None:
    steps = []
    for line in steps_tsv.read_text().splitlines() if steps_tsv.exists() else []:
        step, timeout, seconds, rc, output, command = line.split("\t", 5)
        steps.append(
            {
                "name": step,
                "timeout_s": int(timeout),
                "seconds": int(seconds),
                "exit_status": int(rc),
                "status": STATUS.get(int(rc), "failed"),
                "output": output or None,
                "command": command,
            }
        )
    record = {
        "part": name,
        "mode": mode,  # gpu, or dry-run: tiny settings on the CPU, figures mean nothing
        "measures": PLAN.get(name, ""),
        **stamp(),
        "machine": machine(),
        "steps": steps,
    }
    out = results / f"gpu_suite_{name}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    done = sum(s["status"] == "ok" for s in steps)
    print(f"{name} ({mode}): {done} of {len(steps)} steps ok; wrote {out}")


def pending(out: Path) -> None:
    note = {
        "status": "not measured: no GPU",
        **stamp(),
        "script": "bench/gpu_suite.sh part1|part2|part3 (each under 10 minutes)",
        "will_measure": PLAN,
        "goals_one_h200_bf16": {
            "small config, real target tokens/s": ">= 400k",
            "base config, real target tokens/s": ">= 600k (~18% MFU)",
            "Multi30k de-en test_2016 sacreBLEU within 10 minutes of training": ">= 41",
            "greedy decoding of >= 10k sentences, target tokens/s": ">= 50k",
        },
        "dry_run": "bench/gpu_suite.sh all --dry-run ran the same commands on the CPU "
        "with tiny settings, writing to bench/out/gpu_suite/",
    }
    out.write_text(json.dumps(note, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["part"] and len(sys.argv) == 6:
        part(sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5]))
    elif sys.argv[1:2] == ["pending"] and len(sys.argv) == 3:
        pending(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
