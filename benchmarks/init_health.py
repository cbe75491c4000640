"""How well a pretrained init can still be fine-tuned: one detector step per init, same scenes, same seed.

Run from the repository root: ``python3 benchmarks/init_health.py CKPT [CKPT ...] [--fpn-channels 128]
[--rescale-init unit_variance] [--layers]``.
Random init is always the first row. For each init (loaded as ``mcl finetune --init`` loads it) into the
demo's Mask R-CNN R18-FPN, on 4 synthetic 128 px scenes:

- ``grad body`` / ``grad fpn``: norm of the gradient of the summed detector loss w.r.t. the ResNet body's
  and the FPN's weights (train-mode BatchNorm, one forward/backward). A body gradient far below random
  init's means the fine-tune barely moves the backbone at the same learning rate.
- ``body g/|W|``: the body's gradient norm over its weights' norm, times 1000: how far one SGD step moves
  it, relative to where it is.
- ``pre-BN var``: mean over the body's BatchNorm layers of their stored ``running_var``, i.e. the variance
  of the conv outputs during pretraining (random init: 1). BatchNorm divides the backward signal by the
  square root of it, layer after layer.
- ``--layers``: also, per conv -> BatchNorm pair of the backbone, the conv's weight norm at random init and in
  the file, and its BatchNorm's mean running variance (which layers the pre-BN variance comes from).
- ``dead``: channels whose BatchNorm output ``gamma * x + beta`` (x ~ N(0, 1)) is positive less than 1% of
  the time, so the ReLU after it passes (and back-propagates) almost nothing.
"""

import argparse
import sys
import tempfile

import torch
from torch.distributions import Normal

sys.path.insert(0, "src")
from mcl.data.synthetic import write_coco_scenes  # noqa: E402
from mcl.transfer.coco_data import CocoDetection, collate  # noqa: E402
from mcl.transfer.detection import build_detector, load_initial_weights  # noqa: E402
from mcl.transfer.rescale import conv_bn_pairs  # noqa: E402


def dead_channels(model: torch.nn.Module, prefix: str) -> tuple[int, int]:
    """(channels alive < 1% of the time, all channels) over the BatchNorm layers under ``prefix``."""
    dead = total = 0
    for name, module in model.named_modules():
        if name.startswith(prefix) and isinstance(module, torch.nn.BatchNorm2d):
            alive = Normal(0.0, 1.0).cdf(module.bias.detach() / (module.weight.detach().abs() + 1e-8))
            dead += int((alive < 0.01).sum())
            total += module.num_features
    return dead, total


def mean_running_var(model: torch.nn.Module, prefix: str) -> float:
    values = [m.running_var.mean() for n, m in model.named_modules()
              if n.startswith(prefix) and isinstance(m, torch.nn.BatchNorm2d)]
    return float(torch.stack(values).mean())


def weight_norm(model: torch.nn.Module, prefix: str) -> float:
    weights = [p.detach() for n, p in model.named_parameters() if n.startswith(prefix) and p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([w.norm() for w in weights])))


def grad_norm(model: torch.nn.Module, prefix: str) -> float:
    grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix) and p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))


def detector(fpn_channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_detector("resnet18", 8, True, train_min_sizes=(128,), test_min_size=128, max_size=256,
                          anchor_sizes=[8, 16, 32, 64, 128], fpn_channels=fpn_channels)


def print_layers(init: str, fpn_channels: int, rescale: str) -> None:
    """|W| at random init and after loading ``init``, and the BN's mean running variance, per backbone conv."""
    model = detector(fpn_channels)
    random_norms = {name: conv.weight.norm().item() for name, _, conv, _ in conv_bn_pairs(model)}
    load_initial_weights(model, init, None, rescale)
    print(f"{init}: per layer")
    print(f"  {'conv':40s} {'|W| random':>10s} {'|W| file':>9s} {'pre-BN var':>10s}")
    for name, _, conv, bn in conv_bn_pairs(model):
        if name.startswith("backbone."):
            print(f"  {name:40s} {random_norms[name]:10.2f} {conv.weight.norm().item():9.2f} "
                  f"{bn.running_var.mean().item():10.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inits", nargs="*", help="mcl checkpoints or exported files (random init always runs)")
    parser.add_argument("--fpn-channels", type=int, default=128, help="detector FPN width (the demo's: 128)")
    parser.add_argument("--layers", action="store_true", help="per-layer weight norms and running variances too")
    parser.add_argument("--rescale-init", default="none", choices=("none", "unit_variance"),
                        help="load as mcl finetune model.rescale_init=... does (default: none, the paper's)")
    args = parser.parse_args()
    if args.layers:
        for init in args.inits:
            print_layers(init, args.fpn_channels, args.rescale_init)
    with tempfile.TemporaryDirectory() as tmp:
        json_path = write_coco_scenes(tmp, 4, seed=0, size=128, split_name="train")
        images, targets = collate([item for item in CocoDetection(json_path, tmp, train=True, flip_prob=0.0)])
        print(f"{'init':48s} {'grad body':>10s} {'grad fpn':>9s} {'body g/|W|':>10s} {'pre-BN var':>10s} "
              f"{'dead':>10s}")
        for init in ["random", *args.inits]:
            model = detector(args.fpn_channels)
            load_initial_weights(model, init, None, args.rescale_init)
            model.train()
            sum(model(images, targets).values()).backward()
            dead, total = dead_channels(model, "backbone")
            body = grad_norm(model, "backbone.body")
            print(f"{init[-48:]:48s} {body:10.3f} {grad_norm(model, 'backbone.fpn'):9.3f} "
                  f"{1000 * body / weight_norm(model, 'backbone.body'):10.3f} "
                  f"{mean_running_var(model, 'backbone.body'):10.1f} {dead:>5d}/{total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
