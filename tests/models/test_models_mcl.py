"""The MCL model: geometry, compute modes, EMA, and key compatibility with torchvision's detector."""

import pytest
import torch
from tiny import config, mcl_model
from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

from mcl.config import ConfigError
from mcl.methods.mcl import MCLConfig
from mcl.models.backbone import ResNetFPN
from mcl.models.ema import cosine_momentum
from mcl.models.mcl import MCL, fpn_level_for
from mcl.models.neck import CellNeck, split_cells

TINY = ["model.arch=resnet18", "data.crop_size=64", "model.cell_size=2", "model.fpn_channels=32",
        "model.neck_hidden=32", "model.predictor_hidden=32", "model.embed_dim=16"]


def tiny_model(*overrides):
    return mcl_model(*TINY, *overrides)


def test_efficient_and_faithful_give_the_same_loss_with_bn_in_eval_mode():
    eff = tiny_model("model.compute_mode=efficient")
    faith = tiny_model("model.compute_mode=faithful")
    faith.load_state_dict(eff.state_dict())
    # give BN non-trivial running statistics first
    eff.train()
    with torch.no_grad():
        eff(torch.randn(32, 8, 3, 64, 64), gather=False)
    faith.load_state_dict(eff.state_dict())
    eff.eval(), faith.eval()
    crops = torch.randn(32, 8, 3, 64, 64)
    out_e = eff(crops, generator=torch.Generator().manual_seed(5), gather=False)
    out_f = faith(crops, generator=torch.Generator().manual_seed(5), gather=False)
    torch.testing.assert_close(out_e.loss, out_f.loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(out_e.levels, out_f.levels):
        torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-5)


def test_train_mode_step_has_finite_loss_and_gradients_only_online():
    model = tiny_model()
    out = model(torch.randn(32, 8, 3, 64, 64), gather=False)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is None for p in model.target.parameters())
    assert all(p.grad is not None for p in model.predictors.parameters())
    assert model.online.backbone.body.conv1.weight.grad.abs().sum() > 0


def test_fpn_partial_computation_matches_torchvision_fpn():
    torch.manual_seed(0)
    net = ResNetFPN("resnet18", 32).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = net.features(x)
    full = net.fpn({str(i): f for i, f in enumerate(feats)})
    ours = net.pyramid(feats, {0, 1, 2, 3})
    for k, ref in enumerate(full.values()):
        torch.testing.assert_close(ours[k], ref)
    torch.testing.assert_close(net.pyramid(feats, {1})[1], list(full.values())[1])


def test_cells_are_raster_order_and_padding_stays_inside_each_cell():
    torch.manual_seed(0)
    neck = CellNeck(channels=8, num_convs=4, hidden=16, out_dim=4, cell_size=3).eval()
    x = torch.randn(2, 8, 6, 6)
    cells = split_cells(x, 3)
    torch.testing.assert_close(cells[1], x[0, :, 0:3, 3:6])      # image 0, row 0, col 1
    torch.testing.assert_close(cells[6], x[1, :, 3:6, 0:3])      # image 1, row 1, col 0
    whole = neck(x)                                              # (2, 4, 4)
    alone = neck(x[1:2, :, 3:6, 0:3])                            # that cell on its own map
    torch.testing.assert_close(whole[1, 2], alone[0, 0], rtol=1e-5, atol=1e-6)


def test_geometry_is_checked_by_the_model_with_the_facts_and_by_the_config_with_the_key():
    assert [fpn_level_for(224, 7, r) for r in (1, 2, 4, 8)] == [3, 2, 1, 0]
    with pytest.raises(ValueError, match="needs an FPN stride of 100/14"):
        fpn_level_for(100, 7, 2)
    bad_crop = config(MCLConfig, *TINY)
    bad_crop.data.crop_size = 128                      # a config changed in code, past its checks
    with pytest.raises(ValueError, match="a 128px montage with ratio 1 and 2px cells needs an FPN stride of 128/2"):
        MCL.from_config(bad_crop)
    with pytest.raises(ConfigError, match="data.crop_size = 128 does not fit: a 128px montage with ratio 1 .*\\[in"):
        config(MCLConfig, *TINY, "data.crop_size=128")
    two_levels = ["montage.ratios=[1,2]", "montage.repeats=[1,1]", "loss.level_weights=[0.5,0.5]"]
    with pytest.raises(ConfigError, match="data.crop_size = 128 must equal 32 x model.cell_size = 256"):
        config(MCLConfig, *TINY, *two_levels, "data.crop_size=128", "model.cell_size=8")   # level 0 on P4
    with pytest.raises(ConfigError, match="loss.level_weights = \\[1.0\\] must have one weight per montage level"):
        config(MCLConfig, *TINY, "loss.level_weights=[1.0]")
    with pytest.raises(ConfigError, match="data.batch_size = 36 does not fit: batch size 36 does not fit a level "
                                          "with ratio 4"):
        config(MCLConfig, *TINY, "data.batch_size=36")


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(1 - 0.01 * 0.5)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert cosine_momentum(25, 100, 0.99) == pytest.approx(
        1 - 0.01 * (torch.cos(torch.tensor(torch.pi / 4)).item() + 1) / 2
    )


