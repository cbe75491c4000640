"""Exact resume: a run stopped by a real signal (os.kill on a `python -m mcl.cli pretrain` subprocess) and
continued with --resume logs the same per-step losses and ends with bit-identical parameters, EMA target,
BN statistics and optimizer state as one uninterrupted run of the same length."""

import os
import signal
import stat

import numpy as np
import pytest
import torch
from runs import SMALL_PRETRAIN, differences, load, read_losses, run, start, wait_for_step

STEPS = 10                       # 70 scenes / 8 per step = 8 steps an epoch: the resumed part crosses an epoch
COMMON = [*SMALL_PRETRAIN, f"trainer.max_steps={STEPS}", "trainer.checkpoint_every_steps=4"]


@pytest.fixture(scope="module")
def reference(module_tmp_path):
    out = module_tmp_path / "run"
    code, text = run(["pretrain", "--out", str(out), *COMMON])
    assert code == 0, text[-3000:]
    return out


def interrupt(out, sig, after_step, extra=(), env=None):
    """Start the run, send ``sig`` once ``after_step`` steps are logged, return (exit code, output)."""
    log = out.parent / "first.log"
    proc = start(["pretrain", "--out", str(out), *COMMON, *extra], env=env, log=log)
    wait_for_step(proc, out, after_step)
    os.kill(proc.pid, sig)
    code = proc.wait(timeout=300)
    return code, log.read_text()


def assert_identical(out, reference):
    assert read_losses(out) == read_losses(reference)             # every step, every digit
    assert sorted(read_losses(out)) == list(range(STEPS))
    final, expected = load(out / "last.ckpt"), load(reference / "last.ckpt")
    assert final["global_step"] == expected["global_step"] == STEPS
    assert differences(final, expected) == []
    assert any(k.startswith("model.target.") for k in final["state_dict"])


def test_sigterm_mid_epoch_then_resume_is_bit_identical(tmp_path, reference):
    out = tmp_path / "run"
    code, text = interrupt(out, signal.SIGTERM, after_step=3)
    assert code == 0, text[-3000:]
    line = next(ln for ln in text.splitlines() if "stopped by SIGTERM" in ln)
    stopped = int(line.split("optimizer step ")[1].split(":")[0])
    assert 3 <= stopped < STEPS and stopped % 8 != 0                  # really mid-run and mid-epoch
    assert f"step{stopped:07d}.ckpt" in line and "last.ckpt" in line
    assert "continue with: mcl pretrain --out" in text and text.rstrip().endswith("--resume")
    assert load(out / "last.ckpt")["global_step"] == stopped
    assert sorted(read_losses(out)) == list(range(stopped))           # the log was kept up to the stop

    code, text = run(["pretrain", "--out", str(out), "--resume", *COMMON])
    assert code == 0, text[-3000:]
    assert f"resuming from {out / 'last.ckpt'}" in text
    assert_identical(out, reference)
    kept = sorted(int(p.stem[4:]) for p in out.glob("step*.ckpt"))      # keep_checkpoints=2, the stop's included
    assert kept == sorted({4, stopped, 8})[-2:] and not list(out.glob("*.tmp"))


def test_sigusr1_with_loader_workers_requeues_and_resume_is_bit_identical(tmp_path, reference):
    """Two loader workers (the reference used none) and SLURM's warning signal: the same numbers."""
    fake = tmp_path / "bin"
    fake.mkdir()
    scontrol = fake / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'requeued'}\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    env = {"SLURM_JOB_ID": "4242", "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    out = tmp_path / "run"
    code, text = interrupt(out, signal.SIGUSR1, after_step=2, extra=["data.num_workers=2"], env=env)
    assert code == 0, text[-3000:]
    assert "stopped by SIGUSR1" in text and "requeued SLURM job 4242" in text
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "4242"]

    code, text = run(["pretrain", "--out", str(out), "--resume", *COMMON, "data.num_workers=2"])
    assert code == 0, text[-3000:]
    assert_identical(out, reference)


# ----- the pieces, in process ------------------------------------------------------------------------

def test_sampler_resumes_inside_the_epoch_permutation_and_shards_disjointly():
    from mcl.engine.resume import EpochSampler

    full = EpochSampler(70, 8, seed=3)
    first_two = list(full) + list(full)                         # epochs 0 and 1 from the start
    assert len(first_two) == 2 * 64 and first_two[0][0] == 0 and first_two[-1][0] == 1
    assert sorted(i for _, i in first_two[:64]) != sorted(i for _, i in first_two[64:])   # drop-last differs
    resumed = EpochSampler(70, 8, seed=3, start=5)              # 5 batches trained
    assert list(resumed) + list(resumed) == first_two[5 * 8:]   # the rest of epoch 0, then all of epoch 1
    ranks = [list(EpochSampler(70, 8, seed=3, rank=r, world=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 32
    assert not {i for _, i in ranks[0]} & {i for _, i in ranks[1]}
    assert list(EpochSampler(70, 8, seed=4)) != list(EpochSampler(70, 8, seed=3))


def test_items_depend_on_seed_epoch_and_index_only():
    from mcl.engine.resume import SeededCollate, SeededItems

    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.rand(3) + i

    items = SeededItems(Noise(), seed=1)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = items[(0, 4)][1]
    assert torch.equal(torch.get_rng_state(), before)           # the training process' RNG is untouched
    torch.manual_seed(999)
    items[(0, 5)]
    assert torch.equal(items[(0, 4)][1], a)                     # not the global RNG, not the call order
    assert not torch.equal(items[(1, 4)][1], a)                 # another epoch: other crops
    collate = SeededCollate(lambda xs: torch.stack(xs) + torch.rand(1), seed=1)
    batch = [items[(0, 1)], items[(0, 2)]]
    assert torch.equal(collate(batch), collate(batch))


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    import random

    from mcl.engine.checkpoints import atomic_torch_save
    from mcl.engine.resume import capture_rng, restore_rng

    state = capture_rng()
    expected = (torch.rand(2), np.random.rand(), random.random())
    torch.rand(5), np.random.rand(3), random.random()
    atomic_torch_save({"rng": state}, tmp_path / "s.pt")
    restore_rng(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    again = (torch.rand(2), np.random.rand(), random.random())
    assert torch.equal(again[0], expected[0]) and again[1:] == expected[1:]


def test_csv_log_keeps_earlier_rows_and_drops_recomputed_steps(tmp_path):
    from mcl.engine.csvlog import ResumableCSVLogger

    first = ResumableCSVLogger(tmp_path, name="logs", version="")
    for step in range(5):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.save()
    second = ResumableCSVLogger(tmp_path, name="logs", version="")     # resumed from a checkpoint of step 3
    for step in range(3, 6):
        second.log_metrics({"train/loss": 10.0 + step, "train/new": 1.0}, step=step)
    second.save()
    assert read_losses(tmp_path) == {0: "0.0", 1: "1.0", 2: "2.0", 3: "13.0", 4: "14.0", 5: "15.0"}
