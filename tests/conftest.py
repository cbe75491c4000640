"""Shared fixtures: tiny pretraining overrides and a folder of small real images."""

import os
import shutil

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its threads (see mcl/__init__.py)

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Tiny MCL: ResNet-18 on 32px crops (cell 1 = 32/32), small heads, 4 steps, no workers.
TINY_PRETRAIN = [
    "data.batch_size=32", "data.crop_size=32", "data.num_workers=0", "data.synthetic_num=64",
    "data.synthetic_size=48", "model.arch=resnet18", "model.cell_size=1", "model.fpn_channels=32",
    "model.neck_hidden=32", "model.predictor_hidden=32", "model.embed_dim=16", "model.sync_bn=false",
    "trainer.max_steps=4", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true",
    "trainer.checkpoint_every_steps=2", "trainer.log_every_steps=1", "trainer.progress_bar=false",
    "optim.warmup_steps=1",
]


@pytest.fixture
def tiny_pretrain():
    return list(TINY_PRETRAIN)


def write_photos(folder: Path, count: int, size: int = 48, seed: int = 0) -> list[Path]:
    """Small RGB JPEGs with smooth random content."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.BILINEAR)
        path = folder / f"photo_{i:03d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


@pytest.fixture
def photo_folder(tmp_path):
    folder = tmp_path / "photos"
    write_photos(folder, 40)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Single-threaded torch for a module, as in the loader workers that run the views: tiny ops with
    many threads are just slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def module_tmp_path(tmp_path_factory, request):
    """A folder shared by one test module's fixtures, removed once the module's tests are done
    unless one of them failed. Runs write checkpoints of 100-400 MB and a CI disk is not large:
    with ``tmp_path_retention_policy = "failed"`` (pyproject) this keeps the suite's peak disk use to
    about one run at a time instead of the sum of all of them."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    failed_before = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)
