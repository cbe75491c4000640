"""The multi-level loss against a loop-based computation, and across 2 real processes."""

import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mcl.losses import multi_level_loss

WEIGHTS = [0.5, 0.25, 0.125, 0.125]


def random_inputs(batch=8, dim=16, cells=(1, 1, 1, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    preds = [[torch.randn(batch * c, dim, generator=g) for c in cells] for _ in range(2)]
    labels = [[torch.randint(0, batch, (batch * c,), generator=g) for c in cells] for _ in range(2)]
    targets = [torch.randn(batch, dim, generator=g) for _ in range(2)]
    return preds, labels, targets


def loop_loss(preds, labels, targets, weights, temperature):
    """The formula, one cell at a time, no vectorisation."""
    total = 0.0
    for i, w in enumerate(weights):
        for v in range(2):
            t = [x / x.norm() for x in targets[1 - v]]
            terms = []
            for p, y in zip(preds[v][i], labels[v][i]):
                p = p / p.norm()
                logits = [float(p @ tb) / temperature for tb in t]
                log_z = math.log(sum(math.exp(z) for z in logits))
                terms.append(log_z - logits[int(y)])
            total += sum(terms) / len(terms) * 2 * temperature * w
    return total


@pytest.mark.parametrize("temperature", [1.0, 0.2])
def test_loss_equals_loop_formula(temperature):
    preds, labels, targets = random_inputs()
    loss, stats = multi_level_loss(preds, labels, targets, WEIGHTS, temperature, gather=False)
    assert loss.item() == pytest.approx(loop_loss(preds, labels, targets, WEIGHTS, temperature), rel=1e-5)
    assert sum(s.loss.item() for s in stats) == pytest.approx(loss.item(), rel=1e-6)


def test_positive_and_negative_cosines():
    preds, labels, targets = random_inputs(batch=4, dim=8)
    # make every prediction equal to its positive target: positive cosine 1
    for v in range(2):
        for i in range(4):
            preds[v][i] = targets[1 - v][labels[v][i]].clone()
    _, stats = multi_level_loss(preds, labels, targets, WEIGHTS, gather=False)
    for s in stats:
        assert s.pos_cosine.item() == pytest.approx(1.0, abs=1e-5)
        assert -1.0 <= s.neg_cosine.item() < 1.0


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    preds, labels, targets = random_inputs(seed=100 + rank)
    for view in preds:
        for p in view:
            p.requires_grad_(True)
    loss, _ = multi_level_loss(preds, labels, targets, WEIGHTS, 1.0, gather=True)
    (loss / world).backward()     # DDP's gradient average over ranks
    torch.save({"loss": loss.detach(), "grads": [[p.grad for p in view] for view in preds]},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_global_batch():
    world, batch = 2, 8
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, os.path.join(tmp, "init"), tmp), nprocs=world, join=True)
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(world)]
    parts = [random_inputs(seed=100 + r) for r in range(world)]
    preds = [[torch.cat([parts[r][0][v][i] for r in range(world)]).requires_grad_(True) for i in range(4)]
             for v in range(2)]
    labels = [[torch.cat([parts[r][1][v][i] + r * batch for r in range(world)]) for i in range(4)] for v in range(2)]
    targets = [torch.cat([parts[r][2][v] for r in range(world)]) for v in range(2)]
    loss, _ = multi_level_loss(preds, labels, targets, WEIGHTS, 1.0, gather=False)
    loss.backward()
    mean_rank_loss = sum(r["loss"] for r in ranks) / world
    torch.testing.assert_close(mean_rank_loss, loss.detach(), rtol=1e-6, atol=1e-6)
    for v in range(2):
        for i in range(4):
            n = parts[0][0][v][i].shape[0]
            for r in range(world):
                torch.testing.assert_close(ranks[r]["grads"][v][i], preds[v][i].grad[r * n:(r + 1) * n],
                                           rtol=1e-5, atol=1e-7)
