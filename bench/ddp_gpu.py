"""On a GPU machine: world size 1 under torchrun (NCCL) against plain `tfx train`, and,
with two or more GPUs, the scaling of the small and base configs over them.

    .venv/bin/python bench/ddp_gpu.py --steps 300                    # where the GPUs are
    .venv/bin/python bench/ddp_gpu.py --device cpu --steps 3 --sizes small   # a dry run

Both sizes train on the toy corpus (it ships with tfx, so the GPU machine needs no
download): `small` is the Multi30k configs' model (d_model 256, 3+3 layers, 4 heads, ffn
1024), `base` the paper's (512, 6+6, 8, 2048), at 4,096 and 8,192 tokens per rank.
Each run is a real `tfx train` (`--nproc K` for the torchrun ones), and reports the
training loop's own real target tokens/s (the summary's; validation and start-up left
out). World size 1 under torchrun must train the
same model as the plain run: the largest weight difference is reported (CUDA kernels are
not all deterministic, so it is small rather than 0), with the overhead in tokens/s.
Scaling efficiency at K GPUs is tokens/s(K) / (K x tokens/s(1)), at `train.batch_tokens`
per rank. Writes bench/out/ddp_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ddp_scaling import ROOT, machine, tfx, weight_difference  # noqa: E402

CONFIG = "configs/toy.yaml"
SIZES = {
    "small": {"model.d_model": 256, "model.enc_layers": 3, "model.dec_layers": 3,
              "model.heads": 4, "model.d_ff": 1024, "train.batch_tokens": 4096},
    "base": {"model.d_model": 512, "model.enc_layers": 6, "model.dec_layers": 6,
             "model.heads": 8, "model.d_ff": 2048, "train.batch_tokens": 8192},
}  # fmt: skip


def train(size: str, run_dir: Path, steps: int, device: str, nproc: int | None) -> dict:
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    for stale in ("metrics.jsonl", "config.yaml"):
        (run_dir / stale).unlink(missing_ok=True)
    sets = {
        "run_dir": run_dir,
        "train.max_steps": steps,
        "train.eval_every": 10 * steps,
        "train.log_every": steps,
        "train.device": device,
        "train.max_minutes": 0,
        "train.patience": 0,
        "train.precision": "auto",
        "train.threads": 0,
        **SIZES[size],
    }
    command = tfx("train", "--config", CONFIG, *(f"--set={k}={v}" for k, v in sets.items()))
    if nproc is not None:
        command += ["--nproc", str(nproc)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{command}: exit {done.returncode}\n{done.stderr[-3000:]}")
    speed = float(done.stdout.split(" target tokens/s")[0].split()[-1])
    first = next(line for line in done.stderr.splitlines() if line.startswith("training "))
    return {"nproc": nproc, "tokens_per_s": speed, "first_line": first}


def prepared(base: Path, name: str) -> Path:
    run_dir = base / name
    command = tfx("prepare", "--config", CONFIG, f"--set=run_dir={run_dir}")
    subprocess.run(command, cwd=ROOT, check=True)
    return run_dir


def gpus(device: str) -> int:
    import torch

    return torch.cuda.device_count() if device == "cuda" else 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="small,base", help="what the scaling runs train")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=str(HERE / "out" / "ddp_gpu.json"))
    args = parser.parse_args()
    base = HERE / "out" / "ddp_gpu"
    result: dict = {"bench": " ".join(sys.argv), **machine(), "device": args.device}
    run_dir = prepared(base, "small")
    plain = train("small", run_dir, args.steps, args.device, None)
    shutil.copytree(run_dir, base / "plain", dirs_exist_ok=True)
    one = train("small", run_dir, args.steps, args.device, 1)
    result["world_size_1"] = {
        "plain": plain,
        "torchrun_1": one,
        "overhead": round(1 - one["tokens_per_s"] / plain["tokens_per_s"], 4),
        "max_weight_difference": weight_difference(base / "plain", run_dir),
    }
    print(json.dumps(result["world_size_1"], indent=1), flush=True)
    n = gpus(args.device)
    for name in args.sizes.split(",") if n >= 2 else []:
        run_dir = prepared(base, name)
        runs = [train(name, run_dir, args.steps, args.device, k) for k in range(1, n + 1)]
        single = runs[0]["tokens_per_s"]
        for k, r in enumerate(runs, start=1):
            r["efficiency"] = round(r["tokens_per_s"] / (k * single), 3)
        result[f"scaling_{name}"] = runs
        print(json.dumps(runs, indent=1), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
