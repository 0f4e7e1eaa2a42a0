"""Gather the tries of the 12-minute CPU recipe (bench/out/cpu12_tries.jsonl, written by
bench/cpu12_try.sh) into bench/out/cpu12_recipe.json, with the machine they ran on.

    .venv/bin/python bench/cpu12_collect.py CHOSEN [--drop NAME ...]

CHOSEN names the try whose settings became configs/multi30k_de_en_cpu12.yaml; the tries
run with TEST=1 (the chosen recipe, once per CPU kind) carry its test_2016 scores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
from pathlib import Path

import torch
from machine import cpu_record

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chosen")
    parser.add_argument("--drop", nargs="*", default=[], help="tries to leave out (reruns)")
    args = parser.parse_args()
    tries = [json.loads(line) for line in (OUT / "cpu12_tries.jsonl").read_text().splitlines()]
    tries = [t for t in tries if t["name"] not in args.drop]
    record = cpu_record()
    record.pop("cpu_emulation")  # each try says whether it ran emulated
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {subprocess.getoutput('nproc')} cores",
        **record,
        "torch": torch.__version__.split("+")[0],
        "chosen": args.chosen,
        "tries": tries,
    }
    (OUT / "cpu12_recipe.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(tries)} tries -> {OUT / 'cpu12_recipe.json'}")


if __name__ == "__main__":
    main()
