"""`mcl export`: torchvision Mask R-CNN / ResNet state dicts proved by loading, detectron2 names and shapes, CLI."""

import pickle

import numpy as np
import pytest
import torch
import torchvision
import yaml
from conftest import TINY_PRETRAIN
from torch import nn
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead

from mcl.cli import main
from mcl.config import load_config, to_dict
from mcl.errors import UserError
from mcl.methods.mcl import MCLConfig, MCLPretrainModule
from mcl.transfer.export import convert_checkpoint, export, verify_torchvision

# torchvision detector prefix <- checkpoint prefix (docs/method.md, "Transfer": neck conv k -> box head conv k)
COVERED = {"backbone.body.": "backbone.body.", "backbone.fpn.": "backbone.fpn.",
           **{f"roi_heads.box_head.{k}.": f"neck.convs.{k}." for k in range(4)}}
# what maskrcnn_resnet50_fpn_v2 keeps fresh: RPN, the box head's fc (index 5), predictors, mask head
FRESH = ("rpn.", "roi_heads.box_head.5.", "roi_heads.box_predictor.", "roi_heads.mask_head.",
         "roi_heads.mask_predictor.")


def write_checkpoint(folder, overrides, seed):
    """A checkpoint like `mcl pretrain` writes, with every tensor randomised (online != target)."""
    config = to_dict(load_config(MCLConfig, None, overrides))
    module = MCLPretrainModule(config)
    gen = torch.Generator().manual_seed(seed)
    state = module.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            if not value.is_floating_point():
                value.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
            elif key.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
            else:
                value.copy_(torch.randn(value.shape, generator=gen))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pretrain.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"config": config}, "mcl_format": "mcl-pretrain/1",
                "global_step": 0}, path)
    return path, state


@pytest.fixture(scope="module")
def r50(module_tmp_path):
    return write_checkpoint(module_tmp_path / "r50", ["model.arch=resnet50"], seed=0)


@pytest.fixture(scope="module")
def r50_detector():
    return maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=7)


@pytest.fixture(scope="module")
def lightning_run(module_tmp_path):
    """A real (tiny, 1-step) `mcl pretrain` run: its last.ckpt is what users export."""
    out = module_tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *TINY_PRETRAIN, "trainer.max_steps=1"]) == 0
    return out / "last.ckpt"


def source_key(detector_key, encoder):
    prefix = next(p for p in COVERED if detector_key.startswith(p))
    return f"model.{encoder}.{COVERED[prefix]}{detector_key[len(prefix):]}"


def assert_loads_exactly(model, state, ckpt_state, encoder):
    """Non-strict load; missing = exactly the fresh parts; every covered tensor equals the checkpoint's."""
    result = model.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    own = model.state_dict()
    covered = [k for k in own if k.startswith(tuple(COVERED))]
    assert set(covered) == set(state)
    # BatchNorm fills in its own missing num_batches_tracked, so the fresh mask head's counters are not listed
    fresh = {k for k in own if k.startswith(FRESH)}
    assert set(result.missing_keys) == {k for k in fresh if not k.endswith("num_batches_tracked")}
    assert set(covered) | fresh == set(own)
    for key in covered:
        assert torch.equal(own[key], ckpt_state[source_key(key, encoder)]), key
    return covered


@pytest.mark.parametrize("encoder", ["online", "target"])
def test_maskrcnn_export_loads_into_torchvision_v2_with_equal_tensors(r50, r50_detector, encoder):
    path, ckpt_state = r50
    state, report = convert_checkpoint(path, "torchvision-maskrcnn", encoder=encoder)
    covered = assert_loads_exactly(r50_detector, state, ckpt_state, encoder)
    assert report.exported == {"backbone": sum(k.startswith("backbone.body.") for k in covered),
                               "fpn": 48, "head": 24}
    other = "target" if encoder == "online" else "online"
    assert f"model.{other}.backbone.body.conv1.weight" in report.not_exported
    assert not torch.equal(state["backbone.body.conv1.weight"],
                           ckpt_state[f"model.{other}.backbone.body.conv1.weight"])
    assert "model.predictors" in report.text() and "backbone" in report.text()


def test_torchvision_resnet_export_is_a_strict_resnet50_state_dict_without_fc(r50, tmp_path):
    path, ckpt_state = r50
    out = tmp_path / "r50.pth"
    report = export(path, "torchvision-resnet", out)
    state = torch.load(out, map_location="cpu", weights_only=True)
    model = torchvision.models.resnet50(weights=None)
    result = model.load_state_dict(state, strict=False)
    assert result.unexpected_keys == [] and sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, ckpt_state[f"model.online.backbone.body.{key}"]), key
    assert "strict load" in report.check and "2 keys left out" in report.check


