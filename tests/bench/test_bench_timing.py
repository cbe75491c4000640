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


def test_body_floor_runs_the_online_body_on_every_montage_and_the_target_on_level_zero():
    from mcl.bench.suite import TINY_OVERRIDES, load_recipe
    from mcl.methods.mcl import build_model

    cfg = load_recipe("cpu_smoke", TINY_OVERRIDES)
    crops = T.random_crops(cfg, torch.device("cpu"))
    step = T.body_floor_step(cfg, crops, torch.device("cpu"))
    montages = build_model(cfg).num_montages(cfg.data.batch_size)
    assert step.info["online_images"] == 2 * sum(montages) and step.info["target_images"] == 2 * montages[0]
    target_stats = step.modules["target"].layer1[0].bn1.running_mean.clone()
    step.run()
    assert all(p.grad is not None for p in step.modules["online"].parameters())
    assert all(p.grad is None for p in step.modules["target"].parameters())
    assert not torch.equal(step.modules["target"].layer1[0].bn1.running_mean, target_stats)   # it ran, in train mode


def test_flop_rates_are_counted_flops_over_median_time_relative_to_supervised():
    from mcl.bench.suite import TINY_OVERRIDES, flop_rates, load_recipe, mcl_flop_counts

    cfg = load_recipe("cpu_smoke", TINY_OVERRIDES)
    parts = {"backbone": {"total": 30}, "target.backbone": {"total": 10}, "neck": {"total": 50}}
    settings = {"tiny": {"recipe": "cpu_smoke", "modes": {"efficient": {"total_flops": 100, "parts": parts}}}}
    counts = mcl_flop_counts(cfg, ["efficient"], "cpu_smoke", [], settings)
    assert counts == {"efficient": settings["tiny"]["modes"]["efficient"]}          # the FLOP section's, reused
    recounted = mcl_flop_counts(cfg, ["efficient"], "cpu_smoke", ["data.batch_size=8"], settings)
    assert recounted["efficient"]["total_flops"] > 100                              # overrides: counted again
    variants = {"efficient": {"info": {"kind": "mcl", "compute_mode": "efficient"}, "median_s": 2.0},
                "body floor": {"info": {"kind": "body_floor"}, "median_s": 1.0},
                "supervised resnet18": {"info": {"kind": "supervised"}, "median_s": 0.5}}
    flop_rates(variants, cfg, counts, tiny=True)
    assert variants["efficient"]["tflop_per_s"] == 50 / 1e12
    assert variants["body floor"]["flops_per_step"] == 40
    sup = variants["supervised resnet18"]
    assert sup["rate_vs_supervised"] == 1.0 and sup["flops_per_step"] > 0
    assert variants["body floor"]["rate_vs_supervised"] == 40 / (sup["flops_per_step"] / 0.5)
