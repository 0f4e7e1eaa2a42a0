"""Checkpoints: round trip, atomicity, corruption and pickle safety, pruning, resume, lock."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transformer_cli import __version__
from transformer_cli.core import checkpoint as ckpt
from transformer_cli.core.checkpoint import (
    MAGIC,
    best_path,
    capture_rng,
    find_resumable,
    last_path,
    load_checkpoint,
    remove_partial_writes,
    restore_rng,
    save_checkpoint,
    save_step,
    step_checkpoints,
    step_path,
)
from transformer_cli.core.config import Config, to_dict
from transformer_cli.core.errors import CheckpointError, TfxError
from transformer_cli.training.lock import RunLock


def training_state(step: int = 7) -> dict:
    """Everything the training loop stores, built from real objects."""
    torch.manual_seed(step)
    model = torch.nn.Linear(3, 4)
    opt = torch.optim.Adam(model.parameters(), betas=(0.9, 0.98))
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    return {
        "tfx_version": __version__,
        "config": to_dict(Config(run_dir="runs/x")),
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": torch.amp.GradScaler("cpu").state_dict(),
        "step": step,
        "epoch": 2,
        "batch_in_epoch": 13,
        "rng": capture_rng(),
        "spm": {"spm.model": bytes(range(256)) * 3},
        "metrics": {"best_bleu": 12.5, "best_step": step, "worst": float("-inf")},
    }


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict)
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b)
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b
        assert type(a) is type(b)


def test_training_state_round_trips_under_weights_only(tmp_path):
    state = training_state()
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert_same(state, loaded)
    assert (tmp_path / "c.pt").read_bytes().startswith(MAGIC)


def test_restored_rng_repeats_the_same_draws():
    rng = capture_rng()
    expected = (torch.rand(4), random.random())
    buffer = io.BytesIO()
    torch.save(rng, buffer)
    buffer.seek(0)
    torch.manual_seed(999)
    random.seed(999)
    restore_rng(torch.load(buffer, weights_only=True))
    got = (torch.rand(4), random.random())
    assert torch.equal(got[0], expected[0])
    assert got[1] == expected[1]


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1})

    real_dumps = ckpt.json.dumps

    def dumps_then_die(*args, **kwargs):  # the magic line is already written by now
        real_dumps(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.json, "dumps", dumps_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]  # no temp litter


def test_a_flipped_byte_anywhere_in_the_payload_is_detected(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, training_state())
    data = path.read_bytes()
    start = data.index(b"\n", len(MAGIC)) + 1
    for offset in (start, (start + len(data)) // 2, len(data) - 1):
        bad = bytearray(data)
        bad[offset] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match=r"corrupt \(checksum mismatch\): was it cut"):
            load_checkpoint(path)


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.99])
def test_a_truncated_file_is_detected(tmp_path, keep):
    path = tmp_path / "c.pt"
    save_checkpoint(path, training_state())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_files_that_are_not_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)
    plain = tmp_path / "plain.pt"
    torch.save({"a": 1}, plain)  # a bare torch.save zip
    with pytest.raises(CheckpointError, match="not a tfx checkpoint"):
        load_checkpoint(plain)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a tfx checkpoint"):
        load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "junk.pt").write_bytes(MAGIC + b"not json\n" + b"x" * 10)
    with pytest.raises(CheckpointError, match="unreadable header"):
        load_checkpoint(tmp_path / "junk.pt")


def test_an_unknown_format_version_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1})
    data = path.read_bytes().replace(b'"format": 1', b'"format": 9', 1)
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="format 9 is not supported"):
        load_checkpoint(path)


class Trap:
    """Unpickling this calls open(marker, "w"): it creates a file as a side effect."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def test_a_crafted_pickle_is_refused_without_running_it(tmp_path):
    # the trap is real: an unsafe unpickler runs it
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(Trap(armed))).close()
    assert armed.exists()

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    save_checkpoint(path, {"step": 1, "model": Trap(marker)})  # valid header and checksum
    ckpt.read_payload(path)  # the frame itself is intact
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_errors_are_one_line_tfx_errors(tmp_path):
    with pytest.raises(TfxError) as info:
        load_checkpoint(tmp_path / "missing.pt")
    assert "\n" not in str(info.value)


