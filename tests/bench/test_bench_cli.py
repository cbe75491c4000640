"""`mcl bench --tiny` end to end: runs in seconds, prints the tables, writes the JSON and markdown."""

import json

import pytest
import torch

from mcl.bench import report
from mcl.bench.timing import MemoryProbe, Step, ratio, time_interleaved
from mcl.cli import main


def test_tiny_bench_writes_json_with_the_expected_keys(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--tiny", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for title in ("FLOPs per training step", "Step time", "Data pipeline per CPU core", "waits for data"):
        assert title in printed
    results = json.loads(out.read_text())
    assert {"schema", "command", "machine", "settings", "flops", "timing", "data", "elapsed_s"} <= set(results)
    assert results["machine"]["device"] == "cpu" and results["machine"]["cpu_count"] >= 1

    setting = results["flops"]["settings"]["tiny"]
    for mode in ("faithful", "efficient"):
        c = setting["modes"][mode]
        assert {"total_flops", "forward_flops", "backward_flops", "flops_per_unique_image", "parts"} <= set(c)
        assert c["total_flops"] == c["forward_flops"] + c["backward_flops"] > 0
        assert {"backbone", "fpn", "neck", "predictors"} <= set(c["parts"])
    assert 0 < setting["efficient_over_faithful"] < 1
    assert {"supervised", "moco_v2"} <= set(results["flops"]["references"])

    timing = results["timing"]
    assert {"faithful", "efficient"} <= set(timing["variants"])
    for name in ("faithful", "efficient"):
        v = timing["variants"][name]
        assert v["repeats"] >= 1 and v["median_s"] > 0 and v["images_per_s"] > 0
        assert v["peak_bytes_max"] is not None
    assert timing["ratios"]["efficient_over_faithful"]["of_medians"] > 0
    assert timing["flop_ratio"] == pytest.approx(setting["efficient_over_faithful"])

    data = results["data"]
    rates = data["rates"]["32"]
    for key in ("views", "decode", "jpeg", "synthetic"):
        assert rates[key]["images_per_s"] > 0
    loader = data["loader"]
    assert loader["steps"] == 2 and 0 <= loader["wait_fraction"] <= 1

    md = out.with_suffix(".md").read_text()
    assert "| setting | mode |" in md and "efficient / faithful FLOPs" in md


def test_skip_flags_leave_sections_out(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "--tiny", "--skip-timing", "--skip-data", "--modes", "efficient", "--out", str(out),
                 "--quiet"]) == 0
    results = json.loads(out.read_text())
    assert "timing" not in results and "data" not in results
    assert set(results["flops"]["settings"]["tiny"]["modes"]) == {"efficient"}


def test_bad_mode_is_one_line_error(tmp_path, capsys):
    assert main(["bench", "--tiny", "--modes", "fast", "--out", str(tmp_path / "x.json")]) == 2
    assert "--modes" in capsys.readouterr().err


def test_interleaved_timer_counts_repeats_and_ratios():
    calls = []
    steps = [Step("a", lambda: calls.append("a"), 4), Step("b", lambda: calls.append("b"), 4)]
    res = time_interleaved(steps, torch.device("cpu"), warmup=1, repeats=3, log=lambda m: None)
    assert calls == ["a", "b"] * 4                     # warm-up round, then 3 interleaved rounds
    assert res["a"]["repeats"] == res["b"]["repeats"] == 3
    assert ratio(res, "a", "b")["pairs"] == 3


def test_failing_variant_is_reported_not_fatal():
    def boom():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
    steps = [Step("ok", lambda: None, 1), Step("big", boom, 1)]
    res = time_interleaved(steps, torch.device("cpu"), warmup=1, repeats=2, memory=False, log=lambda m: None)
    assert res["ok"]["repeats"] == 2 and "out of memory" in res["big"]["error"]


def test_cpu_memory_probe_sees_a_large_allocation():
    probe = MemoryProbe(torch.device("cpu"))
    with probe:
        x = torch.ones(64 * 2**20 // 4)              # 64 MiB, touched
        del x
    assert probe.peak_bytes >= (48 * 2**20 if probe.method == "VmHWM" else 0)


def test_default_out_path_names_the_device():
    assert report.default_out_path("NVIDIA H100 80GB HBM3", "host", True).name == "bench-NVIDIA-H100-80GB-HBM3.json"
    assert report.default_out_path("CPU (x)", "my host", False).name == "bench-my-host.json"
