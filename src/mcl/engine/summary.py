"""End-of-run summary: a one-screen text and a PNG of the per-level curves from the CSV log."""

from __future__ import annotations

import csv
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from mcl.engine.atomic import write_atomic


class RunSummary(Callback):
    """Tracks wall time and images seen; at the end writes ``summary.png`` from ``logs/metrics.csv``."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.start = time.time()
        self.images = 0
        self.start_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.time()
        self.start_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += batch["crops"].shape[0] * trainer.world_size

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            plot_curves(self.run_dir / "logs" / "metrics.csv", self.run_dir / "summary.png")

    def text(self, trainer, checkpoint: Path, module) -> str:
        """The end-of-run text: steps, time, images/s, the method's figures (``module.summary_lines``), files."""
        elapsed = time.time() - self.start
        skip = {"train/lr", "train/global_step"}
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/") and k not in skip}
        lines = [
            "-" * 60,
            f"{module.TITLE} pretraining finished: {trainer.global_step} optimizer steps "
            f"({trainer.global_step - self.start_step} this session) in {elapsed:.1f} s",
            f"unique images seen this session: {self.images} ({self.images / max(elapsed, 1e-9):.1f} img/s)",
            *module.summary_lines(metrics),
            f"checkpoint: {checkpoint}", f"logs: {self.run_dir / 'logs'} (CSV + TensorBoard)",
            f"curves: {self.run_dir / 'summary.png'}", "-" * 60,
        ]
        return "\n".join(lines)


def read_metrics(csv_path: Path) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` from Lightning's CSV log (empty cells skipped)."""
    series: dict[str, list[tuple[int, float]]] = {}
    if not csv_path.is_file():
        return series
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                series.setdefault(key, []).append((step, float(value)))
    return series


def plot_curves(csv_path: Path, png_path: Path) -> Path | None:
    """Per-level loss and positive/negative cosine against step, as a 3-panel PNG; a 4th panel with the online
    probe's figures (``probe/*``, in percent) when the run logged them."""
    series = read_metrics(csv_path)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probes = sorted(k for k in series if k.startswith("probe/"))
    fig, axes = plt.subplots(1, 4 if probes else 3, figsize=(20 if probes else 15, 4))
    for ax, prefix, title in zip(axes, ("train/loss_level", "train/pos_cos_level", "train/neg_cos_level"),
                                 ("loss per level", "mean positive cosine", "mean negative cosine")):
        for key in sorted(k for k in series if k.startswith(prefix)):
            steps, values = zip(*series[key])
            ax.plot(steps, values, label=f"level {key[len(prefix):]}")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    if probes:
        ax = axes[3]
        for key in probes:
            steps, values = zip(*series[key])
            ax.plot(steps, [100 * v for v in values], marker="o", label=key[len("probe/"):])
        ax.set_title("online dense probe (%)")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomic(png_path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)
    return png_path
