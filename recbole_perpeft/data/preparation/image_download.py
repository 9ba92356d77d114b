"""Download the item images listed in a dataset's ``images.tsv``.

Each URL is fetched into ``<dataset>/images/<item_id>.<ext>`` by a bounded pool
of threads, with a timeout per attempt, retries with exponential backoff for
errors that may pass (network errors, timeouts, HTTP 408/429/5xx, cut-off
bodies), a check that the bytes decode as an image, and an atomic write (a
temporary file in the same folder, then ``os.replace``). Images that are
already there and decode are skipped, so an interrupted run can be resumed.
Failures are written to ``<dataset>/images_failed.tsv`` and never stop the run.

Ctrl-C cancels the downloads not yet started and the retries still to come;
the ones in progress end within ``timeout`` seconds, the images written so far
are kept, and :class:`DownloadInterrupted` is raised.
"""

from __future__ import annotations

import csv
import http.client
import io
import logging
import os
import re
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from recbole_perpeft.data.preparation.atomic import (
    FAILED_HEADER,
    IMAGES_HEADER,
    LineIssues,
    PreparationError,
    check_token,
    write_tsv,
)

logger = logging.getLogger(__name__)

CONTENT_TYPE_EXT = {
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/pjpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/bmp": "bmp",
    "image/tiff": "tif",
}
URL_EXT = {"jpg": "jpg", "jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif"}
KNOWN_EXTS = ("jpg", "png", "webp", "gif", "bmp", "tif")
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "recbole-perpeft-image-download/0.1"
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


class _Permanent(Exception):
    """A failure that another attempt will not fix."""


class _Transient(Exception):
    """A failure that another attempt may fix."""


@dataclass
class DownloadSummary:
    """The outcome of a download run.

    Attributes:
        downloaded (int): Images fetched and written in this run.
        skipped (int): Images already present and decodable.
        failed (int): Images that could not be fetched; see ``failures``.
        failures (list[tuple[str, str, str]]): ``(item_id, url, reason)``.
        bad_lines (LineIssues): Lines of ``images.tsv`` that were not
            ``item_id<TAB>url`` with both set; skipped.
    """

    downloaded: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    bad_lines: LineIssues = field(default_factory=LineIssues)

    def line(self) -> str:
        """Format the summary as one line.

        Returns:
            str: For example ``"downloaded 10, skipped (already there) 2, failed
            1"``, followed by ``", bad lines in images.tsv N"`` if there were any.
        """
        text = (
            f"downloaded {self.downloaded}, skipped (already there) {self.skipped}, "
            f"failed {self.failed}"
        )
        if self.bad_lines.count:
            text += f", bad lines in images.tsv {self.bad_lines.count}"
        return text


class DownloadInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`download_images`, raised once the pool has stopped.

    It is a :class:`KeyboardInterrupt`, so a script that calls
    :func:`download_images` still stops.

    Attributes:
        summary (DownloadSummary): What was done before the pool stopped.
        not_done (int): Images neither downloaded, skipped nor failed.
    """

    def __init__(self, summary: DownloadSummary, not_done: int) -> None:
        """Keep the partial outcome.

        Args:
            summary (DownloadSummary): What was done before the pool stopped.
            not_done (int): Images neither downloaded, skipped nor failed.
        """
        super().__init__(summary, not_done)
        self.summary = summary
        self.not_done = not_done

    def line(self) -> str:
        """Format the outcome and how to resume as one line.

        Returns:
            str: For example ``"interrupted: downloaded 3, ..., not done 97;
            ... run the same command again to resume"``.
        """
        return (
            f"interrupted: {self.summary.line()}, not done {self.not_done}; "
            "the images written so far are kept, run the same command again "
            "to resume"
        )


def read_images_tsv(
    path: Path, bad_lines: LineIssues | None = None
) -> list[tuple[str, str]]:
    """Read ``images.tsv`` (``item_id<TAB>url`` with a header line).

    Repeated item ids keep their first URL. Blank lines are ignored; lines
    without a tab, or with an empty item id or URL, are skipped and counted
    in ``bad_lines``.

    Args:
        path (Path): The file.
        bad_lines (LineIssues | None): Filled in with the skipped lines.

    Returns:
        list[tuple[str, str]]: ``(item_id, url)`` pairs in file order.

    Raises:
        PreparationError: If the file does not exist, or its first line is not
            the header ``item_id<TAB>url``.
    """
    if not path.is_file():
        raise PreparationError(
            f"{str(path)!r} does not exist; run the amazon2023 step first (or "
            "write it: a header line item_id<TAB>url, then one line per item)"
        )
    bad_lines = bad_lines if bad_lines is not None else LineIssues()
    seen: dict[str, str] = {}
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if header != list(IMAGES_HEADER):
            got = "an empty file" if header is None else repr("\t".join(header))
            raise PreparationError(
                f"{str(path)!r}: the first line must be the header "
                f"'item_id\\turl' (tab-separated); got {got}"
            )
        for row in reader:
            if not row:
                continue
            if len(row) < 2 or not row[0] or not row[1]:
                bad_lines.add(reader.line_num)
                continue
            seen.setdefault(row[0], row[1])
    if bad_lines.count:
        logger.warning(
            "%s: lines that are not item_id<TAB>url skipped: %s",
            path,
            bad_lines.describe(),
        )
    return list(seen.items())


def image_is_complete(path: Path) -> bool:
    """Tell whether a file exists and decodes fully as an image.

    Args:
        path (Path): The file.

    Returns:
        bool: ``True`` if PIL can verify and load it.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return False
    return check_image_bytes(data) is None


def check_image_bytes(data: bytes) -> str | None:
    """Check that bytes are a complete image.

    Args:
        data (bytes): The file content.

    Returns:
        str | None: ``None`` if the image decodes, else the reason it does not.
    """
    if not data:
        return "empty body"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except UnidentifiedImageError:
        return "not a decodable image: not in a known image format"
    except Exception as exc:  # PIL raises many types for bad data
        text = _OBJECT_REPR.sub("", str(exc)).strip()
        return f"not a decodable image: {type(exc).__name__}: {text}"
    return None


def extension_for(content_type: str | None, url: str) -> str:
    """Choose a file extension from the content type, else the URL, else jpg.

    Args:
        content_type (str | None): The ``Content-Type`` header.
        url (str): The URL.

    Returns:
        str: Extension without the dot.
    """
    if content_type:
        mime = content_type.split(";", 1)[0].strip().lower()
        if mime in CONTENT_TYPE_EXT:
            return CONTENT_TYPE_EXT[mime]
    suffix = Path(urllib.parse.urlsplit(url).path).suffix.lower().lstrip(".")
    return URL_EXT.get(suffix, "jpg")


def existing_image(images_dir: Path, item_id: str) -> Path | None:
    """Find a complete image already downloaded for an item.

    Args:
        images_dir (Path): The ``images`` folder.
        item_id (str): The item.

    Returns:
        Path | None: The file, if one exists and decodes.
    """
    for ext in KNOWN_EXTS:
        candidate = images_dir / f"{item_id}.{ext}"
        if candidate.is_file() and image_is_complete(candidate):
            return candidate
    return None


