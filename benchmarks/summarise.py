"""Markdown tables of mean +- standard deviation over seeds, from the CSV files
that ``compare_models.py`` writes (one row per run).

    python benchmarks/summarise.py benchmarks/results/compare_ml-100k*.csv

Runs of one model and variant found in several files (e.g. seeds run apart)
are pooled; the variant is the file's tag (``compare_<dataset>_<tag>.csv``).
"""

from __future__ import annotations

import argparse
import os
import statistics

import bench_common as common

HEADER = (
    "| model | seeds | test NDCG@20 (x100) | test Hit@20 (x100) | wall time per run (s) "
    "| train epoch (s) | valid epoch (s) | trainable % |\n"
    "|---|---|---|---|---|---|---|---|"
)


def _mean_spread(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def _mean(runs: list[dict], key: str, digits: int) -> str:
    values = [float(r[key]) for r in runs if r.get(key) not in ("", None)]
    return f"{statistics.mean(values):.{digits}f}" if values else "-"


def table_row(name: str, runs: list[dict]) -> str:
    """One markdown row: the mean and spread of the test metrics (x100) and the
    mean wall, epoch and parameter figures of ``runs``."""
    seeds = ", ".join(str(r["seed"]) for r in runs)
    return (
        f"| {name} | {seeds} | {_mean_spread([100 * float(r['ndcg@20']) for r in runs])} "
        f"| {_mean_spread([100 * float(r['hit@20']) for r in runs])} "
        f"| {_mean(runs, 'wall_s', 0)} | {_mean(runs, 'train_epoch_s', 1)} "
        f"| {_mean(runs, 'valid_epoch_s', 1)} | {_mean(runs, 'trainable_pct', 2)} |"
    )


def variant_of(path: str) -> str:
    """The tag of ``compare_<dataset>_<tag>.csv`` ('' for none)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    parts = stem.split("_", 2)
    return parts[2] if len(parts) == 3 else ""


def read_runs(paths: list[str]) -> dict[str, list[dict]]:
    """Runs grouped by ``model (variant)``, in the order first seen."""
    groups: dict[str, list[dict]] = {}
    for path in paths:
        tag = variant_of(path)
        for row in common.read_csv(path):
            name = f"{row['model']} ({tag})" if tag else row["model"]
            groups.setdefault(name, []).append(row)
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="+", help="files written by compare_models.py")
    args = parser.parse_args()
    print(HEADER)
    for name, runs in read_runs(args.csv).items():
        print(table_row(name, runs))


if __name__ == "__main__":
    main()
