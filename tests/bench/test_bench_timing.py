"""The timed steps run and move their parameters; the lightly peer is the same MoCo v2 step."""

import pytest
import torch

from mcl.bench import timing as T


def test_lightly_peer_step_runs_and_learns_like_ours():
    pytest.importorskip("lightly")
    device = torch.device("cpu")
    peer = T.lightly_moco_step("resnet18", 4, 32, device, queue_size=16)
    ours = T.moco_step("resnet18", 4, 32, device, queue_size=16)
    assert peer.images == ours.images == 4 and peer.info["kind"] == "lightly_moco_v2"
    results = T.time_interleaved([ours, peer], device, warmup=1, repeats=1, min_repeats=1, memory=False,
                                 log=lambda m: None)
    assert all(len(r["times_s"]) == 1 and "error" not in r for r in results.values())
    assert T.ratio(results, ours.name, peer.name)["pairs"] == 1


def test_mcl_step_variants_with_compile_and_checkpointing_are_labelled():
    from mcl.bench.suite import TINY_OVERRIDES, load_recipe

    cfg = load_recipe("cpu_smoke", TINY_OVERRIDES)
    crops = T.random_crops(cfg, torch.device("cpu"))
    step = T.mcl_step(cfg, "efficient", crops, torch.device("cpu"), name="efficient+ckpt",
                      activation_checkpointing=True)
    assert step.info["activation_checkpointing"] and not step.info["compile"]
    step.run()
