"""Helpers for tests that run `python -m mcl.cli` in real subprocesses: start, wait for a step, signal,
read the CSV log and compare checkpoints bit for bit."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

# A cheaper tiny MCL than conftest.TINY_PRETRAIN: 2 montage levels, 8 images per step.
SMALL_PRETRAIN = [
    "data.batch_size=8", "data.crop_size=32", "data.num_workers=0", "data.synthetic_num=70",
    "data.synthetic_size=40", "model.arch=resnet18", "model.cell_size=1", "model.fpn_channels=16",
    "model.neck_hidden=16", "model.predictor_hidden=16", "model.embed_dim=8", "model.sync_bn=false",
    "montage.ratios=[1,2]", "montage.repeats=[1,1]", "loss.level_weights=[0.5,0.5]",
    "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true", "trainer.deterministic=true",
    "trainer.log_every_steps=1", "trainer.progress_bar=false", "trainer.keep_checkpoints=2",
    "optim.warmup_steps=2",
]

# A tiny MoCo v2 (for `mcl pretrain --config moco_cpu_smoke`): ResNet-18 on 32px crops, 16 images per step.
TINY_MOCO = [
    "data.batch_size=16", "data.crop_size=32", "data.num_workers=0", "data.synthetic_num=32",
    "data.synthetic_size=48", "model.arch=resnet18", "model.head_hidden=32", "model.embed_dim=16",
    "model.queue_size=64", "trainer.max_steps=3", "trainer.accelerator=cpu", "trainer.devices=1",
    "trainer.precision=32-true", "trainer.checkpoint_every_steps=2", "trainer.log_every_steps=1",
    "trainer.progress_bar=false",
]

# Mask R-CNN R18 on 64px scenes with tiny proposal/ROI budgets: a few seconds per run on 2 cores.
TINY_FINETUNE = [
    "data.synthetic_train_num=4", "data.synthetic_val_num=2", "data.synthetic_size=64", "data.batch_size=2",
    "data.num_workers=0", "model.arch=resnet18", "model.rpn_pre_nms_top_n_train=100",
    "model.rpn_post_nms_top_n_train=20", "model.rpn_pre_nms_top_n_test=50", "model.rpn_post_nms_top_n_test=10",
    "model.box_batch_size_per_image=8", "model.box_detections_per_img=5", "input.train_min_sizes=[56,64]",
    "input.max_size=128", "input.test_min_size=64", "schedule.iterations_1x=2", "schedule.reference_batch=2",
    "schedule.warmup_iters=1", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.progress_bar=false",
    "trainer.checkpoint_every_steps=1", "trainer.log_every_steps=1",
]


def start(args: list[str], env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    """``python -m mcl.cli ARGS`` in the background, stdout+stderr to ``log`` (or a pipe)."""
    full_env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1", **(env or {})}
    out = open(log, "w") if log is not None else subprocess.PIPE
    return subprocess.Popen([sys.executable, "-m", "mcl.cli", *args], env=full_env, stdout=out,
                            stderr=subprocess.STDOUT, text=True)


def run(args: list[str], env: dict | None = None, timeout: float = 600) -> tuple[int, str]:
    proc = start(args, env)
    text, _ = proc.communicate(timeout=timeout)
    return proc.returncode, text


def steps_logged(run_dir: Path) -> int:
    """Optimizer steps whose loss is in ``logs/metrics.csv`` (the log is flushed every logged step)."""
    losses = read_losses(run_dir)
    return max(losses) + 1 if losses else 0


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 300) -> int:
    """Poll the CSV log until ``step`` optimizer steps are logged; returns the count seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = steps_logged(run_dir)
        if done >= step:
            return done
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before step {step}")
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def read_losses(run_dir: Path, key: str = "train/loss") -> dict[int, str]:
    """``{csv step: value as written}`` of one metric; tolerant of a row being written right now."""
    path = Path(run_dir) / "logs" / "metrics.csv"
    out: dict[int, str] = {}
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    if row.get(key):
                        out[int(row["step"])] = row[key]
                except (TypeError, ValueError):
                    pass
    except (FileNotFoundError, csv.Error):
        pass
    return out


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def differences(a: dict, b: dict) -> list[str]:
    """Names of the model tensors and optimizer-state tensors that are not bit-identical."""
    bad = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    for i, (sa, sb) in enumerate(zip(a["optimizer_states"], b["optimizer_states"])):
        for p, state in sa["state"].items():
            for name, t in state.items():
                if torch.is_tensor(t) and not torch.equal(t, sb["state"][p][name]):
                    bad.append(f"optimizer{i}.{p}.{name}")
    return bad
