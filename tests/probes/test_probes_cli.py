"""`mcl probe` end to end (tiny): random and MCL inits, box-only json, frozen detection, bad input."""

import contextlib
import io
import json

import pytest
import torch
import torchvision
from runs import SMALL_PRETRAIN

from mcl.cli import main
from mcl.data.synthetic import write_coco_scenes
from mcl.probes.data import load_probe_set, paint_class_map
from mcl.probes.encoder import FrozenEncoder, read_layout

TINY_PROBE = ["--synthetic-train", "6", "--synthetic-val", "4", "--synthetic-size", "64", "--image-size", "64",
              "--max-pixels", "2000", "--steps", "10"]
# frozen detection: the finetune test's tiny Faster R-CNN budgets, 2 iterations
TINY_DET = ["--det-iterations", "2", "model.rpn_pre_nms_top_n_train=100", "model.rpn_post_nms_top_n_train=20",
            "model.rpn_pre_nms_top_n_test=50", "model.rpn_post_nms_top_n_test=10", "model.box_batch_size_per_image=8",
            "model.box_detections_per_img=5", "input.train_min_sizes=[64]", "input.max_size=128",
            "input.test_min_size=64", "schedule.warmup_iters=1", "trainer.accelerator=cpu", "trainer.devices=1"]


def quiet(argv):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def mcl_checkpoint(module_tmp_path):
    out = module_tmp_path / "pretrain"
    code, text = quiet(["pretrain", "--out", str(out), *SMALL_PRETRAIN, "trainer.max_steps=2",
                        "trainer.checkpoint_every_steps=2"])
    assert code == 0, text[-2000:]
    return out / "last.ckpt"


@pytest.fixture(scope="module")
def scenes(module_tmp_path):
    root = module_tmp_path / "scenes"
    write_coco_scenes(root, 6, 0, 64, split_name="train")
    write_coco_scenes(root, 4, 1, 64, split_name="val")
    return root


def test_layout_is_read_from_the_file(mcl_checkpoint, tmp_path):
    assert read_layout("random").arch is None
    layout = read_layout(str(mcl_checkpoint))
    assert (layout.arch, layout.fpn_channels, layout.head_convs) == ("resnet18", 16, 4)
    resnet = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), resnet)
    assert read_layout(str(resnet)) == read_layout(str(resnet)).__class__("resnet34", None, 0)


