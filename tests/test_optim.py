"""LARS against its formula; the warm-up + cosine schedule's landmarks."""

import copy
import math

import pytest
import torch

from mcl.optim import LARS, build_optimizer, warmup_cosine_factor


def test_lars_step_matches_formula():
    torch.manual_seed(0)
    w = torch.randn(5, 3, requires_grad=True)
    w0 = w.detach().clone()
    w.grad = torch.randn(5, 3)
    g = w.grad.clone()
    opt = LARS([w], lr=0.5, momentum=0.9, weight_decay=0.1, trust_coefficient=0.001)
    opt.step()
    eta = 0.001 * w0.norm() / (g.norm() + 0.1 * w0.norm())
    v = 0.5 * eta * (g + 0.1 * w0)
    torch.testing.assert_close(w.detach(), w0 - v)
    w.grad = g.clone()
    w1 = w.detach().clone()
    opt.step()
    eta = 0.001 * w1.norm() / (g.norm() + 0.1 * w1.norm())
    v = 0.9 * v + 0.5 * eta * (g + 0.1 * w1)
    torch.testing.assert_close(w.detach(), w1 - v)


def test_bn_and_bias_are_excluded_from_decay_and_adaptation():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(net, "lars", lr=0.1, weight_decay=0.5, momentum=0.0, trust_coefficient=0.001,
                          exclude_bn_bias=True)
    regular, excluded = opt.param_groups
    assert len(regular["params"]) == 1 and regular["lars"] and regular["weight_decay"] == 0.5
    assert len(excluded["params"]) == 3 and not excluded["lars"] and excluded["weight_decay"] == 0.0
    b = net[0].bias
    b.grad = torch.ones_like(b)
    before = b.detach().clone()
    for p in net.parameters():
        if p is not b:
            p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(b.detach(), before - 0.1)       # plain SGD step


def test_warmup_cosine_landmarks():
    def f(k):
        return warmup_cosine_factor(k, total_steps=1000, warmup_steps=100, base_lr=2.0, min_lr=0.0,
                                    warmup_start_ratio=1e-4)
    assert f(0) == pytest.approx(1e-4)
    cos100 = (1 + math.cos(math.pi * 0.1)) / 2
    assert f(100) == pytest.approx(cos100)
    assert f(50) == pytest.approx((1 + math.cos(math.pi * 0.05)) / 2 * (1e-4 + (1 - 1e-4) * 0.5))
    assert f(500) == pytest.approx(0.5)
    assert f(1000) == pytest.approx(0.0)
    g = warmup_cosine_factor(1000, 1000, 0, 2.0, 1e-4, 1.0)
    assert g * 2.0 == pytest.approx(1e-4)


def test_foreach_lars_equals_the_per_parameter_loop():
    """The multi-tensor LARS (the default) makes the same updates as the per-parameter loop, both groups."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                                torch.nn.LazyLinear(4))
    model(torch.randn(2, 3, 6, 6))
    twin = copy.deepcopy(model)
    before = copy.deepcopy(model)
    fast = build_optimizer(model, "lars", 0.7, 1e-4, 0.9, 0.001, True)
    slow = build_optimizer(twin, "lars", 0.7, 1e-4, 0.9, 0.001, True)
    slow.foreach = False
    assert fast.foreach and len(fast.param_groups) == 2
    with torch.no_grad():               # a zero weight takes the trust-ratio-1 branch in both
        model[0].weight[0].zero_()
        twin[0].weight[0].zero_()
    for step in range(3):
        x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(step))
        for m, opt in ((model, fast), (twin, slow)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(model[3].weight, before[3].weight)      # the step did move the parameters
