"""Supervised montage pretraining: labels follow cells, the loss learns, labeled sources, the CLI end to end."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import supervised_model

from mcl.cli import main
from mcl.data.labeled import LabeledSyntheticScenes, largest_area_category, list_labeled
from mcl.data.sources import SourceError
from mcl.data.views import single_thread
from mcl.losses import cell_targets
from mcl.montage import build_pyramids, level_specs

SPECS = level_specs([1, 2, 4, 8], [1, 1, 1, 2])
TINY = ["model.arch=resnet18", "data.crop_size=32", "model.cell_size=1", "model.fpn_channels=16",
        "model.neck_hidden=16", "model.embed_dim=8"]


def test_every_cell_target_is_the_class_of_the_image_shown_in_that_cell():
    b, s = 32, 32
    classes = torch.randint(0, 5, (b,), generator=torch.Generator().manual_seed(0))
    # every crop of image n is filled with the value 10 * class + n / 100: readable from any cell
    value = 10.0 * classes.float() + torch.arange(b).float() / 100
    crops = value.view(b, 1, 1, 1, 1).expand(b, 8, 3, s, s).clone()
    for montages, view_labels in build_pyramids(crops, SPECS, generator=torch.Generator().manual_seed(1)):
        for spec, mont, target in zip(SPECS, montages, cell_targets(view_labels, classes)):
            r, c = spec.ratio, s // spec.ratio
            cells = mont[:, 0].reshape(-1, r, c, r, c).permute(0, 1, 3, 2, 4).reshape(-1, c * c)  # raster order
            assert torch.all(cells == cells[:, :1])                                           # one image per cell
            shown_class = torch.div(cells[:, 0] + 1e-3, 10, rounding_mode="floor").long()
            assert torch.equal(shown_class, target)
            assert target.shape == (mont.shape[0] * r * r,)


def test_loss_is_finite_and_falls_on_separable_data():
    model = supervised_model(*TINY, "model.num_classes=2", "montage.ratios=[1,2]", "montage.repeats=[1,1]",
                             "loss.level_weights=[0.5,0.5]")
    # lr 0.01: at 0.1 (with momentum 0.9) the loss of this tiny model diverged on one CPU and fell on another
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    labels = torch.arange(8) % 2
    colour = torch.tensor([[1.5, -1.0, -1.0], [-1.0, -1.0, 1.5]])       # class 0 red, class 1 blue
    losses = []
    gen = torch.Generator().manual_seed(0)
    with single_thread():                                               # tiny ops: threads only cost here
        for _ in range(20):
            crops = colour[labels].view(8, 1, 3, 1, 1) + 0.3 * torch.randn(8, 4, 3, 32, 32, generator=gen)
            out = model(crops, labels, generator=gen)
            assert math.isfinite(out.loss.item())
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            losses.append(out.loss.item())
    assert losses[0] == pytest.approx(2 * math.log(2), abs=0.02)       # two views x sum of weights 1 x ln 2
    assert sum(losses[-5:]) < 0.85 * sum(losses[:5]), losses          # single steps are noisy: 5-step means


def test_largest_area_rule_and_coco_listing(tmp_path):
    anns = [{"category_id": 3, "area": 50}, {"category_id": 1, "area": 30}, {"category_id": 1, "area": 30},
            {"category_id": 2, "area": 500, "iscrowd": 1}]
    assert largest_area_category(anns) == 1                       # 60 > 50; the crowd region does not count
    assert largest_area_category([{"category_id": 4, "bbox": [0, 0, 2, 3]}]) == 4   # area from the box
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    coco = {"images": [{"id": i, "file_name": f"{i}.png"} for i in range(3)],
            "annotations": [{"image_id": 0, "category_id": 7, "area": 5}, {"image_id": 1, "category_id": 2, "area": 9},
                            {"image_id": 1, "category_id": 7, "area": 4}],
            "categories": [{"id": 7, "name": "seven"}, {"id": 2, "name": "two"}]}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    listing = list_labeled(tmp_path / "a.json")
    assert listing.class_names == ["two", "seven"]                # sorted by category id
    assert [p.name for p in listing.paths] == ["0.png", "1.png"]  # image 2 has no annotation: left out
    assert listing.labels == [1, 0]
    with pytest.raises(SourceError, match="subfolder per class"):
        list_labeled(tmp_path)                                    # a folder without class subfolders
    scenes = LabeledSyntheticScenes(num=4, seed=0, size=48, transform=lambda im: torch.zeros(1))
    assert all(0 <= scenes[i]["label"] < 7 for i in range(4))


def write_class_folders(root, per_class=16, size=40):
    rng = np.random.default_rng(0)
    for name, channel in (("apple", 0), ("sky", 2)):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            pixels[..., channel] = 220
            Image.fromarray(pixels).save(folder / f"{i:02d}.png")


TINY_CLI = ["data.batch_size=32", "data.crop_size=32", "data.num_workers=0", "model.arch=resnet18",
            "model.cell_size=1", "model.fpn_channels=16", "model.neck_hidden=16", "model.embed_dim=8",
            "model.sync_bn=false", "trainer.max_steps=2", "trainer.accelerator=cpu", "trainer.devices=1",
            "trainer.precision=32-true", "trainer.checkpoint_every_steps=1", "trainer.log_every_steps=1",
            "trainer.progress_bar=false", "optim.warmup_steps=1"]


def test_cli_end_to_end_on_a_class_folder_then_export(tmp_path, capsys):
    data = tmp_path / "labeled"
    write_class_folders(data)
    out = tmp_path / "run"
    assert main(["pretrain", "method=supervised_montage", "--data", str(data), "--out", str(out), *TINY_CLI]) == 0
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["mcl_method"] == "supervised_montage" and ckpt["mcl_format"] == "mcl-pretrain/1"
    assert ckpt["hyper_parameters"]["config"]["model"]["num_classes"] == 2
    state = ckpt["state_dict"]
    for prefix in ("model.online.backbone.body.", "model.online.backbone.fpn.", "model.online.neck.convs."):
        assert any(k.startswith(prefix) for k in state), prefix
    assert "acc_level0" in capsys.readouterr().out
    exported = tmp_path / "r18.pth"
    assert main(["export", str(out / "last.ckpt"), "--format", "torchvision-resnet", "--out", str(exported)]) == 0
    assert "strict load into torchvision resnet18" in capsys.readouterr().out


def test_num_classes_that_disagree_with_the_data_is_one_clear_line(tmp_path, capsys):
    data = tmp_path / "labeled"
    write_class_folders(data, per_class=2)
    assert main(["pretrain", "method=supervised_montage", "--data", str(data), "--out", str(tmp_path / "r"), *TINY_CLI,
                 "model.num_classes=5"]) == 2
    err = capsys.readouterr().err
    assert "model.num_classes = 5" in err and "2 classes" in err and err.count("\n") == 1


def test_supervised_pretraining_reads_labeled_shards(tmp_path, capsys):
    """mcl data shards --labels, then supervised montage pretraining on the shards: classes from classes.json."""
    import csv

    write_class_folders(tmp_path / "labeled")
    shards = tmp_path / "shards"
    assert main(["data", "shards", "--src", str(tmp_path / "labeled"), "--out", str(shards), "--shard-size", "8",
                 "--labels"]) == 0
    out = tmp_path / "run"
    assert main(["pretrain", "method=supervised_montage", "--data", str(shards), "--out", str(out), *TINY_CLI,
                 "data.shard_shuffle_buffer=8"]) == 0
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["config"]["model"]["num_classes"] == 2 and ckpt["global_step"] == 2
    with open(out / "logs" / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    capsys.readouterr()
    (shards / "classes.json").unlink()
    assert main(["pretrain", "method=supervised_montage", "--data", str(shards), "--out", str(tmp_path / "r2"),
                 *TINY_CLI]) == 2
    err = capsys.readouterr().err
    assert "classes.json" in err and "model.num_classes" in err and err.count("\n") == 1
