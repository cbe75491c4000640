"""Non-finite loss or gradient: the step is undone on the device (parameters, momentum, buffers, EMA target),
counted, and a streak of them stops the run without overwriting the last good checkpoint."""

import pytest
import torch
from runs import SMALL_PRETRAIN, differences, load, read_losses
from torch import nn

from mcl.cli import main
from mcl.engine.nonfinite import INJECT_ENV, NonFiniteGuard, injected_steps
from mcl.models.ema import ema_update
from mcl.optim import build_optimizer


def toy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    return model, build_optimizer(model, "lars", 0.1, 1e-4, 0.9, 0.001, True)


def guarded_step(model, optimizer, guard, x, poison=False):
    guard.snapshot(optimizer, model)
    optimizer.zero_grad()
    loss = guard.observe_loss(model(x).square().mean(), step=1 if poison else 0)
    loss.backward()
    guard.observe_grads(optimizer)
    optimizer.step()
    return guard.restore()


def state_copy(model, optimizer):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()})


def test_a_nan_step_changes_nothing_and_a_good_step_is_untouched():
    x = torch.randn(16, 4)
    model, optimizer = toy()
    guard = NonFiniteGuard(inject={1})
    assert bool(guarded_step(model, optimizer, guard, x)) is True
    before_params, before_state = state_copy(model, optimizer)
    assert not bool(guarded_step(model, optimizer, guard, x, poison=True))       # NaN loss -> NaN grads
    after_params, after_state = state_copy(model, optimizer)
    assert all(torch.equal(before_params[k], after_params[k]) for k in before_params)   # incl. BN statistics
    assert all(torch.equal(before_state[p][k], after_state[p][k]) for p in before_state for k in before_state[p])
    assert guard.read() == {"skipped": 1, "run": 1, "peak": 1, "peak_end": 2, "steps": 2}
    guarded_step(model, optimizer, guard, x)
    assert guard.read()["run"] == 0 and guard.read()["skipped"] == 1

    # an ok step is bit-identical to the same step without the guard
    plain, plain_opt = toy()
    plain_opt.zero_grad()
    plain(x).square().mean().backward()
    plain_opt.step()
    guarded, guarded_opt = toy()
    guarded_step(guarded, guarded_opt, NonFiniteGuard(), x)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), guarded.state_dict().values()))


def test_a_nan_first_step_leaves_the_optimizer_as_if_it_never_stepped():
    x = torch.randn(16, 4)
    model, optimizer = toy()
    guard = NonFiniteGuard(inject={1})
    guarded_step(model, optimizer, guard, x, poison=True)
    assert all(torch.equal(s["momentum_buffer"], torch.zeros_like(s["momentum_buffer"]))
               for s in optimizer.state.values())
    guarded_step(model, optimizer, guard, x)
    fresh, fresh_opt = toy()
    guarded_step(fresh, fresh_opt, NonFiniteGuard(), x)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_gated_ema_update():
    torch.manual_seed(0)
    online, target = nn.Linear(3, 3), nn.Linear(3, 3)
    reference = nn.Linear(3, 3)
    reference.load_state_dict(target.state_dict())
    ema_update(target, online, 0.99, torch.tensor(False))
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), reference.parameters()))
    ema_update(target, online, 0.99, torch.tensor(True))
    ema_update(reference, online, 0.99)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), reference.parameters()))


def test_injection_hook_parses_steps():
    assert injected_steps({INJECT_ENV: "5, 6"}) == {5, 6} and injected_steps({}) == set()


RUN = [*SMALL_PRETRAIN, "trainer.keep_checkpoints=10"]


def test_an_injected_nan_step_is_skipped_counted_and_leaves_the_checkpoint_unchanged(tmp_path, monkeypatch,
                                                                                     capsys):
    monkeypatch.setenv(INJECT_ENV, "3")
    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *RUN, "trainer.max_steps=4",
                 "trainer.checkpoint_every_steps=1"]) == 0
    assert "non-finite steps skipped: 1" in capsys.readouterr().out
    two, three, four = (load(out / f"step{k:07d}.ckpt") for k in (2, 3, 4))
    assert differences(two, three) == []          # online + EMA target + BN stats + optimizer momentum
    assert differences(three, four) != []         # and training went on afterwards
    skipped = read_losses(out, "train/nonfinite_skipped")
    assert [float(skipped[s]) for s in sorted(skipped)] == [0.0, 0.0, 1.0, 1.0]


def test_a_streak_of_nan_steps_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(INJECT_ENV, "4,5,6")
    out = tmp_path / "run"
    code = main(["pretrain", "--out", str(out), *RUN, "trainer.max_steps=8", "trainer.checkpoint_every_steps=3",
                 "trainer.max_nonfinite_steps=3", "trainer.nonfinite_check_every=100"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "3 consecutive optimizer steps had a non-finite loss or gradient" in err
    assert "steps 4-6" in err and f"last good checkpoint: {out / 'last.ckpt'} (step 3)" in err
    assert load(out / "last.ckpt")["global_step"] == 3          # the step-6 save was refused
    assert not (out / "step0000006.ckpt").exists()


@pytest.mark.parametrize("setting", ["trainer.max_nonfinite_steps=0", "trainer.nonfinite_check_every=0"])
def test_bad_guard_settings_are_refused(tmp_path, setting, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "r"), *RUN, setting]) == 2
    assert setting.split("=")[0] in capsys.readouterr().err
