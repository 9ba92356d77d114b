"""Test NDCG@20 / Hit@20 of SASRec, FrozenMM, GlobalPEFT and PerPEFT over seeds.

Every model runs through the same code as ``run_recbole_perpeft`` on the same
dataset, split and metrics. Writes ``<out>/compare_<dataset>[_<tag>].csv`` (one
row per run) and prints a markdown table of mean +- standard deviation over
seeds, with each run's wall time, for our models the mean training and
validation epoch time of the last stage and the trainable parameters of all
group modules as a percentage of the encoder's, and the machine and package
versions.

    python benchmarks/compare_models.py --dataset ml-100k --seeds 1 2 3 \\
        --config_files properties/quick_start_config/default_run.yaml
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import bench_common as common
from summarise import HEADER, table_row

from recbole_perpeft.quick_start import build_config, train_and_test

MODELS = ["SASRec", "FrozenMM", "GlobalPEFT", "PerPEFT"]


def versions() -> str:
    """Package versions, CPU, cores and torch's threads, one line."""
    import torch

    return (
        f"{common.versions_line(common.CORE_PACKAGES)}; {common.cpu_line()}, "
        f"{torch.get_num_threads()} torch threads"
    )


def stage_times(trainer) -> tuple[float | None, float | None]:
    """Mean training and validation epoch seconds of the trainer's last stage."""
    timings = getattr(trainer, "timings", None)
    if not timings:
        return None, None
    last = timings[list(timings)[-1]]
    train = statistics.mean(last["train"]) if last["train"] else None
    valid = statistics.mean(last["valid"]) if last["valid"] else None
    return train, valid


def trainable_percent(model) -> float | None:
    """Trainable parameters of all group modules, in % of the encoder's."""
    if not hasattr(model, "trainable_percent"):
        return None
    return model.trainable_percent(len(model.projectors))


def _rounded(value: float | None, digits: int) -> float | str:
    return "" if value is None else round(value, digits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--config_files", nargs="*", default=[])
    parser.add_argument("--set", nargs="*", default=[], help="key=value overrides (YAML values)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--tag", default="", help="names the variant: suffix of the CSV file and of the table's model"
    )
    args = parser.parse_args()

    overrides = common.parse_overrides(args.set)
    os.makedirs(args.out, exist_ok=True)
    suffix = f"_{args.tag}" if args.tag else ""
    path = os.path.join(args.out, f"compare_{args.dataset}{suffix}.csv")
    rows = []
    for model in args.models:
        for seed in args.seeds:
            config_dict = {"seed": seed, "show_progress": False, **overrides}
            start = time.time()
            config = build_config(model, args.dataset, args.config_files, config_dict)
            result, trainer = train_and_test(config)
            wall = time.time() - start
            test = result["test_result"]
            train_s, valid_s = stage_times(trainer)
            rows.append(
                {
                    "model": model,
                    "seed": seed,
                    "ndcg@20": float(test["ndcg@20"]),
                    "hit@20": float(test["hit@20"]),
                    "valid_ndcg@20": float(result["best_valid_score"]),
                    "wall_s": round(wall, 1),
                    "train_epoch_s": _rounded(train_s, 1),
                    "valid_epoch_s": _rounded(valid_s, 1),
                    "trainable_pct": _rounded(trainable_percent(trainer.model), 3),
                }
            )
            common.write_csv(path, rows, list(rows[0]))

    print(f"\n{args.dataset}, seeds {args.seeds}; {versions()}\n")
    print(HEADER)
    for model in args.models:
        name = f"{model} ({args.tag})" if args.tag else model
        print(table_row(name, [r for r in rows if r["model"] == model]))
    print(f"\nper-run rows: {path}")


if __name__ == "__main__":
    main()