def test_ema_update_matches_formula():
    model = tiny_model()
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in model.target.parameters()]
    online = [p.clone() for p in model.online.parameters()]
    model.update_target(0.9)
    for t, b, o in zip(model.target.parameters(), before, online):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)


def test_target_starts_as_copy_of_online():
    model = tiny_model()
    for t, o in zip(model.target.state_dict().values(), model.online.state_dict().values()):
        assert torch.equal(t, o)


def test_online_encoder_keys_are_the_detectors_keys():
    """Backbone + FPN load strictly into maskrcnn_resnet50_fpn_v2's backbone; neck convs into box_head convs."""
    model = MCL.from_config(MCLConfig())              # paper mode: the config's defaults
    detector = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=3)
    detector.backbone.load_state_dict(model.online.backbone.state_dict(), strict=True)
    convs = model.online.neck.convs.state_dict()
    head = {k: v for k, v in detector.roi_heads.box_head.state_dict().items() if k.split(".")[0] in "0123"}
    assert set(convs) == set(head)
    assert all(convs[k].shape == head[k].shape for k in convs)


def test_targets_are_in_image_order():
    """Target row b must embed image b's level-0 crop, whatever order level 0's montages are in."""
    for mode in ("efficient", "faithful"):
        model = tiny_model(f"model.compute_mode={mode}").eval()
        crops = torch.randn(32, 8, 3, 64, 64)
        from mcl.montage import build_pyramids
        (montages, labels), _ = build_pyramids(crops, model.specs, generator=torch.Generator().manual_seed(2))
        assert not torch.equal(labels[0].reshape(-1), torch.arange(32))
        got = model._target_embeddings(montages, labels, [0])[0]
        direct = model.target.neck(model.target.backbone(crops[:, 0], {3})[3])[:, 0]
        torch.testing.assert_close(got, direct, rtol=1e-4, atol=1e-5)


def test_identical_views_give_high_positive_cosine_for_a_copy_predictor():
    """With view 2 = view 1 and predictors that copy their input, level-0 positives are exact matches."""
    model = tiny_model("model.compute_mode=efficient")
    with torch.no_grad():
        for _ in range(3):                        # realistic BN running statistics, so images differ
            model(torch.randn(32, 8, 3, 64, 64), gather=False)
    model.target.load_state_dict(model.online.state_dict())
    model.eval()
    with torch.no_grad():
        for pred in model.predictors:
            first, _, _, last = pred.net
            dim = first.in_features
            first.weight.zero_(), last.weight.zero_()
            first.weight[:dim].copy_(torch.eye(dim)), last.weight[:, :dim].copy_(torch.eye(dim))
            first.bias.fill_(10.0), last.bias.fill_(-10.0)   # stay in ReLU's linear range, then undo
            pred.net[1].reset_running_stats()
    half = torch.randn(32, 4, 3, 64, 64)
    out = model(torch.cat([half, half], dim=1), generator=torch.Generator().manual_seed(0), gather=False)
    assert out.levels[0].pos_cosine.item() > 0.999
    assert out.levels[0].pos_cosine.item() > out.levels[0].neg_cosine.item() + 0.05


@pytest.mark.parametrize("scheme", ["top", "same", "neighbour", "all"])
def test_every_positive_assignment_scheme_trains(scheme):
    model = tiny_model(f"loss.positives={scheme}")
    out = model(torch.randn(32, 8, 3, 64, 64), generator=torch.Generator().manual_seed(0), gather=False)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.predictors[3].net[0].weight.grad is not None


def test_same_level_targets_average_an_images_cells():
    """Level 3 holds every image twice: its per-image target is the mean of the two cells."""
    model = tiny_model("loss.positives=same").eval()
    crops = torch.randn(32, 8, 3, 64, 64)
    from mcl.montage import build_pyramids
    (montages, labels), _ = build_pyramids(crops, model.specs, generator=torch.Generator().manual_seed(4))
    targets = model._target_embeddings(montages, labels, [3])[3]
    cells = model._level_cells(model.target, montages, [3])[3]
    flat = labels[3].reshape(-1)
    image = int(flat[0])
    torch.testing.assert_close(targets[image], cells[flat == image].mean(0))
