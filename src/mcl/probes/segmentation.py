"""Linear segmentation on frozen features: a 1x1 conv (per-pixel softmax regression) and its mIoU.

Pixels are the stride-4 grid's cell centres (``class_map[4i + 2, 4j + 2]`` for feature ``(i, j)``); up to
``max_pixels`` of each split are sampled (uniformly per image, seeded). The classifier is
``mcl.probes.linear`` on standardised features. Scored on the held-out pixels:

    IoU_c = TP_c / (TP_c + FP_c + FN_c),   mIoU = mean of IoU_c over classes with TP + FP + FN > 0
    pixel accuracy = sum_c TP_c / pixels

(background, class 0, is one of the classes, as in VOC).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mcl.probes.linear import fit_softmax, predict, standardise


def grid_labels(class_maps: Tensor, stride: int = 4) -> Tensor:
    """``(N, S, S)`` -> ``(N, S/stride, S/stride)``: the label at each grid cell's centre pixel."""
    return class_maps[:, stride // 2::stride, stride // 2::stride]


def confusion(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``(num_classes, num_classes)`` counts, rows = truth, columns = prediction."""
    index = target.long() * num_classes + pred.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_metrics(conf: Tensor) -> dict:
    """mIoU, pixel accuracy and per-class IoU (None where a class is neither present nor predicted)."""
    tp = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - tp
    per_class = [float(t / u) if u > 0 else None for t, u in zip(tp, union)]
    seen = [v for v in per_class if v is not None]
    return {"miou": sum(seen) / len(seen) if seen else 0.0, "pixel_acc": float(tp.sum() / conf.sum().clamp_min(1)),
            "per_class_iou": per_class}


def linear_segmentation(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, num_classes: int,
                        steps: int = 50) -> dict:
    """Fit on ``train_x (n, d)``/``train_y (n,)``, score ``val_x``/``val_y``: :func:`iou_metrics` plus the
    score of always predicting the most common training class (``chance_miou``)."""
    tx, vx = standardise(train_x.float(), val_x.float())
    weight, bias = fit_softmax(tx, train_y, num_classes, steps)
    metrics = iou_metrics(confusion(predict(vx, weight, bias), val_y, num_classes))
    majority = torch.full_like(val_y, int(torch.bincount(train_y, minlength=num_classes).argmax()))
    metrics["chance_miou"] = iou_metrics(confusion(majority, val_y, num_classes))["miou"]
    metrics["train_pixels"], metrics["val_pixels"] = len(train_y), len(val_y)
    return metrics
