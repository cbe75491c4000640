"""`mcl montage` draws the pyramid; the drawn cells carry the right labels."""

import torch
from PIL import Image

from mcl.cli import main
from mcl.montage import level_specs
from mcl.visualize import draw_pyramids, to_pil


def test_montage_command_writes_a_png(tmp_path, tiny_pretrain):
    out = tmp_path / "m.png"
    assert main(["montage", "--out", str(out), *tiny_pretrain]) == 0
    with Image.open(out) as im:
        assert im.width > 200 and im.height > 200


def test_montage_command_refuses_non_png(tmp_path, capsys):
    assert main(["montage", "--out", str(tmp_path / "m.jpg")]) == 2
    assert "should end in .png" in capsys.readouterr().err


def test_to_pil_undoes_normalisation():
    from mcl.data.views import IMAGENET_MEAN, IMAGENET_STD
    value = torch.tensor([(0.5 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(3, 1, 1).expand(3, 4, 4)
    assert to_pil(value).getpixel((0, 0)) == (128, 128, 128)


def test_draw_pyramids_size_grows_with_levels():
    crops = torch.zeros(32, 8, 3, 32, 32)
    small = draw_pyramids(crops[:, [0, 1, 4, 5]], level_specs([1, 2], [1, 1]), show_images=1)
    big = draw_pyramids(crops, level_specs([1, 2, 4, 8], [1, 1, 1, 2]), show_images=1)
    assert big.height > small.height
