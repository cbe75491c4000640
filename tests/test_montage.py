"""The montage pyramid: every cell holds exactly the downscaled crop its label names."""

import pytest
import torch

from mcl.montage import LevelSpec, build_pyramids, downscale, level_specs, tile

PAPER = level_specs([1, 2, 4, 8], [1, 1, 1, 2])


def indexed_crops(batch: int, levels: int, size: int) -> torch.Tensor:
    """Crop (b, l) is a random image plus a constant offset that encodes b and l."""
    torch.manual_seed(0)
    crops = torch.rand(batch, 2 * levels, 3, size, size)
    return (crops + torch.arange(batch).view(batch, 1, 1, 1, 1) * 10
            + torch.arange(2 * levels).view(1, -1, 1, 1, 1) * 1000)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear_antialias"])
def test_every_cell_holds_the_crop_its_label_names(interpolation):
    batch, size = 32, 64
    crops = indexed_crops(batch, 4, size)
    views = build_pyramids(crops, PAPER, interpolation, torch.Generator().manual_seed(1))
    for v, (montages, labels) in enumerate(views):
        for level, spec in enumerate(PAPER):
            r, s = spec.ratio, size // spec.ratio
            expected_count = spec.num_montages(batch)
            assert montages[level].shape == (expected_count, 3, size, size)
            assert labels[level].shape == (expected_count, r * r)
            source = crops[:, v * 4 + level]
            small = torch.nn.functional.interpolate(
                source, size=(s, s), mode="nearest" if interpolation == "nearest" else "bilinear",
                antialias=interpolation != "nearest") if r > 1 else source
            for m in range(expected_count):
                for k in range(r * r):
                    row, col = divmod(k, r)
                    cell = montages[level][m, :, row * s:(row + 1) * s, col * s:(col + 1) * s]
                    torch.testing.assert_close(cell, small[labels[level][m, k]], rtol=0, atol=0)


def test_each_image_appears_repeats_times_per_level_and_views_differ():
    batch = 64
    crops = torch.zeros(batch, 8, 3, 32, 32)
    views = build_pyramids(crops, PAPER, generator=torch.Generator().manual_seed(0))
    for level, spec in enumerate(PAPER):
        for _, labels in views:
            counts = torch.bincount(labels[level].reshape(-1), minlength=batch)
            assert torch.all(counts == spec.repeats)
    for level in range(len(PAPER)):
        assert not torch.equal(views[0][1][level], views[1][1][level])


def test_constant_images_keep_their_identity_at_every_scale():
    batch = 32
    crops = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1, 1).expand(batch, 8, 3, 64, 64).clone()
    for montages, labels in build_pyramids(crops, PAPER, generator=torch.Generator().manual_seed(3)):
        for level, spec in enumerate(PAPER):
            s = 64 // spec.ratio
            grid = montages[level][:, 0, ::s, ::s]          # one pixel per cell, (M, r, r)
            assert torch.equal(grid.reshape(grid.shape[0], -1), labels[level].float())


def test_tile_is_raster_order():
    cells = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1)
    out = tile(cells, torch.tensor([[3, 2, 1, 0]]))
    assert out[0, 0].tolist() == [[3.0, 2.0], [1.0, 0.0]]


def test_batch_that_does_not_tile_is_refused():
    with pytest.raises(ValueError, match="batch size 20"):
        LevelSpec(8, 2).num_montages(20)
    with pytest.raises(ValueError, match="same length"):
        level_specs([1, 2], [1])


def test_downscale_rejects_unknown_interpolation():
    with pytest.raises(ValueError, match="interpolation"):
        downscale(torch.zeros(1, 3, 8, 8), 2, "cubic")
