"""Any init as a frozen, detector-shaped encoder: C5, FPN P2..P5 and RoI features, nothing trained.

The encoder *is* the detector's front (``mcl.transfer.detection.build_detector``: ``backbone.body``,
``backbone.fpn``, ``roi_heads.box_roi_pool``, ``roi_heads.box_head``), initialised by the same
``load_initial_weights`` as fine-tuning, so a probe sees exactly what fine-tuning starts from. It runs in
eval mode (BatchNorm uses its running statistics) under ``torch.no_grad``.

Feature sets (S: the square input side):

- ``fpn``: P2..P5 each upsampled (bilinear) to the stride-4 grid and concatenated: ``(N, 4C, S/4, S/4)``;
- ``c5``: the ResNet's last stage upsampled to the same grid: ``(N, C5, S/4, S/4)``;
- RoI ``fpn``: ``MultiScaleRoIAlign`` of the ground-truth box on its FPN level (the detector's level
  mapper), 7x7, averaged: ``(M, C)``; RoI ``c5``: ``roi_align`` on C5 (scale 1/32), 7x7, averaged;
  RoI ``head``: the 4 box-head convs over the RoI ``fpn`` 7x7 map, averaged (pretrained for MCL, whose
  neck convs transfer there; random for inits without them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from mcl.errors import UserError
from mcl.models.backbone import identify_resnet
from mcl.transfer.detection import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_detector,
    load_initial_weights,
    read_init_state_dict,
)

HEAD_CONVS = 4
DENSE_SETS = ("fpn", "c5")
ROI_SETS = ("fpn", "c5", "head")


@dataclass(frozen=True)
class InitLayout:
    """What an init file holds: ResNet depth, FPN width (None: no FPN), box-head convs (MCL's neck)."""

    arch: str | None
    fpn_channels: int | None
    head_convs: int


def read_layout(init: str | None) -> InitLayout:
    """The layout of ``init`` (``random``/None: nothing known). Errors name the file."""
    if init in (None, "", "none", "random"):
        return InitLayout(None, None, 0)
    path = Path(init)
    if not path.is_file():
        raise UserError(f"init file not found: {path} (give an mcl checkpoint, an exported state dict, a ResNet "
                        f"file, or 'random')")
    state, prefix, _ = read_init_state_dict(path)                   # the tensors in the detector's key space
    keys = {prefix + k: v for k, v in state.items()}
    fpn = keys.get("backbone.fpn.layer_blocks.0.0.weight")
    heads = {k.split(".")[2] for k in keys if k.startswith("roi_heads.box_head.") and k.split(".")[2] in "0123"}
    return InitLayout(identify_resnet(keys), int(fpn.shape[0]) if fpn is not None else None, len(heads))


class FrozenEncoder(nn.Module):
    """The detector's body, FPN, RoI pooler and box head for ``init``; ``report`` says what was loaded."""

    def __init__(self, init: str | None, arch: str | None = None, fpn_channels: int | None = None):
        super().__init__()
        layout = read_layout(init)
        if arch and layout.arch and arch != layout.arch:
            raise UserError(f"init file {init} holds a {layout.arch} body but --arch is {arch}: "
                            f"drop --arch or give a {arch} checkpoint")
        if fpn_channels and layout.fpn_channels and fpn_channels != layout.fpn_channels:
            raise UserError(f"init file {init} has an FPN {layout.fpn_channels} wide but --fpn-channels is "
                            f"{fpn_channels}: drop --fpn-channels or set it to {layout.fpn_channels}")
        self.arch = layout.arch or arch or "resnet18"
        self.fpn_channels = layout.fpn_channels or fpn_channels or 128
        self.layout = layout
        detector = build_detector(self.arch, num_classes=2, with_masks=False, fpn_channels=self.fpn_channels)
        self.report = load_initial_weights(detector, init)
        self.body, self.fpn = detector.backbone.body, detector.backbone.fpn
        self.roi_pool = detector.roi_heads.box_roi_pool
        self.head_convs = nn.Sequential(*list(detector.roi_heads.box_head)[:HEAD_CONVS])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def loaded(self, part: str) -> bool:
        """True if ``part`` (backbone.body, backbone.fpn, roi_heads.box_head) came from the init file."""
        return self.report.loaded.get(part, (0, 0))[0] > 0

    def load_online(self, online_state: dict[str, Tensor]) -> None:
        """Copy a pretraining model's online encoder (keys ``backbone.body.*``, ``backbone.fpn.*``,
        ``neck.convs.k.*``) in, as export does: neck conv k -> box-head conv k. Used by the online probe."""
        body, fpn, head = {}, {}, {}
        for key, value in online_state.items():
            if key.startswith("backbone.body."):
                body[key[len("backbone.body."):]] = value
            elif key.startswith("backbone.fpn."):
                fpn[key[len("backbone.fpn."):]] = value
            elif key.startswith("neck.convs.") and int(key.split(".")[2]) < HEAD_CONVS:
                head[key[len("neck.convs."):]] = value
        for module, state in ((self.body, body), (self.fpn, fpn), (self.head_convs, head)):
            if state:
                module.load_state_dict(state, strict=False)

    @torch.no_grad()
    def maps(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``images (N, 3, S, S)`` in [0, 1] -> (C5 ``(N, C5, S/32, S/32)``, [P2..P5], P_k ``(N, C, S/2^k, S/2^k)``)."""
        x = (images.to(self.mean.device) - self.mean) / self.std
        c = self.body(x)
        p = self.fpn(c)
        return c["3"], [p[k] for k in ("0", "1", "2", "3")]

    @staticmethod
    def dense(c5: Tensor, pyramid: list[Tensor]) -> dict[str, Tensor]:
        """The dense feature sets on the stride-4 grid: ``fpn (N, 4C, S/4, S/4)``, ``c5 (N, C5, S/4, S/4)``."""
        grid = pyramid[0].shape[-2:]
        up = [pyramid[0]] + [F.interpolate(p, size=grid, mode="bilinear", align_corners=False) for p in pyramid[1:]]
        return {"fpn": torch.cat(up, 1), "c5": F.interpolate(c5, size=grid, mode="bilinear", align_corners=False)}

    @torch.no_grad()
    def rois(self, c5: Tensor, pyramid: list[Tensor], boxes: list[Tensor], size: int) -> dict[str, Tensor]:
        """RoI feature sets of ``boxes`` (one ``(M_i, 4)`` xyxy tensor per image): each ``(sum M_i, C)``."""
        boxes = [b.to(c5.device) for b in boxes]
        feats = {str(k): p for k, p in enumerate(pyramid)}
        pooled = self.roi_pool(feats, boxes, [(size, size)] * len(boxes))          # (M, C, 7, 7)
        c5_pooled = roi_align(c5, boxes, output_size=7, spatial_scale=c5.shape[-1] / size, sampling_ratio=2)
        return {"fpn": pooled.mean((2, 3)), "c5": c5_pooled.mean((2, 3)),
                "head": self.head_convs(pooled).mean((2, 3))}
