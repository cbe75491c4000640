"""COCO-format detection data: targets, label mapping, flips, and one clear line for each bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mcl.errors import UserError
from mcl.transfer.coco_data import CocoDetection, LabelMap, hflip, load_coco_json

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 9, "name": "never-annotated"}]


def ann(ann_id, image_id, bbox, category_id=3, segmentation="box", **extra):
    """A COCO annotation; ``segmentation="box"`` draws the box as a polygon."""
    if segmentation == "box":
        x, y, w, h = bbox
        segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    out = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0,
           "area": bbox[2] * bbox[3] if isinstance(bbox, list) and len(bbox) == 4 else 0, **extra}
    if segmentation is not None:
        out["segmentation"] = segmentation
    return out


def write_coco(root, annotations, num_images=2, size=(64, 48), missing=(), categories=CATEGORIES):
    """``root/images/{i}.png`` (W x H = ``size``) for image ids 1..num_images, except ``missing``; json path."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(1, num_images + 1):
        images.append({"id": i, "file_name": f"images/{i}.png", "width": size[0], "height": size[1]})
        if i not in missing:
            Image.fromarray(np.full((size[1], size[0], 3), 40 * i, np.uint8)).save(root / "images" / f"{i}.png")
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_targets_use_contiguous_labels_that_map_back(tmp_path):
    path = write_coco(tmp_path, [ann(1, 1, [4, 6, 20, 10]), ann(2, 1, [30, 8, 10, 30], category_id=7),
                                 ann(3, 2, [0, 0, 64, 48], category_id=7)])
    ds = CocoDetection(path, tmp_path, train=True, flip_prob=0.0)
    assert ds.with_masks and len(ds) == 2
    image, target = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32 and image.max() <= 1
    assert target["boxes"].tolist() == [[4, 6, 24, 16], [30, 8, 40, 38]]
    assert target["labels"].tolist() == [1, 2] and target["image_id"] == 1
    assert target["masks"].shape == (2, 48, 64) and target["masks"].dtype == torch.uint8
    assert target["masks"][0].sum() > 0 and target["masks"][0, :6].sum() == 0
    assert ds.label_map.label_to_category() == {1: 3, 2: 7, 3: 9}
    assert LabelMap.from_coco(ds.coco).num_classes == 4
    val = CocoDetection(path, tmp_path, train=False, label_map=ds.label_map)
    assert val[1][1] == {"image_id": 2}


def test_flip_mirrors_boxes_and_masks_together():
    image = torch.zeros(3, 10, 20)
    masks = torch.zeros(1, 10, 20, dtype=torch.uint8)
    masks[0, 2:5, 1:4] = 1
    target = {"boxes": torch.tensor([[1.0, 2.0, 4.0, 5.0]]), "masks": masks, "labels": torch.tensor([1])}
    _, flipped = hflip(image, target)
    assert flipped["boxes"].tolist() == [[16.0, 2.0, 19.0, 5.0]]
    cols = flipped["masks"][0].any(0).nonzero().flatten().tolist()
    assert (cols[0], cols[-1] + 1) == (16, 19)
    assert target["boxes"].tolist() == [[1.0, 2.0, 4.0, 5.0]]  # the input is not changed


def test_invalid_boxes_are_dropped_with_a_count_and_outside_boxes_clipped(tmp_path):
    path = write_coco(tmp_path, [
        ann(1, 1, [4, 6, 20, 10]),
        ann(2, 1, [50, 40, 30, 30]),        # runs past the right and bottom edges: clipped to 50..64, 40..48
        ann(3, 1, [10, 10, 0, 5]),          # zero width
        ann(4, 2, [70, 10, 5, 5]),          # entirely outside the 64x48 image
        ann(5, 2, [1, 2, 3], segmentation=[[1, 2, 3, 4, 5, 6]]),  # malformed
        ann(6, 2, [5, 5, 10, 10], category_id=99),
        ann(7, 2, [5, 5, 10, 10], segmentation=None),
        ann(8, 2, [5, 5, 10, 10], iscrowd=1),
    ])
    ds = CocoDetection(path, tmp_path, train=True, flip_prob=0.0)
    _, target = ds[0]
    assert target["boxes"].tolist() == [[4, 6, 24, 16], [50, 40, 64, 48]]
    assert len(ds) == 1  # image 2 has no usable annotation left
    text = "\n".join(ds.report.lines())
    assert "dropped 5 of 8 annotations" in text
    assert "3 with a malformed, zero-area or outside-the-image box (first: annotation id 3)" in text
    assert "1 with a category_id not in the train categories" in text
    assert "1 without a usable segmentation" in text
    assert "clipped 1 boxes" in text and "1 crowd regions" in text
    assert "1 images have no usable annotation" in text


