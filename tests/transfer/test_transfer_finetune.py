"""Detector layout, initialisation report, schedule, and `mcl finetune` / `mcl eval` end to end (tiny)."""

import contextlib
import io
import json

import pytest
import torch
import torchvision
from conftest import TINY_PRETRAIN
from runs import TINY_FINETUNE

from mcl.cli import main
from mcl.config import load_config, to_dict
from mcl.errors import UserError
from mcl.methods.mcl import MCLConfig, MCLPretrainModule
from mcl.models.backbone import make_resnet
from mcl.transfer.detection import _v2_layout, build_detector, load_initial_weights
from mcl.transfer.evaluate import METRICS
from mcl.transfer.finetune_config import ScheduleConfig, lr_factor, resolve_schedule

TINY = TINY_FINETUNE


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_layout_is_torchvision_v2_for_every_depth():
    r50 = build_detector("resnet50", num_classes=5)
    assert shapes(r50) == shapes(_v2_layout(make_resnet("resnet50"), 5, True))  # the mirror is exact
    r18 = build_detector("resnet18", num_classes=5)
    outside_body = lambda m: {k for k in m.state_dict() if not k.startswith("backbone.body.")}  # noqa: E731
    assert outside_body(r18) == outside_body(r50)
    assert {f"roi_heads.box_head.{i}.1.weight" for i in range(4)} <= set(r18.state_dict())  # conv+BN x4
    assert "roi_heads.box_head.5.weight" in r18.state_dict()  # the fc
    assert not any(isinstance(m, torchvision.ops.FrozenBatchNorm2d) for m in r18.modules())
    assert all(p.requires_grad for p in r18.parameters())
    faster = build_detector("resnet18", num_classes=5, with_masks=False)
    assert not any(k.startswith("roi_heads.mask") for k in faster.state_dict())
    sync = build_detector("resnet18", num_classes=5, norm="syncbn")
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in sync.modules())


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_fpn_channels_set_the_fpn_and_every_head_conv_width(arch):
    """Same keys as the 256-wide layout; FPN, RPN, box/mask convs and mask predictor at the new width; it runs."""
    narrow, wide = build_detector(arch, 4, fpn_channels=48), build_detector(arch, 4)
    assert set(narrow.state_dict()) == set(wide.state_dict())
    sd = narrow.state_dict()
    assert sd["backbone.fpn.layer_blocks.3.0.weight"].shape[:2] == (48, 48)
    assert sd["rpn.head.conv.0.0.weight"].shape[:2] == (48, 48)
    assert all(sd[f"roi_heads.box_head.{k}.0.weight"].shape[:2] == (48, 48) for k in range(4))
    assert sd["roi_heads.box_head.5.weight"].shape == (1024, 48 * 49)
    assert sd["roi_heads.mask_head.3.0.weight"].shape[:2] == (48, 48)
    assert sd["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape[:2] == (4, 48)
    assert sd["roi_heads.box_predictor.cls_score.weight"].shape == (4, 1024)
    narrow.eval()
    with torch.no_grad():
        out = narrow([torch.rand(3, 64, 64)])
    assert set(out[0]) == {"boxes", "labels", "scores", "masks"}
    with pytest.raises(UserError, match="fpn_channels 0"):
        build_detector(arch, 4, fpn_channels=0)


def test_an_init_of_another_fpn_width_is_refused_with_the_width_to_set(tmp_path):
    path = tmp_path / "narrow.pth"
    torch.save(build_detector("resnet18", 4, fpn_channels=48).state_dict(), path)
    with pytest.raises(UserError, match=r"backbone\.fpn\..*\(set model\.fpn_channels=48, the file's FPN width\)"):
        load_initial_weights(build_detector("resnet18", 4), str(path))


def test_anchor_sizes_scale_the_rpn_anchors_and_bad_ones_are_refused():
    """Small scenes need small anchors (torchvision's 32..512 are sized for 800 px COCO images)."""
    small = build_detector("resnet18", num_classes=3, anchor_sizes=[8, 16, 32, 64, 128], box_score_thresh=0.01)
    assert small.rpn.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert small.roi_heads.score_thresh == 0.01
    default = build_detector("resnet18", num_classes=3)
    assert default.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    with pytest.raises(UserError, match="5 positive sizes"):
        build_detector("resnet18", num_classes=3, anchor_sizes=[8, 16])


def test_train_sizes_are_drawn_per_image_and_eval_uses_the_test_size():
    model = build_detector("resnet18", 5, train_min_sizes=(40, 48), test_min_size=64, max_size=200)
    image = torch.rand(3, 30, 60)
    model.transform.train()
    drawn = {model.transform.resize(image)[0].shape[-2] for _ in range(30)}
    assert drawn == {40, 48}
    model.transform.eval()
    assert model.transform.resize(image)[0].shape[-2:] == (64, 128)


def test_schedule_scales_linearly_with_the_global_batch():
    paper = resolve_schedule(ScheduleConfig(), 16)
    assert (paper.iterations, paper.lr, paper.warmup_iters, paper.milestones) == (90000, 0.02, 1000, (60000, 80000))
    half = resolve_schedule(ScheduleConfig(factor=2.0), 8)  # 2x at batch 8: twice the steps again, half the lr
    assert (half.iterations, half.lr, half.milestones) == (360000, 0.01, (240000, 320000))
    assert lr_factor(0, paper, 0.001) == pytest.approx(0.001)
    assert lr_factor(500, paper, 0.001) == pytest.approx(0.5005)
    assert [lr_factor(s, paper, 0.001) for s in (1000, 59999, 60000, 80000)] == pytest.approx([1, 1, 0.1, 0.01])


def test_init_from_a_torchvision_resnet_file_is_reported_per_part(tmp_path):
    resnet = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    model = build_detector("resnet18", 5)
    report = load_initial_weights(model, str(path))
    body = len(resnet.state_dict()) - 2  # everything but the classifier fc
    assert report.loaded["backbone.body"] == (body, body)
    assert report.loaded["backbone.fpn"][0] == 0 and report.loaded["roi_heads.box_head"][0] == 0
    assert sorted(report.unused) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.backbone.body.layer3[1].conv2.weight, resnet.layer3[1].conv2.weight)
    text = str(report)
    assert f"backbone.body          {body} /   {body} tensors loaded" in text and "rpn.head" in text


