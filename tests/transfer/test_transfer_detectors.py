"""More detectors and backbones: Faster R-CNN v2, RetinaNet v2 and Keypoint R-CNN exports with their strict-load
proof (and its refusals), RetinaNet's folded FPN computing what ours computes, every torchvision ResNet."""

import re

import pytest
import torch
from conftest import TINY_PRETRAIN
from runs import TINY_FINETUNE
from torchvision.models.detection import fasterrcnn_resnet50_fpn_v2, retinanet_resnet50_fpn_v2

from mcl.cli import main
from mcl.models.backbone import RESNET_CHANNELS, ResNetFPN, identify_resnet, make_resnet
from mcl.transfer.detection import build_detector, load_initial_weights
from mcl.transfer.export import convert_checkpoint, fold_batchnorm, torchvision_detector
from mcl.transfer.formats import DETECTOR_OF

NEW_FORMATS = ("torchvision-fasterrcnn", "torchvision-retinanet", "torchvision-keypointrcnn")
# what each format must leave fresh in its detector (prefixes of the detector's keys)
FRESH = {
    "torchvision-fasterrcnn": ("rpn.", "roi_heads.box_head.5.", "roi_heads.box_predictor."),
    "torchvision-retinanet": ("backbone.fpn.extra_blocks.", "head."),
    "torchvision-keypointrcnn": ("rpn.", "roi_heads.box_head.5.", "roi_heads.box_predictor.",
                                 "roi_heads.keypoint_head.", "roi_heads.keypoint_predictor."),
}


def shapes(model_or_state):
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def tiny_checkpoint(module_tmp_path):
    """A 2-step MCL ResNet-18 run (FPN 32, 4 neck convs): ``last.ckpt``."""
    out = module_tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *TINY_PRETRAIN, "trainer.max_steps=2", "probe.every_steps=0"]) == 0
    return out / "last.ckpt"


def test_resnet50_layouts_are_torchvisions_own():
    """The builders at ResNet-50 / FPN 256 make exactly torchvision's v2 models (names and shapes)."""
    assert shapes(build_detector("resnet50", 5, kind="fasterrcnn")) == \
        shapes(fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=5))
    assert shapes(build_detector("resnet50", 5, kind="retinanet")) == \
        shapes(retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=5))


@pytest.mark.parametrize("fmt", NEW_FORMATS)
def test_export_proves_the_load_and_leaves_exactly_the_fresh_parts(tiny_checkpoint, fmt, tmp_path, capsys):
    out = tmp_path / "x.pth"
    assert main(["export", str(tiny_checkpoint), "--format", fmt, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "check: strict load into torchvision" in text and "0 unexpected" in text
    state = torch.load(out, weights_only=True)
    detector = torchvision_detector("resnet18", 3, fpn_channels=32, kind=DETECTOR_OF[fmt])
    result = detector.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    missing = {k for k in result.missing_keys if not k.endswith("num_batches_tracked")}
    assert missing and all(k.startswith(FRESH[fmt]) for k in missing), sorted(missing)[:5]
    transferred = {k.split(".")[0] + "." + k.split(".")[1] for k in state}
    if fmt == "torchvision-retinanet":
        assert transferred == {"backbone.body", "backbone.fpn"} and "roi_heads" not in text.split("check:")[1]
        assert "BatchNorm folded" in text and "P2 lateral and output have no counterpart" in text
    else:
        assert transferred == {"backbone.body", "backbone.fpn", "roi_heads.box_head"}


@pytest.mark.parametrize("fmt", (*NEW_FORMATS, "torchvision-maskrcnn", "semantic-fpn", "detectron2", "mmdet"))
def test_a_broken_checkpoint_is_refused_with_one_line_and_nothing_written(tiny_checkpoint, fmt, tmp_path, capsys):
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    missing = dict(ckpt, state_dict={k: v for k, v in ckpt["state_dict"].items()
                                     if k != "model.online.backbone.fpn.layer_blocks.2.0.weight"})   # P4 output conv
    bad_shape = dict(ckpt, state_dict=dict(ckpt["state_dict"]))
    bad_shape["state_dict"]["model.online.backbone.fpn.inner_blocks.3.0.weight"] = torch.zeros(32, 100, 1, 1)   # C5
    for name, broken in (("missing", missing), ("shape", bad_shape)):
        path = tmp_path / f"{name}.ckpt"
        torch.save(broken, path)
        out = tmp_path / f"{name}.{'pkl' if fmt == 'detectron2' else 'pth'}"
        assert main(["export", str(path), "--format", fmt, "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert "export check failed" in err and "nothing was written" in err and err.count("\n") == 1, err
        assert not out.exists() and not list(tmp_path.glob(f"{name}_config.*"))


def test_semantic_fpn_export_loads_the_body_and_fpn_and_leaves_the_head_fresh(tiny_checkpoint, tmp_path, capsys):
    from mcl.transfer.semseg import SemanticFPN

    assert main(["export", str(tiny_checkpoint), "--format", "semantic-fpn", "--out", str(tmp_path / "s.pth")]) == 0
    assert "check: strict load into mcl Semantic FPN (resnet18, FPN 32)" in capsys.readouterr().out
    state = torch.load(tmp_path / "s.pth", weights_only=True)
    result = SemanticFPN("resnet18", 3, 32, 128, "bn").load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith("head.") for k in result.missing_keys)
    assert {k.split(".")[1] for k in state} == {"body", "fpn"}


def test_retinanet_fpn_with_folded_batchnorm_computes_what_ours_computes_in_eval_mode(tiny_checkpoint):
    state, _ = convert_checkpoint(tiny_checkpoint, "torchvision-retinanet")
    retina = torchvision_detector("resnet18", 2, fpn_channels=32, kind="retinanet").eval()
    retina.load_state_dict(state, strict=False)
    ours = ResNetFPN("resnet18", 32).eval()
    online = torch.load(tiny_checkpoint, weights_only=True)["state_dict"]
    prefix = "model.online.backbone."
    ours.load_state_dict({k[len(prefix):]: v for k, v in online.items() if k.startswith(prefix)})
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine, theirs = ours(x, (1, 2, 3)), retina.backbone(x)
    for level, name in ((1, "0"), (2, "1"), (3, "2")):            # P3..P5
        torch.testing.assert_close(theirs[name], mine[level], rtol=0, atol=1e-4 * mine[level].abs().max().item())
    assert set(theirs) == {"0", "1", "2", "p6", "p7"}


def test_fold_batchnorm_is_the_conv_then_bn_function():
    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6).eval()
    bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2), bn.weight.data.normal_(), bn.bias.data.normal_()
    weight, bias = fold_batchnorm(conv.weight, dict(bn.state_dict()))
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.nn.functional.conv2d(x, weight, bias, padding=1), bn(conv(x)))


