"""Hostile image files: a 20000 x 20000 header (PNG and JPEG) is refused before any pixel buffer is
allocated, so memory stays bounded; the refusal names the file and the dataset skips it."""

import io
import resource
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mcl.data.sources import ImageDataset, UnreadableImage, load_rgb

SIDE = 20_000            # 400 Mpx: 1.2 GB as RGB, above PIL's hard limit (2 x MAX_IMAGE_PIXELS = 179 Mpx)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height RGB, with one row of pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * (3 * width))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_header(width: int, height: int) -> bytes:
    """A small real JPEG with its SOF0 frame size patched to width x height."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("name,payload", [("huge.png", png_header(SIDE, SIDE)),
                                          ("huge.jpg", jpeg_header(SIDE, SIDE))])
def test_huge_header_is_refused_with_bounded_memory(tmp_path, monkeypatch, name, payload):
    path = tmp_path / name
    path.write_bytes(payload)
    with monkeypatch.context() as m:                         # the header really claims 20000 x 20000 ...
        m.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(io.BytesIO(payload)) as probe:
            assert probe.size == (SIDE, SIDE)
    before = peak_rss_mb()
    for max_side in (None, 512):
        with pytest.raises(UnreadableImage, match=rf"{name}: refused, too many pixels"):
            load_rgb(path, max_side=max_side)
    assert peak_rss_mb() - before < 200                      # ... but no 1.2 GB buffer was ever built


def test_dataset_skips_a_huge_header_and_serves_the_next_image(tmp_path):
    huge = tmp_path / "a_huge.png"
    huge.write_bytes(png_header(SIDE, SIDE))
    small = tmp_path / "b_small.png"
    Image.new("RGB", (8, 6), (10, 20, 30)).save(small)
    item = ImageDataset([huge, small], transform=lambda im: im.size)[0]
    assert item == {"crops": (8, 6), "index": 1, "skipped": [str(huge)]}
