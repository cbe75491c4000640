"""The momentum (EMA) target encoder's schedule and update (docs/method.md, "The network").

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
def ema_update(target: nn.Module, online: nn.Module, momentum: float, ok: torch.Tensor | None = None) -> None:
    """``target <- m * target + (1 - m) * online`` over matching parameters, in place, one fused call.

    ``ok`` (0-d bool on the device, from ``mcl.engine.nonfinite``): update only where it is True, decided on the
    device with no host sync; None: always.
    """
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError("target and online encoders have different parameter lists")
    if ok is None:
        torch._foreach_lerp_(t_params, o_params, 1.0 - momentum)
    else:                                # one 0-d weight per tensor: the overload every torch >= 2.1 has
        weight = ok.to(t_params[0].dtype) * (1.0 - momentum)
        torch._foreach_lerp_(t_params, o_params, [weight] * len(t_params))
