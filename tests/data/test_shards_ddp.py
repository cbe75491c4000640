"""Two real processes (DDP, gloo, CPU) reading tar shards of unequal sizes: equal batches, disjoint shards, no hang."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_shards import make_shards

SCRIPT = Path(__file__).with_name("ddp_shards_script.py")
SIZES = [150, 10, 10, 54]          # 224 samples; batch 32 x 2 ranks: 3 batches (96 samples) per rank and epoch;
                                   # whichever two shards a rank gets, one rank holds fewer than 96 and reads again


@pytest.fixture(scope="module")
def ddp_shard_run(module_tmp_path):
    root = module_tmp_path
    make_shards(root / "shards", SIZES)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), str(root / "shards"), str(root / "run"), "7"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [torch.load(root / "run" / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_every_rank_trains_the_same_number_of_full_batches(ddp_shard_run):
    a, b = ddp_shard_run
    assert a["world"] == b["world"] == 2 and a["dataset_len"] == sum(SIZES)
    assert a["loader_len"] == b["loader_len"] == 3 and a["steps_per_epoch"] == 3
    assert len(a["batches"]) == len(b["batches"]) == 7                     # 7 steps over 3 epochs, no hang
    assert all(len(idx) == 32 for run in (a, b) for _, idx in run["batches"])
    assert [e for e, _ in a["batches"]] == [e for e, _ in b["batches"]] == [0, 0, 0, 1, 1, 1, 2]


def test_ranks_read_disjoint_shards_each_epoch(ddp_shard_run):
    a, b = ddp_shard_run
    owner = {i: k for k, (off, n) in enumerate(zip(a["offsets"], a["sizes"])) for i in range(off, off + n)}
    orders = []
    for epoch in (0, 1):
        seen = [{owner[i] for e, idx in run["batches"] if e == epoch for i in idx} for run in (a, b)]
        assert seen[0] and seen[1] and not seen[0] & seen[1], (epoch, seen)
        flat = [[i for e, idx in run["batches"] if e == epoch for i in idx] for run in (a, b)]
        assert any(len(set(f)) < len(f) for f in flat)                        # the short rank read again
        orders.append([i for e, idx in a["batches"] if e == epoch for i in idx])
    assert orders[0] != orders[1]
