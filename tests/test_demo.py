"""`mcl demo`: the table and chart from recorded runs, input checks, and a real tiny demo that is reproducible."""

import json
import subprocess
import sys

import pytest

from mcl import demo
from mcl.demo import (
    PLANS,
    DemoPlan,
    aggregate,
    default_jobs,
    fpn_widths,
    paired_gains,
    parse_methods,
    plot,
    render_table,
    run_demo,
    seeds_from,
)
from mcl.errors import UserError


def _record(ap: float, seconds: float = 60.0, pretrain: bool = True) -> dict:
    runs = {"finetune": {"seconds": seconds, "results": {
        "bbox": {"AP": ap, "AP50": 2 * ap, "AP75": ap, "APs": None, "APm": ap, "APl": ap},
        "segm": {"AP": ap / 2, "AP50": ap, "AP75": ap, "APs": None, "APm": ap, "APl": ap}}}}
    if pretrain:
        runs["pretrain"] = {"seconds": 120.0}
    return runs


def _summary(per_seed: dict, seeds: list[int]) -> dict:
    methods = ["mcl", "random"]
    return {"plan": {"name": "quick", "val": 32, "train": 64, "finetune_iterations": 300, "pretrain_steps": 80,
                     "unlabeled": 512}, "seeds": seeds, "methods": methods,
            "aggregate": aggregate(per_seed, methods)}


def test_aggregate_gives_mean_and_sample_std_in_ap_points():
    per_seed = {"0": {"mcl": _record(0.10), "random": _record(0.02, pretrain=False)},
                "1": {"mcl": _record(0.20), "random": _record(0.04, pretrain=False)}}
    agg = aggregate(per_seed, ["mcl", "random"])
    assert agg["mcl"]["bbox/AP"]["mean"] == pytest.approx(15.0)
    assert agg["mcl"]["bbox/AP"]["std"] == pytest.approx(7.0710678)          # sample std of 10 and 20
    assert agg["random"]["segm/AP50"]["mean"] == pytest.approx(3.0)
    assert agg["mcl"]["bbox/APs"] == {"mean": None, "std": None, "n": 0}      # no small objects: "-"
    assert "pretrain_s" in agg["mcl"] and "pretrain_s" not in agg["random"]


def test_paired_gains_count_wins_within_each_seed_and_give_the_sign_test():
    per_seed = {"0": {"mcl": _record(0.10), "random": _record(0.08, pretrain=False)},   # +2.0 box
                "1": {"mcl": _record(0.30), "random": _record(0.29, pretrain=False)},   # +1.0 box
                "2": {"mcl": _record(0.05), "random": _record(0.06, pretrain=False)}}   # -1.0 box
    gains = paired_gains(per_seed, ["mcl", "random"])
    box = gains["mcl"]["bbox/AP"]
    assert box["diffs"] == pytest.approx([2.0, 1.0, -1.0])
    assert box["mean"] == pytest.approx(2.0 / 3) and box["wins"] == 2 and box["n"] == 3
    assert box["sign_test_p"] == pytest.approx(4 / 8)                         # P(X >= 2), X ~ Bin(3, 1/2)
    assert box["t_test_p"] == pytest.approx(0.2643, abs=5e-4)                 # t = 0.756 on 2 df
    assert gains["mcl"]["segm/AP"]["mean"] == pytest.approx(1.0 / 3)           # mask AP is half the box AP here
    assert paired_gains(per_seed, ["mcl"]) == {}                              # no random init: nothing to pair
    five_wins = {str(s): {"mcl": _record(0.2), "random": _record(0.1, pretrain=False)} for s in range(5)}
    assert paired_gains(five_wins, ["mcl", "random"])["mcl"]["bbox/AP"]["sign_test_p"] == pytest.approx(1 / 32)
    summary = {**_summary(per_seed, [0, 1, 2]), "paired_vs_random": gains}
    line = next(x for x in render_table(summary).splitlines() if x.startswith("MCL") and "AP box" in x)
    assert "+0.7 ± 1.5, wins 2/3, p = 0.50 (sign), 0.264 (t)" in line and line.rstrip().endswith("inside the noise")


