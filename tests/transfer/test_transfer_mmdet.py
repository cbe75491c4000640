"""mmdetection names for exports: torchvision Mask R-CNN v2 names -> mmdet 3.x names, and the config that builds them.

The first tests always run: the renaming is one-to-one over everything the export covers, a hand-written table
(each entry read from mmdet's source, see ``mcl.transfer.mmdet_names``) holds, and names and shapes equal a
layout written from mmdet's model definitions. The last tests build mmdet's own Mask R-CNN from
``mmdet_config`` and are skipped unless ``mmdet`` is importable. It is not a project dependency; to run them
without compiling anything::

    pip install --no-deps --target /tmp/mmlibs mmdet==3.3.0 mmengine==0.10.7 addict yapf rich markdown-it-py \\
        mdurl pygments opencv-python-headless scipy shapely terminaltables six platformdirs tomli "setuptools<81"
    git clone --branch v2.1.0 https://github.com/open-mmlab/mmcv /tmp/mmcv_src   # Python sources, not built
    PYTHONPATH=/tmp/mmlibs:/tmp/mmcv_src python -m pytest -q tests/transfer/test_transfer_mmdet.py

(mmdet 3.3.0 accepts mmcv >= 2.0.0rc4, < 2.2.0; ``setuptools<81`` brings back the ``pkg_resources`` that
mmengine's ``mmdet::`` config lookup imports.) mmdet's model package imports ``mmcv.ops``, which loads the
compiled ``mmcv._ext`` at import time; when that is absent, ``mmdet_models`` puts a stand-in module there whose
functions raise if called. Building a model and loading tensors call none of them, and the forward passes
compared here (ResNet, FPN, shared convs) are plain torch.
"""

import importlib.util
import sys
import types

import pytest
import torch
from torch import nn
from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

from mcl.transfer.detection import build_detector
from mcl.transfer.mmdet_names import MMDET_FRESH_PREFIXES, PIXEL_MEAN, PIXEL_STD, mmdet_config, to_mmdet

COVERED = ("backbone.body.", "backbone.fpn.", *(f"roi_heads.box_head.{k}." for k in range(4)))
MMDET_COVERED = ("backbone.", "neck.", "roi_head.bbox_head.shared_convs.")
# torchvision name -> mmdet name, each read from mmdet's / mmcv's source (mcl.transfer.mmdet_names lists them)
TABLE = {
    "backbone.body.conv1.weight": "backbone.conv1.weight",
    "backbone.body.bn1.running_mean": "backbone.bn1.running_mean",
    "backbone.body.bn1.num_batches_tracked": "backbone.bn1.num_batches_tracked",
    "backbone.body.layer1.0.conv1.weight": "backbone.layer1.0.conv1.weight",
    "backbone.body.layer1.0.downsample.0.weight": "backbone.layer1.0.downsample.0.weight",
    "backbone.body.layer1.0.downsample.1.running_var": "backbone.layer1.0.downsample.1.running_var",
    "backbone.body.layer3.5.bn3.bias": "backbone.layer3.5.bn3.bias",
    "backbone.body.layer4.2.conv2.weight": "backbone.layer4.2.conv2.weight",
    "backbone.fpn.inner_blocks.0.0.weight": "neck.lateral_convs.0.conv.weight",
    "backbone.fpn.inner_blocks.0.1.weight": "neck.lateral_convs.0.bn.weight",
    "backbone.fpn.inner_blocks.3.1.running_var": "neck.lateral_convs.3.bn.running_var",
    "backbone.fpn.layer_blocks.1.0.weight": "neck.fpn_convs.1.conv.weight",
    "backbone.fpn.layer_blocks.3.1.bias": "neck.fpn_convs.3.bn.bias",
    "roi_heads.box_head.0.0.weight": "roi_head.bbox_head.shared_convs.0.conv.weight",
    "roi_heads.box_head.2.1.running_mean": "roi_head.bbox_head.shared_convs.2.bn.running_mean",
    "roi_heads.box_head.3.1.bias": "roi_head.bbox_head.shared_convs.3.bn.bias",
}


