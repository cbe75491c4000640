"""Speed settings change storage and scheduling only: same outputs and gradients, same checkpoint keys."""

import copy

import torch
from tiny import mcl_model

from mcl.engine.speed import apply_speed_settings, resnet_bodies, wants_channels_last
from mcl.models.mcl import MCL

TINY = ["model.arch=resnet18", "data.crop_size=32", "model.cell_size=1", "montage.ratios=[1,2]",
        "montage.repeats=[1,1]", "model.fpn_channels=16", "model.neck_convs=1", "model.neck_hidden=16",
        "model.embed_dim=8", "model.predictor_hidden=16", "loss.level_weights=[0.5,0.5]"]


def _loss_and_grads(model: MCL, crops: torch.Tensor):
    model.zero_grad(set_to_none=True)
    out = model(crops, generator=torch.Generator().manual_seed(0), gather=False)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    plain = mcl_model(*TINY)
    checkpointed = copy.deepcopy(plain)
    checkpointed.online.backbone.activation_checkpointing = True
    crops = torch.randn(8, 4, 3, 32, 32)
    loss_a, grads_a = _loss_and_grads(plain, crops)
    loss_b, grads_b = _loss_and_grads(checkpointed, crops)
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and any("backbone.body" in k for k in grads_a)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6)


def test_channels_last_is_auto_on_cuda_only_and_keeps_outputs():
    assert wants_channels_last("auto", "cuda") and not wants_channels_last("auto", "cpu")
    assert wants_channels_last(True, "cpu") and not wants_channels_last(False, "cuda")
    model = mcl_model(*TINY).eval()
    nhwc = copy.deepcopy(model)
    assert apply_speed_settings(nhwc, True, False, "cpu") == ["channels_last"]
    conv = nhwc.online.backbone.body.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    crops = torch.randn(8, 4, 3, 32, 32)
    with torch.no_grad():
        a = model(crops, generator=torch.Generator().manual_seed(1), gather=False).loss
        b = nhwc(crops, generator=torch.Generator().manual_seed(1), gather=False).loss
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert model.state_dict().keys() == nhwc.state_dict().keys()


def test_compile_marks_every_resnet_body_and_keeps_state_dict_keys():
    model = mcl_model(*TINY)
    keys = list(model.state_dict())
    bodies = resnet_bodies(model)
    assert [b is model.online.backbone.body or b is model.target.backbone.body for b in bodies] == [True, True]
    applied = apply_speed_settings(model, False, True, "cpu")      # compiles lazily: nothing runs here
    assert applied == ["torch.compile (2 ResNet bodies)"]
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in bodies)
    assert list(model.state_dict()) == keys


def test_the_progress_bar_reads_the_loss_only_every_log_interval(tmp_path):
    """A tqdm refresh turns the logged loss into a Python float (a host-device sync): once per log interval."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    from mcl.config import load_config
    from mcl.engine.trainer import build_trainer
    from mcl.methods.mcl import MCLConfig

    cfg = load_config(MCLConfig, "cpu_smoke", ["trainer.log_every_steps=25", "trainer.accelerator=cpu"])
    bar = next(c for c in build_trainer(cfg, tmp_path).callbacks if isinstance(c, TQDMProgressBar))
    assert bar.refresh_rate == 25
