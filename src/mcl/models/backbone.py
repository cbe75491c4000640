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

import functools

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FeaturePyramidNetwork

_BASIC = (64, 128, 256, 512)
_BOTTLENECK = (256, 512, 1024, 2048)
# C2..C5 channels of every torchvision ResNet we build (ResNeXt and wide ResNets keep ResNet-50's outputs)
RESNET_CHANNELS = {
    "resnet18": _BASIC, "resnet34": _BASIC, "resnet50": _BOTTLENECK, "resnet101": _BOTTLENECK,
    "resnet152": _BOTTLENECK, "resnext50_32x4d": _BOTTLENECK, "resnext101_32x8d": _BOTTLENECK,
    "resnext101_64x4d": _BOTTLENECK, "wide_resnet50_2": _BOTTLENECK, "wide_resnet101_2": _BOTTLENECK,
}
FPN_STRIDES = (4, 8, 16, 32)  # P2..P5


def make_resnet(arch: str) -> nn.Module:
    """A randomly initialised torchvision ResNet with plain BatchNorm (never downloads weights)."""
    if arch not in RESNET_CHANNELS:
        raise ValueError(f"ResNet {arch!r} is not supported (choose one of {', '.join(RESNET_CHANNELS)})")
    return getattr(torchvision.models, arch)(weights=None)


@functools.cache
def _body_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of ``arch``'s torchvision state dict without ``fc`` and BN counters (built on meta)."""
    with torch.device("meta"):
        model = make_resnet(arch)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def identify_resnet(state) -> str | None:
    """The torchvision ResNet whose body tensors ``state`` (``{key: tensor}``) holds, under whatever prefix
    (``conv1.weight``, ``backbone.body.conv1.weight``, ``model.online.backbone.body.conv1.weight``): the arch
    whose every body key is there with its shape. None when the tensors are no ResNet body we build (depth,
    groups and width tell ResNet-50, ResNeXt-50 32x4d and wide ResNet-50-2 apart)."""
    marker = "layer1.0.conv1.weight"
    prefix = next((k[:-len(marker)] for k in state if k.endswith(marker)
                   and (k == marker or k[-len(marker) - 1] == ".")), None)
    if prefix is None:
        return None
    body = _body_of(state, prefix)
    return next((arch for arch in RESNET_CHANNELS if _body_shapes(arch) == body), None)


def _body_of(state, prefix: str) -> dict[str, tuple[int, ...]]:
    parts = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
    return {k[len(prefix):]: tuple(v.shape) for k, v in state.items()
            if k.startswith(prefix) and k[len(prefix):].startswith(parts) and not k.endswith("num_batches_tracked")}


def closest_resnet(state, prefix: str) -> tuple[str, str]:
    """For a body that is no torchvision ResNet: the arch it differs least from (keys missing, extra or of another
    shape) and its first difference, as text (``layer4.1.bn2.weight is missing``)."""
    body = _body_of(state, prefix)

    def differences(arch: str) -> list[str]:
        want = _body_shapes(arch)
        return ([f"{k} is missing" for k in want if k not in body]
                + [f"{k} has shape {body[k]}, {arch} has {want[k]}" for k in want if k in body and body[k] != want[k]]
                + [f"{k} is not in {arch}" for k in body if k not in want])

    arch = min(RESNET_CHANNELS, key=lambda a: len(differences(a)))
    return arch, differences(arch)[0]


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
