"""`mcl export --format detectron2` proved with detectron2 itself: its checkpointer loads the .pkl into its own
Mask R-CNN R50-FPN (4conv1fc box head) and the loaded model's features equal mcl's numerically.

Skipped unless ``detectron2`` is importable. It is not on PyPI and CI cannot fetch it, so CI skips this module.
To run it, make detectron2's Python sources importable (its C++ extension ``detectron2._C`` is imported only
lazily by deformable convs and a few other ops this test does not use, so nothing needs compiling)::

    git clone https://github.com/facebookresearch/detectron2 /tmp/detectron2   # tested at 02b5c4e2 (v0.6)
    pip install "fvcore>=0.1.5,<0.1.6" "iopath>=0.1.7,<0.1.10" yacs termcolor tabulate cloudpickle
    # already project dependencies: omegaconf, hydra-core, pycocotools, matplotlib, pillow, pyyaml, tqdm
    PYTHONPATH=/tmp/detectron2 python -m pytest -q tests/transfer/test_transfer_detectron2.py -p no:cacheprovider

(Building it with ``pip install --no-build-isolation --no-deps -e /tmp/detectron2`` should work as well but was
not needed and not tried.)
The model-zoo config is read from the checkout's ``configs/`` folder (or ``detectron2/model_zoo/configs`` of
an installed wheel). The exporter's settings are used as written, including ``"SyncBN"``: torch's
``SyncBatchNorm`` runs as plain BatchNorm on CPU when no process group is initialised, so no override to
``"BN"`` is needed here.
"""

import logging
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

detectron2 = pytest.importorskip(
    "detectron2", reason="detectron2 is not installed (not on PyPI): see this module's docstring for how to "
                         "make it importable")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision.transforms.functional as TF  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.layers import FrozenBatchNorm2d  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes  # noqa: E402
from torch import nn  # noqa: E402

from mcl.cli import main  # noqa: E402
from mcl.config import load_config, to_dict  # noqa: E402
from mcl.methods.mcl import MCLConfig, MCLPretrainModule  # noqa: E402
from mcl.models.backbone import ResNetFPN  # noqa: E402
from mcl.models.neck import CellNeck, split_cells  # noqa: E402

ZOO_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)   # torchvision's, 0-1 units
# detectron2 model keys the export must cover, and the fresh parts it must leave missing
COVERED = ("backbone.bottom_up.", "backbone.fpn_lateral", "backbone.fpn_output", "roi_heads.box_head.conv")
FRESH = ("proposal_generator.", "roi_heads.box_head.fc1.", "roi_heads.box_predictor.", "roi_heads.mask_head.")
RTOL = 1e-4   # max |difference| allowed, relative to the feature map's max |value|
HEIGHT, WIDTH = 224, 288   # multiples of 32: detectron2's preprocess_image pads nothing


def zoo_config_file() -> Path:
    """The model-zoo yaml: ``configs/`` of a source checkout, or ``model_zoo/configs`` of an installed wheel."""
    package = Path(detectron2.__file__).resolve().parent
    for folder in (package / "model_zoo" / "configs", package.parent / "configs"):
        if (folder / ZOO_CONFIG).is_file():
            return folder / ZOO_CONFIG
    pytest.skip(f"detectron2's model-zoo config {ZOO_CONFIG} not found beside {package}")


