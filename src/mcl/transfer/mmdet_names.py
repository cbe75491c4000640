"""The mmdetection side of an export: torchvision detector names -> mmdetection names, and the config they need.

Names are computed by rules, not kept in a table. Sources are torchvision ``maskrcnn_resnet50_fpn_v2``
names (``backbone.body``, ``backbone.fpn``, the ``roi_heads.box_head`` convs 0-3); targets are mmdetection 3.x
``MaskRCNN`` state-dict names for ``ResNet`` + ``FPN`` + ``StandardRoIHead`` with a ``Shared4Conv1FCBBoxHead``,
``norm_cfg=dict(type='SyncBN')`` in backbone, neck and box head (``mmdet_config`` builds exactly that):

- ``backbone.body.{rest}`` -> ``backbone.{rest}``: mmdet's ResNet uses torchvision's names (``conv1``, ``bn1``,
  ``layer{i}.{b}.conv{j}`` / ``bn{j}``, ``layer{i}.{b}.downsample.0`` conv / ``.1`` norm)
- ``backbone.fpn.inner_blocks.{k}.0`` / ``.1`` -> ``neck.lateral_convs.{k}.conv`` / ``.bn`` (index 0 is C2 in both)
- ``backbone.fpn.layer_blocks.{k}.0`` / ``.1`` -> ``neck.fpn_convs.{k}.conv`` / ``.bn``
- ``roi_heads.box_head.{k}.0`` / ``.1`` -> ``roi_head.bbox_head.shared_convs.{k}.conv`` / ``.bn`` (k = 0..3)

The tensor names below the module (``weight``, ``bias``, ``running_mean``, ``running_var``,
``num_batches_tracked``) are the same in both: mmdet's norms are torch BatchNorm subclasses (``SyncBN`` is
``torch.nn.SyncBatchNorm``). mmdet state dicts hold ``num_batches_tracked``, so the counters are kept
(mapped one-to-one; ``to_mmdet(name, counters=False)`` gives ``None`` for them instead). No conv has a bias
on either side (mmcv's ``ConvModule`` drops it when a norm follows; torchvision's ``Conv2dNormActivation`` too).
Both put a bottleneck's stride in its 3x3 conv (mmdet ``style='pytorch'``), and both make P6 by a stride-2
max-pool of P5 (no tensors). See ``MMDET_FRESH`` for what stays random.

The file to write: ``torch.save({"state_dict": {mmdet name: tensor}, "meta": {...}}, PATH)``, mmdet's own checkpoint
layout. mmengine's ``load_checkpoint`` (what ``load_from`` runs, ``strict=False``) also takes a bare
``{name: tensor}`` dict, but its ``EMAHook`` reads ``checkpoint["state_dict"]``.

Facts read from mmdetection 3.3.0's own source (the PyPI wheel ``mmdet-3.3.0-py3-none-any.whl``, i.e. the
v3.3.0 release; the mmdetection repository snapshot was too large to fetch) and mmcv's at tag v2.1.0
(57c4e25e, the newest mmcv that mmdet 3.3.0 accepts; both files are unchanged up to a8073c74):

- ``mmdet/models/backbones/resnet.py``: ``ResNet._make_stem_layer`` (``conv1`` + ``build_norm_layer(postfix=1)``),
  ``layer{i+1}`` stages, ``Bottleneck`` / ``BasicBlock`` (``conv{j}`` + norm ``postfix=j``, ``downsample``),
  ``style='pytorch'``: ``conv2_stride = stride``
- ``mmdet/models/layers/res_layer.py``: ``downsample = nn.Sequential(conv 1x1, norm)`` (no avg-pool unless avg_down)
- ``mmdet/models/necks/fpn.py``: ``lateral_convs`` / ``fpn_convs`` ``ModuleList`` of ``ConvModule`` built for
  ``i in range(start_level=0, backbone_end_level)``, lateral 1x1 (with norm unless ``no_norm_on_lateral``),
  output 3x3; ``act_cfg=None``; extra levels by ``F.max_pool2d(outs[-1], 1, stride=2)``
- ``mmdet/models/roi_heads/bbox_heads/convfc_bbox_head.py``: ``Shared4Conv1FCBBoxHead`` = 4 ``shared_convs``
  (``ConvModule`` 3x3, default ReLU) + 1 ``shared_fcs`` ``nn.Linear``; ``fc_cls``, ``fc_reg``
- ``mmdet/models/detectors/two_stage.py`` (``backbone``, ``neck``, ``rpn_head``, ``roi_head``) and
  ``mmdet/models/roi_heads/standard_roi_head.py`` (``bbox_head``, ``mask_head``): the state-dict prefixes
- ``mmcv/cnn/bricks/conv_module.py``: ``self.conv``, norm added as ``build_norm_layer(norm_cfg, ...)``'s name,
  ``bias='auto'`` -> no bias with a norm; ``mmcv/cnn/bricks/norm.py``: ``infer_abbr`` gives ``'bn'`` for
  ``_BatchNorm`` subclasses (``SyncBN`` = torch ``SyncBatchNorm``), name = abbr + postfix
- ``configs/mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py`` and ``configs/_base_/models/mask-rcnn_r50_fpn.py``: the base
  this config merges over (backbone ``init_cfg`` there is ``torchvision://resnet50``, set to ``None`` here)
"""

