"""ResNet + FPN built from the same torchvision modules as ``maskrcnn_resnet50_fpn_v2``'s backbone.

``body`` is an ``IntermediateLayerGetter`` over a torchvision ResNet returning C2..C5, and ``fpn`` a
``torchvision.ops.FeaturePyramidNetwork`` with BatchNorm in its lateral (inner) and output (layer)
convs. The state-dict keys are therefore those of the detector's ``backbone.body.*`` and
``backbone.fpn.*`` (the detector's parameter-free max-pool P6 is not built here).

``forward(x, levels)`` computes only the FPN outputs asked for: level ``k`` is P(k+2), stride
``2**(k+2)``. The top-down path runs down to the finest level asked; the 3x3 output conv runs only
for the levels asked. Asking for all four levels equals torchvision's FPN forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FeaturePyramidNetwork

RESNET_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
}
FPN_STRIDES = (4, 8, 16, 32)  # P2..P5


def make_resnet(arch: str) -> nn.Module:
    """A randomly initialised torchvision ResNet with plain BatchNorm (never downloads weights)."""
    if arch not in RESNET_CHANNELS:
        raise ValueError(f"ResNet {arch!r} is not supported (choose one of {', '.join(RESNET_CHANNELS)})")
    return getattr(torchvision.models, arch)(weights=None)


class ResNetFPN(nn.Module):
    """``body`` (C2..C5) + ``fpn`` (P2..P5, BN), computing only the requested FPN levels."""

    def __init__(self, arch: str, out_channels: int, activation_checkpointing: bool = False):
        super().__init__()
        self.activation_checkpointing = activation_checkpointing
        resnet = make_resnet(arch)
        self.body = IntermediateLayerGetter(resnet, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"})
        self.fpn = FeaturePyramidNetwork(list(RESNET_CHANNELS[arch]), out_channels, extra_blocks=None,
                                         norm_layer=nn.BatchNorm2d)
        self.out_channels = out_channels

    def features(self, x: Tensor) -> list[Tensor]:
        """C2..C5 of ``x (N, 3, S, S)``; with ``activation_checkpointing`` (training, grad on) each of the
        four stages is recomputed in the backward instead of keeping its activations."""
        if not (self.activation_checkpointing and self.training and torch.is_grad_enabled()):
            return list(self.body(x).values())
        out = []
        for name, module in self.body.items():
            if name in self.body.return_layers:
                x = torch.utils.checkpoint.checkpoint(module, x, use_reentrant=False)
                out.append(x)
            else:
                x = module(x)
        return out

    def top_down(self, feats: list[Tensor], finest: int) -> dict[int, Tensor]:
        """FPN inner maps (lateral 1x1 + nearest top-down sum) from P5 down to level ``finest``.

        ``inner_3 = lat_3(C5)``; ``inner_k = lat_k(C_{k+2}) + up2(inner_{k+1})``. No 3x3 output conv yet.
        """
        fpn = self.fpn
        inner = {3: fpn.get_result_from_inner_blocks(feats[3], 3)}
        for k in range(2, finest - 1, -1):
            lateral = fpn.get_result_from_inner_blocks(feats[k], k)
            inner[k] = lateral + F.interpolate(inner[k + 1], size=lateral.shape[-2:], mode="nearest")
        return inner

    def output(self, inner: Tensor, level: int) -> Tensor:
        """The FPN 3x3 output conv (+ BN) of ``level`` applied to its inner map."""
        return self.fpn.get_result_from_layer_blocks(inner, level)

    def pyramid(self, feats: list[Tensor], levels: set[int] | list[int]) -> dict[int, Tensor]:
        """FPN outputs ``{k: (N, C, S/2**(k+2), S/2**(k+2))}`` for ``k`` in ``levels`` from C2..C5."""
        levels = set(levels)
        if not levels or not levels <= {0, 1, 2, 3}:
            raise ValueError(f"FPN levels must be a non-empty subset of 0..3 (P2..P5), got {sorted(levels)}")
        inner = self.top_down(feats, min(levels))
        return {k: self.output(inner[k], k) for k in sorted(levels)}

    def forward(self, x: Tensor, levels: set[int] | list[int] = (0, 1, 2, 3)) -> dict[int, Tensor]:
        return self.pyramid(self.features(x), levels)
