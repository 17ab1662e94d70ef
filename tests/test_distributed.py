"""Many processes: sharding, and a real 2-process gloo run through torchrun (vitcli/training/distributed.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train import bar_folder, imbalanced_bars, options, repo_env

from vitcli.training.distributed import DistEnv, gather_rows, process_batch, shard
from vitcli.training.runs import read_metrics
from vitcli.training.trainer import train


@pytest.mark.parametrize(("batch_size", "images", "world_size", "per_process"), [
    (12, 54, 1, 12), (256, 54, 1, 54),  # one process: the batch, or every image
    (8, 54, 2, 4),
    # fewer images than the batch: the global batch is the images (100, cut to a multiple
    # of the processes), so each of 2 processes steps on 50, not 100 (trainer.py weighed
    # min(256 / 2, 100) = 100 for --precision auto, twice the work a process does)
    (256, 100, 2, 50), (256, 101, 4, 25)])
def test_auto_weighs_the_images_one_process_steps_on(batch_size, images, world_size,
                                                      per_process):
    env = DistEnv(world_size=world_size)
    assert process_batch(batch_size, images, env) == per_process
    batch = min(batch_size, images) // world_size * world_size  # the Trainer's global batch
    order = torch.arange(images)
    assert len(shard(order[:batch], env)) == per_process


def test_shards_partition_each_global_batch():
    batch = torch.arange(10, 22)
    parts = [shard(batch, DistEnv(rank=r, world_size=3)) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == batch.tolist()
    assert [len(p) for p in parts] == [4, 4, 4]
    one = DistEnv()
    assert torch.equal(shard(batch, one), batch)
    rows = np.arange(6.0).reshape(3, 2)
    assert gather_rows(rows, one) is rows  # one process: nothing to gather


def _rank0_first_worker(rank: int, store_dir: str) -> None:
    """One of two gloo processes calling rank0_first twice; writes what it saw to a file."""
    import torch.distributed as dist

    from vitcli.errors import VitError
    from vitcli.training.distributed import rank0_first

    dist.init_process_group("gloo", init_method=f"file://{store_dir}/store", rank=rank,
                            world_size=2)
    env = DistEnv(rank=rank, world_size=2)
    marker = Path(store_dir) / "rank0-done"

    def fill() -> str:
        if rank == 0:
            marker.write_text("cache filled")
        return marker.read_text()  # rank 1 runs only after rank 0 has finished

    def fail() -> str:
        if rank == 0:
            raise VitError("folder x/: class 'eel' has no readable training image")
        raise AssertionError("rank 1 must not run what failed on rank 0")

    outcomes = []
    for work in (fill, fail):
        try:
            outcomes.append(f"ok: {rank0_first(work, env)}")
        except VitError as exc:
            outcomes.append(f"error {exc.exit_code}: {exc}")
    dist.destroy_process_group()
    (Path(store_dir) / f"rank{rank}.txt").write_text("\n".join(outcomes))


@pytest.mark.slow
def test_rank0_first_runs_rank0_first_and_passes_its_error_on(tmp_path: Path):
    import torch.multiprocessing as mp

    mp.spawn(_rank0_first_worker, args=(str(tmp_path),), nprocs=2, join=True)
    for r in range(2):  # every rank stops on rank 0's one-line error; none waits at a barrier
        assert (tmp_path / f"rank{r}.txt").read_text().splitlines() == [
            "ok: cache filled", "error 1: folder x/: class 'eel' has no readable training image"]


# torch's Muon orthogonalises in bf16, so the all-reduce's other summation order (~1e-7)
# comes out of it as bf16 rounding of an lr-sized step: ~2e-5 where AdamW stays at fp32's.
@pytest.mark.slow
@pytest.mark.parametrize("optimizer, atol, balance", [
    ("adamw", 1e-5, {}), ("muon", 1e-4, {}),
    # The balanced sampler's order is drawn on every rank from the same seed and sharded
    # like a shuffle; class weights are computed from the same labels on every rank.
    ("adamw", 1e-5, {"sampler": "balanced"}), ("adamw", 1e-5, {"class_weights": "auto"})])
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(
        tmp_path: Path, optimizer: str, atol: float, balance: dict):
    torch.set_num_threads(1)
    data = (imbalanced_bars(tmp_path / "bars", (12, 4, 4)) if balance
            else bar_folder(tmp_path / "bars", per_class=10))
    # Every random choice that differs between ranks off: augmentation, drop-path, and the
    # default tiny model's patch dropout.
    same = {"epochs": 2, "batch_size": 8, "augment": "none", "drop_path": 0.0, "patch_drop": 0.0,
            "label_smoothing": 0.0, "seed": 5, "optimizer": optimizer, **balance}
    single = train(options(tmp_path, data, **same, project=str(tmp_path / "single")))

    o = options(tmp_path, data, **same)
    flags = ["--data", str(data), "--patch", str(o.patch), "--depth", str(o.depth),
             "--embed-dim", str(o.embed_dim), "--heads", str(o.heads),
             "--mlp-ratio", str(o.mlp_ratio), "--batch-size", "8", "--epochs", "2",
             "--warmup", str(o.warmup), "--augment", "none", "--drop-path", "0", "--patch-drop", "0",
             "--label-smoothing", "0", "--seed", "5", "--optimizer", optimizer,
             *(w for k, v in balance.items() for w in ("--" + k.replace("_", "-"), v)),
             "--device", "cpu",
             "--project", str(tmp_path / "ddp"), "--cache-dir", o.cache_dir]
    env = repo_env(OMP_NUM_THREADS="1", COLUMNS="200")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "vitcli", "train", *flags],
        env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("training summary") == 1  # only rank 0 prints
    assert "× 2 processes" in proc.stdout

    runs = list((tmp_path / "ddp").iterdir())
    assert [r.name for r in runs] == ["exp"]  # one run folder, written by rank 0
    ddp = runs[0]
    assert len(read_metrics(ddp / "metrics.csv")) == 2
    a = load_file(str(single.run_dir / "weights" / "last.safetensors"))
    b = load_file(str(ddp / "weights" / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=1e-4), k
    rows_a = read_metrics(single.run_dir / "metrics.csv")
    rows_b = read_metrics(ddp / "metrics.csv")
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)
        assert ra["val_top1"] == rb["val_top1"]