def test_resnet18_export_loads_into_the_same_detector_layout(tmp_path):
    path, ckpt_state = write_checkpoint(tmp_path, ["model.arch=resnet18"], seed=1)
    report = export(path, "torchvision-maskrcnn", tmp_path / "r18_maskrcnn.pth")
    assert report.arch == "resnet18" and "Mask R-CNN v2 (resnet18, FPN 256)" in report.check
    state = torch.load(tmp_path / "r18_maskrcnn.pth", weights_only=True)
    backbone = _resnet_fpn_extractor(torchvision.models.resnet18(weights=None), 5, norm_layer=nn.BatchNorm2d)
    box_head = FastRCNNConvFCHead((256, 7, 7), [256] * 4, [1024], norm_layer=nn.BatchNorm2d)
    detector = MaskRCNN(backbone, num_classes=3, box_head=box_head)
    result = detector.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    own = detector.state_dict()
    assert not [k for k in result.missing_keys if k.startswith(tuple(COVERED))]
    for key in own:
        if key.startswith(tuple(COVERED)):
            assert torch.equal(own[key], ckpt_state[source_key(key, "online")]), key


def test_the_proof_fails_when_a_covered_tensor_is_absent_or_renamed(lightning_run):
    state, _ = convert_checkpoint(lightning_run, "torchvision-resnet")
    assert "strict load" in verify_torchvision(state, "resnet18", "torchvision-resnet")
    with pytest.raises(UserError, match="layer4.1.bn2.weight"):
        verify_torchvision({k: v for k, v in state.items() if k != "layer4.1.bn2.weight"}, "resnet18",
                           "torchvision-resnet")
    renamed = {("bn1.scale" if k == "bn1.weight" else k): v for k, v in state.items()}
    with pytest.raises(UserError, match="export check failed"):
        verify_torchvision(renamed, "resnet18", "torchvision-resnet")


def detectron2_r50_fpn_4conv1fc():
    """Names and shapes of detectron2's Mask R-CNN R50-FPN, 4conv1fc box head, BN/SyncBN norms, exported parts.

    Written from detectron2's model definitions, not from mcl's exporter: ``BasicStem`` (conv1 7x7 + norm),
    ``build_resnet_backbone`` (res2..res5 with [3, 4, 6, 3] ``BottleneckBlock``s, bottleneck widths 64..512,
    outputs 256..2048), ``BottleneckBlock`` (conv1 1x1, conv2 3x3, conv3 1x1, each with ``.norm``; a
    ``shortcut`` conv + norm when in != out channels, i.e. block 0 of each stage), ``FPN`` (``fpn_lateral{s}``
    1x1 and ``fpn_output{s}`` 3x3, no bias and a ``.norm`` when FPN.NORM is set) and ``FastRCNNConvFCHead``
    (``conv1..conv4`` 3x3 with ``.norm``). Norms are BatchNorm: weight, bias, running_mean, running_var.
    """
    expected = {}

    def conv(name, out_c, in_c, k):
        expected[f"{name}.weight"] = (out_c, in_c, k, k)
        for p in ("weight", "bias", "running_mean", "running_var"):
            expected[f"{name}.norm.{p}"] = (out_c,)

    conv("backbone.bottom_up.stem.conv1", 64, 3, 7)
    in_c = 64
    for stage, blocks, width in zip((2, 3, 4, 5), (3, 4, 6, 3), (64, 128, 256, 512)):
        out_c = 4 * width
        for b in range(blocks):
            name = f"backbone.bottom_up.res{stage}.{b}"
            conv(f"{name}.conv1", width, in_c, 1)
            conv(f"{name}.conv2", width, width, 3)
            conv(f"{name}.conv3", out_c, width, 1)
            if in_c != out_c:
                conv(f"{name}.shortcut", out_c, in_c, 1)
            in_c = out_c
    for stage, channels in zip((2, 3, 4, 5), (256, 512, 1024, 2048)):
        conv(f"backbone.fpn_lateral{stage}", 256, channels, 1)
        conv(f"backbone.fpn_output{stage}", 256, 256, 3)
    for k in range(1, 5):
        conv(f"roi_heads.box_head.conv{k}", 256, 256, 3)
    return expected


