"""Mask R-CNN in torchvision's v2 layout, its initialisation from pretrained weights, and its fine-tuning.

The layout is ``maskrcnn_resnet50_fpn_v2``'s (docs/method.md, "Transfer"): ResNet body with trainable BN,
FPN with BN, RPN head with 2 convs, 4conv1fc box head with BN (``roi_heads.box_head.0-3`` convs,
``.5`` fc), mask head with BN. Other depths build the same modules, so state-dict keys differ only
inside ``backbone.body``. Without masks it is the matching Faster R-CNN (no ``roi_heads.mask_*``).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import lightning as L
import torch
import torchvision
from torch import nn
from torchvision.models.detection import (
    FasterRCNN,
    KeypointRCNN,
    MaskRCNN,
    RetinaNet,
    fasterrcnn_resnet50_fpn_v2,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, RPNHead, _default_anchorgen
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.retinanet import _default_anchorgen as _retinanet_anchorgen
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from mcl.config import from_dict
from mcl.engine.checkpoints import AtomicCheckpointIO
from mcl.errors import UserError
from mcl.models.backbone import identify_resnet, make_resnet
from mcl.transfer.evaluate import ANY_CLASS, coco_evaluate, format_table, predictions_to_coco, write_results
from mcl.transfer.export import convert_checkpoint, group
from mcl.transfer.finetune_base import FinetuneBase
from mcl.transfer.finetune_config import FinetuneConfig, TrainerConfig
from mcl.transfer.formats import DETECTOR_OF
from mcl.transfer.rescale import RESCALE_MODES, conv_bn_pairs, describe_factors, rescale_to_unit_variance

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class MultiScaleTransform(GeneralizedRCNNTransform):
    """torchvision's detector input transform with separate train and test sizes.

    Training draws each image's short side uniformly from ``train_min_sizes`` (torchvision supports a
    tuple there); evaluation uses ``test_min_size``; the long side is capped at ``max_size``. Boxes and
    masks are resized with the image, and predictions are mapped back to the original image size
    (so the dataset does not resize: ``mcl.transfer.coco_data``).
    """

    def __init__(self, train_min_sizes, test_min_size: int, max_size: int):
        super().__init__(tuple(train_min_sizes), max_size, IMAGENET_MEAN, IMAGENET_STD)
        self.train_min_sizes = tuple(train_min_sizes)
        self.test_min_size = test_min_size

    def resize(self, image, target=None):
        # torchvision evaluates at min_size[-1]; pick the tuple for the current mode first.
        self.min_size = self.train_min_sizes if self.training else (self.test_min_size,)
        return super().resize(image, target)


def bn_fpn_backbone(body: nn.Module, fpn_channels: int) -> BackboneWithFPN:
    """``maskrcnn_resnet50_fpn_v2``'s backbone around a torchvision ResNet ``body``: C2..C5 into an FPN with
    BatchNorm of width ``fpn_channels`` (outputs ``"0".."3"`` = P2..P5 and ``"pool"`` = P6, a max-pool of P5)."""
    if fpn_channels == 256:
        return _resnet_fpn_extractor(body, 5, norm_layer=nn.BatchNorm2d)
    layers = {f"layer{k}": str(k - 1) for k in range(1, 5)}
    widths = [body.inplanes // 8 * 2 ** k for k in range(4)]  # C2..C5 channels: inplanes = C5's
    return BackboneWithFPN(body, layers, widths, fpn_channels, LastLevelMaxPool(), norm_layer=nn.BatchNorm2d)


def _v2_layout(body: nn.Module, num_classes: int, with_masks: bool, fpn_channels: int = 256, keypoints: int = 0,
               **kwargs) -> nn.Module:
    """``maskrcnn_resnet50_fpn_v2``'s construction around any torchvision ResNet ``body`` (with ``keypoints`` > 0:
    torchvision's Keypoint R-CNN heads instead of the mask head).

    ``fpn_channels`` C sets the FPN width and, with it, every head conv (RPN, the 4 box-head convs, the
    4 mask-head convs): C = 256 is torchvision's and the paper's; the box head's fc stays 1024.
    """
    backbone = bn_fpn_backbone(body, fpn_channels)
    c = backbone.out_channels
    anchors = kwargs.pop("rpn_anchor_generator", None) or _default_anchorgen()
    rpn_head = RPNHead(c, anchors.num_anchors_per_location()[0], conv_depth=2)
    box_head = FastRCNNConvFCHead((c, 7, 7), [c] * 4, [1024], norm_layer=nn.BatchNorm2d)
    parts = dict(rpn_anchor_generator=anchors, rpn_head=rpn_head, box_head=box_head, **kwargs)
    if c != 256:  # torchvision's default predictors assume 256 channels; given explicitly, num_classes goes
        parts["box_predictor"] = FastRCNNPredictor(1024, num_classes)
        if with_masks:
            parts["mask_predictor"] = MaskRCNNPredictor(c, c, num_classes)
        if keypoints:
            parts["keypoint_head"] = KeypointRCNNHeads(c, [512] * 8)
        num_classes = None
    if keypoints:
        return KeypointRCNN(backbone, num_classes=num_classes, num_keypoints=keypoints, **parts)
    if with_masks:
        mask_head = MaskRCNNHeads(c, [c] * 4, 1, norm_layer=nn.BatchNorm2d)
        return MaskRCNN(backbone, num_classes=num_classes, mask_head=mask_head, **parts)
    return FasterRCNN(backbone, num_classes=num_classes, **parts)


def anchor_generator(sizes) -> AnchorGenerator:
    """One anchor size per FPN output (P2..P6), aspect ratios 0.5, 1, 2 (torchvision's default has 32..512)."""
    sizes = tuple(int(x) for x in sizes)
    if len(sizes) != 5 or any(x < 1 for x in sizes):
        raise UserError(f"model.anchor_sizes {list(sizes)}: give 5 positive sizes, one per FPN level P2..P6")
    return AnchorGenerator(tuple((x,) for x in sizes), ((0.5, 1.0, 2.0),) * 5)


DETECTORS = ("maskrcnn", "fasterrcnn", "retinanet", "keypointrcnn")
_TWO_STAGE_ONLY = ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
                   "rpn_post_nms_top_n_test", "box_batch_size_per_image")


