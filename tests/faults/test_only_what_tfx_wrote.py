"""tfx deletes only what tfx wrote (docs/reliability.md, "What tfx deletes or replaces").

What a user keeps in a run dir (notes, their own config.yaml, files with temp-like names,
a lock file of their own) survives prepare, train and its pruning, evaluate, average and
export, while the litter of killed writes (tfx's own names) is still cleaned up; a
directory given where a file is written is refused; a killed export leaves the earlier
export whole, and the next export cleans up after it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml
from faultlib import kill_at, prepared_run, tiny_raw
from helpers import assert_one_line_error, cli, error_of, make_tiny_run

from transformer_cli.core import checkpoint
from transformer_cli.core.errors import TrainingError
from transformer_cli.training.lock import RunLock

pytestmark = pytest.mark.faults

# what a user may keep in a run dir; tfx must leave every byte of it
USERS = {
    "notes.txt": "what I tried\n",
    "cache/mine.txt": "my tokenizer notes\n",
    "cache/.draft.tmp": "an editor's temp file\n",
    "checkpoints/mine.txt": "which checkpoint was good\n",
    "checkpoints/.draft.tmp": "an editor's temp file\n",
    "checkpoints/.draft.link": "a shortcut\n",
    "checkpoints/ckpt_best_so_far.pt": "a copy I made\n",
    "eval/mine.txt": "my scores\n",
}
# what killed writes leave: tfx's own names, cleaned up by the next prepare or train
LITTER = [
    "cache/.train.pt.k2x9_abc.tmp",
    "checkpoints/.ckpt_00000002.pt.q1w2e3r4.tmp",
    "checkpoints/.last.pt.4242.link",
]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def ok(*args) -> None:
    result = cli(*args)
    assert result.exit_code == 0, result.output


def test_a_users_files_in_the_run_dir_survive_every_command(tmp_path, tmp_path_factory, toy_pairs):
    data, _ = prepared_run(tmp_path_factory, toy_pairs)
    run_dir = tmp_path / "run"
    for name, text in USERS.items():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text(text)
    for name in LITTER:
        (run_dir / name).write_bytes(b"half a file")
    # the user's own config lives in the run dir, under the name of tfx's resolved copy
    raw = tiny_raw(run_dir, data, max_steps=6, eval_every=2, keep_last=1)
    config = run_dir / "config.yaml"
    config.write_text("# my experiment: a smaller batch\n" + yaml.safe_dump(raw, sort_keys=False))
    mine = {**snapshot(run_dir), "config.yaml": config.read_bytes()}
    for name in LITTER:
        del mine[name]

    ok("prepare", "--config", config)
    ok("train", "--config", config, "--set", "train.lr=0.001")
    assert len(checkpoint.step_checkpoints(run_dir)) == 1  # pruned to keep_last
    last = run_dir / "checkpoints" / "last.pt"
    ok("evaluate", last, "--split", "valid", "--output-dir", run_dir / "eval")
    ((_, step),) = checkpoint.step_checkpoints(run_dir)
    ok("average", step, last, "-o", run_dir / "avg.pt")
    ok("plot", run_dir, "-o", run_dir / "curves.png")

    after = snapshot(run_dir)
    assert {name: after.get(name) for name in mine} == mine
    assert not [name for name in LITTER if name in after]


def test_a_directory_given_for_a_file_is_refused_and_kept(tmp_path, toy_pairs):
    cfg = make_tiny_run(tmp_path, toy_pairs)
    step = Path(cfg.run_dir) / "checkpoints" / "ckpt_00000010.pt"
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine\n")
    for args in (("translate", step, "a dog", "-o"), ("average", step, "-o")):
        assert_one_line_error(cli(*args, folder), f"{folder}: is a directory")
    assert sorted(os.listdir(folder)) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["data", "results", "run"]  # no temp file left


def test_a_lock_file_tfx_did_not_write_is_refused_not_taken_over(tmp_path):
    lock = tmp_path / "train.lock"
    long_ago = time.time() - 3600
    lock.write_text("reserved for the March run: do not train here\n")
    os.utime(lock, (long_ago, long_ago))
    message = error_of(RunLock(tmp_path).acquire, error=TrainingError)
    assert "is not a tfx training lock" in message
    assert lock.read_text() == "reserved for the March run: do not train here\n"
    lock.write_bytes(b"")  # tfx's: a trainer killed before it wrote "PID HOST"
    os.utime(lock, (long_ago, long_ago))
    with RunLock(tmp_path) as taken:
        assert lock.read_text().strip() == taken.owner
    assert not lock.exists()


def test_a_killed_export_leaves_the_earlier_one_and_the_next_cleans_up(tmp_path, toy_pairs):
    pytest.importorskip("ctranslate2")
    from transformer_cli.decoding.ct2_backend import is_export_dir

    cfg = make_tiny_run(tmp_path / "tiny", toy_pairs)
    step = Path(cfg.run_dir) / "checkpoints" / "ckpt_00000010.pt"
    exports = tmp_path / "exports"
    out = exports / "ct2"
    export = ["export", str(step), str(out), "--to", "ctranslate2"]
    ok(*export)
    before = snapshot(out)
    log, marker = tmp_path / "log", tmp_path / "paused"

    # killed while it writes: the new model is half in a temp sibling
    kill_at(export, log, "call|transformer_cli.export.ctranslate2.usage|1", marker)
    assert snapshot(out) == before
    partial, kept = sorted(p.name for p in exports.iterdir())
    assert partial.startswith(".ct2.tfx-new-")
    assert kept == "ct2"

    # killed between the two renames: the earlier export is whole, aside
    kill_at(export, log, "replace|ct2|1", marker)
    assert not out.exists()
    (aside,) = exports.glob(".ct2.tfx-old-*")
    assert snapshot(aside) == before

    ok(*export)
    assert is_export_dir(out)
    assert os.listdir(exports) == ["ct2"]  # both leftovers removed