def test_detectron2_pickle_has_detectron2_names_shapes_and_values(r50, tmp_path):
    path, ckpt_state = r50
    out = tmp_path / "mcl_r50.pkl"
    report = export(path, "detectron2", out)
    with open(out, "rb") as f:
        payload = pickle.load(f, encoding="latin1")
    assert payload["__author__"] and payload["matching_heuristics"] is True
    model = payload["model"]
    expected = detectron2_r50_fpn_4conv1fc()
    assert len(expected) == 325
    assert sorted(model) == sorted(expected)
    for name, array in model.items():
        assert type(array) is np.ndarray and array.dtype == np.float32, name
        assert array.shape == expected[name], name
    pairs = {  # detectron2 name -> checkpoint name, by hand
        "backbone.bottom_up.stem.conv1.weight": "backbone.body.conv1.weight",
        "backbone.bottom_up.stem.conv1.norm.running_var": "backbone.body.bn1.running_var",
        "backbone.bottom_up.res2.0.shortcut.weight": "backbone.body.layer1.0.downsample.0.weight",
        "backbone.bottom_up.res3.0.shortcut.norm.weight": "backbone.body.layer2.0.downsample.1.weight",
        "backbone.bottom_up.res5.2.conv2.weight": "backbone.body.layer4.2.conv2.weight",
        "backbone.bottom_up.res4.5.conv3.norm.running_mean": "backbone.body.layer3.5.bn3.running_mean",
        "backbone.fpn_lateral2.weight": "backbone.fpn.inner_blocks.0.0.weight",
        "backbone.fpn_lateral5.norm.bias": "backbone.fpn.inner_blocks.3.1.bias",
        "backbone.fpn_output3.weight": "backbone.fpn.layer_blocks.1.0.weight",
        "backbone.fpn_output5.norm.running_var": "backbone.fpn.layer_blocks.3.1.running_var",
        "roi_heads.box_head.conv1.weight": "neck.convs.0.0.weight",
        "roi_heads.box_head.conv4.norm.weight": "neck.convs.3.1.weight",
    }
    for d2_name, name in pairs.items():
        np.testing.assert_array_equal(model[d2_name], ckpt_state[f"model.online.{name}"].numpy(), err_msg=d2_name)
    assert b"numpy._core" not in out.read_bytes()  # readable by numpy 1.x too
    config = yaml.safe_load((tmp_path / "mcl_r50_config.yaml").read_text())
    assert config["INPUT"]["FORMAT"] == "RGB" and config["MODEL"]["WEIGHTS"] == str(out.resolve())
    assert config["MODEL"]["PIXEL_MEAN"] == [123.675, 116.28, 103.53]
    assert config["MODEL"]["PIXEL_STD"] == [58.395, 57.12, 57.375]
    assert config["MODEL"]["RESNETS"]["STRIDE_IN_1X1"] is False
    assert config["MODEL"]["ROI_BOX_HEAD"]["NUM_CONV"] == 4 and config["MODEL"]["ROI_BOX_HEAD"]["NUM_FC"] == 1
    assert all(config["MODEL"][k]["NORM"] == "SyncBN" for k in ("RESNETS", "FPN", "ROI_BOX_HEAD"))
    text = report.text()
    assert 'FORMAT: "RGB"' in text and "STRIDE_IN_1X1: False" in text and "num_batches_tracked" in text


def test_cli_exports_a_real_pretrain_checkpoint_and_prints_the_report(lightning_run, tmp_path, capsys):
    assert torch.load(lightning_run, map_location="cpu", weights_only=True)["mcl_format"] == "mcl-pretrain/1"
    out = tmp_path / "r18.pth"
    assert main(["export", str(lightning_run), "--format", "torchvision-resnet", "--out", str(out),
                 "--encoder", "target"]) == 0
    printed = capsys.readouterr().out
    assert "exported: 120 tensors" in printed and "strict load" in printed and "target encoder" in printed
    model = torchvision.models.resnet18(weights=None)
    result = model.load_state_dict(torch.load(out, weights_only=True), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys


def test_cli_refuses_to_overwrite_without_force(lightning_run, tmp_path, capsys):
    out = tmp_path / "tiny.pkl"
    args = ["export", str(lightning_run), "--format", "detectron2", "--out", str(out)]
    assert main(args) == 0
    assert "INPUT" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "--force" in err
    assert out.read_bytes() == before
    assert main([*args, "--force"]) == 0
    assert not list(tmp_path.glob(".*.tmp"))
    assert main(["export", str(lightning_run), "--format", "detectron2", "--out", str(tmp_path / "d2.pth")]) == 2
    assert ".pkl" in capsys.readouterr().err


def test_other_fpn_widths_export_to_the_same_layout_at_that_width(lightning_run, tmp_path):
    """The tiny run's FPN is 32 wide: the export proves itself against a 32-wide detector and says how to build one."""
    _, report = convert_checkpoint(lightning_run, "torchvision-maskrcnn")
    assert report.fpn_channels == 32 and any("model.fpn_channels=32" in n for n in report.notes)
    report = export(lightning_run, "torchvision-maskrcnn", tmp_path / "narrow.pth")
    assert "FPN 32" in report.check and "fpn_channels=32" in report.usage


@pytest.mark.parametrize("kind", ["truncated", "foreign", "text"])
def test_bad_checkpoint_is_a_one_line_error_naming_the_file(lightning_run, tmp_path, capsys, kind):
    bad = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":
        bad.write_bytes(lightning_run.read_bytes()[:4096])
    elif kind == "foreign":
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), bad)
    else:
        bad.write_text("not a checkpoint")
    out = tmp_path / "x.pth"
    assert main(["export", str(bad), "--format", "torchvision-resnet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err
    assert not out.exists()