def _retinanet_v2_layout(body: nn.Module, num_classes: int, fpn_channels: int, **kwargs) -> nn.Module:
    """``retinanet_resnet50_fpn_v2``'s construction around any torchvision ResNet ``body``.

    FPN on C3..C5 (no norm, convs with bias) plus ``LastLevelP6P7`` (P6 from C5, P7 from P6), the head with
    GroupNorm (32 groups at 256 channels; narrower FPNs: the largest divisor of half the width up to 32, so a 1x1
    P7 of a small image keeps 2 values per group) and GIoU box regression.
    ``box_detections_per_img`` / ``box_score_thresh`` become RetinaNet's ``detections_per_img`` / ``score_thresh``.
    """
    c5 = body.inplanes
    widths = [c5 // 4, c5 // 2, c5]
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, widths, fpn_channels,
                               LastLevelP6P7(c5, fpn_channels))
    anchors = kwargs.pop("rpn_anchor_generator", None) or _retinanet_anchorgen()
    head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes,
                         norm_layer=partial(nn.GroupNorm, math.gcd(32, fpn_channels // 2)))
    head.regression_head._loss_type = "giou"
    for two_stage in _TWO_STAGE_ONLY:
        kwargs.pop(two_stage, None)
    renamed = {"box_detections_per_img": "detections_per_img", "box_score_thresh": "score_thresh"}
    kwargs = {renamed.get(k, k): v for k, v in kwargs.items()}
    return RetinaNet(backbone, num_classes, anchor_generator=anchors, head=head, **kwargs)


def build_detector(arch: str = "resnet50", num_classes: int = 91, with_masks: bool = True, norm: str = "bn",
                   train_min_sizes=(800,), test_min_size: int = 800, max_size: int = 1333,
                   anchor_sizes=None, fpn_channels: int = 256, kind: str = "maskrcnn", num_keypoints: int = 17,
                   **kwargs) -> nn.Module:
    """A randomly initialised detector of ``kind``; nothing is downloaded.

    - ``maskrcnn``: torchvision's v2 layout (``maskrcnn_resnet50_fpn_v2``), Faster R-CNN if ``not with_masks``;
    - ``fasterrcnn``: the same without the mask head (``fasterrcnn_resnet50_fpn_v2``);
    - ``retinanet``: ``retinanet_resnet50_fpn_v2``'s layout (FPN on C3..C5 without norm, P6/P7, GroupNorm head);
    - ``keypointrcnn``: the v2 layout (BN FPN, 2-conv RPN head, 4conv1fc box head) with torchvision's keypoint
      head and ``num_keypoints`` (torchvision has no v2 Keypoint R-CNN; its v1 has no BN FPN nor conv box head).

    ``num_classes`` counts the background, as in torchvision (K categories -> K + 1).
    ``norm``: "bn" (trainable BatchNorm everywhere) or "syncbn" (the same, converted to SyncBatchNorm).
    ``fpn_channels``: FPN and head-conv width (256: torchvision's and the paper's; smaller for CPU demos).
    ``kwargs`` go to torchvision's detector class (e.g. ``rpn_post_nms_top_n_train``, ``box_detections_per_img``).
    """
    if norm not in ("bn", "syncbn"):
        raise ValueError(f"norm {norm!r} should be 'bn' or 'syncbn'")
    if kind not in DETECTORS:
        raise ValueError(f"detector {kind!r} is not one of {', '.join(DETECTORS)}")
    if anchor_sizes is not None:
        kwargs["rpn_anchor_generator"] = anchor_generator(anchor_sizes)
    if fpn_channels < 1:
        raise UserError(f"model.fpn_channels {fpn_channels}: give a positive width (256 is the paper's)")
    with_masks = with_masks and kind == "maskrcnn"
    if kind == "retinanet":
        model = _retinanet_v2_layout(make_resnet(arch), num_classes, fpn_channels, **kwargs)
    elif kind == "keypointrcnn":
        model = _v2_layout(make_resnet(arch), num_classes, False, fpn_channels, keypoints=num_keypoints, **kwargs)
    elif arch == "resnet50" and fpn_channels == 256:
        # with no weights torchvision trains all 5 stages and uses plain BatchNorm2d in the body
        builder = maskrcnn_resnet50_fpn_v2 if with_masks else fasterrcnn_resnet50_fpn_v2
        model = builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    else:
        model = _v2_layout(make_resnet(arch), num_classes, with_masks, fpn_channels, **kwargs)
    model.transform = MultiScaleTransform(train_min_sizes, test_min_size, max_size)
    if norm == "syncbn":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


# ---------------------------------------------------------------- initialisation from a file

REPORT_PARTS = ("backbone.body", "backbone.fpn", "roi_heads.box_head")
_CLASS_DEPENDENT = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


def _part(key: str) -> str:
    return next((p for p in REPORT_PARTS if key.startswith(p + ".")), "other")


def _summarise(keys) -> str:
    """``prefix (count), ...`` over at most 3 key components, e.g. ``roi_heads.mask_head (24)``."""
    counts = group(".".join(k.split(".")[:3]) for k in keys)
    return ", ".join(f"{prefix} ({n})" for prefix, n in sorted(counts.items())) or "none"


@dataclass
class InitReport:
    """Where the detector's tensors came from: per part ``(loaded, total)``, and what stayed random or unused."""

    source: str
    loaded: dict[str, tuple[int, int]] = field(default_factory=dict)
    random_init: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        bar = "=" * 72
        lines = [bar, f"detector initialisation: {self.source}"]
        lines += [f"  {part:20} {n:5d} / {total:5d} tensors loaded" for part, (n, total) in self.loaded.items()]
        lines.append(f"  random init ({len(self.random_init)} tensors): {_summarise(self.random_init)}")
        lines.append(f"  file tensors not used ({len(self.unused)}): {_summarise(self.unused)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines + [bar])


def local_torchvision_weights(arch: str) -> Path:
    """The torchvision ImageNet file for ``arch`` already in torch hub's cache (never downloaded)."""
    enum = torchvision.models.get_model_weights(arch)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    names = [Path(w.url).name for w in enum]
    for name in names:
        if (cache / name).is_file():
            return cache / name
    raise UserError(f"model.init=torchvision: no local {arch} weights in {cache} (expected {' or '.join(names)}); "
                    f"copy the file there or give its path to --init")


def _tensor_dict(obj) -> dict | None:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    return None


def _strip(state: dict, prefix: str) -> dict:
    if all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_init_state_dict(path: Path, fmt: str = "torchvision-maskrcnn") -> tuple[dict, str, str]:
    """Tensors of an init file, the prefix that puts their keys in the detector's key space, and what it was.

    mcl pretraining checkpoint (``state_dict`` keys ``model.online.*``) -> ``mcl.transfer.export`` to ``fmt``
    (the detector's export format: ``mcl.transfer.formats.DETECTOR_OF``);
    a torchvision ResNet (``conv1.weight``, ``layer1.*``) -> ``backbone.body.*``; a detector state dict,
    an ``mcl finetune`` checkpoint (``detector.*``) or a torchvision reference one (``model``) -> as is.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"cannot read init file {path} as a PyTorch state dict: {str(exc).splitlines()[0]}") from None
    inner = obj.get("state_dict") if isinstance(obj, dict) else None
    if isinstance(inner, dict) and any(k.startswith("model.online.") for k in inner):
        state, report = convert_checkpoint(path, fmt, encoder="online")
        return state, "", f"mcl pretraining checkpoint {path} (online encoder, via mcl.transfer.export)\n{report}"
    state = _tensor_dict(inner) or _tensor_dict(obj.get("model") if isinstance(obj, dict) else None) \
        or _tensor_dict(obj)
    if state is None:
        raise UserError(f"init file {path} holds no state dict (expected tensors, or a dict with 'state_dict')")
    state = _strip(_strip(_strip(state, "module."), "detector."), "model.")   # DDP, detector.pt, semseg.pt
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
        return state, "backbone.body.", f"ResNet state dict {path} (-> backbone.body)"
    return state, "", f"detector state dict {path}"


def load_initial_weights(model: nn.Module, init: str | None, parts: list[str] | None = None,
                         rescale: str = "none", kind: str = "maskrcnn") -> InitReport:
    """Load ``init`` into ``model`` (non-strict) and return a report of what was loaded per part.

    ``rescale``: "none" (the paper) or "unit_variance": scale every loaded conv that feeds a BatchNorm so that
    its pre-BN running variance is 1, as at random init, without changing the function (``mcl.transfer.rescale``).

    ``kind``: the detector (``build_detector``'s), for converting an mcl checkpoint to its layout.
    ``init``: None/"random" (nothing loaded), "torchvision" (local ImageNet ResNet of the body's depth),
    or a file (see ``read_init_state_dict``). A shape mismatch is an error naming the key, except in the
    class-count-dependent predictor layers, which stay random with a note.
    """
    if rescale not in RESCALE_MODES:
        raise UserError(f"model.rescale_init={rescale!r}: choose none (the paper) or unit_variance")
    own = model.state_dict()
    totals = Counter(_part(k) for k in own)
    unknown = sorted(set(parts or []) - set(REPORT_PARTS))
    if unknown:
        raise UserError(f"model.init_parts {unknown}: choose from {', '.join(REPORT_PARTS)}")
    if init in (None, "", "none", "random"):
        return InitReport("random init (no weights loaded)", {p: (0, totals[p]) for p in (*REPORT_PARTS, "other")},
                          random_init=list(own))
    if init == "torchvision":
        path = local_torchvision_weights(identify_resnet(own))
    else:
        path = Path(init)
    if not path.is_file():
        raise UserError(f"init file not found: {path} (give an mcl checkpoint, an exported state dict, "
                        f"or a ResNet file)")
    fmt = next(f for f, k in DETECTOR_OF.items() if k == kind)
    state, prefix, source = read_init_state_dict(path, fmt)
    arch, file_arch = identify_resnet(own), identify_resnet(state)
    if file_arch and arch and file_arch != arch:
        raise UserError(f"init file {path} holds a {file_arch} body but the detector is a {arch}: "
                        f"set model.arch={file_arch} or give a {arch} file")
    report = InitReport(source)
    matched = {}
    for file_key, value in state.items():
        key = prefix + file_key
        if key not in own or (parts is not None and _part(key) not in parts):
            report.unused.append(file_key)
        elif value.shape != own[key].shape:
            if key.startswith(_CLASS_DEPENDENT):
                report.notes.append(f"{key} has {tuple(value.shape)} in the file, {tuple(own[key].shape)} here "
                                    f"(another class count): kept random")
                report.unused.append(file_key)
            else:
                hint = (f"set model.fpn_channels={value.shape[0]}, the file's FPN width"
                        if key.startswith("backbone.fpn.") else "is model.arch the file's?")
                raise UserError(f"init file {path}: {key} has shape {tuple(value.shape)} but the detector needs "
                                f"{tuple(own[key].shape)} ({hint})")
        else:
            matched[key] = value
    if not matched:
        raise UserError(f"init file {path}: none of its {len(state)} tensors match the detector's keys "
                        f"(first file key: {next(iter(state), 'none')}); is it a detector, ResNet or mcl file?")
    model.load_state_dict(matched, strict=False)
    if rescale == "unit_variance":
        loaded = {conv for conv, bn, _, _ in conv_bn_pairs(model)
                  if f"{conv}.weight" in matched and f"{bn}.running_var" in matched}
        factors = rescale_to_unit_variance(model, only=loaded)
        if len(factors):
            report.notes.append(describe_factors(factors, len(loaded)))

    done = Counter(_part(k) for k in matched)
    report.loaded = {p: (done[p], totals[p]) for p in (*REPORT_PARTS, "other")}
    report.random_init = [k for k in own if k not in matched]
    if 0 < done["backbone.body"] < totals["backbone.body"]:
        report.notes.append(f"only {done['backbone.body']} of {totals['backbone.body']} backbone.body tensors "
                            f"came from the file")
    return report


# ---------------------------------------------------------------- fine-tuning (Lightning)

def expected_world_size(t: TrainerConfig) -> int:
    """Processes the Trainer will run (nodes x devices), known before it is built so the schedule can be."""
    devices = t.devices
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, str) and "," in devices:
        devices = [d for d in devices.split(",") if d.strip()]
    if isinstance(devices, list):
        count = len(devices)
    elif devices in ("auto", -1):
        gpu = t.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        count = torch.cuda.device_count() if gpu else 1
    else:
        count = int(devices)
    return t.num_nodes * count


class DetectionFinetuneModule(FinetuneBase):
    """Fine-tunes ``detector`` and scores it with pycocotools at each validation.

    Optimisation, frozen modules and the saved file: ``mcl.transfer.finetune_base.FinetuneBase``.
    Validation gathers predictions from every process, keeps one per image (samplers pad), scores them
    on rank 0 against ``val_gt`` and writes the table, ``results.json`` and prediction files to ``eval_dir``.
    """

    TASK = "detection"

    def __init__(self, config: dict, category_ids: list[int], category_names: list[str], with_masks: bool,
                 num_keypoints: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = from_dict(FinetuneConfig, config)
        m, size = self.cfg.model, self.cfg.input
        self.label_to_category = {i + 1: int(c) for i, c in enumerate(category_ids)}
        with_masks = with_masks and m.detector == "maskrcnn"
        self.iou_types = ("bbox", "segm") if with_masks else ("bbox", "keypoints") if num_keypoints else ("bbox",)
        self.detector = build_detector(
            m.arch, len(category_ids) + 1, with_masks, kind=m.detector, num_keypoints=num_keypoints or 17,
            train_min_sizes=size.train_min_sizes,
            test_min_size=size.test_min_size, max_size=size.max_size,
            rpn_pre_nms_top_n_train=m.rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=m.rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=m.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=m.rpn_post_nms_top_n_test,
            box_batch_size_per_image=m.box_batch_size_per_image, box_detections_per_img=m.box_detections_per_img,
            box_score_thresh=m.box_score_thresh, anchor_sizes=m.anchor_sizes, fpn_channels=m.fpn_channels)
        self.start()
        self.val_gt = None
        self._predictions: list = []

    def network(self) -> nn.Module:
        return self.detector

    def set_evaluation(self, gt, eval_dir: str | Path, **extra) -> None:
        """Score validations against ``gt`` (a pycocotools COCO) and write them to ``eval_dir``."""
        self.val_gt, self.eval_dir, self.eval_extra = gt, Path(eval_dir), extra

    def training_step(self, batch, batch_idx):
        images, targets = batch
        losses = self.detector(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise UserError(f"training diverged at step {self.global_step} (loss {loss.item()}); "
                            f"lower schedule.base_lr or raise schedule.warmup_iters")
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=len(images))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        self._last_loss = loss.detach()
        return loss

    def on_validation_epoch_start(self) -> None:
        self._predictions = []

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        outputs = self.detector(images)
        ids = [int(t["image_id"]) for t in targets]
        for image_id, out in zip(ids, outputs):
            self._predictions.append((image_id, predictions_to_coco([out], [image_id], self.label_to_category)))

    def on_validation_epoch_end(self) -> None:
        per_image = dict(self.gather(self._predictions))  # a padded duplicate replaces its twin
        self._predictions = []
        results = None
        if self.trainer.is_global_zero:
            if self.val_gt is None:
                raise RuntimeError("set_evaluation(gt, eval_dir) must be called before validating")
            predictions = [p for preds in per_image.values() for p in preds]
            results = coco_evaluate(self.val_gt, predictions, self.iou_types)
            last = getattr(self, "_last_loss", None)
            extra = dict(self.eval_extra, train_loss_last=float(last) if last is not None else None)
            write_results(self.eval_dir, results, predictions, step=self.global_step, **extra)
            print(f"\nCOCO evaluation at step {self.global_step} ({len(per_image)} images):\n"
                  f"{format_table(results)}\nwritten to {self.eval_dir}", flush=True)
        self.last_results = self.trainer.strategy.broadcast(results, src=0)
        self.last_eval_step = self.global_step
        scored = [t for t in (*self.iou_types, ANY_CLASS) if t in self.last_results]
        metrics = {f"val/{t}_{m}": v for t in scored for m, v in self.last_results[t].items() if v is not None}
        self.log_dict(metrics, sync_dist=True)  # identical on every rank (broadcast)


def make_trainer(t: TrainerConfig, run_dir: Path, max_steps: int = -1, val_every_batches: int | None = None,
                 fit: bool = True) -> L.Trainer:
    """The Lightning Trainer (DDP over devices and nodes, SyncBN with more than one process, AMP via
    ``precision``); with ``fit``: step checkpoints in ``run_dir`` (newest kept + ``last.ckpt``, written
    atomically), TensorBoard logs."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from mcl.engine.trainer import resolve_precision

    callbacks, loggers = [], False
    if fit:
        callbacks = [ModelCheckpoint(dirpath=run_dir, filename="step{step:07d}", auto_insert_metric_name=False,
                                     every_n_train_steps=t.checkpoint_every_steps, save_last=True,
                                     monitor="step", mode="max", save_top_k=t.keep_checkpoints),
                     LearningRateMonitor("step")]
        # TensorBoard appends across resumes (a CSVLogger with a fixed version would rewrite its file)
        loggers = TensorBoardLogger(run_dir, name="logs", version="")
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=resolve_precision(t.precision), sync_batchnorm=t.sync_batchnorm,
        accumulate_grad_batches=t.accumulate_grad_batches, gradient_clip_val=t.gradient_clip_val,
        max_steps=max_steps, max_epochs=-1 if max_steps > 0 else None,
        val_check_interval=val_every_batches, check_val_every_n_epoch=None if val_every_batches else 1,
        num_sanity_val_steps=0, log_every_n_steps=t.log_every_steps, default_root_dir=run_dir,
        logger=loggers, callbacks=callbacks, enable_progress_bar=t.progress_bar, enable_model_summary=False,
        plugins=[AtomicCheckpointIO()])
    expected = expected_world_size(t)
    if trainer.world_size != expected:
        raise UserError(f"trainer.devices={t.devices!r} gave {trainer.world_size} processes, expected {expected}; "
                        f"set trainer.devices to a number")
    return trainer
