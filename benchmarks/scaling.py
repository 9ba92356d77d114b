"""Scaling of PerPEFT's speed with the catalogue size and the number of groups.

Two sweeps over the SYNTHETIC multimodal dataset (``dataset/SYNTHETIC.md``),
PerPEFT + LoRA on the randomly initialised tiny CLIP of
``benchmarks/configs/synthetic_tiny_clip.yaml``, one stage-3 epoch after a
0-epoch stage 1 (grouping then runs on the untrained model: a speed run, not a
quality run):

- items: catalogues of ``--items`` items (default 1k, 10k, 100k) at
  ``--groups-for-items`` groups (default 4);
- groups: ``--groups`` groups (default 1, 2, 4, 8, 16) on the catalogue of
  ``--groups-at-items`` items (default 10k).

Every dataset has the same ``--users`` users (default 1000), so a training
epoch sees the same sequences whatever the catalogue. Datasets are generated
once into ``dataset/scale_<n>`` (``scale_1k``, ``scale_10k``, ...; a
``_u<users>`` suffix for a non-default user count) with a fixed seed and
reused while their ``stats.json`` matches.

Each point runs in a fresh subprocess (``--child``), so its peak RSS is its
own. It records the stage-3 training epoch seconds, training sequences/s,
distinct items encoded/s in training steps, and a full-ranking evaluation of
the test users with every group's module, after training, with the catalogue
cache dropped: catalogue encoding (``catalogue_vectors(g)`` for every group)
and scoring (RecBole's ``evaluate`` reusing those vectors) timed apart.

Expected shape: the training epoch is flat in the number of groups (every
user is one example per epoch whatever the grouping) and in the catalogue
(only the items of a batch are encoded); evaluation grows as groups x items
(each group's module encodes the whole catalogue). The fitted log-log slopes
test this:

- (a) train epoch s vs n_groups (expect ~0),
- (b) catalogue encoding s vs n_groups x items (expect ~1),
- (c) evaluation s (encoding + scoring) vs n_groups x items (expect <= 1:
  scoring grows with items only),
- (d) train epoch s vs items (expect ~0).

Training time runs through RecBole's trainer with no validation data, so no
validation epoch runs; stage 2 (``grouping_s``) encodes the catalogue once
with the untrained global module and runs k-means. Torch runs one thread per
point by default (``--threads``): on a 2-core machine shared with other jobs,
torch's default of 2 threads was up to 10x slower and erratic (OpenMP
threads competing for the cores), and the tiny model gains little from a
second thread.

Outputs in ``--out`` (default ``benchmarks/results``): ``scaling.csv`` (one row
per point), ``scaling.md`` (table, fitted exponents, machine and package
versions) and ``scaling.png`` (three log-log panels with the fitted lines;
needs matplotlib, an optional benchmark dependency).

Usage::

    python benchmarks/scaling.py                      # the full sweep, 7 points
    python benchmarks/scaling.py --items 300 1000 --groups 1 2 4 \\
        --groups-at-items 300 --users 150             # a smoke run, ~70 s
    python benchmarks/scaling.py --plot-only          # re-plot from the CSV
    python benchmarks/scaling.py --set train_batch_size=32 encode_batch_size=512

Time of the full default sweep on the 2-core development machine (AMD EPYC,
torch 2.14.1, no GPU, one torch thread, other jobs running), from points
measured at 1k, 10k (1, 4 and 16 groups) and 100k (1 group) items:

- a point costs ~11 s of process start-up and imports, ~6-13 s of data and
  model building, a ~4 s training epoch (1000 users, whatever the catalogue
  or grouping), ~1.6 s of stage 2 per 10k items, and evaluation encoding at
  ~5000 items/s per group (1.75 s for 10k items and 1 group, 31 s for 10k x
  16, 16 s for 100k x 1);
- points: 1k x 4 ~20 s; 10k x 1, 2, 4, 8, 16: ~25, 28, 33, 45, 60 s;
  100k x 4: ~2 min;
- total: ~6 min with the datasets and image stores in place; the first run
  adds ~1 min to generate ``scale_100k`` and ~45 s to build its image store
  (10k: 5 s + 5 s), so ~8 min, and up to ~1.5x that when the machine is busy.
  Peak RSS: ~1.1 GiB at 1k items, ~1.3 GiB at 10k, ~2 GiB at 100k.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import bench_common as common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "benchmarks", "configs", "synthetic_tiny_clip.yaml")
DATA_DIR = os.path.join(ROOT, "dataset")
MODEL = "PerPEFT"
DEFAULT_USERS = 1000
#: Generator settings; the same ones always give the same files.
GENERATOR_SEED = 0
IMAGE_SIZE = 32  # the tiny CLIP's input side: the image store copies pixels as they are
#: Keys every point sets: a 0-epoch stage 1 and one stage-3 epoch, no progress bars.
POINT_CONFIG = {"global_epochs": 0, "epochs": 1, "show_progress": False}

FIELDS = [
    "sweep",
    "items",
    "groups",
    "users",
    "threads",
    "global_epochs",
    "epochs",
    "train_users",
    "test_users",
    "dataset_s",
    "model_build_s",
    "store_built",
    "store_build_s",
    "grouping_s",
    "train_epoch_s",
    "train_seq_per_s",
    "encoded_items",
    "encoded_items_per_s",
    "encode_s",
    "score_s",
    "eval_s",
    "peak_rss_mib",
    "wall_s",
]


# ---- datasets ----------------------------------------------------------------
def dataset_name(n_items: int, n_users: int) -> str:
    """``scale_1k``, ``scale_10k``, ``scale_300``; ``_u<n>`` for non-default users."""
    size = f"{n_items // 1000}k" if n_items % 1000 == 0 else str(n_items)
    suffix = "" if n_users == DEFAULT_USERS else f"_u{n_users}"
    return f"scale_{size}{suffix}"


def ensure_dataset(n_items: int, n_users: int) -> tuple[str, float | None]:
    """Generate ``dataset/<name>`` unless a matching one is there.

    Returns:
        tuple[str, float | None]: the dataset name and the generation seconds
        (None when an existing dataset was reused).
    """
    name = dataset_name(n_items, n_users)
    seconds = common.ensure_synthetic_dataset(
        os.path.join(DATA_DIR, name), name, n_items, n_users, GENERATOR_SEED, IMAGE_SIZE
    )
    return name, seconds


# ---- one point (child process) -----------------------------------------------
def _store_build_seconds(store) -> float | None:
    """Seconds the image store's build took, if this process built it."""
    if store is None or not store.rebuilt:
        return None
    with open(store.path[: -len(".npy")] + ".json", encoding="utf-8") as f:
        return json.load(f).get("build_seconds")