def test_init_refuses_shape_mismatches_and_keeps_other_class_counts_random(tmp_path):
    r18 = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), r18)
    with pytest.raises(UserError, match="a resnet18 body but the detector is a resnet34: set model.arch=resnet18"):
        load_initial_weights(build_detector("resnet34", 5), str(r18))
    model = build_detector("resnet18", 5)
    bad = tmp_path / "bad.pth"
    torch.save({"backbone.body.conv1.weight": torch.zeros(64, 3, 3, 3)}, bad)
    with pytest.raises(UserError, match=r"backbone.body.conv1.weight has shape \(64, 3, 3, 3\)"):
        load_initial_weights(model, str(bad))
    coco91 = tmp_path / "coco91.pth"
    torch.save({"rpn.head.conv.0.0.weight": torch.zeros(256, 256, 3, 3),
                "roi_heads.box_predictor.cls_score.weight": torch.zeros(91, 1024)}, coco91)
    report = load_initial_weights(model, str(coco91))
    assert report.loaded["other"][0] == 1 and "another class count" in str(report)
    with pytest.raises(UserError, match="init file not found"):
        load_initial_weights(model, str(tmp_path / "nope.pth"))


def test_init_without_local_torchvision_weights_names_the_expected_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UserError, match=r"resnet18-f37072fd.pth"):
        load_initial_weights(build_detector("resnet18", 5), "torchvision")


