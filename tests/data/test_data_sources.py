"""Listing sources, decoding every awkward image kind, skipping unreadable files."""

import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mcl.data import sources
from mcl.data.sources import (
    ImageDataset,
    SkipReport,
    SourceError,
    UnreadableImage,
    collate_views,
    list_images,
    load_rgb,
)
from mcl.errors import UserError


def _rgb(w=40, h=30) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)
    return Image.fromarray(a, "RGB")


def _save(im: Image.Image, path: Path, **kw) -> Path:
    im.save(path, **kw)
    return path


def _jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


# ------------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".JPEG"])
def test_valid_formats_decode_to_rgb(tmp_path, ext):
    path = _save(_rgb(), tmp_path / f"ok{ext}")
    im = load_rgb(path)
    assert im.mode == "RGB" and im.size == (40, 30)


def test_lossless_png_is_exact(tmp_path):
    src = _rgb()
    out = load_rgb(_save(src, tmp_path / "a.png"))
    assert np.array_equal(np.asarray(out), np.asarray(src))


@pytest.mark.parametrize(
    "name, payload",
    [
        ("zero.jpg", b""),
        ("garbage.jpg", bytes(range(256)) * 8),
        ("text.png", b"this is not an image, just text\n" * 10),
    ],
)
def test_unreadable_files_raise_with_path(tmp_path, name, payload):
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(UnreadableImage, match=name):
        load_rgb(path)


def test_truncated_jpeg_and_png_fail(tmp_path):
    big = _rgb(200, 150)
    data = _jpeg_bytes(big)
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    buf = io.BytesIO()
    big.save(buf, "PNG")
    (tmp_path / "t.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    for name in ("t.jpg", "t.png"):
        with pytest.raises(UnreadableImage, match=name):
            load_rgb(tmp_path / name)


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(UnreadableImage, match="nope.jpg"):
        load_rgb(tmp_path / "nope.jpg")


def test_grayscale_and_bilevel(tmp_path):
    gray = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16), "L")
    out = np.asarray(load_rgb(_save(gray, tmp_path / "g.png")))
    assert out.shape == (16, 16, 3)
    assert np.array_equal(out[..., 0], np.asarray(gray)) and np.array_equal(out[..., 0], out[..., 2])
    bw = gray.convert("1")
    out = np.asarray(load_rgb(_save(bw, tmp_path / "bw.png")))
    assert set(np.unique(out)) <= {0, 255}


def test_palette_with_transparency_composited_on_white(tmp_path):
    p = Image.new("P", (8, 8), 0)
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.paste(1, (0, 0, 4, 8))
    p.info["transparency"] = 0
    path = tmp_path / "p.png"
    p.save(path, transparency=0)
    out = np.asarray(load_rgb(path))
    assert (out[:, :4] == [200, 100, 50]).all()
    assert (out[:, 4:] == 255).all()


def test_palette_opaque(tmp_path):
    p = _rgb().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out = load_rgb(_save(p, tmp_path / "p.gif"))
    assert out.mode == "RGB" and out.size == (40, 30)


def test_rgba_and_la_alpha_composited_on_white(tmp_path):
    a = np.zeros((4, 6, 4), np.uint8)
    a[..., :3] = [0, 0, 200]
    a[:, :3, 3] = 255  # left opaque, right fully transparent
    out = np.asarray(load_rgb(_save(Image.fromarray(a, "RGBA"), tmp_path / "a.png")))
    assert (out[:, :3] == [0, 0, 200]).all() and (out[:, 3:] == 255).all()
    la = Image.fromarray(a[..., [2, 3]].copy(), "LA")
    out = np.asarray(load_rgb(_save(la, tmp_path / "la.png")))
    assert (out[:, :3] == 200).all() and (out[:, 3:] == 255).all()


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (24, 16), (0, 255, 255, 0))  # pure red
    out = np.asarray(load_rgb(_save(cmyk, tmp_path / "c.jpg", quality=95)))
    assert out.shape == (16, 24, 3)
    r, g, b = out.reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535, 1000, 65280]], np.uint16)
    im = Image.fromarray(values)
    assert im.mode.startswith("I;16")
    out = np.asarray(load_rgb(_save(im, tmp_path / "d.png")))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255, 4, 254]