def build_point(spec: dict):
    """Config, data, model and trainer of one point, timed.

    The steps of ``quick_start.prepare_run`` (less its logger), with data and
    model timed apart for the ``dataset_s`` and ``model_build_s`` columns.

    Returns:
        tuple: ``(train_data, test_data, model, trainer, seconds)``, ``seconds``
        holding ``dataset_s`` (RecBole's data preparation) and ``model_build_s``
        (encoder, tokenised texts, image store built or reused, PEFT bank).
    """
    from recbole.utils import init_seed

    from recbole_perpeft.quick_start import build_config, check_groups, create_data
    from recbole_perpeft.utils import get_model, get_trainer

    config_dict = {**POINT_CONFIG, "n_groups": spec["groups"], **spec["overrides"]}
    config = build_config(MODEL, spec["dataset"], spec["config_files"], config_dict)
    init_seed(config["seed"], config["reproducibility"])
    start = time.perf_counter()
    _, train_data, _, test_data = create_data(config)
    check_groups(config, train_data)
    dataset_s = time.perf_counter() - start

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    start = time.perf_counter()
    model = get_model(MODEL)(config, train_data.dataset).to(config["device"])
    model_build_s = time.perf_counter() - start
    trainer = get_trainer(config["MODEL_TYPE"], MODEL)(config, model)
    seconds = {"dataset_s": dataset_s, "model_build_s": model_build_s}
    return train_data, test_data, model, trainer, seconds


def time_training(trainer, train_data) -> dict:
    """Run all of PerPEFT's stages without validation data; their seconds.

    Returns:
        dict: ``train_epoch_s`` (median stage-3 epoch), ``train_s`` (every
        training epoch of every stage) and ``grouping_s`` (the rest of ``fit``:
        stage 2, the user representations and k-means).
    """
    start = time.perf_counter()
    trainer.fit(train_data, None, verbose=False, saved=False, show_progress=False)
    fit_s = time.perf_counter() - start
    train_s = sum(sum(stage["train"]) for stage in trainer.timings.values())
    return {
        "train_epoch_s": statistics.median(trainer.timings["stage3"]["train"]),
        "train_s": train_s,
        "grouping_s": fit_s - train_s,
    }


