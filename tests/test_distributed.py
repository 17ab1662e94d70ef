"""Many processes: sharding, and a real 2-process gloo run through torchrun (vitcli/distributed.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train import bar_folder, options

from vitcli.distributed import DistEnv, gather_rows, shard
from vitcli.runs import read_metrics
from vitcli.train import train

ROOT = Path(__file__).resolve().parents[1]


def test_shards_partition_each_global_batch():
    batch = torch.arange(10, 22)
    parts = [shard(batch, DistEnv(rank=r, world_size=3)) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == batch.tolist()
    assert [len(p) for p in parts] == [4, 4, 4]
    one = DistEnv()
    assert torch.equal(shard(batch, one), batch)
    rows = np.arange(6.0).reshape(3, 2)
    assert gather_rows(rows, one) is rows  # one process: nothing to gather


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path: Path):
    torch.set_num_threads(1)
    data = bar_folder(tmp_path / "bars", per_class=10)
    same = {"epochs": 2, "batch_size": 8, "augment": "none", "drop_path": 0.0,
            "label_smoothing": 0.0, "seed": 5}
    single = train(options(tmp_path, data, **same, project=str(tmp_path / "single")))

    o = options(tmp_path, data, **same)
    flags = ["--data", str(data), "--patch", str(o.patch), "--depth", str(o.depth),
             "--embed-dim", str(o.embed_dim), "--heads", str(o.heads),
             "--mlp-ratio", str(o.mlp_ratio), "--batch-size", "8", "--epochs", "2",
             "--warmup", str(o.warmup), "--augment", "none", "--drop-path", "0",
             "--label-smoothing", "0", "--seed", "5", "--device", "cpu",
             "--project", str(tmp_path / "ddp"), "--cache-dir", o.cache_dir]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
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
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    rows_a = read_metrics(single.run_dir / "metrics.csv")
    rows_b = read_metrics(ddp / "metrics.csv")
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)
        assert ra["val_top1"] == rb["val_top1"]