def test_int32_and_float_modes(tmp_path):
    i32 = Image.fromarray(np.array([[0, 65535]], np.int32), "I")
    assert np.asarray(sources._to_rgb8(i32))[0, :, 0].tolist() == [0, 255]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    assert np.asarray(sources._to_rgb8(f))[0, :, 0].tolist() == [0, 128, 255]
    path = _save(Image.fromarray(np.array([[-5.0, 5.0]], np.float32), "F"), tmp_path / "f.tif")
    assert np.asarray(load_rgb(path))[0, :, 0].tolist() == [0, 255]


def test_exif_orientation_is_applied(tmp_path):
    im = _rgb(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = tmp_path / "rot.jpg"
    path.write_bytes(_jpeg_bytes(im, exif=exif.tobytes()))
    with Image.open(path) as raw:
        assert raw.size == (40, 20)
    assert load_rgb(path).size == (20, 40)


def test_max_side_caps_jpeg_via_draft_and_png(tmp_path):
    big = _rgb(1000, 600)
    jpg = tmp_path / "big.jpg"
    jpg.write_bytes(_jpeg_bytes(big))
    out = load_rgb(jpg, max_side=100)
    assert out.size == (100, 60)
    assert load_rgb(_save(big, tmp_path / "big.png"), max_side=100).size == (100, 60)
    assert load_rgb(jpg, max_side=5000).size == (1000, 600)
    assert sources._draft_size((1000, 600), 100) == (100, 60)


def test_decompression_bomb_policy(tmp_path, monkeypatch):
    path = _save(_rgb(100, 100), tmp_path / "bomb.png")  # 10_000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)  # warn above 6k, refuse above 12k
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_rgb(path).size == (100, 100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4_000)
    with pytest.raises(UnreadableImage, match="bomb.png"):
        load_rgb(path)


# ------------------------------------------------------------------------------------ listing


def test_folder_listing_recursive_sorted_case_insensitive(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for rel in ["z.JPG", "a.png", "b/deep/c.TIFF", "b/x.webp", ".hidden/h.jpg", "._fork.jpg", "notes.txt", "b/y.gif"]:
        (tmp_path / rel).write_bytes(b"x")
    got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert got == ["a.png", "b/deep/c.TIFF", "b/x.webp", "z.JPG"]


def test_missing_unsupported_and_empty_sources(tmp_path):
    with pytest.raises(SourceError, match="nothere"):
        list_images(tmp_path / "nothere")
    (tmp_path / "list.csv").write_text("a.jpg\n")
    with pytest.raises(SourceError, match="list.csv"):
        list_images(tmp_path / "list.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="empty"):
        list_images(tmp_path / "empty")
    assert issubclass(SourceError, UserError)


def _coco(images):
    return {"images": images, "annotations": [], "categories": []}


def test_coco_json_listing_and_image_root(tmp_path):
    js = tmp_path / "ann" / "train.json"
    js.parent.mkdir()
    js.write_text(json.dumps(_coco([{"id": 1, "file_name": "img/a.jpg"}, {"id": 2, "file_name": "b.png"}])))
    assert list_images(js) == [tmp_path / "ann" / "img" / "a.jpg", tmp_path / "ann" / "b.png"]
    assert list_images(js, image_root=tmp_path)[1] == tmp_path / "b.png"
    with pytest.raises(SourceError, match="image root"):
        list_images(js, image_root=tmp_path / "missing")


@pytest.mark.parametrize(
    "images, pattern",
    [
        ([{"id": 1, "file_name": "../outside.jpg"}], r"escapes the image root"),
        ([{"id": 1, "file_name": "a/../../outside.jpg"}], r"escapes the image root"),
        ([{"id": 1, "file_name": "/etc/passwd.jpg"}], r"is absolute"),
        ([{"id": 1, "file_name": "a.jpg"}, {"id": 2}], r"images\[1\] has no file_name"),
        ([{"file_name": "a.jpg"}], r"images\[0\] has no id"),
        ([{"id": 7, "file_name": "a.jpg"}, {"id": 7, "file_name": "b.jpg"}], r"image id 7 appears twice"),
        ([], r"no images found"),
    ],
)
def test_coco_json_errors(tmp_path, images, pattern):
    js = tmp_path / "c.json"
    js.write_text(json.dumps(_coco(images)))
    with pytest.raises(SourceError, match=pattern) as err:
        list_images(js)
    assert "c.json" in str(err.value) and "\n" not in str(err.value)


def test_coco_json_inner_dotdot_allowed(tmp_path):
    js = tmp_path / "c.json"
    js.write_text(json.dumps(_coco([{"id": 1, "file_name": "x/../a.jpg"}])))
    assert list_images(js) == [tmp_path / "a.jpg"]


def test_malformed_json_names_line(tmp_path):
    js = tmp_path / "bad.json"
    js.write_text('{\n  "images": [\n    {"id": 1, "file_name": "a.jpg"},\n  ]\n}\n')
    with pytest.raises(SourceError, match=r"bad\.json.*line 4"):
        list_images(js)
    js.write_text('{"annotations": []}')
    with pytest.raises(SourceError, match="no 'images' list"):
        list_images(js)


def test_txt_list(tmp_path):
    (tmp_path / "sub").mkdir()
    txt = tmp_path / "sub" / "list.txt"
    absolute = tmp_path / "abs.png"
    txt.write_text(f"# comment\n\na.jpg\n  b/c.png  \n{absolute}\n   # indented comment\n")
    assert list_images(txt) == [tmp_path / "sub" / "a.jpg", tmp_path / "sub" / "b" / "c.png", absolute]
    (tmp_path / "blank.txt").write_text("# only comments\n\n")
    with pytest.raises(SourceError, match="blank.txt"):
        list_images(tmp_path / "blank.txt")


# ------------------------------------------------------------------------------------ serving


def _mixed_folder(tmp_path):
    good0 = _save(_rgb(), tmp_path / "0.png")
    bad1 = tmp_path / "1.jpg"
    bad1.write_bytes(b"not a jpeg")
    good2 = _save(_rgb(20, 10), tmp_path / "2.png")
    bad3 = tmp_path / "3.jpg"
    bad3.write_bytes(b"")
    return [good0, bad1, good2, bad3]


def test_dataset_skips_to_next_readable_and_remembers(tmp_path, monkeypatch):
    paths = _mixed_folder(tmp_path)
    ds = ImageDataset(paths, transform=lambda im: torch.tensor(im.size), source_name="mixed")
    assert len(ds) == 4
    item = ds[1]
    assert item["index"] == 2 and item["crops"].tolist() == [20, 10] and item["skipped"] == [str(paths[1])]
    item = ds[3]  # wraps around
    assert item["index"] == 0 and item["skipped"] == [str(paths[3])]
    assert ds[0]["skipped"] == []

    calls = []
    real = sources.load_rgb
    monkeypatch.setattr(sources, "load_rgb", lambda p, m=None: calls.append(Path(p)) or real(p, m))
    item = ds[1]
    assert item["index"] == 2 and item["skipped"] == [str(paths[1])]
    assert calls == [paths[2]]  # the known-bad file was not decoded again


def test_dataset_all_bad_raises_source_error(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(b"")
    ds = ImageDataset(paths, transform=lambda im: im, source_name="brokenset")
    with pytest.raises(SourceError, match="no readable image in brokenset"):
        ds[0]
    with pytest.raises(SourceError):  # second time from the remembered set, still an error
        ds[2]


def test_collate_and_skip_report(tmp_path, caplog):
    paths = _mixed_folder(tmp_path)
    ds = ImageDataset(paths, transform=lambda im: torch.zeros(8, 3, 4, 4), source_name="mixed")
    batch = collate_views([ds[i] for i in range(4)])
    assert batch["crops"].shape == (4, 8, 3, 4, 4)
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == [0, 2, 2, 0]
    assert batch["skipped"] == [str(paths[1]), str(paths[3])]

    report = SkipReport(source="mixed", total=len(paths))
    with caplog.at_level(logging.WARNING, logger="mcl.data.sources"):
        report.update(batch["skipped"])
        report.update([str(paths[1])])
        report.update([])
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and str(paths[1]) in warned[0] and str(paths[3]) in warned[1]
    assert report.count == 2
    assert report.summary() == "skipped 2 unreadable files of 4 in mixed"


def test_dataset_with_views_through_dataloader(tmp_path):
    from mcl.data.views import MultiCropViews

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker
    try:
        _views_batch(tmp_path, MultiCropViews)
    finally:
        torch.set_num_threads(threads)


def _views_batch(tmp_path, MultiCropViews):
    paths = _mixed_folder(tmp_path)
    ds = ImageDataset(paths, MultiCropViews(crop_size=16), max_side=32, source_name="mixed")
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_views)
    batch = next(iter(loader))
    assert batch["crops"].shape == (4, 8, 3, 16, 16) and batch["crops"].dtype == torch.float32
