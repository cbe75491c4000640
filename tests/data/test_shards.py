"""Tar shards: listing, the per-rank/worker split, epochs, skipping, writing, the CLI, a tiny pretraining run."""

import csv
import io
import json
import math
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import write_photos
from PIL import Image
from torch.utils.data import DataLoader

from mcl.cli import main
from mcl.data.shard_index import INDEX_NAME, Shard, expand_braces, is_shard_source, list_shards, split_key, write_index
from mcl.data.shard_writer import write_shards
from mcl.data.shards import ShardDataset, ShardLoader, wants_shards
from mcl.data.sources import collate_views
from mcl.errors import UserError


def image_size(im):
    """A cheap transform: the decoded (w, h)."""
    return torch.tensor(im.size)


def png(i: int, side: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (i * 37 % 256, i * 11 % 256, 128)).save(buf, "PNG")
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_shards(folder: Path, sizes: list[int], index: bool = True) -> list[Path]:
    """Shards ``shard-00000k.tar`` holding ``sizes[k]`` PNG samples (keys numbered over all shards)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, n = [], 0
    for k, size in enumerate(sizes):
        members = []
        for _ in range(size):
            members += [(f"{n:06d}.png", png(n)), (f"{n:06d}.cls", b"3")]
            n += 1
        paths.append(write_tar(folder / f"shard-{k:06d}.tar", members))
    if index:
        write_index(folder / INDEX_NAME, [Shard(p, s) for p, s in zip(paths, sizes)])
    return paths


def epoch_indices(dataset: ShardDataset, epoch: int = 0) -> list[int]:
    dataset.set_epoch(epoch)
    return [int(item["index"]) for item in dataset]


def rank_batches(share: ShardDataset, workers: int, batch: int) -> list[list[int]]:
    loader = DataLoader(share, batch_size=batch, num_workers=workers, collate_fn=collate_views, drop_last=True)
    assert len(loader) == len(share) // batch
    return [b["index"].tolist() for b in loader]


# ------------------------------------------------------------------------------------ listing


def test_brace_patterns_expand_in_order_and_bad_ones_are_refused():
    assert expand_braces("d/t-{08..11}-{a,b}.tar") == [f"d/t-{i:02d}-{s}.tar" for i in range(8, 12) for s in "ab"]
    assert expand_braces("x{1..3}.tar") == ["x1.tar", "x2.tar", "x3.tar"]
    for bad, words in (("t-{000..}.tar", "brace group"), ("t-{5..2}.tar", "backwards"),
                       ("t-{0..3}}.tar", "unbalanced"), ("t-{a..c}.tar", "brace group")):
        with pytest.raises(UserError, match=words):
            expand_braces(bad)


def test_member_keys_follow_the_webdataset_rule():
    assert split_key("a.b/000123.seg.png") == ("a.b/000123", "seg.png")
    assert split_key("000123.jpg") == ("000123", "jpg")
    assert split_key("._000123.jpg") is None and split_key("README") is None


def test_sources_are_recognised_by_form(tmp_path):
    shards = make_shards(tmp_path / "s", [2, 2])
    (tmp_path / "list.txt").write_text("# shards\n" + "\n".join(str(p) for p in shards) + "\n")
    write_photos(tmp_path / "photos", 2)
    (tmp_path / "photos.txt").write_text("photos/photo_000.jpg\n")
    for source in (tmp_path / "s", shards[0], tmp_path / "s" / INDEX_NAME, tmp_path / "list.txt",
                   f"{tmp_path}/s/shard-{{000000..000001}}.tar"):
        assert is_shard_source(source), source
        assert list_shards(source).total == 4 if source != shards[0] else 2
    for source in (tmp_path / "photos", tmp_path / "photos.txt"):
        assert not is_shard_source(source)
    assert not wants_shards(tmp_path / "s", "files") and wants_shards(tmp_path / "photos", "shards")


def test_counts_come_from_the_index_or_from_the_tar_headers(tmp_path):
    make_shards(tmp_path / "a", [3, 5], index=False)
    write_tar(tmp_path / "a" / "shard-000002.tar", [("x.txt", b"no image"), ("y.json", b"{}")])
    listed = list_shards(tmp_path / "a")
    assert [s.samples for s in listed.shards] == [3, 5, 0] and listed.offsets() == [0, 3, 8]
    write_index(tmp_path / "a" / INDEX_NAME, [Shard(s.path, 99) for s in listed.shards])   # wrong counts ...
    assert list_shards(tmp_path / "a").total == 3 * 99                                      # ... are trusted
    make_shards(tmp_path / "b", [30], index=False)[0].replace(tmp_path / "a" / "shard-000000.tar")  # new size
    assert [s.samples for s in list_shards(tmp_path / "a").shards] == [30, 99, 99]          # recounted


def test_missing_shards_and_empty_sources_are_user_errors(tmp_path):
    make_shards(tmp_path / "s", [2, 2, 2, 2], index=False)
    with pytest.raises(UserError, match=r"1 of 5 shards missing \(first: .*shard-000004.tar\)"):
        list_shards(f"{tmp_path}/s/shard-{{000000..000004}}.tar")
    with pytest.raises(UserError, match="no such file"):
        list_shards(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no \\*.tar shards"):
        list_shards(tmp_path / "empty")
    write_tar(tmp_path / "empty" / "shard-000000.tar", [("a.txt", b"x")])
    with pytest.raises(UserError, match="no image in them"):
        list_shards(tmp_path / "empty")


# ------------------------------------------------------------------------------------ reading


def test_round_trip_reads_every_sample_once_per_epoch(tmp_path):
    make_shards(tmp_path / "s", [6, 6, 6, 2])
    dataset = ShardDataset(list_shards(tmp_path / "s"), image_size, shuffle_buffer=5)
    assert len(dataset) == 20
    for epoch in (0, 1):
        items = list((dataset.set_epoch(epoch), dataset)[1])
        assert sorted(int(i["index"]) for i in items) == list(range(20))
        assert all(i["crops"].tolist() == [24, 24] and i["skipped"] == [] for i in items)


def test_epochs_reorder_and_seed_plus_epoch_reproduces(tmp_path):
    make_shards(tmp_path / "s", [5, 5, 5, 5])
    listed = list_shards(tmp_path / "s")
    a = ShardDataset(listed, image_size, seed=3, shuffle_buffer=4)
    e0, e1 = epoch_indices(a, 0), epoch_indices(a, 1)
    assert e0 != e1 and sorted(e0) == sorted(e1)
    b = ShardDataset(listed, image_size, seed=3, shuffle_buffer=4)
    assert epoch_indices(b, 1) == e1 and epoch_indices(b, 0) == e0
    assert epoch_indices(ShardDataset(listed, image_size, seed=4, shuffle_buffer=4), 0) != e0
    assert ShardDataset(listed, image_size, seed=3).reader_shards(7, 0, 1) == a.reader_shards(7, 0, 1)


@pytest.mark.parametrize("sizes", [[6] * 8, [3, 9, 5, 7, 4, 8, 6, 7]])
def test_two_ranks_two_workers_read_disjoint_shards_and_equal_batches(tmp_path, sizes):
    make_shards(tmp_path / "s", sizes)
    listed = list_shards(tmp_path / "s")
    owner = {i: k for k, (off, s) in enumerate(zip(listed.offsets(), listed.shards))
             for i in range(off, off + s.samples)}
    dataset = ShardDataset(listed, image_size, seed=1, shuffle_buffer=3)
    batch, expected = 4, (sum(sizes) // (2 * 4)) * 4
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        per_rank = [rank_batches(dataset.split(r, 2, batch, 2), 2, batch) for r in range(2)]
        flat = [[i for b in batches for i in b] for batches in per_rank]
        assert [len(f) for f in flat] == [expected, expected]
        assert all(len(b) == batch for batches in per_rank for b in batches)
        shards = [{owner[i] for i in f} for f in flat]
        assert not shards[0] & shards[1]
        if len(set(sizes)) == 1:                  # equal shards: every sample exactly once per epoch
            assert sorted(flat[0] + flat[1]) == list(range(sum(sizes)))
            assert shards[0] | shards[1] == set(range(len(sizes)))


def test_fewer_shards_than_readers_is_refused(tmp_path):
    make_shards(tmp_path / "s", [4, 4, 4])
    dataset = ShardDataset(list_shards(tmp_path / "s"), image_size)
    with pytest.raises(UserError, match=r"3 shards for 2 processes x 2 loader workers = 4 readers.*data.num_workers"):
        dataset.split(0, 2, 2, 2)
    assert len(dataset.split(1, 3, 2, 0)) == 12 // (3 * 2) * 2


def test_epoch_reaches_persistent_workers(tmp_path):
    make_shards(tmp_path / "s", [4, 4, 4, 4])
    listed = list_shards(tmp_path / "s")
    epoch = {"now": 0}
    share = ShardDataset(listed, image_size, shuffle_buffer=3).split(0, 1, 2, 2)
    loader = ShardLoader(share, lambda: epoch["now"], batch_size=2, num_workers=2, collate_fn=collate_views,
                         persistent_workers=True)
    seen = []
    for epoch["now"] in (0, 1):
        seen.append([i for b in loader for i in b["index"].tolist()])
    assert seen[0] != seen[1]
    fresh = ShardDataset(listed, image_size, shuffle_buffer=3).split(0, 1, 2, 2)
    fresh.set_epoch(1)
    assert [i for b in DataLoader(fresh, batch_size=2, num_workers=2, collate_fn=collate_views)
            for i in b["index"].tolist()] == seen[1]


def test_corrupt_members_and_truncated_shards_are_skipped_and_named(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    write_tar(folder / "shard-000000.tar", [(f"{i:06d}.png", png(i)) for i in range(3)] + [("000003.jpg", b"junk")])
    good = write_tar(tmp_path / "full.tar", [(f"{i:06d}.png", png(i, 48)) for i in range(4, 8)])
    (folder / "shard-000001.tar").write_bytes(good.read_bytes()[:1600])     # cut inside the second member
    write_index(folder / INDEX_NAME, [Shard(folder / "shard-000000.tar", 4), Shard(folder / "shard-000001.tar", 4)])
    listed = list_shards(folder)
    items = list(ShardDataset(listed, image_size, shuffle_buffer=1))
    assert len(items) == listed.total == 8                                    # the count holds: good samples repeat
    skipped = [name for item in items for name in item["skipped"]]
    assert any(name.endswith("shard-000000.tar:000003.jpg") for name in skipped)
    assert any("shard-000001.tar (unreadable tar after 1 samples" in name for name in skipped)
    assert {int(i["index"]) for i in items} == {0, 1, 2, 4}


def test_a_shard_set_without_any_readable_image_is_an_error(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    write_tar(folder / "shard-000000.tar", [("000000.jpg", b"junk"), ("000001.png", b"junk")])
    with pytest.raises(UserError, match="no readable image in shards"):
        list(ShardDataset(list_shards(folder), image_size))


# ------------------------------------------------------------------------------------ writing + CLI


def test_writer_refuses_to_overwrite(tmp_path):
    paths = write_photos(tmp_path / "photos", 5, size=32)
    result = write_shards(paths, tmp_path / "out", 2)
    assert [s.samples for s in result.shards] == [2, 2, 1] and result.total == 5
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(UserError, match="already holds shards.*nothing was overwritten"):
        write_shards(paths, tmp_path / "out", 2)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(before) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar", INDEX_NAME]


def test_a_failed_write_leaves_no_partial_shard_and_no_index(tmp_path, monkeypatch):
    from mcl.data import shard_writer

    paths = write_photos(tmp_path / "photos", 5, size=32)
    real, calls = shard_writer.sample_bytes, []

    def failing(path, max_side):
        calls.append(path)
        if len(calls) == 4:
            raise RuntimeError("disk full")
        return real(path, max_side)

    monkeypatch.setattr(shard_writer, "sample_bytes", failing)
    with pytest.raises(RuntimeError):
        write_shards(paths, tmp_path / "out", 3)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["shard-000000.tar"]


def test_cli_writes_shards_that_read_back(tmp_path, capsys):
    folder = tmp_path / "photos"
    write_photos(folder, 11, size=48)
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "shards"
    assert main(["data", "shards", "--src", str(folder), "--out", str(out), "--shard-size", "4",
                 "--max-side", "32"]) == 0
    text = capsys.readouterr().out
    assert "wrote 11 images in 3 shards" in text and "broken.jpg" in text
    index = json.loads((out / INDEX_NAME).read_text())
    assert index["total"] == 11 and [s["samples"] for s in index["shards"]] == [4, 4, 3]
    items = list(ShardDataset(list_shards(out), image_size))
    assert sorted(int(i["index"]) for i in items) == list(range(11))
    assert all(i["crops"].tolist() == [32, 32] for i in items)
    assert main(["data", "shards", "--src", str(folder), "--out", str(out), "--shard-size", "4"]) == 2
    assert "already holds shards" in capsys.readouterr().err
    (out / INDEX_NAME).unlink()                                  # `mcl data index` writes it again
    assert main(["data", "index", f"{out}/shard-{{000000..000002}}.tar"]) == 0
    assert json.loads((out / INDEX_NAME).read_text())["total"] == 11


def test_pretrain_reads_shards(tmp_path, tiny_pretrain):
    write_photos(tmp_path / "photos", 40)
    assert main(["data", "shards", "--src", str(tmp_path / "photos"), "--out", str(tmp_path / "shards"),
                 "--shard-size", "10"]) == 0
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(tmp_path / "shards"), "--out", str(run), *tiny_pretrain,
                 "trainer.max_steps=3", "data.shard_shuffle_buffer=8"]) == 0
    with open(run / "logs" / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    ckpt = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 and ckpt["epoch"] >= 2              # 40 images, batch 32: one step an epoch


def test_moco_pretraining_reads_shards(tmp_path):
    """MoCo v2 takes the same shard sources as MCL (two crops per sample instead of eight)."""
    from runs import TINY_MOCO

    write_photos(tmp_path / "photos", 20)
    assert main(["data", "shards", "--src", str(tmp_path / "photos"), "--out", str(tmp_path / "shards"),
                 "--shard-size", "5"]) == 0
    run = tmp_path / "run"
    assert main(["pretrain", "method=moco_v2", "--data", str(tmp_path / "shards"), "--out", str(run), *TINY_MOCO,
                 "data.shard_shuffle_buffer=4"]) == 0
    with open(run / "logs" / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 3


# ------------------------------------------------------------------------------------ labeled shards

def test_labeled_shards_pair_each_image_with_its_class_and_skip_bad_labels(tmp_path):
    """A sample's .cls may come before or after its image; missing, non-integer or out-of-range ones are skipped."""
    write_tar(tmp_path / "shard-000000.tar", [
        ("000000.png", png(0)), ("000000.cls", b"1"),
        ("000001.cls", b"0\n"), ("000001.png", png(1)),      # label first
        ("000002.png", png(2)),                              # no label
        ("000003.png", png(3)), ("000003.cls", b"cat"),      # not an integer
        ("000004.png", png(4)), ("000004.cls", b"7"),        # outside 0..2
        ("000005.png", png(5)), ("000005.cls", b"2"),
    ])
    # the quota is the shard's 6 samples, so the reader goes round again after the first 3 good ones
    items = list(ShardDataset(list_shards(tmp_path), image_size, num_classes=3, shuffle_buffer=1))[:3]
    assert [(int(i["index"]), i["label"]) for i in items] == [(0, 1), (1, 0), (5, 2)]
    skipped = [name for i in items for name in i["skipped"]]
    assert len(skipped) == 3 and all("no class index 0..2" in name for name in skipped)
    assert "000002.png" in skipped[0] and "000004.png" in skipped[2]
    unlabeled = list(ShardDataset(list_shards(tmp_path), image_size, shuffle_buffer=1))
    assert len(unlabeled) == 6 and "label" not in unlabeled[0]


def test_cli_writes_labeled_shards_from_class_folders(tmp_path, capsys):
    from mcl.data.shard_index import CLASSES_NAME, read_class_names

    for k, name in enumerate(("apple", "sky")):
        write_photos(tmp_path / "classes" / name, 3 + k, size=24)
    out = tmp_path / "shards"
    assert main(["data", "shards", "--src", str(tmp_path / "classes"), "--out", str(out), "--shard-size", "2",
                 "--labels"]) == 0
    assert "with labels: 2 classes" in capsys.readouterr().out
    shards = list_shards(out)
    assert read_class_names(shards) == ["apple", "sky"] and shards.total == 7
    items = list(ShardDataset(shards, image_size, num_classes=2))
    assert sorted(i["label"] for i in items) == [0, 0, 0, 1, 1, 1, 1]
    with tarfile.open(out / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert names[0].endswith(".jpg") and names[1] == names[0][:-3] + "cls"
    assert main(["data", "shards", "--src", str(tmp_path / "classes"), "--out", str(tmp_path / "x"),
                 "--shard-size", "2"]) == 0                    # unlabeled: no .cls, no classes.json
    assert not (tmp_path / "x" / CLASSES_NAME).exists()