def test_categories_without_annotations_are_reported_not_fatal(tmp_path):
    path = write_coco(tmp_path, [ann(1, 1, [4, 6, 20, 10]), ann(2, 2, [4, 6, 20, 10])])
    ds = CocoDetection(path, tmp_path, train=True)
    assert "2 categories have no annotations (ids 7, 9)" in "\n".join(ds.report.lines())
    assert ds.label_map.num_classes == 4  # they keep their labels, so category ids still map back


def test_missing_images_are_one_error_or_skipped_on_request(tmp_path):
    path = write_coco(tmp_path, [ann(1, 1, [4, 6, 20, 10]), ann(2, 2, [4, 6, 20, 10]), ann(3, 3, [1, 1, 5, 5])],
                      num_images=3, missing=(2, 3))
    with pytest.raises(UserError) as err:
        CocoDetection(path, tmp_path, train=True)
    message = str(err.value)
    assert "\n" not in message and "2 of 3 images are missing on disk" in message
    assert str(tmp_path / "images" / "2.png") in message and "data.skip_missing_images=true" in message
    ds = CocoDetection(path, tmp_path, train=True, skip_missing_images=True)
    assert len(ds) == 1 and "skipped 2 images missing on disk" in "\n".join(ds.report.lines())
    val = CocoDetection(path, tmp_path, train=False, skip_missing_images=True)
    gt = val.evaluation_gt()  # the skipped images leave the ground truth too, or they would count as misses
    assert gt.getImgIds() == [1] and len(gt.getAnnIds()) == 1


def test_empty_val_sets_are_refused_clearly(tmp_path):
    path = write_coco(tmp_path, [], num_images=0)
    with pytest.raises(UserError, match="no usable evaluation images"):
        CocoDetection(path, tmp_path, train=False)
    path = write_coco(tmp_path, [], num_images=2)
    val = CocoDetection(path, tmp_path, train=False)
    with pytest.raises(UserError, match="no usable annotations, nothing to score"):
        val.evaluation_gt()
    with pytest.raises(UserError, match="no usable training annotations"):
        CocoDetection(path, tmp_path, train=True)


def test_evaluation_ground_truth_keeps_crowd_regions_and_fills_defaults(tmp_path):
    plain = {"id": 2, "image_id": 1, "category_id": 3, "bbox": [30, 8, 10, 30],
             "segmentation": [[30, 8, 40, 8, 40, 38]]}
    path = write_coco(tmp_path, [ann(1, 1, [4, 6, 20, 10], iscrowd=1), plain])
    gt = CocoDetection(path, tmp_path, train=False).evaluation_gt()
    anns = gt.loadAnns(gt.getAnnIds())
    assert sorted(a["iscrowd"] for a in anns) == [0, 1]
    assert gt.anns[2]["area"] == 300 and gt.anns[2]["bbox"] == [30, 8, 10, 30]


def test_boxes_only_json_gives_faster_rcnn_and_masks_true_is_refused(tmp_path):
    path = write_coco(tmp_path, [ann(1, 1, [4, 6, 20, 10], segmentation=None)])
    ds = CocoDetection(path, tmp_path, train=True)
    assert not ds.with_masks and "masks" not in ds[0][1]
    with pytest.raises(UserError, match="no segmentation to train masks on"):
        CocoDetection(path, tmp_path, train=True, with_masks=True)


@pytest.mark.parametrize("content, match", [
    (None, "COCO json not found"),
    ("{not json", "is not valid JSON"),
    ('{"annotations": []}', "needs an 'images' list"),
    ('{"images": [{"id": 1}]}', "every image needs id, file_name, width and height"),
])
def test_unreadable_json_is_one_clear_line(tmp_path, content, match):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=match) as err:
        load_coco_json(path)
    assert "\n" not in str(err.value)


def test_image_size_disagreeing_with_the_json_is_named(tmp_path):
    path = write_coco(tmp_path, [ann(1, 1, [4, 6, 20, 10])], num_images=1)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "images" / "1.png")
    with pytest.raises(UserError, match=r"1.png is 10x10 but ann.json says 64x48"):
        CocoDetection(path, tmp_path, train=True)[0]
