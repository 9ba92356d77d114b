"""Tests of the image downloader against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import collections
import io
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from recbole_perpeft.data.preparation import PreparationError, download_images
from recbole_perpeft.data.preparation.cli import main
from recbole_perpeft.data.preparation.image_download import (
    download_one,
    extension_for,
)

SLOW_SECONDS = 1.5
TIMEOUT = 0.5


def _image_bytes(fmt: str, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buffer, format=fmt)
    return buffer.getvalue()


JPEG = _image_bytes("JPEG", (200, 30, 30))
PNG = _image_bytes("PNG", (30, 200, 30))


class _Handler(BaseHTTPRequestHandler):
    """Serves the fixed set of test responses; counts requests per path."""

    hits: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Keep the test output quiet."""

    def _send(self, status: int, body: bytes, ctype: str, length: int = -1) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body) if length < 0 else length))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the slow response)

    def do_GET(self) -> None:  # noqa: N802
        """Answer one request according to its path."""
        with self.lock:
            self.hits[self.path] += 1
            hit = self.hits[self.path]
        if self.path == "/good.jpg":
            self._send(200, JPEG, "image/jpeg")
        elif self.path == "/picture":
            self._send(200, PNG, "image/png")
        elif self.path == "/slow.jpg" or self.path.startswith("/slow/"):
            time.sleep(SLOW_SECONDS)
            self._send(200, JPEG, "image/jpeg")
        elif self.path == "/flaky.jpg":
            if hit == 1:
                self._send(500, b"oops", "text/plain")
            else:
                self._send(200, JPEG, "image/jpeg")
        elif self.path == "/short.jpg":
            self._send(200, JPEG[:200], "image/jpeg", length=len(JPEG))
        elif self.path == "/cut.jpg":
            self._send(200, JPEG[: len(JPEG) // 2], "image/jpeg")
        elif self.path == "/page.jpg":
            self._send(200, b"<html><body>captcha</body></html>", "text/html")
        else:
            self._send(404, b"not found", "text/plain")


@pytest.fixture()
def prep_image_server() -> Iterator[str]:
    """Start the test server on 127.0.0.1 with an OS-chosen port."""
    _Handler.hits = collections.Counter()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _dataset(tmp_path: Path, base: str) -> Path:
    rows = [
        ("good", f"{base}/good.jpg"),
        ("png", f"{base}/picture"),
        ("slow", f"{base}/slow.jpg"),
        ("flaky", f"{base}/flaky.jpg"),
        ("missing", f"{base}/missing.jpg"),
        ("short", f"{base}/short.jpg"),
        ("cut", f"{base}/cut.jpg"),
        ("html", f"{base}/page.jpg"),
    ]
    folder = tmp_path / "toy"
    folder.mkdir()
    lines = ["item_id\turl", *(f"{item}\t{url}" for item, url in rows)]
    (folder / "images.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _failed(folder: Path) -> dict[str, str]:
    lines = (folder / "images_failed.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "item_id\turl\treason"
    return {line.split("\t")[0]: line.split("\t")[2] for line in lines[1:]}


def test_download_outcomes_and_resume(tmp_path: Path, prep_image_server: str) -> None:
    folder = _dataset(tmp_path, prep_image_server)
    started = time.monotonic()
    summary = download_images(
        folder, workers=8, timeout=TIMEOUT, retries=1, backoff=0.01, progress=False
    )
    elapsed = time.monotonic() - started
    assert elapsed < 5

    assert (summary.downloaded, summary.skipped, summary.failed) == (3, 0, 5)
    images = folder / "images"
    assert (images / "good.jpg").read_bytes() == JPEG
    assert (images / "png.png").read_bytes() == PNG
    assert (images / "flaky.jpg").read_bytes() == JPEG
    assert sorted(p.name for p in images.iterdir()) == [
        "flaky.jpg",
        "good.jpg",
        "png.png",
    ]  # no temporary or partial files
    failed = _failed(folder)
    assert list(failed) == ["slow", "missing", "short", "cut", "html"]  # tsv order
    assert "timed out" in failed["slow"] and "2 attempts" in failed["slow"]
    assert failed["missing"] == "HTTP 404"
    assert "truncated body" in failed["short"]
    assert "not a decodable image" in failed["cut"]
    assert failed["html"] == (
        "not a decodable image: not in a known image format (text/html, 33 bytes)"
    )
    assert not any("0x" in reason for reason in failed.values())
    assert _Handler.hits["/flaky.jpg"] == 2
    assert _Handler.hits["/missing.jpg"] == 1  # a 404 is not retried

    # second run: complete files are skipped, a broken one is fetched again
    (images / "good.jpg").write_bytes(JPEG[:100])
    summary = download_images(
        folder, workers=2, timeout=TIMEOUT, retries=0, backoff=0.0, progress=False
    )
    assert (summary.downloaded, summary.skipped, summary.failed) == (1, 2, 5)
    assert (images / "good.jpg").read_bytes() == JPEG
    assert _Handler.hits["/picture"] == 1


def test_backoff_is_exponential(tmp_path: Path, prep_image_server: str) -> None:
    waits: list[float] = []
    outcome, reason = download_one(
        "short",
        f"{prep_image_server}/short.jpg",
        tmp_path,
        timeout=TIMEOUT,
        retries=3,
        backoff=0.5,
        sleep=waits.append,
    )
    assert outcome == "failed" and "4 attempts" in reason
    assert waits == [0.5, 1.0, 2.0]


def test_only_http_urls_are_fetched(tmp_path: Path) -> None:
    local = tmp_path / "secret.jpg"
    local.write_bytes(JPEG)
    outcome, reason = download_one(
        "x", local.as_uri(), tmp_path, timeout=TIMEOUT, retries=0, backoff=0.0
    )
    assert outcome == "failed" and "allowed: http, https" in reason


def test_extension_choice() -> None:
    assert extension_for("image/png; charset=binary", "http://h/x.jpg") == "png"
    assert extension_for("application/octet-stream", "http://h/a/x.webp?s=1") == "webp"
    assert extension_for(None, "http://h/x") == "jpg"


def test_cli_summary_and_bad_options(
    tmp_path: Path, prep_image_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "images.tsv").write_text(
        f"item_id\turl\nA\t{prep_image_server}/good.jpg\n", encoding="utf-8"
    )
    code = main(["download-images", str(folder), "--no-progress", "--timeout", "2"])
    assert code == 0
    assert capsys.readouterr().out.strip() == (
        "downloaded 1, skipped (already there) 0, failed 0"
    )
    assert (folder / "images_failed.tsv").read_text(encoding="utf-8") == (
        "item_id\turl\treason\n"
    )
    with pytest.raises(SystemExit) as info:
        main(["download-images", str(folder), "--timeout", "0"])
    assert info.value.code == 2
    assert "--timeout must be a number > 0, got '0'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--workers must be an integer >= 1, got 0"):
        download_images(folder, workers=0)


def _slow_hits() -> int:
    with _Handler.lock:
        return sum(n for path, n in _Handler.hits.items() if path.startswith("/slow/"))


def test_ctrl_c_cancels_pending_downloads(
    tmp_path: Path, prep_image_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    rows = [("good", f"{prep_image_server}/good.jpg")]
    rows += [(f"s{n:02d}", f"{prep_image_server}/slow/{n}.jpg") for n in range(12)]
    lines = ["item_id\turl", *(f"{item}\t{url}" for item, url in rows)]
    (folder / "images.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    main_thread = threading.get_ident()
    sent: list[float] = []

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + 30
        while _slow_hits() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        sent.append(time.monotonic())
        signal.pthread_kill(main_thread, signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    args = ["download-images", str(folder), "--no-progress", "--retries", "0"]
    try:
        code = main([*args, "--workers", "2", "--timeout", "5"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main()")
    ended = time.monotonic()
    presser.join()

    assert code == 130
    # the two downloads in progress end (here: complete), the ten queued ones
    # never start; without the fix they would take 5 x 1.5 s more
    assert ended - sent[0] < SLOW_SECONDS + 1.0
    time.sleep(0.3)
    assert _slow_hits() == 2
    images = folder / "images"
    assert sorted(p.name for p in images.iterdir()) == [
        "good.jpg",
        "s00.jpg",
        "s01.jpg",
    ]
    assert (images / "s01.jpg").read_bytes() == JPEG
    assert not (folder / "images_failed.tsv").exists()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "interrupted: downloaded 3, skipped (already there) 0, failed 0, "
        "not done 10; the images written so far are kept, run the same command "
        "again to resume"
    ]

    # resuming fetches only the rest
    assert main([*args, "--workers", "10", "--timeout", "5"]) == 0
    assert capsys.readouterr().out.strip() == (
        "downloaded 10, skipped (already there) 3, failed 0"
    )
    assert _slow_hits() == 12


def test_images_tsv_header_and_bad_lines(
    tmp_path: Path, prep_image_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "toy"
    folder.mkdir()
    tsv = folder / "images.tsv"
    good = f"{prep_image_server}/good.jpg"
    tsv.write_text(f"A\t{good}\nB\t{good}\n", encoding="utf-8")
    with pytest.raises(
        PreparationError,
        match=r"first line must be the header 'item_id\\turl' .*got 'A\\t",
    ):
        download_images(folder, progress=False)
    tsv.write_text("", encoding="utf-8")
    with pytest.raises(PreparationError, match="got an empty file"):
        download_images(folder, progress=False)
    assert main(["download-images", str(folder), "--no-progress"]) == 2
    assert "must be the header" in capsys.readouterr().err
    assert not (folder / "images").exists()

    lines = [
        "item_id\turl",
        f"A\t{good}",
        f"B {good}",  # 3: a space, not a tab
        "",  # blank: ignored
        "C",  # 5: no tab
        f"\t{good}",  # 6: no item id
        "D\t",  # 7: no url
        f"E\t{good}",
    ]
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = download_images(folder, timeout=5, progress=False)
    assert (summary.downloaded, summary.failed) == (2, 0)
    assert summary.bad_lines.count == 4
    assert summary.bad_lines.first_lines == [3, 5, 6, 7]
    assert summary.line() == (
        "downloaded 2, skipped (already there) 0, failed 0, "
        "bad lines in images.tsv 4"
    )
    assert sorted(p.name for p in (folder / "images").iterdir()) == [
        "A.jpg",
        "E.jpg",
    ]
