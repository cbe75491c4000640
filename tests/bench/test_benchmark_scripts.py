"""The CPU benchmark scripts run and print what they promise (their figures are in docs, not asserted)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_random_init_row_is_the_healthy_reference():
    run = subprocess.run([sys.executable, "benchmarks/init_health.py", "--fpn-channels", "32"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    row = next(line for line in run.stdout.splitlines() if line.startswith("random"))
    grad_body, grad_fpn, variance, dead = row.split()[1:]
    assert float(grad_body) > 0 and float(grad_fpn) > 0
    assert float(variance) == 1.0 and dead.startswith("0/")


def test_finetune_step_prints_one_time_per_width():
    run = subprocess.run([sys.executable, "benchmarks/finetune_step.py", "--widths", "64", "32", "--repeats", "1",
                          "--threads", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if "fpn_channels=" in line]
    assert len(lines) == 2 and "(1.00 x width 64)" in lines[0]
