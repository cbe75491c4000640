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
    grad_body, grad_fpn, relative, variance, dead = row.split()[1:]
    assert float(grad_body) > 0 and float(grad_fpn) > 0 and float(relative) > 0
    assert float(variance) == 1.0 and dead.startswith("0/")


def test_finetune_step_prints_one_time_per_width():
    run = subprocess.run([sys.executable, "benchmarks/finetune_step.py", "--widths", "64", "32", "--repeats", "1",
                          "--threads", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if "fpn_channels=" in line]
    assert len(lines) == 2 and "(1.00 x width 64)" in lines[0]


def test_finetune_levers_prints_every_lever_against_the_demo_and_every_core_sharing():
    cmd = [sys.executable, "benchmarks/finetune_levers.py", "--repeats", "1", "--steps", "1", "--profile"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    shares = [float(line.split()[-1].rstrip("%")) for line in run.stdout.split("share of self CPU time")[1].split(
        "2. sharing")[0].strip().splitlines()]
    assert len(shares) == 6 and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.01
    levers = [line for line in run.stdout.splitlines() if "x the demo's)" in line]
    assert len(levers) == 5 and "(1.00 x the demo's)" in levers[0]
    sharing = [line for line in run.stdout.splitlines() if "images/s in all" in line]
    assert [line.split(":")[0].strip() for line in sharing] == [
        "1 process(es) x 1 thread(s)", "1 process(es) x 2 thread(s)", "2 process(es) x 1 thread(s)",
        "3 process(es) x 1 thread(s)"]
    assert len(sharing[3].split(":")[1].split(";")[0].split(",")) == 3     # one figure per process


def test_profile_step_splits_the_step_by_phase_and_part(tmp_path):
    """Every phase and model part is timed, and the efficient forward's neck costs less than the faithful one's."""
    import json

    out = tmp_path / "profile.json"
    run = subprocess.run([sys.executable, "benchmarks/profile_step.py", "--device", "cpu", "--tiny", "--warmup", "1",
                          "--steps", "1", "--no-reference", "--json", str(out)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "efficient / faithful: wall" in run.stdout
    results = json.loads(out.read_text())["results"]
    for mode in ("faithful", "efficient"):
        r = results[mode]
        assert set(r["by_phase_ms"]) == {"mcl/forward", "mcl/backward", "mcl/clip", "mcl/optimizer", "mcl/ema"}
        assert all(ms > 0 for ms in r["by_phase_ms"].values())
        assert 0 < sum(r["forward_by_part_ms"].values()) < r["device_ms_per_step"]
        assert {"part/online body", "part/online FPN", "part/online neck", "part/target body",
                "part/predictors"} <= set(r["forward_by_part_ms"])
    assert (results["efficient"]["forward_by_part_ms"]["part/online neck"]
            < results["faithful"]["forward_by_part_ms"]["part/online neck"])


def test_init_health_lists_layers_of_a_file(tmp_path):
    import torch
    import torchvision

    path = tmp_path / "r18.pth"
    state = torchvision.models.resnet18().state_dict()
    state["bn1.running_var"].fill_(4.0)                    # conv1's pre-BN variance 4: unit_variance halves it
    torch.save(state, path)
    run = subprocess.run([sys.executable, "benchmarks/init_health.py", "--fpn-channels", "32", "--layers", str(path),
                          "--rescale-init", "unit_variance"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    row = next(line for line in run.stdout.splitlines() if line.strip().startswith("backbone.body.conv1 "))
    random_norm, file_norm, variance = map(float, row.split()[1:])
    assert random_norm > 0 and variance == 1.0
    assert abs(file_norm - 0.5 * state["conv1.weight"].norm().item()) < 0.01


def test_loss_windows_averages_each_window(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    lines = ["step,train/loss,train/acc"] + [f"{s},{10 - s},0.5" for s in range(6)] + ["6,,"]
    csv_path.write_text("\n".join(lines) + "\n")
    run = subprocess.run([sys.executable, "benchmarks/loss_windows.py", str(csv_path), "--windows", "0", "2", "6"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "0-2: 9.500 (acc 0.500), 2-6: 6.500 (acc 0.500)" in run.stdout
    missing = subprocess.run([sys.executable, "benchmarks/loss_windows.py", str(tmp_path / "nope")], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no logs/metrics.csv" in missing.stderr


def test_gpu_check_copies_only_the_files_this_run_wrote(tmp_path):
    """Part 1 of the GPU check, on the CPU at tiny size: it reports its status and writes the bench files,
    and an earlier run's file of a part that did not run (here part 4's) is never passed off as new."""
    import json
    import os

    results, out = tmp_path / "results", tmp_path / "out"
    results.mkdir()
    out.mkdir()
    (results / "bench-cpu-check-compile.json").write_text("{}")       # left by an earlier run
    env = dict(os.environ, BENCH_DEVICE="cpu", RESULTS=str(results), OUT=str(out), PARTS="1", BENCH_BUDGET="1",
               PYTHON=sys.executable)
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "bench exit status: 0" in run.stdout and "no result file written" not in run.stdout
    assert sorted(p.name for p in out.iterdir()) == ["bench-cpu-check.json", "bench-cpu-check.md"]
    variants = json.loads((out / "bench-cpu-check.json").read_text())["timing"]["variants"]
    assert {"faithful", "efficient", "body floor", "efficient+ckpt"} <= set(variants)
    assert variants["body floor"]["flops_per_step"] < variants["efficient"]["flops_per_step"]


def test_gpu_check_skips_parts_once_its_deadline_has_passed(tmp_path):
    import os

    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, BENCH_DEVICE="cpu", RESULTS=str(tmp_path / "results"), OUT=str(out), PARTS="1 2 3",
               DEADLINE="0", PYTHON=sys.executable)
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for n in (1, 2, 3):
        assert run.stdout.count(f"== part {n} skipped: out of time") == 1
    assert "exit status" not in run.stdout and not any(out.iterdir())

    bad = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True,
                         env={**env, "DEADLINE": "8min"}, timeout=60)
    assert bad.returncode == 2 and bad.stdout == "DEADLINE=8min: must be whole seconds (the default is DEADLINE=470)\n"


def test_gpu_demo_plan_builds_one_fpn_width_in_every_stage():
    import importlib.util

    from mcl.demo import fpn_widths

    spec = importlib.util.spec_from_file_location("gpu_demo", ROOT / "benchmarks" / "gpu_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(fpn_widths(module.GPU_PLAN).values()) == {256}


def test_gpu_demo_runs_its_stages_and_copies_its_results(tmp_path):
    """The GPU demo's wiring on the CPU (the demo's tiny plan): every stage, the table, the copies under
    --results and $OUT; without --tiny and without CUDA it refuses in one line."""
    import json
    import os

    out_dir = tmp_path / "device_out"
    out_dir.mkdir()
    env = {**os.environ, "OUT": str(out_dir)}
    run = subprocess.run([sys.executable, "benchmarks/gpu_demo.py", "--tiny", "--out", str(tmp_path / "demo"),
                          "--results", str(tmp_path / "results")], cwd=ROOT, capture_output=True, text=True,
                         timeout=900, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    summary = json.loads((tmp_path / "results" / "gpu-demo-cpu-tiny.json").read_text())
    assert summary["methods"] == ["mcl", "random", "random_finetuned"] and "probe" in summary["per_seed"]["0"]["mcl"]
    assert {p.name for p in out_dir.iterdir()} == {f"gpu-demo-cpu-tiny.{s}" for s in ("json", "md", "png")}
    assert "seg mIoU FPN" in run.stdout and "AP box" in run.stdout
    refused = subprocess.run([sys.executable, "benchmarks/gpu_demo.py", "--out", str(tmp_path / "x")], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "no CUDA device" in refused.stderr