from __future__ import annotations

import re

from mcl.transfer.formats import DEPTHS, PIXEL_MEAN, PIXEL_STD

# (pattern on the torchvision name, mmdetection replacement); the first match wins.
_RULES: list[tuple[re.Pattern, str]] = [(re.compile(p), r) for p, r in [
    (r"^backbone\.body\.((?:conv1|bn1)\.\w+)$", r"backbone.\1"),
    (r"^backbone\.body\.(layer[1-4]\.\d+\.(?:conv\d|bn\d|downsample\.[01])\.\w+)$", r"backbone.\1"),
    (r"^backbone\.fpn\.inner_blocks\.([0-3])\.0\.(\w+)$", r"neck.lateral_convs.\1.conv.\2"),
    (r"^backbone\.fpn\.inner_blocks\.([0-3])\.1\.(\w+)$", r"neck.lateral_convs.\1.bn.\2"),
    (r"^backbone\.fpn\.layer_blocks\.([0-3])\.0\.(\w+)$", r"neck.fpn_convs.\1.conv.\2"),
    (r"^backbone\.fpn\.layer_blocks\.([0-3])\.1\.(\w+)$", r"neck.fpn_convs.\1.bn.\2"),
    (r"^roi_heads\.box_head\.([0-3])\.0\.(\w+)$", r"roi_head.bbox_head.shared_convs.\1.conv.\2"),
    (r"^roi_heads\.box_head\.([0-3])\.1\.(\w+)$", r"roi_head.bbox_head.shared_convs.\1.bn.\2"),
]]

MMDET_FRESH = "RPN head, box head shared_fcs.0 + fc_cls + fc_reg, mask head"
MMDET_FRESH_PREFIXES = ("rpn_head.", "roi_head.bbox_head.shared_fcs.", "roi_head.bbox_head.fc_cls.",
                        "roi_head.bbox_head.fc_reg.", "roi_head.mask_head.")


def to_mmdet(name: str, counters: bool = True) -> str | None:
    """The mmdetection name of a torchvision detector tensor.

    BN ``num_batches_tracked`` counters are mapped too (mmdet keeps them); with ``counters=False`` they give
    ``None`` (drop). Raises ``KeyError`` for a name outside the exported parts (body, FPN, box-head convs 0-3).
    """
    if not counters and name.endswith(".num_batches_tracked"):
        return None
    for pattern, replacement in _RULES:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    raise KeyError(f"no mmdetection name for {name!r}")




def mmdet_config(arch: str, fpn_channels: int, weights_path: str) -> str:
    """The mmdetection 3.x Python config that builds the model the exported names belong to and loads them."""
    depth = DEPTHS[arch]
    c2 = 64 if depth < 50 else 256
    in_channels = [c2 * 2 ** k for k in range(4)]
    c = fpn_channels
    return f"""\
# mmdetection 3.x config for weights exported by `mcl export --format mmdet` (docs/method.md, "Transfer").
# Inside an mmdetection checkout the base can also be 'configs/mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'.
# The weights expect RGB input scaled like torchvision's (ImageNet mean/std, here in 0-255 units); mmdet
# decodes images as BGR, hence bgr_to_rgb=True. On a single GPU use 'BN' instead of 'SyncBN'; if a GPU can
# get zero RoIs, mmdet's strong baselines use dict(type='MMSyncBN') in the heads (same tensor names).
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    data_preprocessor=dict(
        mean={PIXEL_MEAN},
        std={PIXEL_STD},
        bgr_to_rgb=True),
    backbone=dict(
        depth={depth},
        style='pytorch',  # stride in the 3x3 conv, like torchvision
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        init_cfg=None),  # no ImageNet download: load_from below sets backbone, neck and box-head convs
    neck=dict(
        in_channels={in_channels},
        out_channels={c},
        norm_cfg=norm_cfg),
    rpn_head=dict(in_channels={c}, feat_channels={c}),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels={c}),
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            in_channels={c},
            conv_out_channels={c},
            fc_out_channels=1024,
            conv_cfg=None,
            norm_cfg=norm_cfg),
        mask_roi_extractor=dict(out_channels={c}),
        mask_head=dict(in_channels={c}, conv_out_channels={c}, norm_cfg=norm_cfg)))

# Detector-level names (backbone.*, neck.*, roi_head.bbox_head.shared_convs.*), loaded non-strictly
# after initialisation; left random: {MMDET_FRESH}.
load_from = {str(weights_path)!r}
"""