def measure_point(spec: dict) -> dict:
    """Build, train and evaluate one point; its CSV row (less ``sweep``, ``wall_s``)."""
    from speed_probes import encode_then_score

    from recbole_perpeft.data.user_sequences import UserSequences

    threads = common.set_torch_threads(spec.get("threads"))
    train_data, test_data, model, trainer, built = build_point(spec)
    trained = time_training(trainer, train_data)
    # the catalogue cache dropped: every group's catalogue, then the scoring
    encode_s, score_s = encode_then_score(trainer, test_data)
    rss_mib = common.peak_rss_mib()
    store = model.content.image_store
    train_users = len(UserSequences(train_data.dataset).train_users)  # sequences per epoch
    return {
        "items": spec["items"],
        "groups": spec["groups"],
        "users": spec["users"],
        "threads": threads,
        "global_epochs": trainer.config["global_epochs"],
        "epochs": trainer.config["epochs"],
        "train_users": train_users,
        "test_users": len(test_data.dataset),
        "dataset_s": round(built["dataset_s"], 2),
        "model_build_s": round(built["model_build_s"], 2),
        "store_built": bool(store is not None and store.rebuilt),
        "store_build_s": _store_build_seconds(store),
        "grouping_s": round(trained["grouping_s"], 2),
        "train_epoch_s": round(trained["train_epoch_s"], 3),
        "train_seq_per_s": round(train_users / trained["train_epoch_s"], 1),
        "encoded_items": int(model.encoded_items),
        "encoded_items_per_s": round(model.encoded_items / trained["train_s"], 1),
        "encode_s": round(encode_s, 3),
        "score_s": round(score_s, 3),
        "eval_s": round(encode_s + score_s, 3),
        "peak_rss_mib": round(rss_mib, 1),
    }


def child_main(spec_json: str) -> int:
    """Measure the point described by ``spec_json``; write its row for the parent."""
    spec = common.read_child_spec(spec_json)
    common.write_child_result(spec, measure_point(spec))
    return 0


# ---- the sweep (parent process) ----------------------------------------------
def plan_points(
    items: list[int], groups: list[int], groups_at_items: int, groups_for_items: int
) -> dict[tuple[int, int], str]:
    """(items, groups) -> sweep ("items", "groups" or "items+groups") of every point,
    each once: the items sweep first, then the groups sweep."""
    points: dict[tuple[int, int], list[str]] = {}
    for n_items in items:
        points.setdefault((n_items, groups_for_items), []).append("items")
    for n_groups in groups:
        points.setdefault((groups_at_items, n_groups), []).append("groups")
    return {point: "+".join(sweeps) for point, sweeps in points.items()}


def run_point(spec: dict, timeout: float | None) -> dict:
    """Run one point in a fresh interpreter; its CSV row, with the process's wall
    seconds (imports and start-up included) as ``wall_s``. A point that fails
    or overruns stops the sweep."""
    child = common.run_child(__file__, spec, timeout, cwd=ROOT, check=True)
    return {**child.result, "wall_s": round(child.wall_s, 1)}


# ---- fits ----------------------------------------------------------------------
#: name -> (description, x of a row, y of a row, which rows, expected slope)
FITS = {
    "a": ("train epoch s vs n_groups", "groups", "train_epoch_s", "groups sweep", "~0"),
    "b": ("catalogue encoding s vs n_groups x items", "load", "encode_s", "all points", "~1"),
    "c": ("evaluation s vs n_groups x items", "load", "eval_s", "all points", "<=1"),
    "d": ("train epoch s vs items", "items", "train_epoch_s", "items sweep", "~0"),
}


def _x(row: dict, key: str) -> float:
    return row["groups"] * row["items"] if key == "load" else row[key]


def in_sweep(row: dict, sweep: str) -> bool:
    return sweep in str(row["sweep"]).split("+")


def fit_rows(rows: list[dict], which: str) -> list[dict]:
    """The rows a fit uses: one sweep ("items sweep", "groups sweep"), or every point."""
    if which == "all points":
        return list(rows)
    return [r for r in rows if in_sweep(r, which.split()[0])]


