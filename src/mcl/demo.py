"""`mcl demo`: the paper's comparison (MCL vs MoCo v2 vs random init, transferred to Mask R-CNN) at toy scale.

For each seed ``s``:

1. **Pretraining data**: ``plan.unlabeled`` embedded synthetic scenes of seed ``1000 + s`` (no labels used).
2. **Pretraining, equal budget**: MCL (recipe ``cpu_smoke`` with ``plan.pretrain_overrides``: FPN 64 wide,
   MoCo's SGD) and MoCo v2 (``moco_cpu_smoke`` with a 64-key queue) each run ``plan.pretrain_steps`` steps of
   32 images (equal epochs: the same unique images seen, the same number of optimizer steps, the same optimizer and lr);
   the wall-clock of each is recorded beside it (MCL's step encodes 8 crops per image, MoCo's 2, so MCL
   costs more per epoch; the table says how much). Opt-in (``--methods mcl,moco,moco_time,random``): MoCo v2
   again for **equal wall-clock**, ``steps x t_MCL / t_MoCo`` steps from the two measured pretraining times.
3. **Probes** (``mcl probe``): each init's frozen features on the labelled scenes below: linear segmentation
   (mIoU), RoI kNN / linear classification of the objects, and (not in the quick plan) frozen-backbone detection
   (box AP after ``plan.probe_det_iterations`` iterations of the heads alone).
4. **Transfer**: the same Mask R-CNN R18-FPN recipe (``finetune_cpu_smoke`` with ``plan.finetune_iterations``
   iterations, lr 0.01 (the quick plan: held until 90% of them, then x0.1 once), scene-sized anchors, FPN and
   heads 64 wide, loaded convs rescaled to pre-BN variance 1: ``model.rescale_init=unit_variance``) from each
   pretrained checkpoint and from random init, on labeled scenes (``plan.train`` scenes of seed ``s``) and scored
   with pycocotools on ``plan.val`` held-out scenes (seed ``s + 1``).
5. **Positive control** (``plan.probe_control``): random init's fine-tuned detector, trained on those labels, is
   probed like the inits (row ``CONTROL``): the probes must tell it from random init before their ranking of the
   pretrained inits means anything.
6. **Noise**: each init's AP box gain over random init within the seed, with a sign test and a paired t-test over
   seeds, and with the gain's standard error from the held-out scenes alone (a paired bootstrap of that seed's
   held-out scenes, :func:`heldout_noise`), so the table says whether the scoring or the training makes the noise.

Stages run ``jobs`` at a time (default 2 on 2+ cores), each a subprocess with its share of the cores; with several
seeds, a worker that the current seed cannot use (its last fine-tune still running) starts the next seed's stages.

Every stage runs as its own ``mcl`` subprocess (log in the stage's folder); a stage that already finished
with the same arguments is reused, so an interrupted demo continues where it stopped (a stage whose arguments
changed runs again). Seeds fix the
weights, the data order and the augmentations: the same seed gives the same table on the same machine.
Outputs in ``--out``: ``results.json`` (every figure), ``results.md`` (the table) and ``results.png``
(bar chart, mean and standard deviation over seeds).
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from mcl.engine.atomic import write_atomic, write_text_atomic
from mcl.errors import UserError
from mcl.probes.run import FIGURES, metric
from mcl.stats import paired_t_test_p, sign_test_p
from mcl.transfer.evaluate import ANY_CLASS

METHODS = ("mcl", "moco", "random")                      # the default comparison: equal epochs
EQUAL_TIME = "moco_time"                                # opt-in: MoCo v2 given MCL's pretraining wall-clock
SUPERVISED = "supervised"                               # opt-in: supervised montage pretraining (scene labels)
# the probes' positive control: random init's detector after its fine-tune (trained on the labelled scenes), probed
# like the inits; a probe that cannot tell it from random init cannot be trusted to rank the inits either
CONTROL = "random_finetuned"
METHOD_LABELS = {"mcl": "MCL", "moco": "MoCo v2", EQUAL_TIME: "MoCo v2, MCL's time", SUPERVISED: "supervised montage",
                 "random": "random init", CONTROL: "control: random init fine-tuned"}
METRIC_COLUMNS = (("bbox", "AP"), ("segm", "AP"), ("bbox", "AP50"), ("segm", "AP50"), ("bbox", "APs"),
                  ("bbox", "APm"), ("bbox", "APl"), (ANY_CLASS, "AP"))


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo: pretraining steps (each method), fine-tuning iterations, scene counts and size."""

    name: str
    pretrain_steps: int
    finetune_iterations: int
    unlabeled: int = 512
    train: int = 64
    val: int = 32
    scene_size: int = 128
    scenes: str = "standard"                      # mcl.data.synthetic.PRESETS, for every stage's scenes
    pretrain_overrides: tuple[str, ...] = ()      # MCL's recipe
    moco_overrides: tuple[str, ...] = ()          # MoCo v2's recipe
    finetune_overrides: tuple[str, ...] = ()
    probe_det_iterations: int = 300               # frozen-backbone detection in the probe stage
    probe_args: tuple[str, ...] = ()              # more ``mcl probe`` flags / frozen-detection overrides
    probe_control: bool = True                    # also probe random init's fine-tuned detector (CONTROL)


