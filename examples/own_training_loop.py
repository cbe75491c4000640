"""Use MCL's pieces in your own training loop: the montage builder, the model and the loss.

Run: python examples/own_training_loop.py   (a few seconds on a CPU; tiny sizes)
"""

import torch

import mcl  # noqa: F401 -- first: sets OMP_WAIT_POLICY before torch starts its threads)
from mcl.config import load_config
from mcl.data import MultiCropViews, SyntheticScenes, collate_views
from mcl.losses import multi_level_loss
from mcl.methods.mcl import MCLConfig
from mcl.models.ema import cosine_momentum
from mcl.models.mcl import MCL
from mcl.montage import build_pyramids, level_specs


def main(steps: int = 3) -> list[float]:
    torch.manual_seed(0)
    # 1. Data: 8 crops per image (4 per view), here 32 px crops of the embedded synthetic scenes.
    views = MultiCropViews(crop_size=32)
    scenes = SyntheticScenes(num=32, seed=0, size=48, transform=views)
    batch = collate_views([scenes[i] for i in range(32)])
    crops = batch["crops"]                                    # (B=32, 8, 3, 32, 32)

    # 2. The montage pyramid on its own: pure tensor code.
    specs = level_specs([1, 2, 4, 8], [1, 1, 1, 2])
    (montages, labels), _ = build_pyramids(crops, specs, generator=torch.Generator().manual_seed(0))
    print("montages per level:", [tuple(m.shape) for m in montages])
    print("source image of each cell of the level-1 montage 0:", labels[1][0].tolist())

    # 3. The model (ResNet-18 + FPN + cell neck, EMA target) and its loss, from a config: paper mode's
    #    defaults with the changes given here (the same keys as a recipe's), checked before the model is built.
    cfg = load_config(MCLConfig, overrides=["model.arch=resnet18", "data.crop_size=32", "model.cell_size=1",
                                            "model.fpn_channels=32", "model.neck_hidden=64",
                                            "model.predictor_hidden=64", "model.embed_dim=32"])
    model = MCL.from_config(cfg)
    params = [p for n, p in model.named_parameters() if not n.startswith("target.")]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    losses = []
    for step in range(steps):
        out = model(crops)                                    # builds the pyramids, runs both encoders
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        model.update_target(cosine_momentum(step, steps, base=0.99))
        losses.append(out.loss.item())
        print(f"step {step}: loss {out.loss.item():.4f}, level losses "
              f"{[round(s.loss.item(), 3) for s in out.levels]}")

    # 4. Or the loss alone, on your own embeddings: predictions[v][i] (cells, D), labels[v][i] (cells,),
    #    targets[v] (B, D) from a target network.
    d = 16
    predictions = [[torch.randn(32, d) for _ in range(4)] for _ in range(2)]
    cell_labels = [[torch.randint(0, 32, (32,)) for _ in range(4)] for _ in range(2)]
    targets = [torch.randn(32, d), torch.randn(32, d)]
    loss, _ = multi_level_loss(predictions, cell_labels, targets, [0.5, 0.25, 0.125, 0.125])
    chance = 2 * 2 * torch.log(torch.tensor(32.0)).item()   # 2 directions x 2T x ln(B) x sum(w) = 1
    print(f"loss on random embeddings: {loss.item():.3f} (uniform-guess value: {chance:.3f})")
    return losses


if __name__ == "__main__":
    main()