def test_init_from_an_mcl_pretraining_checkpoint_takes_backbone_fpn_and_head_convs(tmp_path):
    config = to_dict(load_config(MCLConfig, None, [*TINY_PRETRAIN, "model.fpn_channels=256"]))
    pretrained = MCLPretrainModule(config)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": pretrained.state_dict(), "hyper_parameters": {"config": config},
                "mcl_format": "mcl-pretrain/1"}, path)
    model = build_detector("resnet18", 5)
    report = load_initial_weights(model, str(path))
    assert report.loaded["backbone.body"] == (120, 120) and report.loaded["backbone.fpn"] == (48, 48)
    assert report.loaded["roi_heads.box_head"] == (24, 26)  # 4 conv+BN from the neck; the fc stays fresh
    assert report.loaded["other"][0] == 0 and "mcl pretraining checkpoint" in str(report)
    online = pretrained.state_dict()
    assert torch.equal(model.state_dict()["roi_heads.box_head.3.0.weight"],
                       online["model.online.neck.convs.3.0.weight"])

    partial = build_detector("resnet18", 5)
    fresh = partial.state_dict()["roi_heads.box_head.3.0.weight"].clone()
    report = load_initial_weights(partial, str(path), parts=["backbone.body", "backbone.fpn"])
    assert report.loaded["backbone.fpn"] == (48, 48) and report.loaded["roi_heads.box_head"] == (0, 26)
    assert torch.equal(partial.state_dict()["roi_heads.box_head.3.0.weight"], fresh)   # left out: stays random
    with pytest.raises(UserError, match="model.init_parts"):
        load_initial_weights(build_detector("resnet18", 5), str(path), parts=["backbone"])


@pytest.fixture(scope="module")
def synthetic_run(module_tmp_path):
    """`mcl finetune` with no data flags (synthetic scenes), initialised from a torchvision ResNet-18 file."""
    root = module_tmp_path
    init = root / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), init)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        rc = main(["finetune", "--out", str(root / "run"), "--init", str(init), *TINY])
    return root, rc, out.getvalue()


def test_finetune_on_synthetic_scenes_writes_coco_results(synthetic_run):
    root, rc, out = synthetic_run
    assert rc == 0
    assert "backbone.body          120 /   120 tensors loaded" in out and "fc.weight (1)" in out
    assert "final COCO AP" in out and "AP50" in out
    run = root / "run"
    results = json.loads((run / "eval" / "results.json").read_text())
    assert set(results["bbox"]) == set(METRICS) and set(results["segm"]) == set(METRICS)
    assert results["gt_json"] == str(run / "data" / "val.json")
    assert (run / "eval" / "predictions_bbox.json").is_file() and (run / "detector.pt").is_file()
    assert (run / "last.ckpt").is_file() and (run / "config.yaml").is_file()


def test_eval_rescores_the_saved_detector(synthetic_run, capsys):
    root, *_ = synthetic_run
    run = root / "run"
    assert main(["eval", str(run / "detector.pt"), "--num-workers", "0"]) == 0  # defaults to the run's val set
    out = capsys.readouterr().out
    assert "AP50" in out and "segm" in out
    again = json.loads((run / "eval_val" / "results.json").read_text())
    first = json.loads((run / "eval" / "results.json").read_text())
    assert again["bbox"] == first["bbox"]


def test_resume_continues_the_run_to_a_longer_schedule(synthetic_run, capsys):
    root, *_ = synthetic_run
    run = root / "run"
    assert main(["finetune", "--out", str(run), "--resume", *TINY, "schedule.iterations_1x=3"]) == 0
    assert f"resuming from {run / 'last.ckpt'}" in capsys.readouterr().out
    assert json.loads((run / "eval" / "results.json").read_text())["step"] == 3


def test_finetune_on_a_user_json_boxes_only(synthetic_run, capsys):
    root, *_ = synthetic_run
    data = root / "run" / "data"
    rc = main(["finetune", "--train-json", str(data / "train.json"), "--train-images", str(data),
               "--val-json", str(data / "val.json"), "--val-images", str(data), "--out", str(root / "boxes"),
               "model.masks=false", *TINY])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Faster R-CNN resnet18: 7 categories" in out and "AP75" in out
    results = json.loads((root / "boxes" / "eval" / "results.json").read_text())
    assert "segm" not in results and set(results["bbox"]) == set(METRICS)


