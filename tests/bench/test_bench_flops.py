"""FLOP counting for `mcl bench`: meta == real device, per-part sums, analytic convs, efficient < faithful."""

import copy

import pytest
import torch
from torch import nn

from mcl.bench import flops as F
from mcl.config import load_config
from mcl.methods.mcl import MCLConfig

# Four levels as in paper mode (every FPN level feeds the loss), ResNet-18 on 32 px crops, thin heads.
TINY = [
    "data.batch_size=32", "data.crop_size=32", "model.arch=resnet18", "model.cell_size=1", "model.fpn_channels=16",
    "model.neck_hidden=16", "model.predictor_hidden=16", "model.embed_dim=8", "model.sync_bn=false",
]


@pytest.fixture(scope="module")
def tiny_cfg():
    return load_config(MCLConfig, None, TINY)


@pytest.mark.parametrize("mode", ["faithful", "efficient"])
def test_meta_count_equals_real_cpu_count(tiny_cfg, mode):
    meta = F.mcl_step_flops(tiny_cfg, mode, device="meta")
    real = F.mcl_step_flops(tiny_cfg, mode, device="cpu")
    assert meta.total == real.total > 0
    assert meta.forward == real.forward and meta.backward == real.backward
    assert meta.parts == real.parts


def test_parts_add_up_and_target_has_no_backward(tiny_cfg):
    count = F.mcl_step_flops(tiny_cfg, "faithful")
    assert sum(p["forward"] + p["backward"] for p in count.parts.values()) == count.total
    assert {"backbone", "fpn", "neck", "predictors", "target.backbone", "target.neck"} <= set(count.parts)
    for name, part in count.parts.items():
        if name.startswith("target"):
            assert part["backward"] == 0 and part["forward"] > 0
        elif name in ("fpn", "neck", "predictors"):
            assert part["backward"] == 2 * part["forward"]       # grad-input + grad-weight of every layer
    # the backbone's first conv computes no input gradient: backward is a bit under 2 x forward
    bb = count.parts["backbone"]
    assert bb["forward"] < bb["backward"] < 2 * bb["forward"]
    # faithful: the online and target encoders do the same forward work
    assert count.parts["target.neck"]["forward"] == count.parts["neck"]["forward"]
    assert count.per_image == count.total / tiny_cfg.data.batch_size


def test_efficient_counts_fewer_flops_than_faithful(tiny_cfg):
    faithful = F.mcl_step_flops(tiny_cfg, "faithful")
    efficient = F.mcl_step_flops(tiny_cfg, "efficient")
    assert efficient.total < faithful.total
    assert efficient.part_total("neck") < faithful.part_total("neck")
    assert efficient.part_total("target") < faithful.part_total("target")
    assert efficient.parts["backbone"] == faithful.parts["backbone"]      # same montages through the ResNet


def test_single_conv_matches_the_analytic_count():
    n, cin, cout, k, h = 3, 5, 7, 3, 11
    conv = nn.Conv2d(cin, cout, k, padding=1, bias=False)
    x = torch.randn(n, cin, h, h)
    fwd = F.count_step(conv, lambda: conv(x).sum(), (("", "conv"),), backward=False)
    assert fwd.total == F.conv_flops(cin, cout, k, h, h, n) == 2 * cin * cout * k * k * h * h * n
    # backward with an input that needs no gradient: only the weight gradient, the same FLOPs again
    both = F.count_step(conv, lambda: conv(x).sum(), (("", "conv"),))
    assert both.backward == fwd.total and both.parts["conv"] == {"forward": fwd.total, "backward": fwd.total}
    # with an input gradient too: 2 x forward
    xg = x.clone().requires_grad_(True)
    full = F.count_step(conv, lambda: conv(xg).sum(), (("", "conv"),))
    assert full.backward == 2 * fwd.total
    # the same on the meta device
    with F.build_on("meta"):
        meta_conv = nn.Conv2d(cin, cout, k, padding=1, bias=False)
    xm = torch.empty(n, cin, h, h, device="meta")
    assert F.count_step(meta_conv, lambda: meta_conv(xm).sum(), ()).total == 2 * fwd.total


def test_supervised_and_moco_references_are_consistent():
    sup = F.supervised_step_flops("resnet18", 64, batch_size=2)
    sup_fwd = F.supervised_step_flops("resnet18", 64, batch_size=2, backward=False)
    assert sup.forward == sup_fwd.total
    assert 2.5 * sup_fwd.total < sup.total < 3 * sup_fwd.total
    moco = F.moco_step_flops("resnet18", 64, batch_size=4, queue_size=64)
    # query fwd+bwd + key fwd: about one supervised step plus one forward
    assert moco.parts["target.backbone"]["forward"] == moco.parts["backbone"]["forward"]
    assert moco.parts["target.backbone"]["backward"] == 0
    analytic = F.moco_flops_analytic(sup, sup_fwd, queue_size=64, c5=512)
    assert analytic == pytest.approx(moco.per_image, rel=0.01)


def test_meta_shims_only_touch_meta_tensors():
    idx = torch.tensor([0, 2, 2])
    with F.MetaShims():
        assert torch.bincount(idx, minlength=4).tolist() == [1, 0, 2, 0]
        assert torch.bincount(idx.to("meta"), minlength=5).shape == (5,)
        assert int(torch.tensor(3)) == 3


def test_paper_mode_ratio_meets_the_issue_target():
    cfg = load_config(MCLConfig, "paper_r50_in1k_100ep")
    counts = {m: F.mcl_step_flops(copy.deepcopy(cfg), m) for m in ("faithful", "efficient")}
    ratio = counts["efficient"].total / counts["faithful"].total
    assert ratio <= 0.45
    assert counts["faithful"].unique_images == 128