def write_r50_checkpoint(folder: Path) -> Path:
    """An ``mcl pretrain``-style ResNet-50 checkpoint with realistic, non-trivial tensors, without training.

    The online encoder gets random BN affine parameters and BN running statistics calibrated on random
    images (so features stay O(1) through 50 layers and every BN tensor differs from its default); the EMA
    target is perturbed so that exporting the wrong encoder would show.
    """
    config = to_dict(load_config(MCLConfig, None, ["model.arch=resnet50", "model.sync_bn=false"]))
    with torch.random.fork_rng():   # a fixed initialisation, without touching the session's RNG
        torch.manual_seed(0)
        module = MCLPretrainModule(config)
    online, target = module.model.online, module.model.target
    gen = torch.Generator().manual_seed(0)
    bns = [m for m in online.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(1 + 0.2 * torch.randn(bn.weight.shape, generator=gen))
            bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=gen))
            bn.reset_running_stats()
            bn.momentum = None   # cumulative average: after one batch the running stats are its stats
        online.train()
        pyramid = online.backbone(torch.randn(4, 3, 112, 112, generator=gen))
        online.neck.convs(split_cells(pyramid[0], 7))
        for bn in bns:
            bn.momentum = 0.1
        for p in target.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pretrain_r50.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": config},
                "mcl_format": "mcl-pretrain/1", "global_step": 0}, path)
    return path


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def setup(module_tmp_path):
    """Export with the CLI, build detectron2's model from its zoo config + the exporter's yaml, load the pkl."""
    ckpt = write_r50_checkpoint(module_tmp_path)
    out = module_tmp_path / "mcl_r50.pkl"
    assert main(["export", str(ckpt), "--format", "detectron2", "--out", str(out)]) == 0
    yaml_path = module_tmp_path / "mcl_r50_config.yaml"
    assert yaml_path.is_file()

    cfg = get_cfg()
    cfg.merge_from_file(str(zoo_config_file()))
    cfg.merge_from_file(str(yaml_path))
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    model = build_model(cfg).eval()

    # detectron2's own loading path; _load_model's IncompatibleKeys is what fvcore logs as the load report
    checkpointer = DetectionCheckpointer(model)
    reports = []
    load_model = checkpointer._load_model
    checkpointer._load_model = lambda checkpoint: reports.append(load_model(checkpoint)) or reports[-1]
    handler, loggers = _Records(), [logging.getLogger(n) for n in ("detectron2", "fvcore")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
    try:
        extra = checkpointer.load(cfg.MODEL.WEIGHTS)
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)

    with open(out, "rb") as f:
        payload = pickle.load(f, encoding="latin1")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    ours = ResNetFPN("resnet50", 256)
    ours.load_state_dict({k[len("model.online.backbone."):]: v for k, v in state.items()
                          if k.startswith("model.online.backbone.")})
    neck = CellNeck(256, 4, 2048, 256, 7)
    neck.load_state_dict({k[len("model.online.neck."):]: v for k, v in state.items()
                          if k.startswith("model.online.neck.")})
    return SimpleNamespace(cfg=cfg, model=model, report=reports[0], extra=extra, log=handler.messages,
                           payload=payload, ours=ours.eval(), neck=neck.eval())


def test_the_exporter_yaml_builds_the_intended_detectron2_model(setup):
    cfg, model = setup.cfg, setup.model
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.RESNETS.DEPTH == 50 and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    assert cfg.MODEL.ROI_BOX_HEAD.NAME == "FastRCNNConvFCHead"
    assert (cfg.MODEL.ROI_BOX_HEAD.NUM_CONV, cfg.MODEL.ROI_BOX_HEAD.NUM_FC) == (4, 1)
    assert cfg.MODEL.FPN.OUT_CHANNELS == 256 and cfg.MODEL.MASK_ON
    assert torch.allclose(model.pixel_mean.flatten(), torch.tensor(IMAGENET_MEAN) * 255)
    assert torch.allclose(model.pixel_std.flatten(), torch.tensor(IMAGENET_STD) * 255)
    block = model.backbone.bottom_up.res3[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)   # torchvision's stride placement
    norms = [m.norm for m in model.modules() if hasattr(m, "norm") and isinstance(m.norm, nn.Module)]
    assert norms and not any(isinstance(n, FrozenBatchNorm2d) for n in norms)   # FREEZE_AT 0, no frozen BN
    assert all(isinstance(n, nn.SyncBatchNorm) for n in norms)