def test_finetune_bad_input_is_one_line_exit_2(synthetic_run, tmp_path, capsys):
    root, *_ = synthetic_run
    data = root / "run" / "data"
    rc = main(["finetune", "--train-json", str(data / "train.json"), "--train-images", str(tmp_path),
               "--val-json", str(data / "val.json"), "--val-images", str(data), "--out", str(tmp_path / "x"), *TINY])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "4 of 4 images are missing on disk" in err
    rc = main(["finetune", "--out", str(root / "run"), *TINY])
    assert rc == 2 and "already holds checkpoints" in capsys.readouterr().err
    rc = main(["finetune", "--train-json", str(data / "train.json"), "--out", str(tmp_path / "y")])
    assert rc == 2 and "data.train_images = None is missing: give all of data.train_json" in capsys.readouterr().err


@pytest.mark.slow
def test_finetune_overfits_four_scenes(tmp_path):
    """Scoring the train set after 150 steps: labels, boxes, masks and category ids agree end to end
    (measured: bbox AP50 47.4, segm AP50 33.1; about 2.5 CPU-minutes)."""
    from mcl.data.synthetic import write_coco_scenes

    train = write_coco_scenes(tmp_path / "d", 4, 0, 96, split_name="train")
    rc = main(["finetune", "--train-json", str(train), "--train-images", str(train.parent), "--val-json", str(train),
               "--val-images", str(train.parent), "--out", str(tmp_path / "run"), *TINY, "data.flip_prob=0",
               "model.rpn_pre_nms_top_n_train=200", "model.rpn_post_nms_top_n_train=50",
               "model.rpn_pre_nms_top_n_test=100", "model.rpn_post_nms_top_n_test=30",
               "model.box_batch_size_per_image=16", "model.box_detections_per_img=20", "input.train_min_sizes=[96]",
               "input.max_size=192", "input.test_min_size=96", "schedule.iterations_1x=150", "schedule.warmup_iters=10",
               "trainer.checkpoint_every_steps=1000"])
    assert rc == 0
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert results["bbox"]["AP50"] > 0.2 and results["segm"]["AP50"] > 0.1


def test_frozen_modules_get_no_update_and_keep_their_batchnorm_statistics():
    from mcl.transfer.detection import DetectionFinetuneModule
    from mcl.transfer.finetune_base import freeze_modules
    from mcl.transfer.finetune_config import FinetuneConfig

    cfg = load_config(FinetuneConfig, None, [*TINY, "model.freeze=[backbone.body,roi_heads.box_head.0]"])
    module = DetectionFinetuneModule(to_dict(cfg), [1, 2], ["a", "b"], with_masks=False)
    module.train()
    detector = module.detector
    assert not detector.backbone.body.training and not detector.roi_heads.box_head[0].training
    assert detector.backbone.fpn.training and detector.roi_heads.box_head[1].training
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    params = [p for p in detector.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1)
    images = [torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])}]
    sum(detector(images, targets).values()).backward()
    optimizer.step()
    after = detector.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert not any(k.startswith(("backbone.body.", "roi_heads.box_head.0.")) for k in changed)
    assert any(k.startswith("backbone.fpn.") and "running_mean" in k for k in changed)   # BN still adapts there
    assert any(k.startswith("rpn.") for k in changed) and "roi_heads.box_head.1.0.weight" in changed
    with pytest.raises(UserError, match="names no module"):
        freeze_modules(detector, ["backbone.bodyy"])


def test_evaluating_during_training_does_not_change_what_is_trained(tmp_path):
    """An evaluation every 2 steps draws nothing from the training's random streams: 4 steps with it train the same
    weights as 4 steps without (4 scenes at batch 2: the second epoch's shuffle comes after the first evaluation)."""
    weights = {}
    for every in (0, 2):
        run = tmp_path / f"every{every}"
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["finetune", "--out", str(run), "--init", "random", *TINY, "schedule.iterations_1x=4",
                         "trainer.checkpoint_every_steps=4", f"trainer.eval_every_steps={every}"]) == 0
        weights[every] = torch.load(run / "detector.pt", weights_only=True)["state_dict"]
    first, second = weights[0], weights[2]
    tensors = [k for k, v in first.items() if torch.is_tensor(v) and v.is_floating_point()]
    assert tensors and all(torch.equal(first[k], second[k]) for k in tensors)
