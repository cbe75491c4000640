"""Atomic checkpoint writes and a resume that skips truncated or foreign files."""

import pytest
import torch

from mcl.cli import main
from mcl.engine.checkpoints import atomic_torch_save, load_checkpoint, newest_valid_checkpoint
from mcl.errors import UserError


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "a.ckpt"
    atomic_torch_save({"x": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"x": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_and_foreign_files_are_refused(tmp_path):
    good = tmp_path / "good.ckpt"
    atomic_torch_save({"mcl_format": "mcl-pretrain/1", "state_dict": {}}, good)
    truncated = tmp_path / "trunc.ckpt"
    truncated.write_bytes(good.read_bytes()[:40])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(UserError, match="trunc.ckpt cannot be read"):
        load_checkpoint(truncated)
    with pytest.raises(UserError, match="foreign.ckpt is not an mcl pretraining checkpoint"):
        load_checkpoint(foreign)
    assert load_checkpoint(good)["mcl_format"] == "mcl-pretrain/1"


def test_resume_skips_a_truncated_last_checkpoint(tmp_path, tiny_pretrain, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *tiny_pretrain, "trainer.max_steps=2",
                 "trainer.checkpoint_every_steps=1"]) == 0
    step_files = sorted(out.glob("step*.ckpt"))
    assert step_files
    last = out / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])              # a crash mid-write with a non-atomic writer
    messages = []
    chosen = newest_valid_checkpoint(out, warn=messages.append)
    assert chosen in step_files and "last.ckpt cannot be read" in messages[0]
    assert main(["pretrain", "--out", str(out), "--resume", *tiny_pretrain, "trainer.max_steps=3"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert torch.load(last, weights_only=True)["global_step"] == 3