def test_table_and_chart(tmp_path):
    per_seed = {"0": {"mcl": _record(0.10), "random": _record(0.02, pretrain=False)},
                "1": {"mcl": _record(0.20), "random": _record(0.04, pretrain=False)}}
    text = render_table(_summary(per_seed, [0, 1]))
    mcl_row = next(line for line in text.splitlines() if line.startswith("MCL"))
    assert "15.0 ± 7.1" in mcl_row and "2.0 ± 0.0" in mcl_row                # AP box; pretrain minutes
    assert "mean ± std over seeds [0, 1]" in text
    random_row = next(line for line in text.splitlines() if line.startswith("random init"))
    assert " - " in random_row                                               # no pretraining time
    png = plot(_summary(per_seed, [0, 1]), tmp_path / "chart.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_methods_and_seeds_are_refused():
    assert parse_methods("mcl, random") == ("mcl", "random")
    with pytest.raises(UserError, match="choose from mcl, moco, moco_time, supervised, random"):
        parse_methods("mcl,byol")
    with pytest.raises(UserError, match="at least 1"):
        seeds_from(0, 0)
    assert seeds_from(3, 5) == [5, 6, 7]


def test_stages_run_side_by_side_and_each_fine_tune_follows_its_own_pretraining(tmp_path, monkeypatch):
    """Scheduling with the stages stubbed: random init's fine-tune starts at once, a pretrained one only after
    its own pretraining, with at most ``jobs`` stages running; a failing stage stops the rest."""
    import threading
    import time

    import mcl.demo as demo

    events, running, peak, lock = [], [0], [0], threading.Lock()

    def stage(name, seconds, result):
        with lock:
            events.append(("start", name))
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(seconds)
        with lock:
            events.append(("end", name))
            running[0] -= 1
        if name == "pretrain_broken":
            raise UserError("stage failed")
        return result

    monkeypatch.setattr(demo, "labeled_scenes", lambda *a: {})
    monkeypatch.setattr(demo, "pretrain", lambda out, method, plan, seed, say, threads:
                        stage(f"pretrain_{method}", {"mcl": 0.3}.get(method, 0.1), {"checkpoint": method}))
    monkeypatch.setattr(demo, "finetune", lambda out, init, method, plan, seed, scenes, say, threads:
                        stage(f"finetune_{method}", 0.1, {"init": init}))
    monkeypatch.setattr(demo, "probe", lambda out, init, method, plan, seed, scenes, say, threads:
                        stage(f"probe_{method}", 0.05, {"init": init}))
    runs = demo.run_seed(tmp_path, PLANS["tiny"], 0, ("mcl", "moco", "random"), lambda _: None, jobs=2)
    assert peak[0] == 2 and list(runs) == ["mcl", "moco", "random", demo.CONTROL]
    control = runs.pop(demo.CONTROL)
    assert {m: r["finetune"]["init"] for m, r in runs.items()} == {"mcl": "mcl", "moco": "moco", "random": "random"}
    assert {m: r["probe"]["init"] for m, r in runs.items()} == {"mcl": "mcl", "moco": "moco", "random": "random"}
    # the positive control probes random init's fine-tuned detector, once that fine-tune has finished
    assert set(control) == {"probe"}
    assert control["probe"]["init"] == str(tmp_path / "seed0" / "finetune_random" / "detector.pt")
    order = [f"{kind}:{name}" for kind, name in events]
    assert order.index("end:finetune_random") < order.index(f"start:probe_{demo.CONTROL}")
    for method in ("mcl", "moco"):
        assert order.index(f"end:pretrain_{method}") < order.index(f"start:finetune_{method}")
        assert order.index(f"end:pretrain_{method}") < order.index(f"start:probe_{method}")
    assert order.index("start:finetune_random") < order.index("end:pretrain_mcl")   # did not wait for MCL

    events.clear()
    monkeypatch.setattr(demo, "METHOD_LABELS", dict(demo.METHOD_LABELS, broken="broken"))
    with pytest.raises(UserError, match="stage failed"):
        demo.run_seed(tmp_path, PLANS["tiny"], 0, ("broken",), lambda _: None, jobs=2)
    assert ("start", "finetune_broken") not in events and ("start", "probe_broken") not in events


def _demo(out, *extra):
    return subprocess.run([sys.executable, "-m", "mcl.cli", "demo", "--tiny", "--methods", "mcl,random",
                           "--out", str(out), *extra], capture_output=True, text=True, timeout=900)


def test_tiny_demo_runs_every_stage_reuses_them_and_repeats_exactly(tmp_path):
    """Two fresh runs with the same seed give the same figures; a rerun in the same folder reuses its stages."""
    first = _demo(tmp_path / "a")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    summary = json.loads((tmp_path / "a" / "results.json").read_text())
    assert summary["methods"] == ["mcl", "random", "random_finetuned"] and summary["seeds"] == [0]
    assert summary["jobs"] == default_jobs() and set(summary["seed_elapsed_s"]) == {"0"}
    assert (tmp_path / "a" / "results.png").stat().st_size > 0
    assert "AP box" in (tmp_path / "a" / "results.md").read_text()
    runs = summary["per_seed"]["0"]
    assert runs["mcl"]["pretrain"]["loss_first"] is not None
    assert "reusing" not in first.stdout

    again = _demo(tmp_path / "a")
    # pretrain + 2 probes + 2 fine-tunes + the control's probe
    assert again.returncode == 0 and again.stdout.count("reusing") == 6
    assert summary["stages_reused"] == 0
    assert json.loads((tmp_path / "a" / "results.json").read_text())["stages_reused"] == 6
    assert summary["methods"][-1] == "random_finetuned" and "finetune" not in runs["random_finetuned"]
    assert "control: random init fine-tuned" in (tmp_path / "a" / "results.md").read_text()
    for method in ("mcl", "random"):
        probe = runs[method]["probe"]["results"]
        assert set(probe["segmentation"]) == {"fpn", "c5"} and "AP" in probe["detection"]["bbox"]
    assert "seg mIoU FPN" in (tmp_path / "a" / "results.md").read_text()
    noise = summary["heldout_noise"]["0"]
    assert set(noise["ap_se"]) == {"mcl", "random"} and set(noise["gain_se"]) == {"mcl"}
    assert noise["images"] == PLANS["tiny"].val and noise["resamples"] == demo.HELDOUT_RESAMPLES

    second = _demo(tmp_path / "b")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    other = json.loads((tmp_path / "b" / "results.json").read_text())["per_seed"]["0"]
    assert other["mcl"]["pretrain"]["loss_last"] == runs["mcl"]["pretrain"]["loss_last"]
    for method in ("mcl", "random"):
        assert other[method]["probe"]["results"]["segmentation"] == runs[method]["probe"]["results"]["segmentation"]
        assert other[method]["finetune"]["results"] == runs[method]["finetune"]["results"]
        assert other[method]["finetune"]["final_loss"] == runs[method]["finetune"]["final_loss"]


@pytest.mark.parametrize("name", sorted(PLANS))
def test_every_stage_of_a_plan_builds_one_fpn_width(name):
    assert set(fpn_widths(PLANS[name]).values()) == {64}


def test_a_plan_whose_stages_disagree_on_the_fpn_width_is_refused_before_any_stage(tmp_path):
    plan = DemoPlan("mixed", 1, 1, pretrain_overrides=("model.fpn_channels=256",),
                    finetune_overrides=("model.fpn_channels=256",), probe_args=("--fpn-channels", "128"))
    assert fpn_widths(plan) == {"pretrain": 256, "finetune": 256, "probe": 128}
    with pytest.raises(UserError, match="different widths"):
        run_demo(tmp_path / "out", plan, [0])
    assert not (tmp_path / "out").exists()


def test_plans_are_ordered_by_size():
    assert PLANS["tiny"].pretrain_steps < PLANS["quick"].pretrain_steps < PLANS["full"].pretrain_steps
    assert PLANS["quick"].finetune_iterations < PLANS["full"].finetune_iterations


def test_a_stage_is_reused_only_with_the_same_arguments(tmp_path):
    """A finished stage whose command changed (e.g. a new fine-tuning override) runs again instead of being reused."""
    import mcl.demo as demo

    args = ["--config", "finetune_cpu_smoke", "model.rescale_init=unit_variance"]
    (tmp_path / "stage.json").write_text(json.dumps({"seconds": 1.0, "args": args}))
    assert demo._stage_record(tmp_path, list(args))["seconds"] == 1.0
    assert demo._stage_record(tmp_path, args[:2]) is None
    (tmp_path / "stage.json").write_text(json.dumps({"seconds": 1.0}))      # written before args were recorded
    assert demo._stage_record(tmp_path, args) is None
    assert demo._stage_record(tmp_path / "missing", args) is None


def test_a_stage_is_reused_whether_its_paths_were_spelled_relative_or_absolute(tmp_path, monkeypatch):
    """``--out runs/demo`` and ``--out /abs/runs/demo`` name the same stage: it is reused, not run again."""
    import mcl.demo as demo

    folder = tmp_path / "runs" / "seed0" / "probe_mcl"
    folder.mkdir(parents=True)
    (tmp_path / "runs" / "last.ckpt").write_text("")
    absolute = ["--init", f"mcl={tmp_path}/runs/last.ckpt", "--out", str(folder), "model.fpn_channels=64"]
    (folder / "stage.json").write_text(json.dumps({"seconds": 1.0, "args": absolute}))
    monkeypatch.chdir(tmp_path)
    relative = ["--init", "mcl=runs/last.ckpt", "--out", "runs/seed0/probe_mcl", "model.fpn_channels=64"]
    assert demo._stage_record(folder, relative)["seconds"] == 1.0
    assert demo._stage_record(folder, [*relative[:-1], "model.fpn_channels=128"]) is None
    assert demo._stage_record(folder, ["--init", "mcl=runs/other.ckpt", *relative[2:]]) is None


def test_a_finished_stage_whose_arguments_changed_is_kept_aside_not_deleted(tmp_path, monkeypatch):
    """Running a stage again with other arguments keeps the finished one (checkpoints, figures, log) as
    ``<stage>.replaced-N``; an interrupted one (no stage.json) is simply removed."""
    import mcl.demo as demo

    folder = tmp_path / "seed0" / "finetune_random"
    folder.mkdir(parents=True)
    (folder / "detector.pt").write_text("weights")
    (folder / "stage.json").write_text(json.dumps({"seconds": 5.0, "args": ["old"]}))
    (tmp_path / "seed0" / "finetune_random.log").write_text("old log")

    def run(cmd, log_path, say, threads):
        folder.mkdir(parents=True)
        log_path.write_text("new log")
        return 2.0

    monkeypatch.setattr(demo, "_run", run)
    said = []
    record = demo._stage(tmp_path, 0, "finetune_random", "finetune", ["new"], said.append, None,
                         lambda f, s: {"seconds": s})
    kept = tmp_path / "seed0" / "finetune_random.replaced-1"
    assert record == {"seconds": 2.0, "args": ["new"]}
    assert (kept / "detector.pt").read_text() == "weights" and (kept / "stage.log").read_text() == "old log"
    assert any(str(kept) in line for line in said)
    (folder / "stage.json").unlink()                                   # interrupted: removed, nothing kept
    (folder / "partial.ckpt").write_text("")
    demo._stage(tmp_path, 0, "finetune_random", "finetune", ["new"], said.append, None, lambda f, s: {"seconds": s})
    assert not (folder / "partial.ckpt").exists()
    assert not (tmp_path / "seed0" / "finetune_random.replaced-2").exists()


def test_a_reused_stage_rereads_its_figures_from_its_files(tmp_path):
    """A stage recorded before the demo read some figure (here: the any-class box AP) gets it from its files."""
    import mcl.demo as demo

    folder = tmp_path / "seed0" / "finetune_random"
    (folder / "eval").mkdir(parents=True)
    (folder / "eval" / "results.json").write_text(json.dumps({"bbox": {"AP": 0.1}, "bbox_any_class": {"AP": 0.3}}))
    (folder / "stage.json").write_text(json.dumps({"args": ["a"], "seconds": 5.0, "results": {"bbox": {"AP": 0.1}}}))

    def record_of(folder, seconds):
        results = json.loads((folder / "eval" / "results.json").read_text())
        return {"seconds": seconds, "results": results}

    record = demo._stage(tmp_path, 0, "finetune_random", "finetune", ["a"], lambda _: None, None, record_of)
    assert record["reused"] and record["seconds"] == 5.0 and record["results"]["bbox_any_class"]["AP"] == 0.3
    (folder / "eval" / "results.json").unlink()                      # files gone: the saved record is kept
    record = demo._stage(tmp_path, 0, "finetune_random", "finetune", ["a"], lambda _: None, None, record_of)
    assert record["reused"] and record["results"] == {"bbox": {"AP": 0.1}}


def test_equal_time_moco_follows_both_pretrainings_with_steps_scaled_by_their_times(tmp_path, monkeypatch):
    """moco_time starts only after MCL's and MoCo v2's pretraining, with steps x t_MCL / t_MoCo steps."""
    import mcl.demo as demo

    started = []

    def pretrain(out, method, plan, seed, say, threads, steps=None):
        started.append((method, steps))
        seconds = {"mcl": 90.0, "moco": 30.0}.get(method, 1.0)
        return {"checkpoint": method, "seconds": seconds, "steps": steps or plan.pretrain_steps}

    monkeypatch.setattr(demo, "labeled_scenes", lambda *a: {})
    monkeypatch.setattr(demo, "pretrain", pretrain)
    monkeypatch.setattr(demo, "finetune", lambda out, init, method, plan, seed, scenes, say, threads:
                        {"init": init, "seconds": 1.0})
    monkeypatch.setattr(demo, "probe", lambda out, init, method, plan, seed, scenes, say, threads:
                        {"init": init, "seconds": 1.0})
    methods = demo.parse_methods("mcl,moco,moco_time,random")
    runs = demo.run_seed(tmp_path, PLANS["tiny"], 0, methods, lambda _: None, jobs=2)
    assert started[-1] == ("moco_time", 3 * PLANS["tiny"].pretrain_steps)          # 90 s / 30 s
    assert {m for m, _ in started[:2]} == {"mcl", "moco"}
    assert runs["moco_time"]["finetune"]["init"] == "moco_time"
    assert set(runs["moco_time"]) == {"pretrain", "probe", "finetune"}
    assert demo.equal_time_steps(300, 10.0, 40.0) == 75 and demo.equal_time_steps(1, 1.0, 100.0) == 1
    with pytest.raises(UserError, match="add mcl and moco"):
        demo.parse_methods("mcl,moco_time")


def test_probe_figures_are_aggregated_paired_and_judged():
    """Probe figures (fractions in probe.json) become percent, pair by seed, and get a verdict in plain words."""
    from mcl.demo import verdict

    def with_probe(ap, knn, pretrain=True):
        runs = _record(ap, pretrain=pretrain)
        runs["probe"] = {"results": {"retrieval": {"fpn": {"knn_acc": knn}}}}
        return runs

    per_seed = {str(s): {"mcl": with_probe(0.1, 0.60 + 0.01 * s), "random": with_probe(0.1, 0.20, False)}
                for s in range(3)}
    agg = aggregate(per_seed, ["mcl", "random"])
    assert agg["mcl"]["probe/roi_knn_fpn"]["mean"] == pytest.approx(61.0)
    assert agg["mcl"]["probe/seg_miou_fpn"] == {"mean": None, "std": None, "n": 0}
    gains = paired_gains(per_seed, ["mcl", "random"])["mcl"]
    assert gains["probe/roi_knn_fpn"]["diffs"] == pytest.approx([40.0, 41.0, 42.0])
    assert verdict(gains["probe/roi_knn_fpn"]) == "better, outside the noise"
    assert "probe/seg_miou_fpn" not in gains                                   # no figure on either side: no row
    assert verdict(gains["bbox/AP"]) == "inside the noise"                  # equal APs
    assert verdict({"diffs": [-3.0, -2.5, -3.5], "t_test_p": 1.0}) == "worse, outside the noise"
    assert verdict({"diffs": [1.0]}) == "one seed: no spread to judge"
    summary = {**_summary(per_seed, [0, 1, 2]), "paired_vs_random": paired_gains(per_seed, ["mcl", "random"])}
    text = render_table(summary)
    assert "RoI kNN FPN" in text and "61.0 ± 1.0" in text and "+41.0 ± 1.0, wins 3/3" in text


def test_the_quick_plan_holds_the_fine_tuning_lr_until_90_percent_and_the_full_plan_keeps_the_paper_steps():
    """The quick plan's one late lr step (x0.1 at 2,700 of 3,000 iterations) resolves from its own overrides, on the
    recipe the demo fine-tunes with; the full plan keeps finetune_cpu_smoke's x0.1 at 2/3 and 8/9."""
    from mcl.config import load_config, resolve_config_path
    from mcl.transfer.finetune_config import FinetuneConfig, resolve_schedule

    def milestones(plan: DemoPlan) -> tuple[int, ...]:
        overrides = [*plan.finetune_overrides, f"schedule.iterations_1x={plan.finetune_iterations}",
                     "schedule.reference_batch=2"]
        cfg = load_config(FinetuneConfig, resolve_config_path("finetune_cpu_smoke"), overrides)
        return resolve_schedule(cfg.schedule, 2).milestones

    assert milestones(PLANS["quick"]) == (2700,)
    assert milestones(PLANS["full"]) == (4000, 5333)


def test_random_inits_fine_tune_starts_first_then_the_pretrainings_then_what_they_unlock(tmp_path, monkeypatch):
    """One worker runs the stages in the order they are queued: random init's fine-tune (waits on nothing) first,
    then each pretraining, each followed by its init's probe and fine-tune once it has finished, and the control
    after random's fine-tune."""
    import mcl.demo as demo

    order = []

    def stage(kind):
        def run(out, init, method, plan, seed, scenes, say, threads):
            order.append((kind, method))
            return {"init": init, "seconds": 1.0, "detector": "d"}
        return run

    def pretrain(out, method, plan, seed, say, threads, steps=None):
        order.append(("pretrain", method))
        return {"checkpoint": method, "seconds": 1.0, "steps": plan.pretrain_steps}

    monkeypatch.setattr(demo, "labeled_scenes", lambda *a: {})
    monkeypatch.setattr(demo, "pretrain", pretrain)
    monkeypatch.setattr(demo, "finetune", stage("finetune"))
    monkeypatch.setattr(demo, "probe", stage("probe"))
    demo.run_seed(tmp_path, PLANS["tiny"], 0, ("mcl", "moco", "random"), lambda _: None, jobs=1)
    assert order[:4] == [("finetune", "random"), ("pretrain", "mcl"), ("pretrain", "moco"), ("probe", "random")]
    assert order.index(("finetune", "mcl")) > order.index(("pretrain", "mcl"))
    assert order.index(("probe", demo.CONTROL)) > 0 and len(order) == len(set(order)) == 9


def test_a_worker_the_seed_cannot_use_starts_the_next_seeds_stages(tmp_path, monkeypatch):
    """Several seeds share one scheduler: with 2 workers, seed 1's stages start while seed 0's last fine-tune still
    runs (instead of a worker idling until seed 0 ends); with 1 worker, every stage of seed 0 runs before seed 1's."""
    import threading
    import time

    import mcl.demo as demo

    events, lock = [], threading.Lock()

    def stage(kind, method, seed, result):
        with lock:
            events.append(("start", seed, f"{kind}_{method}"))
        time.sleep({"finetune_mcl": 0.4, "pretrain_mcl": 0.1}.get(f"{kind}_{method}", 0.02))
        with lock:
            events.append(("end", seed, f"{kind}_{method}"))
        return result

    monkeypatch.setattr(demo, "labeled_scenes", lambda *a: {})
    monkeypatch.setattr(demo, "pretrain", lambda out, method, plan, seed, say, threads:
                        stage("pretrain", method, seed, {"checkpoint": method, "seconds": 1.0}))
    monkeypatch.setattr(demo, "finetune", lambda out, init, method, plan, seed, scenes, say, threads:
                        stage("finetune", method, seed, {"init": init, "seconds": 1.0}))
    monkeypatch.setattr(demo, "probe", lambda out, init, method, plan, seed, scenes, say, threads:
                        stage("probe", method, seed, {"init": init, "seconds": 1.0}))

    def run(jobs):
        events.clear()
        graphs = [demo.SeedStages(tmp_path, PLANS["tiny"], seed, ("mcl", "moco", "random"), lambda _: None, None)
                  for seed in (0, 1)]
        seconds = demo.run_stages(graphs, jobs)
        assert set(seconds) == {0, 1} and all(s > 0 for s in seconds.values())
        assert [len(g.runs) for g in graphs] == [4, 4]          # mcl, moco, random and the control, in both seeds
        return ([i for i, (kind, seed, _) in enumerate(events) if kind == "start" and seed == 1][0],
                max(i for i, (kind, seed, _) in enumerate(events) if kind == "end" and seed == 0))

    first_start_of_1, last_end_of_0 = run(jobs=2)
    assert first_start_of_1 < last_end_of_0 and events[last_end_of_0][2] == "finetune_mcl"
    first_start_of_1, last_end_of_0 = run(jobs=1)
    assert first_start_of_1 > last_end_of_0


def _heldout_seed(tmp_path, detections: dict) -> "demo.SeedStages":
    """A finished seed 0 in ``tmp_path``: 4 held-out scenes with one object each and ``detections[method]`` (image
    ids whose object each method found) as its fine-tune's predictions."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in range(1, 5)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [8, 8, 20, 20], "area": 400, "iscrowd": 0}
            for i in range(1, 5)]
    scenes = tmp_path / "seed0" / "scenes"
    scenes.mkdir(parents=True)
    (scenes / "val.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                 "categories": [{"id": 1, "name": "square"}]}))
    graph = demo.SeedStages(tmp_path, PLANS["tiny"], 0, tuple(detections), lambda _: None, None)
    graph._scenes = {"val_json": str(scenes / "val.json"), "val_images": str(scenes)}
    for method, found in detections.items():
        folder = tmp_path / "seed0" / f"finetune_{method}" / "eval"
        folder.mkdir(parents=True)
        (folder / "predictions_bbox.json").write_text(json.dumps(
            [{"image_id": i, "category_id": 1, "bbox": [8, 8, 20, 20], "score": 0.9} for i in found]))
        graph.runs[method]["finetune"] = {"seconds": 1.0}
    return graph


def test_the_held_out_error_of_a_gain_comes_from_one_bootstrap_of_the_seeds_held_out_scenes(tmp_path):
    graph = _heldout_seed(tmp_path, {"mcl": [1, 2], "moco": [1, 2], "random": [1]})
    noise = demo.heldout_noise(graph, ("mcl", "moco", "random"), resamples=300)
    # MCL and MoCo v2 found the same objects: the draws move both APs, never their difference from each other, so
    # their gains over random init vary alike on every draw; random init finds fewer, so the gains do vary
    assert noise["gain_se"]["mcl"] == noise["gain_se"]["moco"] > 5
    assert noise["ap_se"]["mcl"] > 5 and set(noise["gain_se"]) == {"mcl", "moco"}
    assert noise["images"] == 4 and noise["resamples"] == 300
    assert demo.heldout_noise(graph, ("supervised",)) == {"ap_se": {}, "gain_se": {}}   # no detections: nothing


def test_the_held_out_table_sets_each_seeds_error_beside_the_spread_over_seeds():
    per_seed = {"0": {"mcl": _record(0.10), "random": _record(0.08, pretrain=False)},   # +2.0
                "1": {"mcl": _record(0.30), "random": _record(0.26, pretrain=False)}}   # +4.0
    noise = {"0": {"ap_se": {}, "gain_se": {"mcl": 0.6}, "images": 128, "resamples": 200},
             "1": {"ap_se": {}, "gain_se": {"mcl": 0.8}, "images": 128, "resamples": 200}}
    summary = {**_summary(per_seed, [0, 1]), "per_seed": per_seed, "heldout_noise": noise}
    row = next(x for x in demo.render_heldout(summary).splitlines() if x.startswith("MCL"))
    assert "+2.0 ± 0.6 (seed 0), +4.0 ± 0.8 (seed 1)" in row
    assert row.split()[-2:] == ["0.7", "1.4"]          # rms of 0.6 and 0.8; sample std of 2.0 and 4.0
    one = {**_summary({"0": per_seed["0"]}, [0]), "per_seed": per_seed, "heldout_noise": {"0": noise["0"]}}
    assert "one seed: not measured" in render_table(one)
