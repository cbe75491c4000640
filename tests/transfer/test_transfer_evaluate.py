"""COCO scoring: exact AP on ground truth, a hand-computed AP on a perturbed case, empty and bad inputs."""

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mcl.errors import UserError
from mcl.transfer.evaluate import METRICS, coco_evaluate, format_table, predictions_to_coco, write_results


def rect_polygon(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def make_gt(tmp_path, boxes_per_image):
    """A COCO json of 100x100 images with one category and rectangular objects ``[x, y, w, h]``."""
    images, anns = [], []
    for image_id, boxes in enumerate(boxes_per_image, start=1):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 100, "height": 100})
        for x, y, w, h in boxes:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 5, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0, "segmentation": rect_polygon(x, y, w, h)})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 5, "name": "box"}]}))
    return path


def test_ground_truth_as_predictions_scores_exactly_one(tmp_path):
    # two small (20x20), two medium (50x50, 40x40) and two large (99x99, 97x97) objects. Two per size
    # range: pycocotools' precision is tp / (tp + fp + eps), exactly 1.0 in floating point only from tp = 2.
    path = make_gt(tmp_path, [[(10, 10, 20, 20), (40, 40, 50, 50), (70, 5, 20, 20)],
                              [(0, 0, 99, 99), (50, 50, 40, 40)], [(1, 1, 97, 97)]])
    gt = COCO(str(path))
    outputs, ids = [], []
    for image_id in gt.getImgIds():
        anns = gt.loadAnns(gt.getAnnIds(imgIds=image_id))
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns])
        masks = torch.stack([torch.from_numpy(gt.annToMask(a)).float() for a in anns])[:, None]
        outputs.append({"boxes": boxes, "scores": torch.ones(len(anns)),
                        "labels": torch.ones(len(anns), dtype=torch.int64), "masks": masks})
        ids.append(image_id)
    predictions = predictions_to_coco(outputs, ids, {1: 5})
    assert len(predictions) == 6 and predictions[0]["category_id"] == 5
    results = coco_evaluate(path, predictions)
    for iou_type in ("bbox", "segm"):
        assert results[iou_type] == dict.fromkeys(METRICS, 1.0)
    assert "notes" not in results


def test_perturbed_case_matches_the_hand_computed_value(tmp_path):
    # Two 60x60 objects (medium). Detections by score: exact hit on A (0.9), a false positive (0.8),
    # a box on B with IoU 40*60 / 60*60 = 2/3 (0.7).
    # IoU thresholds 0.50..0.65 (4 of 10) match B: precision/recall after each detection
    #   (1, 0.5), (0.5, 0.5), (2/3, 1) -> interpolated precision 1 for recall <= 0.5 (51 of the
    #   101 recall points) and 2/3 above (50 points): AP_t = (51 + 50 * 2/3) / 101.
    # Thresholds 0.70..0.95 (6 of 10): recall stops at 0.5, AP_t = 51 / 101.
    path = make_gt(tmp_path, [[(0, 0, 60, 60)], [(30, 30, 60, 60)]])
    predictions = [
        {"image_id": 1, "category_id": 5, "bbox": [0, 0, 60, 60], "score": 0.9},
        {"image_id": 1, "category_id": 5, "bbox": [70, 70, 20, 20], "score": 0.8},
        {"image_id": 2, "category_id": 5, "bbox": [30, 30, 40, 60], "score": 0.7},
    ]
    hit, miss = (51 + 50 * 2 / 3) / 101, 51 / 101
    bbox = coco_evaluate(path, predictions, iou_types=("bbox",))["bbox"]
    assert bbox["AP50"] == pytest.approx(hit, abs=1e-12)
    assert bbox["AP75"] == pytest.approx(miss, abs=1e-12)
    assert bbox["AP"] == pytest.approx((4 * hit + 6 * miss) / 10, abs=1e-12)
    # APm: the 20x20 false positive is small, and an unmatched detection outside the size range is
    # ignored, so at the 4 matching thresholds both hits give AP_t = 1.
    assert bbox["APm"] == pytest.approx((4 * 1 + 6 * miss) / 10, abs=1e-12)
    assert bbox["APs"] is None and bbox["APl"] is None  # no ground truth of those sizes
    assert "-" in format_table({"bbox": bbox}).splitlines()[1]


def test_empty_predictions_score_zero_with_a_note(tmp_path):
    path = make_gt(tmp_path, [[(0, 0, 60, 60)]])
    results = coco_evaluate(path, [])
    assert results["bbox"] == dict.fromkeys(METRICS, 0.0) and results["segm"] == dict.fromkeys(METRICS, 0.0)
    assert "no predictions" in format_table(results)


def test_predictions_for_unknown_images_are_refused(tmp_path):
    path = make_gt(tmp_path, [[(0, 0, 60, 60)]])
    with pytest.raises(UserError, match="not in the ground truth"):
        coco_evaluate(path, [{"image_id": 42, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 1.0}], ("bbox",))


def test_written_predictions_rescore_to_the_same_values(tmp_path):
    path = make_gt(tmp_path, [[(0, 0, 60, 60)], [(30, 30, 60, 60)]])
    mask = np.zeros((100, 100), np.uint8)
    mask[30:90, 30:70] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()
    predictions = [{"image_id": 2, "category_id": 5, "bbox": [30, 30, 40, 60], "score": 0.7, "segmentation": rle}]
    results = coco_evaluate(path, predictions)
    write_results(tmp_path / "out", results, predictions, gt_json=str(path))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["prediction_files"] == {"bbox": "predictions_bbox.json", "segm": "predictions_segm.json"}
    segm_file = json.loads((tmp_path / "out" / "predictions_segm.json").read_text())
    assert "bbox" not in segm_file[0]  # a mask's area must come from the mask when re-scored
    gt = COCO(str(path))
    for iou_type in ("bbox", "segm"):
        evaluator = COCOeval(gt, gt.loadRes(str(tmp_path / "out" / f"predictions_{iou_type}.json")), iou_type)
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
        assert evaluator.stats[0] == pytest.approx(saved[iou_type]["AP"])


def test_any_class_box_ap_pools_the_categories(tmp_path):
    """Perfect boxes with every class swapped: box AP 0, the any-class box AP exactly 1; one category: no row."""
    path = tmp_path / "two.json"
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in (1, 2)]
    boxes = {1: [(10, 10, 30, 30), (50, 50, 40, 40)], 2: [(5, 5, 60, 60), (70, 70, 25, 25)]}
    anns = [{"id": len(boxes) * i + k, "image_id": i, "category_id": 1 + k, "bbox": list(b), "area": b[2] * b[3],
             "iscrowd": 0} for i, bs in boxes.items() for k, b in enumerate(bs)]
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    swapped = [{"image_id": a["image_id"], "category_id": 3 - a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in anns]
    results = coco_evaluate(path, swapped, ("bbox",))
    assert results["bbox"]["AP"] == 0.0 and results["bbox_any_class"]["AP"] == pytest.approx(1.0)
    assert "bbox, any class: AP 100.0" in format_table(results)
    one = make_gt(tmp_path, [[(10, 10, 20, 20)]])
    exact = [{"image_id": 1, "category_id": 5, "bbox": [10, 10, 20, 20], "score": 1.0}]
    assert "bbox_any_class" not in coco_evaluate(one, exact, ("bbox",))
