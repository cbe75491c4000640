"""Checkpoints written before the methods/ + engine/ layout still load, for export, fine-tuning and --resume.

The checkpoints are written by that release's own code: ``WRITER_COMMIT`` (release 0.1, the last commit
before the layout changed) is taken out of this repository's git history into a temporary folder with
``git archive`` and run there (``PYTHONPATH`` puts it before the installed package). Then today's code
exports them, fine-tunes from one, and resumes each method's run from its step-2 checkpoint: the resumed
step 3 must be bit-identical to the old code's own uninterrupted step 3 (model, EMA target, queue,
optimizer state), which also proves that the refactored methods compute exactly what they computed.
Where the history is missing (a shallow clone, no git), the tests are skipped with that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from runs import SMALL_PRETRAIN, TINY_FINETUNE, differences, load

from mcl.cli import main

WRITER_COMMIT = "56f37d79bd8001b0176c51e22345d7e8972bf8f8"   # release 0.1: mcl/train.py, train_moco.py, supervised.py
REPO = Path(__file__).resolve().parents[2]

TINY_MOCO = [
    "data.batch_size=8", "data.crop_size=32", "data.num_workers=0", "data.synthetic_num=40", "data.synthetic_size=40",
    "model.arch=resnet18", "model.head_hidden=16", "model.embed_dim=8", "model.queue_size=16", "model.sync_bn=false",
    "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true", "trainer.deterministic=true",
    "trainer.log_every_steps=1", "trainer.progress_bar=false", "probe.every_steps=0",
]
TINY_SUPERVISED = [o for o in SMALL_PRETRAIN if not o.startswith("model.predictor_hidden")] + ["probe.every_steps=0"]
# method -> (old command, its recipe, tiny overrides)
RUNS = {
    "mcl": ("pretrain", "cpu_smoke", [*SMALL_PRETRAIN, "probe.every_steps=0"]),
    "moco_v2": ("pretrain-moco", "moco_cpu_smoke", TINY_MOCO),
    "supervised_montage": ("pretrain-supervised", "supervised_cpu_smoke", TINY_SUPERVISED),
}
# runs.TINY_FINETUNE at the pretraining's FPN width
FINETUNE = [*TINY_FINETUNE, "model.fpn_channels=16", "schedule.iterations_1x=1"]
STEPS = ["trainer.max_steps=3", "trainer.checkpoint_every_steps=2", "trainer.keep_checkpoints=5"]


def _old_code(root: Path) -> Path:
    """The tree of ``WRITER_COMMIT`` under ``root/old``, or a skip saying why it cannot be had."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot take release 0.1's code out of the history")
    known = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{WRITER_COMMIT}^{{commit}}"],
                           capture_output=True)
    if known.returncode != 0:
        pytest.skip(f"commit {WRITER_COMMIT[:7]} (release 0.1) is not in this clone's history (a shallow clone?): "
                    f"`git fetch --unshallow` to run these tests")
    old = root / "old"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", WRITER_COMMIT, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    configs = subprocess.run(["git", "-C", str(REPO), "archive", WRITER_COMMIT, "configs"], capture_output=True,
                             check=True)
    subprocess.run(["tar", "-x", "-C", str(old)], input=configs.stdout, check=True)
    link = old / "src" / "mcl" / "configs"            # a symlink to ../../configs in the repository
    if not link.exists():
        link.unlink(missing_ok=True)
        link.symlink_to(old / "configs")
    return old


def _run_old(old: Path, args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(old / "src"), "OMP_WAIT_POLICY": "PASSIVE"}
    where = subprocess.run([sys.executable, "-c", "import mcl; print(mcl.__file__)"], env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert where.startswith(str(old)), f"the old code did not import first: {where}"
    done = subprocess.run([sys.executable, "-m", "mcl.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def old_runs(module_tmp_path):
    """Each method's 3-step run written by release 0.1, with checkpoints at steps 2 and 3."""
    old = _old_code(module_tmp_path)
    runs = {}
    for method, (command, recipe, tiny) in RUNS.items():
        out = module_tmp_path / f"old_{method}"
        _run_old(old, [command, "--config", recipe, "--out", str(out), *tiny, *STEPS])
        runs[method] = out
    return runs


def test_old_checkpoints_are_release_0_1s(old_runs):
    """What makes them old: no method in MCL's checkpoint or in any saved config.yaml."""
    assert "mcl_method" not in load(old_runs["mcl"] / "last.ckpt")
    for out in old_runs.values():
        assert "method:" not in (out / "config.yaml").read_text()
        assert load(out / "last.ckpt")["global_step"] == 3


@pytest.mark.parametrize("method", list(RUNS))
def test_old_checkpoints_export(old_runs, method, tmp_path):
    ckpt = old_runs[method] / "last.ckpt"
    assert main(["export", str(ckpt), "--format", "torchvision-resnet", "--out", str(tmp_path / "r.pth")]) == 0
    body = torch.load(tmp_path / "r.pth", weights_only=True)
    assert torch.equal(body["conv1.weight"], load(ckpt)["state_dict"]["model.online.backbone.body.conv1.weight"])
    if method != "moco_v2":                            # MoCo has no FPN or neck for a detector
        assert main(["export", str(ckpt), "--format", "torchvision-maskrcnn", "--out", str(tmp_path / "d.pth")]) == 0


def test_old_mcl_checkpoint_initialises_finetuning(old_runs, tmp_path, capsys):
    rc = main(["finetune", "--out", str(tmp_path / "ft"), "--init", str(old_runs["mcl"] / "last.ckpt"),
               *FINETUNE])
    out = capsys.readouterr().out
    assert rc == 0 and "final COCO AP" in out
    assert "backbone.fpn" in out and "roi_heads.box_head" in out


@pytest.mark.parametrize("method", list(RUNS))
def test_old_runs_resume_bit_exactly(old_runs, method, tmp_path):
    """Today's code resumes release 0.1's step-2 checkpoint; its step 3 equals release 0.1's own step 3.

    The recipe is the run's own saved config.yaml, which names no method: --resume takes it from the checkpoint.
    """
    old = old_runs[method]
    resumed = tmp_path / "run"
    shutil.copytree(old, resumed)
    (resumed / "last.ckpt").unlink()
    (resumed / "step0000003.ckpt").unlink(missing_ok=True)
    assert (resumed / "step0000002.ckpt").is_file()
    assert main(["pretrain", "--config", str(resumed / "config.yaml"), "--out", str(resumed), "--resume"]) == 0
    new, reference = load(resumed / "last.ckpt"), load(old / "last.ckpt")
    assert new["global_step"] == reference["global_step"] == 3
    assert new["mcl_method"] == method
    assert set(new["state_dict"]) == set(reference["state_dict"])
    assert differences(new, reference) == []