def test_encoder_copies_the_checkpoint_and_gives_every_feature_set(mcl_checkpoint):
    encoder = FrozenEncoder(str(mcl_checkpoint))
    state = torch.load(mcl_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(encoder.body.layer1[0].conv1.weight, state["model.online.backbone.body.layer1.0.conv1.weight"])
    assert torch.equal(encoder.head_convs[0][0].weight, state["model.online.neck.convs.0.0.weight"])
    assert encoder.loaded("roi_heads.box_head") and not encoder.training
    c5, pyramid = encoder.maps(torch.rand(2, 3, 64, 64))
    dense = encoder.dense(c5, pyramid)
    assert dense["fpn"].shape == (2, 4 * 16, 16, 16) and dense["c5"].shape == (2, 512, 16, 16)
    rois = encoder.rois(c5, pyramid, [torch.tensor([[0.0, 0.0, 30.0, 30.0]]), torch.tensor([[10.0, 5, 60, 40]])], 64)
    assert {k: tuple(v.shape) for k, v in rois.items()} == {"fpn": (2, 16), "c5": (2, 512), "head": (2, 16)}


def test_class_maps_put_smaller_objects_on_top_and_fill_boxes_without_masks():
    big = torch.zeros(8, 8, dtype=torch.uint8).numpy()
    big[:, :] = 1
    small = big * 0
    small[2:4, 2:4] = 1
    out = paint_class_map([1, 2], [small, big], [[2, 2, 4, 4], [0, 0, 8, 8]], 8, 8)
    assert out[3, 3] == 1 and out[0, 0] == 2 and (out == 1).sum() == 4
    boxes = paint_class_map([3], None, [[1.0, 2.0, 3.5, 4.0]], 8, 8)
    assert boxes[2:4, 1:4].tolist() == [[3, 3, 3], [3, 3, 3]] and boxes.sum() == 3 * 6


def test_probe_random_and_mcl_on_the_default_data_writes_table_json_and_chart(mcl_checkpoint, tmp_path):
    out = tmp_path / "probe"
    code, text = quiet(["probe", "--init", "random", "--init", f"mcl={mcl_checkpoint}", "--out", str(out),
                        "--probes", "seg,roi", *TINY_PROBE])
    assert code == 0, text[-2000:]
    summary = json.loads((out / "probe.json").read_text())
    assert list(summary["inits"]) == ["random", "mcl"] and summary["data"]["box_masks"] is False
    for result in summary["inits"].values():
        assert set(result["segmentation"]) == {"fpn", "c5"} and set(result["retrieval"]) == {"fpn", "c5", "head"}
        assert 0 <= result["segmentation"]["fpn"]["miou"] <= 1 and result["retrieval"]["fpn"]["val_objects"] > 0
    assert summary["inits"]["mcl"]["loaded"]["roi_heads.box_head"][0] > 0
    assert "seg mIoU FPN" in text and "RoI kNN head" in text and "chance:" in text
    assert (out / "probe.png").stat().st_size > 0 and (out / "probe.md").is_file()
    again, text = quiet(["probe", "--init", "random", "--out", str(out), "--probes", "seg,roi", *TINY_PROBE])
    assert again == 0
    rerun = json.loads((out / "probe.json").read_text())["inits"]["random"]
    assert rerun["features_cached"] is True and rerun["segmentation"] == summary["inits"]["random"]["segmentation"]


def test_probe_on_a_box_only_json_uses_box_filled_masks(scenes, tmp_path):
    for split in ("train", "val"):
        data = json.loads((scenes / f"{split}.json").read_text())
        for ann in data["annotations"]:
            ann.pop("segmentation")
        (tmp_path / f"{split}.json").write_text(json.dumps(data))
    out = tmp_path / "probe"
    code, text = quiet(["probe", "--init", "random", "--train-json", str(tmp_path / "train.json"), "--train-images",
                        str(scenes), "--val-json", str(tmp_path / "val.json"), "--val-images", str(scenes),
                        "--out", str(out), "--probes", "seg,roi", *TINY_PROBE])
    assert code == 0, text[-2000:]
    assert "box-filled masks" in text and json.loads((out / "probe.json").read_text())["data"]["box_masks"] is True
    assert load_probe_set(tmp_path / "train.json", scenes, 64).box_masks


def test_frozen_detection_trains_the_heads_only(mcl_checkpoint, scenes, tmp_path):
    out = tmp_path / "probe"
    code, text = quiet(["probe", "--init", f"mcl={mcl_checkpoint}", "--out", str(out), "--probes", "det",
                        "--train-json", str(scenes / "train.json"), "--train-images", str(scenes),
                        "--val-json", str(scenes / "val.json"), "--val-images", str(scenes), *TINY_PROBE, *TINY_DET])
    assert code == 0, text[-3000:]
    det = json.loads((out / "probe.json").read_text())["inits"]["mcl"]["detection"]
    assert det["frozen"] == ["backbone.body", "backbone.fpn"] + [f"roi_heads.box_head.{k}" for k in range(4)]
    assert "AP" in det["bbox"] and "frozen det AP" in text
    trained = torch.load(out / "mcl" / "frozen_det" / "detector.pt", weights_only=True)["state_dict"]
    state = torch.load(mcl_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for ours, theirs in (("detector.backbone.body.layer2.0.bn1.running_var", "backbone.body.layer2.0.bn1.running_var"),
                         ("detector.backbone.body.conv1.weight", "backbone.body.conv1.weight"),
                         ("detector.backbone.fpn.layer_blocks.0.0.weight", "backbone.fpn.layer_blocks.0.0.weight"),
                         ("detector.roi_heads.box_head.3.1.running_mean", "neck.convs.3.1.running_mean")):
        assert torch.equal(trained[ours], state["model.online." + theirs]), ours       # frozen: unchanged


def bad(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def test_bad_input_is_one_line_exit_2(mcl_checkpoint, scenes, tmp_path, capsys):
    data = json.loads((scenes / "train.json").read_text())
    files = {}
    for name, change in (("empty", {"annotations": []}), ("nocats", {"categories": []}),
                         ("missing", {"images": [{**im, "file_name": "nowhere/" + im["file_name"]}
                                                 for im in data["images"]]})):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps({**data, **change}))

    def with_train(name):
        return ["probe", "--init", "random", "--train-json", str(files[name]), "--train-images", str(scenes),
                "--val-json", str(scenes / "val.json"), "--val-images", str(scenes), "--out", str(tmp_path / "o")]

    for name, words in (("empty", "has no annotations"), ("nocats", "has no categories"),
                        ("missing", "6 of 6 images are missing on disk")):
        code, err = bad(with_train(name), capsys)
        assert code == 2 and "\n" not in err and words in err and str(files[name]) in err, err
    r34 = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), r34)
    code, err = bad(["probe", "--init", str(r34), "--arch", "resnet18", "--out", str(tmp_path / "o"), *TINY_PROBE],
                    capsys)
    assert code == 2 and "holds a resnet34 body but --arch is resnet18" in err and "\n" not in err
    junk = tmp_path / "junk.pt"
    torch.save({"encoder.weight": torch.zeros(3)}, junk)
    code, err = bad(["probe", "--init", str(junk), "--out", str(tmp_path / "o"), *TINY_PROBE], capsys)
    assert code == 2 and "none of its 1 tensors match" in err
    code, err = bad(["probe", "--init", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "init file not found" in err
    code, err = bad(["probe", "--init", "random", "--image-size", "100"], capsys)
    assert code == 2 and "multiple of 32" in err
    code, err = bad(["probe", "--init", "random", "--probes", "seg,knn"], capsys)
    assert code == 2 and "choose from seg, roi, det" in err
    code, err = bad(["probe", "--init", "random", "--train-json", str(scenes / "train.json")], capsys)
    assert code == 2 and "give all of --train-json" in err


def test_a_random_init_is_a_function_of_the_seed(tmp_path):
    """torch's initial seed differs per process: the probe seeds before it builds the encoder."""
    import subprocess
    import sys

    def random_figures(out, seed):
        run = subprocess.run([sys.executable, "-m", "mcl.cli", "probe", "--init", "random", "--out", str(out),
                              "--probes", "seg,roi", "--seed", str(seed), *TINY_PROBE], capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        result = json.loads((out / "probe.json").read_text())["inits"]["random"]
        return result["segmentation"], result["retrieval"]

    first = random_figures(tmp_path / "a", 0)
    assert random_figures(tmp_path / "b", 0) == first
    assert random_figures(tmp_path / "c", 1) != first
