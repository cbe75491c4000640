"""The paired bootstrap of AP over held-out images: hand-computable draws, pairing, and pycocotools' own AP."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO

from mcl.transfer.ap_bootstrap import paired_ap_bootstrap
from mcl.transfer.evaluate import coco_evaluate


def coco(boxes_per_image) -> COCO:
    """An in-memory COCO index: 100x100 images, one category, objects ``[x, y, w, h]`` per image."""
    images, anns = [], []
    for image_id, boxes in enumerate(boxes_per_image, start=1):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 100, "height": 100})
        for x, y, w, h in boxes:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "box"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def found(gt: COCO, image_ids, score: float = 0.9) -> list[dict]:
    """Every object of ``image_ids`` detected exactly."""
    return [{"image_id": a["image_id"], "category_id": 1, "bbox": list(a["bbox"]), "score": score}
            for a in gt.dataset["annotations"] if a["image_id"] in image_ids]


def test_a_detector_that_finds_one_of_two_images_has_the_hand_computed_spread():
    # one object per image, found in image 1 only. A draw of image 1 twice scores AP 1, of image 2 twice 0 (nothing
    # found), one of each 51/101 (recall 0.5: precision 1 at the 51 recall points 0..0.5, 0 above). Each with
    # chance 1/4, 1/4, 1/2: the mean is 0.5025 and the standard deviation sqrt(0.25 (1 - m)^2 + 0.25 m^2 +
    # 0.5 (51/101 - m)^2) = 0.3536
    gt = coco([[(10, 10, 30, 30)], [(50, 50, 30, 30)]])
    result = paired_ap_bootstrap(gt, {"half": found(gt, {1})}, resamples=2000, seed=1)
    assert result["ap"]["half"] == pytest.approx(51 / 101, abs=1e-6)
    assert result["se"]["half"] == pytest.approx(0.3536, abs=0.02)
    assert result["images"] == 2 and result["resamples"] == 2000


def test_the_pair_shares_each_draw_so_identical_inits_differ_by_exactly_zero():
    gt = coco([[(10, 10, 30, 30)], [(50, 50, 30, 30)], [(5, 60, 20, 20)], [(60, 5, 25, 25)]])
    dets = found(gt, {1, 3})
    result = paired_ap_bootstrap(gt, {"a": dets, "b": [dict(d) for d in dets], "none": []}, resamples=200)
    assert result["se"]["a"] > 0.1                    # which images are drawn moves each AP a lot...
    assert result["diff"][("a", "b")] == 0 and result["diff_se"][("a", "b")] == 0     # ...but never the pair apart
    assert result["ap"]["none"] == 0 and result["se"]["none"] == 0
    assert result["diff"][("a", "none")] == pytest.approx(result["ap"]["a"])
    assert list(result["diff"]) == [("a", "b"), ("a", "none"), ("b", "none")]


def test_the_full_set_ap_is_pycocotools_own_and_a_perfect_detector_never_varies():
    rng = np.random.default_rng(0)
    boxes = [[tuple(int(v) for v in (*rng.integers(0, 50, 2), *rng.integers(10, 40, 2))) for _ in range(3)]
             for _ in range(6)]
    gt = coco(boxes)
    noisy = [{**d, "bbox": [v + float(rng.normal(0, 2)) for v in d["bbox"]], "score": float(rng.uniform())}
             for d in found(gt, set(range(1, 7)))]
    result = paired_ap_bootstrap(gt, {"noisy": noisy, "perfect": found(gt, set(range(1, 7)))}, resamples=50)
    assert result["ap"]["noisy"] == pytest.approx(coco_evaluate(gt, noisy, ("bbox",))["bbox"]["AP"], abs=1e-12)
    assert 0 < result["ap"]["noisy"] < result["ap"]["perfect"]
    assert result["se"]["perfect"] == pytest.approx(0, abs=1e-12)


def test_draws_repeat_with_the_seed_and_too_few_resamples_or_no_images_are_refused():
    gt = coco([[(10, 10, 30, 30)], [(50, 50, 30, 30)], [(5, 60, 20, 20)]])
    dets = {"a": found(gt, {1})}
    assert paired_ap_bootstrap(gt, dets, resamples=30, seed=3) == paired_ap_bootstrap(gt, dets, resamples=30, seed=3)
    with pytest.raises(ValueError, match="resamples must be at least 2"):
        paired_ap_bootstrap(gt, dets, resamples=1)
    with pytest.raises(ValueError, match="no images to draw from"):
        paired_ap_bootstrap(coco([]), {"a": []}, resamples=10)
