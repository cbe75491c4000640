"""MoCo v2: queue pointer arithmetic, InfoNCE with a queue, momentum update, key gather across 2 processes."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from mcl.losses import moco_loss, queue_logits
from mcl.models.moco import MoCo, enqueue

TINY = dict(arch="resnet18", head_hidden=16, embed_dim=8)


def tiny_moco(queue_size=16, seed=0):
    torch.manual_seed(seed)
    return MoCo(queue_size=queue_size, temperature=0.2, **TINY)


def test_enqueue_writes_oldest_rows_and_wraps_the_pointer():
    queue = torch.zeros(6, 2)
    ptr = 0
    for step in range(4):
        keys = torch.full((2, 2), float(step + 1))
        ptr = enqueue(queue, ptr, keys)
        assert ptr == 2 * (step + 1) % 6
    # steps 1, 2, 3 filled rows 0-1, 2-3, 4-5; step 4 overwrote the oldest (rows 0-1)
    assert queue[:, 0].tolist() == [4, 4, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="multiple"):
        enqueue(torch.zeros(6, 2), 0, torch.zeros(4, 2))


def test_queue_not_a_multiple_of_the_keys_per_step_is_refused_with_a_size_that_fits():
    model = tiny_moco(queue_size=10)
    with pytest.raises(ValueError, match="queue size 10 is not a multiple of the 4 keys per step .*; 8 is"):
        model.check_queue(4)


def test_info_nce_with_queue_equals_the_loop_formula():
    torch.manual_seed(1)
    q, k, queue = (F.normalize(torch.randn(*s), dim=1) for s in ((5, 8), (5, 8), (12, 8)))
    t = 0.2
    loss, stats = moco_loss(q, k, queue, t)
    terms = []
    for b in range(5):
        pos = math.exp(float(q[b] @ k[b]) / t)
        neg = sum(math.exp(float(q[b] @ queue[j]) / t) for j in range(12))
        terms.append(-math.log(pos / (pos + neg)))
    assert loss.item() == pytest.approx(sum(terms) / 5, rel=1e-5)
    logits = queue_logits(q, k, queue, t)
    assert logits.shape == (5, 13)
    assert stats.pos_cosine.item() == pytest.approx(float((q * k).sum(1).mean()), rel=1e-5)
    assert stats.neg_cosine.item() == pytest.approx(float((q @ queue.t()).mean()), rel=1e-5, abs=1e-6)
    assert stats.accuracy.item() == pytest.approx(float((logits.argmax(1) == 0).float().mean()))


def test_forward_uses_the_old_queue_then_enqueues_the_keys_and_only_online_gets_gradients():
    model = tiny_moco(queue_size=16)
    crops = torch.randn(4, 2, 3, 32, 32)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        q = F.normalize(reference.online(crops[:, 0]), dim=1)
        k = F.normalize(reference.target(crops[:, 1]), dim=1)
    expected, _ = moco_loss(q, k, reference.queue, 0.2)
    out = model(crops, gather=False)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(model.queue[:4], k)
    torch.testing.assert_close(model.queue[4:], reference.queue[4:])
    assert int(model.queue_ptr) == 4
    out.loss.backward()
    assert all(p.grad is None for p in model.target.parameters())
    assert model.online.backbone.body.conv1.weight.grad.abs().sum() > 0
    # key names: the export's ResNet body lives where MCL's does
    assert "online.backbone.body.layer4.1.bn2.weight" in model.state_dict()
    assert not any(k.startswith("online.backbone.body.fc") for k in model.state_dict())


def test_momentum_update_is_an_ema_of_parameters():
    model = tiny_moco()
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(1.0)
    before_t = [p.clone() for p in model.target.parameters()]
    online = [p.clone() for p in model.online.parameters()]
    model.update_target(0.9)
    for t, b, o in zip(model.target.parameters(), before_t, online):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)


def _gather_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = tiny_moco(queue_size=12, seed=0)                # same weights and queue on both ranks
        model.eval()                                            # per-sample keys: comparable across ranks
        torch.manual_seed(100 + rank)
        crops = torch.randn(3, 2, 3, 32, 32)                    # each rank its own images
        with torch.no_grad():
            keys = F.normalize(model.target(crops[:, 1]), dim=1)
            model(crops, gather=True)
        torch.save({"queue": model.queue.clone(), "ptr": int(model.queue_ptr), "keys": keys},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_keys_are_all_gathered_before_enqueue_giving_the_same_queue_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    # mp.spawn's machinery with fork: the children need not re-import torch and this module (9 s -> 1 s)
    mp.start_processes(_gather_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    torch.testing.assert_close(r0["queue"], r1["queue"], rtol=0, atol=0)
    assert r0["ptr"] == r1["ptr"] == 6                        # global batch 2 x 3 keys
    torch.testing.assert_close(r0["queue"][:3], r0["keys"])   # rank order: rank 0's keys first
    torch.testing.assert_close(r0["queue"][3:6], r1["keys"])
    untouched = tiny_moco(queue_size=12, seed=0).queue[6:]
    torch.testing.assert_close(r0["queue"][6:], untouched)
