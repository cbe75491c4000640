"""COCO detection/segmentation scores with pycocotools, in fractions 0-1 (the table prints x100).

``coco_evaluate(gt, predictions)`` -> ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "segm": {...}}``
where AP averages precision over IoU 0.50:0.05:0.95, 101 recall points and the categories with
ground truth; a metric is ``None`` where the ground truth has no object of that size (pycocotools' -1).
With boxes scored and more than one category, ``results["bbox_any_class"]`` is the box AP with every category
pooled into one (``ANY_CLASS``).
``predictions`` are COCO result dicts (``image_id``, ``category_id``, ``score`` and ``bbox`` xywh
and/or ``segmentation`` RLE), made from detector outputs by ``predictions_to_coco``.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mcl.engine.atomic import write_text_atomic
from mcl.errors import UserError
from mcl.transfer.coco_data import load_coco_json

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_RESULT_KEY = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}
# COCO's per-keypoint OKS sigmas are for its 17 person keypoints; another set is scored with one sigma for every
# keypoint, the mean of COCO's (a choice: a set's own sigmas would come from its annotators' spread)
COCO_KEYPOINT_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89,
                                 .89]) / 10.0
# COCOeval's first stats per type: keypoints have no small-object AP
_STATS = {"bbox": METRICS, "segm": METRICS, "keypoints": ("AP", "AP50", "AP75", "APm", "APl")}
# box AP with every category pooled into one (ground truth and detections alike, no extra NMS): finding the objects
# whatever their class; beside the real box AP it tells a localisation problem from a classification one
ANY_CLASS = "bbox_any_class"


def predictions_to_coco(outputs: list[dict], image_ids: list[int], label_to_category: dict[int, int],
                        mask_threshold: float = 0.5) -> list[dict]:
    """torchvision detector outputs -> COCO result dicts.

    ``outputs[i]``: ``boxes (N, 4)`` xyxy in original-image pixels, ``scores (N,)``, ``labels (N,)`` in 1..K,
    optionally ``masks (N, 1, H, W)`` probabilities and ``keypoints (N, K, 3)``; each result gets
    ``bbox = [x1, y1, x2 - x1, y2 - y1]``, with masks the compressed RLE of ``mask > mask_threshold``, with
    keypoints ``[x1, y1, 1, ..., xK, yK, 1]`` (COCO's result format; the visibility is not scored).
    """
    results = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().float().cpu()
        if len(boxes) == 0:
            continue
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        scores = out["scores"].detach().float().cpu().tolist()
        categories = [label_to_category[int(label)] for label in out["labels"].tolist()]
        rles = None
        if "masks" in out:
            binary = (out["masks"].detach()[:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
            for rle in rles:
                rle["counts"] = rle["counts"].decode("ascii")
        points = None
        if "keypoints" in out:
            points = out["keypoints"].detach().float().cpu().clone()
            points[..., 2] = 1.0
            points = points.reshape(len(points), -1).tolist()
        for k in range(len(scores)):
            result = {"image_id": int(image_id), "category_id": categories[k], "bbox": xywh[k], "score": scores[k]}
            if rles is not None:
                result["segmentation"] = rles[k]
            if points is not None:
                result["keypoints"] = points[k]
            results.append(result)
    return results


def _for_type(predictions: list[dict], iou_type: str) -> list[dict]:
    """Fresh result dicts carrying only the field scored by ``iou_type``.

    loadRes writes into the dicts it is given, and takes a detection's area from its box when both are
    present, so a segm result must not carry its box (its area is then the mask's, as COCO defines it).
    """
    key = _RESULT_KEY[iou_type]
    return [{"image_id": p["image_id"], "category_id": p["category_id"], "score": p["score"], key: p[key]}
            for p in predictions if key in p]


def coco_evaluate(coco_gt: COCO | str | Path, predictions: list[dict],
                  iou_types: tuple[str, ...] = ("bbox", "segm")) -> dict:
    """Score ``predictions`` against ``coco_gt`` (a ``COCO`` or a json path); see the module docstring.

    With no prediction of a type (pycocotools' loadRes cannot take an empty list) every metric of that
    type is 0 and ``results["notes"]`` says so.
    """
    gt = coco_gt if isinstance(coco_gt, COCO) else load_coco_json(coco_gt)
    unknown = {p["image_id"] for p in predictions} - set(gt.getImgIds())
    if unknown:
        raise UserError(f"{len(unknown)} predicted image ids are not in the ground truth (first: {min(unknown)}); "
                        f"score against the json the predictions were made on")
    results: dict = {}
    notes = []
    for iou_type in iou_types:
        if iou_type not in _RESULT_KEY:
            raise ValueError(f"iou_type {iou_type!r} is not one of {', '.join(_RESULT_KEY)}")
        dets = _for_type(predictions, iou_type)
        if not dets:
            results[iou_type] = dict.fromkeys(METRICS, 0.0)
            notes.append(f"{iou_type}: no predictions, every metric is 0")
            continue
        results[iou_type] = _score(gt, dets, iou_type)
        if iou_type == "bbox" and len(gt.getCatIds()) > 1:
            results[ANY_CLASS] = _score(_pooled(gt), [{**d, "category_id": 1} for d in dets], "bbox")
    if notes:
        results["notes"] = notes
    return results


def _score(gt: COCO, dets: list[dict], iou_type: str) -> dict:
    """COCOeval of ``dets`` (non-empty) against ``gt``: ``{metric: fraction or None}``."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(dets), iou_type)
        if iou_type == "keypoints":
            evaluator.params.kpt_oks_sigmas = keypoint_sigmas(len(dets[0]["keypoints"]) // 3)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = dict(zip(_STATS[iou_type], evaluator.stats))
    return {m: (float(stats[m]) if m in stats and stats[m] >= 0 else None) for m in METRICS}


def _pooled(gt: COCO) -> COCO:
    """``gt`` with every annotation in one category (id 1, "object")."""
    pooled = COCO()
    pooled.dataset = {**gt.dataset, "categories": [{"id": 1, "name": "object"}],
                      "annotations": [{**a, "category_id": 1} for a in gt.dataset["annotations"]]}
    with contextlib.redirect_stdout(io.StringIO()):
        pooled.createIndex()
    return pooled


def keypoint_sigmas(k: int) -> np.ndarray:
    """OKS sigmas for ``k`` keypoints: COCO's own for its 17, else their mean for each (``COCO_KEYPOINT_SIGMAS``)."""
    return COCO_KEYPOINT_SIGMAS if k == 17 else np.full(k, COCO_KEYPOINT_SIGMAS.mean())


def format_table(results: dict) -> str:
    """A fixed-width table of ``coco_evaluate``'s results, in percent; "-" where there is no ground truth."""
    types = [t for t in results if t in _RESULT_KEY]
    lines = [f"{'':6}" + "".join(f"{m:>8}" for m in METRICS)]
    for iou_type in types:
        row = results[iou_type]
        cells = ("-" if row[m] is None else f"{100 * row[m]:.1f}" for m in METRICS)
        lines.append(f"{iou_type:6}" + "".join(f"{c:>8}" for c in cells))
    if ANY_CLASS in results:
        lines.append(f"bbox, any class: AP {100 * results[ANY_CLASS]['AP']:.1f}, AP50 "
                     f"{100 * results[ANY_CLASS]['AP50']:.1f} (every category pooled: the objects found, whatever "
                     f"their class)")
    lines += [f"note: {n}" for n in results.get("notes", [])]
    return "\n".join(lines)


def write_results(out_dir: str | Path, results: dict, predictions: list[dict], **extra) -> Path:
    """Write ``predictions_<type>.json`` per scored type (COCO result format) and ``results.json``.

    ``results.json`` holds the metrics, the prediction file names and ``extra`` (e.g. the gt json path),
    so any COCO tool can re-score the predictions.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for iou_type in (t for t in results if t in _RESULT_KEY):
        name = f"predictions_{iou_type}.json"
        write_text_atomic(out_dir / name, json.dumps(_for_type(predictions, iou_type)))
        files[iou_type] = name
    path = out_dir / "results.json"
    write_text_atomic(path, json.dumps({**results, "prediction_files": files, **extra}, indent=2))
    return path
