"""The online dense probe during pretraining: its figures in metrics.csv and summary.png, and a resumed run
with the probe on that reproduces the uninterrupted run (and one without the probe) bit for bit."""

import signal

import pytest
from PIL import Image
from runs import SMALL_PRETRAIN, differences, load, read_losses, run, start, wait_for_step

from mcl.probes.online import METRICS

PROBE = ["probe.synthetic_train=6", "probe.synthetic_val=4", "probe.synthetic_size=64", "probe.image_size=64",
         "probe.max_pixels=2000", "probe.steps=10"]
STEPS = 10
COMMON = [*SMALL_PRETRAIN, f"trainer.max_steps={STEPS}", "trainer.checkpoint_every_steps=4"]


def probe_rows(out) -> dict[int, dict[str, str]]:
    """``{step: {metric: value}}`` of the probe's figures in the run's CSV log."""
    rows = {}
    for name in METRICS:
        for step, value in read_losses(out, key=name).items():
            rows.setdefault(step, {})[name] = value
    return rows


def test_cpu_smoke_with_the_online_probe_logs_it_and_draws_it(tmp_path):
    out = tmp_path / "run"
    code, text = run(["pretrain", "--config", "cpu_smoke", "--out", str(out), *SMALL_PRETRAIN, "trainer.max_steps=30",
                      "trainer.checkpoint_every_steps=30", "probe.every_steps=10", *PROBE])
    assert code == 0, text[-3000:]
    rows = probe_rows(out)
    assert sorted(rows) == [10, 20, 30] and all(set(r) == set(METRICS) for r in rows.values())
    assert all(0.0 <= float(v) <= 1.0 for r in rows.values() for v in r.values())
    assert Image.open(out / "summary.png").size[0] == 1800               # 4 panels (3 without the probe)
    assert (out / "probe_data" / "train.json").is_file()


@pytest.fixture(scope="module")
def references(module_tmp_path):
    """An uninterrupted run without the probe and one with it (every 3 steps)."""
    plain, probed = module_tmp_path / "plain", module_tmp_path / "probed"
    for out, extra in ((plain, []), (probed, ["probe.every_steps=3", *PROBE])):
        code, text = run(["pretrain", "--out", str(out), *COMMON, *extra])
        assert code == 0, text[-3000:]
    return plain, probed


def test_the_probe_does_not_change_training_and_resume_with_it_is_exact(tmp_path, references):
    plain, probed = references
    assert read_losses(probed) == read_losses(plain)
    assert differences(load(probed / "last.ckpt"), load(plain / "last.ckpt")) == []
    assert sorted(probe_rows(probed)) == [3, 6, 9]

    out = tmp_path / "run"
    extra = ["probe.every_steps=3", *PROBE]
    log = tmp_path / "first.log"
    proc = start(["pretrain", "--out", str(out), *COMMON, *extra], log=log)
    wait_for_step(proc, out, 5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    stopped = load(out / "last.ckpt")["global_step"]
    assert 5 <= stopped < STEPS
    code, text = run(["pretrain", "--out", str(out), "--resume", *COMMON, *extra])
    assert code == 0, text[-3000:]
    assert read_losses(out) == read_losses(plain)
    assert differences(load(out / "last.ckpt"), load(plain / "last.ckpt")) == []
    assert probe_rows(out) == probe_rows(probed)                          # the same figures, every digit


def test_probe_json_flags_resolve_and_bad_probe_settings_are_one_line_errors(tmp_path, capsys):
    from mcl.cli import build_parser, main
    from mcl.commands.pretrain import resolve
    from mcl.data.synthetic import write_coco_scenes
    from mcl.probes.data import load_probe_set
    from mcl.probes.online import split_even_odd

    json_path = write_coco_scenes(tmp_path / "labelled", 5, 0, 64)
    args, extra = build_parser()[0].parse_known_args(["pretrain", "--config", "cpu_smoke",
                                                      "--probe-json", str(json_path),
                                                      "--probe-images", str(json_path.parent), "probe.every_steps=5"])
    _, cfg = resolve(args, extra)
    assert (cfg.probe.json, cfg.probe.images, cfg.probe.every_steps) == (str(json_path), str(json_path.parent), 5)
    train, val = split_even_odd(load_probe_set(json_path, json_path.parent, 64))
    assert (len(train), len(val)) == (3, 2) and train.images.shape[1:] == (3, 64, 64)
    for extra, words in (([f"--probe-json={json_path}", f"--probe-images={json_path.parent}", "probe.every_steps=0"],
                          "probe.every_steps = 0 must be > 0 when probe.json is given"),
                         (["probe.image_size=100"], "probe.image_size = 100 must be a multiple of 32"),
                         ([f"--probe-json={json_path}"], "probe.json = ")):
        assert main(["pretrain", "--config", "cpu_smoke", "--dry-run", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err, err
