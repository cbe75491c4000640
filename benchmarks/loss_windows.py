"""Mean training loss (and accuracy, where logged) over windows of steps, from a run's ``logs/metrics.csv``.

Run from the repository root: ``python3 benchmarks/loss_windows.py RUN_DIR_OR_CSV [...] [--windows 10 40 100 200 300]``.
A loss logged at one step is noisy (one batch); a window's mean says whether it falls. MoCo v2's first steps
are skipped by the first window on purpose: until its queue holds real keys, its negatives are random vectors
and its loss is artificially low.
"""

import argparse
import csv
import statistics
import sys
from pathlib import Path


def windows(csv_path: Path, edges: list[int]) -> list[tuple[int, int, float, float | None, int]]:
    """``(start, end, mean loss, mean accuracy or None, rows)`` for steps in ``[edges[k], edges[k + 1])``."""
    rows = [r for r in csv.DictReader(open(csv_path, newline="")) if r.get("train/loss")]
    out = []
    for a, b in zip(edges, edges[1:]):
        sel = [r for r in rows if a <= int(r["step"]) < b]
        if not sel:
            continue
        acc = [float(r["train/acc"]) for r in sel if r.get("train/acc")]
        out.append((a, b, statistics.fmean(float(r["train/loss"]) for r in sel),
                    statistics.fmean(acc) if acc else None, len(sel)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders (their logs/metrics.csv) or CSV files")
    parser.add_argument("--windows", type=int, nargs="+", default=[10, 40, 100, 200, 300],
                        help="window edges in steps (default 10 40 100 200 300)")
    args = parser.parse_args()
    for run in args.runs:
        path = Path(run)
        path = path / "logs" / "metrics.csv" if path.is_dir() else path
        if not path.is_file():
            print(f"{run}: no logs/metrics.csv", file=sys.stderr)
            return 2
        parts = [f"{a}-{b}: {loss:.3f}" + (f" (acc {acc:.3f})" if acc is not None else "")
                 for a, b, loss, acc, _ in windows(path, args.windows)]
        print(f"{run}: " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
