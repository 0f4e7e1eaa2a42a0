"""Data-parallel training on the CPU (gloo), launched by torchrun for real.

The central property: N ranks of B tokens give the update of one process with the N*B
tokens. The slow checks (two launchers as two nodes) are marked.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import assert_one_line_error, cli, tiny_raw, toy_splits, write_splits

from transformer_cli.core import checkpoint
from transformer_cli.core.config_file import config_from_dict
from transformer_cli.data import prepare, store
from transformer_cli.training import distributed, launch, lock
from transformer_cli.training import loop as train
from transformer_cli.training.distributed import World

REPO = Path(__file__).resolve().parents[2]

# dropout off: the ranks' dropout streams differ from one process's; the rest of the
# recipe on (label smoothing is the default 0.1)
# fp32 whatever `auto` picks on this CPU: the states compare up to the order of fp32 sums
RECIPE = {
    "batch_tokens": 150,
    "accum_steps": 2,
    "clip_norm": 0.5,
    "max_steps": 3,
    "precision": "fp32",
}
MODEL = {"dropout": 0.0}


# ----------------------------------------------------------------------------- helpers


# the train split read 1.5 times an epoch, and a tagged half of the valid split
TWO_CORPORA = [{"name": "train", "weight": 1.5}, {"name": "valid", "weight": 0.5, "tag": "<v>"}]


def write_run(root: Path, pairs, corpora: list | None = None, **train_cfg) -> Path:
    """A prepared run dir under `root` and its config file (returned)."""
    raw = tiny_raw(root, train={**RECIPE, **train_cfg}, model=MODEL)
    raw["train"]["eval_every"] = train_cfg.get("eval_every", 1000)
    if corpora:
        raw["data"]["train"] = corpora
    write_splits(root / "data", toy_splits(pairs))
    prepare.run(config_from_dict(raw))
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), out.get("PYTHONPATH")]))
    out.pop("TFX_DEBUG", None)
    return out


def torchrun(config: Path, *args: str, launcher: tuple[str, ...] = ("--standalone",), nproc=2):
    """`torchrun LAUNCHER --nproc-per-node N -m transformer_cli train --config C ARGS`."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *launcher,
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",
        "-m",
        "transformer_cli",
        "train",
        "--config",
        str(config),
        *args,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())


def finished(process: subprocess.Popen, timeout: float = 180) -> tuple[str, str]:
    out, err = process.communicate(timeout=timeout)
    if process.returncode != 0:
        print(out.decode(), err.decode(), sep="\n")  # in the report: the ranks' own lines
    assert process.returncode == 0
    return out.decode(), err.decode()


def state(run_dir: Path) -> dict:
    return checkpoint.load_checkpoint(checkpoint.last_path(run_dir))