def _fetch_once(url: str, timeout: float) -> tuple[bytes, str | None]:
    """Fetch a URL once and check the body is a complete image.

    Args:
        url (str): An http(s) URL.
        timeout (float): Seconds for connecting and for each read.

    Returns:
        tuple[bytes, str | None]: The body and its ``Content-Type``.

    Raises:
        _Transient: On errors another attempt may fix.
        _Permanent: On errors it will not.
    """
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            content_type = response.headers.get("Content-Type")
            body = response.read()
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code}"
        if exc.code in RETRY_STATUS:
            raise _Transient(reason) from exc
        raise _Permanent(reason) from exc
    except http.client.IncompleteRead as exc:
        raise _Transient(
            f"truncated body: got {len(exc.partial)} bytes, "
            f"{exc.expected} more expected"
        ) from exc
    except (TimeoutError, socket.timeout) as exc:
        raise _Transient(f"timed out after {timeout} s") from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (TimeoutError, socket.timeout)):
            raise _Transient(f"timed out after {timeout} s") from exc
        raise _Transient(f"connection failed: {exc.reason}") from exc
    except (http.client.HTTPException, ConnectionError, OSError) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from exc
    except ValueError as exc:  # unknown url type and the like
        raise _Permanent(f"bad URL: {exc}") from exc
    problem = check_image_bytes(body)
    if problem is not None:
        mime = (content_type or "no content type").split(";", 1)[0]
        raise _Permanent(f"{problem} ({mime}, {len(body)} bytes)")
    return body, content_type


def _write_atomically(images_dir: Path, item_id: str, ext: str, body: bytes) -> Path:
    """Write a file through a temporary file in the same folder.

    Args:
        images_dir (Path): Target folder.
        item_id (str): The item (file stem).
        ext (str): Extension without the dot.
        body (bytes): Content.

    Returns:
        Path: The final file.
    """
    target = images_dir / f"{item_id}.{ext}"
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{item_id}.", suffix=".part", dir=images_dir
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return target


def download_one(
    item_id: str,
    url: str,
    images_dir: Path,
    timeout: float,
    retries: int,
    backoff: float,
    sleep: Callable[[float], object] = time.sleep,
    stop: threading.Event | None = None,
) -> tuple[str, str]:
    """Download one image unless it is already there.

    Args:
        item_id (str): The item.
        url (str): The image URL.
        images_dir (Path): The ``images`` folder.
        timeout (float): Seconds per attempt.
        retries (int): Further attempts after the first, for transient errors.
        backoff (float): Wait before retry ``k`` (1-based) is
            ``backoff * 2 ** (k - 1)`` seconds.
        sleep (Callable[[float], object]): Waiting function (for tests, or
            ``stop.wait`` so that a stop ends the wait).
        stop (threading.Event | None): Once set, no further attempt is made.

    Returns:
        tuple[str, str]: ``("skipped", path)``, ``("downloaded", path)``,
        ``("failed", reason)`` or ``("stopped", "")`` (``stop`` was set before
        the image was fetched).
    """
    try:
        check_token(item_id, "item id")
    except PreparationError as exc:
        return "failed", str(exc)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        return "failed", f"unsupported URL scheme {scheme!r}; allowed: http, https"
    if existing_image(images_dir, item_id) is not None:
        return "skipped", ""
    reason = ""
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff * 2 ** (attempt - 1))
        if stop is not None and stop.is_set():
            return "stopped", ""
        try:
            body, content_type = _fetch_once(url, timeout)
        except _Permanent as exc:
            return "failed", str(exc)
        except _Transient as exc:
            reason = str(exc)
            logger.debug("%s: attempt %d failed: %s", url, attempt + 1, reason)
            continue
        ext = extension_for(content_type, url)
        target = _write_atomically(images_dir, item_id, ext, body)
        for other in KNOWN_EXTS:
            stale = images_dir / f"{item_id}.{other}"
            if other != ext and stale.is_file():
                stale.unlink()
        return "downloaded", str(target)
    tries = "attempt" if retries == 0 else "attempts"
    return "failed", f"{reason} ({retries + 1} {tries})"


