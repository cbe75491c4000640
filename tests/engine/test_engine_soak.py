"""Soak: one run of `mcl pretrain` on an image folder survives SIGTERM, SIGKILL, an image file that turns
corrupt while the run is stopped, and injected NaN losses, and ends bit-identical to a reference run.

What is compared, exactly: the reference is one uninterrupted run with the same config, the same
``MCL_INJECT_NAN_AT_STEPS`` (the same steps are skipped in both) and the corrupted file already corrupt
from its start. The file is chosen (from the sampler's order) among those the faulted run had not read
before it was corrupted, so both runs see the same bytes at every step; then the per-step losses of the
CSV log and every tensor of the final checkpoint (online, EMA target, BN statistics, optimizer state)
must be equal. Steps lost = optimizer steps logged before a SIGKILL minus the step of the checkpoint the
next session resumed from (SIGTERM saves at the stop step: 0 lost).

CI: ``pytest tests/engine/test_engine_soak.py`` (about 20 steps). Long: ``MCL_SOAK_STEPS=2000 pytest -m slow -s
tests/engine/test_engine_soak.py``.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest
from conftest import write_photos
from runs import SMALL_PRETRAIN, differences, load, read_losses, run, start, steps_logged, wait_for_step

from mcl.data.sources import list_images
from mcl.engine.nonfinite import INJECT_ENV
from mcl.engine.resume import EpochSampler

IMAGES, BATCH, SEED = 70, 8, 0


def config(folder: Path, steps: int, every: int) -> list[str]:
    return ["--data", str(folder), *SMALL_PRETRAIN, f"trainer.max_steps={steps}",
            f"trainer.checkpoint_every_steps={every}", f"trainer.seed={SEED}"]


def first_reads(num: int, steps: int) -> dict[int, int]:
    """Item -> the first batch (0-based) that reads it, for a single-process run."""
    sampler, seen, batch = EpochSampler(num, BATCH, SEED), {}, 0
    while batch < steps:
        order = [i for _, i in sampler]
        for b in range(len(order) // BATCH):
            for i in order[b * BATCH:(b + 1) * BATCH]:
                seen.setdefault(i, batch)
            batch += 1
    return seen


def corrupt(path: Path) -> None:
    path.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg any more")


def soak(tmp_path: Path, steps: int, every: int, kills: list[tuple[int, int]], nan_steps: list[int]) -> list[str]:
    """Run the faulted and the reference run; returns the report lines (asserts equality)."""
    folder = tmp_path / "photos"
    write_photos(folder, IMAGES, size=40)
    paths = list_images(folder)
    env = {INJECT_ENV: ",".join(map(str, nan_steps))}
    out, report, lost_total = tmp_path / "run", [], 0
    args = ["pretrain", "--out", str(out), *config(folder, steps, every)]
    corrupted, done = None, 0
    for n, (sig, at) in enumerate(kills):
        at = max(at, done + 2)                       # this session's own progress, not the stale log
        log = tmp_path / f"session{n}.log"
        proc = start(args + (["--resume"] if n else []), env=env, log=log)
        wait_for_step(proc, out, at)
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=600)
        done = steps_logged(out)
        resume_at = load(out / "last.ckpt")["global_step"]
        lost = done - resume_at
        lost_total += lost
        if sig == signal.SIGTERM:
            assert code == 0 and "stopped by SIGTERM" in log.read_text(), log.read_text()[-3000:]
            assert lost == 0
        else:
            assert code == -signal.SIGKILL
        report.append(f"{signal.Signals(sig).name} after step {done}: resumed from step {resume_at}, "
                      f"steps lost {lost}")
        if corrupted is None:                        # an image turns corrupt while the run is stopped
            reads = first_reads(IMAGES, steps)
            corrupted = next(i for i, b in sorted(reads.items(), key=lambda kv: kv[1]) if b >= resume_at + 1)
            corrupt(paths[corrupted])
            report.append(f"corrupted {paths[corrupted].name} at step {resume_at} (first read at step "
                          f"{reads[corrupted] + 1})")
    code, text = run(args + ["--resume"], env=env)
    assert code == 0, text[-3000:]
    logs = text + "".join((tmp_path / f"session{n}.log").read_text() for n in range(len(kills)))
    assert f"skipping unreadable image {paths[corrupted]}" in logs
    skipped = [ln for ln in text.splitlines() if ln.startswith("non-finite steps skipped:")]
    assert skipped and skipped[0].split()[3] == str(len(nan_steps))
    report.append(f"NaN injected at steps {nan_steps}: {skipped[0]}")

    reference = tmp_path / "reference"
    ref_folder = tmp_path / "ref_photos"
    write_photos(ref_folder, IMAGES, size=40)
    corrupt(list_images(ref_folder)[corrupted])
    code, text = run(["pretrain", "--out", str(reference), *config(ref_folder, steps, every)], env=env)
    assert code == 0, text[-3000:]
    assert read_losses(out) == read_losses(reference) and len(read_losses(out)) == steps
    assert differences(load(out / "last.ckpt"), load(reference / "last.ckpt")) == []
    report.append(f"faults injected {len(kills) + 1 + len(nan_steps)}, survived all; {len(kills) + 1} sessions, "
                  f"{steps} steps, steps lost {lost_total}; final losses and checkpoint bit-identical "
                  f"to the reference")
    print("\nSOAK REPORT\n  " + "\n  ".join(report))
    return report


def test_soak_ci(tmp_path):
    report = soak(tmp_path, steps=20, every=4, kills=[(signal.SIGTERM, 3), (signal.SIGKILL, 10)], nan_steps=[6])
    assert any("SIGKILL" in line for line in report)


@pytest.mark.slow
def test_soak_long(tmp_path):
    steps = int(os.environ.get("MCL_SOAK_STEPS", "2000"))
    rng = random.Random(int(os.environ.get("MCL_SOAK_SEED", "1")))
    kills, at = [(signal.SIGTERM, 3)], 3          # early, so that some image is still unread when it is corrupted
    while True:
        at += rng.randint(max(steps // 12, 5), max(steps // 6, 10))
        if at >= steps - 5:
            break
        kills.append((rng.choice([signal.SIGTERM, signal.SIGKILL]), at))
    nan_steps = sorted(rng.sample(range(2, steps), 3))
    soak(tmp_path, steps=steps, every=max(steps // 40, 4), kills=kills, nan_steps=nan_steps)
