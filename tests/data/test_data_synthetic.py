"""Synthetic scenes: determinism, exact masks/boxes, COCO files, the `mcl data` command."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mcl.cli import main
from mcl.data import synthetic
from mcl.data.sources import SourceError, list_images
from mcl.data.synthetic import CATEGORIES, MIN_VISIBLE_PIXELS, SyntheticScenes, render_scene, write_coco_scenes

# pycocotools' decode trips a numpy-2 DeprecationWarning inside the library; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_categories_are_coco_style():
    assert len(CATEGORIES) >= 6
    assert [c["id"] for c in CATEGORIES] == list(range(1, len(CATEGORIES) + 1))
    assert len({c["name"] for c in CATEGORIES}) == len(CATEGORIES)
    assert all(c["supercategory"] == "shape" for c in CATEGORIES)


def test_deterministic_and_seed_dependent():
    a, ann_a = render_scene(5, 3, size=96)
    b, ann_b = render_scene(5, 3, size=96)
    assert a.tobytes() == b.tobytes() and ann_a == ann_b
    assert render_scene(6, 3, size=96)[0].tobytes() != a.tobytes()
    assert render_scene(5, 4, size=96)[0].tobytes() != a.tobytes()
    assert a.mode == "RGB" and a.size == (96, 96)


@pytest.mark.parametrize("seed, index", [(0, i) for i in range(12)] + [(7, 100), (123456789, 5)])
def test_masks_boxes_areas_exact(seed, index):
    size = 128
    _, anns = render_scene(seed, index, size=size)
    assert 1 <= len(anns) <= 8
    union = np.zeros((size, size), np.int32)
    for ann in anns:
        assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        m = mask_utils.decode(rle)
        assert m.shape == (size, size)
        assert int(m.sum()) == ann["area"] == int(mask_utils.area(rle)) >= MIN_VISIBLE_PIXELS
        ys, xs = np.nonzero(m)
        x, y, w, h = ann["bbox"]
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert all(isinstance(v, float) for v in ann["bbox"])
        assert mask_utils.toBbox(rle).tolist() == ann["bbox"]
        union += m
    assert union.max() <= 1  # visible parts never overlap


@pytest.mark.parametrize("seed, index", [(1, i) for i in range(8)])
def test_masks_agree_with_painted_pixels(seed, index):
    # Without the final pixel noise: outside every mask the image is exactly the background (replayed
    # from the same RNG, drawn first); inside the mask of a flat-coloured object it is exactly its colour.
    size = 96
    image, anns, label, kept = synthetic._render(seed, index, size, noise=False)
    pixels = np.asarray(image)
    masks = [mask_utils.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()})
             for a in anns]
    for k, m in enumerate(masks):
        assert np.array_equal(m.astype(bool), label == k + 1)
    background = synthetic._background(np.random.default_rng([seed, index]), size)
    background = np.clip(np.rint(background), 0, 255).astype(np.uint8).transpose(1, 2, 0)  # (3,H,W) -> (H,W,3)
    uncovered = label == 0
    assert np.array_equal(pixels[uncovered], background[uncovered])
    for m, (obj, _) in zip(masks, kept):
        if obj["texture"] == "flat":
            colour = np.clip(np.rint(obj["colors"][0]), 0, 255).astype(np.uint8)
            assert (pixels[m.astype(bool)] == colour).all()


def test_size_too_small_refused():
    with pytest.raises(SourceError, match="too small"):
        render_scene(0, 0, size=4)


def test_write_coco_scenes_loads_with_pycocotools(tmp_path, capsys):
    json_path = write_coco_scenes(tmp_path / "synth", num=4, seed=11, size=64)
    assert json_path == tmp_path / "synth" / "annotations.json"
    coco = COCO(str(json_path))
    capsys.readouterr()
    assert sorted(coco.getImgIds()) == [1, 2, 3, 4]
    assert len(coco.getCatIds()) == len(CATEGORIES)
    for img in coco.loadImgs(coco.getImgIds()):
        assert img["file_name"] == f"images/{img['id'] - 1:06d}.png"
        with Image.open(json_path.parent / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"]) == (64, 64)
            expected, anns = render_scene(11, img["id"] - 1, size=64)
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(expected))  # PNG is lossless
        got = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert [a["area"] for a in got] == [a["area"] for a in anns]
        for a in got:
            assert coco.annToMask(a).sum() == a["area"]
    ann_ids = [a["id"] for a in coco.dataset["annotations"]]
    assert ann_ids == list(range(1, len(ann_ids) + 1))
    assert len(list_images(json_path)) == 4
    assert not list((tmp_path / "synth").rglob("*.tmp"))


def test_write_coco_scenes_overwrites_own_files_keeps_others(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    write_coco_scenes(out, num=2, seed=0, size=32)
    second = write_coco_scenes(out, num=1, seed=1, size=32)
    assert (out / "mine.txt").read_text() == "keep me"
    assert len(json.loads(second.read_text())["images"]) == 1
    with pytest.raises(SourceError, match="--num"):
        write_coco_scenes(out, num=0, seed=0)
    val = write_coco_scenes(out, num=1, seed=2, size=32, split_name="val")
    assert val == out / "val.json" and (out / "val" / "000000.png").is_file()


def test_synthetic_dataset_items():
    ds = SyntheticScenes(num=3, seed=4, size=48, transform=lambda im: torch.from_numpy(np.asarray(im).copy()))
    assert len(ds) == 3
    item = ds[2]
    assert item["index"] == 2 and item["skipped"] == []
    assert torch.equal(item["crops"], torch.from_numpy(np.asarray(render_scene(4, 2, 48)[0]).copy()))
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(SourceError):
        SyntheticScenes(num=0, seed=0, size=48, transform=None)


def test_cli_data_synth_and_info(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["data", "synth", "--out", str(out), "--num", "3", "--seed", "2", "--size", "48"]) == 0
    printed = capsys.readouterr().out
    assert "3 images" in printed and "annotations" in printed and str(out / "annotations.json") in printed
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png", "000002.png"]

    assert main(["data", "info", str(out / "annotations.json"), "--check"]) == 0
    assert "3 images" in capsys.readouterr().out
    (out / "images" / "000001.png").write_bytes(b"")
    assert main(["data", "info", str(out / "annotations.json"), "--check"]) == 1
    assert "skipped 1 unreadable file of 3" in capsys.readouterr().out

    assert main(["data", "synth", "--out", str(out), "--num", "0"]) == 2
    assert "--num" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path / "missing")]) == 2
    assert main(["data"]) == 2


def test_the_simple_preset_draws_fewer_larger_plainer_objects_and_standard_is_unchanged(tmp_path):
    from mcl.data.sources import SourceError
    from mcl.data.synthetic import PRESETS, _render

    standard = render_scene(3, 5, 128)
    assert np.array_equal(np.asarray(render_scene(3, 5, 128, "standard")[0]), np.asarray(standard[0]))
    counts, sides = [], []
    for index in range(40):
        _, anns, _, kept = _render(0, index, 128, preset="simple")
        counts.append(len(anns))
        sides += [2 * obj["r"] / 128 for obj, _ in kept]
        assert all(obj["texture"] in ("flat", "gradient") for obj, _ in kept)
    assert max(counts) <= 3 and min(sides) >= PRESETS["simple"].sizes[0] - 1e-6
    with pytest.raises(SourceError, match="choose standard or simple"):
        render_scene(0, 0, 64, "busy")
    path = write_coco_scenes(tmp_path, 2, 0, 64, preset="simple")
    assert json.loads(path.read_text())["info"]["preset"] == "simple"
