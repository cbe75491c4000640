"""The momentum (EMA) target encoder's schedule and update (MCL-SPEC section 3).

    m_k = 1 - (1 - m_0) * (cos(pi * k / K) + 1) / 2        (m_0 = 0.99 -> 1.0 at k = K)
    theta_target <- m_k * theta_target + (1 - m_k) * theta_online       (parameters only)

Buffers (BN running statistics) of the target are its own: they follow its forward passes.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int, base: float = 0.99) -> float:
    """``m_k`` at optimizer step ``k = step`` of ``K = total_steps``; ``base`` at 0, 1.0 at ``K``."""
    if total_steps <= 0:
        return base
    progress = min(max(step, 0), total_steps) / total_steps
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- m * target + (1 - m) * online`` over matching parameters, in place, one fused call."""
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError("target and online encoders have different parameter lists")
    torch._foreach_lerp_(t_params, o_params, 1.0 - momentum)