# Anchors scaled to the 128 px scenes (torchvision's 32..512 are sized for 800 px COCO images: with them
# most objects here match no anchor, no proposal overlaps an object, and nothing is ever detected).
SCENE_ANCHORS = "model.anchor_sizes=[8,16,32,64,128]"
# FPN and head convs 64 wide instead of 256, in MCL's pretraining, in every fine-tune and probe: the 4-conv box and
# mask heads dominate a CPU fine-tuning step (0.95 s at 256 against 0.38 s at 128 per iteration on 2 cores; 0.20 s at
# 64 against 0.33 s at 128 on one thread: benchmarks/finetune_step.py), and random init learned no slower per
# iteration at 64 than at 128 (AP box 2.4 against 1.7 after 800 iterations), so 64 buys ~1.6x the iterations
# (docs/results.md, "The regime").
NARROW_FPN = "model.fpn_channels=64"
# MCL with MoCo v2's optimizer at the same batch (SGD, lr 0.03 at 32 images): cpu_smoke's LARS lr 8 moves
# the BatchNorm weights and biases (excluded from LARS adaptation, so stepped with the raw lr) so far in
# 300 steps that ~10% of the channels never pass their ReLU, and every MCL init fine-tuned worse than
# random (docs/results.md, "Why MCL lost").
MCL_SGD = ("optim.name=sgd", "optim.base_lr=0.24", "optim.weight_decay=1.0e-4")
# The online dense probe 3 times in 300 steps (the CPU recipes' every 20 steps would add ~15 probes per run).
ONLINE_PROBE = "probe.every_steps=100"
DEMO_MCL = (NARROW_FPN, *MCL_SGD, ONLINE_PROBE)
# Every loaded conv scaled per channel to pre-BN variance 1, as at random init (the same function): MCL's
# pretrained convs have a pre-BN variance of 2 to 60, so BatchNorm divided their fine-tuning gradients by
# that much, and the MCL backbone barely trained (docs/results.md, "Why MCL lost"). Random init is unchanged.
UNIT_VARIANCE_INIT = "model.rescale_init=unit_variance"
# MoCo v2's queue at 64 keys (2 batches), an eighth of the 512 scenes, instead of moco_cpu_smoke's 256 (half of
# them): with 256, an image's own older key was often among its negatives and the loss stopped falling (5.25 ->
# 5.21 over 300 steps; with 64: 4.07 -> 3.49, chance 4.17; docs/results.md). MoCo's 65,536 are 5% of ImageNet.
DEMO_MOCO = ("model.queue_size=64", ONLINE_PROBE)
# lr 0.01 at batch 2, not finetune_cpu_smoke's 0.02: random init learned faster with it (AP box 0.6 / 2.1 after 400 /
# 800 iterations, against 0.2 / 1.7 at 0.02 and 0.1 / 0.6 at 0.04; docs/results.md, "The regime")
DEMO_LR = "schedule.base_lr=0.01"
# The fine-tunes' loader in the main process, not finetune_cpu_smoke's one worker process: the whole fine-tune command
# ran 0.90x the seconds per iteration with it (0.459 against 0.507 s, one thread, median of 3 runs each:
# `python3 benchmarks/finetune_levers.py --skip-levers --skip-sharing --loader --repeats 3`; 0.87x the quick demo's wall
# time, docs/results.md). Loading 2 scenes is ~1% of a step either way: the cost is in handing batches over.
IN_PROCESS_LOADER = "data.num_workers=0"
DEMO_FINETUNE = (SCENE_ANCHORS, NARROW_FPN, UNIT_VARIANCE_INIT, DEMO_LR, IN_PROCESS_LOADER)
# The quick plan's lr held at its peak until 90% of the fine-tune, then x0.1 once (the paper's x0.1 at 2/3 and 8/9 is
# finetune_cpu_smoke's default): random init read 6.1 AP box at 2,000 iterations with the lr at its peak, 4.5 after
# the paper's steps at 1,333 and 1,778, which come before the detector has learned the shapes; with this schedule it
# read 10.2 / 15.3 AP box at 2,500 / 3,000 iterations, evaluated every 1,000 (14.6 at 3,000 in the demo itself, which
# evaluates only at the end: docs/results.md, "The quick regime at 3,000 iterations")
LATE_LR_STEP = "schedule.steps=[0.9]"
# The probe stage: the fine-tune's FPN width (for random init and MoCo's random FPN) and, for frozen detection, its
# anchors; nothing rescaled (the rescale keeps each conv + BN's function and only changes how fast fine-tuning
# moves the weights, and frozen weights do not move)
DEMO_PROBE = ("--fpn-channels", "64", SCENE_ANCHORS)
# The quick plan probes seg and roi only: frozen detection read AP 0.0-0.4 for every init at 300 iterations
# (docs/results.md) and cost most of each probe stage; the full plan keeps it
QUICK_PROBES = ("--probes", "seg,roi")

PLANS = {
    # 6,000 fine-tuning iterations with the paper's lr steps (x0.1 at 4,000 and 5,333, after the detector has learned
    # the shapes): random init read 14.0 / 19.4 / 25.4 AP box at 3,000 / 4,000 / 6,000 (docs/results.md); not timed
    "full": DemoPlan("full", pretrain_steps=600, finetune_iterations=6000, train=256, val=128,
                     pretrain_overrides=DEMO_MCL, moco_overrides=DEMO_MOCO, finetune_overrides=DEMO_FINETUNE,
                     probe_det_iterations=600, probe_args=DEMO_PROBE),
    # 256 labelled scenes (not 64) and 128 held out (not 32): ~1,100 train and ~550 held-out objects, so that one
    # detection moves AP by far less than a point; 3,000 iterations with one late lr step (LATE_LR_STEP): the shorter
    # of the two schedules tried in which random init passed 15 AP box; 43-50 minutes on two 2-core VMs (docs/results)
    "quick": DemoPlan("quick", pretrain_steps=300, finetune_iterations=3000, train=256, val=128,
                      pretrain_overrides=DEMO_MCL, moco_overrides=DEMO_MOCO,
                      finetune_overrides=(*DEMO_FINETUNE, LATE_LR_STEP),
                      probe_args=(*DEMO_PROBE, *QUICK_PROBES)),
    # tests only: seconds, and the figures mean nothing
    "tiny": DemoPlan("tiny", pretrain_steps=3, finetune_iterations=4, unlabeled=64, train=4, val=2, scene_size=64,
                     pretrain_overrides=(*DEMO_MCL, "data.batch_size=32", "data.num_workers=0", "data.crop_size=32",
                                         "model.cell_size=1", "montage.ratios=[1,2]", "montage.repeats=[1,1]",
                                         "loss.level_weights=[0.5,0.5]", "probe.every_steps=0"),
                     moco_overrides=(*DEMO_MOCO, "data.batch_size=32", "data.num_workers=0", "probe.every_steps=0"),
                     finetune_overrides=(*DEMO_FINETUNE, "input.train_min_sizes=[64]", "input.test_min_size=64",
                                         "input.max_size=96"),
                     probe_det_iterations=2,
                     probe_args=("--image-size", "64", "--max-pixels", "2000", "--steps", "10", *DEMO_PROBE,
                                 "input.train_min_sizes=[64]", "input.test_min_size=64", "input.max_size=96")),
}


