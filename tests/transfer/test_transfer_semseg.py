"""Semantic FPN (mcl.transfer.semseg): layout, class maps, mIoU by hand, init, `mcl finetune --task semseg` (tiny)."""

import argparse
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from conftest import TINY_PRETRAIN

from mcl.cli import main
from mcl.commands.finetune import resolve
from mcl.config import load_config, to_dict
from mcl.methods.mcl import MCLConfig, MCLPretrainModule
from mcl.transfer.coco_data import CocoDetection
from mcl.transfer.detection import build_detector
from mcl.transfer.semseg import (
    IGNORE,
    SemanticFPN,
    SemsegDataset,
    box_mask,
    confusion_matrix,
    format_semseg_table,
    load_semseg_init,
    paint_class_map,
    semseg_metrics,
)

# Semantic FPN R18 (FPN 32 wide, as TINY_PRETRAIN's) on 64px scenes, 2 iterations: a few seconds per run.
TINY = [
    "data.synthetic_train_num=4", "data.synthetic_val_num=2", "data.synthetic_size=64", "data.batch_size=2",
    "data.num_workers=0", "model.arch=resnet18", "model.fpn_channels=32", "input.test_min_size=64",
    "schedule.iterations_1x=2", "schedule.reference_batch=2", "schedule.warmup_iters=1", "trainer.accelerator=cpu",
    "trainer.devices=1", "trainer.progress_bar=false", "trainer.checkpoint_every_steps=1", "trainer.log_every_steps=1",
]
HEAD_TENSORS = 44   # p2, p3: conv + BN (5) = 6 each; p4: 12; p5: 18; classifier weight + bias


@pytest.mark.parametrize("fpn_channels", [32, 256])
def test_backbone_is_the_detectors_and_the_head_returns_input_size_logits(fpn_channels):
    model = SemanticFPN("resnet18", 5, fpn_channels, 128, "bn")
    detector = build_detector("resnet18", 5, with_masks=False, fpn_channels=fpn_channels)
    ours = {k: v.shape for k, v in model.state_dict().items() if k.startswith("backbone.")}
    assert ours == {f"backbone.{k}": v.shape for k, v in detector.backbone.state_dict().items()}
    assert set(model.state_dict()) - set(ours) == {k for k in model.state_dict() if k.startswith("head.")}
    assert [len(model.head.scale_heads[p]) for p in ("p2", "p3", "p4", "p5")] == [1, 1, 2, 3]
    assert sum(k.startswith("head.") for k in model.state_dict()) == HEAD_TENSORS
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 72, 56))   # not a multiple of 32: every upsample goes to the finer level's size
    assert out.shape == (2, 5, 72, 56)


