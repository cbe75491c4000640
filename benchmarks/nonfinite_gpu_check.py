"""GPU check of ``mcl.engine.nonfinite`` (run from the repository root: ``python3 benchmarks/nonfinite_gpu_check.py``).

1. A guarded ResNet-50 step (bf16 autocast, LARS, gradient clipping, gated EMA) runs under
   ``torch.cuda.set_sync_debug_mode("error")``: any host sync in it raises.
2. A NaN step on the GPU leaves parameters, momentum, BN buffers and the EMA target bit-identical.
3. The guard's cost: ms per step with and without it (same model, batch, steps).
Prints one line per check; exits 1 if a check fails.
"""

import copy
import sys
import time

import torch
import torchvision

sys.path.insert(0, "src")
from mcl.engine.nonfinite import NonFiniteGuard  # noqa: E402
from mcl.models.ema import ema_update  # noqa: E402
from mcl.optim import build_optimizer  # noqa: E402

DEV, BATCH, SIDE = "cuda", 64, 224


def setup():
    torch.manual_seed(0)
    online = torchvision.models.resnet50().to(DEV)
    target = copy.deepcopy(online)
    opt = build_optimizer(online, "lars", 1.0, 1e-5, 0.9, 0.001, True)
    x = torch.randn(BATCH, 3, SIDE, SIDE, device=DEV)
    return online, target, opt, x


def step(online, target, opt, x, guard, step_no):
    if guard is not None:
        guard.snapshot(opt, online)
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = online(x).float().square().mean()
    if guard is not None:
        loss = guard.observe_loss(loss, step_no)
    loss.backward()
    if guard is not None:
        guard.observe_grads(opt)
    torch.nn.utils.clip_grad_norm_(online.parameters(), 500.0, foreach=True)
    opt.step()
    ok = guard.restore() if guard is not None else None
    ema_update(target, online, 0.99, ok)


def snapshot(online, target, opt):
    return ([t.clone() for t in online.state_dict().values()], [t.clone() for t in target.parameters()],
            [s["momentum_buffer"].clone() for s in opt.state.values()])


def main() -> int:
    failures = 0
    online, target, opt, x = setup()
    guard = NonFiniteGuard(inject={4})
    for k in (1, 2):
        step(online, target, opt, x, guard, k)
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")
        step(online, target, opt, x, guard, 3)
        torch.cuda.set_sync_debug_mode(0)
        print("check 1 ok: a guarded step made no host sync")
    except RuntimeError as exc:
        torch.cuda.set_sync_debug_mode(0)
        failures += 1
        print(f"check 1 FAILED: host sync in a guarded step: {exc}")

    before = snapshot(online, target, opt)
    step(online, target, opt, x, guard, 4)                       # injected NaN
    after = snapshot(online, target, opt)
    same = all(torch.equal(a, b) for group_a, group_b in zip(before, after) for a, b in zip(group_a, group_b))
    print(f"check 2 {'ok' if same else 'FAILED'}: NaN step left params/BN/EMA/momentum bit-identical; "
          f"counters {guard.read()}")
    failures += not same

    for label, use_guard in (("without guard", False), ("with guard", True), ("without guard", False)):
        online, target, opt, x = setup()
        g = NonFiniteGuard() if use_guard else None
        for k in range(3):
            step(online, target, opt, x, g, k)
        torch.cuda.synchronize()
        start, steps = time.perf_counter(), 20
        for k in range(steps):
            step(online, target, opt, x, g, k)
        torch.cuda.synchronize()
        print(f"check 3: ResNet-50 B={BATCH} {SIDE}px bf16 LARS step {label}: "
              f"{(time.perf_counter() - start) / steps * 1e3:.1f} ms")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
