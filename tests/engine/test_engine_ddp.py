"""Two real processes (DDP, gloo, CPU): identical parameters and EMA targets, disjoint data shards."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_pretrain_script.py")


@pytest.fixture(scope="module")
def ddp_run(module_tmp_path):
    out = module_tmp_path
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), str(out), "3"], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_every_rank_holds_identical_parameters_and_targets(ddp_run):
    a, b = ddp_run
    assert a["world"] == b["world"] == 2
    for key, value in a["state"].items():
        if key.endswith("num_batches_tracked") or "running_" in key:
            continue                              # BN running stats are per process without SyncBN
        assert torch.equal(value, b["state"][key]), key
    assert any(k.startswith("target.") for k in a["state"])


def test_ranks_read_disjoint_shards(ddp_run):
    a, b = ddp_run
    assert len(a["seen"]) == len(b["seen"]) == 3 * 32
    first_epoch_a, first_epoch_b = set(a["seen"][:64]), set(b["seen"][:64])   # 1 epoch = 2 steps x 2 ranks x 32
    assert not first_epoch_a & first_epoch_b
    assert len(first_epoch_a | first_epoch_b) == a["dataset_len"] == 128


def test_sync_bn_was_off_as_configured_on_cpu(ddp_run):
    assert ddp_run[0]["sync_bn"] is False


def test_sync_bn_switch_converts_every_bn_when_several_processes():
    from types import SimpleNamespace

    from conftest import TINY_PRETRAIN

    from mcl.config import load_config, to_dict
    from mcl.methods.mcl import MCLConfig, MCLPretrainModule

    for setting, world, expected in (("auto", 2, True), ("auto", 1, False), (True, 1, True), (False, 2, False)):
        cfg = load_config(MCLConfig, None, TINY_PRETRAIN + [f"model.sync_bn={str(setting).lower()}"])
        module = MCLPretrainModule(to_dict(cfg))
        module.trainer = SimpleNamespace(world_size=world)
        module.setup("fit")
        kinds = {type(m) for m in module.model.modules() if "BatchNorm" in type(m).__name__}
        assert (kinds == {torch.nn.SyncBatchNorm}) is expected, (setting, world, kinds)
