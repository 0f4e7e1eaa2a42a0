"""bench/gpu_suite.sh's frame, without a GPU: it refuses a call without a part, and each
part's record says which step ran out of time. (The dry run, `bash bench/gpu_suite.sh all
--dry-run`, runs every command on the CPU; it takes minutes, so it is not a test.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_suite_needs_a_part():
    for args in ([], ["part4"]):
        done = subprocess.run(
            ["bash", "bench/gpu_suite.sh", *args], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 2
        assert "usage" in done.stderr


def test_a_parts_record_names_each_steps_ending(tmp_path):
    steps = tmp_path / "steps.tsv"
    steps.write_text(
        "train_speed small\t140\t12\t0\tout/a.json\tpython bench/train_speed.py\n"
        "train_speed compile\t180\t180\t124\t\tpython bench/train_speed.py --variants x\n"
    )
    record = [sys.executable, "bench/gpu_suite_record.py", "part", "part1", "dry-run"]
    subprocess.run([*record, str(steps), str(tmp_path)], cwd=ROOT, check=True)
    written = json.loads((tmp_path / "gpu_suite_part1.json").read_text())
    assert [s["status"] for s in written["steps"]] == ["ok", "timed out"]
    assert written["steps"][1]["output"] is None
    assert written["mode"] == "dry-run"
    assert written["commit"]