def fit_slope(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """Least-squares (slope, intercept) of log10 y on log10 x; None under 2 distinct x."""
    import numpy as np

    if len(set(xs)) < 2:
        return None
    slope, intercept = np.polyfit(np.log10(xs), np.log10(ys), 1)
    return float(slope), float(intercept)


def fit_all(rows: list[dict]) -> dict:
    """name -> {description, x, y, rows, expected, slope, intercept, points}."""
    fits = {}
    for name, (description, x_key, y_key, which, expected) in FITS.items():
        chosen = fit_rows(rows, which)
        xs = [_x(r, x_key) for r in chosen]
        ys = [r[y_key] for r in chosen]
        fitted = fit_slope(xs, ys)
        fits[name] = {
            "description": description,
            "x": x_key,
            "y": y_key,
            "rows": which,
            "expected": expected,
            "slope": None if fitted is None else fitted[0],
            "intercept": None if fitted is None else fitted[1],
            "points": list(zip(xs, ys)),
        }
    return fits


def format_fits(fits: dict) -> list[str]:
    """One markdown bullet per fit: slope, expectation and points."""
    lines = []
    for name, fit in fits.items():
        slope = "n/a (<2 distinct x)" if fit["slope"] is None else f"{fit['slope']:.2f}"
        points = ", ".join(f"({x:g}, {y:.3g})" for x, y in fit["points"])
        lines.append(
            f"- ({name}) {fit['description']} [{fit['rows']}]: slope **{slope}** "
            f"(expected {fit['expected']}); points {points}"
        )
    return lines


# ---- outputs -------------------------------------------------------------------
TABLE_COLUMNS = [
    ("sweep", "sweep"),
    ("items", "items"),
    ("groups", "groups"),
    ("train epoch s", "train_epoch_s"),
    ("train seq/s", "train_seq_per_s"),
    ("items enc./s (train)", "encoded_items_per_s"),
    ("eval encode s", "encode_s"),
    ("eval score s", "score_s"),
    ("eval s", "eval_s"),
    ("test users", "test_users"),
    ("grouping s", "grouping_s"),
    ("model build s", "model_build_s"),
    ("store build s", "store_build_s"),
    ("peak RSS MiB", "peak_rss_mib"),
    ("point wall s", "wall_s"),
]


def _cell(value) -> str:
    return "" if value is None else str(value)


def markdown(rows: list[dict], fits: dict, note: str) -> str:
    """The report: points table, fitted exponents, machine."""
    head = "| " + " | ".join(title for title, _ in TABLE_COLUMNS) + " |"
    rule = "|:---|" + "|".join("---:" for _ in TABLE_COLUMNS[1:]) + "|"
    body = [
        "| " + " | ".join(_cell(r[key]) for _, key in TABLE_COLUMNS) + " |" for r in rows
    ]
    return "\n".join(
        [
            "# PerPEFT scaling (SYNTHETIC data, random tiny CLIP, LoRA)",
            "",
            note,
            "",
            head,
            rule,
            *body,
            "",
            "Fitted log-log slopes (least squares):",
            "",
            *format_fits(fits),
            "",
            f"Machine: {common.versions_line(common.CORE_PACKAGES)}; {common.cpu_line()}",
            "",
        ]
    )


def plot(fits: dict, path: str) -> None:
    """Three log-log panels of the fits' points and lines, saved as a PNG."""
    try:
        import matplotlib
    except ImportError as error:
        raise SystemExit(
            "scaling.py: the plot needs matplotlib, an optional benchmark dependency "
            "(pip install matplotlib); the CSV and markdown are written."
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    panels = [
        ("train epoch s", ["a"]),
        ("train epoch s", ["d"]),
        ("evaluation s", ["b", "c"]),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(14, 4.2))
    for axis, (ylabel, names) in zip(axes, panels):
        for name in names:
            _plot_fit(axis, name, fits[name])
        axis.set_ylabel(ylabel)
        axis.set_xlabel(_axis_name(fits[names[0]]["x"]))
        xs = sorted({x for name in names for x, _ in fits[name]["points"]})
        axis.set_xticks(xs, [_short(x) for x in xs])
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.grid(True, which="both", alpha=0.3)
        # at least two decades on y, so that a flat line also looks flat
        ys = [y for name in names for _, y in fits[name]["points"]]
        if ys:
            middle = (min(ys) * max(ys)) ** 0.5
            axis.set_ylim(min(min(ys) / 1.5, middle / 10), max(max(ys) * 1.5, middle * 10))
        axis.legend(fontsize=7)
    figure.suptitle("PerPEFT scaling (SYNTHETIC data, random tiny CLIP, LoRA)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plot_fit(axis, name: str, fit: dict) -> None:
    """One fit's points and, where there is one, its fitted line."""
    import numpy as np

    if not fit["points"]:
        return
    xs, ys = zip(*fit["points"])
    dots = axis.loglog(xs, ys, "o", label=f"({name}) {fit['y']}")[0]
    if fit["slope"] is not None:
        grid = np.geomspace(min(xs), max(xs), 50)
        line = 10 ** fit["intercept"] * grid ** fit["slope"]
        label = f"fit: slope {fit['slope']:.2f}"
        axis.loglog(grid, line, "-", color=dots.get_color(), label=label)


def _short(value: float) -> str:
    """1000 -> '1k', 2500000 -> '2.5M', 16 -> '16'."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def _axis_name(key: str) -> str:
    return {"load": "n_groups x items", "groups": "n_groups", "items": "items"}[key]


def _join(values: set) -> str:
    return ", ".join(str(v) for v in sorted(values)) or "none"


def write_reports(rows: list[dict], args: argparse.Namespace) -> None:
    """Print the fits; write the markdown and the PNG next to the CSV."""
    fits = fit_all(rows)
    groups_at_items = _join({r["items"] for r in rows if in_sweep(r, "groups")})
    groups_for_items = _join({r["groups"] for r in rows if in_sweep(r, "items")})
    print("\n".join(format_fits(fits)))
    files = ", ".join(os.path.relpath(f, ROOT) for f in args.config_files)
    first = rows[0]
    wall = sum(r["wall_s"] for r in rows)
    note = (
        f"{MODEL} + LoRA ({files}), {first['global_epochs']} stage-1 epoch(s), "
        f"{first['epochs']} stage-3 epoch(s), {first['users']} users, "
        f"{first['threads']} torch thread(s) per point; items sweep at "
        f"{groups_for_items} groups, groups sweep at {groups_at_items} items; "
        f"{len(rows)} points, {wall:.0f} s in all. Evaluation: every test user, full "
        "ranking, catalogue cache cold (encoding = every group's catalogue vectors), "
        "then scoring. Peak RSS counts the pages of the memory-mapped image store "
        "that were read."
    )
    md_path = os.path.join(args.out, "scaling.md")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(markdown(rows, fits, note))
    print(f"wrote {md_path}")
    png_path = os.path.join(args.out, "scaling.png")
    plot(fits, png_path)
    print(f"wrote {png_path}")


# ---- command line ----------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", nargs="+", type=int, default=[1000, 10000, 100000])
    parser.add_argument("--groups", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="users per dataset")
    parser.add_argument(
        "--groups-at-items", type=int, default=10000, help="catalogue of the groups sweep"
    )
    parser.add_argument(
        "--groups-for-items", type=int, default=4, help="n_groups of the items sweep"
    )
    parser.add_argument("--config-files", nargs="*", default=[DEFAULT_CONFIG])
    parser.add_argument(
        "--set", nargs="*", default=[], help="key=value config overrides (YAML values)"
    )
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per point (0: torch's default)"
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per point")
    parser.add_argument("--plot-only", action="store_true", help="re-plot from <out>/scaling.csv")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_sweep(args: argparse.Namespace) -> list[dict]:
    """Every point, in its own process; the CSV is rewritten after each."""
    points = plan_points(args.items, args.groups, args.groups_at_items, args.groups_for_items)
    csv_path = os.path.join(args.out, "scaling.csv")
    rows = []
    for (n_items, n_groups), sweep in points.items():
        name, generated_s = ensure_dataset(n_items, args.users)
        if generated_s is not None:
            print(f"generated dataset/{name} in {generated_s:.1f} s", flush=True)
        spec = {
            "dataset": name,
            "items": n_items,
            "groups": n_groups,
            "users": args.users,
            "config_files": args.config_files,
            "overrides": common.parse_overrides(args.set),
            "threads": args.threads,
        }
        row = {"sweep": sweep, **run_point(spec, args.timeout)}
        rows.append(row)
        common.write_csv(csv_path, rows, FIELDS)
        print(
            f"items {n_items:>6}  groups {n_groups:>2}: train epoch "
            f"{row['train_epoch_s']:.2f} s, eval {row['eval_s']:.2f} s (encode "
            f"{row['encode_s']:.2f} + score {row['score_s']:.2f}), peak RSS "
            f"{row['peak_rss_mib']:.0f} MiB, point {row['wall_s']:.0f} s",
            flush=True,
        )
    print(f"wrote {csv_path}")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    os.makedirs(args.out, exist_ok=True)
    if args.plot_only:
        rows = common.read_csv(os.path.join(args.out, "scaling.csv"))
    else:
        start = time.perf_counter()
        rows = run_sweep(args)
        print(f"sweep: {len(rows)} points in {time.perf_counter() - start:.0f} s")
    write_reports(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