def test_detectron2_checkpointer_loads_every_backbone_fpn_and_box_head_conv_key(setup):
    exported, report = setup.payload["model"], setup.report
    own = {k: v for k, v in setup.model.state_dict().items() if not k.endswith("num_batches_tracked")}
    covered = {k for k in own if k.startswith(COVERED)}
    assert len(exported) == len(covered) == 325
    # matching_heuristics silently drops file keys that match no model key, so check the names themselves
    assert set(exported) == covered
    assert report.unexpected_keys == [] and report.incorrect_shapes == []
    missing = set(report.missing_keys)
    assert not missing & covered
    assert missing == set(own) - covered and all(k.startswith(FRESH) for k in missing)
    assert setup.extra == {"__author__": "mcl", "matching_heuristics": True}
    assert "Reading a file from 'mcl'" in setup.log
    bad = [m for m in setup.log if "will not be loaded" in m or "not used in the model" in m
           or "incompatible shapes" in m or "Ambiguity" in m]
    assert bad == []
    for name, array in exported.items():
        assert torch.equal(own[name], torch.from_numpy(array)), name


def _scene(gen: torch.Generator) -> torch.Tensor:
    """A 0-1 RGB image (3, H, W): smooth colour field plus a few flat rectangles, quantised to 8 bits."""
    image = F.interpolate(torch.rand(1, 3, 7, 9, generator=gen), size=(HEIGHT, WIDTH), mode="bilinear",
                          align_corners=False)[0]
    for _ in range(6):
        y, x = (int(torch.randint(0, s - 48, (1,), generator=gen)) for s in (HEIGHT, WIDTH))
        h, w = (int(torch.randint(16, 48, (1,), generator=gen)) for _ in range(2))
        image[:, y:y + h, x:x + w] = torch.rand(3, 1, 1, generator=gen)
    return (image * 255).round() / 255


def _close(name, theirs, mine, diffs):
    assert theirs.shape == mine.shape, name
    diff, scale = float((theirs - mine).abs().max()), float(mine.abs().max())
    diffs[name] = (diff, scale)
    assert scale > 0 and diff <= RTOL * scale, f"{name}: max |diff| {diff:.3g} at feature scale {scale:.3g}"


def test_detectron2_features_equal_mcl_features(setup):
    model = setup.model
    image01 = _scene(torch.Generator().manual_seed(1))
    diffs = {}
    with torch.no_grad():
        batched = model.preprocess_image([{"image": image01 * 255}])   # RGB 0-255, as INPUT.FORMAT RGB reads
        assert tuple(batched.tensor.shape) == (1, 3, HEIGHT, WIDTH)
        c_theirs = model.backbone.bottom_up(batched.tensor)
        p_theirs = model.backbone(batched.tensor)
        x = TF.normalize(image01, IMAGENET_MEAN, IMAGENET_STD)[None]   # mcl/torchvision: 0-1, ImageNet mean/std
        c_mine = setup.ours.features(x)
        p_mine = setup.ours(x)
        for k in range(4):
            _close(f"C{k + 2}", c_theirs[f"res{k + 2}"], c_mine[k], diffs)
        for k in range(4):
            _close(f"P{k + 2}", p_theirs[f"p{k + 2}"], p_mine[k], diffs)
        _close("P6", p_theirs["p6"], F.max_pool2d(p_mine[3], 1, 2), diffs)   # parameter-free in both

        # box head convs on RoI features pooled by detectron2's own pooler (boxes of all FPN levels)
        boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 40.0], [30.0, 20.0, 130.0, 90.0], [0.0, 0.0, 200.0, 160.0],
                                    [10.0, 5.0, 287.0, 223.0], [100.0, 60.0, 116.0, 76.0]]))
        rois = model.roi_heads.box_pooler([p_theirs[f] for f in model.roi_heads.box_in_features], [boxes])
        assert tuple(rois.shape) == (5, 256, 7, 7)
        h = rois
        for layer in model.roi_heads.box_head.conv_norm_relus:
            h = layer(h)
        _close("box head convs", h, setup.neck.convs(rois), diffs)
    print("\n" + "\n".join(f"  {n}: max |diff| {d:.3g}, max |value| {s:.3g}, ratio {d / s:.2g}"
                           for n, (d, s) in diffs.items()))