@pytest.mark.parametrize("arch", list(RESNET_CHANNELS))
def test_every_resnet_is_told_apart_by_its_tensors_and_builds_the_fpn_and_detector(arch):
    with torch.device("meta"):
        body = make_resnet(arch).state_dict()
        fpn = ResNetFPN(arch, 256)
        detector = build_detector(arch, 3)
    assert identify_resnet(body) == arch
    assert identify_resnet({f"model.online.backbone.body.{k}": v for k, v in body.items()}) == arch
    assert identify_resnet(detector.state_dict()) == arch
    ours = {f"backbone.body.{k}": s for k, s in shapes(fpn.body).items()}
    assert ours == {k: s for k, s in shapes(detector).items() if k.startswith("backbone.body.")}


def test_a_resnext_pretraining_checkpoint_exports_and_initialises_its_detector(tmp_path, capsys):
    """ResNeXt-50 32x4d end to end: pretrain 1 step, export with the proof, load into the fine-tuning detector."""
    out = tmp_path / "run"
    tiny = [o for o in TINY_PRETRAIN if not o.startswith(("model.arch", "data.batch_size", "data.synthetic_num"))]
    assert main(["pretrain", "--out", str(out), *tiny, "model.arch=resnext50_32x4d", "data.batch_size=8",
                 "data.synthetic_num=8", "montage.ratios=[1,2]", "montage.repeats=[1,1]",
                 "loss.level_weights=[0.5,0.5]", "trainer.max_steps=1", "probe.every_steps=0"]) == 0
    capsys.readouterr()
    assert main(["export", str(out / "last.ckpt"), "--format", "torchvision-maskrcnn",
                 "--out", str(tmp_path / "x.pth")]) == 0
    assert "(resnext50_32x4d, online encoder)" in capsys.readouterr().out
    detector = build_detector("resnext50_32x4d", 3, fpn_channels=32)
    report = load_initial_weights(detector, str(out / "last.ckpt"))
    assert report.loaded["backbone.body"][0] == report.loaded["backbone.body"][1] > 0
    assert report.loaded["roi_heads.box_head"][0] == 24         # 4 convs x (weight + BN weight, bias, 2 stats, count)
    with pytest.raises(Exception, match="holds a resnext50_32x4d body but the detector is a resnet50"):
        load_initial_weights(build_detector("resnet50", 3, fpn_channels=32), str(out / "last.ckpt"))


# runs.TINY_FINETUNE at the pretraining's FPN width
FINETUNE = [*TINY_FINETUNE, "model.fpn_channels=32"]


@pytest.mark.parametrize("kind,title,scored", [("fasterrcnn", "Faster R-CNN", {"bbox"}),
                                               ("retinanet", "RetinaNet", {"bbox"}),
                                               ("keypointrcnn", "Keypoint R-CNN (4 keypoints)", {"bbox", "keypoints"})])
