"""model.rescale_init=unit_variance: the same function, pre-BN variance 1, larger relative gradients."""

import pytest
import torch
import torchvision
from torch import nn

from mcl.errors import UserError
from mcl.transfer.detection import build_detector, load_initial_weights
from mcl.transfer.rescale import conv_bn_pairs, rescale_to_unit_variance


def trained_stats_resnet(seed: int = 0) -> nn.Module:
    """A ResNet-18 whose BN running statistics are far from 1: convs scaled up, stats from a few batches."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(num_classes=4)
    with torch.no_grad():
        for i, (_, _, conv, _) in enumerate(conv_bn_pairs(net)):
            conv.weight.mul_(1.0 + (i % 4))            # pre-BN variances of 1, 4, 9 and 16
    net.train()
    for _ in range(30):
        net(torch.randn(8, 3, 32, 32))
    return net


def test_pairs_are_every_conv_that_feeds_a_batchnorm():
    pairs = conv_bn_pairs(torchvision.models.resnet18())
    assert len(pairs) == 20                            # stem + 16 block convs + 3 downsample convs
    assert ("layer2.0.downsample.0", "layer2.0.downsample.1") in [(c, b) for c, b, _, _ in pairs]
    assert ("layer1.0.conv2", "layer1.0.bn2") in [(c, b) for c, b, _, _ in pairs]


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_function_is_unchanged_and_running_variance_becomes_one(mode):
    net = trained_stats_resnet()
    before = [bn.running_var.mean().item() for _, _, _, bn in conv_bn_pairs(net)]
    assert max(before) > 5                             # the fixture really is off
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    getattr(net, mode)()
    reference = net(x).detach()
    net2 = trained_stats_resnet()
    factors = rescale_to_unit_variance(net2)
    for _, _, _, bn in conv_bn_pairs(net2):
        assert torch.allclose(bn.running_var, torch.ones_like(bn.running_var), atol=1e-3)
    getattr(net2, mode)()
    assert torch.allclose(net2(x), reference, rtol=1e-3, atol=1e-3)
    assert len(factors) == sum(bn.num_features for _, _, _, bn in conv_bn_pairs(net2))


def test_relative_gradient_steps_grow_where_the_variance_was_large():
    """|grad| / |W| of a conv whose pre-BN variance was v grows by about v (1 / c**2) after the rescale."""
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))

    def relative_grad(net, name):
        net.train()
        net.zero_grad()
        net(x).square().mean().backward()
        w = dict(net.named_parameters())[f"{name}.weight"]
        return (w.grad.norm() / w.norm()).item()

    plain, scaled = trained_stats_resnet(), trained_stats_resnet()
    var = dict((c, bn.running_var.mean().item()) for c, _, _, bn in conv_bn_pairs(scaled))["layer3.0.conv1"]
    rescale_to_unit_variance(scaled)
    ratio = relative_grad(scaled, "layer3.0.conv1") / relative_grad(plain, "layer3.0.conv1")
    assert var > 5 and ratio == pytest.approx(var, rel=0.5)


def test_init_rescales_only_the_layers_the_file_supplies(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(trained_stats_resnet().state_dict(), path)
    model = build_detector("resnet18", 5)
    fpn_before = model.backbone.fpn.inner_blocks[0][0].weight.clone()
    report = load_initial_weights(model, str(path), None, "unit_variance")
    assert any("20 conv layers scaled to pre-BN variance 1" in note for note in report.notes)
    assert torch.allclose(model.backbone.body.layer4[1].bn2.running_var, torch.ones(512), atol=1e-3)
    assert torch.equal(model.backbone.fpn.inner_blocks[0][0].weight, fpn_before)   # random init: untouched
    paper = build_detector("resnet18", 5)
    load_initial_weights(paper, str(path))
    assert not torch.allclose(paper.backbone.body.layer4[1].bn2.running_var, torch.ones(512), atol=1e-3)


def test_an_unknown_mode_is_refused():
    with pytest.raises(UserError, match="model.rescale_init='unit'"):
        load_initial_weights(build_detector("resnet18", 5), "torchvision-missing-file", None, "unit")