def test_normalisation_is_imagenet_mean_std_on_0_1_images():
    model = SemanticFPN("resnet18", 3, 32, 32, "gn").eval()
    seen = {}
    model.backbone.body.conv1.register_forward_pre_hook(lambda m, inp: seen.update(x=inp[0]))
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        model(image)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(seen["x"], (image - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    assert "mean" not in model.state_dict() and isinstance(model.head.scale_heads.p2[0][1], torch.nn.GroupNorm)


def test_miou_of_hand_made_predictions():
    """4 classes; class 3 absent from the truth; one ignored pixel. Truth: 4 x bg, 2 x 1, 1 x 2."""
    target = torch.tensor([[0, 0, 0, 0], [1, 1, 2, IGNORE]])
    perfect = torch.tensor([[0, 0, 0, 0], [1, 1, 2, 3]])   # the ignored pixel's prediction does not count
    r = semseg_metrics(confusion_matrix(perfect, target, 4), ["bg", "a", "b", "c"])
    assert (r["mIoU"], r["mIoU_fg"], r["pixel_acc"], r["pixels"]) == (100, 100, 100, 7)
    assert r["per_class_IoU"] == {"bg": 100, "a": 100, "b": 100, "c": None}   # zero union: left out of the means
    background = semseg_metrics(confusion_matrix(torch.zeros_like(target), target, 4))
    # IoU_bg = 4 / 7, IoU_1 = IoU_2 = 0; class 3 is neither present nor predicted
    assert background["mIoU"] == pytest.approx(100 * 4 / 7 / 3) and background["mIoU_fg"] == 0
    assert background["pixel_acc"] == pytest.approx(100 * 4 / 7)
    absent = semseg_metrics(confusion_matrix(torch.full_like(target, 3), target, 4))
    assert absent["mIoU"] == 0 and absent["per_class_IoU"]["3"] == 0   # predicted but absent: IoU 0, counted
    half = semseg_metrics(torch.tensor([[3, 1], [1, 3]]))   # IoU = 3 / (3 + 1 + 1) for both classes
    assert (half["mIoU"], half["mIoU_fg"], half["pixel_acc"]) == pytest.approx((60, 60, 75))
    table = format_semseg_table(r)
    assert "mIoU_fg" in table and "100.0" in table and "c -" in table
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(perfect[:1], target, 4)


def test_class_maps_paint_the_smaller_instance_on_top_and_ignore_crowds():
    big, small, crowd = (np.zeros((6, 6), np.uint8) for _ in range(3))
    big[0:4, 0:4], small[1:3, 1:3], crowd[:, 5] = 1, 1, 1
    crowd[0, 0] = 1                                   # over an instance: the instance keeps its label
    out = paint_class_map([(2, small), (1, big)], [crowd], 6, 6)   # the small one listed first, still on top
    assert out[1:3, 1:3].eq(2).all() and (out == 1).sum() == 16 - 4 and out[0, 0] == 1
    assert out[:, 5].eq(IGNORE).all() and (out == 0).sum() == 36 - 16 - 6
    mask = box_mask([0.6, 1.2, 3.4, 2.0], 5, 5)   # pixel centres inside: columns 1-2 (x 1.5, 2.5), row 1 (y 1.5)
    assert mask.sum() == 2 and mask[1, 1] == mask[1, 2] == 1
    assert box_mask([2.1, 2.1, 2.2, 2.2], 5, 5).sum() == 1   # a sub-pixel box still paints one pixel


def test_the_recipe_key_and_the_flag_set_the_task(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: semseg\n")
    flags = dict(init=None, train_json=None, train_images=None, val_json=None, val_images=None, out=None,
                 schedule=None)
    assert resolve(argparse.Namespace(config=str(recipe), task=None, **flags), []).task == "semseg"
    assert resolve(argparse.Namespace(config=str(recipe), task="detection", **flags), []).task == "detection"
    assert resolve(argparse.Namespace(config=None, task=None, **flags), ["task=semseg"]).task == "semseg"


@pytest.fixture(scope="module")
def pretrain_checkpoint(module_tmp_path):
    """An (untrained) tiny mcl pretraining checkpoint, FPN 32 wide, and its online state dict."""
    config = to_dict(load_config(MCLConfig, None, TINY_PRETRAIN))
    torch.manual_seed(1)
    state = MCLPretrainModule(config).state_dict()
    path = module_tmp_path / "pretrain.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"config": config}, "mcl_format": "mcl-pretrain/1"}, path)
    return path, state


def test_init_from_an_mcl_checkpoint_loads_body_and_fpn_and_leaves_the_head_fresh(pretrain_checkpoint):
    path, online = pretrain_checkpoint
    model = SemanticFPN("resnet18", 8, 32, 128, "bn")
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    report = load_semseg_init(model, str(path))
    assert report.loaded == {"backbone.body": (120, 120), "backbone.fpn": (48, 48), "head": (0, HEAD_TENSORS)}
    assert len(report.random_init) == HEAD_TENSORS and all(k.startswith("head.") for k in report.random_init)
    assert sum(k.startswith("roi_heads.box_head.") for k in report.unused) == 24   # the neck: detection's only
    sd = model.state_dict()
    for key in ("backbone.body.layer3.1.conv2.weight", "backbone.fpn.layer_blocks.2.0.weight"):
        assert torch.equal(sd[key], online[f"model.online.{key}"])
    assert all(torch.equal(v, head[k]) for k, v in model.head.state_dict().items())
    text = str(report)
    assert "Semantic FPN initialisation: mcl pretraining checkpoint" in text
    assert f"head                     0 /    {HEAD_TENSORS} tensors loaded" in text


@pytest.fixture(scope="module")
def semseg_run(module_tmp_path, pretrain_checkpoint):
    """`mcl finetune --task semseg` on synthetic scenes, initialised from the tiny pretraining checkpoint."""
    path, _ = pretrain_checkpoint
    run = module_tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        rc = main(["finetune", "--task", "semseg", "--out", str(run), "--init", str(path), *TINY])
    return run, rc, out.getvalue()


def test_semseg_run_writes_miou_results_and_the_model(semseg_run):
    run, rc, out = semseg_run
    assert rc == 0
    assert "backbone.body          120 /   120 tensors loaded" in out
    assert "backbone.fpn            48 /    48 tensors loaded" in out
    assert f"head                     0 /    {HEAD_TENSORS} tensors loaded" in out
    assert "final semantic segmentation" in out and "mIoU_fg" in out and "resized to 64x64" in out
    results = json.loads((run / "eval" / "results.json").read_text())
    assert {"mIoU", "mIoU_fg", "pixel_acc", "per_class_IoU", "confusion"} <= set(results)
    assert all(0 <= results[k] <= 100 for k in ("mIoU", "mIoU_fg", "pixel_acc"))
    assert list(results["per_class_IoU"]) == ["background", "disc", "ellipse", "rectangle", "triangle", "ring",
                                              "star", "cross"]
    conf = torch.tensor(results["confusion"])
    assert conf.shape == (8, 8) and conf.sum() == results["pixels"] == 2 * 64 * 64   # every val pixel, once
    assert results["pixel_acc"] == pytest.approx(100 * conf.diag().sum().item() / conf.sum().item())
    assert results["step"] == 2 and results["num_images"] == 2
    saved = torch.load(run / "semseg.pt", weights_only=True)
    assert saved["hyper_parameters"]["config"]["task"] == "semseg"
    assert "model.head.classifier.weight" in saved["state_dict"]
    assert (run / "last.ckpt").is_file() and "task: semseg" in (run / "config.yaml").read_text()


def test_semseg_refuses_to_overwrite_and_resumes_to_a_longer_schedule(semseg_run, capsys):
    run, *_ = semseg_run
    assert main(["finetune", "--task", "semseg", "--out", str(run), *TINY]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(["finetune", "--task", "semseg", "--out", str(run), "--resume", *TINY, "schedule.iterations_1x=3"]) == 0
    out = capsys.readouterr().out
    assert f"resuming from {run / 'last.ckpt'}" in out and "initialisation" not in out
    assert json.loads((run / "eval" / "results.json").read_text())["step"] == 3


def test_a_box_only_json_trains_on_filled_boxes_and_says_so(semseg_run, tmp_path, capsys):
    run, *_ = semseg_run
    data = run / "data"
    paths = {}
    for split in ("train", "val"):
        coco = json.loads((data / f"{split}.json").read_text())
        for ann in coco["annotations"]:
            ann.pop("segmentation")
        paths[split] = tmp_path / f"{split}_boxes.json"
        paths[split].write_text(json.dumps(coco))
        count = len(coco["annotations"])
    rc = main(["finetune", "--task", "semseg", "--train-json", str(paths["train"]), "--train-images", str(data),
               "--val-json", str(paths["val"]), "--val-images", str(data), "--out", str(tmp_path / "boxes"), *TINY])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"val set val_boxes.json: class maps from {count} annotations: 0 segmentation masks, {count} box-filled" \
        in out
    assert "their box is painted" in out and "mIoU" in out
    assert json.loads((tmp_path / "boxes" / "eval" / "results.json").read_text())["pixels"] == 2 * 64 * 64
    dataset = SemsegDataset(CocoDetection(paths["val"], data, train=False, with_masks=False), 64, train=False)
    image_id = dataset.coco.image_ids[0]
    boxes = np.zeros((64, 64), bool)
    for box, _, _ in dataset.coco.targets[image_id]:
        boxes |= box_mask(box, 64, 64).astype(bool)
    assert torch.equal(dataset.class_map(image_id) > 0, torch.from_numpy(boxes))   # the painted pixels are the boxes
    image, target, _ = dataset[0]
    assert image.shape == (3, 64, 64) and target.shape == (64, 64)
    small = SemsegDataset(dataset.coco, 32, train=False)   # evaluation: the image resized, the map at full size
    assert small[0][0].shape == (3, 32, 32) and small[0][1].shape == (64, 64)
    train = SemsegDataset(dataset.coco, 32, train=True)    # training: both resized
    assert train[0][0].shape == (3, 32, 32) and train[0][1].shape == (32, 32)


def test_a_json_without_annotations_is_one_line_exit_2(semseg_run, tmp_path, capsys):
    run, *_ = semseg_run
    data = run / "data"
    empty = json.loads((data / "train.json").read_text())
    empty["annotations"] = []
    path = tmp_path / "empty.json"
    path.write_text(json.dumps(empty))
    rc = main(["finetune", "--task", "semseg", "--train-json", str(path), "--train-images", str(data),
               "--val-json", str(data / "val.json"), "--val-images", str(data), "--out", str(tmp_path / "x"), *TINY])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and f"{path}: no usable training annotations" in err
    assert not (tmp_path / "x").exists()   # refused before any work


def test_mcl_eval_scores_the_saved_model_as_the_run_did_and_it_initialises_a_detector(semseg_run, tmp_path, capsys):
    """``semseg.pt`` is scored again by ``mcl eval`` (the same val set: the same confusion) and, as ``--init``,
    gives a detector its body and FPN."""
    from mcl.transfer.detection import build_detector, load_initial_weights

    run, rc, _ = semseg_run
    assert rc == 0
    assert main(["eval", str(run / "semseg.pt"), "--out", str(tmp_path / "eval"), "--num-workers", "0"]) == 0
    assert "semantic segmentation at step" in capsys.readouterr().out
    again = json.loads((tmp_path / "eval" / "results.json").read_text())
    during = json.loads((run / "eval" / "results.json").read_text())
    assert again["confusion"] == during["confusion"] and again["mIoU"] == during["mIoU"]
    report = load_initial_weights(build_detector("resnet18", 3, fpn_channels=32), str(run / "semseg.pt"))
    assert report.loaded["backbone.body"] == (120, 120) and report.loaded["backbone.fpn"] == (48, 48)
    assert report.loaded["roi_heads.box_head"][0] == 0
