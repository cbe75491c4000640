"""How much of an AP, and of a difference of two APs, is down to which images were held out: a paired bootstrap.

The held-out set is a sample of ``n`` images. A bootstrap resample draws ``n`` of them with replacement (an image
drawn twice counts twice: its objects and its detections alike) and scores every init's detections on the same
draw, so the spread of ``AP_a(draw) - AP_b(draw)`` over ``resamples`` draws is the evaluation noise of the paired
difference: the standard error it would have if only the held-out images changed, with the trained detectors fixed.
Set beside the spread of the same difference over training seeds, it says whether more held-out images would make
the comparison sharper (evaluation noise large) or only more seeds would (evaluation noise small).

pycocotools matches detections to objects per image and category once (``COCOeval.evaluate``); each draw only
re-runs ``COCOeval.accumulate`` on the drawn images' match records, so a draw costs milliseconds, not an evaluation.
AP is COCO's: precision averaged over IoU 0.50:0.05:0.95, 101 recall points and the categories with ground truth,
all object sizes, at most 100 detections an image (``COCOeval.stats[0]``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import statistics

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mcl.transfer.evaluate import _for_type

_ALL_SIZES = 0          # COCOeval.params.areaRng[0]: every object size
_MAX_DETS = 100         # COCOeval.params.maxDets[-1]


def _matched(gt: COCO, detections: list[dict], iou_type: str) -> COCOeval:
    """``COCOeval`` after ``evaluate()`` on every ground-truth image (``detections`` non-empty)."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(_for_type(detections, iou_type)), iou_type)    # every image of gt
        evaluator.evaluate()
    return evaluator


def _ap_on(evaluator: COCOeval, draw: np.ndarray) -> float:
    """COCO AP of ``evaluator``'s detections on the images at positions ``draw`` of its image list (repeats count
    again); 0 where no category has ground truth there."""
    evaluated = evaluator._paramsEval
    n_images, n_sizes = len(evaluated.imgIds), len(evaluated.areaRng)
    records = evaluator.evalImgs                  # ordered category, size range, image
    drawn = copy.copy(evaluator)
    drawn.evalImgs = [records[k * n_sizes * n_images + _ALL_SIZES * n_images + i]
                      for k in range(len(evaluated.catIds)) for i in draw]
    drawn._paramsEval = copy.copy(evaluated)
    drawn._paramsEval.imgIds = [evaluated.imgIds[i] for i in draw]
    drawn._paramsEval.areaRng = [evaluated.areaRng[_ALL_SIZES]]
    params = copy.copy(drawn._paramsEval)
    params.maxDets = [_MAX_DETS]
    with contextlib.redirect_stdout(io.StringIO()):
        drawn.accumulate(params)
    precision = drawn.eval["precision"][:, :, :, 0, 0]      # (IoU thresholds, recall points, categories)
    present = precision[precision > -1]
    return float(present.mean()) if present.size else 0.0


def paired_ap_bootstrap(gt: COCO, detections: dict[str, list[dict]], resamples: int = 500, seed: int = 0,
                        iou_type: str = "bbox") -> dict:
    """Every init's AP on ``gt``'s images and its bootstrap standard error; every pair's difference and its own.

    ``detections``: init name -> COCO result dicts (``image_id``, ``category_id``, ``score``, ``bbox`` or
    ``segmentation``), all on ``gt``'s images. Returns ``{"images": n, "resamples": B, "ap": {name: AP},
    "se": {name: sd of AP over draws}, "diff": {(a, b): AP_a - AP_b}, "diff_se": {(a, b): sd over draws of
    AP_a - AP_b}}``, APs as fractions 0-1, pairs in the order the names come. ``ap`` is the full set's AP (equal
    to pycocotools' ``stats[0]``). An init with no detection scores 0 on every draw.
    """
    if resamples < 2:
        raise ValueError(f"resamples must be at least 2, got {resamples}")
    n_images = len(gt.getImgIds())
    if n_images == 0:
        raise ValueError("the ground truth has no images to draw from; give a COCO json with held-out images")
    evaluators = {name: _matched(gt, dets, iou_type) if dets else None for name, dets in detections.items()}
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, n_images, n_images) for _ in range(resamples)]
    full = np.arange(n_images)

    def ap(name: str, draw: np.ndarray) -> float:
        return _ap_on(evaluators[name], draw) if evaluators[name] is not None else 0.0

    names = list(detections)
    full_ap = {name: ap(name, full) for name in names}
    per_draw = {name: [ap(name, d) for d in draws] for name in names}
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    return {
        "images": n_images, "resamples": resamples, "ap": full_ap,
        "se": {name: statistics.stdev(per_draw[name]) for name in names},
        "diff": {(a, b): full_ap[a] - full_ap[b] for a, b in pairs},
        "diff_se": {(a, b): statistics.stdev([x - y for x, y in zip(per_draw[a], per_draw[b])]) for a, b in pairs},
    }