def fpn_widths(plan: DemoPlan) -> dict[str, int | None]:
    """The FPN width each stage of ``plan`` builds: MCL's pretraining, the fine-tunes and the probes (``None``: the
    recipe's or probe's own default). They must agree for MCL's FPN and head convs to transfer, and for random init's
    and MoCo v2's random FPN to be probed at the width the pretrained one has."""
    def override(args) -> int | None:
        values = [a.split("=", 1)[1] for a in args if a.startswith("model.fpn_channels=")]
        return int(values[-1]) if values else None

    flags = [plan.probe_args[i + 1] for i, a in enumerate(plan.probe_args[:-1]) if a == "--fpn-channels"]
    return {"pretrain": override(plan.pretrain_overrides), "finetune": override(plan.finetune_overrides),
            "probe": int(flags[-1]) if flags else None}


# ---------------------------------------------------------------------------------------------- stages

def _run(cmd: list[str], log_path: Path, say: Callable[[str], None], threads: int | None = None) -> float:
    """Run one ``mcl`` stage as a subprocess (output to ``log_path``, ``threads`` intra-op threads if given);
    its wall-clock seconds. A failure raises ``UserError`` with the stage's last lines and the log's path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    say("  $ " + " ".join(cmd[2:]) + f"   (log: {log_path})")
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    elapsed = time.perf_counter() - t0
    if code != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise UserError(f"demo stage failed (exit {code}): {' | '.join(tail)} (full log: {log_path})")
    return elapsed


def _mcl(*args: str) -> list[str]:
    return [sys.executable, "-m", "mcl.cli", *args]


def _canonical_path(value: str) -> str:
    """``value`` as an absolute path if it names a file or folder that exists (else unchanged)."""
    return str(Path(value).resolve()) if os.sep in value and Path(value).exists() else value


def _canonical_args(args: list[str]) -> list[str]:
    """``args`` with every existing path, bare or as the value of ``key=value``, made absolute: a stage recorded
    under ``--out /abs/runs/demo`` is the same stage when the demo is called with ``--out runs/demo``."""
    canonical = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and os.sep not in key:
            canonical.append(f"{key}={_canonical_path(value)}")
        else:
            canonical.append(_canonical_path(arg))
    return canonical


def _stage_record(folder: Path, args: list[str]) -> dict | None:
    """The stage's saved record if it finished with these very ``args``, paths compared absolute (else it runs
    again)."""
    path = folder / "stage.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    recorded = record.get("args")
    return record if recorded is not None and _canonical_args(recorded) == _canonical_args(args) else None


def _clear_stage(folder: Path, log_path: Path, say) -> None:
    """Make room for a stage to run: an interrupted one (no ``stage.json``) is removed; a finished one whose
    arguments changed is kept, with its log, as ``<stage>.replaced-N`` (its checkpoints and figures may be
    someone's only copy), and the demo says where."""
    if not (folder / "stage.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        return
    n = 1
    while folder.with_name(f"{folder.name}.replaced-{n}").exists():
        n += 1
    kept = folder.with_name(f"{folder.name}.replaced-{n}")
    folder.rename(kept)
    if log_path.is_file():
        log_path.rename(kept / "stage.log")
    say(f"  {folder} finished earlier with other arguments: kept as {kept}; running the stage again")


def _write_json(path: Path, obj: dict) -> None:
    write_atomic(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def _save_record(folder: Path, record: dict) -> None:
    _write_json(folder / "stage.json", record)


def labeled_scenes(out: Path, plan: DemoPlan, seed: int, say) -> dict[str, str]:
    """Train (seed ``s``) and val (seed ``s + 1``) scenes with COCO json, written once per seed."""
    root = out / f"seed{seed}" / ("scenes" if plan.scenes == "standard" else f"scenes_{plan.scenes}")
    paths = {}
    for split, num, scene_seed in (("train", plan.train, seed), ("val", plan.val, seed + 1)):
        json_path = root / f"{split}.json"
        if not json_path.is_file():
            _run(_mcl("data", "synth", "--out", str(root), "--num", str(num), "--seed", str(scene_seed),
                      "--size", str(plan.scene_size), "--split", split, "--preset", plan.scenes),
                 root / f"synth_{split}.log", say)
        paths[f"{split}_json"], paths[f"{split}_images"] = str(json_path), str(root)
    return paths


def _stage(out: Path, seed: int, stage: str, command: str, args: list[str], say, threads: int | None,
           record_of: Callable[[Path, float], dict]) -> dict:
    """Run ``mcl COMMAND ARGS`` as stage ``seed<s>/<stage>`` unless it finished earlier with these very ``args``
    (then its saved record is returned, marked ``reused``); ``record_of(folder, seconds)`` reads its results."""
    folder = out / f"seed{seed}" / stage
    record = _stage_record(folder, args)
    if record:
        say(f"  reusing {folder} (done earlier with the same arguments)")
        try:    # figures re-read from the stage's files: a newer demo may read more of them than was recorded
            record = {**record, **record_of(folder, record["seconds"])}
        except (OSError, KeyError, ValueError):
            pass
        return {**record, "reused": True}
    log_path = out / f"seed{seed}" / f"{stage}.log"
    _clear_stage(folder, log_path, say)
    seconds = _run(_mcl(command, *args), log_path, say, threads)
    record = {**record_of(folder, seconds), "args": args}
    _save_record(folder, record)
    return record


def pretrain(out: Path, method: str, plan: DemoPlan, seed: int, say, threads: int | None = None,
             steps: int | None = None) -> dict:
    """MCL, MoCo v2 (``moco`` or ``moco_time``) or supervised montage on the unlabeled scenes for ``steps``
    (default: the plan's); returns ``{"checkpoint", "seconds", "steps", "loss_first", "loss_last"}``."""
    folder = out / f"seed{seed}" / f"pretrain_{method}"
    steps = plan.pretrain_steps if steps is None else steps
    recipe = {"mcl": "cpu_smoke", SUPERVISED: "supervised_cpu_smoke"}.get(method, "moco_cpu_smoke")   # names the method
    args = ["--config", recipe, "--out", str(folder), f"trainer.max_steps={steps}",
            f"trainer.seed={seed}", f"data.synthetic_seed={1000 + seed}", f"data.synthetic_num={plan.unlabeled}",
            f"data.synthetic_size={plan.scene_size}", f"data.synthetic_preset={plan.scenes}",
            f"probe.synthetic_preset={plan.scenes}", "trainer.progress_bar=false",
            f"trainer.checkpoint_every_steps={max(steps, 1)}", "trainer.log_every_steps=1"]
    # supervised montage shares MCL's encoder, montages and (in the demo) optimizer: MCL's overrides less the loss's
    args += list(plan.pretrain_overrides if method == "mcl" else plan.moco_overrides if method != SUPERVISED
                 else [o for o in plan.pretrain_overrides if o.split("=")[0] in SUPERVISED_KEYS])

    def record_of(folder: Path, seconds: float) -> dict:
        first, last = _loss_ends(folder / "logs" / "metrics.csv")
        return {"checkpoint": str(folder / "last.ckpt"), "seconds": seconds, "steps": steps, "loss_first": first,
                "loss_last": last}

    return _stage(out, seed, f"pretrain_{method}", "pretrain", args, say, threads, record_of)


def _labelled_data(scenes: dict) -> list[str]:
    return ["--train-json", scenes["train_json"], "--train-images", scenes["train_images"],
            "--val-json", scenes["val_json"], "--val-images", scenes["val_images"]]


def finetune(out: Path, init: str, name: str, plan: DemoPlan, seed: int, scenes: dict, say,
             threads: int | None = None) -> dict:
    """The same Mask R-CNN recipe from ``init``; returns ``{"results", "seconds", ...}`` (COCO AP)."""
    folder = out / f"seed{seed}" / f"finetune_{name}"
    args = ["--config", "finetune_cpu_smoke", "--init", init, "--out", str(folder), *_labelled_data(scenes),
            f"schedule.iterations_1x={plan.finetune_iterations}", "schedule.reference_batch=2",
            f"trainer.seed={seed}", "trainer.progress_bar=false",
            f"trainer.checkpoint_every_steps={max(plan.finetune_iterations, 1)}", *plan.finetune_overrides]

    def record_of(folder: Path, seconds: float) -> dict:
        results = json.loads((folder / "eval" / "results.json").read_text())
        return {"init": init, "seconds": seconds, "iterations": plan.finetune_iterations,
                "detector": str(folder / "detector.pt"), "final_loss": results.get("train_loss_last"),
                "results": {t: results[t] for t in ("bbox", "segm", ANY_CLASS) if t in results}}

    return _stage(out, seed, f"finetune_{name}", "finetune", args, say, threads, record_of)


def probe(out: Path, init: str, name: str, plan: DemoPlan, seed: int, scenes: dict, say,
          threads: int | None = None) -> dict:
    """``mcl probe`` of ``init`` on the seed's labelled scenes (linear segmentation, RoI retrieval, frozen-backbone
    detection); returns ``{"results": that init's probe.json entry, "seconds", ...}``."""
    folder = out / f"seed{seed}" / f"probe_{name}"
    args = ["--init", f"{name}={init}", "--out", str(folder), *_labelled_data(scenes),
            "--image-size", str(plan.scene_size), "--seed", str(seed),
            "--det-iterations", str(plan.probe_det_iterations), *plan.probe_args]

    def record_of(folder: Path, seconds: float) -> dict:
        results = json.loads((folder / "probe.json").read_text())["inits"][name]
        return {"init": init, "seconds": seconds, "results": results}

    return _stage(out, seed, f"probe_{name}", "probe", args, say, threads, record_of)


def _loss_ends(csv_path: Path) -> tuple[float | None, float | None]:
    """First and last logged ``train/loss`` of a pretraining run's CSV log."""
    import csv

    if not csv_path.is_file():
        return None, None
    with open(csv_path, newline="") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    return (losses[0], losses[-1]) if losses else (None, None)


# ---------------------------------------------------------------------------------------------- the demo

def equal_time_steps(steps: int, mcl_seconds: float, moco_seconds: float) -> int:
    """MoCo v2 steps that take MCL's pretraining time: ``round(steps x t_MCL / t_MoCo)`` (at least 1), from the
    two equal-epoch pretrainings' measured wall-clock of the same seed."""
    return max(1, round(steps * mcl_seconds / moco_seconds))


class SeedStages:
    """One seed's stage graph: which stages can start at once, and what each finished stage unlocks.

    Random init's fine-tune is queued first (it waits on nothing, and the fine-tunes are the longest stages: with
    2 workers it runs beside MCL's pretraining instead of leaving a pretrained init's fine-tune alone at the end),
    then the pretrainings; an init's probe and fine-tune are queued as soon as its pretraining has finished, and the
    control's probe once random init's fine-tune has. ``moco_time`` (equal wall-clock) pretrains once MCL's and MoCo
    v2's equal-epoch pretrainings have both finished, for :func:`equal_time_steps` steps. A stage is a
    ``(kind, method, call)`` triple; ``runs[method][kind]`` gets each finished stage's record.
    """

    def __init__(self, out: Path, plan: DemoPlan, seed: int, methods: tuple[str, ...], say, threads: int | None):
        self.out, self.plan, self.seed, self.methods, self.say, self.threads = out, plan, seed, methods, say, threads
        self.runs: dict[str, dict] = {m: {} for m in methods}
        self._scenes: dict | None = None
        self._scenes_lock = threading.Lock()

    def scenes(self) -> dict:
        """The seed's labelled scenes, written by the first stage that needs them (the others wait for it)."""
        with self._scenes_lock:
            if self._scenes is None:
                self.say(f"seed {self.seed}: labeled scenes")
                self._scenes = labeled_scenes(self.out, self.plan, self.seed, self.say)
            return self._scenes

    def _pretrain(self, method: str, steps: int | None = None):
        def call():
            self.say(f"seed {self.seed}: pretrain {METHOD_LABELS[method]} ({steps or self.plan.pretrain_steps} steps)")
            if steps is None:
                return pretrain(self.out, method, self.plan, self.seed, self.say, self.threads)
            return pretrain(self.out, method, self.plan, self.seed, self.say, self.threads, steps=steps)
        return ("pretrain", method, call)

    def _finetune(self, method: str, init: str):
        def call():
            self.say(f"seed {self.seed}: fine-tune Mask R-CNN from {METHOD_LABELS[method]} "
                     f"({self.plan.finetune_iterations} its)")
            return finetune(self.out, init, method, self.plan, self.seed, self.scenes(), self.say, self.threads)
        return ("finetune", method, call)

    def _probe(self, method: str, init: str):
        def call():
            self.say(f"seed {self.seed}: probe the frozen features of {METHOD_LABELS[method]}")
            return probe(self.out, init, method, self.plan, self.seed, self.scenes(), self.say, self.threads)
        return ("probe", method, call)

    def initial(self) -> list[tuple]:
        """The stages that wait on nothing, in the order they should start."""
        stages = [self._finetune("random", "random")] if "random" in self.methods else []
        stages += [self._pretrain(m) for m in self.methods if m not in ("random", EQUAL_TIME)]
        if "random" in self.methods:
            stages.append(self._probe("random", "random"))
        return stages

    def finished(self, kind: str, method: str, record: dict) -> list[tuple]:
        """Record a finished stage; the stages it unlocks (an init's probe first, minutes, then its fine-tune)."""
        self.runs[method][kind] = record
        took = "reused" if record.get("reused") else f"{record.get('seconds', 0.0) / 60:.1f} min"
        verb = "fine-tune" if kind == "finetune" else kind
        self.say(f"seed {self.seed}: {verb} {METHOD_LABELS[method]} done ({took})")
        unlocked = []
        if kind == "finetune" and method == "random" and self.plan.probe_control:
            self.runs[CONTROL] = {}
            detector = record.get("detector") or str(self.out / f"seed{self.seed}" / "finetune_random" / "detector.pt")
            unlocked.append(self._probe(CONTROL, detector))
        if kind == "pretrain":
            unlocked += [self._probe(method, record["checkpoint"]), self._finetune(method, record["checkpoint"])]
            if method in ("mcl", "moco") and EQUAL_TIME in self.methods and \
                    all("pretrain" in self.runs[m] for m in ("mcl", "moco")):   # true once: after the second
                steps = equal_time_steps(self.plan.pretrain_steps, self.runs["mcl"]["pretrain"]["seconds"],
                                         self.runs["moco"]["pretrain"]["seconds"])
                unlocked.append(self._pretrain(EQUAL_TIME, steps))
        return unlocked


def run_stages(graphs: list[SeedStages], jobs: int) -> dict[int, float]:
    """Run every seed's stages, ``jobs`` at a time: whenever a worker is free it takes the ready stage of the
    earliest seed (in that seed's queueing order), so a worker that the current seed cannot use (its last fine-tune
    still running) starts the next seed's stages instead of waiting. Returns each seed's wall-clock seconds, from
    its first stage's start to its last stage's end (seeds overlap, so these add up to more than the run).

    After a failure the running stages end (their folders stay consistent), no more start, and the error is raised.
    """
    ready: list[tuple[int, int, tuple]] = []     # (seed index, queue order, stage): the smallest starts next
    order = 0

    def queue(index: int, stages: list[tuple]) -> None:
        nonlocal order
        for stage in stages:
            heapq.heappush(ready, (index, order, stage))
            order += 1

    for index, graph in enumerate(graphs):
        queue(index, graph.initial())
    first_start: dict[int, float] = {}
    last_end: dict[int, float] = {}
    pool = ThreadPoolExecutor(max_workers=jobs)
    running: dict = {}
    failure = None
    try:
        while ready or running:
            while ready and len(running) < jobs and failure is None:
                index, _, (kind, method, call) = heapq.heappop(ready)
                first_start.setdefault(index, time.perf_counter())
                running[pool.submit(call)] = (index, kind, method)
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                index, kind, method = running.pop(future)
                last_end[index] = time.perf_counter()
                try:
                    record = future.result()
                except Exception as error:       # raised once the running stages have ended
                    failure = failure or error
                    continue
                if failure is None:
                    queue(index, graphs[index].finished(kind, method, record))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if failure is not None:
        raise failure
    return {graphs[i].seed: last_end[i] - first_start[i] for i in first_start}


def run_seed(out: Path, plan: DemoPlan, seed: int, methods: tuple[str, ...], say, jobs: int = 1,
             threads: int | None = None) -> dict[str, dict]:
    """One seed's stages (:class:`SeedStages`), ``jobs`` at a time, each a subprocess with ``threads`` threads;
    ``runs[method][kind]`` for every finished stage."""
    graph = SeedStages(out, plan, seed, methods, _line_by_line(say), threads)
    run_stages([graph], jobs)
    return graph.runs


def _line_by_line(say: Callable[[str], None]) -> Callable[[str], None]:
    """``say`` for stages that report from worker threads: one whole line at a time."""
    lock = threading.Lock()

    def locked(line: str) -> None:
        with lock:
            say(line)
    return locked


def run_demo(out: Path, plan: DemoPlan, seeds: list[int], methods: tuple[str, ...] = METHODS,
             say: Callable[[str], None] = print, jobs: int = 1) -> dict:
    """Every stage for every seed, then the summary (also written to ``out/results.json``).

    ``jobs`` stages run side by side, each with ``cpus // jobs`` threads (on 2 cores: two one-thread stages), every
    seed's stages through one scheduler (:func:`run_stages`); ``seed_elapsed_s``: each seed's first stage start to
    last stage end (the seeds overlap).
    """
    widths = fpn_widths(plan)
    if len(set(widths.values())) > 1:
        raise UserError(f"demo plan {plan.name!r}: its stages build FPNs of different widths {widths}; give "
                        f"model.fpn_channels=W to the pretraining and fine-tuning overrides and --fpn-channels W "
                        f"to the probe")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    threads = max(1, _cpu_count() // jobs) if jobs > 1 else None
    say = _line_by_line(say)
    graphs = [SeedStages(out, plan, seed, methods, say, threads) for seed in seeds]
    seed_seconds = {str(seed): seconds for seed, seconds in run_stages(graphs, jobs).items()}
    per_seed = {str(graph.seed): graph.runs for graph in graphs}
    methods = (*methods, *([CONTROL] if any(CONTROL in runs for runs in per_seed.values()) else []))
    summary = {"schema": "mcl-demo/1", "plan": asdict(plan), "seeds": seeds, "methods": list(methods),
               "budget": "equal epochs: each pretraining method runs the same steps at the same batch (32)" +
                         ("; moco_time: MoCo v2 for MCL's measured pretraining wall-clock (steps x t_MCL / t_MoCo)"
                          if EQUAL_TIME in methods else ""),
               "per_seed": per_seed, "aggregate": aggregate(per_seed, methods),
               "paired_vs_random": paired_gains(per_seed, methods),
               "heldout_noise": {str(graph.seed): heldout_noise(graph, methods) for graph in graphs},
               # wall-clock of this call only: stages reused from an earlier call count ~0 here (their own
               # "seconds" keep the time they took when they ran)
               "elapsed_s": time.perf_counter() - start, "seed_elapsed_s": seed_seconds,
               "stages_reused": sum(bool(stage.get("reused")) for runs in per_seed.values()
                                    for run in runs.values() for stage in run.values()),
               "machine": _machine(), "jobs": jobs,
               "threads_per_stage": threads,
               "stage_seconds_total": sum(stage["seconds"] for runs in per_seed.values() for run in runs.values()
                                          for stage in run.values())}
    _write_json(out / "results.json", summary)
    write_text_atomic(out / "results.md", render_table(summary, markdown=True) + "\n")
    plot(summary, out / "results.png")
    return summary


def aggregate(per_seed: dict, methods) -> dict:
    """Mean and sample standard deviation over seeds of each metric (in AP points, 0-100) and of the times."""
    agg = {}
    for method in methods:
        rows = [runs[method] for runs in per_seed.values() if method in runs]
        entry = {}
        for key in (*(f"{t}/{m}" for t, m in METRIC_COLUMNS), *PROBE_METRICS):
            entry[key] = _mean_std([v for r in rows if (v := _figure(r, key)) is not None])
        entry["finetune_s"] = _mean_std([r["finetune"]["seconds"] for r in rows if "finetune" in r])
        if all("pretrain" in r for r in rows) and rows:
            entry["pretrain_s"] = _mean_std([r["pretrain"]["seconds"] for r in rows])
        agg[method] = entry
    return agg


PAIRED_METRICS = ("bbox/AP", "segm/AP", f"{ANY_CLASS}/AP")
# the MCL overrides a supervised montage pretraining takes too (it has no predictors or MCL loss keys)
SUPERVISED_KEYS = {"data.batch_size", "data.num_workers", "data.crop_size", "model.cell_size", "model.fpn_channels",
                   "montage.ratios", "montage.repeats", "loss.level_weights", "optim.name", "optim.base_lr",
                   "optim.weight_decay", "probe.every_steps"}
# the probe stage's figures (percent): mcl probe's, as probe/<name>
PROBE_METRICS = tuple(f"probe/{name}" for name in FIGURES)
PROBE_LABELS = {f"probe/{name}": label for name, (*_, label) in FIGURES.items()}
SIGNIFICANCE = 0.05     # one-sided paired t-test level below which a gain is called clear


def _figure(run: dict, key: str) -> float | None:
    """AP (``bbox/AP``, ``segm/AP``, ...) or a probe figure (``probe/<name>``) of one method in one seed, in points."""
    if key.startswith("probe/"):
        return metric(run.get("probe", {}).get("results", {}), key[len("probe/"):])
    iou_type, metric_name = key.split("/")
    value = run.get("finetune", {}).get("results", {}).get(iou_type, {}).get(metric_name)
    return None if value is None else 100.0 * value


def paired_gains(per_seed: dict, methods, baseline: str = "random") -> dict:
    """Each method's gain over ``baseline`` within a seed (same scenes, same fine-tuning seed), in points: fine-tuning
    AP (``bbox/AP``, ``segm/AP``) and every probe figure that both have (``probe/*``).

    Per method and metric: ``d_s = AP_method(s) - AP_baseline(s)``; mean and sample std of ``d_s``, ``wins``
    (``d_s > 0``) out of ``n`` seeds, the one-sided sign-test p-value ``P(X >= wins)``, X ~ Binomial(n, 1/2)
    (the chance of that many wins if the init made no difference), and the one-sided paired t-test p-value
    (``mcl.stats``: uses the sizes of the gains, assumes them roughly normal). Pairing removes the between-seed spread
    (scene sets and fine-tuning noise) that the unpaired ``mean ± std`` columns carry. Empty without ``baseline``.
    """
    if baseline not in methods:
        return {}
    gains = {}
    for method in methods:
        if method == baseline:
            continue
        entry = {}
        for key in (*PAIRED_METRICS, *PROBE_METRICS):
            diffs = []
            for runs in per_seed.values():
                if method not in runs or baseline not in runs:
                    continue
                ours, theirs = _figure(runs[method], key), _figure(runs[baseline], key)
                if ours is not None and theirs is not None:
                    diffs.append(ours - theirs)
            if not diffs:
                continue
            wins = sum(d > 0 for d in diffs)
            entry[key] = {**_mean_std(diffs), "wins": wins, "sign_test_p": sign_test_p(wins, len(diffs)),
                          "t_test_p": paired_t_test_p(diffs),
                          "diffs": diffs}
        gains[method] = entry
    return gains


HELDOUT_RESAMPLES = 200  # bootstrap draws of a seed's held-out scenes: a standard error to within about 5%


def heldout_noise(graph: SeedStages, methods, baseline: str = "random",
                  resamples: int = HELDOUT_RESAMPLES) -> dict:
    """How much of one seed's fine-tuned AP box, and of each gain over ``baseline``, is down to which scenes were
    held out: ``{"ap_se": {method: SE}, "gain_se": {method: SE}}`` in AP points, from a paired bootstrap of the
    seed's held-out scenes (:func:`mcl.transfer.ap_bootstrap.paired_ap_bootstrap`: every method's detections scored
    on the same draws). The trained detectors stay fixed, so this is the evaluation's share of the noise only: the
    seed-to-seed spread of a gain also carries the training's (other scenes, another fine-tuning run). A method
    whose detections are missing (a stage of an older demo) is left out."""
    from mcl.transfer.ap_bootstrap import paired_ap_bootstrap
    from mcl.transfer.coco_data import load_coco_json

    detections = {}
    for method in methods:
        path = graph.out / f"seed{graph.seed}" / f"finetune_{method}" / "eval" / "predictions_bbox.json"
        if "finetune" in graph.runs.get(method, {}) and path.is_file():
            detections[method] = json.loads(path.read_text())
    if not detections:
        return {"ap_se": {}, "gain_se": {}}
    result = paired_ap_bootstrap(load_coco_json(graph.scenes()["val_json"]), detections, resamples, seed=graph.seed)
    gain_se = {}
    for (a, b), se in result["diff_se"].items():
        if baseline in (a, b):
            gain_se[b if a == baseline else a] = 100.0 * se
    return {"ap_se": {m: 100.0 * se for m, se in result["se"].items()}, "gain_se": gain_se,
            "resamples": resamples, "images": result["images"]}


def _mean_std(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def render_table(summary: dict, markdown: bool = False) -> str:
    """Methods x (AP box, AP mask, AP50s, APs/m/l box, pretrain and fine-tune minutes): mean ± std over seeds."""
    from mcl.bench.report import table

    n = len(summary["seeds"])
    headers = ["init", "AP box", "AP mask", "AP50 box", "AP50 mask", "APs box", "APm box", "APl box",
               "AP box any class", "pretrain min", "fine-tune min"]

    def cell(stat: dict, scale: float = 1.0, digits: int = 1) -> str:
        if stat is None or stat.get("mean") is None:
            return "-"
        text = f"{stat['mean'] * scale:.{digits}f}"
        return text + (f" ± {stat['std'] * scale:.{digits}f}" if n > 1 else "")

    rows = []
    for method in fine_tuned(summary):
        a = summary["aggregate"][method]
        rows.append([METHOD_LABELS[method]] + [cell(a[f"{t}/{m}"]) for t, m in METRIC_COLUMNS]
                    + [cell(a.get("pretrain_s"), 1 / 60), cell(a["finetune_s"], 1 / 60)])
    plan = summary["plan"]
    budget = "equal epochs"
    if EQUAL_TIME in summary["methods"]:
        budget += f"; {METHOD_LABELS[EQUAL_TIME]}: MoCo v2 steps scaled to MCL's measured pretraining time"
    title = (f"mcl demo ({plan['name']}): COCO AP (%) on {plan['val']} held-out synthetic scenes, "
             f"Mask R-CNN R18-FPN fine-tuned {plan['finetune_iterations']} iterations on {plan['train']} scenes; "
             f"pretraining {plan['pretrain_steps']} steps x 32 images on {plan['unlabeled']} unlabeled scenes "
             f"({budget}); AP box any class: the same boxes scored with every category pooled (the objects found, "
             f"whatever their shape); " + (f"mean ± std over seeds {summary['seeds']}" if n > 1
                                    else f"seed {summary['seeds'][0]}"))
    text = (f"**{title}**\n\n" if markdown else f"{title}\n") + table(headers, rows, markdown)
    probes = [k for k in PROBE_METRICS if any(summary["aggregate"][m].get(k, {}).get("mean") is not None
                                              for m in summary["methods"])]
    if probes:
        probe_rows = [[METHOD_LABELS[m]] + [cell(summary["aggregate"][m].get(k)) for k in probes]
                      for m in summary["methods"]]
        probe_title = (f"Frozen-feature probes (%) on the same {plan['train']} / {plan['val']} labelled scenes "
                       f"(mcl probe: linear segmentation mIoU, RoI kNN / linear accuracy over 7 shapes, "
                       f"frozen-backbone detection AP)"
                       + (f"; {METHOD_LABELS[CONTROL]}: random init's detector after its {plan['finetune_iterations']}"
                          f" fine-tuning iterations on these labels, the positive control"
                          if CONTROL in summary["methods"] else ""))
        text += ("\n\n" + (f"**{probe_title}**\n\n" if markdown else f"{probe_title}\n")
                 + table(["init"] + [PROBE_LABELS[k] for k in probes], probe_rows, markdown))
    paired = summary.get("paired_vs_random") or {}
    if n > 1 and paired:
        text += "\n\n" + render_paired(paired, markdown)
    if any((noise or {}).get("gain_se") for noise in (summary.get("heldout_noise") or {}).values()):
        text += "\n\n" + render_heldout(summary, markdown)
    return text


def fine_tuned(summary: dict) -> list[str]:
    """The summary's methods that have fine-tuning figures (all but the probe-only ``CONTROL``)."""
    return [m for m in summary["methods"] if summary["aggregate"][m].get("finetune_s", {}).get("n")]


def verdict(stat: dict) -> str:
    """Plain words for a paired gain: better / worse at the one-sided 5% level of the paired t-test, else noise."""
    diffs = stat.get("diffs") or []
    if len(diffs) < 2:
        return "one seed: no spread to judge"
    if (stat.get("t_test_p") or 1.0) < SIGNIFICANCE:
        return "better, outside the noise"
    if (paired_t_test_p([-d for d in diffs]) or 1.0) < SIGNIFICANCE:
        return "worse, outside the noise"
    return "inside the noise"


def render_paired(paired: dict, markdown: bool = False) -> str:
    """Gain over random init within each seed, one row per figure and init: mean ± std, wins out of seeds,
    one-sided sign-test and paired t-test p, and the verdict."""
    from mcl.bench.report import table

    def cell(stat: dict) -> str:
        t_p = stat.get("t_test_p")
        return (f"{stat['mean']:+.1f} ± {stat['std']:.1f}, wins {stat['wins']}/{stat['n']}, "
                f"p = {stat['sign_test_p']:.2f} (sign)" + (f", {t_p:.3f} (t)" if t_p is not None else ""))

    labels = {"bbox/AP": "AP box (fine-tuned)", "segm/AP": "AP mask (fine-tuned)",
              f"{ANY_CLASS}/AP": "AP box, any class (fine-tuned)", **PROBE_LABELS}
    rows = [[METHOD_LABELS[method], labels[key], cell(stat), verdict(stat)]
            for method, entry in paired.items() for key, stat in entry.items() if stat.get("mean") is not None]
    title = ("Gain over random init within each seed (points; same scenes and seeds; p: one-sided sign test, the "
             "chance of that many wins if the init made no difference, and one-sided paired t-test on the gains; "
             f"'outside the noise': paired t p < {SIGNIFICANCE})")
    return (f"**{title}**\n\n" if markdown else f"{title}\n") + table(["init", "figure", "gain", "verdict"], rows,
                                                                        markdown)


def render_heldout(summary: dict, markdown: bool = False) -> str:
    """Each init's AP box gain over random init per seed, with its standard error from the held-out scenes alone
    (``heldout_noise``), beside the gain's spread over seeds: when the first is much the smaller, more held-out
    scenes would not sharpen the comparison, and more seeds would."""
    from mcl.bench.report import table

    noise = summary.get("heldout_noise") or {}
    seeds = [str(s) for s in summary["seeds"] if str(s) in noise]
    rows = []
    for method in fine_tuned(summary):
        if method == "random":
            continue
        gains, ses = [], []
        for seed in seeds:
            runs, se = summary["per_seed"].get(seed, {}), noise[seed]["gain_se"].get(method)
            ours, theirs = _figure(runs.get(method, {}), "bbox/AP"), _figure(runs.get("random", {}), "bbox/AP")
            if se is not None and ours is not None and theirs is not None:
                gains.append((seed, ours - theirs))
                ses.append(se)
        if not gains:
            continue
        typical = (statistics.fmean(se * se for se in ses)) ** 0.5        # root mean square over seeds
        spread = (f"{statistics.stdev(g for _, g in gains):.1f}" if len(gains) > 1
                  else "one seed: not measured (--seeds N)")
        rows.append([METHOD_LABELS[method],
                     ", ".join(f"{g:+.1f} ± {se:.1f} (seed {s})" for (s, g), se in zip(gains, ses)),
                     f"{typical:.1f}", spread])
    first = noise[seeds[0]] if seeds else {}
    title = (f"AP box gain over random init, and how much of it the held-out scenes alone could move (± one standard "
             f"error from a paired bootstrap of the {first.get('images', '?')} held-out scenes, "
             f"{first.get('resamples', '?')} draws; the trained detectors fixed). A held-out error well under the "
             f"spread over seeds means the training, not the scoring, makes the noise: more seeds sharpen the "
             f"comparison, more held-out scenes would not")
    headers = ["init", "gain per seed ± held-out error", "held-out error (rms)", "spread over seeds (std)"]
    return (f"**{title}**\n\n" if markdown else f"{title}\n") + table(headers, rows, markdown)


def plot(summary: dict, path: Path) -> Path:
    """Grouped bars with ±1 std error bars over seeds: AP box, AP mask, AP50 box per method, and beside them the
    probe figures when the probe stage ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = summary["methods"]
    panels = [("COCO AP (%), fine-tuned", [("bbox/AP", "AP box"), ("segm/AP", "AP mask"), ("bbox/AP50", "AP50 box")])]
    probes = [(k, PROBE_LABELS[k]) for k in PROBE_METRICS
              if any(summary["aggregate"][m].get(k, {}).get("mean") is not None for m in methods)]
    if probes:
        panels.append(("frozen-feature probes (%)", probes))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4), squeeze=False)
    for panel, (ax, (ylabel, metrics)) in enumerate(zip(axes[0], panels)):
        shown = fine_tuned(summary) if panel == 0 else methods
        width = 0.8 / len(shown)
        for i, method in enumerate(shown):
            a = summary["aggregate"][method]
            means = [(a.get(k) or {}).get("mean") or 0.0 for k, _ in metrics]
            stds = [(a.get(k) or {}).get("std") or 0.0 for k, _ in metrics]
            xs = [j + (i - (len(shown) - 1) / 2) * width for j in range(len(metrics))]
            ax.bar(xs, means, width, yerr=stds if len(summary["seeds"]) > 1 else None, capsize=3,
                   label=METHOD_LABELS[method])
        ax.set_xticks(range(len(metrics)), [label for _, label in metrics], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    seeds = summary["seeds"]
    fig.suptitle(f"mcl demo ({summary['plan']['name']}), " + (f"{len(seeds)} seeds, mean ± std" if len(seeds) > 1
                                                              else f"seed {seeds[0]}"), fontsize=10)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def default_jobs() -> int:
    """2 stages side by side when there are at least 2 cores (the demo's stages are 1-3 processes' work)."""
    return 2 if _cpu_count() >= 2 else 1


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _machine() -> dict:
    import platform

    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": _cpu_count(), "torch_threads": torch.get_num_threads()}


def parse_methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHOD_LABELS]
    if unknown or not methods:
        raise UserError(f"--methods {text!r}: choose from {', '.join(METHOD_LABELS)}")
    if EQUAL_TIME in methods and not {"mcl", "moco"} <= set(methods):
        raise UserError(f"--methods {text!r}: {EQUAL_TIME} takes its steps from MCL's and MoCo v2's pretraining "
                        f"times: add mcl and moco")
    return methods


def seeds_from(count: int, first: int) -> list[int]:
    if count < 1:
        raise UserError(f"--seeds {count}: give at least 1")
    return [first + i for i in range(count)]

