"""The detectron2 side of an export: torchvision detector names -> detectron2 names, and the config they need.

Names are computed by rules, not kept in a table. Sources are torchvision ``maskrcnn_resnet50_fpn_v2``
names (``backbone.body``, ``backbone.fpn``, the ``roi_heads.box_head`` convs); targets are detectron2
``GeneralizedRCNN`` names for a ResNet-FPN backbone and a ``FastRCNNConvFCHead`` box head, with a norm
(BN / SyncBN) in ResNet, FPN and head convs:

- ``backbone.body.conv1`` / ``bn1`` -> ``backbone.bottom_up.stem.conv1`` / ``stem.conv1.norm``
- ``backbone.body.layer{i}.{b}.conv{j}`` / ``bn{j}`` -> ``backbone.bottom_up.res{i+1}.{b}.conv{j}`` / ``.conv{j}.norm``
- ``backbone.body.layer{i}.{b}.downsample.0`` / ``.1`` -> ``backbone.bottom_up.res{i+1}.{b}.shortcut`` / ``.norm``
- ``backbone.fpn.inner_blocks.{k}.0`` / ``.1`` -> ``backbone.fpn_lateral{k+2}`` / ``.norm`` (index 0 is the C2 lateral)
- ``backbone.fpn.layer_blocks.{k}.0`` / ``.1`` -> ``backbone.fpn_output{k+2}`` / ``.norm``
- ``roi_heads.box_head.{k}.0`` / ``.1`` -> ``roi_heads.box_head.conv{k+1}`` / ``.norm``

BatchNorm's ``num_batches_tracked`` counter has no place in detectron2's files and maps to ``None``.
Both libraries put a bottleneck's stride in its 3x3 conv when detectron2 has
``MODEL.RESNETS.STRIDE_IN_1X1 False`` (its default, True, follows the original MSRA models).
"""

from __future__ import annotations

import re

from mcl.transfer.formats import DEPTHS, PIXEL_MEAN, PIXEL_STD

# (pattern on the torchvision name, detectron2 replacement); the first match wins.
_RULES: list[tuple[re.Pattern, str]] = [(re.compile(p), r) for p, r in [
    (r"^backbone\.body\.conv1\.(\w+)$", r"backbone.bottom_up.stem.conv1.\1"),
    (r"^backbone\.body\.bn1\.(\w+)$", r"backbone.bottom_up.stem.conv1.norm.\1"),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.(\w+)$", r"backbone.bottom_up.res<\1>.\2.conv\3.\4"),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.(\w+)$", r"backbone.bottom_up.res<\1>.\2.conv\3.norm.\4"),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.(\w+)$", r"backbone.bottom_up.res<\1>.\2.shortcut.\3"),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.(\w+)$", r"backbone.bottom_up.res<\1>.\2.shortcut.norm.\3"),
    (r"^backbone\.fpn\.inner_blocks\.(\d)\.0\.(\w+)$", r"backbone.fpn_lateral<\1>.\2"),
    (r"^backbone\.fpn\.inner_blocks\.(\d)\.1\.(\w+)$", r"backbone.fpn_lateral<\1>.norm.\2"),
    (r"^backbone\.fpn\.layer_blocks\.(\d)\.0\.(\w+)$", r"backbone.fpn_output<\1>.\2"),
    (r"^backbone\.fpn\.layer_blocks\.(\d)\.1\.(\w+)$", r"backbone.fpn_output<\1>.norm.\2"),
    (r"^roi_heads\.box_head\.(\d)\.0\.(\w+)$", r"roi_heads.box_head.conv<\1>.\2"),
    (r"^roi_heads\.box_head\.(\d)\.1\.(\w+)$", r"roi_heads.box_head.conv<\1>.norm.\2"),
]]
# "<n>" marks an index that shifts: layer i -> res(i+1), FPN index k -> stage k+2, head conv k -> conv(k+1).
_SHIFT = {"res": 1, "fpn_lateral": 2, "fpn_output": 2, "conv": 1}
_MARK = re.compile(r"(res|fpn_lateral|fpn_output|conv)<(\d+)>")


def to_detectron2(name: str) -> str | None:
    """The detectron2 name of a torchvision detector tensor, or ``None`` for ``num_batches_tracked``.

    Raises ``KeyError`` for a name outside the exported parts (body, FPN, box-head convs).
    """
    if name.endswith(".num_batches_tracked"):
        return None
    for pattern, replacement in _RULES:
        if pattern.match(name):
            marked = pattern.sub(replacement, name)
            return _MARK.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + _SHIFT[m.group(1)]}", marked)
    raise KeyError(f"no detectron2 name for {name!r}")




def detectron2_config(arch: str, fpn_channels: int, weights: str) -> str:
    """The detectron2 YAML that builds the model the exported names belong to (merge over Base-RCNN-FPN)."""
    res2 = 64 if DEPTHS[arch] < 50 else 256
    return f"""\
# detectron2 settings for weights exported by `mcl export` (docs/method.md, "Transfer").
# Merge over a Mask R-CNN FPN config, e.g. detectron2's COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml.
# The weights expect RGB input scaled like torchvision's (ImageNet mean/std, here in 0-255 units).
# On a single GPU use "BN" instead of "SyncBN".
MODEL:
  WEIGHTS: '{weights.replace("'", "''")}'
  PIXEL_MEAN: {PIXEL_MEAN}
  PIXEL_STD: {PIXEL_STD}
  BACKBONE:
    FREEZE_AT: 0
  RESNETS:
    DEPTH: {DEPTHS[arch]}
    RES2_OUT_CHANNELS: {res2}
    STRIDE_IN_1X1: False
    NORM: "SyncBN"
  FPN:
    OUT_CHANNELS: {fpn_channels}
    NORM: "SyncBN"
  ROI_BOX_HEAD:
    NAME: "FastRCNNConvFCHead"
    NUM_CONV: 4
    CONV_DIM: {fpn_channels}
    NUM_FC: 1
    NORM: "SyncBN"
  ROI_MASK_HEAD:
    NORM: "SyncBN"
INPUT:
  FORMAT: "RGB"
"""