def test_finetune_each_detector_on_the_synthetic_scenes_from_a_pretraining_checkpoint(
        tiny_checkpoint, kind, title, scored, tmp_path, capsys):
    import json

    run = tmp_path / "run"
    assert main(["finetune", "--out", str(run), "--init", str(tiny_checkpoint), *FINETUNE,
                 f"model.detector={kind}"]) == 0
    out = capsys.readouterr().out
    assert f"{title} resnet18: 7 categories" in out
    loaded = {part: (int(n), int(total)) for part, n, total in
              re.findall(r"^  (\S+) +(\d+) / +(\d+) tensors loaded$", out, flags=re.MULTILINE)}
    assert loaded["backbone.body"] == (120, 120)
    # retinanet: the 12 folded C3-C5 tensors of its 16 (P6/P7 stay fresh); the others: all 48
    assert loaded["backbone.fpn"] == ((12, 16) if kind == "retinanet" else (48, 48))
    assert loaded["roi_heads.box_head"][0] == (0 if kind == "retinanet" else 24)
    results = json.loads((run / "eval" / "results.json").read_text())
    assert {t for t in ("bbox", "segm", "keypoints") if t in results} == scored
    assert (run / "detector.pt").is_file()


def test_keypoint_targets_are_the_extreme_points_and_a_flip_swaps_left_and_right(tmp_path):
    from mcl.data.synthetic import KEYPOINT_NAMES, write_coco_scenes
    from mcl.transfer.coco_data import CocoDetection, hflip

    path = write_coco_scenes(tmp_path, 2, 0, 64)
    data = CocoDetection(path, tmp_path, train=True, with_keypoints=True, flip_prob=0.0)
    assert data.keypoint_names == KEYPOINT_NAMES and data.flip_order == [0, 3, 2, 1]
    image, target = data[0]
    points, boxes = target["keypoints"], target["boxes"]
    assert points.shape == (len(boxes), 4, 3) and bool((points[..., 2] == 2).all())
    # top/bottom on the box's top/bottom edge, left/right on its sides (pixel centres: half a pixel inside)
    torch.testing.assert_close(points[:, 0, 1], boxes[:, 1] + 0.5)
    torch.testing.assert_close(points[:, 1, 0], boxes[:, 2] - 0.5)
    torch.testing.assert_close(points[:, 2, 1], boxes[:, 3] - 0.5)
    torch.testing.assert_close(points[:, 3, 0], boxes[:, 0] + 0.5)
    _, flipped = hflip(image, target, data.flip_order)
    width = image.shape[-1]
    torch.testing.assert_close(flipped["keypoints"][:, 3, 0], width - points[:, 1, 0])    # old right -> new left
    torch.testing.assert_close(flipped["keypoints"][:, 0, 0], width - points[:, 0, 0])    # top stays top


def test_keypoint_detection_needs_keypoint_names_one_line(tmp_path, capsys):
    import json

    from mcl.data.synthetic import write_coco_scenes

    path = write_coco_scenes(tmp_path / "d", 2, 0, 64)
    data = json.loads(path.read_text())
    for c in data["categories"]:
        c.pop("keypoints")
    path.write_text(json.dumps(data))
    rc = main(["finetune", "--train-json", str(path), "--train-images", str(path.parent), "--val-json", str(path),
               "--val-images", str(path.parent), "--out", str(tmp_path / "r"), *FINETUNE,
               "model.detector=keypointrcnn"])
    err = capsys.readouterr().err
    assert rc == 2 and "has no keypoint names (categories[].keypoints)" in err and err.count("\n") == 1


def test_keypoint_ap_is_one_for_the_ground_truth_and_low_for_shifted_points(tmp_path):
    from mcl.data.synthetic import write_coco_scenes
    from mcl.transfer.coco_data import CocoDetection
    from mcl.transfer.evaluate import coco_evaluate

    path = write_coco_scenes(tmp_path, 3, 0, 64)
    gt = CocoDetection(path, tmp_path, train=False, with_keypoints=True).evaluation_gt()
    exact = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0, "bbox": a["bbox"],
              "keypoints": a["keypoints"]} for a in gt.dataset["annotations"]]
    assert coco_evaluate(gt, exact, ("keypoints",))["keypoints"]["AP"] == pytest.approx(1.0)
    shifted = [dict(p, keypoints=[v + 15 * (i % 3 != 2) for i, v in enumerate(p["keypoints"])]) for p in exact]
    assert coco_evaluate(gt, shifted, ("keypoints",))["keypoints"]["AP"] < 0.2


@pytest.mark.parametrize("fmt", ("torchvision-resnet", "torchvision-maskrcnn"))
def test_a_body_tensor_missing_or_mis_shaped_names_it_and_writes_nothing(tiny_checkpoint, fmt, tmp_path, capsys):
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    missing = {k: v for k, v in state.items() if k != "model.online.backbone.body.layer4.1.bn2.weight"}
    reshaped = dict(state, **{"model.online.backbone.body.layer2.0.conv1.weight": torch.zeros(128, 64, 1, 1)})
    for name, body, words in (("missing", missing, "closest resnet18, but layer4.1.bn2.weight is missing"),
                              ("shape", reshaped, "layer2.0.conv1.weight has shape (128, 64, 1, 1), resnet18 has "
                                                  "(128, 64, 3, 3)")):
        torch.save(dict(ckpt, state_dict=body), tmp_path / f"{name}.ckpt")
        out = tmp_path / f"{name}.pth"
        assert main(["export", str(tmp_path / f"{name}.ckpt"), "--format", fmt, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert words in err and "nothing was written" in err and err.count("\n") == 1, err
        assert not out.exists()
