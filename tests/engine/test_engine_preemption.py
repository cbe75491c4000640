"""Graceful stop: the signal handler only flags; with two DDP processes a SIGTERM to one of them stops both at
the same agreed step, with a checkpoint, exit code 0, and a resume that ends bit-identical to a clean run."""

import os
import signal
from pathlib import Path

import pytest
from conftest import TINY_PRETRAIN
from runs import differences, load, read_losses, run, start, wait_for_step

from mcl.engine.preemption import GracefulStop, resume_command, slurm_job_id


def test_handler_flags_the_first_signal_and_a_second_sigint_interrupts():
    stop = GracefulStop()
    before = signal.getsignal(signal.SIGTERM)
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)           # later signals do not replace the first
        assert stop.signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) is before


def test_resume_command_and_slurm_job_id():
    assert resume_command(["pretrain", "--out", "runs/a b"]) == "mcl pretrain --out 'runs/a b' --resume"
    assert resume_command(["pretrain", "--resume"]) == "mcl pretrain --resume"
    assert slurm_job_id({"SLURM_JOB_ID": "7"}) == "7"
    assert slurm_job_id({"SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "2"}) == "5_2"
    assert slurm_job_id({}) is None


# every FPN level must be used under DDP: conftest's 4-level tiny MCL, 2 steps an epoch with 2 processes
DDP = [*TINY_PRETRAIN, "data.synthetic_num=128", "trainer.deterministic=true", "trainer.devices=2",
       "trainer.strategy=ddp", "trainer.max_steps=6", "trainer.checkpoint_every_steps=100",
       "trainer.stop_check_every=2"]


def live_processes(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="ignore"):
                found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("exact", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_sigterm_to_one_ddp_process_stops_both_at_an_agreed_step(tmp_path, exact):
    """CI: the agreed stop. Slow (``-m slow``): also resume and compare with a clean 2-process run."""
    out = tmp_path / "run"
    log = tmp_path / "first.log"
    proc = start(["pretrain", "--out", str(out), *DDP], log=log)
    wait_for_step(proc, out, 2)
    os.kill(proc.pid, signal.SIGTERM)                  # rank 0 only; rank 1 learns it from the all-reduce
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    stopped = load(out / "last.ckpt")["global_step"]
    assert f"stopped by SIGTERM after optimizer step {stopped}:" in text
    assert stopped in (2, 4) and (out / f"step{stopped:07d}.ckpt").is_file()     # a multiple of stop_check_every
    assert live_processes(str(out)) == []              # rank 1 stopped too

    if not exact:
        return
    reference = tmp_path / "reference"
    code, text = run(["pretrain", "--out", str(reference), *DDP])
    assert code == 0, text[-3000:]
    code, text = run(["pretrain", "--out", str(out), "--resume", *DDP])
    assert code == 0, text[-3000:]
    assert read_losses(out) == read_losses(reference)
    assert differences(load(out / "last.ckpt"), load(reference / "last.ckpt")) == []