def test_keep_last_prunes_but_best_and_last_survive(tmp_path):
    run = tmp_path / "run"
    for step in range(100, 1100, 100):
        save_step(run, {"step": step}, step, keep_last=3, best=step == 200)
        assert len(step_checkpoints(run)) == min(3, step // 100)
    assert [s for s, _ in step_checkpoints(run)] == [800, 900, 1000]
    assert not step_path(run, 200).exists()
    assert load_checkpoint(best_path(run))["step"] == 200  # pruned step, bytes alive
    assert load_checkpoint(last_path(run))["step"] == 1000
    assert not best_path(run).is_symlink()
    assert not last_path(run).is_symlink()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.pt",
        "ckpt_00000800.pt",
        "ckpt_00000900.pt",
        "ckpt_00001000.pt",
        "last.pt",
    ]


def test_publish_falls_back_to_a_copy_without_hard_links(tmp_path, monkeypatch):
    def no_links(*_args, **_kwargs):
        raise OSError("links not supported")

    monkeypatch.setattr(ckpt.os, "link", no_links)
    run = tmp_path / "run"
    save_step(run, {"step": 1}, 1, keep_last=1, best=True)
    save_step(run, {"step": 2}, 2, keep_last=1)
    assert load_checkpoint(best_path(run))["step"] == 1
    assert load_checkpoint(last_path(run))["step"] == 2
    assert [s for s, _ in step_checkpoints(run)] == [2]


def test_find_resumable_prefers_last_and_skips_corrupt_files(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        find_resumable(run)
    for step in (1, 2, 3):
        save_step(run, {"step": step}, step, keep_last=5)
    path, state = find_resumable(run, warn=pytest.fail)
    assert path == last_path(run)
    assert state["step"] == 3

    # last.pt (and the step file it links to) cut short: fall back, and say so
    data = last_path(run).read_bytes()
    last_path(run).write_bytes(data[:-5])  # same inode: ckpt_3 is cut short too
    notes: list[str] = []
    path, state = find_resumable(run, warn=notes.append)
    assert path == step_path(run, 2)
    assert state["step"] == 2
    assert any("last.pt" in n for n in notes)
    assert any("ckpt_00000003.pt" in n for n in notes)

    for p in run.joinpath("checkpoints").iterdir():
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="none intact"):
        find_resumable(run, warn=notes.append)


def test_find_resumable_takes_a_step_file_newer_than_last(tmp_path):
    run = tmp_path / "run"
    save_step(run, {"step": 1}, 1, keep_last=5)
    save_checkpoint(step_path(run, 2), {"step": 2})  # died before relinking last.pt
    path, state = find_resumable(run, warn=pytest.fail)
    assert path == step_path(run, 2)
    assert state["step"] == 2


def test_remove_partial_writes(tmp_path):
    run = tmp_path / "run"
    save_step(run, {"step": 1}, 1, keep_last=5)
    litter = run / "checkpoints" / ".ckpt_00000002.pt.abc12_yz.tmp"  # as atomic_open names it
    litter.write_bytes(b"half")
    assert remove_partial_writes(run) == [litter]
    assert not litter.exists()
    assert step_path(run, 1).exists()


# ----------------------------------------------------------------------------- lock


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
    with RunLock(tmp_path) as lock:
        assert lock.path.read_text().split()[0] == str(os.getpid())
        with pytest.raises(TfxError, match=f"PID {os.getpid()}"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / "train.lock").exists()  # released on exit
    with RunLock(tmp_path):
        pass


def test_a_lock_held_by_another_process_is_refused(tmp_path):
    code = (
        "import sys, time; from transformer_cli.training.lock import RunLock\n"
        f"with RunLock({str(tmp_path)!r}):\n"
        "    print('held', flush=True); sys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(TfxError, match=f"PID {child.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        child.communicate("done\n", timeout=60)
    with RunLock(tmp_path):  # the child released it
        pass


def test_a_lock_of_a_dead_process_is_taken_over(tmp_path):
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = int(child.stdout)
    (tmp_path / "train.lock").write_text(f"{dead} {socket.gethostname()}\n")
    with RunLock(tmp_path) as lock:
        assert lock.path.read_text().split()[0] == str(os.getpid())
    assert not lock.path.exists()


def test_a_lock_from_another_host_is_not_second_guessed(tmp_path):
    (tmp_path / "train.lock").write_text("12345 some-other-host\n")
    with pytest.raises(TfxError, match="some-other-host"):
        RunLock(tmp_path).acquire()
