"""`mcl pretrain` end to end on tiny settings: checkpoints, resume, bad files, bit-exact reload."""

import csv
import math

import numpy as np
import torch
from conftest import write_photos
from PIL import Image

from mcl.cli import main
from mcl.methods.mcl import MCLPretrainModule


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_pretrain_on_folder_with_bad_files_skips_them_and_writes_the_run(tmp_path, tiny_pretrain, capsys, caplog):
    photo_folder = tmp_path / "photos"
    write_photos(photo_folder, 25)          # + 7 special files = 32 = one batch: every file is read each epoch
    (photo_folder / "zero.jpg").write_bytes(b"")
    (photo_folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (photo_folder / "text.jpg").write_text("hello")
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(photo_folder / "gray.png")
    Image.new("CMYK", (40, 40), (10, 20, 30, 40)).save(photo_folder / "cmyk.jpg")
    Image.new("RGBA", (40, 40), (10, 20, 30, 128)).save(photo_folder / "rgba.png")
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(photo_folder / "deep16.png")
    out = tmp_path / "run"
    code = main(["pretrain", "--data", str(photo_folder), "--out", str(out), *tiny_pretrain,
                 "trainer.max_steps=3", "data.batch_size=32"])
    assert code == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err + caplog.text
    for name in ("zero.jpg", "corrupt.png", "text.jpg"):
        assert name in text
    assert "skipped 3 unreadable files" in text
    assert (out / "last.ckpt").is_file() and (out / "config.yaml").is_file()
    rows = read_csv(out / "logs" / "metrics.csv")
    losses = [float(r["train/loss_level0"]) for r in rows if r.get("train/loss_level0")]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert (out / "summary.png").is_file()


def test_resume_continues_from_the_last_step_and_reload_is_bit_exact(tmp_path, tiny_pretrain):
    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *tiny_pretrain, "trainer.max_steps=2"]) == 0
    first = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert first["global_step"] == 2
    assert main(["pretrain", "--out", str(out), "--resume", *tiny_pretrain, "trainer.max_steps=4"]) == 0
    second = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert second["global_step"] == 4
    changed = [k for k in first["state_dict"] if not torch.equal(first["state_dict"][k], second["state_dict"][k])]
    assert changed, "resumed training did not change the parameters"
    # a checkpoint reloads bit-exactly into a fresh module
    module = MCLPretrainModule(second["hyper_parameters"]["config"])
    module.load_state_dict(second["state_dict"], strict=True)
    for key, value in module.state_dict().items():
        assert torch.equal(value, second["state_dict"][key]), key


def test_existing_run_is_not_overwritten_without_resume(tmp_path, tiny_pretrain, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *tiny_pretrain, "trainer.max_steps=1"]) == 0
    before = (out / "last.ckpt").read_bytes()
    assert main(["pretrain", "--out", str(out), *tiny_pretrain]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert (out / "last.ckpt").read_bytes() == before


def test_bad_config_value_fails_before_any_work(tmp_path, tiny_pretrain, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *tiny_pretrain, "data.crop_size=48"]) == 2
    err = capsys.readouterr().err
    assert "data.crop_size = 48 does not fit" in err and "32 x the cell size" in err and err.count("\n") == 1
    assert not out.exists()


def test_empty_source_is_a_clear_error(tmp_path, tiny_pretrain, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["pretrain", "--data", str(empty), "--out", str(tmp_path / "run"), *tiny_pretrain]) == 2
    assert str(empty) in capsys.readouterr().err


def test_dry_run_prints_the_plan(tmp_path, capsys):
    assert main(["pretrain", "--config", "paper_r50_in1k_100ep", "--dry-run", "--out", str(tmp_path / "r")]) == 0
    text = capsys.readouterr().out
    assert "global batch = 4096" in text and "= 16" in text and "images per view per device: 172" in text
