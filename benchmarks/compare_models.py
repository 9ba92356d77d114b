"""Test NDCG@20 / Hit@20 of SASRec, FrozenMM, GlobalPEFT and PerPEFT over seeds.

Every model runs through ``run_recbole_perpeft`` on the same dataset, split and
metrics. Writes ``<out>/compare_<dataset>.csv`` (one row per run) and prints a
markdown table of mean +- standard deviation over seeds, with each run's wall
time and the machine and package versions.

    python benchmarks/compare_models.py --dataset ml-100k --seeds 1 2 3 \\
        --config_files properties/quick_start_config/default_run.yaml
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import time

from recbole_perpeft.quick_start import run_recbole_perpeft

MODELS = ["SASRec", "FrozenMM", "GlobalPEFT", "PerPEFT"]


def versions() -> str:
    import peft
    import recbole
    import torch
    import transformers

    return (
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"recbole {recbole.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--config_files", nargs="*", default=[])
    parser.add_argument("--set", nargs="*", default=[], help="key=value overrides (YAML values)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="", help="suffix of the CSV file name")
    args = parser.parse_args()

    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    os.makedirs(args.out, exist_ok=True)
    suffix = f"_{args.tag}" if args.tag else ""
    path = os.path.join(args.out, f"compare_{args.dataset}{suffix}.csv")
    rows = []
    for model in args.models:
        for seed in args.seeds:
            config = {"seed": seed, "show_progress": False, **overrides}
            start = time.time()
            result = run_recbole_perpeft(model, args.dataset, args.config_files, config)
            wall = time.time() - start
            test = result["test_result"]
            rows.append(
                {
                    "model": model,
                    "seed": seed,
                    "ndcg@20": float(test["ndcg@20"]),
                    "hit@20": float(test["hit@20"]),
                    "valid_ndcg@20": float(result["best_valid_score"]),
                    "wall_s": round(wall, 1),
                }
            )
            with open(path, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)

    print(f"\n{args.dataset}, seeds {args.seeds}; {versions()}\n")
    print("| model | test NDCG@20 (x100) | test Hit@20 (x100) | wall time per run (s) |")
    print("|---|---|---|---|")
    for model in args.models:
        runs = [r for r in rows if r["model"] == model]

        def fmt(key: str) -> str:
            values = [100 * r[key] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.2f} ± {spread:.2f}"

        wall = statistics.mean(r["wall_s"] for r in runs)
        print(f"| {model} | {fmt('ndcg@20')} | {fmt('hit@20')} | {wall:.0f} |")
    print(f"\nper-run rows: {path}")


if __name__ == "__main__":
    main()
