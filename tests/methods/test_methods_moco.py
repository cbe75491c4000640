"""MoCo v2 (`mcl pretrain method=moco_v2`, as `--config moco_cpu_smoke` names it) end to end on tiny settings,
and the export of its checkpoint."""

import csv
import math

import pytest
import torch
from runs import TINY_MOCO

from mcl.cli import main


@pytest.fixture(scope="module")
def moco_run(module_tmp_path):
    out = module_tmp_path / "run"
    code = main(["pretrain", "method=moco_v2", "--out", str(out), *TINY_MOCO])
    return code, out


def test_pretrain_moco_writes_a_tagged_checkpoint_with_mcl_key_names(moco_run):
    code, out = moco_run
    assert code == 0
    assert (out / "last.ckpt").is_file() and (out / "config.yaml").is_file()
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["mcl_format"] == "mcl-pretrain/1" and ckpt["mcl_method"] == "moco_v2"
    assert ckpt["global_step"] == 3
    state = ckpt["state_dict"]
    assert "model.online.backbone.body.conv1.weight" in state and "model.target.backbone.body.conv1.weight" in state
    assert int(state["model.queue_ptr"]) == (3 * 16) % 64            # the queue state travels with the checkpoint
    with open(out / "logs" / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


def test_queue_size_not_a_multiple_of_the_batch_is_one_clear_line(tmp_path, capsys):
    assert main(["pretrain", "method=moco_v2", "--out", str(tmp_path / "r"), *TINY_MOCO, "model.queue_size=40"]) == 2
    err = capsys.readouterr().err
    assert "model.queue_size" in err and "40" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_dry_run_prints_the_moco_v2_recipe(capsys):
    assert main(["pretrain", "--config", "moco_v2_r50_in1k", "--dry-run"]) == 0          # the recipe names MoCo v2
    text = capsys.readouterr().out
    assert "global batch 256" in text and "= 0.03" in text and "queue 65536 keys = 256 steps" in text


def test_export_torchvision_resnet_accepts_a_moco_checkpoint(moco_run, tmp_path, capsys):
    code, out = moco_run
    assert code == 0
    target = tmp_path / "resnet18.pth"
    assert main(["export", str(out / "last.ckpt"), "--format", "torchvision-resnet", "--out", str(target)]) == 0
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    result = model.load_state_dict(torch.load(target, weights_only=True), strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"} and not result.unexpected_keys


def test_resume_restores_the_queue_and_continues(moco_run):
    code, out = moco_run
    assert code == 0
    before = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert main(["pretrain", "method=moco_v2", "--out", str(out), "--resume", *TINY_MOCO, "trainer.max_steps=4"]) == 0
    after = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert after["global_step"] == 4
    assert int(after["state_dict"]["model.queue_ptr"]) == (4 * 16) % 64
    # step 4 wrote rows 48-63 only: the rows written before the resume are kept
    torch.testing.assert_close(after["state_dict"]["model.queue"][:48], before["model.queue"][:48])
    assert not torch.equal(after["state_dict"]["model.queue"][48:], before["model.queue"][48:])


def test_resuming_a_moco_run_with_another_methods_recipe_is_refused(moco_run, capsys):
    code, out = moco_run
    assert code == 0
    before = (out / "last.ckpt").read_bytes()
    assert main(["pretrain", "--config", "cpu_smoke", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "was written by method moco_v2, but this recipe is method mcl" in err and err.count("\n") == 1
    assert (out / "last.ckpt").read_bytes() == before                      # nothing touched


def test_export_maskrcnn_from_moco_keeps_fpn_and_head_fresh(moco_run, tmp_path, capsys):
    code, out = moco_run
    target = tmp_path / "det.pth"
    assert main(["export", str(out / "last.ckpt"), "--format", "torchvision-maskrcnn", "--out", str(target)]) == 0
    state = torch.load(target, weights_only=True)
    assert any(k.startswith("backbone.body.") for k in state)
    assert not any(k.startswith(("backbone.fpn.", "roi_heads.")) for k in state)