def without_key_biases(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The weights but the attention keys' biases.

    A key bias adds the same number to every score of a query, which the softmax ignores:
    its true gradient is 0, what it gets is rounding noise, and Adam (m / sqrt(v)) turns
    noise of any size into steps of the learning rate's. Its Adam moments are compared.
    """
    d = tensor.shape[0] // 3 if name.endswith("in_proj.bias") else None
    if d is not None:  # q, k, v stacked
        return torch.cat([tensor[:d], tensor[2 * d :]])
    if name.endswith("kv_proj.bias"):  # k, v stacked
        return tensor[tensor.shape[0] // 2 :]
    return tensor


def assert_close_states(a: dict, b: dict) -> None:
    """Weights and Adam moments equal up to the order of fp32 sums."""
    for name, tensor in a["model"].items():
        x, y = without_key_biases(name, tensor), without_key_biases(name, b["model"][name])
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)
    for pid, moments in a["optimizer"]["state"].items():
        for key, value in moments.items():
            other = b["optimizer"]["state"][pid][key]
            torch.testing.assert_close(value, other, rtol=1e-3, atol=1e-8, msg=f"{pid}.{key}")


# ----------------------------------------------------------------------------- units


def test_global_groups_give_every_rank_as_many_batches_and_leave_out_only_a_tail():
    batches = list(range(11))
    for size in (1, 2, 3, 4):
        for accum in (1, 2, 3):
            world = World(size=size, launched=size > 1)
            seen, pos = [], 0
            while group := distributed.global_group(batches, pos, accum, world):
                parts = [distributed.shard(group, World(r, size)) for r in range(size)]
                assert len({len(p) for p in parts}) == 1  # the same number on every rank
                assert sorted(sum(parts, [])) == group  # the ranks split the group exactly
                seen += group
                pos += len(group)
            assert seen == batches[: len(seen)]  # in order, none twice
            assert len(batches) - len(seen) < size  # only a tail shorter than the world


def test_one_process_takes_the_groups_it_always_took():
    batches = list(range(7))
    assert distributed.global_group(batches, 4, 2, World()) == [4, 5]
    assert distributed.global_group(batches, 6, 2, World()) == [6]  # a short last group


def test_torchruns_variables_make_the_world():
    variables = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert distributed.from_env(variables) == World(3, 4, 1, 2, launched=True)
    assert distributed.from_env({}) == World()
    assert not World(rank=1, size=2).is_main


def test_cpu_ranks_share_the_cores_unless_threads_are_set():
    world = World(0, 2, 0, 2, launched=True)
    cores = len(os.sched_getaffinity(0))
    assert distributed.rank_threads(world, 0) == max(1, cores // 2)
    assert distributed.rank_threads(world, 3) == 3
    assert distributed.rank_threads(World(), 0) == 0  # one process: set_threads decides


def test_the_cache_is_memory_mapped(tmp_path, toy_pairs):
    write_run(tmp_path, toy_pairs)
    split = store.load_split(tmp_path / "run", "train")
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("no /proc/self/maps here")
    assert str(store.cache_dir(tmp_path / "run") / "train.src.ids") in maps.read_text()
    assert len(split) == 240


def test_the_launcher_lock_is_recognised_only_with_its_owner(tmp_path, monkeypatch):
    with lock.RunLock(tmp_path) as held:
        monkeypatch.setenv(lock.JOB_LOCK_ENV, held.owner)
        assert lock.held_by_launcher(tmp_path)
        monkeypatch.setenv(lock.JOB_LOCK_ENV, "1 elsewhere")
        assert not lock.held_by_launcher(tmp_path)
    monkeypatch.setenv(lock.JOB_LOCK_ENV, held.owner)
    assert not lock.held_by_launcher(tmp_path)  # released: no file


def test_a_failure_line_names_the_first_rank_that_failed(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    def failure(rank: int, exitcode: int, when: int) -> ProcessFailure:
        f = ProcessFailure(rank, 100 + rank, exitcode, str(tmp_path / "none"))
        f.timestamp = when
        return f

    # rank 0 ended by the SIGTERM torchrun sends the others: rank 1 is the cause
    line = launch.failure_line({0: failure(0, -15, 10), 1: failure(1, -9, 10)}, tmp_path)
    assert line.startswith("rank 1 (pid 101) was killed by SIGKILL")
    assert "1 other rank(s)" in line
    assert str(tmp_path / "checkpoints") in line
    assert "\n" not in line
    line = launch.failure_line({0: failure(0, 2, 11), 1: failure(1, 1, 10)}, tmp_path)
    assert line.startswith("rank 1 (pid 101) exited with code 1")  # the earlier one
    # at the same second: the killed rank, not the one that lost it (exit 2)
    line = launch.failure_line({0: failure(0, 2, 10), 1: failure(1, -9, 10)}, tmp_path)
    assert line.startswith("rank 1 (pid 101) was killed by SIGKILL")


def test_only_transport_errors_become_lost_rank_errors():
    from transformer_cli.core.errors import TrainingError

    world = World(1, 2, launched=True)
    lost = pytest.raises(TrainingError, match=r"^rank 1: lost the other ranks of the job while x")
    with lost, distributed.world_guard(world, "x"):
        raise RuntimeError("[pair.cc:537] Read error: Connection reset by peer. More")
    bug = pytest.raises(RuntimeError, match="shape mismatch")
    with bug, distributed.world_guard(world, "x"):  # a bug stays a bug
        raise RuntimeError("shape mismatch")


# ----------------------------------------------------------------------------- bad input


def test_bad_launches_are_one_line_errors(tmp_path, toy_pairs, monkeypatch):
    config = write_run(tmp_path, toy_pairs)
    assert_one_line_error(cli("train", "-c", config, "--nproc", "0"), "--nproc: must be at least 1")
    fp16 = cli("train", "-c", config, "--nproc", "2", "--set", "train.precision=fp16")
    assert_one_line_error(fp16, "train.precision: fp16 needs CUDA")
    with lock.RunLock(tmp_path / "run"):  # another job holds the run dir
        busy = cli("train", "-c", config, "--nproc", "2")
    assert_one_line_error(busy, "another training run is using this run dir")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    too_many = cli("train", "-c", config, "--nproc", "2", "--set", "train.device=cuda")
    assert_one_line_error(too_many, "--nproc 2: only 1 CUDA device(s) are visible")


def test_a_launch_without_prepared_data_is_one_line_error(tmp_path):
    raw = tiny_raw(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert_one_line_error(cli("train", "-c", config, "--nproc", "2"), "no prepared data")


# ----------------------------------------------------------------------------- real jobs


@pytest.mark.parametrize("corpora", [None, TWO_CORPORA], ids=["one corpus", "two corpora"])
def test_two_ranks_make_the_update_of_one_process_on_both_their_batches(
    tmp_path, toy_pairs, corpora
):
    config = write_run(tmp_path / "ddp", toy_pairs, corpora)
    job = torchrun(config)
    single = config_from_dict(
        yaml.safe_load(config.read_text()),
        [f"run_dir={tmp_path / 'one'}", "train.accum_steps=4"],  # the union of both ranks'
    )
    (tmp_path / "one").mkdir()
    os.symlink(tmp_path / "ddp" / "run" / "cache", tmp_path / "one" / "cache")
    train.run(single)
    out, err = finished(job)

    two, one = state(tmp_path / "ddp" / "run"), state(tmp_path / "one")
    assert_close_states(two, one)
    assert two["progress"]["batch_pos"] == one["progress"]["batch_pos"] == 12
    assert two["progress"]["tokens"] == one["progress"]["tokens"]
    assert two["world_size"] == 2
    assert len(two["rng_ranks"]) == 2
    assert "world size 2: rank 0 on cpu" in err
    assert "rank 1 on cpu" in err
    assert "2 ranks, all stopped at step 3" in out


def test_a_distributed_checkpoint_translates_evaluates_and_averages(tmp_path, toy_pairs):
    config = write_run(tmp_path, toy_pairs, eval_every=1, tensorboard=True)
    finished(torchrun(config))
    # train.tensorboard: rank 0 alone writes event files
    assert len(list((tmp_path / "run" / "tensorboard").glob("events.*"))) == 1
    ckpts = tmp_path / "run" / "checkpoints"
    translated = cli("translate", ckpts / "last.pt", "the dog sees the cat")
    assert translated.exit_code == 0, translated.output
    evaluated = cli("evaluate", ckpts / "last.pt", "--split", "valid")
    assert evaluated.exit_code == 0, evaluated.output
    steps = sorted(ckpts.glob("ckpt_*.pt"))
    averaged = cli("average", *steps[-2:], "--output", tmp_path / "avg.pt")
    assert averaged.exit_code == 0, averaged.output
    assert (tmp_path / "avg.pt").exists()


def test_a_run_of_two_ranks_resumes_on_one_with_its_data_position(tmp_path, toy_pairs):
    config = write_run(tmp_path, toy_pairs)
    finished(torchrun(config))
    more = config_from_dict(yaml.safe_load(config.read_text()), ["train.max_steps=4"])
    assert train.run(more, resume=True)["steps"] == 4
    assert state(tmp_path / "run")["progress"]["batch_pos"] == 12 + 2  # 1 rank x accum 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_launchers_as_two_nodes_train_as_one_machine_of_two(tmp_path, toy_pairs):
    config = write_run(tmp_path / "nodes", toy_pairs)
    reference = write_run(tmp_path / "one_node", toy_pairs)
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        torchrun(
            config,
            launcher=(
                "--nnodes=2",
                f"--node-rank={rank}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}",
                "--rdzv-id=tfx-test",
            ),
            nproc=1,
        )
        for rank in (0, 1)
    ]
    for node in nodes:
        finished(node)
    finished(torchrun(reference))
    a, b = state(tmp_path / "nodes" / "run"), state(tmp_path / "one_node" / "run")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name  # a + b == b + a: bit for bit


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        # a learning rate of ~0: every validation ties the first, the second one stops
        ({"patience": 1, "eval_every": 1, "noam_factor": 1e-9, "max_steps": 50}, "early stopping"),
        ({"max_minutes": 0.03, "max_steps": 0}, "reached train.max_minutes=0.03"),
    ],
    ids=["early-stopping", "max-minutes"],
)
def test_validation_verdicts_and_the_clock_stop_every_rank_at_one_step(
    tmp_path, toy_pairs, limits, reason
):
    config = write_run(tmp_path, toy_pairs, **limits)
    out, _ = finished(torchrun(config))
    step = state(tmp_path / "run")["progress"]["step"]
    assert f"done: {reason}" in out
    assert f"2 ranks, all stopped at step {step}" in out  # each rank reported its step
    if "patience" in limits:
        assert step == 2


class _Sync:
    """A module whose no_sync() is seen to be entered."""

    def __init__(self):
        self.entered = 0

    def no_sync(self):
        import contextlib

        self.entered += 1
        return contextlib.nullcontext()


def test_only_the_last_micro_batch_of_an_update_all_reduces():
    module = _Sync()
    world = World(0, 2, launched=True)
    for last in (False, False, True):
        with world.no_sync(module, last=last):  # type: ignore[arg-type]
            pass
    assert module.entered == 2
    with World().no_sync(module, last=False):  # type: ignore[arg-type]
        pass
    assert module.entered == 2  # one process: nothing to skip


class _NaNElsewhere(World):
    """One process that sees another rank's non-finite loss in the shared sums."""

    def sum_(self, values, what):
        if what == "the update's loss":
            values += float("nan")
        return values


def test_a_non_finite_loss_on_another_rank_skips_the_update_here_too(make_config):
    from transformer_cli.data import batching
    from transformer_cli.training import step

    cfg = make_config("train.device=cpu", "model.d_model=16", "model.heads=2", "model.d_ff=32")
    prepare.run(cfg)
    trainer, model = _trainer(cfg, _NaNElsewhere())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    group = batching.epoch_batches(trainer.split, 300, 0, 0)[:1]
    result = step.train_step(trainer, group, lr=1e-3)
    assert not result.finite
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def _trainer(cfg, world: World):
    import dataclasses

    from transformer_cli.data.tokenizer import Tokenizer
    from transformer_cli.model.transformer import Transformer
    from transformer_cli.training import step

    tok = Tokenizer.load(cfg.run_dir)
    model_cfg = dataclasses.replace(
        cfg.model, src_vocab=tok.src_vocab_size, tgt_vocab=tok.tgt_vocab_size, enc_layers=1
    )
    cfg = dataclasses.replace(cfg, model=model_cfg)
    model = Transformer(cfg.model)
    optimizer = step.make_optimizer(model, cfg, torch.device("cpu"))
    split = store.load_split(cfg.run_dir, "train")
    cpu = torch.device("cpu")
    trainer = step.build_trainer(model, optimizer, None, split, cfg, cpu, "fp32", world)
    return trainer, model


def test_ddp_is_freed_before_the_process_group_goes(tmp_path, toy_pairs, monkeypatch):
    """A job of one rank in this process: the DistributedDataParallel around its loss is
    gone by the time the process group is destroyed, with no collection left to chance."""
    import gc
    import weakref

    from transformer_cli.training import step

    config = write_run(tmp_path, toy_pairs, max_steps=2)
    cfg = config_from_dict(yaml.safe_load(config.read_text("utf-8")))
    torchruns = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    for name, value in {**torchruns, "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    wrapped: list[weakref.ref] = []
    alive_at_destroy: list[bool] = []
    real_wrap, real_destroy = distributed.wrap, distributed.dist.destroy_process_group

    def wrap(module, world):
        assert isinstance(module, step.LossModule)
        ddp = real_wrap(module, world)
        wrapped.append(weakref.ref(ddp))
        return ddp

    def destroy(*args, **kwargs):
        alive_at_destroy.extend(ref() is not None for ref in wrapped)
        return real_destroy(*args, **kwargs)

    monkeypatch.setattr(distributed, "wrap", wrap)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", destroy)
    gc.disable()  # no automatic collection frees it by chance
    try:
        summary = train.run(cfg)
    finally:
        gc.enable()
    assert summary["steps"] == 2
    assert alive_at_destroy == [False]
