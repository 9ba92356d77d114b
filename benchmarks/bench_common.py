"""Plumbing shared by the benchmark scripts (``speed.py``, ``scaling.py``,
``compare_models.py``, ``summarise.py``); nothing here measures a model.

- child processes: :func:`run_child` runs ``<script> --child <spec JSON>`` in a
  fresh interpreter and reads back the JSON result the child wrote with
  :func:`write_child_result`; :func:`read_child_spec` is the child's side.
- the child's figures: :func:`peak_rss_mib`, :func:`set_torch_threads`.
- report lines: :func:`versions_line`, :func:`cpu_line`, :func:`ram_line`,
  :func:`gpu_line`, :func:`load_average`.
- files and options: :func:`write_csv`, :func:`read_csv`, :func:`parse_overrides`.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

#: The spec key that tells a child where to write its result JSON.
RESULT_KEY = "result_path"

#: (label, distribution) of the packages a report names.
PACKAGES = [
    ("torch", "torch"),
    ("recbole", "recbole"),
    ("transformers", "transformers"),
    ("peft", "peft"),
    ("open_clip", "open_clip_torch"),
    ("numpy", "numpy"),
]
#: The packages every model of this plugin runs on.
CORE_PACKAGES = PACKAGES[:4]


# ---- child processes ---------------------------------------------------------
@dataclass
class ChildRun:
    """What a child process left: its result (None when it wrote none), the
    parent's wall seconds of the whole process, and whether it overran."""

    result: dict | None
    wall_s: float
    timed_out: bool


def run_child(
    script: str,
    spec: dict,
    timeout: float | None,
    *,
    log_path: str | None = None,
    cwd: str | None = None,
    check: bool = False,
) -> ChildRun:
    """Run ``python <script> --child <spec as JSON>`` and read back its result.

    The spec gains :data:`RESULT_KEY`, a path in a temporary folder where the
    child writes its result JSON (:func:`write_child_result`).

    Args:
        script (str): the benchmark script, which handles ``--child``.
        spec (dict): what the child needs, JSON-serialisable.
        timeout (float | None): seconds before the child is killed.
        log_path (str | None): file for the child's stdout and stderr (None:
            this process's own).
        cwd (str | None): the child's working folder (None: this one).
        check (bool): raise ``subprocess.CalledProcessError`` when the child
            fails and ``subprocess.TimeoutExpired`` when it overruns, instead
            of reporting them in the :class:`ChildRun`.
    """
    with tempfile.TemporaryDirectory() as tmp:
        spec = {**spec, RESULT_KEY: os.path.join(tmp, "result.json")}
        command = [sys.executable, os.path.abspath(script), "--child", json.dumps(spec)]
        start = time.perf_counter()
        timed_out = False
        try:
            _call(command, timeout, log_path, cwd, check)
        except subprocess.TimeoutExpired:
            if check:
                raise
            timed_out = True
        wall_s = time.perf_counter() - start
        result = None
        if os.path.exists(spec[RESULT_KEY]):
            with open(spec[RESULT_KEY], encoding="utf-8") as handle:
                result = json.load(handle)
    return ChildRun(result, wall_s, timed_out)


def _call(command: list[str], timeout, log_path: str | None, cwd: str | None, check: bool):
    """``subprocess.run`` with the output to ``log_path`` when there is one."""
    if log_path is None:
        return subprocess.run(command, cwd=cwd, timeout=timeout, check=check)
    with open(log_path, "w") as log:
        return subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, timeout=timeout, check=check
        )


def read_child_spec(spec_json: str) -> dict:
    """The spec a parent passed with ``--child``. Empties ``sys.argv`` past the
    script, where RecBole's ``Config`` would look for ``--key=value`` settings."""
    sys.argv = sys.argv[:1]
    return json.loads(spec_json)


def write_child_result(spec: dict, result: dict) -> None:
    """Write ``result`` where :func:`run_child` reads it back."""
    with open(spec[RESULT_KEY], "w", encoding="utf-8") as handle:
        json.dump(result, handle)


def last_line(path: str) -> str:
    """The last non-empty line of a text file, e.g. a child's log ('' when none)."""
    try:
        with open(path, errors="replace") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


# ---- a child's figures -------------------------------------------------------
def peak_rss_mib() -> float:
    """This process's peak resident set size (``ru_maxrss`` is KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def set_torch_threads(threads: int | None) -> int:
    """Give torch ``threads`` intra-op threads (0 or None: keep torch's default);
    the number it then uses."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# ---- report lines ------------------------------------------------------------
def package_version(dist: str) -> str:
    """A distribution's version; torch's own string, which names its build
    (``+cu130``, ``+cpu``) where the distribution metadata may not."""
    from importlib import metadata

    if dist == "torch":
        import torch

        return torch.__version__
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions_line(packages: list[tuple[str, str]] = PACKAGES) -> str:
    """``python 3.11.7, torch 2.1.0, ...``: Python and each of ``packages``."""
    parts = [f"python {platform.python_version()}"]
    parts += [f"{label} {package_version(dist)}" for label, dist in packages]
    return ", ".join(parts)


def _proc_field(path: str, key: str) -> str:
    """The value of the first ``key: value`` line of a /proc file ('?' when none)."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def cpu_line() -> str:
    """``<CPU model>, <n> cores``."""
    cpu = _proc_field("/proc/cpuinfo", "model name")
    if cpu == "?":
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores"


def ram_line() -> str:
    """``<total> GiB RAM`` (``RAM ?`` where /proc/meminfo is missing)."""
    ram_kib = _proc_field("/proc/meminfo", "MemTotal").split()[0]
    return f"{int(ram_kib) / 1024 ** 2:.1f} GiB RAM" if ram_kib.isdigit() else "RAM ?"


def gpu_line() -> str:
    """``GPU <name>`` of the first CUDA device, or ``no GPU``."""
    import torch

    return f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"


def load_average() -> str:
    """The 1-minute load average: above the core count, other work shared the CPU."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"


# ---- files and options -------------------------------------------------------
def write_csv(
    path: str, rows: list[dict], columns: list[str], float_digits: int | None = None
) -> None:
    """Write ``rows`` as a CSV of ``columns`` (other keys ignored, None empty),
    floats rounded to ``float_digits`` decimals where given."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(row.get(k), float_digits) for k in columns})


def _csv_cell(value, float_digits: int | None):
    if value is None:
        return ""
    if float_digits is not None and isinstance(value, float):
        return round(value, float_digits)
    return value


def parse_cell(value: str):
    """A CSV cell as None (empty or ``None``), bool, int, float, or the string."""
    if value in ("", "None"):
        return None
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def read_csv(path: str) -> list[dict]:
    """Rows of a CSV file, every cell parsed by :func:`parse_cell`."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: parse_cell(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def parse_overrides(pairs: list[str]) -> dict:
    """``--set`` strings ``key=value`` as a dict, the values parsed as YAML."""
    import yaml

    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        parsed[key] = yaml.safe_load(value)
    return parsed


# ---- data ----------------------------------------------------------------------
def ensure_synthetic_dataset(
    folder: str, name: str, n_items: int, n_users: int, seed: int = 0, image_size: int = 64
) -> float | None:
    """Generate the synthetic dataset ``folder`` unless one made with these
    settings is there (its ``stats.json`` says so).

    Returns:
        float | None: generation seconds; None when the existing one was reused.
    """
    wanted = {"name": name, "n_items": n_items, "n_users": n_users, "seed": seed, "image_size": image_size}
    try:
        with open(os.path.join(folder, "stats.json"), encoding="utf-8") as handle:
            stats = json.load(handle)
        if all(stats.get(key) == value for key, value in wanted.items()):
            return None
    except (OSError, ValueError):
        pass
    from recbole_perpeft.data.synthetic import make_synthetic_dataset

    print(f"generating {folder} ({n_items} items, {n_users} users)", flush=True)
    start = time.perf_counter()
    make_synthetic_dataset(
        folder, name=name, n_items=n_items, n_users=n_users, image_size=image_size, seed=seed
    )
    return time.perf_counter() - start