def download_images(
    dataset_dir: Path | str,
    workers: int = 8,
    timeout: float = 10.0,
    retries: int = 3,
    backoff: float = 1.0,
    progress: bool = True,
) -> DownloadSummary:
    """Download every image listed in ``<dataset_dir>/images.tsv``.

    Args:
        dataset_dir (Path | str): The dataset folder.
        workers (int): Parallel connections (``--workers``), at least 1.
        timeout (float): Seconds per attempt (``--timeout``), more than 0.
        retries (int): Further attempts for transient errors (``--retries``).
        backoff (float): Base of the exponential backoff in seconds
            (``--backoff``), at least 0.
        progress (bool): Show a tqdm progress bar.

    Returns:
        DownloadSummary: Counts and failures; failures are also written to
        ``images_failed.tsv`` (a header line only if there are none).

    Raises:
        ValueError: On an option value out of range.
        PreparationError: If ``images.tsv`` is missing or has no header line.
        DownloadInterrupted: On Ctrl-C, once the downloads in progress have
            ended; ``images_failed.tsv`` is then left as it was.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be an integer >= 1, got {workers!r}")
    if not timeout > 0:
        raise ValueError(f"--timeout must be a number of seconds > 0, got {timeout!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"--retries must be an integer >= 0, got {retries!r}")
    if not backoff >= 0:
        raise ValueError(f"--backoff must be a number of seconds >= 0, got {backoff!r}")
    dataset_dir = Path(dataset_dir)
    summary = DownloadSummary()
    entries = read_images_tsv(dataset_dir / "images.tsv", summary.bad_lines)
    images_dir = dataset_dir / "images"
    images_dir.mkdir(exist_ok=True)
    stop = threading.Event()
    futures: dict[Future[tuple[str, str]], tuple[str, str]] = {}
    counted: set[Future[tuple[str, str]]] = set()
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        with tqdm(
            total=len(entries), unit="img", disable=not progress, desc="images"
        ) as bar:
            for item_id, url in entries:
                future = pool.submit(
                    download_one,
                    item_id,
                    url,
                    images_dir,
                    timeout,
                    retries,
                    backoff,
                    sleep=stop.wait,
                    stop=stop,
                )
                futures[future] = (item_id, url)
            for future in as_completed(futures):
                counted.add(future)
                _count(summary, futures[future], future)
                bar.update(1)
    except KeyboardInterrupt:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        for future, entry in futures.items():
            if future not in counted and future.done() and not future.cancelled():
                _count(summary, entry, future)
        done = summary.downloaded + summary.skipped + summary.failed
        raise DownloadInterrupted(summary, len(entries) - done) from None
    except BaseException:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    order = {item_id: n for n, (item_id, _) in enumerate(entries)}
    summary.failures.sort(key=lambda row: order[row[0]])
    failed_path = dataset_dir / "images_failed.tsv"
    fd, tmp_name = tempfile.mkstemp(
        prefix=".images_failed.", suffix=".part", dir=dataset_dir
    )
    os.close(fd)
    try:
        write_tsv(
            Path(tmp_name),
            FAILED_HEADER,
            ((i, u, " ".join(r.split())) for i, u, r in summary.failures),
        )
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, failed_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    if summary.failed:
        logger.warning("%d images failed; see %s", summary.failed, failed_path)
    logger.info("%s: %s", dataset_dir, summary.line())
    return summary


def _count(
    summary: DownloadSummary, entry: tuple[str, str], future: Future[tuple[str, str]]
) -> None:
    """Add the outcome of one finished download to the summary.

    Args:
        summary (DownloadSummary): Updated in place.
        entry (tuple[str, str]): ``(item_id, url)``.
        future (Future[tuple[str, str]]): The finished :func:`download_one` call.
    """
    try:
        outcome, detail = future.result()
    except Exception as exc:  # a failure must never stop the run
        outcome, detail = "failed", f"{type(exc).__name__}: {exc}"
    if outcome == "downloaded":
        summary.downloaded += 1
    elif outcome == "skipped":
        summary.skipped += 1
    elif outcome != "stopped":
        summary.failed += 1
        summary.failures.append((*entry, detail))
