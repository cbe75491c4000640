"""Optimiser and schedules (docs/method.md, "Optimisation").

LARS, as in the released configuration (SGD momentum with a layer-wise trust ratio):

    g   = grad + wd * w
    eta = trust * ||w|| / (||grad|| + wd * ||w||)      (1 when either norm is 0)
    v   = momentum * v + lr * eta * g;   w = w - v

Parameters of BatchNorm layers and biases are excluded from weight decay and from the trust ratio
(plain SGD with momentum), when ``exclude_bn_bias``.

Learning rate per optimizer step ``k`` of ``K`` (mmcv's cosine annealing with linear warm-up, as in
the released config):

    cos_k = min_lr + (lr - min_lr) * (1 + cos(pi * k / K)) / 2
    lr_k  = cos_k * (start + (1 - start) * k / W)     for k < W  (warm-up of W steps)
    lr_k  = cos_k                                     otherwise
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim import Optimizer


class LARS(Optimizer):
    """LARS with per-group switches ``lars`` (trust ratio on/off) and ``weight_decay``."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 0.0, foreach: bool = True):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, lars=True)
        super().__init__(params, defaults)
        self.foreach = foreach

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.foreach:
            for group in self.param_groups:
                self._group_step_foreach(group)
            return loss
        for group in self.param_groups:
            wd, mom, lr = group["weight_decay"], group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["lars"]:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(grad)
                    ratio = group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
                else:
                    ratio = None
                update = grad.add(p, alpha=wd) if wd else grad.clone()
                if ratio is not None:
                    update.mul_(ratio)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.zeros_like(p)
                buf.mul_(mom).add_(update, alpha=lr)
                p.sub_(buf)
        return loss

    def _group_step_foreach(self, group: dict) -> None:
        """The same update for a whole group with multi-tensor (``torch._foreach_*``) kernels.

        A handful of kernel launches per group instead of ~6 per parameter, and no host sync: the
        trust ratios are computed on the device as one stacked vector.
        """
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        wd, mom, lr = group["weight_decay"], group["momentum"], group["lr"]
        updates = torch._foreach_add(grads, params, alpha=wd) if wd else torch._foreach_mul(grads, 1.0)
        if group["lars"]:
            w_norm = torch.stack(torch._foreach_norm(params))
            g_norm = torch.stack(torch._foreach_norm(grads))
            ratio = group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"])
            ratio = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
            torch._foreach_mul_(updates, list(ratio.to(updates[0].dtype).unbind(0)))
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(state["momentum_buffer"])
        torch._foreach_mul_(bufs, mom)
        torch._foreach_add_(bufs, updates, alpha=lr)
        torch._foreach_sub_(params, bufs)


def split_decay_groups(model: nn.Module, exclude_bn_bias: bool) -> tuple[list, list]:
    """``(regular, excluded)``: excluded = biases and normalisation parameters (1-d tensors)."""
    regular, excluded = [], []
    for _name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (excluded if exclude_bn_bias and p.ndim <= 1 else regular).append(p)
    return regular, excluded


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float,
                    trust_coefficient: float, exclude_bn_bias: bool) -> Optimizer:
    """LARS or SGD with BN/bias parameters in their own group (no decay, no trust ratio)."""
    regular, excluded = split_decay_groups(model, exclude_bn_bias)
    if name == "lars":
        groups = [dict(params=regular)]
        if excluded:
            groups.append(dict(params=excluded, weight_decay=0.0, lars=False))
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient)
    if name == "sgd":
        groups = [dict(params=regular)]
        if excluded:
            groups.append(dict(params=excluded, weight_decay=0.0))
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)
    raise ValueError(f"unknown optimizer {name!r}")


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float,
                         warmup_start_ratio: float) -> float:
    """``lr_k / lr`` for the schedule in this module's docstring (a multiplier for ``LambdaLR``)."""
    total = max(total_steps, 1)
    k = min(max(step, 0), total)
    cosine = min_lr + (base_lr - min_lr) * (1.0 + math.cos(math.pi * k / total)) / 2.0
    if k < warmup_steps:
        cosine *= warmup_start_ratio + (1.0 - warmup_start_ratio) * k / warmup_steps
    return cosine / base_lr


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """The linear scaling rule: ``base_lr x global_batch / 256``."""
    return base_lr * global_batch / 256.0
