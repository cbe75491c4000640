"""Give loaded convs the scale of a fresh initialisation without changing what the network computes.

A conv followed by BatchNorm is scale-invariant per output channel k: ``BN(c_k z_k) = BN(z_k)`` for any
``c_k > 0`` (batch statistics scale with ``c_k``; running statistics are scaled here to match: ``mean_k *= c_k``,
``var_k *= c_k**2``). The gradient is not: it scales as ``1 / c_k``, and the relative step ``lr |g| / |W|``
as ``1 / c_k**2``. A pretrained conv whose filters have learned the structure of their inputs has a larger
pre-BN variance than a random one of the same norm (MCL's demo backbone: running variance 2 to 60 where random
init has 1), so BN divides its gradient by that much more, and fine-tuning barely moves it.

``unit_variance`` (``model.rescale_init=unit_variance``): ``c_k = 1 / sqrt(running_var_k + eps)``, so every loaded
channel has the pre-BN variance of random init (1) on the data its BN last saw, and fine-tuning takes random
init's relative steps from the pretrained function. A random-init layer (running variance 1) is unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str, nn.Conv2d, nn.modules.batchnorm._BatchNorm]]:
    """``(conv name, bn name, conv, bn)`` for every conv whose output goes straight into a BatchNorm.

    Found as consecutive children of one parent (torchvision's ResNet ``convK`` -> ``bnK``, ``downsample.0`` ->
    ``downsample.1``, ``Conv2dNormActivation`` ``0`` -> ``1``), which is how these layers are written.
    """
    pairs = []
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        prefix = f"{parent_name}." if parent_name else ""
        for (name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
                pairs.append((prefix + name, prefix + bn_name, conv, bn))
    return pairs


RESCALE_MODES = ("none", "unit_variance")


@torch.no_grad()
def rescale_to_unit_variance(model: nn.Module, only: set[str] | None = None) -> Tensor:
    """Scale each conv -> BN pair (conv named in ``only``, if given) so that its BN's running variance is 1.

    Per output channel k, ``c_k = 1 / sqrt(running_var_k + eps)``: ``W[k] *= c_k`` (and ``bias[k]``),
    ``running_mean_k *= c_k``, ``running_var_k *= c_k**2``. BN's weight and bias are unchanged, so the output is
    the same in training and evaluation mode (up to BN's ``eps``). Returns all channels' ``c_k``, concatenated.
    """
    factors = []
    for name, _, conv, bn in conv_bn_pairs(model):
        if (only is not None and name not in only) or bn.running_var is None:
            continue
        c = (bn.running_var + bn.eps).rsqrt()
        if not torch.isfinite(c).all():
            continue
        conv.weight.mul_(c.view(-1, *([1] * (conv.weight.dim() - 1))).to(conv.weight.dtype))
        if conv.bias is not None:
            conv.bias.mul_(c)
        bn.running_mean.mul_(c)
        bn.running_var.mul_(c * c)
        factors.append(c)
    return torch.cat(factors) if factors else torch.ones(0)


def describe_factors(factors: Tensor, layers: int) -> str:
    """One line for the init report."""
    q = torch.quantile(factors.float(), torch.tensor([0.0, 0.5, 1.0])).tolist()
    return (f"model.rescale_init=unit_variance: {layers} conv layers scaled to pre-BN variance 1 (per-channel "
            f"factor median {q[1]:.3g}, range {q[0]:.3g}-{q[2]:.3g}; the function is unchanged)")
