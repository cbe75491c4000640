"""Speed settings that do not change the maths: channels_last, ``torch.compile``, activation checkpointing.

- ``channels_last`` (``trainer.channels_last``: ``auto`` = on when training on CUDA): the weights of
  4-d convolutions are stored NHWC, which cuDNN's tensor-core kernels prefer under bf16/fp16.
- ``torch.compile`` (``trainer.compile``): every ResNet body in the model is compiled in place
  (``nn.Module.compile``), so state-dict keys, checkpoints and export are unchanged. The first
  steps of each input shape pay the compile time.
- Activation checkpointing (``model.activation_checkpointing``, MCL only): the backbone's four
  stages keep only their inputs in the forward pass and recompute inside the backward, trading
  about one extra backbone forward for most of the backbone's activation memory. BatchNorm running
  statistics see the recomputed batch twice (the batch statistics used for the output are the same).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter


def wants_channels_last(setting, device_type: str) -> bool:
    """``True``/``False`` as given; ``"auto"``: on for CUDA only (on the CPU NHWC convs are usually slower)."""
    if setting == "auto":
        return device_type == "cuda"
    return bool(setting)


def resnet_bodies(model: nn.Module) -> list[nn.Module]:
    """The outermost ResNet trunks (``IntermediateLayerGetter`` or torchvision ``ResNet``) inside ``model``."""
    found: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        if isinstance(module, (IntermediateLayerGetter, torchvision.models.ResNet)):
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found


def apply_speed_settings(model: nn.Module, channels_last, compile_bodies: bool, device_type: str) -> list[str]:
    """Apply the settings in place; returns what was switched on (for the run's log)."""
    applied = []
    if wants_channels_last(channels_last, device_type):
        model.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    if compile_bodies:
        bodies = resnet_bodies(model)
        for body in bodies:
            body.compile()
        applied.append(f"torch.compile ({len(bodies)} ResNet bodies)")
    return applied
