"""A CSV logger that keeps the run's earlier rows when the run is resumed.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts. This one keeps it: at
its first write it drops the old rows whose ``step`` is at or after the first step it logs (steps
recomputed after a resume from an older checkpoint) and writes the rest followed by the new rows,
so ``metrics.csv`` holds each step once, in order.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


def _step(row: dict) -> int:
    try:
        return int(float(row.get("step") or 0))
    except ValueError:
        return 0


class AppendingWriter(ExperimentWriter):
    """``ExperimentWriter`` that merges with the rows already in ``metrics.csv`` instead of deleting them."""

    def _check_log_dir_exists(self) -> None:
        self._previous: list[dict] = []
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self._previous = list(csv.DictReader(f))

    def save(self) -> None:
        if self._previous is not None and self.metrics:
            first = min(_step(m) for m in self.metrics)
            kept = [row for row in self._previous if _step(row) < first]
            self._previous = None
            self.metrics = kept + self.metrics
            if self._fs.isfile(self.metrics_file_path):
                self._fs.rm_file(self.metrics_file_path)
        super().save()


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` writing through :class:`AppendingWriter`."""

    @property
    def experiment(self) -> AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment
