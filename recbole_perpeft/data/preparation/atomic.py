"""Shared writing of RecBole atomic files, statistics and whole output folders.

Every converter in this package builds its output in a temporary folder and
only moves it into place once everything has been written, so that a failure
never leaves a half-written dataset behind and never touches an existing one.
Overwriting replaces only the files a converter writes; other files in the
output folder, and any input file, are never deleted.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

logger = logging.getLogger(__name__)

INTER_HEADER = ("user_id:token", "item_id:token", "timestamp:float")
IMAGES_HEADER = ("item_id", "url")
FAILED_HEADER = ("item_id", "url", "reason")
TABLE1_HEADER = (
    "| dataset | users | items | avg. seq. length | interactions | density |"
)
FIRST_LINES_KEPT = 10

_WHITESPACE = re.compile(r"\s+")


class PreparationError(ValueError):
    """Raised when the input of a converter cannot be turned into a dataset."""


def clean_text(value: object) -> str:
    """Turn a raw metadata value into one line of text for an atomic file.

    Tabs, newlines and runs of other whitespace become single spaces, so the
    value can never break the tab-separated layout. Lists are joined with
    spaces; ``None`` becomes the empty string.

    Args:
        value (object): A string, a list of strings, a number or ``None``.

    Returns:
        str: The cleaned single-line text.
    """
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(clean_text(part) for part in value)
    return _WHITESPACE.sub(" ", str(value)).strip()


def check_token(value: str, what: str) -> str:
    """Check that an identifier can be written as a RecBole token and a filename.

    Args:
        value (str): The identifier.
        what (str): What the identifier is, for the error message.

    Returns:
        str: The identifier, unchanged.

    Raises:
        PreparationError: If it is empty, holds whitespace or a path separator,
            or starts with a dot.
    """
    if not value or _WHITESPACE.search(value) or "/" in value or "\\" in value:
        raise PreparationError(
            f"{what} {value!r} cannot be used as a RecBole token: it must be "
            "non-empty and hold no whitespace, '/' or '\\'"
        )
    if value.startswith("."):
        raise PreparationError(f"{what} {value!r} must not start with '.'")
    return value


@dataclass
class LineIssues:
    """Counts of input lines of one kind of problem, with the first line numbers.

    Attributes:
        count (int): How many lines had the problem.
        first_lines (list[int]): The first line numbers (1-based) that had it.
    """

    count: int = 0
    first_lines: list[int] = field(default_factory=list)

    def add(self, line_number: int) -> None:
        """Record one more line with the problem.

        Args:
            line_number (int): The 1-based number of the line.
        """
        self.count += 1
        if len(self.first_lines) < FIRST_LINES_KEPT:
            self.first_lines.append(line_number)

    def describe(self) -> str:
        """Describe the problem count for a log message.

        Returns:
            str: For example ``"3 (lines 4, 9, 12)"``.
        """
        shown = ", ".join(str(n) for n in self.first_lines)
        more = ", ..." if self.count > len(self.first_lines) else ""
        return f"{self.count} (lines {shown}{more})"


@dataclass
class ReadReport:
    """What was read from one input file, and what had to be skipped.

    Attributes:
        path (str): The file.
        lines (int): Non-blank lines seen.
        records (int): Records kept.
        malformed (LineIssues): Lines that were not a JSON object (or, for
            text inputs, not in the expected layout), or whose required field
            holds an unusable value (e.g. a timestamp ``1e30``); skipped.
        missing_fields (LineIssues): Records without a required field (absent,
            ``null`` or ``""``); skipped.
        non_utf8 (LineIssues): Lines with bytes that are not UTF-8; decoded with
            replacement characters and kept.
    """

    path: str
    lines: int = 0
    records: int = 0
    malformed: LineIssues = field(default_factory=LineIssues)
    missing_fields: LineIssues = field(default_factory=LineIssues)
    non_utf8: LineIssues = field(default_factory=LineIssues)

    def log_warnings(self) -> None:
        """Log one warning per kind of problem that occurred."""
        for label, issues in (
            ("malformed lines skipped", self.malformed),
            ("records missing required fields skipped", self.missing_fields),
            ("lines with non-UTF-8 bytes (decoded with replacement)", self.non_utf8),
        ):
            if issues.count:
                logger.warning("%s: %s: %s", self.path, label, issues.describe())

    def to_dict(self) -> dict[str, object]:
        """Return the report as plain data for ``stats.json``.

        Returns:
            dict[str, object]: The report.
        """
        return asdict(self)


@dataclass
class DatasetStats:
    """The statistics of a prepared dataset, as in Table 1 of the paper.

    Attributes:
        dataset (str): Dataset name.
        users (int): Number of users.
        items (int): Number of items.
        interactions (int): Number of interactions.
    """

    dataset: str
    users: int
    items: int
    interactions: int

    @property
    def avg_seq_length(self) -> float:
        """float: Interactions per user."""
        return self.interactions / self.users if self.users else 0.0

    @property
    def density(self) -> float:
        """float: Interactions divided by users times items."""
        cells = self.users * self.items
        return self.interactions / cells if cells else 0.0

    def table_row(self) -> str:
        """Format the statistics as a row of the paper's Table 1 (plus extras).

        Returns:
            str: For example ``"| arts | 24,511 | 18,884 | 9.43 | 231,079 | 0.0005 |"``.
        """
        return (
            f"| {self.dataset} | {self.users:,} | {self.items:,} | "
            f"{self.avg_seq_length:.2f} | {self.interactions:,} | "
            f"{self.density:.6f} |"
        )

    def to_dict(self) -> dict[str, object]:
        """Return the statistics as plain data for ``stats.json``.

        Returns:
            dict[str, object]: The statistics with derived values.
        """
        data: dict[str, object] = asdict(self)
        data["avg_seq_length"] = round(self.avg_seq_length, 4)
        data["density"] = self.density
        data["table1_row"] = self.table_row()
        return data


def compute_stats(
    name: str, users: Iterable[str], items: Iterable[str]
) -> DatasetStats:
    """Compute the statistics of a list of interactions.

    Args:
        name (str): Dataset name.
        users (Iterable[str]): User of each interaction.
        items (Iterable[str]): Item of each interaction, aligned with ``users``.

    Returns:
        DatasetStats: The statistics.
    """
    user_set: set[str] = set()
    item_set: set[str] = set()
    count = 0
    for user, item in zip(users, items, strict=True):
        user_set.add(user)
        item_set.add(item)
        count += 1
    return DatasetStats(name, len(user_set), len(item_set), count)


def _tsv_writer(handle: TextIO) -> Any:
    """Return a csv writer for RecBole's tab-separated layout.

    Args:
        handle (TextIO): An open text file.

    Returns:
        Any: The ``csv.writer`` object.
    """
    return csv.writer(
        handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n"
    )


def write_inter(path: Path, rows: Iterable[tuple[str, str, str]]) -> int:
    """Write a RecBole ``.inter`` file.

    Args:
        path (Path): Output file.
        rows (Iterable[tuple[str, str, str]]): ``(user, item, timestamp)`` rows,
            the timestamp already formatted as a decimal number.

    Returns:
        int: Number of rows written.
    """
    count = 0
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = _tsv_writer(handle)
        writer.writerow(INTER_HEADER)
        for row in rows:
            writer.writerow(row)
            count += 1
    return count


def write_item(
    path: Path, texts: Mapping[str, Sequence[str]], fields: Sequence[str]
) -> int:
    """Write a RecBole ``.item`` file with one ``token_seq`` column per text field.

    Text values are cleaned with :func:`clean_text`. A value holding a double
    quote is written in CSV quoting (``"..."`` with inner quotes doubled), which
    is how pandas, and so RecBole, reads it back unchanged.

    Args:
        path (Path): Output file.
        texts (Mapping[str, Sequence[str]]): Item id -> one text per field.
        fields (Sequence[str]): Names of the text fields, in column order.

    Returns:
        int: Number of items written.
    """
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = _tsv_writer(handle)
        writer.writerow(["item_id:token", *(f"{name}:token_seq" for name in fields)])
        for item_id, values in texts.items():
            writer.writerow([item_id, *(clean_text(value) for value in values)])
    return len(texts)


def write_tsv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> int:
    """Write a plain tab-separated file with a header line.

    Args:
        path (Path): Output file.
        header (Sequence[str]): Column names.
        rows (Iterable[Sequence[str]]): Rows; values must hold no tab or newline.

    Returns:
        int: Number of rows written.
    """
    count = 0
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = _tsv_writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            count += 1
    return count


def write_json(path: Path, data: Mapping[str, object]) -> None:
    """Write JSON with a trailing newline.

    Args:
        path (Path): Output file.
        data (Mapping[str, object]): JSON-serialisable data.
    """
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def _umask() -> int:
    """Return the process umask without changing it.

    Returns:
        int: The umask.
    """
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_path(out: Path | str) -> Path:
    """Return the output folder as an absolute path, without following links.

    ``.`` and ``..`` are resolved, so ``--out .`` names the current folder
    (whose name is the dataset name) instead of the empty string.

    Args:
        out (Path | str): The folder as given.

    Returns:
        Path: The absolute folder.
    """
    return Path(os.path.abspath(out))


def check_inputs_outside(out: Path, inputs: Mapping[str, Path]) -> None:
    """Refuse an output folder that holds (or is) one of the input paths.

    Args:
        out (Path): The output folder.
        inputs (Mapping[str, Path]): Option name (``--reviews``) -> input path.

    Raises:
        PreparationError: If an input is ``out`` itself or lies inside it.
    """
    real_out = Path(out).resolve()
    for option, path in inputs.items():
        real = Path(path).resolve()
        if real == real_out or real.is_relative_to(real_out):
            raise PreparationError(
                f"{option} {str(path)!r} lies inside --out {str(output_path(out))!r}; "
                "--out must be a folder that holds no input. Choose another --out "
                "or move the input out of it (nothing was written or deleted)"
            )


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Fail early if the output folder exists and may not be written into.

    Args:
        out (Path): The output folder.
        overwrite (bool): Whether files in an existing non-empty folder may be
            replaced (only those this step writes; see :func:`atomic_directory`).

    Raises:
        FileExistsError: If ``out`` exists, is not empty and ``overwrite`` is off,
            or exists and is not a folder.
    """
    shown = str(output_path(out))
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {shown!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--out {shown!r} already exists and is not empty; pass --overwrite "
            "to replace the files this step writes (other files are kept)"
        )


def _plan_moves(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """List the moves that put the content of ``src`` into ``dst``.

    A file (or link) replaces the path of the same name; a folder is moved as a
    whole if ``dst`` has no such entry, else merged into it entry by entry.

    Args:
        src (Path): The freshly written folder.
        dst (Path): The existing output folder.

    Returns:
        list[tuple[Path, Path]]: ``(source, target)`` pairs, in a stable order.

    Raises:
        FileExistsError: If a file would replace a folder or a folder a file.
    """
    moves: list[tuple[Path, Path]] = []
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink():
            if not os.path.lexists(target):
                moves.append((entry, target))
            elif target.is_dir():
                moves.extend(_plan_moves(entry, target))
            else:
                raise FileExistsError(
                    f"--out: {str(target)!r} is not a folder, but this step writes "
                    "a folder of that name; move it away and run again (nothing "
                    "was changed)"
                )
        elif target.is_dir() and not target.is_symlink():
            raise FileExistsError(
                f"--out: {str(target)!r} is a folder, but this step writes a file "
                "of that name; move it away and run again (nothing was changed)"
            )
        else:
            moves.append((entry, target))
    return moves


def _remove(path: Path) -> None:
    """Delete a file, a link or a whole folder.

    Args:
        path (Path): The path.
    """
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _merge_into(src: Path, dst: Path) -> None:
    """Move the content of ``src`` into ``dst``, replacing same-named files.

    Every replaced path is first renamed to a hidden backup next to it; if a
    move fails, the moves done so far are undone and the backups renamed back,
    so ``dst`` is left as it was. Backups are deleted once all moves are done.

    Args:
        src (Path): The freshly written folder.
        dst (Path): The existing output folder.

    Raises:
        FileExistsError: See :func:`_plan_moves` (before anything is moved).
    """
    moves = _plan_moves(src, dst)
    journal: list[tuple[Path, Path | None]] = []
    tag = uuid.uuid4().hex[:8]
    try:
        for source, target in moves:
            backup = None
            if os.path.lexists(target):
                backup = target.with_name(f".{target.name}.old-{tag}")
                os.rename(target, backup)
            journal.append((target, backup))
            os.replace(source, target)
    except BaseException:
        for target, backup in reversed(journal):
            if os.path.lexists(target):
                _remove(target)
            if backup is not None:
                os.rename(backup, target)
        raise
    for _, backup in journal:
        if backup is not None:
            _remove(backup)


@contextlib.contextmanager
def atomic_directory(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a dataset in a temporary folder and move it into place at the end.

    Without an existing ``out`` the temporary folder is a hidden sibling that
    is renamed to ``out``. With an existing ``out`` (``overwrite``) it is a
    hidden folder inside ``out``, and only what was written into it is moved
    over: each file replaces the file of the same name, a folder is merged
    file by file. Other files in ``out`` (inputs, a downloaded ``images/``,
    notes) are never touched. On any error (or interrupt) inside the ``with``
    block, or while moving, the temporary folder is removed and ``out`` is
    left exactly as it was.

    Args:
        out (Path): The final folder.
        overwrite (bool): Whether files in an existing non-empty folder may be
            replaced.

    Yields:
        Path: The temporary folder to write into.

    Raises:
        FileExistsError: See :func:`check_output_dir` and :func:`_plan_moves`.
    """
    out = output_path(out)
    check_output_dir(out, overwrite)
    if out.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".prepare.tmp-", dir=out.resolve()))
        try:
            yield tmp
            _merge_into(tmp, out.resolve())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            yield tmp
            os.chmod(tmp, 0o777 & ~_umask())
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("wrote %s", out)