def covered_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(COVERED)}


def mapped_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    mapped = {to_mmdet(k): shape for k, shape in covered_shapes(model).items()}
    assert len(mapped) == len(covered_shapes(model))
    return mapped


def meta_detector(arch: str, fpn_channels: int) -> nn.Module:
    with torch.device("meta"):
        if arch == "resnet50" and fpn_channels == 256:
            return maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)
        return build_detector(arch, 3, fpn_channels=fpn_channels)


def mmdet_layout(depth: int, fpn: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of mmdet's ResNet + FPN + shared convs, written from mmdet's model definitions.

    ``ResNet``: ``conv1`` 7x7 + ``bn1``; ``layer{i+1}`` with ``arch_settings`` blocks, ``planes = 64 * 2**i``;
    ``Bottleneck`` (expansion 4: ``conv1`` 1x1, ``conv2`` 3x3, ``conv3`` 1x1) or ``BasicBlock`` (expansion 1:
    ``conv1``, ``conv2`` 3x3), each ``conv{j}`` with ``bn{j}``; ``ResLayer`` adds ``downsample.0`` 1x1 conv +
    ``downsample.1`` norm when stride != 1 or in != out channels. ``FPN``: ``lateral_convs.{i}`` 1x1 from C(i+2),
    ``fpn_convs.{i}`` 3x3, each ``ConvModule`` = ``conv`` (no bias) + ``bn``. ``Shared4Conv1FCBBoxHead``:
    ``shared_convs.{0..3}`` 3x3 ``ConvModule``. Norms: weight, bias, running_mean, running_var, num_batches_tracked.
    """
    out: dict[str, tuple[int, ...]] = {}

    def conv(name, norm, c_out, c_in, k):
        out[f"{name}.weight"] = (c_out, c_in, k, k)
        out.update({f"{norm}.{p}": (c_out,) for p in ("weight", "bias", "running_mean", "running_var")})
        out[f"{norm}.num_batches_tracked"] = ()

    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    expansion = 4 if depth >= 50 else 1
    conv("backbone.conv1", "backbone.bn1", 64, 3, 7)
    c_in, widths = 64, []
    for i, n in enumerate(blocks):
        planes = 64 * 2 ** i
        for b in range(n):
            name = f"backbone.layer{i + 1}.{b}"
            if expansion == 4:
                convs = [(planes, c_in, 1), (planes, planes, 3), (4 * planes, planes, 1)]
            else:
                convs = [(planes, c_in, 3), (planes, planes, 3)]
            for j, (o, i_, k) in enumerate(convs, 1):
                conv(f"{name}.conv{j}", f"{name}.bn{j}", o, i_, k)
            if b == 0 and (i > 0 or c_in != planes * expansion):
                conv(f"{name}.downsample.0", f"{name}.downsample.1", planes * expansion, c_in, 1)
            c_in = planes * expansion
        widths.append(c_in)
    for i, width in enumerate(widths):
        conv(f"neck.lateral_convs.{i}.conv", f"neck.lateral_convs.{i}.bn", fpn, width, 1)
        conv(f"neck.fpn_convs.{i}.conv", f"neck.fpn_convs.{i}.bn", fpn, fpn, 3)
    for k in range(4):
        conv(f"roi_head.bbox_head.shared_convs.{k}.conv", f"roi_head.bbox_head.shared_convs.{k}.bn", fpn, fpn, 3)
    return out


# ---------------------------------------------------------------- always run

def test_every_covered_torchvision_key_maps_one_to_one_and_the_table_holds():
    keys = list(covered_shapes(meta_detector("resnet50", 256)))
    assert len(keys) == 2 * 24 + 4 * 6 + sum(k.startswith("backbone.body.") for k in keys) and len(keys) > 380
    names = [to_mmdet(k) for k in keys]
    assert None not in names
    assert len(set(names)) == len(names)
    assert all(n.startswith(MMDET_COVERED) for n in names)
    assert set(TABLE) <= set(keys)
    assert {k: to_mmdet(k) for k in TABLE} == TABLE
    counters = [k for k in keys if k.endswith("num_batches_tracked")]
    assert len(counters) == 53 + 8 + 4
    assert all(to_mmdet(k, counters=False) is None for k in counters)
    assert to_mmdet("backbone.fpn.layer_blocks.2.1.weight", counters=False) == "neck.fpn_convs.2.bn.weight"


@pytest.mark.parametrize("arch,fpn", [("resnet50", 256), ("resnet18", 32), ("resnet101", 64)])
def test_mapped_names_and_shapes_equal_mmdets_layout(arch, fpn):
    depth = int(arch.removeprefix("resnet"))
    assert mapped_shapes(meta_detector(arch, fpn)) == mmdet_layout(depth, fpn)


@pytest.mark.parametrize("name", [
    "rpn.head.conv.0.0.weight", "roi_heads.box_head.5.weight", "roi_heads.box_predictor.cls_score.weight",
    "roi_heads.mask_head.0.0.weight", "roi_heads.mask_predictor.conv5_mask.weight", "backbone.body.fc.weight",
    "roi_heads.box_head.4.0.weight", "backbone.fpn.inner_blocks.4.0.weight", "backbone.body.conv1.weight.extra",
])
def test_names_outside_the_exported_parts_are_refused(name):
    with pytest.raises(KeyError, match="no mmdetection name"):
        to_mmdet(name)


def run_config(text: str) -> dict:
    """The snippet's variables; it is plain Python (``_base_`` is only a string until mmengine reads it)."""
    scope: dict = {}
    exec(compile(text, "mmdet_config", "exec"), scope)
    return scope


@pytest.mark.parametrize("arch,fpn,in_channels", [("resnet50", 256, [256, 512, 1024, 2048]),
                                                  ("resnet18", 32, [64, 128, 256, 512])])
def test_config_sets_what_the_weights_need(arch, fpn, in_channels):
    path = "/runs/it's here/mcl_mmdet.pth"
    cfg = run_config(mmdet_config(arch, fpn, path))
    assert cfg["_base_"] == "mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py" and cfg["load_from"] == path
    model, sync = cfg["model"], dict(type="SyncBN", requires_grad=True)
    assert model["data_preprocessor"] == dict(mean=PIXEL_MEAN, std=PIXEL_STD, bgr_to_rgb=True)
    assert PIXEL_MEAN == [123.675, 116.28, 103.53] and PIXEL_STD == [58.395, 57.12, 57.375]
    assert model["backbone"] == dict(depth=int(arch[6:]), style="pytorch", frozen_stages=-1, norm_cfg=sync,
                                     norm_eval=False, init_cfg=None)
    assert model["neck"] == dict(in_channels=in_channels, out_channels=fpn, norm_cfg=sync)
    head = model["roi_head"]["bbox_head"]
    assert head == dict(type="Shared4Conv1FCBBoxHead", in_channels=fpn, conv_out_channels=fpn, fc_out_channels=1024,
                        conv_cfg=None, norm_cfg=sync)
    assert model["rpn_head"] == dict(in_channels=fpn, feat_channels=fpn)
    assert model["roi_head"]["mask_head"]["in_channels"] == fpn


# ---------------------------------------------------------------- with mmdetection itself

@pytest.fixture(scope="module")
def mmdet_models():
    """mmdet's MODELS registry with all modules registered (a stand-in for mmcv's compiled ops if not built)."""
    try:
        import mmdet  # noqa: F401 - asserts compatible mmcv / mmengine versions on import
    except (ImportError, AssertionError) as exc:
        pytest.skip(f"mmdetection is not importable ({exc}); see this module's docstring")
    if "mmcv._ext" not in sys.modules and importlib.util.find_spec("mmcv._ext") is None:
        sys.modules["mmcv._ext"] = _NoCompiledOps("mmcv._ext")
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    return MODELS


class _NoCompiledOps(types.ModuleType):
    """Stands in for ``mmcv._ext``: every op exists (mmcv checks that at import) and raises when called."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise RuntimeError(f"mmcv's compiled op {name} is not built")
        return missing


def build_mmdet(models, arch, fpn, weights="unused.pth"):
    from mmengine.config import Config

    cfg = Config.fromstring(mmdet_config(arch, fpn, str(weights)), file_format=".py")
    return models.build(cfg.model), cfg


@pytest.mark.parametrize("arch,fpn", [("resnet50", 256), ("resnet18", 32)])
def test_mmdet_builds_from_the_config_with_exactly_the_mapped_keys_and_shapes(mmdet_models, arch, fpn):
    model, _ = build_mmdet(mmdet_models, arch, fpn)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    covered = {k: s for k, s in own.items() if k.startswith(MMDET_COVERED)}
    assert mapped_shapes(meta_detector(arch, fpn)) == covered
    fresh = set(own) - set(covered)
    assert all(k.startswith(MMDET_FRESH_PREFIXES) for k in fresh)
    assert all(any(k.startswith(p) for k in fresh) for p in MMDET_FRESH_PREFIXES)
    head = model.roi_head.bbox_head
    assert type(head).__name__ == "Shared4Conv1FCBBoxHead" and head.num_shared_fcs == 1
    assert model.backbone.style == "pytorch" and not model.backbone.norm_eval and model.backbone.frozen_stages == -1
    norms = [m for part in (model.backbone, model.neck, head.shared_convs) for m in part.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    pre = model.data_preprocessor
    assert pre._channel_conversion is True
    assert torch.allclose(pre.mean.flatten(), torch.tensor(PIXEL_MEAN))
    assert torch.allclose(pre.std.flatten(), torch.tensor(PIXEL_STD))


def randomise(model: nn.Module, seed: int) -> None:
    """Random covered tensors, BN statistics included, so that a swapped or missed tensor changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not key.startswith(COVERED):
                continue
            if not value.is_floating_point():
                value.fill_(7)
            elif key.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
            elif key.endswith(("running_mean", "bias")):
                value.copy_(0.1 * torch.randn(value.shape, generator=gen))
            elif value.dim() == 1:   # BN weight
                value.copy_(0.5 + 0.5 * torch.rand(value.shape, generator=gen))
            else:                    # conv weight: keep activations O(1) through the layers
                value.copy_(torch.randn(value.shape, generator=gen) * (2 / value[0].numel()) ** 0.5)


def test_loading_the_mapped_file_with_mmengine_gives_torchvisions_features(mmdet_models, tmp_path):
    from mmengine.runner.checkpoint import load_checkpoint

    tv = build_detector("resnet50", 3).eval()
    randomise(tv, seed=0)
    state = {to_mmdet(k): v.clone() for k, v in tv.state_dict().items() if k.startswith(COVERED)}
    path = tmp_path / "mcl_mmdet.pth"
    torch.save({"state_dict": state, "meta": {"source": "mcl"}}, path)
    model, cfg = build_mmdet(mmdet_models, "resnet50", 256, path)
    assert cfg.load_from == str(path)
    own = model.state_dict()
    before = {k: v.clone() for k, v in own.items() if k.startswith(MMDET_FRESH_PREFIXES)}
    load_checkpoint(model, cfg.load_from, map_location="cpu", strict=False)   # what Runner does for load_from
    own = model.state_dict()
    for key, value in state.items():
        assert torch.equal(own[key], value), key
    assert all(torch.equal(own[k], v) for k, v in before.items())   # fresh parts untouched
    assert model.load_state_dict(state, strict=False).unexpected_keys == []
    model.eval()
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    rois = torch.randn(5, 256, 7, 7, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = list(tv.backbone(x).values())
        theirs = list(model.neck(model.backbone(x)))
        head_ours, head_theirs = nn.Sequential(*list(tv.roi_heads.box_head)[:4])(rois), rois
        for conv in model.roi_head.bbox_head.shared_convs:
            head_theirs = conv(head_theirs)
    assert len(ours) == len(theirs) == 5
    for level, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape and a.abs().max() > 0.1, level
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()), msg=f"FPN level {level}")
    torch.testing.assert_close(head_theirs, head_ours, rtol=1e-4, atol=1e-4 * float(head_ours.abs().max()))
